"""docs/results/summary.md from the regenerated reports' results.json (never edited by hand).

Per grid: which runs did not learn (left out), which evaluation sets are informative (BT above chance), each
method's paired difference against BT and each APLOT reading's difference against its no-OT twin (accuracy
points: mean and 95% Student-t interval over seeds, paired bootstrap over test pairs, and the minimum
difference the grid could detect at 80% power), the Sinkhorn convergence of each reading, and the verdict
the numbers allow, worded from the power: "no difference larger than X points" where nothing decides.

Usage: python experiments/summarize_results.py GRID [GRID ...] > docs/results/summary.md"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _pts(value: float | None, sign: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.2f}" if sign else f"{value * 100:.2f}"


def excludes_zero(row: dict) -> bool:
    """Both intervals exclude zero: the t interval over seeds (training randomness) and the paired bootstrap
    over test pairs (which test set was drawn), on an informative set. With a frozen backbone the head's problem
    is nearly convex, so seeds agree closely and a t interval alone can exclude zero for a difference of a few
    test pairs."""
    return bool(row.get("decides"))


def _row(r: dict) -> str:
    half = r["t_half_width"]
    ci = f" [{_pts(r['mean_diff'] - half)}, {_pts(r['mean_diff'] + half)}]" if half is not None else ""
    boot = r["bootstrap"]
    verdict = "uninformative set" if r.get("informative") is False else ("**differs**" if r["decides"] else "no")
    return (f"| {r['noise']:.0%} | {r['method']} | {r['eval']} | {_pts(r['mean_diff'])}{ci} | "
            + (f"[{_pts(boot['low'])}, {_pts(boot['high'])}]" if boot else "-")
            + f" | {r['seeds']} | {_pts(r.get('mde'), sign=False)} | {'yes' if r['t_ci_excludes_zero'] else 'no'} | "
            f"{verdict} |")


HEADER = ["| noise | method | eval | mean diff [95% t CI] | paired bootstrap 95% | seeds | MDE (80%) | t CI excludes 0 | "
          "differs (both intervals, informative set) |",
          "| --- | --- | --- | --- | --- | ---: | ---: | --- | --- |"]


def verdict(rows: list[dict], what: str = "BT") -> str:
    """The sentence the rows allow: the differences that decide, else the largest difference the grid could
    have missed (the largest MDE over the informative rows), and the t-only differences stated as such."""
    decided = [r for r in rows if excludes_zero(r)]
    parts = []
    if decided:
        parts.append(f"differs from {what} with both 95% intervals excluding zero: " + ", ".join(
            f"{r['method']} on {r['eval']} (noise {r['noise']:.0%}, {_pts(r['mean_diff'])} points)" for r in decided))
    informative = [r for r in rows if r.get("informative") is not False and r.get("mde") is not None]
    quiet = [r for r in informative if not excludes_zero(r)]
    if quiet:
        worst = max(r["mde"] for r in quiet)
        best = min(r["mde"] for r in quiet)
        parts.append(("elsewhere no" if decided else "no") + f" difference from {what} large enough to detect: the grid "
                     f"detects differences of {_pts(best, False)}-{_pts(worst, False)} points (80% power), so no "
                     f"difference larger than about {_pts(worst, False)} points went unseen")
    t_only = [r for r in quiet if r["t_ci_excludes_zero"]]
    if t_only:
        parts.append("the t interval over seeds alone excludes zero (consistent across seeds but within the test "
                     "set's sampling noise) for " + ", ".join(
                         f"{r['method']} on {r['eval']} (noise {r['noise']:.0%}, {_pts(r['mean_diff'])})"
                         for r in t_only))
    skipped = sorted({r["eval"] for r in rows if r.get("informative") is False})
    if skipped:
        parts.append("no verdict on " + ", ".join(skipped) + " (uninformative: BT at chance)")
    return "; ".join(parts) if parts else "no paired rows"


def _informative_lines(results: dict) -> list[str]:
    rows = results.get("informative") or []
    if not rows:
        return []
    lines = ["| noise | eval | BT accuracy % [95% t CI] | bootstrap 95% | pairs | informative |",
             "| --- | --- | --- | --- | ---: | --- |"]
    for r in rows:
        half = r["t_half_width"]
        acc = "-" if r["mean"] is None else f"{r['mean'] * 100:.1f}" + (
            f" [{max(0.0, r['mean'] - half) * 100:.1f}, {min(1.0, r['mean'] + half) * 100:.1f}]" if half is not None
            else "")
        boot = r["bootstrap"]
        lines.append(f"| {r['noise']:.0%} | {r['eval']} | {acc} | "
                     + (f"[{boot['low'] * 100:.1f}, {boot['high'] * 100:.1f}]" if boot else "-")
                     + f" | {r['pairs'] or '-'} | {'yes' if r['informative'] else '**no**'} |")
    return ["Is each evaluation set informative (BT above chance, paired bootstrap over test pairs)?", ""] + lines + [""]


def _convergence_lines(results: dict) -> list[str]:
    conv = results.get("ot_convergence") or {}
    if not conv:
        return []
    lines = ["Sinkhorn convergence (share of training steps whose plan met the marginal tolerance):", "",
             "| method | mean | worst cell | ot_iters | converged |", "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {m} | {v['mean']:.1%} | {v['min']:.1%} | {v['ot_iters']} | "
              f"{'yes' if v['converged'] else '**no**'} |" for m, v in conv.items()]
    return lines + [""]


def grid_section(name: str) -> list[str]:
    results = json.loads((RESULTS / name / "results.json").read_text())
    rows = [r for r in results["paired"] if r["reference"] == "bt" and r["mean_diff"] is not None]
    twins = [r for r in results.get("twins") or [] if r["mean_diff"] is not None]
    seeds = sorted({c["seed"] for c in results["cells"]})
    unlearned = results.get("unlearned") or []
    flips = results.get("flip_seed", "cell")
    lines = [f"## {name}", "", f"Cells: {len(results['cells'])}, seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}); "
             f"missing: {len(results['missing'])}; did not learn: {len(unlearned)}"
             + (" (left out: " + ", ".join(f"{u['noise']:.0%}/{u['method']}/seed {u['seed']}" for u in unlearned) + ")"
                if unlearned else "")
             + "; label flips " + ("drawn per seed" if flips == "cell" else f"drawn once (seed {flips})")
             + f". Report: [{name}/report.md]({name}/report.md).", ""]
    lines += _informative_lines(results)
    lines += ["Paired differences against BT:", ""] + HEADER + [_row(r) for r in rows]
    lines += ["", f"Verdict against BT: {verdict(rows)}.", ""]
    if twins:
        lines += ["Each APLOT reading minus its no-OT twin (what the OT plan adds): "
                  + ", ".join(f"{k} - {v}" for k, v in (results.get("twin_of") or {}).items()) + ".", ""]
        lines += HEADER + [_row(r) for r in twins]
        lines += ["", f"Verdict against the twins: {verdict(twins, 'its no-OT twin')}.", ""]
    lines += _convergence_lines(results)
    return lines


def main(grids: list[str]) -> None:
    lines = ["# Summary of the committed grids (generated by experiments/summarize_results.py)", "",
             "Paired by seed: the same seed gives every method the same data, flipped labels, data order and head "
             "initialisation, and the per-seed difference of test accuracy (method minus BT) is the unit. Runs that "
             "did not learn (train-rm's rule) are left out. A difference counts only when both its t interval over "
             "seeds and its paired bootstrap interval over test pairs exclude zero, on a set where BT is above "
             "chance. MDE: the smallest difference that decision detects with 80% power (the larger of the two "
             "intervals' MDEs).", ""]
    for name in grids:
        lines += grid_section(name)
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
