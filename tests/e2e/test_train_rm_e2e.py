"""prepare synthetic -> embed -> train-rm (APLOT) on the real MiniLM backbone; the saved model scores
chosen above rejected on held-out pairs better than chance. And the same stage launched as two
CPU processes (torchrun and accelerate launch) and ot_scope=global. All are slow (minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def held_out_accuracy(model_dir, frame, max_length):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aplot_cli import formatting

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    formatting.prepare_tokenizer(tok, model.config)

    def score(prompt, response, messages):
        ids = formatting.encode(tok, prompt, response, max_length, messages).input_ids
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    wins = [score(p, c, m) > score(p, r, m)
            for p, c, r, m in zip(frame["prompt"], frame["chosen"], frame["rejected"], frame["prompt_messages"],
                                  strict=True)]
    return sum(wins) / len(wins)


def test_minilm_aplot_pipeline_beats_chance(tmp_path):
    from aplot_cli import embed, prepare, train
    from aplot_cli.config import EmbedConfig, PrepareConfig, TrainConfig
    from aplot_cli.readers.pairs import load_pairs

    pairs, emb, rm = tmp_path / "pairs", tmp_path / "emb", tmp_path / "rm"
    prepare.run(PrepareConfig(recipe="synthetic", synthetic_pairs=700, synthetic_ood_pairs=60, test_size=0.15), pairs)
    embed.run(EmbedConfig(max_length=128), pairs, emb)
    cfg = TrainConfig(backbone="minilm-l6", max_steps=80, batch_size=16, max_length=128, learning_rate=1e-4,
                      logging_steps=10, save_steps=1000, max_eval_pairs=100, train_eval_pairs=100)
    manifest = json.loads(train.run(cfg, pairs, rm, embeddings_dir=emb).read_text())
    assert manifest["metrics"]["test_accuracy"] > 0.6
    frame = load_pairs(pairs, "test").head(100)
    assert held_out_accuracy(rm / "model", frame, 128) > 0.6


LAUNCHERS = {"torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"],
             "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                            "--main_process_port", "29542"]}


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_cpu_processes_global_scope(launcher, tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    from aplot_cli import embed
    from aplot_cli.config import EmbedConfig

    emb = tmp_path / "emb"
    embed.run(EmbedConfig(model=str(tiny_bert_dir), max_length=64), synthetic_pairs_dir, emb)
    out = tmp_path / "rm"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, *LAUNCHERS[launcher], "-m", "aplot_cli", "train-rm", str(synthetic_pairs_dir), "--embeddings", str(emb), "--out-dir", str(out),
           "--backbone", str(tiny_bert_dir), "--max-steps", "3", "--batch-size", "4", "--max-length", "64",
           "--ot-scope", "global", "--max-eval-pairs", "8", "--device", "cpu", "-q"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(out / "manifest.json")]  # printed once, by the main process
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["diagnostics"]["world_size"] == 2
    import pandas as pd

    margins = pd.read_parquet(out / "margins.parquet")
    assert margins.groupby("step").size().tolist() == [8, 8, 8]  # both ranks' rows, every step
    # each step's margins are the single-process margins of the global batch (both ranks' 8 pairs, with the
    # rewards the ranks computed), not those of a plan over only 4 of them (what a rank-local plan would be)
    import torch

    from aplot_cli.margins import AplotMargin, AplotSettings
    from aplot_cli.readers.embeddings import load_embeddings

    table = load_embeddings(emb, "train")
    index = {pid: i for i, pid in enumerate(table.pair_ids)}
    single, local = AplotMargin(AplotSettings()), AplotMargin(AplotSettings())
    for _, batch in margins.groupby("step"):
        rows = [index[pid] for pid in batch["pair_id"]]
        r_c, r_r, recorded = (torch.tensor(batch[c].to_numpy()) for c in ("reward_chosen", "reward_rejected", "margin"))
        e_c, e_r = torch.from_numpy(table.chosen[rows]), torch.from_numpy(table.rejected[rows])
        torch.testing.assert_close(single(r_c, r_r, e_c, e_r).margin.float(), recorded, rtol=0, atol=1e-5)
        own = local(r_c[:4], r_r[:4], e_c[:4], e_r[:4]).margin.float()
        assert not torch.allclose(own, recorded[:4], atol=1e-5)
