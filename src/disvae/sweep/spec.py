"""Sweep files: a base config, grids and random samples over config keys, seeds, methods.

A sweep file (TOML) expands into one `RunSpec` per run; every run's config is checked when the
file is expanded, so a misspelt key or a bad value fails before anything trains, naming the key
and the file. See docs/sweep.md for the format.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from disvae import config as C
from disvae.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TOP_KEYS = {"name", "seed", "seeds", "imports", "base", "evaluate", "grid", "random", "methods"}
_METHOD_KEYS = {"name", "loss", "preset", "set", "grid", "random"}
_EVAL_KEYS = {"metrics", "heldout", "n_samples", "n_test", "seed", "dci_model", "batch_size"}
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
MAX_RUNS = 10_000  # more runs than this in one sweep is a typo (a grid or `n` too large)
MAX_NAME = 200  # longer run names (directory names) are shortened, ending in a hash


@dataclass(frozen=True)
class EvalSpec:
    """How each run is evaluated once trained (see `disvae.evaluation`)."""

    metrics: tuple[str, ...] = ()
    heldout: bool = True  # held-out losses (eval_losses.json)
    n_samples: int = 10_000
    n_test: int = 5_000
    seed: int = 0
    dci_model: str = "gbt"
    batch_size: int = 1000


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its readable name, what was swept, and its full config."""

    name: str
    method: str
    params: dict[str, Any]  # swept key ("loss.beta") -> value, in the order of the file
    seed: int
    config: C.RunConfig
    evaluate: EvalSpec
    imports: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "config": C.to_dict(self.config),
            "evaluate": {k: getattr(self.evaluate, k) for k in _EVAL_KEYS},
            "imports": list(self.imports),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        ev = dict(d["evaluate"], metrics=tuple(d["evaluate"]["metrics"]))
        return cls(
            name=d["name"],
            method=d["method"],
            params=dict(d["params"]),
            seed=int(d["seed"]),
            config=C.from_dict(d["config"], source=f"run {d['name']}"),
            evaluate=EvalSpec(**ev),
            imports=tuple(d.get("imports", ())),
        )


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: its name, source, text, and its runs in order."""

    name: str
    source: str
    text: str
    runs: list[RunSpec] = field(default_factory=list)


# --------------------------------------------------------------------------- finding files


def sweep_names() -> list[str]:
    """Names of the sweep files shipped in ``disvae/sweeps``."""
    root = resources.files("disvae") / "sweeps"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def find_sweep_file(name_or_path: str | Path) -> tuple[str, str]:
    """``(source, text)`` of a sweep file given by path or by the name of a shipped one."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return str(p), p.read_text(encoding="utf-8")
    shipped = resources.files("disvae") / "sweeps" / f"{name_or_path}.toml"
    if shipped.is_file():
        return f"sweep {name_or_path}", shipped.read_text(encoding="utf-8")
    raise UserError(
        f"sweep file {str(name_or_path)!r} not found; pass a path or one of the shipped "
        f"sweeps: {', '.join(sweep_names())}"
    )


