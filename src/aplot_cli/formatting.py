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
