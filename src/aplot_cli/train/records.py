"""The margin record: `MarginSink` keeps each step's per-pair margins and rewards, writes them per rank
at each checkpoint, and merges them into `margins.parquet` at the end. Also the names of the files a
run logs into."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

LOG_FILE = "train_log.jsonl"
MARGINS_FILE = "margins.parquet"


class MarginSink:
    """Per-pair margins per optimizer step, flushed to `margins/part-r{rank}-s{step}.parquet` at each
    checkpoint (so a resumed run keeps exactly the steps its checkpoint covers) and merged at the end."""

    def __init__(self, out_dir: Path, pair_ids: list[str], rank: int, resumed_step: int):
        self.dir, self.pair_ids, self.rank = out_dir / "margins", pair_ids, rank
        self.dir.mkdir(exist_ok=True)
        self.rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for part in self.dir.glob(f"part-r{rank}-*.parquet"):  # each rank prunes only its own parts
            if int(part.stem.rsplit("-s", 1)[1]) > resumed_step:  # a fresh start (-1) keeps none
                part.unlink()

    def add(self, step: int, rows, margin, r_c, r_r) -> None:
        """Keeps the tensors where they are (a few floats per pair) until the next checkpoint."""
        self.rows.append((step, rows.detach(), margin.detach().float(), r_c.detach().float(), r_r.detach().float()))

    def flush(self) -> None:
        import pandas as pd

        if not self.rows:
            return
        self.rows = [(s, *(t.cpu().numpy() for t in tensors)) for s, *tensors in self.rows]
        steps, rows, margin, r_c, r_r = zip(*self.rows, strict=True)
        r_c, r_r = np.concatenate(r_c), np.concatenate(r_r)
        frame = pd.DataFrame({
            "pair_id": [self.pair_ids[r] for part in rows for r in part],
            "step": np.concatenate([np.full(len(part), s) for s, part in zip(steps, rows, strict=True)]).astype(np.int64),
            "margin": np.concatenate(margin),
            "reward_diff": r_c - r_r,
            "reward_chosen": r_c,
            "reward_rejected": r_r,
        })
        final = self.dir / f"part-r{self.rank}-s{int(frame['step'].max()):08d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")  # a kill while writing leaves no part cut short
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, final)
        self.rows = []

    def merge(self, out_file: Path) -> int:
        import pandas as pd

        parts = sorted(self.dir.glob("part-*.parquet"))
        frame = (pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts
                 else pd.DataFrame({"pair_id": [], "step": [], "margin": [], "reward_diff": [], "reward_chosen": [],
                                    "reward_rejected": []}))
        frame = frame.sort_values(["step", "pair_id"], kind="stable").reset_index(drop=True)
        frame.to_parquet(out_file, index=False)
        for part in parts:
            part.unlink()
        self.dir.rmdir()
        return len(frame)


# ---------------------------------------------------------------------------------------- stage
