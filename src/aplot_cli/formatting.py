"""How a (prompt, response) becomes reward-model input ids: shared by train-rm, eval-rm and ppo so a
model is always scored the way it was trained.

- With `chat_template=True` and a tokenizer that has one, the prompt messages (or the prompt as one
  user turn) plus the response as an assistant turn are rendered by the tokenizer's chat template;
  otherwise the prompt and response are a text pair (`[CLS] prompt [SEP] response [SEP]` for BERT-like
  encoders).
- Truncation is explicit: when prompt + response exceed `max_length`, the prompt is cut from the left
  first (keeping the turns nearest the response); only when the response alone does not fit is it cut
  from the right. Both are counted in `Encoded` so callers can report them.
- Two input conventions. `aplot` (models trained by train-rm): the rendered template is tokenised as is
  (it holds every special token) and the pad token is made distinct from EOS, so the score is read at
  the last real token. `model` (any other reward model, as RewardBench's pipeline scores it): the
  rendered template is tokenised with the tokenizer's own special tokens (a doubled leading BOS is
  dropped; RewardBench masks it) and the model keeps its own pad token, so its sequence-classification
  head reads where it was trained to read (the last token that is not the pad token; with pad == EOS
  and a template ending in EOS, the token before that EOS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aplot_cli.data.schema import parse_messages

MIN_PROMPT_TOKENS = 8  # keep at least this much prompt when the response must be cut


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    prompt_truncated: bool
    response_truncated: bool


def _messages(prompt: str, prompt_messages: Any) -> list[dict[str, str]]:
    messages = parse_messages(prompt_messages) if isinstance(prompt_messages, str) else prompt_messages
    return list(messages) if messages else [{"role": "user", "content": prompt}]


def uses_chat_template(tokenizer: Any, chat_template: bool) -> bool:
    return bool(chat_template and getattr(tokenizer, "chat_template", None))


def split_text(tokenizer: Any, prompt: str, response: str, prompt_messages: Any = None,
               chat_template: bool = True) -> tuple[str, str]:
    """(prompt part, response part) as text; with a chat template the parts concatenate to the
    template's rendering of the whole conversation."""
    if not uses_chat_template(tokenizer, chat_template):
        return prompt, response
    messages = _messages(prompt, prompt_messages)
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if full.startswith(head):
        return head, full[len(head):]
    # The generation prompt is not a prefix of the full rendering (a template that rewrites earlier turns
    # or renders the assistant header differently): split the full rendering where the two part, so the
    # input is still exactly the template's, end-of-turn tokens included.
    cut = _common_prefix_length(head, full)
    return full[:cut], full[cut:]


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def encode(tokenizer: Any, prompt: str, response: str, max_length: int, prompt_messages: Any = None,
           chat_template: bool = True, special_tokens: bool = False) -> Encoded:
    """Token ids for one (prompt, response), truncated as the module docstring says. `special_tokens`
    (the `model` convention) adds the tokenizer's own special tokens to a rendered template."""
    templated = uses_chat_template(tokenizer, chat_template)
    head, tail = split_text(tokenizer, prompt, response, prompt_messages, chat_template)
    if templated and special_tokens:
        ids, types, seq = _templated_with_special_tokens(tokenizer, head, tail)
    elif templated:  # the template already holds every special token
        batch = tokenizer(head + tail, add_special_tokens=False)
        n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        seq = [0 if i < n_head else 1 for i in range(len(batch["input_ids"]))]
        ids, types = batch["input_ids"], batch.get("token_type_ids")
    else:  # a text pair, special tokens placed by the tokenizer's own post-processor
        batch = tokenizer(head, tail)
        seq = batch.sequence_ids()
        ids, types = batch["input_ids"], batch.get("token_type_ids")
    return _truncate(list(ids), None if types is None else list(types), seq, max_length)


def encode_many(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int,
                prompt_messages: list[Any] | None = None, chat_template: bool = True,
                special_tokens: bool = False) -> list[Encoded]:
    """`[encode(tokenizer, p, r, max_length, m, chat_template, special_tokens) for each (p, r, m)]`, the same
    token ids and truncation flags, in a few batched calls: the chat template rendered for every
    conversation in one `apply_chat_template(..., tokenize=False)`, the texts tokenised in one call of the
    fast tokenizer, and the prompt part tokenised alone (once per distinct prompt) only where truncation
    needs its length. A slow tokenizer, or the `model` convention, is encoded one text at a time."""
    messages = list(prompt_messages) if prompt_messages is not None else [None] * len(prompts)
    if len(prompts) != len(responses) or len(messages) != len(prompts):
        raise ValueError("prompts, responses and prompt_messages must have the same length")
    if not prompts or special_tokens or not getattr(tokenizer, "is_fast", False):
        return [encode(tokenizer, p, r, max_length, m, chat_template, special_tokens)
                for p, r, m in zip(prompts, responses, messages, strict=True)]
    if uses_chat_template(tokenizer, chat_template):
        return _templated_many(tokenizer, prompts, responses, max_length, messages)
    return _pairs_many(tokenizer, prompts, responses, max_length)


