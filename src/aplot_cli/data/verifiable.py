"""Verifiable task families easy enough for a small policy to solve some of the time, with gold checkers.

The synthetic recipe's families (`aplot_cli.data.synthetic`) are solved 0% of the time by
SmolLM2-135M-Instruct, which makes gold success uninformative for best-of-n and PPO. These families are
simpler (one-step arithmetic, a format constraint, copying or reversing a word, picking one option), so
that a small policy's samples hold both passing and failing responses for the same prompt: the
on-policy preference data of the synthetic-gold setup (Gao et al., 2023).

Each family has a generator (`make(rng) -> Task`: a prompt, a correct response and a wrong one, as a
model would write them) and a gold checker `verify(prompt, response)` that decides from the prompt text
alone. Checkers are lenient about form and strict about content: they accept the ways a model writes an
answer ("12", "12.", "**Answer:** 12", "The answer is 12", "7 + 5 = 12", quotes or markdown around a word)
and reject a wrong value, a hedge between two values, or an echo of the question (`verify` takes every
copy of the prompt out of the response before the family's checker reads it). Every family's prompt
has its own wording, so `family_of(prompt)` finds it (and never matches a synthetic-recipe prompt).
Deterministic by seed; no I/O."""

from __future__ import annotations

import hashlib
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from aplot_cli.data.synthetic import _EMPHASIS, _NUMBER, _to_int

# --- word banks -----------------------------------------------------------------------------------
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum", "kiwi",
              "melon"),
    "animal": ("dog", "cat", "horse", "lion", "tiger", "rabbit", "mouse", "sheep", "cow", "elephant", "monkey",
               "bear"),
    "color": ("red", "blue", "green", "yellow", "purple", "black", "white", "pink", "brown", "gray"),
    "vehicle": ("car", "bus", "truck", "bicycle", "train", "boat", "airplane", "motorcycle", "taxi", "tractor"),
    "musical instrument": ("piano", "guitar", "violin", "drum", "flute", "trumpet", "harp", "cello", "saxophone"),
    "piece of furniture": ("chair", "table", "sofa", "bed", "desk", "shelf", "stool", "wardrobe", "bench"),
    "body part": ("hand", "foot", "nose", "ear", "knee", "elbow", "shoulder", "finger", "ankle"),
    "drink": ("water", "coffee", "tea", "milk", "juice", "lemonade", "soda", "cocoa"),
}
NOUNS: tuple[str, ...] = tuple(sorted({w for words in CATEGORIES.values() for w in words} | set("""
    river garden mountain window candle forest island ocean bridge castle pencil letter market kitchen winter summer
    morning evening village city road cloud storm friend teacher doctor farmer school library museum beach desert
    valley lake stone flower tree leaf bird fish star moon sun book door clock shoe hat coat ship key box cup plate
    spoon lamp rope wheel tower garage basket mirror pillow blanket ticket camera phone radio rocket planet anchor
    apron arrow attic backpack bakery balloon bamboo barn barrel battery beard bell belt blossom bottle bowl bracelet
    branch bread brick broom bucket butter button cabin cable cactus cake canal candy canoe canvas carpet carrot
    cave ceiling cellar chain chalk cheese chimney church circle cliff coast coin collar comet compass cookie
    copper corn cottage cotton crayon crown cushion dancer dentist diamond dinner dolphin dragon dress eagle
    engine envelope fabric factory feather fence festival field flag flame forehead fountain fox frog galaxy gate
    ghost gift glass glove goat gold hammer harbor helmet hill honey hospital hotel iron jacket jar jungle kettle
    kingdom kite ladder lantern lawn lighthouse lizard lock magnet map marble meadow medal meteor mountain needle
    nest net notebook oak orchard owl paddle paint palace pancake parrot pasta path pebble penguin pepper piano
    pilot pirate pizza pocket pond potato prince puzzle pyramid queen rainbow robot roof rose sail salad sand
    scarf scissors seed shadow shell shield silver sink skirt sled snail snake soap sock soldier soup sponge
    squirrel stable staircase statue stove straw street sugar suitcase swan sword tent thread thunder tiger toast
    tomato tooth torch towel toy trail tunnel turtle umbrella vase violin wagon wallet whale whistle wind wolf
    wool yard zebra
""".split())))
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "be", "ho", "ja",
              "ni", "te", "ro", "la", "mu", "so", "di", "ke", "po")
