"""Artifacts that travel: a train-rm run's model card (Hub front matter, the scoring convention as code that
runs), and a LoRA adapter that loads on another machine by its base model's portable name."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from aplot_cli import models, train
from aplot_cli.config import TrainConfig

PAIRS = [("Sort the letters: b a", "a b"), ("Reverse the string 'hello world'", "dlrow olleh"),
         ("What is 2 + 3?", "5")]
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def tiny_cfg(backbone, **changes) -> TrainConfig:
    base = dict(backbone=str(backbone), max_steps=2, batch_size=8, eval_batch_size=16, max_length=64,
                learning_rate=1e-3, logging_steps=1, save_steps=100, max_eval_pairs=16, train_eval_pairs=16, seed=3)
    return TrainConfig(**{**base, **changes})


def front_matter(path: Path) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", path.read_text(encoding="utf-8"), re.S)
    assert match, f"{path} has no YAML front matter"
    return yaml.safe_load(match.group(1))


def run_snippet(card: Path, folder: Path, fence: int = 0) -> dict:
    """Execute the card's n-th python block with its placeholder path set to `folder`; its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", card.read_text(encoding="utf-8"), re.S)
    namespace: dict = {}
    exec(blocks[fence].replace("PATH_TO_THIS_FOLDER", str(folder)), namespace)  # noqa: S102 - our own card
    return namespace


def aplot_scores(model_dir: Path) -> list[float]:
    from aplot_cli import scoring

    rm = scoring.load_reward_model(str(model_dir), device="cpu")
    return scoring.score_texts(rm, [p for p, _ in PAIRS], [r for _, r in PAIRS]).tolist()