def _templated_many(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int,
                    messages: list[Any]) -> list[Encoded]:
    """`encode`'s templated branch, batched: the same rendering (`split_text`) and tokenisation of the whole
    conversation; the prompt part's token count decides truncation alone, so it is computed only for the
    texts longer than `max_length`."""
    conversations: dict[Any, list[dict[str, str]]] = {}
    which = []  # each text's conversation (its prompt), rendered once as the generation prompt
    for prompt, message in zip(prompts, messages, strict=True):
        key = (prompt, message if message is None or isinstance(message, str) else repr(message))
        if key not in conversations:
            conversations[key] = _messages(prompt, message)
        which.append(key)
    order = list(conversations)
    heads = dict(zip(order, tokenizer.apply_chat_template([conversations[k] for k in order],
                                                         add_generation_prompt=True, tokenize=False), strict=True))
    fulls = tokenizer.apply_chat_template(
        [conversations[k] + [{"role": "assistant", "content": r}] for k, r in zip(which, responses, strict=True)],
        tokenize=False)
    batch = tokenizer(fulls, add_special_tokens=False)
    all_ids, all_types = batch["input_ids"], batch.get("token_type_ids")
    long = [i for i, ids in enumerate(all_ids) if len(ids) > max_length]
    parts = {i: _head_part(heads[which[i]], fulls[i]) for i in long}
    distinct = list(dict.fromkeys(parts.values()))
    counts = dict(zip(distinct, map(len, tokenizer(distinct, add_special_tokens=False)["input_ids"]) if distinct
                      else (), strict=True))
    out = []
    for i, ids in enumerate(all_ids):
        types = None if all_types is None else all_types[i]
        if len(ids) <= max_length:  # nothing cut: the prompt's length does not matter
            out.append(Encoded(ids, types, False, False))
        else:
            n_prompt = min(counts[parts[i]], len(ids))
            out.append(_cut_runs(ids, types, 0, n_prompt, n_prompt, len(ids) - n_prompt, max_length))
    return out


def _head_part(head: str, full: str) -> str:
    """The prompt part of `full` as `split_text` cuts it."""
    return head if full.startswith(head) else full[:_common_prefix_length(head, full)]


def _pairs_many(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int) -> list[Encoded]:
    """`encode`'s text-pair branch, batched: one call for every (prompt, response) pair."""
    batch = tokenizer(list(prompts), list(responses))
    all_ids, all_types = batch["input_ids"], batch.get("token_type_ids")
    out = []
    for i, ids in enumerate(all_ids):
        types = None if all_types is None else all_types[i]
        if len(ids) <= max_length:
            out.append(Encoded(ids, types, False, False))
            continue
        seq = batch.sequence_ids(i)
        n_prompt, n_resp = seq.count(0), seq.count(1)
        p0 = seq.index(0) if n_prompt else 0
        r0 = seq.index(1) if n_resp else len(ids)
        runs = (seq[p0:p0 + n_prompt].count(0) == n_prompt and seq[r0:r0 + n_resp].count(1) == n_resp
                and p0 + n_prompt <= r0)
        out.append(_cut_runs(ids, types, p0, n_prompt, r0, n_resp, max_length) if runs else
                   _truncate(list(ids), None if types is None else list(types), seq, max_length))
    return out


def _cut_runs(ids: list[int], types: list[int] | None, p0: int, n_prompt: int, r0: int, n_resp: int,
              max_length: int) -> Encoded:
    """`_truncate` where the prompt is the run of positions [p0, p0 + n_prompt) and the response the run
    [r0, r0 + n_resp) after it (the two layouts `encode` produces): the same cuts, as slices."""
    over = len(ids) - max_length
    cut_resp = max(0, over - max(n_prompt - MIN_PROMPT_TOKENS, 0)) if over > 0 else 0
    cut_prompt = min(n_prompt, over - cut_resp) if over > 0 else 0
    cut_resp = min(cut_resp, n_resp - 1) if n_resp else 0
    end = r0 + n_resp

    def keep(seq: list[int]) -> list[int]:
        return seq[:p0] + seq[p0 + cut_prompt:end - cut_resp] + seq[end:]

    return Encoded(keep(ids), None if types is None else keep(types), cut_prompt > 0, cut_resp > 0)


