"""The comparison report of `aplot compare`, rebuilt from the cells' artifacts alone.

What a verdict rests on (docs/method.md section 7): only cells that learned (`train.learned`; the others are
named and left out of every table, interval and verdict); only evaluation sets on which the baseline is
above chance (a set where BT's accuracy interval includes 50% measures nothing and decides nothing); a
difference counts when its t interval over seeds and its paired bootstrap interval over test pairs both
exclude zero, and every interval is given with the smallest difference the grid could detect at 80% power
(MDE). Each APLOT reading is also compared with its no-OT twin (the same normalisation of the pair's own
cost), and each reading's Sinkhorn convergence is disclosed.

Tables (markdown, and the same in a self-contained HTML page): accuracy mean +- 95% CI (Student t over
seeds) per method and evaluation set, for each label-noise level; paired differences against the
reference methods (the baseline, and `constant_margin` when the grid has it): per seed the same data
order and head initialisation, so the difference of each seed's accuracies is the unit, with a Student-t
interval over seeds, and a paired bootstrap over test pairs (pairs resampled, the seed-mean difference
recomputed); accuracy on hard vs easy pairs where the data has a difficulty; convergence per seed (steps
until the periodic test accuracy first reaches 95% of the baseline's final accuracy for that seed); margin
diagnostics (mean, per-pair spread, in-batch spread, hard vs easy). The statistics are `stats.py`'s, the
cells are read by `cells.py`, the figures drawn by `figures.py`."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts
from aplot_cli.compare import figures as drawing
from aplot_cli.compare import html, latex
from aplot_cli.compare.cells import (
    EVIDENCE_HEADER,
    EVIDENCE_NOTE,
    Cell,
    cell_pairs_dir,
    collect,
    correct_matrix,
    difficulty_accuracy,
    eval_curve,
    learning_evidence,
    steps_to_reach,
    training_margin_stats,
)
from aplot_cli.compare.layout import noise_tag
from aplot_cli.compare.stats import Boot, bootstrap, fmt_ci, mde_boot, mde_t, mean_ci, paired_differences


@dataclass
class Summary:
    files: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unlearned: list[str] = field(default_factory=list)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _accuracy_tables(grid, by: dict, tex: list[latex.Table]) -> list[str]:
    lines = []
    for noise in grid.noise:
        title = f"Label noise {noise:.0%} (pair accuracy %, mean [95% t interval over learned seeds])"
        lines += ["", f"### {title}", ""]
        header = ["method", "train acc"] + [ev.name for ev in grid.evals] + ["n"]
        rows = []
        for method in grid.methods:
            cells = by[(noise, method)]
            row = [method, fmt_ci([c.train.get("train_accuracy") for c in cells])]
            row += [fmt_ci([c.evals[ev.name]["score"] for c in cells if ev.name in c.evals]) for ev in grid.evals]
            rows.append(row + [str(len(cells))])
        lines += _table(header, rows)
        tex.append(latex.Table(f"Accuracy: {title}.", header, rows, f"tab:accuracy-{noise_tag(noise)}"))
    return lines


def _difficulty_table(grid, by: dict) -> list[str]:
    rows = []
    for noise in grid.noise:
        for method in grid.methods:
            row, seen = [f"{noise:.0%}", method], False
            for ev in grid.evals:
                for difficulty in ("hard", "easy"):
                    vals = [difficulty_accuracy(c.evals[ev.name], difficulty) for c in by[(noise, method)]
                            if ev.name in c.evals]
                    seen |= any(v is not None for v in vals)
                    row.append(fmt_ci(vals))
            rows.append(row)
    if not seen:
        return []
    header = ["noise", "method"] + [f"{ev.name} {d}" for ev in grid.evals for d in ("hard", "easy")]
    return ["", "### Hard vs easy pairs (accuracy %)", ""] + _table(header, rows)


def references(grid) -> list[str]:
    """The methods every other method is compared with, pair by seed: the baseline, and `constant_margin`
    (shifted BT: a gain over it is adaptivity, not a shift) when the grid has it."""
    return [m for m in dict.fromkeys([grid.baseline, "constant_margin"]) if m in grid.methods]


def _bootstrap(cells_m: list[Cell], cells_r: list[Cell], ev_name: str) -> Boot | None:
    """Paired bootstrap of `method - reference` over the seeds both learned and the pairs both scored."""
    seeds = sorted({c.seed for c in cells_m} & {c.seed for c in cells_r})
    m, r = correct_matrix(cells_m, ev_name, seeds), correct_matrix(cells_r, ev_name, seeds)
    if m is None or r is None or not seeds:
        return None
    shared = sorted(set(m[1]) & set(r[1]))
    if not shared:
        return None
    cols_m = [m[1].index(k) for k in shared]
    cols_r = [r[1].index(k) for k in shared]
    return bootstrap(m[0][:, cols_m], r[0][:, cols_r])


def _scores(cells: list[Cell], ev_name: str) -> dict[int, float]:
    return {c.seed: c.evals[ev_name]["score"] for c in cells if ev_name in c.evals}


def informative_sets(grid, by: dict) -> dict[tuple[float, str], dict[str, Any]]:
    """Per (noise, evaluation set): the baseline's accuracy (mean over its learned seeds, Student-t interval)
    and a paired bootstrap interval over test pairs of its seed-mean accuracy; the set is informative when
    that bootstrap interval excludes 50% (chance). No baseline in the grid: nothing is marked."""
    out = {}
    if grid.baseline not in grid.methods:
        return out
    for noise in grid.noise:
        cells = by[(noise, grid.baseline)]
        for ev in grid.evals:
            accs = [c.evals[ev.name]["score"] for c in cells if ev.name in c.evals]
            mean, half, n = mean_ci(accs)
            seeds = sorted(c.seed for c in cells if ev.name in c.evals)
            matrix = correct_matrix(cells, ev.name, seeds) if seeds else None
            boot = bootstrap(matrix[0], np.full_like(matrix[0], 0.5)) if matrix is not None else None
            informative = None if boot is None else bool(boot.low > 0 or boot.high < 0)
            out[(noise, ev.name)] = {
                "noise": noise, "eval": ev.name, "method": grid.baseline, "seeds": n, "mean": mean if n else None,
                "t_half_width": half if n >= 2 else None, "pairs": None if matrix is None else len(matrix[1]),
                "bootstrap": None if boot is None else {"low": boot.low + 0.5, "high": boot.high + 0.5},
                "informative": informative, "below_chance": bool(boot is not None and boot.high < 0)}
    return out


def _fmt_diff(mean: float, half: float, n: int) -> str:
    if n == 0:
        return "-"
    return f"{mean * 100:+.2f}" + (f" [{(mean - half) * 100:+.2f}, {(mean + half) * 100:+.2f}]" if n >= 2 else "")


def _pts(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * 100:.2f}"


def paired_record(noise: float, method: str, reference: str, ev_name: str, cells_m: list[Cell],
                  cells_r: list[Cell], informative: bool | None) -> dict[str, Any]:
    """One paired comparison (method minus reference on one set, learned seeds both have): mean, t interval,
    bootstrap interval, both minimum detectable effects, and whether it decides (both intervals exclude
    zero on an informative set)."""
    diffs = paired_differences(_scores(cells_m, ev_name), _scores(cells_r, ev_name))
    mean, half, n = mean_ci(diffs)
    boot = _bootstrap(cells_m, cells_r, ev_name)
    t_excludes = bool(n >= 2 and math.isfinite(half) and abs(mean) > half)
    boot_excludes = bool(boot is not None and (boot.low > 0 or boot.high < 0))
    m_t, m_b = mde_t(diffs), (mde_boot(boot.se) if boot is not None else math.nan)
    finite = [v for v in (m_t, m_b) if math.isfinite(v)]
    return {"noise": noise, "method": method, "reference": reference, "eval": ev_name,
            "mean_diff": mean if n else None, "t_half_width": half if n >= 2 else None, "seeds": n,
            "bootstrap": None if boot is None else {"low": boot.low, "high": boot.high, "se": boot.se},
            "t_ci_excludes_zero": t_excludes, "bootstrap_excludes_zero": boot_excludes,
            "mde_t": m_t if math.isfinite(m_t) else None, "mde_bootstrap": m_b if math.isfinite(m_b) else None,
            "mde": max(finite) if finite else None, "informative": informative,
            "decides": bool(t_excludes and boot_excludes and informative is not False)}


def _paired_row(r: dict[str, Any]) -> list[str]:
    boot = r["bootstrap"]
    verdict = ("uninformative set" if r["informative"] is False else
               ("differs" if r["decides"] else "no difference"))
    return [f"{r['noise']:.0%}", r["method"], r["eval"],
            _fmt_diff(r["mean_diff"] or 0.0, r["t_half_width"] or math.nan, r["seeds"]),
            "-" if boot is None else f"[{boot['low'] * 100:+.2f}, {boot['high'] * 100:+.2f}]",
            str(r["seeds"]), _pts(r["mde"]), verdict]


PAIRED_HEADER = ["noise", "method", "eval", "t: mean [95% CI]", "bootstrap 95%", "seeds", "MDE (80%)", "verdict"]
PAIRED_NOTE = ("Each seed trains both methods on the same data (and flipped labels) in the same order from the same "
               "head initialisation; the difference per seed is the unit. t: mean [95% Student-t interval over "
               "learned seeds]; bootstrap: 95% interval of the seed-mean difference with test pairs resampled "
               "(2,000 draws). MDE: the smallest true difference the decision (both intervals exclude zero) would "
               "detect with 80% power, the larger of the two intervals' MDEs. A difference counts (`differs`) only "
               "when both intervals exclude zero on an informative set; on an uninformative set nothing is decided.")


def _paired_tables(grid, by: dict, informative: dict,
                   tex: list[latex.Table]) -> tuple[list[str], list[dict[str, Any]]]:
    lines, records = [], []
    for reference in references(grid):
        recs = [paired_record(noise, method, reference, ev.name, by[(noise, method)], by[(noise, reference)],
                              (informative.get((noise, ev.name)) or {}).get("informative"))
                for noise in grid.noise for method in grid.methods if method != reference for ev in grid.evals]
        if not recs:
            continue
        records += recs
        lines += ["", f"### Paired differences against `{reference}` (accuracy points, method minus {reference})", "",
                  PAIRED_NOTE, ""]
        rows = [_paired_row(r) for r in recs if r["seeds"]]
        lines += _table(PAIRED_HEADER, rows)
        lines += ["", chance_note(recs)]
        tex.append(latex.Table(f"Paired differences against {reference} (accuracy points, method minus "
                               f"{reference}). {PAIRED_NOTE} {chance_note(recs)}", PAIRED_HEADER, rows,
                               f"tab:paired-{reference}"))
    return lines, records


def chance_note(records: list[dict[str, Any]]) -> str:
    """How many verdicts `differs` the table holds against how many chance alone would give: each comparison
    on an informative set has at most a 5% chance to differ when there is no difference (both 95% intervals
    must exclude zero), so a table of N comparisons holds about N/20 such verdicts by chance."""
    tested = [r for r in records if r["seeds"] and r["informative"] is not False]
    differ = sum(r["decides"] for r in tested)
    return (f"{differ} of {len(tested)} comparisons on informative sets differ; with no true difference anywhere, "
            f"up to about {len(tested) / 20:.1f} would by chance (5% each), so a single `differs` is weak evidence "
            "unless it recurs across noise levels, sets and grids.")


def _twin_tables(grid, by: dict, informative: dict,
                 tex: list[latex.Table]) -> tuple[list[str], list[dict[str, Any]]]:
    """Each APLOT reading minus its no-OT twin: what the OT plan adds beyond the pair's own cost."""
    if not grid.twins:
        return [], []
    records = [paired_record(noise, reading, twin, ev.name, by[(noise, reading)], by[(noise, twin)],
                             (informative.get((noise, ev.name)) or {}).get("informative"))
               for reading, twin in grid.twins.items() for noise in grid.noise for ev in grid.evals]
    lines = ["", "### Does the OT plan add anything? Each reading minus its no-OT twin (accuracy points)", "",
             "The twin computes the same margin normalisation from the pair's own cost `H[i, i]` alone "
             "(`margin_from: own_cost`, no plan): a reading that does not beat its twin gets nothing from the plan. "
             "Twins: " + ", ".join(f"`{r}` - `{t}`" for r, t in grid.twins.items()) + ".", ""]
    header = ["noise", "reading", "eval", "t: mean [95% CI]", "bootstrap 95%", "seeds", "MDE (80%)", "verdict"]
    rows = [_paired_row(r) for r in records if r["seeds"]]
    tex.append(latex.Table("Each APLOT reading minus its no-OT twin (accuracy points): what the OT plan adds beyond "
                           f"the pair's own cost. {chance_note(records)}", header, rows, "tab:twins"))
    return lines + _table(header, rows) + ["", chance_note(records)], records


