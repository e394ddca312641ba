"""experiments/downstream/report.py on a small constructed raw-results tree: its intervals, the paired
APLOT - BT differences (and their sign when the two are swapped), best-of-n per seed, and the report."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("downstream_report", ROOT / "experiments/downstream/report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)


GOLD = {"p0": [1, 0, 0, 0], "p1": [0, 0, 1, 1], "p2": [0, 0, 0, 0]}   # held-out gold per prompt, 4 samples
FINAL = {"flip025-bt": [0.30, 0.40, 0.50], "flip025-aplot": [0.50, 0.61, 0.69],   # final held-out gold per seed
         "flip025-hardness-diag-std-z": [0.5, 0.6, 0.7], "gold": [0.9, 0.9, 0.95]}
FINAL_NOISY_BT = [0.55, 0.40, 0.45]   # used by the third method's comparison when swapped in


def make_raw(root: Path, swap: bool = False) -> Path:
    """A raw tree as export.py writes it: held-out samples, bon predictions and ppo eval logs for 3 seeds.
    `swap`: the BT and APLOT folders trade places."""
    raw = root / "raw"
    _gz(raw / "samples/test/responses.jsonl.gz",
        [{"prompt_id": p, "family": "copy_word" if p != "p2" else "add_small", "prompt": p, "sample": i,
          "response": "x", "gold": bool(g), "n_tokens": 3, "eos": True} for p, gs in GOLD.items() for i, g in enumerate(gs)])
    names = {"flip025-bt": "flip025-aplot", "flip025-aplot": "flip025-bt"} if swap else {}
    for seed in range(3):
        for label in ("flip025-bt", "flip025-aplot"):
            # bt ranks the passing responses first (best-of-n = oracle); aplot ranks them last
            sign = 1.0 if label == "flip025-bt" else -1.0
            _gz(raw / "bon" / f"{names.get(label, label)}-s{seed}" / "predictions.jsonl.gz",
                [{"example_id": p, "subset": "copy_word", "kind": "chosen" if g else "rejected", "position": i,
                  "score": sign * (g + 0.01 * i)} for p, gs in GOLD.items() for i, g in enumerate(gs)])
        for label, finals in FINAL.items():
            folder = raw / "ppo" / f"{names.get(label, label)}-s{seed}"
            folder.mkdir(parents=True)
            rows = [{"update": u, "gold_success": 0.25 if u == 0 else finals[seed] * u / 2, "kl": 0.1 * u,
                     "score": 0.1 * u} for u in (0, 1, 2)]
            (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for label in ("flip025-bt", "flip025-aplot"):
            rm = raw / "rm" / f"{label}-s{seed}"
            rm.mkdir(parents=True)
            config = {"seed": seed, "batch_size": 8, "group_by_length": False, "loss": [label.split("-")[1]]}
            (rm / "manifest.json").write_text(json.dumps({"metrics": {"test_accuracy": 0.6 + 0.1 * seed},
                                                          "config": config}))
    return raw


def test_t_interval_of_known_values(report):
    iv = report.t_interval([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)   # t(0.975, 4) * sd / sqrt(n)
    assert iv.mean == pytest.approx(3.0) and iv.n == 5
    assert (iv.low, iv.high) == pytest.approx((3 - half, 3 + half))
    single = report.t_interval([0.4])
    assert single.mean == 0.4 and math.isnan(single.low)


def test_paired_difference_and_verdict(report):
    clear = report.paired_difference({0: 0.5, 1: 0.61, 2: 0.69}, {0: 0.3, 1: 0.4, 2: 0.5})
    assert clear.mean == pytest.approx(0.2) and not clear.includes_zero
    assert "above" in report.verdict(clear, "A", "B")
    noisy = report.paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.55, 1: 0.40, 2: 0.45})
    assert noisy.includes_zero and report.verdict(noisy, "A", "B").startswith("no difference")
    assert report.paired_difference({0: 1.0, 5: 2.0}, {0: 0.5, 1: 0.0}).n == 1   # only the seeds both have


def test_bon_per_seed_matches_the_estimator(report, tmp_path):
    study = report.bon_study(make_raw(tmp_path))
    assert study.ns == [1, 2, 4] and study.prompts == 3
    # bt puts the passing responses on top: its best-of-n is the oracle's; aplot puts them last
    assert study.per_seed["flip025-bt"][0] == pytest.approx(study.oracle.mean)
    assert study.per_seed["flip025-bt"][0][-1] == pytest.approx(2 / 3)   # p0 and p1 have a pass
    assert study.per_seed["flip025-aplot"][0][-1] == pytest.approx(0.0)
    assert study.random.mean[0] == pytest.approx((0.25 + 0.5 + 0) / 3)


def test_report_numbers_and_swapping_bt_and_aplot_flips_the_sign(report, tmp_path):
    raw = make_raw(tmp_path / "a")
    runs = report.ppo_runs(raw)
    a, b = ({s: report.final_value(r, "gold_success") for s, r in runs[k].items()} for k in ("flip025-aplot", "flip025-bt"))
    diff = report.paired_difference(a, b)
    assert diff.mean == pytest.approx(0.2) and diff.n == 3
    swapped_runs = report.ppo_runs(make_raw(tmp_path / "b", swap=True))
    a2, b2 = ({s: report.final_value(r, "gold_success") for s, r in swapped_runs[k].items()}
              for k in ("flip025-aplot", "flip025-bt"))
    flipped = report.paired_difference(a2, b2)
    assert flipped.mean == pytest.approx(-diff.mean)
    assert (flipped.low, flipped.high) == pytest.approx((-diff.high, -diff.low))
    assert report.comparisons(sorted(runs)) == [("flip025-aplot", "flip025-bt"),
                                                ("flip025-hardness-diag-std-z", "flip025-bt")]

    out = report.build(raw, tmp_path / "a" / "study.md")
    text = out.read_text()
    assert (out.parent / "ppo_gold_vs_kl.png").is_file() and (out.parent / "bon.png").is_file()
    assert "`flip025-aplot` above `flip025-bt` by 20.0 [" in text
    assert "no difference (`flip025-hardness-diag-std-z` - `flip025-bt`" not in text  # its interval excludes 0
    assert "Best-of-4: `flip025-aplot` below `flip025-bt`" in text
    assert "| `flip025-bt` | 3 | 70.0 [" in text   # RM test accuracy: mean of 0.6, 0.7, 0.8
    # bt's best-of-4 is the oracle's (2/3) against a random pick of 0.25: +41.7 points every seed (no spread)
    assert "`flip025-bt`'s best-of-4 above a random pick by 41.7" in text
    assert "`flip025-aplot`'s best-of-4 below a random pick by -25.0" in text
    # PPO on gold moved from 0.25 to 0.9, 0.9, 0.95 (final = finals[seed] * 2 / 2)
    assert "PPO on `gold`: final gold above the reference's by 66.7 [" in text
    swapped = report.build(make_raw(tmp_path / "c", swap=True), tmp_path / "c" / "study.md").read_text()
    assert "`flip025-aplot` below `flip025-bt` by -20.0 [" in swapped
    assert "Best-of-4: `flip025-aplot` above `flip025-bt`" in swapped


def test_rms_with_different_batches_are_refused(report, tmp_path):
    """train-rm's per-loss default turns length-grouped batches on for BT and off for APLOT: a study whose RMs of
    one seed differ in it is not paired by seed, and the report says which RMs and which option."""
    raw = make_raw(tmp_path)
    report.build(raw, tmp_path / "ok" / "study.md")  # same losses apart, same batches: accepted
    manifest = raw / "rm" / "flip025-bt-s1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["config"]["group_by_length"] = True
    manifest.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"seed 1 differ in `group_by_length`"):
        report.build(raw, tmp_path / "bad" / "study.md")


def test_committed_study_is_the_report_of_the_committed_raw_results(report, tmp_path, monkeypatch):
    """study.md is generated, never edited by hand: rebuilding it from the committed raw tree gives it back."""
    committed = ROOT / "experiments/downstream/study.md"
    monkeypatch.chdir(ROOT)   # the report names its raw folder as given: the same relative path as study.sh's
    rebuilt = report.build(Path("experiments/downstream/raw/study"), tmp_path / "study.md",
                           ROOT / "experiments/downstream/raw/families_samples.jsonl.gz")
    assert rebuilt.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")


def test_label_noise_change_per_method_and_against_bt(report, tmp_path):
    """Each method's best-of-n with noisy labels minus with clean ones, paired by seed, and minus BT's change.
    Clean RMs here both rank the passing responses first (the oracle); with noise, bt still does and aplot
    ranks them last, so aplot loses all of the oracle's 2/3 and bt nothing."""
    raw = make_raw(tmp_path)
    for seed in range(3):
        for method in ("bt", "aplot"):
            clean = raw / "bon" / f"flip0-{method}-s{seed}"
            clean.mkdir(parents=True)
            (clean / "predictions.jsonl.gz").write_bytes(
                (raw / "bon" / f"flip025-bt-s{seed}" / "predictions.jsonl.gz").read_bytes())
    text = report.build(raw, tmp_path / "study.md").read_text()
    assert "no difference (`flip025-bt` - `flip0-bt` = 0.0 [0.0, 0.0] points" in text
    assert "`flip025-aplot` below `flip0-aplot` by -66.7 [-66.7, -66.7] points" in text
    assert "`aplot`'s noise change (flip025) below `bt`'s by -66.7 [" in text
