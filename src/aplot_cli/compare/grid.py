"""An `aplot compare` grid: the YAML read and checked (`load_grid`), the methods it trains with each APLOT
reading's no-OT twin added, its evaluation sets, and the local paths it reads (`input_paths`).

A grid YAML names the data (prepare options), the label-noise levels (`--flip-ratio` of the training
split), the embedding options, a base train-rm config, the methods (each a set of train-rm overrides),
the seeds, and the evaluation sets (`pairs`, or another benchmark on its own files:
`{benchmark: rm-bench, files: [...]}`, checked to load and score before any cell trains:
`check_eval_sets`). Nothing here runs a cell."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aplot_cli import artifacts
from aplot_cli.compare.layout import data_dir, noise_tag
from aplot_cli.config import EmbedConfig, PrepareConfig, TrainConfig
from aplot_cli.config_files import build_config, load_yaml
from aplot_cli.console import info
from aplot_cli.errors import ConfigError

_GRID_KEYS = ("data", "noise", "flip_seed", "embed", "base", "methods", "no_ot_twins", "seeds", "evals", "baseline",
              "eval_batch_size", "title", "notes")
TWIN_SUFFIX = "-no-ot"


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set: a split of the prepared data (`split: test`), pairwise files (`files`), or another
    benchmark on its own files in its hub schema (`benchmark: rm-bench, files: [...]`; without files, its hub
    dataset), scored by eval-rm as that benchmark scores it; the report reads its headline `score`."""

    name: str
    split: str | None = None
    files: tuple[str, ...] = ()
    every_nth: int = 1          # pairs files only: keep every n-th pair (a cheaper, still spread-out subset)
    benchmark: str = "pairs"
    domain: str | None = None   # rm-bench: the domain of files whose rows name none (else the file's name)


@dataclass(frozen=True)
class Grid:
    data: PrepareConfig
    embed: EmbedConfig
    methods: dict[str, TrainConfig]
    evals: tuple[EvalSet, ...]
    noise: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # paired CIs need several seeds to exclude zero
    baseline: str = "bt"
    eval_batch_size: int = 64
    title: str = "aplot compare"
    notes: str = ""
    flip_seed: str | int = "cell"   # `cell`: each seed draws its own flipped labels; an integer: one draw for all
    twins: dict[str, str] = field(default_factory=dict)  # APLOT reading -> its no-OT twin (method names)
    raw: dict[str, Any] = field(default_factory=dict)
    base: TrainConfig | None = None  # the `base:` settings alone (None where they are no valid config alone)

    def flips_per_seed(self) -> bool:
        return self.flip_seed == "cell"

    def data_dir(self, out_dir: Path, noise: float, seed: int) -> Path:
        return data_dir(out_dir, noise, seed, self.flips_per_seed())


_NOT_USED_BY_OWN_COST = ("plan_on", "ot_reg", "ot_iters", "ot_tol", "ot_solver")


def no_ot_twin(cfg: TrainConfig) -> TrainConfig | None:
    """The same normalised reading with the plan taken out: the pair's own cost `H[i, i]` under the same cost
    and margin normalisation (`margin_from: own_cost`). None for configs without an APLOT margin, for
    `own_cost` itself, and for readings with neither a cost nor a margin normalisation (section 2's margin is
    nearly constant; `own_cost` is its plain ablation). The difference reading minus twin is what the OT plan
    adds (docs/method.md section 2b)."""
    if "aplot" not in cfg.loss or cfg.margin_from == "own_cost":
        return None
    if cfg.cost_norm == "none" and cfg.margin_norm == "none":
        return None
    return dataclasses.replace(cfg, margin_from="own_cost", plan_on="cost")


def _same_twin(a: TrainConfig, b: TrainConfig) -> bool:
    """Two own_cost configs that compute the same margins (the solver's settings do not enter one)."""
    keep = {f.name for f in dataclasses.fields(TrainConfig)} - set(_NOT_USED_BY_OWN_COST)
    return all(getattr(a, k) == getattr(b, k) for k in keep)