def _informative_table(informative: dict) -> list[str]:
    if not informative:
        return []
    rows = []
    for rec in informative.values():
        boot = rec["bootstrap"]
        mean, half, n = rec["mean"], rec["t_half_width"], rec["seeds"]
        rows.append([f"{rec['noise']:.0%}", rec["eval"], "-" if n == 0 else
                     f"{mean * 100:.1f}" + (f" [{max(0, mean - half) * 100:.1f}, {min(1, mean + half) * 100:.1f}]"
                                            if half is not None else ""),
                     "-" if boot is None else f"[{boot['low'] * 100:.1f}, {boot['high'] * 100:.1f}]",
                     str(rec["pairs"] or "-"), str(n),
                     "-" if rec["informative"] is None else
                     ("yes (below chance)" if rec["below_chance"] else "yes" if rec["informative"] else "no")])
    method = next(iter(informative.values()))["method"]
    return ["", f"### Which evaluation sets can decide anything? ({method}'s accuracy against chance)", "",
            f"A set is informative when the paired bootstrap interval (test pairs resampled) of {method}'s seed-mean "
            "accuracy excludes 50%. On an uninformative set the models score at chance: no difference there is "
            "counted.", ""] + _table(["noise", "eval", f"{method} accuracy % [95% t CI]", "bootstrap 95%", "pairs",
                                      "seeds", "informative"], rows)


