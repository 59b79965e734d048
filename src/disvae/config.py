"""Run configuration: frozen dataclasses, one per component, loaded from TOML/JSON and flags.

A run's effective configuration (every default resolved) is saved as ``config.json`` in the run
directory and is the single source of truth for ``--resume``, ``evaluate`` and ``load_run``.
Unknown keys and values of the wrong type are `UserError`s that name the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shlex
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from disvae.errors import UserError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how to split them."""

    name: str = "dsprites"
    path: str | None = None  # None: the built-in renderer (dSprites) or an error naming the source
    val_fraction: float = 0.1  # held-out share, drawn once with `split_seed`
    split_seed: int = 0  # fixed apart from the training seed so runs share one held-out split
    subset: int | None = None  # train/evaluate on this many images drawn at random (quick tests)
    img_size: int | None = None  # side of the square images; None: the dataset's default
    workers: int | None = None  # processes decoding image files into the cache; None: all CPUs


@dataclass(frozen=True)
class ModelConfig:
    """The encoder/decoder architecture."""

    arch: str = "burgess"  # burgess | conv | stacked (see docs/train.md, "Architectures")
    latent_dim: int = 10
    # conv, and stacked with tower = "conv"; None: the default for the image size. Per-layer
    # lists hold one entry per conv layer, or one entry used by every layer.
    channels: tuple[int, ...] | None = None  # output channels of each conv layer
    kernels: tuple[int, ...] | None = None  # kernel sizes (default 4)
    strides: tuple[int, ...] | None = None  # strides (default 2)
    paddings: tuple[int, ...] | None = None  # zero paddings (default 1)
    hidden: tuple[int, ...] | None = None  # dense widths after the convs (default [256])
    # stacked only (multi-patch data)
    tower: str | None = None  # each patch's encoder/decoder: conv (default) | burgess
    shared_tower: bool | None = None  # one tower for every patch (default false: one each)
    fusion: tuple[int, ...] | None = None  # dense widths fusing the towers (default [256])


# The model settings each built-in architecture reads. `resolve` refuses one it would ignore
# (before any data is loaded, and when a sweep file is expanded); the models check again when
# they build (an architecture registered elsewhere checks its own).
CONV_KEYS = ("channels", "kernels", "strides", "paddings", "hidden")
STACKED_KEYS = ("tower", "shared_tower", "fusion")


def model_keys(m: ModelConfig) -> tuple[tuple[str, ...], str] | None:
    """(the ``model.*`` settings ``m``'s architecture reads, its description), or None for an
    architecture that is not built in."""
    if m.arch == "burgess":
        return (), "arch 'burgess' (fixed sizes; arch 'conv' has the knobs)"
    if m.arch == "conv":
        return CONV_KEYS, "arch 'conv'"
    if m.arch == "stacked" and m.tower == "burgess":
        return STACKED_KEYS, "arch 'stacked' with tower 'burgess'"
    if m.arch == "stacked":
        return STACKED_KEYS + CONV_KEYS, "arch 'stacked'"
    return None


def reject_unused_model_keys(m: ModelConfig, used: Sequence[str], why: str) -> None:
    """`UserError` for a setting of ``m`` that is set but not in ``used`` (as for unused loss
    hyperparameters: a setting that would be silently ignored is an error)."""
    for f in fields(m):
        if f.name not in ("arch", "latent_dim", *used) and getattr(m, f.name) is not None:
            keys = ", ".join(f"model.{k}" for k in used) or "none"
            raise UserError(f"model.{f.name} is not used by {why} (its keys: {keys})")