def _add_twins(methods: dict[str, TrainConfig], enabled: bool) -> tuple[dict[str, TrainConfig], dict[str, str]]:
    """Every APLOT reading's no-OT twin: the grid's own method when one computes it, else a new method
    `<reading>-no-ot` placed right after the reading."""
    if not enabled:
        return methods, {}
    out: dict[str, TrainConfig] = {}
    twins: dict[str, str] = {}
    for name, cfg in methods.items():
        out[name] = cfg
        twin = no_ot_twin(cfg)
        if twin is None:
            continue
        found = next((other for other, ocfg in methods.items() if ocfg.margin_from == "own_cost"
                      and _same_twin(ocfg, twin)), None)
        if found is None:
            found = f"{name}{TWIN_SUFFIX}"
            out[found] = twin
        twins[name] = found
    return out, twins


def _resolve_paths(values: Any, base: Path) -> Any:
    """Relative file paths in a grid are relative to the grid file."""
    if isinstance(values, (list, tuple)):
        return [str((base / v).resolve()) if not Path(v).is_absolute() else v for v in values]
    return values


def load_grid(path: Path | str, seeds: tuple[int, ...] | None = None, methods: tuple[str, ...] | None = None) -> Grid:
    path = Path(path)
    raw = load_yaml(path, kind="grid")
    for key in raw:
        if key not in _GRID_KEYS:
            close = difflib.get_close_matches(key, _GRID_KEYS, n=1)
            raise ConfigError(f"grid {path}: unknown key `{key}`",
                              hint=f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(_GRID_KEYS)}")
    check_grid(raw, path, seeds, methods)
    here = path.parent
    data_raw = dict(raw.get("data") or {})
    if "files" in data_raw:
        data_raw["files"] = _resolve_paths(data_raw["files"], here)
    data = build_config(PrepareConfig, None, data_raw)
    embed_cfg = build_config(EmbedConfig, None, dict(raw.get("embed") or {}))
    base = dict(raw.get("base") or {})
    method_raw = raw.get("methods") or {"bt": {"loss": ["bt"]}, "aplot": {"loss": ["aplot"]}}
    if methods:
        unknown = [m for m in methods if m not in method_raw]
        if unknown:
            raise ConfigError(f"--methods names {unknown[0]!r}, not in the grid",
                              hint=f"methods in {path}: {', '.join(method_raw)}")
        method_raw = {m: method_raw[m] for m in methods}
    if not any("group_by_length" in layer for layer in [base, *(o or {} for o in method_raw.values())]):
        base["group_by_length"] = False  # train-rm's default differs by loss: cells stay paired by seed (same batches)
    method_cfgs = {name: build_config(TrainConfig, None, {**base, **(overrides or {})})
                   for name, overrides in method_raw.items()}
    _check_methods(method_cfgs, path)
    try:
        base_cfg: TrainConfig | None = build_config(TrainConfig, None, base)
    except ConfigError:  # e.g. settings that only a method's loss makes valid: the report lists what all share
        base_cfg = None
    pushing = [name for name, cfg in method_cfgs.items() if cfg.push_to_hub]
    if pushing:
        raise ConfigError(f"grid {path}: method `{pushing[0]}` sets push_to_hub: every cell would push to one repo",
                          hint="push a chosen cell's run with `hf upload REPO CELL/train/model .`, or rerun it with "
                               "`aplot train-rm --push-to-hub REPO`")
    method_cfgs, twins = _add_twins(method_cfgs, bool(raw.get("no_ot_twins", True)))
    flip_seed = raw.get("flip_seed", "cell")
    if flip_seed != "cell" and (isinstance(flip_seed, bool) or not isinstance(flip_seed, int)):
        raise ConfigError(f"grid {path}: `flip_seed` is {flip_seed!r}",
                          hint="`cell` (each seed draws its own flipped labels; the default) or an integer (one "
                               "draw for every seed)")
    evals_raw = raw.get("evals") or {"id": {"split": "test"}}
    evals = [_eval_set(path, name, spec or {}) for name, spec in evals_raw.items()]
    grid = Grid(data=data, embed=embed_cfg, methods=method_cfgs, evals=tuple(evals),
                noise=tuple(float(n) for n in raw.get("noise", [0.0])),
                seeds=tuple(seeds if seeds else raw.get("seeds", [0, 1, 2, 3, 4])),
                baseline=raw.get("baseline", "bt"), eval_batch_size=int(raw.get("eval_batch_size", 64)),
                title=raw.get("title", "aplot compare"), notes=raw.get("notes", ""), flip_seed=flip_seed,
                twins=twins, raw=raw, base=base_cfg)
    if grid.baseline not in grid.methods:
        info(f"[yellow]baseline method {grid.baseline!r} is not in the grid: no convergence column[/]")
    return grid