def ot_convergence(grid, by: dict) -> dict[str, dict[str, Any]]:
    """Per method with an OT plan: the fraction of steps whose Sinkhorn solve met its tolerance (mean and
    minimum over cells), and whether every cell converged on at least 95% of its steps."""
    out = {}
    for method in grid.methods:
        fracs = [c.ot["converged_frac"] for noise in grid.noise for c in by[(noise, method)]
                 if c.ot.get("solves") and c.ot.get("converged_frac") is not None
                 and grid.methods[method].margin_from != "own_cost"]
        if fracs:
            out[method] = {"mean": float(np.mean(fracs)), "min": float(np.min(fracs)), "cells": len(fracs),
                           "ot_iters": grid.methods[method].ot_iters, "ot_tol": grid.methods[method].ot_tol,
                           "converged": bool(min(fracs) >= 0.95)}
    return out


def _ot_table(conv: dict[str, dict[str, Any]]) -> list[str]:
    if not conv:
        return []
    rows = [[m, f"{v['mean']:.1%}", f"{v['min']:.1%}", str(v["cells"]), str(v["ot_iters"]), f"{v['ot_tol']:g}",
             "yes" if v["converged"] else "**no**: margins read from plans short of the tolerance"]
            for m, v in conv.items()]
    return ["", "### Sinkhorn convergence (share of training steps whose plan met the marginal tolerance)", ""] + \
        _table(["method", "mean", "worst cell", "cells", "ot_iters", "ot_tol", "converged (>= 95% in every cell)"],
               rows)


