"""How a (prompt, response) becomes reward-model input ids: shared by train-rm, eval-rm and ppo so a
model is always scored the way it was trained.

- With `chat_template=True` and a tokenizer that has one, the prompt messages (or the prompt as one
  user turn) plus the response as an assistant turn are rendered by the tokenizer's chat template;
  otherwise the prompt and response are a text pair (`[CLS] prompt [SEP] response [SEP]` for BERT-like
  encoders).
- Truncation is explicit: when prompt + response exceed `max_length`, the prompt is cut from the left
  first (keeping the turns nearest the response); only when the response alone does not fit is it cut
  from the right. Both are counted in `Encoded` so callers can report them."""

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
    return head, response  # a template that rewrites earlier turns: fall back to the plain response


def encode(tokenizer: Any, prompt: str, response: str, max_length: int, prompt_messages: Any = None,
           chat_template: bool = True) -> Encoded:
    """Token ids for one (prompt, response), truncated as the module docstring says."""
    templated = uses_chat_template(tokenizer, chat_template)
    head, tail = split_text(tokenizer, prompt, response, prompt_messages, chat_template)
    if templated:  # the template already holds every special token
        batch = tokenizer(head + tail, add_special_tokens=False)
        n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        seq = [0 if i < n_head else 1 for i in range(len(batch["input_ids"]))]
    else:  # a text pair, special tokens placed by the tokenizer's own post-processor
        batch = tokenizer(head, tail)
        seq = batch.sequence_ids()
    ids, types = batch["input_ids"], batch.get("token_type_ids")
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