def _check_methods(method_cfgs: dict[str, TrainConfig], path: Path) -> None:
    """Every method's train-rm settings checked as train-rm checks them (`loss: [bt+]`, `batch_size: 0`, ...),
    before any data is prepared: a cell would otherwise find it only after the grid's data was made."""
    from aplot_cli.train.validation import validate

    for name, cfg in method_cfgs.items():
        try:
            validate(cfg, has_embeddings=True)  # every cell is given the grid's embeddings
        except ConfigError as exc:
            raise ConfigError(f"grid {path}: method `{name}`: {exc.message}",
                              hint=f"fix it under `methods: {name}:` (or `base:`) in the grid") from None


def check_grid(raw: dict[str, Any], path: Path, seeds: tuple[int, ...] | None = None,
               methods: tuple[str, ...] | None = None) -> None:
    """Refuse a grid whose report would claim something other than what ran: an empty list or mapping
    (`seeds: []`, `methods: {}` would run nothing or the defaults), a seed, method or noise level given
    twice (counted twice in means and intervals, or one folder for two cells), a noise level that is not a
    fraction, and a method or eval set name that is not a plain folder name. Each error names the key."""
    where = f"grid {path}"
    for key, kind, default in (("methods", dict, "bt and aplot"), ("evals", dict, "id: {split: test}"),
                               ("seeds", list, "0 to 4"), ("noise", list, "[0.0]")):
        if key in raw and not (isinstance(raw[key], kind) and raw[key]):
            shape = "mapping of name: settings" if kind is dict else "list"
            raise ConfigError(f"{where}: `{key}` is {raw[key]!r}; it must be a non-empty {shape}",
                              hint=f"list at least one, or leave `{key}` out for the default ({default})")
    _check_seeds(raw.get("seeds", [0]), f"{where}: `seeds`")
    if seeds is not None:
        _check_seeds(list(seeds), "--seeds")
    if methods is not None and len(set(methods)) != len(methods):
        raise ConfigError(f"--methods names {_twice(methods)!r} twice", hint="name each method once")
    tags: dict[str, Any] = {}
    for value in raw.get("noise", [0.0]):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where}: `noise` holds {value!r}; a label-noise level is the fraction of training "
                              "pairs whose labels are swapped, in [0, 1]", hint="e.g. noise: [0.0, 0.2]")
        if noise_tag(value) in tags:
            raise ConfigError(f"{where}: `noise` holds {tags[noise_tag(value)]!r} and {value!r}, the same level "
                              f"({noise_tag(value)})", hint="list each label-noise level once")
        tags[noise_tag(value)] = value
    for key in ("methods", "evals"):
        for name in raw.get(key) or {}:
            if not artifacts.is_member_name(name, flat=True):
                raise ConfigError(f"{where}: `{key}` name {name!r} is not a plain folder name",
                                  hint="use letters, digits, - and _ (each names a folder under --out-dir)")