def _learned_section(cells: list[Cell], unlearned: list[Cell], accepted: bool) -> list[str]:
    from aplot_cli.train.learned import RULE
    lines = ["", "## Did every run learn?", "", f"Rule (train-rm): {RULE}.", ""]
    if evidence := learning_evidence(cells):  # the weakest learned run per method, to check before any table
        lines += [EVIDENCE_NOTE, "", *_table(EVIDENCE_HEADER, evidence), ""]
    if not unlearned:
        return lines + [f"All {len(cells)} finished runs learned."]
    lines += [f"**{len(unlearned)} of {len(cells)} runs did not learn** and are left out of every table, interval "
              "and verdict below (a paired difference loses that seed)"
              + (" (accepted with --accept-unlearned)" if accepted else "") + ":", ""]
    lines += [f"- {c.name}: " + "; ".join(c.learning.get("reasons") or ["-"]) for c in unlearned]
    return lines


def _final_eval(cell: Cell) -> float | None:
    curve = eval_curve(cell)
    return curve[-1][1] if curve else cell.train.get("test_accuracy")


def _convergence_table(grid, by: dict) -> tuple[list[str], list[dict[str, Any]]]:
    """Per seed: steps until the periodic test accuracy first reaches 95% of the baseline's final test
    accuracy for the same seed; mean over seeds and the paired difference with the baseline."""
    if grid.baseline not in grid.methods:
        return [], []
    rows, records = [], []
    for noise in grid.noise:
        base = {c.seed: c for c in by[(noise, grid.baseline)] if eval_curve(c)}
        if not base:
            continue
        targets = {seed: 0.95 * _final_eval(cell) for seed, cell in base.items()}
        base_steps = {seed: steps_to_reach(cell, targets[seed]) for seed, cell in base.items()}
        for method in grid.methods:
            steps = {c.seed: steps_to_reach(c, targets[c.seed]) for c in by[(noise, method)] if c.seed in targets}
            reached = [s for s in steps.values() if s is not None]
            diffs = [steps[s] - base_steps[s] for s in steps if steps[s] is not None and base_steps[s] is not None]
            mean, half, n = mean_ci([float(d) for d in diffs])
            rows.append([f"{noise:.0%}", method, f"{np.mean(list(targets.values())) * 100:.1f}",
                         f"{np.mean(reached):.0f}" if reached else "not reached", f"{len(reached)}/{len(steps)}",
                         "-" if n == 0 or method == grid.baseline else
                         f"{mean:+.0f}" + (f" [{mean - half:+.0f}, {mean + half:+.0f}]" if n >= 2 else "")])
            records.append({"noise": noise, "method": method, "steps": steps, "targets": targets})
    if not rows:
        return [], []
    return ["", f"### Convergence: steps until the test accuracy first reaches 95% of {grid.baseline}'s final "
                "accuracy (per seed)", ""] + \
        _table(["noise", "method", "mean target %", "mean steps (seeds that reached it)", "reached",
                f"paired steps vs {grid.baseline} [95% CI]"], rows), records