def load_sweep(name_or_path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and expand a sweep file; ``overrides`` (``key=value``) apply to every run's base."""
    source, text = find_sweep_file(name_or_path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{source} is not valid TOML: {e}") from None
    given = Path(str(name_or_path))
    name = _check_name(doc["name"] if "name" in doc else given.stem, source, "name" in doc)
    return Sweep(name, source, text, expand(doc, source, overrides or []))


_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _check_name(name: Any, source: str, explicit: bool) -> str:
    """The sweep's name, which names its directory (``sweeps/out/<name>``): a plain name."""
    text = str(name)
    if explicit and isinstance(name, str) and _NAME.fullmatch(name) and name not in (".", ".."):
        return text
    if not explicit and text not in ("", ".", "..") and not re.search(r"[/\\]", text):
        return text
    what = f"name {name!r}" if explicit else f"the file name {text!r} (the default name)"
    raise UserError(
        f"{source}: {what} is not a plain sweep name; use letters, digits, '-', '_' and '.' "
        "(no path separators, not '.' or '..'), e.g. name = \"beta_study\"; choose where the "
        "sweep goes with --out"
    )


# --------------------------------------------------------------------------- expansion


def expand(doc: dict[str, Any], source: str, overrides: list[str] | None = None) -> list[RunSpec]:
    """The runs of a parsed sweep file: methods × grid × random samples × seeds, checked."""
    _check_keys(doc, _TOP_KEYS, source, "the top level")
    seeds = doc.get("seeds", [None])
    if "seeds" in doc and not (isinstance(seeds, list) and seeds and all(map(_is_int, seeds))):
        raise UserError(f"{source}: seeds must be a non-empty list of integers, e.g. [0, 1, 2]")
    _check_unique(seeds, source, "seeds")
    seed = doc.get("seed", 0)
    if not (_is_int(seed) and seed >= 0):
        raise UserError(
            f"{source}: seed must be an integer >= 0 (of the random samples), got {seed!r}"
        )
    evaluate = _eval_spec(doc.get("evaluate", {}), source)
    imports = doc.get("imports", [])
    if not (isinstance(imports, list) and all(isinstance(m, str) and m for m in imports)):
        raise UserError(f'{source}: imports must be a list of module names, e.g. ["mypkg.data"]')
    imports = tuple(imports)
    _import_all(imports, source)
    base = _table(doc, "base", source)
    shared_grid = _keyed(_table(doc, "grid", source), source, "[grid]")
    shared_table = _keyed(_table(doc, "random", source), source, "[random]", random=True)
    methods = doc.get("methods", [{}])
    if not isinstance(methods, list) or not all(isinstance(m, dict) for m in methods):
        raise UserError(f"{source}: methods must be an array of tables ([[methods]])")
    if not methods:
        raise UserError(
            f"{source}: methods is empty: the sweep has no runs; add a [[methods]] "
            "table, or leave methods out to run the base alone"
        )
    _check_grid(shared_grid, source, "[grid]")
    shared_random = _samples(shared_table, seed, source, "[random]")
    runs: list[RunSpec] = []
    labels: dict[str, str] = {}
    total = 0
    for i, method in enumerate(methods):
        where = f"[[methods]] #{i + 1}"
        _check_keys(method, _METHOD_KEYS, source, where)
        cfg = _method_base(base, method, overrides or [], source, where)
        label = method.get("name", cfg.loss.name)
        if not (isinstance(label, str) and label.strip()):
            raise UserError(f"{source}: {where} name must be a non-empty string, got {label!r}")
        if label in labels:  # the results and the page group runs by this label
            raise UserError(
                f"{source}: {labels[label]} and {where} are both named {label!r} (a method "
                f'without a name takes its loss\'s); give each a distinct name = "..."'
            )
        labels[label] = where
        grid = dict(shared_grid, **_keyed(_table(method, "grid", source, where), source, where))
        _check_grid(grid, source, where)
        own_table = _keyed(_table(method, "random", source, where), source, where, random=True)
        _check_disjoint(grid, shared_table, own_table, "seeds" in doc, source, where)
        own = _samples(own_table, [seed, i], source, where)
        n_points = math.prod(len(v) for v in grid.values()) * len(seeds)
        n_points *= max(1, len(shared_random)) * max(1, len(own))
        total += n_points
        if total > MAX_RUNS:  # (counted before any is made: a typo must not hang the CLI)
            raise UserError(
                f"{source}: the sweep expands into more than {MAX_RUNS:,} runs ({where} alone "
                f"has {n_points:,}); shrink its grids, random n or seeds"
            )
        for point in _points(grid, shared_random, own):
            for s in seeds:
                runs.append(_run(label, point, s, cfg, evaluate, imports, source))
    _check_distinct(runs, source)
    _name_runs(runs)
    return runs


def _method_base(
    base: dict, method: dict, overrides: list[str], source: str, where: str
) -> C.RunConfig:
    cfg = C.RunConfig()
    preset = method.get("preset", base.get("preset"))
    if preset is not None:
        cfg = C.load_preset(str(preset), cfg)
    sections = {k: v for k, v in base.items() if k != "preset"}
    cfg = C.from_dict(sections, cfg, source=f"{source} [base]")
    if "loss" in method:
        cfg = _assign(cfg, "loss.name", method["loss"], source, where)
    for key, value in _table(method, "set", source, where).items():
        cfg = _assign(cfg, key, value, source, f"{where} set")
    try:
        return C.apply_overrides(cfg, overrides)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def _check_grid(grid: dict, source: str, where: str) -> None:
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{source}: {where} grid: {key} must be a non-empty list of values")
        _check_unique(values, source, f"{where} grid: {key}")


def _keyed(table: dict, source: str, where: str, random: bool = False) -> dict:
    """``table`` with its config keys written in full (``beta`` -> ``loss.beta``; ``n`` kept),
    so that one key spelt two ways is one key; two spellings in one table are an error."""
    full: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in table.items():
        name = key if random and key == "n" else ".".join(_resolve(key, source))
        if name in full:
            raise UserError(
                f"{source}: {where}: {spelt[name]!r} and {key!r} are the same key "
                f"({name}); give it once"
            )
        full[name], spelt[name] = value, key
    return full


def _check_disjoint(
    grid: dict, shared: dict, own: dict, seeds: bool, source: str, where: str
) -> None:
    """A key swept twice (by a grid and a random table, or by both random tables, or
    ``train.seed`` besides ``seeds``) would leave one of them without effect: the same runs
    twice under different names."""
    sources = [("grid", set(grid)), ("[random]", set(shared) - {"n"}), ("random", set(own) - {"n"})]
    if seeds:
        sources.append(("seeds", {"train.seed"}))
    for (a, keys_a), (b, keys_b) in itertools.combinations(sources, 2):
        both = sorted(keys_a & keys_b)
        if both:
            raise UserError(
                f"{source}: {where}: {both[0]} is swept by both {a} and {b}; sweep each key "
                "in one place"
            )


def _check_distinct(runs: list[RunSpec], source: str) -> None:
    """Refuse two runs with the same config (e.g. random choices drawn twice): the same run
    would be trained twice."""
    seen: dict[str, RunSpec] = {}
    for run in runs:
        key = json.dumps(C.to_dict(run.config), sort_keys=True, default=str)
        if key in seen:
            first = seen[key]
            raise UserError(
                f"{source}: method {first.method!r} {first.params} seed {first.seed} and method "
                f"{run.method!r} {run.params} seed {run.seed} are the same run (identical "
                "configs); remove one (a random choice drawn twice: lower n or add values)"
            )
        seen[key] = run


def _points(grid: dict, shared: list[dict], own: list[dict]):
    """Every combination of the grid values with the random samples, as ``{key: value}``."""
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    for combo in combos:
        for a in shared or [{}]:
            for b in own or [{}]:
                yield {**combo, **a, **b}


def _run(
    label: str, point: dict, seed: Any, cfg: C.RunConfig, ev: EvalSpec, imports: tuple, source: str
) -> RunSpec:
    params: dict[str, Any] = {}
    for key, value in point.items():
        section, name = _resolve(key, source)
        cfg = _assign(cfg, f"{section}.{name}", value, source, f"{label} {key}")
        params[f"{section}.{name}"] = value
    if seed is not None:
        cfg = _assign(cfg, "train.seed", seed, source, "seeds")
    try:  # every value checked now, as `train` would (the dataset's likelihood is not known yet)
        C.check(cfg)
    except UserError as e:
        raise UserError(f"{source}: method {label!r} {params}: {e}") from None
    return RunSpec("", label, params, cfg.train.seed, cfg, ev, imports)


def _name_runs(runs: list[RunSpec]) -> None:
    """Readable, unique names: ``betaH-beta=4-seed=0`` (the swept keys' short names)."""
    taken: dict[str, int] = {}
    for i, run in enumerate(runs):
        shorts = [k.split(".")[1] for k in run.params]
        parts = [run.method]
        for (key, value), short in zip(run.params.items(), shorts, strict=True):
            label = short if shorts.count(short) == 1 else key
            parts.append(f"{label}={_fmt(value)}")
        parts.append(f"seed={run.seed}")
        name = re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))
        if len(name) > MAX_NAME:  # a directory name: at most 255 bytes on most file systems
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name[: MAX_NAME - 9]}-{digest}"
        taken[name] = taken.get(name, 0) + 1
        if taken[name] > 1:
            name = f"{name}-{taken[name]}"
        object.__setattr__(runs[i], "name", name)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------- random samples