_COUNT_WORDS = ("big", "blue", "deep", "calm", "wide", "cold", "vast")

# --- the split of a prompt: fixed by its text, so that any two runs agree --------------------------
TEST_PERCENT = 20


def prompt_id(prompt: str) -> str:
    """First 12 hex chars of sha1(prompt): the prompt's id in samples and pairs artifacts."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def split_of(prompt: str) -> str:
    """`test` for TEST_PERCENT% of prompts, `train` for the rest, decided by a hash of the prompt text
    alone: a run for one split can never draw a prompt of the other, whatever its seed or size."""
    digest = int(hashlib.sha1(f"aplot-verifiable-split|{prompt}".encode()).hexdigest(), 16)
    return "test" if digest % 100 < TEST_PERCENT else "train"


# --- reading answers --------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*")
_WRAP = " \t\n*_`'\"\u2018\u2019\u201c\u201d.,!?;:()[]"


def words(text: str) -> list[str]:
    """The words of a text: letters and digits, with inner apostrophes and hyphens ("don't", "sea-blue")."""
    return _WORD.findall(text)


def _a(noun: str) -> str:
    """The noun with its indefinite article."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _clean(text: str) -> str:
    """A span without the marks a model puts around an answer: spaces, markdown, quotes, final stops."""
    return text.strip(_WRAP)


def answer_spans(response: str) -> list[str]:
    """Where a one-word answer can sit: the whole reply, after its last colon ("Answer: tac"), after its
    last " is " ("The reversed word is 'tac'."), or alone on a line; each without quotes, markdown or a
    final full stop."""
    text = response.strip()
    spans = [text]
    if ":" in text:
        spans.append(text.rsplit(":", 1)[1])
    lowered = text.lower()
    if " is " in lowered:
        spans.append(text[lowered.rindex(" is ") + 4:])
    spans += text.splitlines()
    return [c for c in (_clean(s) for s in spans) if c]


def _mentions(word: str, text: str) -> bool:
    """`word` (or its plural) as a whole word of `text`, any case."""
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?:e?s)?(?![A-Za-z])", text, flags=re.IGNORECASE) is not None


_LABEL = (r"(?:=|\bequals?(?:\s+to)?\b|\bis\b|\bmakes\b|\b(?:gives|get)(?:\s+you|\s+us)?\b|\banswer\b\s*:?|\bresult\b\s*:?|\btotal\b\s*:?"
          r"|\bsum\b\s*:?|\bproduct\b\s*:?)")


def final_number(response: str, echoes: list[str]) -> int | None:
    """The number a reply gives as its answer, after removing echoes of the question's expression
    (`echoes`: regexes such as "7 + 5"): the last number after a label (=, equals, is, Answer:, ...); with
    no label, the reply's one number. None for no answer or a hedge ("12 or 13", several different
    unlabelled numbers)."""
    text = response
    for echo in echoes:
        text = re.sub(echo, " ", text, flags=re.IGNORECASE)
    if re.search(rf"{_NUMBER}{_EMPHASIS}(?:or|/){_EMPHASIS}{_NUMBER}", text, flags=re.IGNORECASE):
        return None  # "12 or 13": a hedge is no answer
    labelled = re.findall(rf"{_LABEL}{_EMPHASIS}:?{_EMPHASIS}({_NUMBER})", text, flags=re.IGNORECASE)
    if labelled:
        return _to_int(labelled[-1])
    values = {_to_int(n) for n in re.findall(rf"(?<![\w.]){_NUMBER}", text)}
    return values.pop() if len(values) == 1 else None


# --- the families -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    prompt: str
    answer: str   # a correct response, as a model writes one
    wrong: str    # an incorrect one


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[random.Random], Task]
    verify: Callable[[str, str], bool]
    pattern: re.Pattern
    description: str


def _echo(a: int, b: int, ops: str) -> list[str]:
    return [rf"\b{a}\s*(?:{ops})\s*{b}\b", rf"\b{b}\s*(?:{ops})\s*{a}\b"]


