"""The embedded default dataset: verifiable preference pairs from several task families.

Each family makes prompts whose answer a gold checker `verify(prompt, response)` can decide from the
prompt text alone, a correct (chosen) response, and a wrong (rejected) one at a recorded difficulty:
`hard` (near-identical text with one small error) or `easy` (clearly wrong, of similar length, so that
length is no cue). `OOD_FAMILIES` are reserved for the out-of-distribution split. Everything is
deterministic by seed; no network, no files.

Every rejected response differs from its chosen one by more than letter case, so that an uncased
tokenizer (MiniLM's) still sees two different texts. The checkers accept the forms a model writes
besides the one the prompt asks for: thousands separators ("55,000 grams"), markdown emphasis
("**Answer:** 730"), a lower-case label ("answer: 730"), quotes or backticks around a string."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from aplot_cli.data.schema import Pair

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "be", "ho",
              "ja", "ni", "qu", "te", "wy", "xe", "ro", "la", "mu", "so", "di", "ke", "po")
_FRUITS = ("APPLE", "BANANA", "CHERRY", "GRAPE", "LEMON", "MANGO", "ORANGE", "PEACH", "PEAR", "PLUM",
           "KIWI", "LIME", "MELON", "PAPAYA", "FIG", "GUAVA", "DATE", "APRICOT", "COCONUT", "OLIVE")
_UNITS = {("kilometers", "meters"): 1000, ("kilograms", "grams"): 1000, ("hours", "minutes"): 60,
          ("minutes", "seconds"): 60, ("feet", "inches"): 12, ("meters", "centimeters"): 100,
          ("liters", "milliliters"): 1000, ("days", "hours"): 24, ("yards", "feet"): 3}


@dataclass(frozen=True)
class Item:
    prompt: str
    correct: str
    hard: str
    easy: str


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


# A number as models write it: optional sign, digits with or without thousands separators, an optional
# all-zero fraction ("730.0"). `_to_int` reads it; None for a fraction that is not whole.
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_EMPHASIS = r"[*_`\s]*"   # markdown bold / italics / code marks around a label or a value


def _to_int(text: str) -> int | None:
    whole, _, fraction = text.replace(",", "").partition(".")
    return int(whole) if not fraction.strip("0") else None


def _last_labelled(label: str, response: str) -> int | None:
    """The last number written after `label:` or `label is` (any case, markdown marks around both)."""
    found = re.findall(rf"\b{label}{_EMPHASIS}(?::|\s+is\b){_EMPHASIS}({_NUMBER})", response, flags=re.IGNORECASE)
    return _to_int(found[-1]) if found else None


def _nudge(value: int, rng: random.Random) -> int:
    """A small wrong value: one digit off."""
    digits = str(abs(value))
    pos = rng.randrange(len(digits))
    new_digit = str((int(digits[pos]) + rng.choice((1, 9))) % 10)
    if pos == 0 and new_digit == "0" and len(digits) > 1:
        new_digit = "1" if digits[0] != "1" else "2"
    wrong = int(digits[:pos] + new_digit + digits[pos + 1:])
    return -wrong if value < 0 else wrong


# --- arithmetic with worked steps -------------------------------------------------------------
_ARITH = re.compile(r"Compute (\d+) \+ (\d+) \* (\d+)\.")


def _arith_text(a: int, b: int, c: int, product: int, total: int) -> str:
    return f"First, {b} * {c} = {product}. Then, {a} + {product} = {total}. Answer: {total}"


def arithmetic(rng: random.Random) -> Item:
    a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
    prompt = f"Compute {a} + {b} * {c}. Show your steps and end with 'Answer: N'."
    correct = _arith_text(a, b, c, b * c, a + b * c)
    wrong_total = _nudge(a + b * c, rng)
    hard = _arith_text(a, b, c, b * c, wrong_total)
    # Every number wrong; |delta| >= 25 > the extra slip (<= 20), so the total is wrong too.
    bad_product = abs(b * c + rng.choice((-1, 1)) * rng.randint(25, 60))
    if bad_product == b * c:
        bad_product += 31
    easy = _arith_text(a, b, c, bad_product, a + bad_product + rng.randint(5, 20))
    return Item(prompt, correct, hard, easy)


def verify_arithmetic(prompt: str, response: str) -> bool:
    a, b, c = map(int, _ARITH.search(prompt).groups())
    return _last_labelled("answer", response) == a + b * c


# --- sorting ----------------------------------------------------------------------------------
_SORT = re.compile(r"ascending order: ([\d, ]+)\.")


def sorting(rng: random.Random) -> Item:
    values = rng.sample(range(1, 100), rng.randint(5, 8))
    prompt = f"Sort these numbers in ascending order: {', '.join(map(str, values))}. Reply with the sorted list only."
    ordered = sorted(values)
    i = rng.randrange(len(ordered) - 1)
    swapped = ordered[:i] + [ordered[i + 1], ordered[i]] + ordered[i + 2:]
    shuffled = ordered[:]
    while shuffled[::-1] in (ordered, swapped):  # the easy answer, reversed, must not be (nearly) right
        rng.shuffle(shuffled)
    fmt = ", ".join
    return Item(prompt, fmt(map(str, ordered)), fmt(map(str, swapped)), fmt(map(str, shuffled[::-1])))


def verify_sorting(prompt: str, response: str) -> bool:
    values = [int(v) for v in _SORT.search(prompt).group(1).split(",") if v.strip()]
    got = [int(v) for v in re.findall(r"-?\d+", response)]
    return got == sorted(values)


# --- unit conversion --------------------------------------------------------------------------
_CONV = re.compile(r"Convert (\d+) (\w+) to (\w+)\.")


def unit_conversion(rng: random.Random) -> Item:
    (src, dst), factor = rng.choice(sorted(_UNITS.items()))
    amount = rng.randint(2, 250)
    prompt = f"Convert {amount} {src} to {dst}. Reply as 'N {dst}'."
    value = amount * factor
    return Item(prompt, f"{amount} {src} is {value} {dst}.", f"{amount} {src} is {_nudge(value, rng)} {dst}.",
                f"{amount} {src} is {max(1, amount // factor) if amount >= factor else amount + factor} {dst}.")


def verify_unit_conversion(prompt: str, response: str) -> bool:
    amount, src, dst = _CONV.search(prompt).groups()
    expected = int(amount) * _UNITS[(src, dst)]
    found = re.findall(rf"({_NUMBER}){_EMPHASIS}{dst}\b", response, flags=re.IGNORECASE)
    return bool(found) and _to_int(found[-1]) == expected


# --- string reversal --------------------------------------------------------------------------
_REV = re.compile(r"Reverse the string '([a-z]+)'\.")


def string_reverse(rng: random.Random) -> Item:
    word = _word(rng) + _word(rng)[:2]
    prompt = f"Reverse the string '{word}'. Reply with the reversed string only."
    rev = word[::-1]
    i = rng.randrange(len(rev) - 1)
    hard = rev[:i] + rev[i + 1] + rev[i] + rev[i + 2:]
    if hard == rev:
        hard = rev[:-1] + ("a" if rev[-1] != "a" else "e")
    letters = list(word)
    rng.shuffle(letters)
    easy = "".join(letters)
    if easy == rev:
        easy = word
    return Item(prompt, rev, hard, easy)


def verify_string_reverse(prompt: str, response: str) -> bool:
    """The reply is the reversed string, alone or after a label ("Reversed: ..."), in any case, with
    quotes, backticks or markdown emphasis around it and a final full stop allowed."""
    word = _REV.search(prompt).group(1)
    reply = response.strip().rsplit(":", 1)[-1] if ":" in response else response
    return reply.strip().strip("'\"`*_.").strip().lower() == word[::-1]


# --- letter counting (reserved: out of distribution) ------------------------------------------
_COUNT = re.compile(r"letter '([a-z])' appear in '([a-z]+)'\?")


def letter_count(rng: random.Random) -> Item:
    letter = rng.choice("aeiou")
    word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(3, 6)))
    n = word.count(letter)
    prompt = f"How many times does the letter '{letter}' appear in '{word}'? Answer with 'Count: N'."
    hard = n + 1 if n == 0 or rng.random() < 0.5 else n - 1
    easy = n + rng.randint(4, 9)
    spelled = "-".join(word)
    return Item(prompt, f"Spelled out: {spelled}. Count: {n}", f"Spelled out: {spelled}. Count: {hard}",
                f"Spelled out: {spelled}. Count: {easy}")


def verify_letter_count(prompt: str, response: str) -> bool:
    letter, word = _COUNT.search(prompt).groups()
    return _last_labelled("count", response) == word.count(letter)


# --- format constraint (reserved: out of distribution) ----------------------------------------
_FORMAT = re.compile(r"List exactly (\d+) of these fruits, one per line, in uppercase, with nothing else: ([a-z, ]+)\.")


def format_constraint(rng: random.Random) -> Item:
    n = rng.randint(3, 6)
    offered = rng.sample(_FRUITS, n + rng.randint(1, 3))
    prompt = (f"List exactly {n} of these fruits, one per line, in uppercase, with nothing else: "
              f"{', '.join(f.lower() for f in offered)}.")
    fruits = rng.sample(offered, n)
    correct = "\n".join(fruits)
    easy = ", ".join(f.lower() for f in fruits) + "."
    return Item(prompt, correct, _format_slip(fruits, offered, rng), easy)


def _format_slip(fruits: list[str], offered: list[str], rng: random.Random) -> str:
    """The chosen list with one small error of the same length that no tokenizer can miss (not a change
    of case: MiniLM's tokenizer is uncased): two fruits on one line joined by a comma, or one fruit
    swapped for one of the same length that was not offered."""
    swaps = [(j, alt) for j, f in enumerate(fruits) for alt in _FRUITS if len(alt) == len(f) and alt not in offered]
    if swaps and rng.random() < 0.5:
        j, alt = rng.choice(swaps)
        return "\n".join(alt if k == j else f for k, f in enumerate(fruits))
    j = rng.randrange(len(fruits) - 1)
    lines = fruits[:j] + [f"{fruits[j]},{fruits[j + 1]}"] + fruits[j + 2:]
    return "\n".join(lines)


def verify_format_constraint(prompt: str, response: str) -> bool:
    match = _FORMAT.search(prompt)
    n, offered = int(match.group(1)), {f.strip().upper() for f in match.group(2).split(",")}
    lines = [line.strip() for line in response.strip().splitlines()]
    return (len(lines) == n and len(set(lines)) == n
            and all(line.isalpha() and line.isupper() and line in offered for line in lines))


FAMILIES: dict[str, tuple[Callable[[random.Random], Item], Callable[[str, str], bool], re.Pattern]] = {
    "arithmetic": (arithmetic, verify_arithmetic, _ARITH),
    "sorting": (sorting, verify_sorting, _SORT),
    "unit_conversion": (unit_conversion, verify_unit_conversion, _CONV),
    "string_reverse": (string_reverse, verify_string_reverse, _REV),
    "letter_count": (letter_count, verify_letter_count, _COUNT),
    "format_constraint": (format_constraint, verify_format_constraint, _FORMAT),
}
OOD_FAMILIES = ("letter_count", "format_constraint")
ID_FAMILIES = tuple(f for f in FAMILIES if f not in OOD_FAMILIES)


def family_of(prompt: str) -> str | None:
    """The family whose prompt pattern matches, or None for a prompt not made here."""
    for name, (_, _, pattern) in FAMILIES.items():
        if pattern.search(prompt):
            return name
    return None


def verify(prompt: str, response: str) -> bool | None:
    """Gold check of a response to a synthetic prompt; None when the prompt is not synthetic."""
    family = family_of(prompt)
    return None if family is None else FAMILIES[family][1](prompt, response)


def generate(n_pairs: int, n_ood_pairs: int, seed: int) -> list[Pair]:
    """`n_pairs` in-distribution pairs (round-robin over ID families) and `n_ood_pairs` from the
    reserved families, one pair per distinct prompt, difficulty alternating hard/easy."""
    pairs: list[Pair] = []
    for families, count, split in ((ID_FAMILIES, n_pairs, "id"), (OOD_FAMILIES, n_ood_pairs, "ood")):
        seen: set[str] = set()
        rngs = {f: random.Random(f"aplot-synthetic|{seed}|{f}") for f in families}
        attempts, i = 0, 0
        while i < count:
            attempts += 1
            if attempts > 50 * max(count, 1):
                raise RuntimeError(f"synthetic generator could not make {count} distinct {split} prompts")
            family = families[i % len(families)]
            item = FAMILIES[family][0](rngs[family])
            if item.prompt in seen:
                continue
            seen.add(item.prompt)
            difficulty = "hard" if (i // len(families)) % 2 == 0 else "easy"
            rejected = item.hard if difficulty == "hard" else item.easy
            pairs.append(Pair(prompt=item.prompt, chosen=item.correct, rejected=rejected,
                              subset=f"{family}-{difficulty}", source="aplot-synthetic",
                              extras={"family": family, "difficulty": difficulty,
                                      "reserved_ood": split == "ood"},
                              location=f"synthetic:{family}:{i}"))
            i += 1
    return pairs
