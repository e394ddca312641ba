"""ot_scope=global: two gloo CPU processes that each hold part of a batch get exactly the margins a single
process computes on the whole (global) batch, each rank its own rows."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from aplot_cli.margins import AplotMargin, AplotSettings


def global_batch(n=12, dim=8):
    gen = torch.Generator().manual_seed(7)
    return (torch.randn(n, generator=gen), torch.randn(n, generator=gen),
            torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1),
            torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1))


NORMS = ("none", "zscore")


def _worker(rank: int, world: int, init_file: str, bounds: list[int], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        r_c, r_r, e_c, e_r = global_batch()
        rows = slice(bounds[rank], bounds[rank + 1])  # uneven shards on purpose
        for norm in NORMS:
            result = AplotMargin(AplotSettings(ot_scope="global", margin_norm=norm))(r_c[rows], r_r[rows], e_c[rows],
                                                                                  e_r[rows])
            torch.save({"margin": result.margin, "offset": result.offset}, f"{out}/{norm}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_global_scope_equals_single_process_margins(tmp_path):
    bounds = [0, 5, 12]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), bounds, str(tmp_path)), nprocs=2, join=True)
    r_c, r_r, e_c, e_r = global_batch()
    for norm in NORMS:
        single = AplotMargin(AplotSettings(ot_scope="local", margin_norm=norm))(r_c, r_r, e_c, e_r).margin
        local_only = AplotMargin(AplotSettings(margin_norm=norm))(r_c[:5], r_r[:5], e_c[:5], e_r[:5]).margin
        parts = [torch.load(tmp_path / f"{norm}-rank{r}.pt") for r in range(2)]
        assert [p["offset"] for p in parts] == [0, 5]
        gathered = torch.cat([p["margin"] for p in parts])
        assert gathered.shape == (12,)
        torch.testing.assert_close(gathered, single, rtol=0, atol=1e-6)
        assert not torch.allclose(parts[0]["margin"], local_only)  # a rank-local plan would differ