def _margin_table(grid, by: dict, out_dir: Path) -> tuple[list[str], dict]:
    rows, stats_all = [], {}
    for noise in grid.noise:
        for method in grid.methods:
            stats = [training_margin_stats(c, cell_pairs_dir(grid, out_dir, c)) for c in by[(noise, method)]]
            merged = {k: float(np.mean([s[k] for s in stats if k in s])) for k in sorted({k for s in stats for k in s})}
            if not merged:
                continue
            stats_all[f"{noise_tag(noise)}/{method}"] = merged
            rows.append([f"{noise:.0%}", method] + [f"{merged[k]:.4f}" if k in merged else "-"
                                                    for k in ("mean", "std", "in_batch_spread", "hard_mean", "easy_mean")])
    if not rows:
        return [], {}
    return ["", "### Margin diagnostics (APLOT margins seen in training)", ""] + _table(
        ["noise", "method", "mean", "std over pairs", "in-batch spread", "hard mean", "easy mean"], rows), stats_all


TABLES_TEX = "tables.tex"
# settings that change no result (besides train-rm's HOW_NOT_WHAT: what was kept or published): not in the base table
_NOT_RESULTS = frozenset({"seed", "feature_cache_dir", "report_to", "push_to_hub", "hub_private", "save_steps",
                          "save_total_limit", "keep_checkpoints", "trust_remote_code"})