def _arithmetic_checker(pattern: re.Pattern, ops: str, combine: Callable[[int, int], int]
                        ) -> Callable[[str, str], bool]:
    """The gold check of a two-operand question: the response's final number (an echo of the question
    taken out first) equals `combine(a, b)` of the prompt's operands."""
    def verify(prompt: str, response: str) -> bool:
        a, b = map(int, pattern.search(prompt).groups())
        return final_number(response, _echo(a, b, ops)) == combine(a, b)

    return verify


_ADD_OPS = r"\+|plus|and"
_MUL_OPS = r"\*|x|\u00d7|times|multiplied by|by"

_ADD_SMALL = re.compile(r"^What is (\d+) \+ (\d+)\?$")


def add_small(rng: random.Random) -> Task:
    a, b = rng.randint(2, 19), rng.randint(2, 19)
    return Task(f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"The answer is {a + b + rng.choice((-1, 1))}.")


verify_add_small = _arithmetic_checker(_ADD_SMALL, _ADD_OPS, operator.add)


_ADD_TWO = re.compile(r"^What is the sum of (\d+) and (\d+)\?$")


def add_two_digit(rng: random.Random) -> Task:
    a, b = rng.randint(20, 99), rng.randint(20, 99)
    return Task(f"What is the sum of {a} and {b}?", f"The sum is {a + b}.", f"{a} + {b} = {a + b + 10}.")


verify_add_two_digit = _arithmetic_checker(_ADD_TWO, _ADD_OPS, operator.add)


_MUL = re.compile(r"^What is (\d+) times (\d+)\?$")


def multiply_small(rng: random.Random) -> Task:
    a, b = rng.randint(2, 12), rng.randint(2, 25)
    return Task(f"What is {a} times {b}?", f"**Answer:** {a * b}", f"{a} times {b} is {a * b + a}.")


verify_multiply_small = _arithmetic_checker(_MUL, _MUL_OPS, operator.mul)


_UPPER = re.compile(r"^Write the word '([a-z]+)' in capital letters\.$")


def uppercase_word(rng: random.Random) -> Task:
    word = rng.choice(NOUNS)
    return Task(f"Write the word '{word}' in capital letters.", word.upper(), f"{word.capitalize()}")


def verify_uppercase_word(prompt: str, response: str) -> bool:
    """The word in capitals, as a whole word (the echo of the prompt is lower case)."""
    word = _UPPER.search(prompt).group(1).upper()
    return re.search(rf"(?<![A-Za-z]){word}(?![A-Za-z])", response) is not None


_CAPS = re.compile(r"^Answer in capital letters only: (.+\?)$")
_CAPS_QUESTIONS: tuple[Callable[[random.Random], str], ...] = (
    lambda rng: f"what color is {_a(rng.choice(CATEGORIES['fruit']))}?",
    lambda rng: f"what sound does {_a(rng.choice(CATEGORIES['animal']))} make?",
    lambda rng: f"what is an example of {_a(rng.choice(sorted(CATEGORIES)))}?",
    lambda rng: "is {} bigger than {}?".format(*map(_a, rng.sample(CATEGORIES["animal"], 2))),
    lambda rng: "would you rather drink {} or {}?".format(*rng.sample(CATEGORIES["drink"], 2)),
    lambda rng: f"where would you find {_a(rng.choice(NOUNS))}?",
)


def all_caps(rng: random.Random) -> Task:
    question = rng.choice(_CAPS_QUESTIONS)(rng)
    return Task(f"Answer in capital letters only: {question}", "MY ANSWER IS YES.", "My answer is yes.")


def verify_all_caps(prompt: str, response: str) -> bool:
    """At least two letters, none of them lower case (a format constraint; the content is not judged)."""
    letters = [c for c in response if c.isalpha()]
    return len(letters) >= 2 and not any(c.islower() for c in letters)


_INCLUDE = re.compile(r"^Write a short sentence that includes the word '([a-z]+)'\.$")


def include_word(rng: random.Random) -> Task:
    word = rng.choice(NOUNS)
    return Task(f"Write a short sentence that includes the word '{word}'.", f"I saw a {word} yesterday.",
                "I cannot help with that.")