@dataclass(frozen=True)
class LossConfig:
    """The objective and its hyperparameters.

    Hyperparameters left as None take the chosen objective's default (see `OBJECTIVE_DEFAULTS`);
    setting one the objective does not use is an error.
    """

    name: str = "betaB"
    rec_dist: str | None = None  # bernoulli | gaussian | laplace; None: the dataset's default
    rec_scale: float | None = None  # sigma (gaussian) or b (laplace) of the pixel likelihood
    beta: float | None = None
    gamma: float | None = None
    alpha: float | None = None
    c_init: float | None = None
    c_fin: float | None = None
    c_steps: int | None = None
    lr_disc: float | None = None
    sampling: str | None = None  # btcvae: mws | mss
    reg_anneal: int = 0  # steps of linear warm-up of the regulariser's weight from 0 to 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping."""

    steps: int | None = None  # None: `epochs` if given, else DEFAULT_STEPS
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 5e-4
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    log_every: int = 100
    snapshot_every: int | None = None  # training.gif frames; None: 50 in all; 0: off
    eval_every: int = 0  # steps between metrics computed during training (0: never)
    eval_metrics: str = "mig"  # comma-separated names for eval_every
    eval_samples: int = 2000  # points drawn for eval_every's metrics
    # Non-finite loss or gradient: the step is skipped; after `nan_patience` in a row the run
    # rolls back to its last checkpoint with the learning rate times `nan_lr_factor`, at most
    # `nan_rollbacks` times, then stops with a message naming the step and the term.
    nan_patience: int = 10
    nan_rollbacks: int = 3
    nan_lr_factor: float = 0.5
    # step (one host sync a step) | deferred (sync-free) | auto: deferred on CUDA or with cuda_graph
    nan_check: str = "auto"
    # Learning-rate schedule, a pure function of the step (training/schedules.py), times the
    # rollback factor: none | step (x lr_decay every lr_decay_every epochs) | cosine (to lr_floor).
    lr_schedule: str = "none"
    lr_decay_every: float = 10.0  # epochs (step schedule)
    lr_decay: float = 0.5  # factor (step schedule)
    lr_floor: float = 0.0  # final learning rate of the cosine schedule, as a fraction of lr
    lr_warmup: int = 0  # steps of linear warm-up (any schedule)
    grad_clip: float | None = None  # maximal global gradient norm (VAE and discriminator)
    val_every: int = 0  # steps between held-out losses (val/*) and best.safetensors (0: never)
    val_images: int | None = 5000  # held-out images used by val_every (None: all)
    # Speed (training/accel.py): bf16 autocast (auto: CUDA, CPUs with bf16 units), NHWC (None: CUDA
    # and CPU), compile.
    amp: str = "auto"  # auto | none | bf16
    channels_last: bool | None = None
    compile: bool = False
    # torch.compile's mode: default | reduce-overhead (CUDA graphs: replays the forward and
    # backward without launching each kernel from Python, for small models on a GPU) |
    # max-autotune | max-autotune-no-cudagraphs.
    compile_mode: str = "default"
    # The whole training step (batch gather, forward, objective, backward, clipping, Adam; the
    # discriminator's step too) captured once in a CUDA graph and replayed: one launch a step
    # instead of hundreds (training/graph.py), about 8x the eager step's speed at batch 64 on
    # an H200. None (auto): on for one process on CUDA, unless deterministic, nan_check = "step"
    # or a compile mode that records graphs itself asks otherwise; true on another device runs
    # the same step uncaptured.
    cuda_graph: bool | None = None
    # Deterministic kernels (cuDNN's deterministic algorithms, torch.use_deterministic_algorithms
    # with warnings): a GPU run then resumes bit for bit, at some cost in speed.
    deterministic: bool = False


AMP_MODES = ("auto", "none", "bf16")  # train.amp and `disvae evaluate --amp`
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Keys whose "all" or "off" is a value of their own (None or 0), not a word: a word there (`--set
# val_images=all`) is refused with a message that spells the value (`--set val_images=none`).
SPECIAL_VALUES: dict[str, tuple[Any, str]] = {
    "data.subset": (None, "all images"),
    "data.workers": (None, "all CPUs"),
    "train.val_images": (None, "all held-out images"),
    "train.grad_clip": (None, "no clipping"),
    "train.snapshot_every": (0, "no training.gif"),
    "train.eval_every": (0, "no metrics during training"),
    "train.val_every": (0, "no held-out losses"),
    "train.lr_warmup": (0, "no warm-up"),
    "loss.reg_anneal": (0, "no warm-up"),
}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# What may change when a run is resumed (everything else would make it a different run). The
# data may move (data.path: the trainer checks that it holds the same images' shape and count).
RESUMABLE_KEYS = frozenset({
    "data.path", "data.workers", "train.steps", "train.epochs", "train.device",
    "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.snapshot_every",
    "train.eval_every", "train.eval_metrics", "train.eval_samples", "train.val_every",
    "train.val_images", "train.amp", "train.compile", "train.compile_mode", "train.channels_last",
    "train.nan_check", "train.deterministic", "train.cuda_graph",
})  # fmt: skip

