"""docs/api.md runs as written: each ```python block is executed as a script in a fresh folder, with the
hub ids it names replaced by tiny local models and a small local copy of TRL's dataset (the same call,
`load_dataset(folder, split="train")`, reads it), then checked for what the section promises. A block
the doc adds, drops or renames, or a hub id the test does not replace, fails here. The API itself:
`import aplot_cli` loads no torch, and every name it lists resolves."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason='docs/api.md sections 3-4 use TRL, the optional extra: pip install -e ".[trl]"')

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)
SECTIONS = ["tensors", "own-loop", "trl", "trl-embeddings", "pipeline"]
HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_DATASET = "trl-lib/ultrafeedback_binarized"
PAIRS = 40


def test_the_doc_has_one_block_per_section():
    assert len(BLOCKS) == len(SECTIONS), f"docs/api.md has {len(BLOCKS)} python blocks; this test knows {SECTIONS}"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_llama_rm_dir, tiny_bert_dir, aplot_cache):
    """What the doc's names stand for here: its hub model, backbone and encoder names as tiny models, TRL's
    ultrafeedback_binarized as a local folder in its schema (conversational, implicit prompt), and the
    section 5 user's my_pairs.jsonl; each from aplot's synthetic pairs."""
    import os

    from aplot_cli import prepare
    from aplot_cli.config import PrepareConfig

    os.environ["APLOT_CACHE"] = str(aplot_cache)
    root = tmp_path_factory.mktemp("api-docs")
    prepare.run(
        PrepareConfig(recipe="synthetic", synthetic_pairs=PAIRS, synthetic_ood_pairs=4, test_size=0.25),
        root / "synthetic",
    )
    from aplot_cli.readers.pairs import load_pairs

    frame = load_pairs(root / "synthetic")
    rows = list(zip(frame["prompt"], frame["chosen"], frame["rejected"], strict=True))
    (root / "ultrafeedback").mkdir()
    with open(root / "ultrafeedback" / "train.jsonl", "w", encoding="utf-8") as f:
        for prompt, chosen, rejected in rows:
            user = {"role": "user", "content": prompt}
            f.write(
                json.dumps(
                    {
                        "chosen": [user, {"role": "assistant", "content": chosen}],
                        "rejected": [user, {"role": "assistant", "content": rejected}],
                        "score_chosen": 8.0,
                        "score_rejected": 3.0,
                    }
                )
                + "\n"
            )
    user_file = "".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows)
    names = {
        HUB_MODEL: str(tiny_llama_rm_dir),
        HUB_DATASET: str(root / "ultrafeedback"),
        "smollm2-135m": str(tiny_llama_rm_dir),
        "minilm-l6": str(tiny_bert_dir),
    }
    return names, user_file, len(rows)


def run_block(section: str, fixtures, tmp_path, monkeypatch) -> dict:
    """Run the section's block as a script in tmp_path, the doc's names replaced; its globals."""
    names, user_file, _ = fixtures  # a hub id left unreplaced fails: the tests run offline
    code = BLOCKS[SECTIONS.index(section)]
    for name, local in names.items():
        code = code.replace(f'"{name}"', repr(local))
    (tmp_path / "my_pairs.jsonl").write_text(user_file, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    exec(compile(code, f"docs/api.md[{section}]", "exec"), namespace)
    return namespace


def test_tensors(fixtures, tmp_path, monkeypatch):
    ns = run_block("tensors", fixtures, tmp_path, monkeypatch)
    step, result = ns["step"], ns["result"]
    assert step.margin.shape == (ns["B"],) and step.margin.abs().sum() > 0 and not step.margin.requires_grad
    assert ns["r_c"].grad is not None and ns["r_c"].grad.abs().sum() > 0
    assert result.margin.tolist() == step.margin.tolist() and result.penalty.item() > 0  # the margin and center


def test_own_loop(fixtures, tmp_path, monkeypatch):
    ns = run_block("own-loop", fixtures, tmp_path, monkeypatch)
    loss = ns["loss"]
    assert loss.aplot is not None and loss.aplot.margin.shape == (len(ns["pairs"]),)
    assert loss.result.margin.tolist() == loss.aplot.margin.tolist()
    assert math.isfinite(loss.result.loss.item())


def logged(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log]


def test_trl(fixtures, tmp_path, monkeypatch):
    ns = run_block("trl", fixtures, tmp_path, monkeypatch)
    logs = logged(ns["trainer"])
    assert len(logs) == math.ceil(fixtures[2] / 8)  # one epoch, batch 8, every step logged
    assert all(math.isfinite(log["loss"]) and "ot/converged_frac" in log and "margin_applied" in log for log in logs)
    assert (tmp_path / "SmolLM2-135M-APLOT-RM" / "model.safetensors").is_file()


def test_trl_embeddings(fixtures, tmp_path, monkeypatch):
    ns = run_block("trl-embeddings", fixtures, tmp_path, monkeypatch)
    trainer = ns["trainer"]
    assert trainer.embedding_columns == ("emb_chosen", "emb_rejected")
    assert len(ns["dataset"][0]["emb_chosen"]) == 32  # the tiny encoder's width: the encoder's vectors
    logs = logged(trainer)
    assert logs and all("ot/converged_frac" in log for log in logs)


def test_pipeline(fixtures, tmp_path, monkeypatch):
    run_block("pipeline", fixtures, tmp_path, monkeypatch)
    for stage in ("pairs", "emb", "rm", "eval"):
        assert (tmp_path / "runs" / stage / "manifest.json").is_file(), stage
    manifest = json.loads((tmp_path / "runs" / "rm" / "manifest.json").read_text())
    assert manifest["config"]["loss"] == ["aplot"]
    assert 0.0 <= json.loads((tmp_path / "runs" / "eval" / "metrics.json").read_text())["score"] <= 1.0


def test_import_aplot_cli_loads_no_torch_and_every_name_resolves():
    code = (
        "import sys, aplot_cli; assert 'torch' not in sys.modules, 'torch at import'; "
        "import types; names = aplot_cli.__all__; "
        "assert all(not isinstance(getattr(aplot_cli, n), types.ModuleType) for n in names); "
        "assert 'trl' not in sys.modules; "
        "from aplot_cli import prepare, evaluate; print(len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20
