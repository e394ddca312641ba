"""train-rm on tiny local models: artifacts, logging names, padding, LoRA, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from aplot_cli import outdir, train
from aplot_cli.config import TRAIN_FLAGS, TrainConfig
from aplot_cli.config_files import build_config

LOG_NAMES = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "ot/margin_mean", "ot/margin_std",
             "ot/cost_mean", "ot/margin_spread", "ot/converged_frac", "ot/seconds", "num_tokens", "pairs_per_second")


def tiny_cfg(backbone, **changes) -> TrainConfig:
    base = dict(backbone=str(backbone), max_steps=4, batch_size=8, eval_batch_size=16, max_length=64,
                learning_rate=1e-3, logging_steps=2, save_steps=2, max_eval_pairs=16, train_eval_pairs=16, seed=3)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def embeddings_dir(synthetic_pairs_dir, tmp_path_factory, tiny_bert_dir):
    """An embeddings artifact made by the real stage with the tiny BERT as encoder (fast)."""
    from aplot_cli import embed
    from aplot_cli.config import EmbedConfig

    out = tmp_path_factory.mktemp("emb") / "emb"
    embed.run(EmbedConfig(model=str(tiny_bert_dir), max_length=64), synthetic_pairs_dir, out)
    return out


def read_log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_aplot_run_writes_a_loadable_model_log_margins_and_manifest(tiny_bert_dir, synthetic_pairs_dir,
                                                                     embeddings_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "rm"
    manifest_path = train.run(tiny_cfg(tiny_bert_dir), synthetic_pairs_dir, out, embeddings_dir=embeddings_dir)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["stage"] == "train-rm" and set(manifest["inputs"]) == {"pairs", "embeddings"}
    assert {"train_accuracy", "test_accuracy", "train_loss", "steps"} <= set(manifest["metrics"])
    assert manifest["metrics"]["steps"] == 4
    assert manifest["diagnostics"]["truncation"]["train"]["pairs"] == 180
    assert manifest["diagnostics"]["ot"]["solves"] == 4 and manifest["diagnostics"]["ot"]["fallbacks"] == 0
    assert manifest["diagnostics"]["ot"]["pairs_per_solve"] == 8 and manifest["diagnostics"]["ot"]["max_pairs"] == 8
    assert manifest["diagnostics"]["precision"] == "float32" and manifest["model"]["identity"].startswith("dir:")
    assert manifest["model"]["loss"] == "bt+aplot"
    train_logs = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in train_logs] == [2, 4]
    for name in LOG_NAMES:
        assert name in train_logs[0], name
    margins = pd.read_parquet(out / "margins.parquet")
    assert list(margins.columns[:3]) == ["pair_id", "step", "margin"] and len(margins) == 4 * 8
    assert sorted(margins["step"].unique()) == [1, 2, 3, 4] and margins["margin"].notna().all()
    listed = {o["path"] for o in manifest["outputs"]}
    assert {"training_curves.png", "report.md"} <= listed and (out / "training_curves.png").stat().st_size > 10_000
    assert {"model/tokenizer.json", "model/model.safetensors"} <= listed  # every file a loader reads is hashed
    assert outdir.foreign_entries(out, "train-rm", finished=True) == []  # --overwrite may replace it
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    initial = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    assert not torch.equal(model.classifier.weight, initial.classifier.weight)  # it trained
    with torch.no_grad():
        scores = model(**tok(["a b", "c d e"], padding=True, return_tensors="pt")).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def test_torch_ot_solver_trains_like_pot(tiny_bert_dir, synthetic_pairs_dir, embeddings_dir, tmp_path):
    """`--ot-solver torch` (float32, the CUDA path's updates, run eagerly here) gives the same per-step
    margins and logs the same diagnostics as POT, with the lazy (device-tensor) metrics read at log time."""
    runs = {}
    for solver in ("pot", "torch"):
        out = tmp_path / solver
        manifest = json.loads(train.run(tiny_cfg(tiny_bert_dir, ot_solver=solver), synthetic_pairs_dir, out,
                                        embeddings_dir=embeddings_dir).read_text())
        runs[solver] = (manifest, pd.read_parquet(out / "margins.parquet"), read_log(out))
    assert runs["pot"][0]["diagnostics"]["ot"]["solver"] == "pot-cpu-float64"
    on_cuda = runs["torch"][0]["diagnostics"]["device"] == "cuda"
    expected = {"torch-cuda-float32-fused", "torch-cuda-float32-cuda-graph"} if on_cuda else {"torch-cpu-float32-eager"}
    assert runs["torch"][0]["diagnostics"]["ot"]["solver"] in expected
    for solver in runs:
        ot = runs[solver][0]["diagnostics"]["ot"]
        assert ot["solves"] == 4 and ot["converged"] == 4 and ot["fallbacks"] == 0 and ot["converged_frac"] == 1.0
    pd.testing.assert_series_equal(runs["pot"][1]["margin"], runs["torch"][1]["margin"], rtol=1e-4, atol=1e-5)
    pot_log, torch_log = ([r for r in runs[s][2] if "loss" in r] for s in ("pot", "torch"))
    for a, b in zip(pot_log, torch_log, strict=True):
        for name in ("loss", "accuracy", "ot/margin_mean", "ot/cost_mean", "ot/converged_frac", "num_tokens"):
            assert isinstance(b[name], float) and b[name] == pytest.approx(a[name], rel=1e-3, abs=1e-5), name


@pytest.mark.parametrize("solver", ["pot", "torch"])
def test_long_logging_interval_reduces_step_metrics_early(solver, tiny_bert_dir, synthetic_pairs_dir, embeddings_dir,
                                                          tmp_path, monkeypatch):
    """Step tensors are reduced every PENDING_STEPS steps; the logged means are the same per-step means."""
    from aplot_cli.train import trainer

    logs, usual = {}, trainer.PENDING_STEPS
    for pending in (usual, 3):
        monkeypatch.setattr(trainer, "PENDING_STEPS", pending)
        out = tmp_path / f"p{pending}"
        train.run(tiny_cfg(tiny_bert_dir, max_steps=4, logging_steps=4, ot_solver=solver), synthetic_pairs_dir, out,
                  embeddings_dir=embeddings_dir)
        logs[pending] = [r for r in read_log(out) if "loss" in r]
    (default,), (early,) = logs[usual], logs[3]
    for name in ("accuracy", "margin", "rewards/chosen", "margin_applied", "ot/margin_mean", "ot/converged_frac"):
        assert early[name] == pytest.approx(default[name], rel=1e-5, abs=1e-7), name


def test_decoder_lora_backbone_semantics_and_padding(tiny_llama_rm_dir, synthetic_pairs_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aplot_cli import formatting

    cfg = tiny_cfg(tiny_llama_rm_dir, loss=("aplot", "center"), semantic_source="backbone", lora=True,
                   lora_r=4, lora_alpha=8, max_steps=2, save_steps=10, max_eval_pairs=8, train_eval_pairs=8,
                   group_by_length=True)
    out = tmp_path / "rm"
    manifest = json.loads(train.run(cfg, synthetic_pairs_dir, out).read_text())
    assert manifest["model"]["head"] == "score" and manifest["model"]["chat_template"] is True
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert "score" in adapter_cfg["modules_to_save"]
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    formatting.prepare_tokenizer(tok, model.config)
    short = formatting.encode(tok, "Sort: b a", "a b", 64).input_ids
    long = formatting.encode(tok, "Reverse the string 'hello world'", "dlrow olleh", 64).input_ids
    width = max(len(short), len(long))
    ids = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, seq in enumerate((short, long)):
        ids[i, :len(seq)], mask[i, :len(seq)] = torch.tensor(seq), 1
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        alone = model(input_ids=torch.tensor([short])).logits[0, 0]
    assert torch.allclose(batched[0], alone, atol=1e-5)  # right padding: score at the last real token


class _Kill:
    """Simulates a crash right after the checkpoint at `step` is written."""

    def __init__(self, step):
        from transformers import TrainerCallback

        class Kill(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        self.callback = Kill()


def test_killed_run_resumes_to_the_same_final_metrics(tiny_bert_dir, synthetic_pairs_dir, embeddings_dir, tmp_path):
    cfg = tiny_cfg(tiny_bert_dir, max_steps=6, save_steps=3, logging_steps=3)
    whole = json.loads(train.run(cfg, synthetic_pairs_dir, tmp_path / "a", embeddings_dir=embeddings_dir).read_text())
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, synthetic_pairs_dir, out, embeddings_dir=embeddings_dir, extra_callbacks=(_Kill(3).callback,))
    assert not (out / "manifest.json").exists()
    resumed = json.loads(train.run(cfg, synthetic_pairs_dir, out, embeddings_dir=embeddings_dir,
                                   resume=True).read_text())
    assert resumed["diagnostics"]["resumed_from_step"] == 3
    for key in ("test_accuracy", "test_loss", "train_accuracy", "steps"):
        assert resumed["metrics"][key] == pytest.approx(whole["metrics"][key], rel=1e-5, abs=1e-6), key
    a = pd.read_parquet(tmp_path / "a" / "margins.parquet")
    b = pd.read_parquet(out / "margins.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-5)
    assert [r["step"] for r in read_log(out) if "loss" in r] == [3, 6]


def test_config_yaml_loss_string_and_validation(tmp_path, synthetic_pairs_dir):
    from aplot_cli.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("loss: aplot+center\nmargin_norm: zscore\nlora: false\n")
    cfg = build_config(TrainConfig, path, {"lora": True})
    assert train.validate(cfg, has_embeddings=True).name == "bt+aplot+center" and cfg.lora is True
    with pytest.raises(ConfigError, match="embeddings"):
        train.validate(TrainConfig(), has_embeddings=False)
    with pytest.raises(ConfigError, match="margin_norm"):
        build_config(TrainConfig, None, {"margin_norm": "l2"})


@pytest.mark.parametrize(("changes", "named", "hint"), [
    ({"ot_reg": 0.0}, "`ot_reg` is 0.0; it must be > 0", "ot_reg:"),
    ({"ot_tol": 0.0}, "`ot_tol` is 0.0", "ot_tol:"),
    ({"margin_warmup_steps": -1}, "`margin_warmup_steps` is -1; it must be >= 0", "margin_warmup_steps:"),
    ({"label_smooth_eps": 1.0}, "`label_smooth_eps` is 1.0; it must be in [0, 1)", "label_smooth_eps:"),
    ({"max_steps": -3}, "`max_steps` is -3", "--max-steps"),
    ({"max_train_pairs": 0}, "`max_train_pairs` is 0", "max_train_pairs:"),
    ({"device": "gpu"}, "`device` is 'gpu'; it must be one of auto, cpu, cuda", "--device"),
    ({"scheduler": "cosinee"}, "`scheduler` is 'cosinee'", "did you mean 'cosine'"),
    ({"report_to": ("tensorbord",)}, "`report_to` is 'tensorbord'", "did you mean 'tensorboard'"),
    ({"bf16": True, "fp16": True}, "`bf16` and `fp16` are both on", "--no-bf16"),
])
def test_validation_names_the_key_the_value_and_the_fix(changes, named, hint):
    from aplot_cli.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        train.validate(TrainConfig(**changes), has_embeddings=True)
    assert named in caught.value.message and hint in caught.value.hint, str(caught.value)
    key = next(iter(changes))
    if key != "bf16":  # a flag is named only where train-rm has it
        assert (f"--{key.replace('_', '-')}" in caught.value.hint) == (key in TRAIN_FLAGS), caught.value.hint


def test_train_flags_are_the_cli_options():
    import typer

    from aplot_cli.cli import app

    command = next(c for c in typer.main.get_command(app).commands.values() if c.name == "train-rm")
    options = {p.name for p in command.params} - {"pairs", "out_dir", "embeddings", "resume", "config", "overwrite",
                                                    "quiet"}
    assert options == TRAIN_FLAGS


def test_wrong_inputs_are_refused_before_training(tiny_bert_dir, synthetic_pairs_dir, embeddings_dir, tmp_path):
    """margin loss on pairs without margins; embeddings of another pairs artifact; max_length past the
    model's positions: each refused with the file or key named, and nothing left looking finished."""
    from aplot_cli import embed, prepare
    from aplot_cli.config import EmbedConfig, PrepareConfig
    from aplot_cli.errors import ArtifactError, ConfigError, InputDataError

    with pytest.raises(InputDataError, match="no finite margin") as caught:
        train.run(tiny_cfg(tiny_bert_dir, loss=("margin",)), synthetic_pairs_dir, tmp_path / "a")
    assert str(synthetic_pairs_dir) in caught.value.message
    flipped = tmp_path / "flipped"
    prepare.run(PrepareConfig(recipe="synthetic", synthetic_pairs=240, synthetic_ood_pairs=60, test_size=0.25,
                              flip_ratio=0.25), flipped)
    with pytest.raises(ArtifactError, match="made from other pairs than") as caught:
        train.run(tiny_cfg(tiny_bert_dir), flipped, tmp_path / "b", embeddings_dir=embeddings_dir)
    assert f"aplot embed {flipped}" in caught.value.hint
    own = tmp_path / "own-emb"
    embed.run(EmbedConfig(model=str(tiny_bert_dir), max_length=64), flipped, own)
    done = train.run(tiny_cfg(tiny_bert_dir, max_steps=1, fp16=True), flipped, tmp_path / "ok", embeddings_dir=own)
    diagnostics = json.loads(done.read_text())["diagnostics"]
    assert diagnostics["precision"] == "float32" and diagnostics["mixed_precision_ignored_on_cpu"] is True
    # the same pairs prepared again (another manifest: argv differs) keep their embeddings
    again = tmp_path / "again"
    prepare.run(PrepareConfig(recipe="synthetic", synthetic_pairs=240, synthetic_ood_pairs=60, test_size=0.25), again)
    assert train.run(tiny_cfg(tiny_bert_dir, max_steps=1), again, tmp_path / "d", embeddings_dir=embeddings_dir).is_file()
    with pytest.raises(ConfigError, match=r"`max_length` is 600 but .* reads at most 512 tokens \(its"):
        train.run(tiny_cfg(tiny_bert_dir, loss=("bt",), max_length=600), synthetic_pairs_dir, tmp_path / "c")
    for out in ("a", "b", "c"):
        assert not (tmp_path / out / "manifest.json").exists()
    # --overwrite over a finished run: a run refused on its inputs leaves the finished one as it was
    for bad in (tiny_cfg(tiny_bert_dir, loss=("margin",)), tiny_cfg(tiny_bert_dir, loss=("bt",), max_length=600)):
        with pytest.raises((InputDataError, ConfigError)):
            train.run(bad, flipped, tmp_path / "ok", overwrite=True)
        assert done.read_text() and (tmp_path / "ok" / "model" / "config.json").is_file()


@pytest.mark.parametrize("name", ["train-minilm.yaml", "train-smollm2.yaml"])
def test_example_configs_list_every_option_and_load(name):
    import dataclasses

    import yaml

    from aplot_cli.config import TrainConfig

    path = Path(__file__).resolve().parents[2] / "configs" / name
    assert set(yaml.safe_load(path.read_text())) == {f.name for f in dataclasses.fields(TrainConfig)}
    train.validate(build_config(TrainConfig, path), has_embeddings=True)


def test_length_grouped_batches_by_default_only_where_no_batch_term_couples_the_pairs(
        tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """bt (no batch-level term) trains on length-grouped batches by default: less padding per batch than the
    seeded random batches an aplot run keeps (its OT plans see the same pairs together as before)."""
    from transformers import AutoTokenizer

    from aplot_cli import formatting
    from aplot_cli.config import resolve_train

    assert resolve_train(tiny_cfg(tiny_bert_dir, loss=("bt",))).group_by_length is True
    assert resolve_train(tiny_cfg(tiny_bert_dir, loss=("bt", "center"))).group_by_length is True
    assert resolve_train(tiny_cfg(tiny_bert_dir, loss=("aplot",))).group_by_length is False
    assert resolve_train(tiny_cfg(tiny_bert_dir, loss=("bt+aplot",))).group_by_length is False
    assert resolve_train(tiny_cfg(tiny_bert_dir, loss=("bt",), frozen_backbone=True)).group_by_length is False
    assert resolve_train(tiny_cfg(tiny_bert_dir, loss=("bt",), group_by_length=False)).group_by_length is False

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    frame = pd.read_parquet(synthetic_pairs_dir / "train.parquet")
    length = {pid: max(len(formatting.encode(tok, p, t, 64).input_ids) for t in (c, r))
              for pid, p, c, r in zip(frame["pair_id"], frame["prompt"], frame["chosen"], frame["rejected"],
                                      strict=True)}
    padded = {}
    for name, changes in {"default": {}, "random": {"group_by_length": False}}.items():
        out = tmp_path / name
        manifest = json.loads(train.run(tiny_cfg(tiny_bert_dir, loss=("bt",), max_steps=6, **changes),
                                        synthetic_pairs_dir, out).read_text())
        assert manifest["config"]["group_by_length"] is (name == "default")  # recorded as trained
        margins = pd.read_parquet(out / "margins.parquet")
        widths = margins.assign(n=margins["pair_id"].map(length)).groupby("step")["n"].agg(["max", "size"])
        padded[name] = int((widths["max"] * widths["size"]).sum())
    assert padded["default"] < padded["random"]


def test_off_a_terminal_the_final_evaluations_print_progress_too(tiny_bert_dir, synthetic_pairs_dir, tmp_path,
                                                                   monkeypatch, capsys):
    """After the last step, train-rm scores the test split and a train sample: that stretch prints progress
    lines as well (it was minutes of silence in a log on a loaded machine)."""
    from aplot_cli import console

    monkeypatch.setenv("APLOT_PROGRESS_SECONDS", "0")
    console.get_console.cache_clear()
    try:
        train.run(tiny_cfg(tiny_bert_dir, loss=("bt",), max_steps=2, eval_batch_size=4), synthetic_pairs_dir,
                  tmp_path / "rm")
    finally:
        console.get_console.cache_clear()
    lines = capsys.readouterr().err.splitlines()
    trained = max(i for i, line in enumerate(lines) if line.startswith("train-rm 2/2"))
    evaluated = [line for line in lines[trained:] if line.startswith("train-rm evaluate ")]
    assert any(line.startswith("train-rm evaluate 4/4 (100%)") for line in evaluated)  # 16 test pairs / 4
    assert len(evaluated) >= 8  # the test split and the train sample, a line per batch at interval 0


def test_the_package_exports_public_names_only():
    """What tests and other stages use of train-rm is public: no private name is handed on."""
    assert [name for name in train.__all__ if name.startswith("_")] == []
    assert all(hasattr(train, name) for name in train.__all__)