def _twice(values: Any) -> Any:
    seen = set()
    return next(v for v in values if v in seen or seen.add(v))


def _check_seeds(values: list[Any], where: str) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where} is {values!r}; it must be a non-empty list of integers", hint="e.g. seeds: [0, 1, 2]")
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 0), None)
    if bad is not None:
        raise ConfigError(f"{where} holds {bad!r}; seeds are integers >= 0", hint="e.g. seeds: [0, 1, 2]")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where} holds seed {_twice(values)} twice: it would count twice in every mean and "
                          "interval", hint="list each seed once")


def _eval_set(path: Path, name: str, spec: dict[str, Any]) -> EvalSet:
    """One `evals:` entry: `split` or `files` (+ `every_nth`) for pairs, or `benchmark` (+ `files`, + `domain`
    for rm-bench) for another eval-rm benchmark."""
    from aplot_cli import benchmarks

    bench = benchmarks.get(str(spec.get("benchmark", "pairs"))).NAME
    files = tuple(_resolve_paths(spec.get("files", []), path.parent))
    if bench == "pairs":
        if not ("split" in spec) ^ ("files" in spec) or set(spec) - {"split", "files", "every_nth", "benchmark"}:
            raise ConfigError(f"grid {path}: eval set `{name}` needs exactly one of `split` or `files` "
                              "(and optionally `every_nth` with files)")
        return EvalSet(name=name, split=spec.get("split"), every_nth=int(spec.get("every_nth", 1)), files=files)
    allowed = {"benchmark", "files"} | ({"domain"} if bench == "rm-bench" else set())
    if bench == "bon" or set(spec) - allowed:
        raise ConfigError(f"grid {path}: eval set `{name}` ({bench}) takes {', '.join(f'`{k}`' for k in sorted(allowed))}"
                          f", not {', '.join(f'`{k}`' for k in sorted(set(spec) - allowed)) or 'samples'}",
                          hint="`files`: local files in the benchmark's hub schema (none: its hub dataset); `bon` "
                               "needs a samples artifact per policy and is run with `aplot eval-rm`")
    return EvalSet(name=name, files=files, benchmark=bench, domain=spec.get("domain"))


def check_eval_sets(grid: Grid) -> None:
    """Before any cell trains: every benchmark set's files load, and its benchmark gives a headline score on
    them (scored here with a constant reward; RewardBench's leaderboard needs all four sections)."""
    from aplot_cli import benchmarks
    from aplot_cli.benchmarks import rmbench

    for ev in grid.evals:
        if ev.benchmark == "pairs":
            continue
        if ev.domain:
            rmbench.check_domain(ev.domain)
        bench = benchmarks.get(ev.benchmark)
        items = bench.load(ev.files, None, None, **({"domain": ev.domain} if ev.domain else {}))
        result = bench.score(items.drop(columns=["prompt", "prompt_messages", "response"]).assign(score=0.0))
        if result.final.get(result.primary) is None:
            raise ConfigError(f"grid: eval set `{ev.name}` ({ev.benchmark}) has no headline score "
                              f"(`{result.primary}`) on its files: {'; '.join(result.notes)}",
                              hint="give files that cover the benchmark's sections, or score them with "
                                   "`benchmark: pairs` for a pooled pair accuracy")


def input_paths(grid: Grid, grid_path: Path | str) -> list[tuple[str, Any]]:
    """The local paths a grid reads (what its --out-dir must stay clear of)."""
    from aplot_cli import prepare

    paths: list[tuple[str, Any]] = [("GRID", grid_path), ("embed.model", grid.embed.model),
                                    ("embed.cache_dir", grid.embed.cache_dir)]
    paths += [(f"data {label}", value) for label, value in prepare.input_paths(grid.data)]
    paths += [(f"evals.{ev.name}.files", f) for ev in grid.evals for f in ev.files]
    paths += [(f"methods.{name}.backbone", cfg.backbone) for name, cfg in grid.methods.items()]
    return paths