MAX_SEED = 2**63 - 1  # the largest TOML integer; torch and NumPy generators take it

# The protocol of the large disentanglement studies (Locatello et al., 2019): 300,000 steps.
DEFAULT_STEPS = 300_000

# Default hyperparameters of each objective; keys not listed are unused by that objective.
# Values follow the papers (and the disentangling-vae presets where the papers leave a choice).
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "vae": {},
    "betaH": {"beta": 4.0},  # Higgins et al. 2017
    "betaB": {"gamma": 1000.0, "c_init": 0.0, "c_fin": 25.0, "c_steps": 100_000},  # Burgess 2018
    "factor": {"gamma": 6.0, "lr_disc": 5e-5},  # Kim & Mnih 2018
    "btcvae": {"alpha": 1.0, "beta": 6.0, "gamma": 1.0, "sampling": "mws"},  # Chen et al. 2018
}
_HYPER = ("beta", "gamma", "alpha", "c_init", "c_fin", "c_steps", "lr_disc", "sampling")
REC_DISTS = ("bernoulli", "gaussian", "laplace")
DEFAULT_REC_SCALE = {"bernoulli": None, "gaussian": 0.1, "laplace": 0.1}
SECTIONS = {f.name: f.type for f in fields(RunConfig)}
_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}


# --------------------------------------------------------------------------- building


def from_dict(
    d: dict[str, Any], base: RunConfig | None = None, source: str = "config"
) -> RunConfig:
    """A `RunConfig` from nested ``{section: {key: value}}``, on top of ``base``."""
    cfg = base or RunConfig()
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a table of sections, got {type(d).__name__}")
    for section, values in d.items():
        if section not in _SECTION_TYPES and not isinstance(values, dict):
            # `steps = 20` above every [section]: a key, not a section
            owners = [s for s, cls in _SECTION_TYPES.items() if section in _field_names(cls)]
            if owners:
                where = " or ".join(f"[{s}]" for s in owners)
                raise UserError(
                    f"{source}: {section} = ... stands outside any section; put it under {where}"
                )
            raise UserError(
                f"{source}: {section} = ... stands outside any section and is no known key"
                f"{did_you_mean(section, _all_keys())}; valid sections: {', '.join(_SECTION_TYPES)}"
            )
        if section not in _SECTION_TYPES:
            valid = ", ".join(_SECTION_TYPES)
            raise UserError(
                f"{source}: unknown section [{section}]{did_you_mean(section, _SECTION_TYPES)}; "
                f"valid sections: {valid}"
            )
        if not isinstance(values, dict):
            raise UserError(f"{source}: [{section}] must be a table of key = value")
        cfg = _update(cfg, section, values, source)
    return cfg


def _update(cfg: RunConfig, section: str, values: dict[str, Any], source: str) -> RunConfig:
    cls = _SECTION_TYPES[section]
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        if key not in hints:
            valid = ", ".join(f.name for f in fields(cls))
            raise UserError(
                f"{source}: unknown key {section}.{key}"
                f"{did_you_mean(key, _field_names(cls), section)}; valid keys: {valid}"
            )
        checked[key] = _check_type(value, hints[key], f"{section}.{key}", source)
    if section == "train":
        if checked.get("steps") is not None and checked.get("epochs") is not None:
            raise UserError(f"{source}: give train.steps or train.epochs, not both")
        # The length of training is steps or epochs: a later source giving one replaces an
        # earlier one's other (a preset's epochs, then --steps); one source giving both errs.
        for key, other in (("steps", "epochs"), ("epochs", "steps")):
            if checked.get(key) is not None and other not in checked:
                checked[other] = None
    return replace(cfg, **{section: replace(getattr(cfg, section), **checked)})