def verify_include_word(prompt: str, response: str) -> bool:
    return _mentions(_INCLUDE.search(prompt).group(1), response)


_INCLUDE_TWO = re.compile(r"^Write one sentence that uses both the words '([a-z]+)' and '([a-z]+)'\.$")


def include_two_words(rng: random.Random) -> Task:
    first, second = rng.sample(NOUNS, 2)
    return Task(f"Write one sentence that uses both the words '{first}' and '{second}'.",
                f"The {first} was next to the {second}.", f"The {first} was here.")


def verify_include_two_words(prompt: str, response: str) -> bool:
    first, second = _INCLUDE_TWO.search(prompt).groups()
    return _mentions(first, response) and _mentions(second, response)


_COUNT = re.compile(r"^Describe (?:a|an) ([a-z]+) in exactly (\d) words\.$")


def word_count(rng: random.Random) -> Task:
    noun, n = rng.choice(NOUNS), rng.randint(2, 5)
    answer = " ".join(w.capitalize() if i == 0 else w for i, w in enumerate(_COUNT_WORDS[:n])) + "."
    return Task(f"Describe {_a(noun)} in exactly {n} words.", answer, " ".join(_COUNT_WORDS[:n + 1]) + ".")


def verify_word_count(prompt: str, response: str) -> bool:
    """Exactly n words in the reply, or in what follows its last colon ("Description: vast blue deep")."""
    n = int(_COUNT.search(prompt).group(2))
    spans = [response] + ([response.rsplit(":", 1)[1]] if ":" in response else [])
    return any(len(words(span)) == n for span in spans)


_END = re.compile(r"^Write a sentence that ends with the word '([a-z]+)'\.$")


def end_with(rng: random.Random) -> Task:
    word = rng.choice(NOUNS)
    return Task(f"Write a sentence that ends with the word '{word}'.", f"We walked slowly to the {word}.",
                f"The {word} was far away.")


def verify_end_with(prompt: str, response: str) -> bool:
    """The reply's last word (punctuation, quotes and markdown after it ignored) is the word, any case."""
    found = words(response)
    return bool(found) and found[-1].lower() == _END.search(prompt).group(1)


_COPY = re.compile(r"^Repeat this word exactly: '([a-z]+)'\.$")


def copy_word(rng: random.Random) -> Task:
    word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
    return Task(f"Repeat this word exactly: '{word}'.", f"'{word}'", word[:-1] or "x")


def verify_copy_word(prompt: str, response: str) -> bool:
    word = _COPY.search(prompt).group(1)
    return any(span.lower() == word for span in answer_spans(response))


_REVERSE = re.compile(r"^Reverse the letters of the word '([a-z]{3})'\.$")


def reverse_word(rng: random.Random) -> Task:
    while True:
        word = rng.choice(_CONSONANTS) + rng.choice(_VOWELS) + rng.choice(_CONSONANTS)
        if word != word[::-1]:
            break
    return Task(f"Reverse the letters of the word '{word}'.", f"The reversed word is {word[::-1]}.", word)


def verify_reverse_word(prompt: str, response: str) -> bool:
    """The reversed word as the answer; letters written apart ("t-a-c", "t a c") count."""
    target = _REVERSE.search(prompt).group(1)[::-1]
    spans = answer_spans(response)
    return any((re.sub(r"[\s-]", "", span) if len(span) <= 9 else span).lower() == target for span in spans)


_CHOOSE = re.compile(r"^Which of these is an? ([a-z ]+): ([a-z]+), ([a-z]+), or ([a-z]+)\? Answer with one word\.$")


def choose_option(rng: random.Random) -> Task:
    category = rng.choice(sorted(CATEGORIES))
    correct = rng.choice(CATEGORIES[category])
    others = sorted({w for c, ws in CATEGORIES.items() if c != category for w in ws})
    options = [correct, *rng.sample(others, 2)]
    rng.shuffle(options)
    prompt = f"Which of these is {_a(category)}: {options[0]}, {options[1]}, or {options[2]}? Answer with one word."
    return Task(prompt, correct.capitalize() + ".", next(o for o in options if o != correct))


