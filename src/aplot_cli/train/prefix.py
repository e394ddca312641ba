"""Prefix sharing for causal (decoder) reward models: a pair's prompt runs once, and several pairs may share
a row, with scores equal to the two-sequence forward (arXiv 2410.20305, for reward models).

A pair encodes (`formatting.encode`, truncation included) as two token sequences C = (c_0..c_{n-1}) and
R = (r_0..r_{m-1}). Let p be their longest common token prefix, capped at min(n, m) - 1 so that each
response keeps at least one token to score. The pair becomes one segment of n + m - p tokens

    S = C[:p] ‖ C[p:] ‖ R[p:],   positions 0..p-1, p..n-1, p..m-1,   roles 0 (prompt), 1 (chosen), 2 (rejected).

A row holds one or more segments (packing: first-fit, never wider than the batch's longest segment) and
padding (pair -1). Token i of a row may attend to token j iff

    M[i, j] = [j <= i] · [pair(j) = pair(i)] · [role(j) = 0 or role(j) = role(i)]

(a padding token attends to itself only, so no row of the softmax is empty). For a decoder whose attention
reads positions only through `position_ids` (RoPE, learned absolute positions: Llama, SmolLM2, Qwen2,
Mistral, GPT-2), each token then attends to exactly the keys, at exactly the positions, that it attends
to in its own sequence, so every hidden state of C[p:] (R[p:]) equals that of C (R) run alone and

    r(x, y+) = head(h[last token of C[p:]]),   r(x, y-) = head(h[last token of R[p:]])

are the two-sequence scores up to float rounding. `check_exact` measures that on the run's own model and
pairs before training, so a model that breaks the assumption (ALiBi, a sliding window shorter than the
row, an attention implementation that ignores a 4D mask) falls back to two sequences rather than training
on other scores. Tokens fed per pair drop from n + m to n + m - p (HH-RLHF's multi-turn prompts: most of
both sequences); packing then removes most padding where lengths in a batch differ (random batches).

The scores are read from the model's own head: a forward hook on the head module keeps the (rows, L, 1)
per-token logits (and the head's input, the last hidden state, for `--semantic-source backbone`), so
LoRA (peft wraps the head) and distributed wrappers score through the same code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aplot_cli.train.data import EncodedSplit, PairCollator

ATTENTION = ("sdpa", "eager")  # implementations that apply a custom 4D mask as given
CHECK_PAIRS = 4  # pairs scored both ways before training
CHECK_TOL = 1e-4  # |shared - separate| allowed, relative to max(1, |score|)


@dataclass
class Sharing:
    """Whether a run shares prompts, and why (recorded in the manifest's diagnostics)."""

    enabled: bool
    reason: str
    packing: bool = False
    check: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def collator(self):
        """What builds a split's collator: `SharedPairCollator` when enabled, else the (2B, L) `PairCollator`."""
        if not self.enabled:
            return PairCollator
        return lambda split, pad_id: SharedPairCollator(split, pad_id, packing=self.packing)

    def manifest(self) -> dict[str, Any]:
        out = {"enabled": self.enabled, "packing": self.packing and self.enabled, "reason": self.reason}
        return {
            **out,
            **({"exactness_check": self.check} if self.check else {}),
            **({"train_tokens": self.tokens} if self.tokens else {}),
        }


def shared_length(chosen: list[int], rejected: list[int]) -> int:
    """p: the longest common token prefix of the two sequences, leaving each at least one token."""
    cap = min(len(chosen), len(rejected)) - 1
    p = 0
    while p < cap and chosen[p] == rejected[p]:
        p += 1
    return p


def token_counts(split: EncodedSplit) -> dict[str, int]:
    """Real tokens a split feeds per epoch, as two sequences per pair and shared (n + m - p), and the pairs
    that share nothing (p = 0: sides whose prompts truncation cut by different amounts)."""
    separate = shared = unshared_pairs = 0
    for rec in split.records:
        c, r = rec["input_ids_chosen"], rec["input_ids_rejected"]
        p = shared_length(c, r)
        separate += len(c) + len(r)
        shared += len(c) + len(r) - p
        unshared_pairs += p == 0
    return {"separate": separate, "shared": shared, "pairs_sharing_nothing": unshared_pairs}


def segment(chosen: list[int], rejected: list[int]) -> tuple[list[int], list[int], list[int], int, int]:
    """One pair as (ids, positions, roles, chosen's last index, rejected's last index), indices in the segment."""
    p = shared_length(chosen, rejected)
    ids = chosen + rejected[p:]
    positions = list(range(len(chosen))) + list(range(p, len(rejected)))
    roles = [0] * p + [1] * (len(chosen) - p) + [2] * (len(rejected) - p)
    return ids, positions, roles, len(chosen) - 1, len(ids) - 1


def pack(lengths: list[int], packing: bool) -> list[list[int]]:
    """Rows as lists of segment indices: one segment a row, or first-fit decreasing into rows no wider than
    the longest segment (so packing never widens the batch, it only removes rows of padding)."""
    if not packing:
        return [[i] for i in range(len(lengths))]
    width, rows, room = max(lengths), [], []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


class SharedPairCollator(PairCollator):
    """Pairs as prefix-shared segments in (rows, L) tensors: `input_ids`, `position_ids`, `pair` (the pair's
    index in the batch, -1 on padding), `role`, and `score_index` (2, B, 2): (row, column) of the last token
    of chosen ([0]) and rejected ([1]) of each pair, in the batch's pair order. Side tables as PairCollator."""

    def __init__(self, split: EncodedSplit, pad_id: int, packing: bool = True):
        super().__init__(split, pad_id)
        self.packing = packing

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        segs = [segment(f["input_ids_chosen"], f["input_ids_rejected"]) for f in features]
        rows = pack([len(s[0]) for s in segs], self.packing)
        width = max(sum(len(segs[i][0]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        pair = torch.full((len(rows), width), -1, dtype=torch.long)
        role = torch.zeros((len(rows), width), dtype=torch.long)
        index = torch.zeros((2, len(features), 2), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                seg_ids, seg_pos, seg_roles, last_c, last_r = segs[i]
                end = start + len(seg_ids)
                ids[r, start:end] = torch.tensor(seg_ids)
                pos[r, start:end] = torch.tensor(seg_pos)
                role[r, start:end] = torch.tensor(seg_roles)
                pair[r, start:end] = i
                index[0, i] = torch.tensor([r, start + last_c])
                index[1, i] = torch.tensor([r, start + last_r])
                start = end
        rows_t = torch.tensor([f["row"] for f in features], dtype=torch.long)
        batch = {
            "input_ids": ids,
            "position_ids": pos,
            "pair": pair,
            "role": role,
            "score_index": index,
            "rows": rows_t,
            "dataset_margin": self.margin[rows_t],
            "num_tokens": sum(len(s[0]) for s in segs),
        }
        if self.emb_c is not None:
            batch["emb_chosen"], batch["emb_rejected"] = self.emb_c[rows_t], self.emb_r[rows_t]
        return batch


def attention_mask(pair, role, boolean: bool, dtype=None):
    """(rows, 1, L, L) mask M of the module docstring: boolean (True = attend; SDPA) or additive float
    (0 or the dtype's minimum; eager attention)."""
    import torch

    length = pair.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=pair.device).tril()
    same_pair = pair[:, :, None] == pair[:, None, :]
    visible = (role[:, None, :] == 0) | (role[:, :, None] == role[:, None, :])
    allowed = causal & same_pair & visible & (pair[:, :, None] >= 0)
    pad_self = (pair < 0)[:, :, None] & torch.eye(length, dtype=torch.bool, device=pair.device)
    allowed = (allowed | pad_self)[:, None]
    if boolean:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=pair.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def head_module(model, head: str):
    """The module that turns last hidden states into per-token scores, through DDP/accelerate and peft wrappers."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return getattr(inner, head)


def attention_implementation(model) -> str | None:
    """The model's attention implementation ("sdpa", "eager", ...), through wrappers."""
    return getattr(getattr(getattr(model, "module", model), "config", None), "_attn_implementation", None)


def score_pairs(model, head: str, inputs: dict[str, Any], hidden: bool = False):
    """(r_c, r_r), each (B,), read at `score_index` from the head's per-token output; with `hidden`, also the
    head's inputs there, (2, B, H), for the semantic cost."""

    seen: dict[str, Any] = {}

    def keep(module, args, output):
        seen["logits"], seen["hidden"] = output, args[0]

    boolean = attention_implementation(model) != "eager"
    dtype = next(model.parameters()).dtype
    mask = attention_mask(inputs["pair"], inputs["role"], boolean, dtype)
    handle = head_module(model, head).register_forward_hook(keep)
    try:
        model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=inputs["position_ids"], use_cache=False)
    finally:
        handle.remove()
    index = inputs["score_index"]
    logits = seen["logits"][index[..., 0], index[..., 1], 0].float()
    states = seen["hidden"][index[..., 0], index[..., 1]] if hidden else None
    return logits[0], logits[1], states


def decide(requested: bool | None, model, head: str, frozen: bool, packing: bool = True) -> Sharing:
    """Whether prefix sharing can apply to this model, before the exactness check; `requested` None is the
    default (on where it applies), False is off, True asks for it (an error where it cannot apply)."""
    from aplot_cli.errors import ConfigError

    if requested is False:
        return Sharing(False, "off (--no-prefix-sharing)")
    reasons = []
    if head != "score":
        reasons.append(
            "the backbone is an encoder (bidirectional attention: a shared prompt would see both "
            "responses), so pairs run as two sequences"
        )
    if frozen:
        reasons.append(
            "--frozen-backbone trains the head on features cached per sequence, so the backbone "
            "does not run in training"
        )
    impl = attention_implementation(model)
    if head == "score" and impl not in ATTENTION:
        reasons.append(
            f"the attention implementation is {impl!r}; prefix sharing needs one that applies a "
            f"4D mask ({', '.join(ATTENTION)})"
        )
    if reasons:
        if requested:
            raise ConfigError(
                "train-rm: --prefix-sharing cannot apply: " + "; ".join(reasons),
                hint="drop --prefix-sharing (the default shares prompts only where it applies)",
            )
        return Sharing(False, "; ".join(reasons))
    return Sharing(True, "causal decoder: one sequence per pair, the prompt run once", packing)


def check_exact(model, head: str, split: EncodedSplit, pad_id: int, device) -> dict[str, Any]:
    """Score the split's first CHECK_PAIRS pairs both ways (eval mode, no gradients) and report the largest
    difference and whether it is within CHECK_TOL of the scores' scale."""
    import torch

    features = split.records[:CHECK_PAIRS]
    separate = PairCollator(split, pad_id)(features)
    shared = SharedPairCollator(split, pad_id, packing=True)(features)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward = {k: separate[k].to(device) for k in ("input_ids", "attention_mask")}
            scores = model(**forward).logits[:, 0].float()
            n = len(features)
            r_c, r_r, _ = score_pairs(
                model, head, {k: v.to(device) if torch.is_tensor(v) else v for k, v in shared.items()}
            )
    finally:
        model.train(was_training)
    diff = float(torch.cat([(r_c - scores[:n]).abs(), (r_r - scores[n:]).abs()]).max())
    scale = max(1.0, float(scores.abs().max()))
    return {"pairs": n, "max_abs_diff": diff, "tolerance": CHECK_TOL * scale, "passed": diff <= CHECK_TOL * scale}


def confirm(
    sharing: Sharing, requested: bool | None, model, head: str, split: EncodedSplit, pad_id: int, device
) -> Sharing:
    """`sharing` once `check_exact` passed on this model and split (moved to `device` for it); a failed check
    turns the default off (the reason and the difference recorded) and refuses an explicit --prefix-sharing."""
    from aplot_cli.errors import ModelError

    if not sharing.enabled or not split.records:
        return sharing
    model.to(device)
    check = check_exact(model, head, split, pad_id, device)
    tokens = token_counts(split)
    if check["passed"]:
        return Sharing(True, sharing.reason, sharing.packing, check, tokens)
    reason = (
        f"scores with a shared prompt differed from the two-sequence forward by {check['max_abs_diff']:.3g} "
        f"(tolerance {check['tolerance']:.3g}) on the first {check['pairs']} pairs: this model's attention "
        "does not depend on positions through position ids alone (ALiBi, a sliding window, ...)"
    )
    if requested:
        raise ModelError(
            f"train-rm: --prefix-sharing: {reason}", hint="drop --prefix-sharing or pass --no-prefix-sharing"
        )
    return Sharing(False, reason, False, check, tokens)