def _field_names(cls: Any) -> list[str]:
    return [f.name for f in fields(cls)]


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in _SECTION_TYPES.items() for k in _field_names(cls)]


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if isinstance(value, str) and type(None) in allowed and str not in allowed:
        if value.strip().lower() in ("none", "null"):  # TOML has no null: val_images = "none"
            value = None
    if value is None and type(None) in allowed:
        return None
    if value is None and str in allowed:  # `--set amp=none` parses as "no value"
        raise UserError(
            f"{source}: {key} must be a string; for the word none write "
            f"{_spelling(key, 'none', source)}"
        )
    for t in allowed:
        if typing.get_origin(t) is tuple and isinstance(value, (list, tuple)):
            item = typing.get_args(t)[0]
            return tuple(_check_type(v, item, f"{key}[{i}]", source) for i, v in enumerate(value))
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{source}: {key} must be a finite number, got {value}")
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join(_type_name(t) for t in allowed)
    raise UserError(
        f"{source}: {key} must be {names}, got {value!r}{_word_hint(key, value, allowed, source)}"
    )


# What None, the default, means for a boolean setting that may also be None ("auto").
NONE_MEANS = {
    "train.cuda_graph": "the default (on for one process on CUDA)",
    "train.channels_last": "the default (on for CUDA and the CPU)",
    "model.shared_tower": "the default (one tower for each patch)",
}


def _word_hint(key: str, value: Any, allowed: tuple[Any, ...], source: str) -> str:
    """For a word where a number or a boolean goes (``all``, ``off``, ``yes``): how to write
    what it likely meant, as the user types it in ``source``, or ''."""
    if not isinstance(value, str):
        return ""
    if key in SPECIAL_VALUES:
        special, meaning = SPECIAL_VALUES[key]
        return f"; {_spelling(key, special, source)} means {meaning}"
    if bool in allowed:
        said = f"; write {_spelling(key, True, source)} or {_spelling(key, False, source)}"
        if type(None) in allowed:  # "auto" is None, the default
            meaning = NONE_MEANS.get(key, "the default")
            said += f", or {_spelling(key, None, source)} for {meaning}"
        return said
    return ""


def _spelling(key: str, value: Any, source: str) -> str:
    """``section.name = value`` as the user writes it in ``source``: on the command line
    (`typed`), in a JSON file (``"name": null``) or in a TOML file (``name = "none"``)."""
    name = key.rpartition(".")[2]
    if source in ("--set", "command line"):
        return typed(key, value)
    if source.endswith(".json"):
        return f'"{name}": {json.dumps(value)}'
    return f"{name} = {toml_value(value)}"


# `disvae train`'s flags: the argparse destination of each -> the config key it sets (the CLI
# turns the flags given into these keys; `typed` writes a key as its flag in messages)
FLAG_KEYS = {
    "loss": "loss.name", "dataset": "data.name", "data_path": "data.path",
    "val_fraction": "data.val_fraction", "split_seed": "data.split_seed", "subset": "data.subset",
    "img_size": "data.img_size", "workers": "data.workers",
    "arch": "model.arch", "latent_dim": "model.latent_dim",
    "rec_dist": "loss.rec_dist", "rec_scale": "loss.rec_scale", "beta": "loss.beta",
    "gamma": "loss.gamma", "alpha": "loss.alpha", "c_init": "loss.c_init", "c_fin": "loss.c_fin",
    "c_steps": "loss.c_steps", "lr_disc": "loss.lr_disc", "sampling": "loss.sampling",
    "reg_anneal": "loss.reg_anneal",
    "steps": "train.steps", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "lr": "train.lr", "seed": "train.seed", "device": "train.device",
    "checkpoint_every": "train.checkpoint_every", "keep_checkpoints": "train.keep_checkpoints",
    "log_every": "train.log_every", "snapshot_every": "train.snapshot_every",
    "eval_every": "train.eval_every", "eval_metrics": "train.eval_metrics",
    "lr_schedule": "train.lr_schedule", "lr_decay_every": "train.lr_decay_every",
    "lr_decay": "train.lr_decay", "lr_floor": "train.lr_floor", "lr_warmup": "train.lr_warmup",
    "grad_clip": "train.grad_clip", "val_every": "train.val_every",
    "val_images": "train.val_images", "amp": "train.amp", "compile": "train.compile",
    "compile_mode": "train.compile_mode", "channels_last": "train.channels_last",
    "deterministic": "train.deterministic", "cuda_graph": "train.cuda_graph",
}  # fmt: skip