def _samples(table: dict, seed: Any, source: str, where: str) -> list[dict[str, Any]]:
    """``n`` points drawn from the distributions of ``table`` with ``seed`` (reproducible)."""
    if not table:
        return []
    n = table.get("n")
    if not _is_int(n) or n <= 0:
        raise UserError(f"{source}: {where} random needs n = <number of samples> (a positive int)")
    if n > MAX_RUNS:
        raise UserError(
            f"{source}: {where} random: n = {n:,} is more than the {MAX_RUNS:,} runs "
            "a sweep may have"
        )
    dists = {k: v for k, v in table.items() if k != "n"}
    if not dists:
        raise UserError(
            f"{source}: {where} random has n but no key to draw (its {n} samples would be the "
            'same run), e.g. "train.lr" = { loguniform = [1e-4, 1e-3] }'
        )
    rng = np.random.default_rng(seed)
    return [{k: _draw(k, d, rng, source, where) for k, d in dists.items()} for _ in range(n)]


def _draw(key: str, dist: Any, rng: np.random.Generator, source: str, where: str) -> Any:
    if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
        raise UserError(
            f"{source}: {where} random {key}: expected one of "
            f"{{choice = [...]}}, {{uniform = [lo, hi]}}, {{loguniform = [lo, hi]}}, "
            f"{{int = [lo, hi]}}; got {dist!r}"
        )
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise UserError(f"{source}: {where} random {key}: choice needs a non-empty list")
        return arg[int(rng.integers(len(arg)))]
    number = _is_int if kind == "int" else _is_num
    ok = isinstance(arg, list) and len(arg) == 2 and all(number(a) for a in arg)
    if not (ok and all(math.isfinite(a) for a in arg) and arg[0] <= arg[1]):
        what = "integers" if kind == "int" else "finite numbers"
        raise UserError(
            f"{source}: {where} random {key}: {kind} needs [lo, hi], {what} with lo <= hi, "
            f"got {arg!r}"
        )
    lo, hi = arg
    if kind == "int":
        return int(rng.integers(int(lo), int(hi) + 1))
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if lo <= 0:
        raise UserError(f"{source}: {where} random {key}: loguniform needs lo > 0")
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# --------------------------------------------------------------------------- checks