def _resolved(cfg) -> dict[str, Any]:
    """A method's train-rm config as its cells train with it (train-rm's resolution), seed left out."""
    import json

    from aplot_cli.config import config_to_dict, resolve_train

    values = json.loads(json.dumps(config_to_dict(resolve_train(cfg)), default=str))
    return {k: v for k, v in values.items() if k != "seed"}


def hyperparameters(grid) -> dict[str, Any]:
    """`base`: the grid's base train-rm config as resolved (without `seed`: the grid's seeds are listed apart);
    `overrides`: per method, the settings its resolved config sets otherwise (a no-OT twin's included). A base
    that is no valid config on its own gives the values every method shares."""
    methods = {name: _resolved(cfg) for name, cfg in grid.methods.items()}
    base_cfg = getattr(grid, "base", None)
    if base_cfg is not None:
        base = _resolved(base_cfg)
    else:
        first = next(iter(methods.values()))
        base = {k: v for k, v in first.items() if all(m.get(k) == v for m in methods.values())}
    overrides = {name: {k: v for k, v in cfg.items() if k not in base or base[k] != v}
                 for name, cfg in methods.items()}
    return {"base": base, "overrides": overrides}


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value) or "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _hyperparameters(grid, tex: list[latex.Table]) -> tuple[list[str], dict[str, Any]]:
    """The hyperparameter tables: the base config and each method's overrides, as the cells trained."""
    from aplot_cli.train.resume import HOW_NOT_WHAT

    record = hyperparameters(grid)
    base_rows = [[k, _value(v)] for k, v in record["base"].items() if k not in _NOT_RESULTS | HOW_NOT_WHAT]
    method_rows = [[name, "; ".join(f"{k}: {_value(v)}" for k, v in over.items()) or "none (the base)"]
                   for name, over in record["overrides"].items()]
    note = (f"Every method trains with the base train-rm configuration, as resolved (defaults < the grid's `base` < "
            f"the method's settings; an unset learning rate or group_by_length as train-rm fills it in), and "
            f"differs from it only where the second table says. Seeds: {_seed_list(grid.seeds)}; label noise: "
            f"{', '.join(f'{n:.0%}' for n in grid.noise)}. Settings that change no result (device, caches, "
            "checkpoint keeping, publishing) are left out.")
    tex.append(latex.Table(f"Hyperparameters: the base configuration. {note}", ["setting", "base"], base_rows,
                           "tab:hyperparameters"))
    tex.append(latex.Table("Each method's settings that differ from the base configuration (as resolved).",
                           ["method", "overrides"], method_rows, "tab:overrides", spec=r"lp{0.65\linewidth}"))
    lines = ["", "## Hyperparameters", "", note, ""] + _table(["setting", "base"], base_rows)
    lines += ["", "### Each method's overrides (as resolved)", ""] + _table(["method", "overrides"], method_rows)
    return lines, record