def typed(key: str, value: Any) -> str:
    """How ``section.name = value`` is typed on `disvae train`'s command line, for messages:
    the key's flag where it has one that takes the value (``--eval-every 0``, ``--no-compile``),
    else ``--set name=value`` (``section.name`` where more sections have the name; quoted where
    the shell or the TOML reading of --set would change the value)."""
    flag = {k: "--" + dest.replace("_", "-") for dest, k in FLAG_KEYS.items()}.get(key)
    if flag is not None and isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if flag is not None and value is not None:
        return f"{flag} {shlex.quote(str(value))}"
    name = key.rpartition(".")[2]
    owners = [s for s, cls in _SECTION_TYPES.items() if name in _field_names(cls)]
    name = key if len(owners) > 1 else name
    text = "none" if value is None else toml_value(value)
    if isinstance(value, str) and parse_value(value) == value and value == text[1:-1]:
        text = value  # a bare word --set takes as a string
    return f"--set {name}={text}" if '"' not in text else f"--set '{name}={text}'"


def _type_name(t: Any) -> str:
    if t is type(None):
        return "null"
    if typing.get_origin(t) is tuple:
        return f"a list of {typing.get_args(t)[0].__name__}"
    return t.__name__


def load_file(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML or JSON config file (sections data/model/loss/train)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config file {str(p)!r} is a directory; pass a .toml or .json file")
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} not found; pass the path of a .toml or .json file")
    try:
        if p.suffix == ".json":
            d = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(d, dict):
                raise UserError(f"config file {str(p)!r}: expected a JSON object of sections")
            if "versions" in d:  # a run's config.json: its record (versions, sizes) is no setting
                d = {k: v for k, v in d.items() if k in _SECTION_TYPES}
        else:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"config file {str(p)!r} is not valid {p.suffix[1:] or 'TOML'}: {e}"
        ) from None
    return from_dict(d, base, source=str(p))


def preset_names() -> list[str]:
    """Names of the presets shipped in ``disvae/presets``."""
    root = resources.files("disvae") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    path = resources.files("disvae") / "presets" / f"{name}.toml"
    if not name or "/" in name or "\\" in name or not path.is_file():
        names = preset_names()
        raise UserError(
            f"unknown preset {name!r}{did_you_mean(name, names)}; choose one of: "
            f"{', '.join(names)} (a file of your own goes to --config)"
        )
    return path.read_text(encoding="utf-8")


def load_preset(name: str, base: RunConfig | None = None) -> RunConfig:
    return from_dict(tomllib.loads(preset_text(name)), base, source=f"preset {name}")


def apply_overrides(cfg: RunConfig, overrides: list[str], source: str = "--set") -> RunConfig:
    """Apply ``key=value`` strings; ``key`` is ``section.name`` or a unique ``name`` (``lr``);
    ``loss`` and ``dataset`` stand for ``loss.name`` and ``data.name``.

    Values are parsed as TOML values (``5e-4``, ``true``, ``"text"``); a bare word that is not
    valid TOML is taken as a string (``loss=btcvae``); ``none`` or ``null`` clears an optional key.
    """
    if isinstance(overrides, str):  # one "key=value", not its characters
        overrides = [overrides]
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set lr=5e-4")
        section, name = resolve_key(key.strip())
        cfg = _update(cfg, section, {name: parse_value(raw.strip())}, source=source)
    return cfg


_ALIASES = {"loss": ("loss", "name"), "dataset": ("data", "name")}


