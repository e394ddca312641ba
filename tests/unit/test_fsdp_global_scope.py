"""ot_scope=global under FSDP: two gloo CPU processes, each holding half of a tiny BERT's parameters (torch's
FSDP2 `fully_shard`, one unit per layer) and half of a batch, take the same optimizer step as one process
training on the whole batch with one plan. accelerate runs FSDP on GPUs only (on CPUs it falls back to
plain data parallel, tested in tests/e2e/test_train_rm_e2e.py), so FSDP itself is driven here as
train-rm's loss does: rewards from one forward of chosen and rejected, the margin of a plan over the
gathered global batch, `reward_loss` on the rank's rows."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from aplot_cli.losses import parse_losses, reward_loss
from aplot_cli.margins import AplotMargin, AplotSettings

PAIRS, LENGTH, LR = 8, 12, 0.5
READINGS = {"section2": {}, "hardness-diag-std-z": dict(plan_on="hardness", cost_norm="std", margin_from="diag",
                                                        margin_norm="zscore")}


def global_batch(vocab: int):
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(1000, vocab, (2 * PAIRS, LENGTH), generator=gen)  # rows 0..7 chosen, 8..15 rejected
    emb = torch.nn.functional.normalize(torch.randn(2 * PAIRS, 16, generator=gen), dim=1)
    return ids, emb[:PAIRS], emb[PAIRS:]


def step(model, ids_c, ids_r, e_c, e_r, settings):
    """One train-rm loss step on these rows: chosen and rejected in one forward, the APLOT margin, SGD."""
    rewards = model(input_ids=torch.cat([ids_c, ids_r])).logits[:, 0]
    r_c, r_r = rewards[:len(ids_c)], rewards[len(ids_c):]
    margin = AplotMargin(settings)(r_c, r_r, e_c, e_r).margin
    reward_loss(parse_losses("aplot"), r_c, r_r, margin).loss.backward()
    return margin


def load(model_dir: str):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()  # eval: no dropout masks to match
    return model, torch.optim.SGD(model.parameters(), lr=LR)


def _worker(rank: int, world: int, init_file: str, model_dir: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, reading in READINGS.items():
            model, _ = load(model_dir)
            for layer in model.bert.encoder.layer:
                fully_shard(layer)
            fully_shard(model)
            optim = torch.optim.SGD(model.parameters(), lr=LR)
            ids, e_c, e_r = global_batch(model.config.vocab_size)
            rows = slice(rank * PAIRS // world, (rank + 1) * PAIRS // world)
            margin = step(model, ids[:PAIRS][rows], ids[PAIRS:][rows], e_c[rows], e_r[rows],
                          AplotSettings(ot_scope="global", **reading))
            optim.step()
            sharded = all(type(p).__name__ == "DTensor" for p in model.parameters())
            full = {k: v.full_tensor() for k, v in model.state_dict().items()}  # a collective: every rank
            if rank == 0:
                torch.save({"weights": full, "sharded": sharded}, f"{out}/{name}-weights.pt")
            torch.save(margin, f"{out}/{name}-margin-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_out(tiny_bert_dir, tmp_path_factory):
    """One pair of FSDP processes serves every reading."""
    out = tmp_path_factory.mktemp("fsdp")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(out / "init"), str(tiny_bert_dir), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("reading", list(READINGS))
def test_fsdp_two_cpu_ranks_take_the_single_process_global_batch_step(reading, fsdp_out, tiny_bert_dir):
    out = fsdp_out
    model, optim = load(str(tiny_bert_dir))
    ids, e_c, e_r = global_batch(model.config.vocab_size)
    single = step(model, ids[:PAIRS], ids[PAIRS:], e_c, e_r, AplotSettings(**READINGS[reading]))
    optim.step()
    saved = torch.load(out / f"{reading}-weights.pt")
    assert saved["sharded"]  # the parameters really were FSDP shards
    gathered = torch.cat([torch.load(out / f"{reading}-margin-rank{r}.pt") for r in range(2)])
    torch.testing.assert_close(gathered, single, rtol=0, atol=1e-6)
    half = AplotMargin(AplotSettings(**READINGS[reading]))(*(t[:PAIRS // 2] for t in (
        model(input_ids=torch.cat([ids[:PAIRS // 2], ids[PAIRS:PAIRS + PAIRS // 2]])).logits[:, 0].split(PAIRS // 2)
        )), e_c[:PAIRS // 2], e_r[:PAIRS // 2]).margin
    assert not torch.allclose(half, gathered[:PAIRS // 2], atol=1e-4)  # a rank-local plan would differ
    initial, _ = load(str(tiny_bert_dir))
    moved = 0
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(value, initial.state_dict()[name])
    assert moved > 10  # the step changed the weights (so equal weights are not two untouched copies)
