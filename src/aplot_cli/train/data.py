"""From pairs to batches: each (prompt, chosen) and (prompt, rejected) encoded with `formatting.encode_many`
(ids as `formatting.encode` gives them; truncation explicit and counted, nothing dropped) into an `EncodedSplit`, served by `PairDataset`, and
padded by `PairCollator` into one (2B, L) batch (rows 0..B-1 chosen, B..2B-1 rejected) with the
per-pair side tables (dataset margin, unit-length sentence embeddings) by row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aplot_cli import formatting
from aplot_cli.config import TrainConfig
from aplot_cli.errors import InputDataError


@dataclass
class EncodedSplit:
    """Token ids per pair, plus what a report needs: truncation counts and aligned side tables."""

    records: list[dict[str, Any]]
    pair_ids: list[str]
    dataset_margin: np.ndarray                 # (N,) float32, 0 where the dataset has none
    emb_chosen: np.ndarray | None = None       # (N, D) rows aligned with pair_ids
    emb_rejected: np.ndarray | None = None
    truncation: dict[str, int] = field(default_factory=dict)


def encode_split(frame, tokenizer, cfg: TrainConfig, embeddings=None, split_id: int = 0,
                 encode_many=None) -> EncodedSplit:
    """Encode every (prompt, chosen) and (prompt, rejected) with `formatting.encode_many` (or `encode_many`, a
    drop-in such as `tokencache.TokenMemo.encode_many`), both sides of the split in one batched call;
    nothing is dropped."""
    encode_many = encode_many or formatting.encode_many
    n = len(frame)
    prompts, messages = frame["prompt"].tolist(), frame["prompt_messages"].tolist()
    encoded = encode_many(tokenizer, prompts + prompts, frame["chosen"].tolist() + frame["rejected"].tolist(),
                          cfg.max_length, messages + messages, cfg.chat_template)
    records, counts = [], {"pairs": n, "prompt_truncated": 0, "response_truncated": 0, "pairs_truncated": 0}
    for row in range(n):
        sides = (encoded[row], encoded[n + row])
        prompt_cuts = sides[0].prompt_truncated + sides[1].prompt_truncated
        response_cuts = sides[0].response_truncated + sides[1].response_truncated
        counts["prompt_truncated"] += prompt_cuts
        counts["response_truncated"] += response_cuts
        counts["pairs_truncated"] += bool(prompt_cuts or response_cuts)
        record = {"split": split_id, "row": row, "input_ids_chosen": sides[0].input_ids, "input_ids_rejected": sides[1].input_ids,
                  "length": max(len(sides[0].input_ids), len(sides[1].input_ids))}
        if sides[0].token_type_ids is not None:
            record["token_type_ids_chosen"] = sides[0].token_type_ids
            record["token_type_ids_rejected"] = sides[1].token_type_ids
        records.append(record)
    margin = frame["margin"].to_numpy(dtype=np.float32, na_value=np.nan) if "margin" in frame else np.zeros(len(frame))
    split = EncodedSplit(records, list(frame["pair_id"]), np.nan_to_num(margin.astype(np.float32), nan=0.0),
                         truncation=counts)
    if embeddings is not None:
        index = {pid: i for i, pid in enumerate(embeddings.pair_ids)}
        missing = [pid for pid in split.pair_ids if pid not in index]
        if missing:
            raise InputDataError(f"{len(missing)} pairs (e.g. {missing[0]}) have no embedding",
                                 hint="re-run `aplot embed` on this pairs artifact")
        rows = np.array([index[pid] for pid in split.pair_ids], dtype=np.int64)
        split.emb_chosen, split.emb_rejected = embeddings.chosen[rows], embeddings.rejected[rows]
    return split


class PairDataset:
    """A map-style dataset of encoded pairs (`length` lets Trainer group by length)."""

    def __init__(self, split: EncodedSplit):
        self.split = split
        self.column_names = ["length"]

    def __len__(self) -> int:
        return len(self.split.records)

    def __getitem__(self, i):
        if isinstance(i, str):  # Trainer reads `dataset["length"]` for length-grouped sampling
            return [r[i] for r in self.split.records]
        return self.split.records[i]


def _unit_rows(table: np.ndarray):
    import torch

    return torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)), dim=1)


class PairCollator:
    """Pads chosen and rejected to one length (right padding) and stacks them as (2B, L): rows 0..B-1
    chosen, B..2B-1 rejected, so one forward pass scores both. Side tables ride along by row."""

    def __init__(self, split: EncodedSplit, pad_id: int):
        import torch

        self.pad_id = pad_id
        self.margin = torch.from_numpy(split.dataset_margin)
        # Unit length once here, so the semantic cost on the device is one matrix product per step.
        self.emb_c = None if split.emb_chosen is None else _unit_rows(split.emb_chosen)
        self.emb_r = None if split.emb_rejected is None else _unit_rows(split.emb_rejected)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seqs = [f["input_ids_chosen"] for f in features] + [f["input_ids_rejected"] for f in features]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, :len(seq)] = 1
        rows = torch.tensor([f["row"] for f in features], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "rows": rows, "dataset_margin": self.margin[rows],
                 "num_tokens": sum(len(s) for s in seqs)}  # a host int: counting on the device would sync
        if "token_type_ids_chosen" in features[0]:
            types = [f["token_type_ids_chosen"] for f in features] + [f["token_type_ids_rejected"] for f in features]
            batch["token_type_ids"] = torch.zeros_like(ids)
            for i, seq in enumerate(types):
                batch["token_type_ids"][i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        if self.emb_c is not None:
            batch["emb_chosen"], batch["emb_rejected"] = self.emb_c[rows], self.emb_r[rows]
        return batch


# ---------------------------------------------------------------------------------------- model


class SplitCollator:
    """Trainer has one collator for train and eval: route by the split id each record carries."""

    def __init__(self, train: EncodedSplit, test: EncodedSplit | None, pad_id: int, make=PairCollator):
        self.collators = {0: make(train, pad_id)}  # make: PairCollator, or prefix.SharedPairCollator's factory
        if test is not None:
            self.collators[1] = make(test, pad_id)

    def __call__(self, features):
        return self.collators[features[0]["split"]](features)