def fake_hub_cache(root: Path, repo_id: str, files_from: Path) -> Path:
    """A Hugging Face hub cache holding `repo_id` (what `from_pretrained` finds offline after a download)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(files_from, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return root


def test_lora_adapter_loads_on_a_new_machine_by_its_portable_base_name(tiny_llama_rm_dir, synthetic_pairs_dir,
                                                                      tmp_path, monkeypatch):
    from peft import AutoPeftModelForSequenceClassification

    # this machine: `smollm2-135m` is converted into aplot's cache (here: a copy of a tiny Llama)
    local_cache = tmp_path / "old-machine" / "cache" / "models" / "smollm2-135m-instruct-1"
    shutil.copytree(tiny_llama_rm_dir, local_cache)
    monkeypatch.setattr(models, "smollm2_path", lambda cache_dir=None: local_cache)
    out = tmp_path / "rm"
    manifest = json.loads(train.run(tiny_cfg("smollm2-135m", loss=("bt",), lora=True, lora_r=4, lora_alpha=8),
                                    synthetic_pairs_dir, out).read_text())
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == SMOLLM2_HUB_ID == manifest["model"]["base_model"]
    for file in (out / "adapter").iterdir():
        if file.suffix in (".json", ".md"):
            assert str(local_cache) not in file.read_text(), f"{file.name} names this machine's cache path"
    assert front_matter(out / "adapter" / "README.md")["base_model"] == SMOLLM2_HUB_ID
    assert front_matter(out / "adapter" / "README.md")["library_name"] == "peft"
    merged = aplot_scores(out)

    # another machine: no aplot cache, the base model in its hub cache under its hub id, the adapter copied over
    shutil.rmtree(tmp_path / "old-machine")
    monkeypatch.undo()
    hub = fake_hub_cache(tmp_path / "new-machine" / "hf-hub", SMOLLM2_HUB_ID, tiny_llama_rm_dir)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # that machine's default hub cache
    adapter = shutil.copytree(out / "adapter", tmp_path / "new-machine" / "adapter")
    card = run_snippet(adapter / "README.md", adapter, fence=0)  # the card's own loading code, unchanged
    assert card["model"].peft_config["default"].base_model_name_or_path == SMOLLM2_HUB_ID
    with pytest.raises(OSError):  # offline with an empty cache: the base really comes from the hub cache
        AutoPeftModelForSequenceClassification.from_pretrained(adapter, num_labels=1, cache_dir=tmp_path / "empty")
    model, tokenizer = card["model"], card["tokenizer"]
    with torch.no_grad():
        scores = []
        for prompt, response in PAIRS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": response}], tokenize=False)
            scores.append(model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item())
    assert scores == pytest.approx(merged, abs=1e-5)  # adapter on the base by name == the merged model
    assert len(set(round(s, 4) for s in scores)) == len(PAIRS)  # distinct scores: the match means something


def test_model_card_front_matter_and_its_scoring_code(tiny_bert_dir, tiny_llama_rm_dir, synthetic_pairs_dir,
                                                      tmp_path):
    from huggingface_hub import ModelCard

    from aplot_cli import artifacts

    cfg = tiny_cfg(tiny_llama_rm_dir, loss=("aplot",), semantic_source="backbone", cost_norm="std",
                   margin_from="diag", margin_norm="zscore", w_rew=0.7, w_sem=0.3)
    out = tmp_path / "rm"
    manifest = json.loads(train.run(cfg, synthetic_pairs_dir, out).read_text())
    card_path = out / "model" / "README.md"
    assert "model/README.md" in {o["path"] for o in manifest["outputs"]}
    meta = front_matter(card_path)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # a local folder is no hub id: no false claim
    assert str(tiny_llama_rm_dir) not in card_path.read_text()  # nor its path in a card that may go public
    assert {"reward-model", "aplot", "bt"} <= set(meta["tags"])
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0]["type"] == "accuracy"
    assert result["metrics"][0]["value"] == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-6)
    block = meta["aplot"]
    assert block["loss"] == manifest["model"]["loss"] == "bt+aplot"
    assert block["aplot_margin"] == {k: manifest["config"][k] for k in block["aplot_margin"]}
    assert block["aplot_margin"]["cost_norm"] == "std" and block["aplot_margin"]["w_sem"] == 0.3
    assert block["optimisation"]["learning_rate"] == manifest["config"]["learning_rate"]
    pairs_sha = artifacts.open_artifact(synthetic_pairs_dir, "prepare").output_hashes()["train.parquet"]
    assert block["data"]["sha256"]["pairs/train.parquet"] == pairs_sha and block["data"]["sources"] == ["synthetic"]
    assert ModelCard.load(card_path).data.to_dict()["aplot"] == block  # the Hub's own parser reads the same
    # the scoring convention is code that scores exactly as aplot does (chat template here)
    score = run_snippet(card_path, out / "model")["score"]
    assert [score(p, r) for p, r in PAIRS] == pytest.approx(aplot_scores(out), abs=1e-5)
    assert "lora_r" not in block["optimisation"]  # LoRA settings only where LoRA trained

    bert = tmp_path / "bert"  # an encoder: a text pair, and a BT run has no APLOT block
    train.run(tiny_cfg(tiny_bert_dir, loss=("bt",)), synthetic_pairs_dir, bert)
    meta = front_matter(bert / "model" / "README.md")
    assert "aplot_margin" not in meta["aplot"] and meta["aplot"]["loss"] == "bt"
    score = run_snippet(bert / "model" / "README.md", bert / "model")["score"]
    assert [score(p, r) for p, r in PAIRS] == pytest.approx(aplot_scores(bert), abs=1e-5)
    assert "text pair" in (bert / "model" / "README.md").read_text()


def test_portable_names():
    assert models.portable_name("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert models.portable_name("smollm2-135m") == SMOLLM2_HUB_ID
    assert models.portable_name("org/some-rm") == "org/some-rm"


def test_portable_name_of_a_hub_cache_folder(tmp_path):
    snapshot = tmp_path / "models--org--base" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert models.portable_name(str(snapshot)) == "org/base"
    other = tmp_path / "my-model"
    other.mkdir()
    assert models.portable_name(str(other)) == str(other.resolve()) and not models.is_hub_id(str(other))


# ---------------------------------------------------------------------------------------------- push to hub


@pytest.fixture
def online_hub(monkeypatch):
    """A Hub that the checks pass (not offline, a token, reachable, the token accepted) and whose uploads are
    recorded instead of sent: no network."""
    import huggingface_hub

    from aplot_cli import hub

    calls: dict = {"repo": [], "commit": []}

    def create_commit(self, repo_id, operations, commit_message, repo_type=None, **kw):
        calls["commit"].append({"repo": repo_id, "message": commit_message, "manifest_then": manifest_exists(),
                                "files": {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}})
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    def manifest_exists():
        return all((d / "manifest.json").is_file() for d in calls.get("out", []))

    monkeypatch.setattr(hub, "offline_requested", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **k: {"name": "me"})
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls["repo"].append({"repo": repo_id, **kw}))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    return calls


def test_push_to_hub_uploads_the_finished_run_in_one_commit(tiny_bert_dir, synthetic_pairs_dir, tmp_path, online_hub):
    out = tmp_path / "rm"
    online_hub["out"] = [out]
    cfg = tiny_cfg(tiny_bert_dir, loss=("bt",), lora=True, lora_r=4, lora_alpha=8, max_steps=1,
                   push_to_hub="me/tiny-rm", hub_private=True)
    train.run(cfg, synthetic_pairs_dir, out)
    assert online_hub["repo"] == [{"repo": "me/tiny-rm", "private": True, "exist_ok": True, "repo_type": "model"}]
    (commit,) = online_hub["commit"]
    assert commit["repo"] == "me/tiny-rm" and commit["manifest_then"]  # pushed once the run was finished
    uploaded = commit["files"]
    expected = {name: (out / "model" / name).read_bytes() for name in ("config.json", "model.safetensors", "README.md",
                                                                        "tokenizer.json", "tokenizer_config.json")}
    expected.update({f"adapter/{name}": (out / "adapter" / name).read_bytes()
                     for name in ("adapter_config.json", "adapter_model.safetensors", "README.md")})
    expected.update({f"aplot/{name}": (out / name).read_bytes() for name in ("manifest.json", "metrics.json",
                                                                             "run_config.json", "report.md")})
    for name, content in expected.items():
        assert uploaded.get(name) == content, name
    assert not any(name.startswith(("checkpoints", "margins", "train_log")) for name in uploaded)
    card = uploaded["README.md"].decode()
    assert 'MODEL = "me/tiny-rm"' in card and "name: tiny-rm" in card  # the card names where it lives
    assert json.loads(uploaded["aplot/manifest.json"])["config"]["push_to_hub"] == "me/tiny-rm"


def test_push_failure_keeps_the_finished_run_and_says_how_to_upload(tmp_path, monkeypatch, online_hub):
    import huggingface_hub

    from aplot_cli.errors import TrainingError
    from aplot_cli.train import push

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")

    def refuse(self, *a, **k):
        raise RuntimeError("403 Forbidden")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", refuse)
    with pytest.raises(TrainingError) as info:
        push.push(tmp_path, "me/x", False, "m")
    assert "403" in info.value.message and "hf upload me/x" in info.value.hint
    assert (tmp_path / "model" / "config.json").is_file()


@pytest.mark.parametrize(("setup", "code", "needle"), [
    ("offline", 7, "HF_HUB_OFFLINE"),
    ("no_token", 2, "token"),
    ("unreachable", 7, "cannot be reached"),
    ("refused", 2, "refused the token"),
    ("bad_repo", 2, "not a Hub repo id"),
])
def test_push_to_hub_is_refused_before_training(synthetic_pairs_dir, tmp_path, monkeypatch, setup, code, needle):
    """No model is loaded and the out-dir is not created when the upload could not happen."""
    import huggingface_hub
    from typer.testing import CliRunner

    from aplot_cli import hub
    from aplot_cli.cli import app

    repo = "me/rm"
    if setup != "offline":
        monkeypatch.setattr(hub, "offline_requested", lambda: False)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None if setup == "no_token" else "hf_test")
        monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: setup != "unreachable")

        def whoami(self, *a, **k):
            raise RuntimeError("401 Unauthorized")

        monkeypatch.setattr(huggingface_hub.HfApi, "whoami", whoami)
    if setup == "bad_repo":
        repo = "me/../../x"
    monkeypatch.setattr(train.stage, "load_model", lambda cfg: pytest.fail("a model was loaded"), raising=True)
    out = tmp_path / "rm"
    result = CliRunner().invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(out), "--loss", "bt",
                                      "--push-to-hub", repo])
    assert result.exit_code == code, result.stderr
    assert needle in result.stderr and not out.exists()