def _templated_with_special_tokens(tokenizer: Any, head: str, tail: str) -> tuple[list, list | None, list]:
    """`tokenizer(head + tail)` as RewardBench's pipeline calls it (special tokens added), with the
    prompt / response split of the plain tokenisation; the tokens the tokenizer adds in front or behind
    are never truncated. A leading BOS doubled by template + tokenizer is dropped (RewardBench masks it)."""
    batch = tokenizer(head + tail)
    ids, types = list(batch["input_ids"]), batch.get("token_type_ids")
    plain = tokenizer(head + tail, add_special_tokens=False)["input_ids"]
    n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    offset = next((k for k in range(len(ids) - len(plain) + 1) if ids[k:k + len(plain)] == plain), None)
    if offset is None:  # the added tokens are not only in front and behind: split by the plain count
        seq = [0 if i < n_head else 1 for i in range(len(ids))]
    else:  # added tokens are never truncated (None), like a text pair's special tokens
        seq = [None if i < offset or i >= offset + len(plain) else 0 if i < offset + n_head else 1
               for i in range(len(ids))]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
        del ids[1], seq[1]
        types = None if types is None else [t for i, t in enumerate(types) if i != 1]
    return ids, None if types is None else list(types), seq


def _truncate(ids: list[int], types: list[int] | None, seq: list, max_length: int) -> Encoded:
    """Cut the prompt (seq 0) from the left, then the response (seq 1) from the right, to max_length."""
    n_prompt, n_resp = seq.count(0), seq.count(1)
    over = len(ids) - max_length
    cut_resp = max(0, over - max(n_prompt - MIN_PROMPT_TOKENS, 0)) if over > 0 else 0
    cut_prompt = min(n_prompt, over - cut_resp) if over > 0 else 0
    cut_resp = min(cut_resp, n_resp - 1) if n_resp else 0
    if over > 0:
        prompt_pos = [i for i, s in enumerate(seq) if s == 0][:cut_prompt]       # from the left
        resp_pos = [i for i, s in enumerate(seq) if s == 1][n_resp - cut_resp:]   # from the right
        drop = set(prompt_pos) | set(resp_pos)
        ids = [t for i, t in enumerate(ids) if i not in drop]
        types = None if types is None else [t for i, t in enumerate(types) if i not in drop]
    return Encoded(list(ids), None if types is None else list(types), cut_prompt > 0, cut_resp > 0)


def prepare_tokenizer(tokenizer: Any, model_config: Any = None) -> Any:
    """Right padding, and a pad token distinct from EOS where the vocabulary allows it (so the score is
    read at the last real token and EOS stays visible). Sets the model config's pad id to match."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None or (tokenizer.eos_token is not None and tokenizer.pad_token == tokenizer.eos_token):
        vocab = tokenizer.get_vocab()
        for candidate in ("<|endoftext|>", "<pad>", "[PAD]", "<|pad|>", "<unk>"):
            if candidate in vocab and candidate != tokenizer.eos_token:
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token  # last resort; scores still read at last real token
    if model_config is not None:
        model_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def keep_model_padding(tokenizer: Any, model_config: Any) -> int:
    """The `model` convention, as RewardBench's `run_rm.py` sets a reward model up: the tokenizer's own
    pad token (EOS when it has none), the config's own pad id (the tokenizer's when it has none). Returns
    the id to pad with: the config's, the one the sequence-classification head skips, so a padded text
    scores as it does alone. Right padding (the head reads the rightmost non-pad token either way)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:  # no pad, no EOS: any token absent from real text reads like an unpadded input
            prepare_tokenizer(tokenizer)
    if getattr(model_config, "pad_token_id", None) is None:
        model_config.pad_token_id = tokenizer.pad_token_id
    if model_config.pad_token_id is None:
        from aplot_cli.errors import ModelError

        raise ModelError("the reward model's tokenizer has no pad, EOS or unknown token to pad with",
                         hint="set `pad_token_id` in the model's config.json (a token that never occurs in text)")
    return int(model_config.pad_token_id)


def pad_batch(batch: list[Encoded], pad_id: int, device: str) -> dict[str, Any]:
    """Model inputs (len(batch), longest) on `device`, right-padded with `pad_id`: `input_ids`,
    `attention_mask`, and `token_type_ids` where the encodings carry them."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    types = torch.zeros((len(batch), width), dtype=torch.long) if batch[0].token_type_ids is not None else None
    for row, enc in enumerate(batch):  # right padding: real tokens keep positions 0..n-1
        n = len(enc.input_ids)
        ids[row, :n] = torch.tensor(enc.input_ids)
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(enc.token_type_ids)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        inputs["token_type_ids"] = types.to(device)
    return inputs