def verify_choose_option(prompt: str, response: str) -> bool:
    """The right option named, and no other (so an echo of the question fails)."""
    category, *options = _CHOOSE.search(prompt).groups()
    right = next(o for o in options if o in CATEGORIES[category])
    return _mentions(right, response) and not any(_mentions(o, response) for o in options if o != right)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("add_small", add_small, verify_add_small, _ADD_SMALL, "What is a + b? (a, b in 2..19)"),
    Family("add_two_digit", add_two_digit, verify_add_two_digit, _ADD_TWO, "What is the sum of a and b? (20..99)"),
    Family("multiply_small", multiply_small, verify_multiply_small, _MUL, "What is a times b? (2..12 x 2..25)"),
    Family("uppercase_word", uppercase_word, verify_uppercase_word, _UPPER, "Write the word 'w' in capital letters."),
    Family("all_caps", all_caps, verify_all_caps, _CAPS, "Answer in capital letters only: <question>"),
    Family("include_word", include_word, verify_include_word, _INCLUDE, "A short sentence that includes 'w'."),
    Family("include_two_words", include_two_words, verify_include_two_words, _INCLUDE_TWO,
           "One sentence that uses both 'v' and 'w'."),
    Family("word_count", word_count, verify_word_count, _COUNT, "Describe a <noun> in exactly n words (n 2..5)."),
    Family("end_with", end_with, verify_end_with, _END, "A sentence that ends with the word 'w'."),
    Family("copy_word", copy_word, verify_copy_word, _COPY, "Repeat this word exactly: '<made-up word>'."),
    Family("reverse_word", reverse_word, verify_reverse_word, _REVERSE, "Reverse the letters of a 3-letter word."),
    Family("choose_option", choose_option, verify_choose_option, _CHOOSE,
           "Which of these is a <category>: x, y, or z? Answer with one word."),
)}
# The families SmolLM2-135M-Instruct solves 10-60% of the time at temperature 0.7 and 32 new tokens
# (experiments/downstream/families.md, 40 prompts x 4 samples each): the default of `aplot sample`.
DEFAULT_FAMILIES: tuple[str, ...] = ("add_small", "multiply_small", "include_two_words", "end_with", "copy_word",
                                     "choose_option")


def family_of(prompt: str) -> str | None:
    """The family whose prompt this is, or None for a prompt not made here."""
    for family in FAMILIES.values():
        if family.pattern.search(prompt):
            return family.name
    return None


def without_echo(prompt: str, response: str) -> str:
    """The response with every copy of the prompt taken out (any case, any punctuation, quotes or markdown
    between its words): a reply that repeats "Write a sentence that ends with the word 'today'." has not
    written one, nor has "Repeat this word exactly: 'roho'." repeated the word."""
    pattern = r"[\W_]*".join(re.escape(token) for token in re.findall(r"[A-Za-z0-9]+", prompt))
    return re.sub(pattern, " ", response, flags=re.IGNORECASE) if pattern else response


def verify(prompt: str, response: str) -> bool | None:
    """Gold check of a response to one of these families' prompts (its echoes of the prompt removed
    first); None for any other prompt."""
    name = family_of(prompt)
    return None if name is None else FAMILIES[name].verify(prompt, without_echo(prompt, response))


def gold(prompt: str, response: str) -> bool | None:
    """The gold check of any prompt aplot makes (the synthetic recipe's or these families'); None when
    the prompt is neither's."""
    from aplot_cli.data import synthetic

    checked = verify(prompt, response)
    return synthetic.verify(prompt, response) if checked is None else checked


def prompts(family: str, count: int, split: str, seed: int) -> list[Task]:
    """`count` distinct tasks of `family` whose prompts fall in `split`, deterministic by `seed`."""
    make = FAMILIES[family].make
    rng = random.Random(f"aplot-verifiable|{seed}|{family}")
    tasks: list[Task] = []
    seen: set[str] = set()
    attempts = 0
    while len(tasks) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise ValueError(f"family {family} made only {len(tasks)} distinct {split} prompts of the {count} asked")
        task = make(rng)
        if task.prompt in seen or split_of(task.prompt) != split:
            continue
        seen.add(task.prompt)
        tasks.append(task)
    return tasks