def build(grid, out_dir: Path, accept_unlearned: bool = False) -> Summary:
    """Collect every finished cell and write report.md, report.html, results.json, tables.tex (the tables in
    LaTeX, booktabs) and the figures (PNG, and SVG beside each). Cells that
    did not learn are named and left out of every table and verdict (`Summary.unlearned`)."""
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    cells, missing = collect(grid, out_dir)
    unlearned = [c for c in cells if not c.learned]
    by: dict = defaultdict(list)
    for cell in cells:
        if cell.learned:
            by[(cell.noise, cell.method)].append(cell)
    lines = [f"# {grid.title}", ""]
    if grid.notes:
        lines += [grid.notes.strip(), ""]
    flips = ("each seed draws its own flipped training labels" if grid.flips_per_seed() else
             f"one draw of flipped training labels (seed {grid.flip_seed}) for every seed")
    lines += [f"Methods: {', '.join(grid.methods)}; seeds: {_seed_list(grid.seeds)} ({len(grid.seeds)}); label noise: "
              f"{', '.join(f'{n:.0%}' for n in grid.noise)}"
              + (f" ({flips})" if any(n > 0 for n in grid.noise) else "") + "; evaluation sets: "
              f"{', '.join(ev.name for ev in grid.evals)}. Cells finished: {len(cells)}"
              + (f"; missing: {len(missing)}" if missing else "")
              + (f"; did not learn: {len(unlearned)}" if unlearned else "") + "."]
    if 0 < len(grid.seeds) < 3:
        lines += ["", f"**Warning: {len(grid.seeds)} seed(s).** A Student-t interval over fewer than 3 seeds is "
                      "too wide to decide anything; use at least 3, better 10 or more."]
    informative = informative_sets(grid, by)
    tex: list[latex.Table] = []
    accuracy_lines = _accuracy_tables(grid, by, tex)
    paired_lines, paired = _paired_tables(grid, by, informative, tex)
    twin_lines, twin_records = _twin_tables(grid, by, informative, tex)
    convergence_lines, convergence = _convergence_table(grid, by)
    conv_ot = ot_convergence(grid, by)
    lines += _learned_section(cells, unlearned, accept_unlearned)
    lines += ["", "## Accuracy"] + accuracy_lines + _informative_table(informative)
    lines += paired_lines + twin_lines + _difficulty_table(grid, by)
    lines += convergence_lines + _ot_table(conv_ot)
    margin_lines, margin_stats = _margin_table(grid, by, out_dir)
    lines += margin_lines
    hyper_lines, hyper = _hyperparameters(grid, tex)
    lines += hyper_lines
    learned_cells = [c for c in cells if c.learned]
    figures = drawing.draw(grid, by, learned_cells, out_dir, report_dir) if learned_cells else []
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    results = {"cells": [{"noise": c.noise, "method": c.method, "seed": c.seed, "learned": c.learned,
                          "train": {k: c.train.get(k) for k in ("train_accuracy", "test_accuracy", "steps",
                                                                 "pairs_per_second")},
                          "evals": {k: {"accuracy": v["score"],
                                        "hard": difficulty_accuracy(v, "hard"), "easy": difficulty_accuracy(v, "easy")}
                                    for k, v in c.evals.items()}} for c in cells],
               "unlearned": [{"noise": c.noise, "method": c.method, "seed": c.seed,
                              "reasons": c.learning.get("reasons") or []} for c in unlearned],
               "informative": list(informative.values()), "paired": paired, "twins": twin_records,
               "twin_of": dict(grid.twins), "convergence": convergence, "ot_convergence": conv_ot,
               "margins": margin_stats, "missing": missing, "seeds": list(grid.seeds),
               "flip_seed": grid.flip_seed, "hyperparameters": hyper}
    (report_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    artifacts.write_json_atomic(report_dir / "results.json", results)
    (report_dir / "report.html").write_text(html.page(grid.title, lines, figures), encoding="utf-8")
    (report_dir / TABLES_TEX).write_text(latex.document(grid.title, tex), encoding="utf-8")
    summary_metrics = {f"{c['noise']:.2f}/{c['method']}/{c['seed']}/{k}": v["accuracy"]
                       for c in results["cells"] if c["learned"] for k, v in c["evals"].items()}
    return Summary(files=[report_dir / "report.md", report_dir / "report.html", report_dir / "results.json",
                          report_dir / TABLES_TEX, *figures, *(f.with_suffix(".svg") for f in figures)],
                   metrics=summary_metrics, missing=missing,
                   unlearned=[f"{c.noise:.2f}/{c.method}/seed-{c.seed}" for c in unlearned])


def _seed_list(seeds) -> str:
    """`0-29` for a run of consecutive seeds, else the list."""
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))