def _assign(cfg: C.RunConfig, key: str, value: Any, source: str, where: str) -> C.RunConfig:
    section, name = _resolve(key, source)
    return C.from_dict({section: {name: value}}, cfg, source=f"{source} ({where})")


def _resolve(key: str, source: str) -> tuple[str, str]:
    try:
        return C.resolve_key(key)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def _eval_spec(table: Any, source: str) -> EvalSpec:
    if not isinstance(table, dict):
        raise UserError(f"{source}: [evaluate] must be a table")
    _check_keys(table, _EVAL_KEYS, source, "[evaluate]")
    metrics = table.get("metrics", [])
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise UserError(
            f'{source}: [evaluate] metrics must be a list of names, "all" or [], got {metrics!r}'
        )
    for key, default in vars(EvalSpec()).items():
        value = table.get(key, default)
        if key == "heldout" and not isinstance(value, bool):
            raise UserError(f"{source}: [evaluate] heldout must be true or false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            low = 0 if key == "seed" else 1
            if not (_is_int(value) and value >= low):
                raise UserError(
                    f"{source}: [evaluate] {key} must be an integer >= {low}, got {value!r}"
                )
    from disvae.metrics.dci import DCI_MODELS

    if table.get("dci_model", "gbt") not in DCI_MODELS:
        raise UserError(
            f"{source}: [evaluate] dci_model must be one of {', '.join(DCI_MODELS)}, "
            f"got {table['dci_model']!r}"
        )
    if metrics:
        from disvae.metrics import METRICS

        for m in metrics:
            if m != "all":
                try:
                    METRICS.get(m)
                except UserError as e:
                    raise UserError(f"{source}: [evaluate] metrics: {e}") from None
    return EvalSpec(**dict(table, metrics=tuple(metrics)))


def _import_all(modules: tuple, source: str) -> None:
    """Import the modules a sweep names (to register its datasets or objectives)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(str(module))
        except ImportError as e:
            raise UserError(f"{source}: imports: cannot import {module!r}: {e}") from None


def _table(d: dict, key: str, source: str, where: str = "") -> dict:
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{source}: {where + ' ' if where else ''}{key} must be a table")
    return value


def _check_keys(d: dict, allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise UserError(
            f"{source}: unknown key {unknown[0]!r} in {where}; valid keys: "
            f"{', '.join(sorted(allowed))}"
        )


def _check_unique(values: list, source: str, what: str) -> None:
    """Refuse a list with a value twice (it would make the same run twice)."""
    for i, value in enumerate(values):
        if value in values[:i]:
            raise UserError(
                f"{source}: {what} has {value!r} twice; list each value once (a repeated "
                "value would train the same run twice)"
            )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