def resolve_key(key: str) -> tuple[str, str]:
    """``("train", "lr")`` for ``"train.lr"`` or ``"lr"``; `UserError` if unknown or ambiguous."""
    if key in _ALIASES:
        return _ALIASES[key]
    if "." in key:
        section, _, name = key.partition(".")
        if section not in _SECTION_TYPES or name not in _field_names(_SECTION_TYPES[section]):
            raise UserError(
                f"unknown config key {key!r}{did_you_mean(key, _all_keys())}; {_KEYS_DOC}"
            )
        return section, name
    owners = [s for s, cls in _SECTION_TYPES.items() if key in _field_names(cls)]
    if len(owners) == 1:
        return owners[0], key
    if not owners:
        raise UserError(f"unknown config key {key!r}{_near_bare(key)}; {_KEYS_DOC}")
    raise UserError(
        f"config key {key!r} is ambiguous; write one of {[f'{s}.{key}' for s in owners]}"
    )


_KEYS_DOC = "the keys are listed in docs/train.md (section.key, or key alone)"


def _near_bare(key: str) -> str:
    """The suggestion for a mistyped bare key: a short name (``dataset`` for ``datset``), the
    bare name where only one section has it, else ``section.name``."""
    names = [k.rpartition(".")[2] for k in _all_keys()]
    bare = [n if names.count(n) == 1 else k for n, k in zip(names, _all_keys(), strict=True)]
    return did_you_mean(key, [*_ALIASES, *bare])


def parse_value(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


# --------------------------------------------------------------------------- checking


def resolve(cfg: RunConfig, default_rec_dist: str = "bernoulli") -> RunConfig:
    """Fill every default that depends on other settings and check every value.

    Raises `UserError` naming the first bad setting.
    """
    loss = cfg.loss
    if loss.name not in OBJECTIVE_DEFAULTS:
        raise UserError(
            f"unknown loss {loss.name!r}{did_you_mean(loss.name, OBJECTIVE_DEFAULTS)}; "
            f"choose one of: {', '.join(OBJECTIVE_DEFAULTS)}"
        )
    defaults = OBJECTIVE_DEFAULTS[loss.name]
    updates: dict[str, Any] = {}
    for key in _HYPER:
        value = getattr(loss, key)
        if key in defaults:
            updates[key] = defaults[key] if value is None else value
        elif value is not None:
            used = ", ".join(defaults) or "none"
            raise UserError(
                f"loss.{key} is not used by loss {loss.name!r} (its hyperparameters: {used})"
            )
    rec_dist = loss.rec_dist or default_rec_dist
    updates["rec_dist"] = rec_dist
    if rec_dist not in REC_DISTS:
        raise UserError(
            f"unknown rec_dist {rec_dist!r}{did_you_mean(rec_dist, REC_DISTS)}; "
            f"choose one of: {', '.join(REC_DISTS)}"
        )
    if loss.rec_scale is not None and rec_dist == "bernoulli":
        raise UserError("loss.rec_scale applies to gaussian or laplace likelihoods, not bernoulli")
    updates["rec_scale"] = (
        loss.rec_scale if loss.rec_scale is not None else DEFAULT_REC_SCALE[rec_dist]
    )
    cfg = replace(cfg, loss=replace(loss, **updates))
    _check_values(cfg)
    return cfg


def check(cfg: RunConfig) -> None:
    """Every value of ``cfg`` checked as `resolve` checks it, before the dataset (and so its
    default likelihood) is known: a scale alone implies a non-Bernoulli likelihood. For failing
    fast, before touching the disk or loading data."""
    resolve(cfg, "gaussian" if cfg.loss.rec_scale is not None else "bernoulli")


def _check_values(cfg: RunConfig) -> None:
    L, T, M, D = cfg.loss, cfg.train, cfg.model, cfg.data
    if (known := model_keys(M)) is not None:
        reject_unused_model_keys(M, *known)
    _positive = [
        ("model.latent_dim", M.latent_dim),
        ("train.batch_size", T.batch_size),
        ("train.lr", T.lr),
        ("train.checkpoint_every", T.checkpoint_every),
        ("train.log_every", T.log_every),
        ("train.keep_checkpoints", T.keep_checkpoints),
        ("train.steps", T.steps),
        ("train.epochs", T.epochs),
        ("data.subset", D.subset),
        ("data.img_size", D.img_size),
        ("data.workers", D.workers),
        ("loss.rec_scale", L.rec_scale),
        ("loss.lr_disc", L.lr_disc),
        ("train.nan_patience", T.nan_patience),
        ("train.nan_lr_factor", T.nan_lr_factor),
        ("train.eval_samples", T.eval_samples),
        ("train.lr_decay_every", T.lr_decay_every),
        ("train.lr_decay", T.lr_decay),
        ("train.grad_clip", T.grad_clip),
        ("train.val_images", T.val_images),
    ]
    for key, value in _positive:
        if value is not None and not value > 0:
            raise UserError(f"{key} must be positive, got {value}")
    _nonneg = [
        ("loss.beta", L.beta),
        ("loss.gamma", L.gamma),
        ("loss.alpha", L.alpha),
        ("loss.c_init", L.c_init),
        ("loss.c_fin", L.c_fin),
        ("loss.c_steps", L.c_steps),
        ("loss.reg_anneal", L.reg_anneal),
        ("train.seed", T.seed),
        ("data.split_seed", D.split_seed),
        ("train.nan_rollbacks", T.nan_rollbacks),
        ("train.snapshot_every", T.snapshot_every),
        ("train.eval_every", T.eval_every),
        ("train.lr_warmup", T.lr_warmup),
        ("train.lr_floor", T.lr_floor),
        ("train.val_every", T.val_every),
    ]
    for key, value in _nonneg:
        if value is not None and not value >= 0:
            raise UserError(f"{key} must be non-negative, got {value}")
    for key, value in (("train.seed", T.seed), ("data.split_seed", D.split_seed)):
        if value > MAX_SEED:  # torch's generators take 64-bit seeds; TOML's integers too
            raise UserError(f"{key} must be at most 2**63 - 1 ({MAX_SEED}), got {value}")
    if L.sampling is not None and L.sampling not in ("mws", "mss"):
        raise UserError(
            f"loss.sampling must be mws or mss, got {L.sampling!r}"
            f"{did_you_mean(L.sampling, ('mws', 'mss'))}"
        )
    if T.nan_lr_factor > 1:
        raise UserError(f"train.nan_lr_factor must be at most 1, got {T.nan_lr_factor}")
    for key, value, choices in (
        ("lr_schedule", T.lr_schedule, ("none", "step", "cosine")),
        ("amp", T.amp, AMP_MODES),
        ("nan_check", T.nan_check, ("auto", "step", "deferred")),
        ("compile_mode", T.compile_mode, COMPILE_MODES),
    ):
        if value not in choices:
            raise UserError(
                f"train.{key} must be one of {', '.join(choices)}, got {value!r}"
                f"{did_you_mean(value, choices)}"
            )
    for key, value in (("lr_decay", T.lr_decay), ("lr_floor", T.lr_floor)):
        if value > 1:
            raise UserError(f"train.{key} must be at most 1, got {value}")
    if not 0 <= D.val_fraction < 1:
        raise UserError(f"data.val_fraction must be in [0, 1), got {D.val_fraction}")
    if T.steps is not None and T.epochs is not None:
        raise UserError("give train.steps or train.epochs, not both")
    if T.cuda_graph and T.nan_check == "step":
        raise UserError(
            "train.cuda_graph needs the sync-free non-finite check (a recorded step cannot read "
            f"the device); use {typed('train.nan_check', 'auto')} or drop "
            f"{typed('train.cuda_graph', True)}"
        )
    if T.cuda_graph and T.compile and T.compile_mode in ("reduce-overhead", "max-autotune"):
        raise UserError(
            f"train.cuda_graph records the whole step itself; compile_mode {T.compile_mode!r} "
            "records CUDA graphs of its own inside it: use "
            f"{typed('train.compile_mode', 'default')} or "
            f"{typed('train.compile_mode', 'max-autotune-no-cudagraphs')} with "
            f"{typed('train.cuda_graph', True)}"
        )


def check_resumable(saved: RunConfig, cfg: RunConfig, run: str) -> None:
    """`UserError` naming the first setting outside `RESUMABLE_KEYS` where ``cfg`` (to resume
    run ``run`` with) differs from the run's ``saved`` one, or when ``cfg`` has no length where
    the run had one. The trainer checks resolved configs; the CLI checks the run's config with
    the command line's changes applied, before loading the data. A setting given the run's own
    value is no change (the first command line again, with --resume)."""
    now = _fixed_settings(cfg)
    for key, was in _fixed_settings(saved).items():
        if now[key] != was:
            raise UserError(
                f"cannot change {key} when resuming {run!r} (the run has "
                f"{'none' if was is None else json.dumps(was)}; another value makes it "
                f"another run); only {', '.join(sorted(RESUMABLE_KEYS))} may change"
            )
    # A length set to none would not mean "as before" but the default 300,000 steps.
    length = (saved.train.steps, saved.train.epochs)
    if (cfg.train.steps, cfg.train.epochs) == (None, None) and length != (None, None):
        was = f"steps = {length[0]}" if length[0] is not None else f"epochs = {length[1]}"
        raise UserError(
            f"resuming {run!r} with neither train.steps nor train.epochs would train to the "
            f"default {DEFAULT_STEPS} steps (the run has {was}); give --steps or --epochs (--steps "
            f"{DEFAULT_STEPS} to mean the default)"
        )


def fingerprint(cfg: RunConfig) -> str:
    """A short hash of the settings that make a run what it is (every key outside
    `RESUMABLE_KEYS`, of the resolved config). A run records it in config.json when it starts
    and in every weights file it writes, so that weights of another run, with the same
    architecture but trained otherwise, are refused instead of being scored as this run's."""
    # (+ 0.0 turns -0.0, equal to 0.0 for every check, into 0.0: the same settings, one hash)
    fixed = {k: v + 0.0 if isinstance(v, float) else v for k, v in _fixed_settings(cfg).items()}
    fixed = json.dumps(fixed, sort_keys=True)
    return hashlib.sha256(fixed.encode()).hexdigest()[:16]


def _fixed_settings(cfg: RunConfig) -> dict[str, Any]:
    """``{"section.key": value}`` of every setting outside `RESUMABLE_KEYS`, in the config's
    order: what makes a run the run it is."""
    return {
        f"{s}.{n}": getattr(getattr(cfg, s), n)
        for s in _SECTION_TYPES
        for n in _field_names(_SECTION_TYPES[s])
        if f"{s}.{n}" not in RESUMABLE_KEYS
    }


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    """Number of optimisation steps: `steps`, or `epochs` worth of batches, or DEFAULT_STEPS."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.epochs is not None:
        return max(1, round(cfg.epochs * n_train / cfg.batch_size))
    return DEFAULT_STEPS


# --------------------------------------------------------------------------- saving


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dumps_toml(cfg: RunConfig) -> str:
    """The config as TOML that `load_config` reads back as the same config. TOML has no null:
    a None whose default is None is left out, any other (``val_images``: all) is ``"none"``."""
    lines = []
    defaults = to_dict(RunConfig())
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if v is not None or defaults[section][k] is not None:
                lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                 "\r": "\\r"}  # fmt: skip


def toml_value(v: Any) -> str:
    """A config value as a TOML value: None as ``"none"`` (what ``--set key=none`` means),
    strings as TOML basic strings (every character but the ones TOML requires escaped is
    written as itself; JSON's surrogate pairs for characters beyond U+FFFF are not TOML)."""
    if v is None:
        return '"none"'
    if isinstance(v, str):
        out = "".join(
            _TOML_ESCAPES.get(ch)
            or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch)
            for ch in v
        )
        return f'"{out}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # inf, -inf, nan: TOML's own literals
    return json.dumps(v)  # bool, int, finite float: the same spelling in TOML
