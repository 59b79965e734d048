"""The run directory: the single source of truth for a trained (or training) model.

RUN/config.json            every setting, resolved, plus versions and git commit
RUN/model.safetensors      final weights (written when training ends)
RUN/checkpoints/           step_*.safetensors: weights, optimizers, RNG states, data order
RUN/train_log.jsonl        one JSON object per logged step
RUN/events.out.tfevents.*  TensorBoard
RUN/eval_losses.json       held-out losses written by `disvae evaluate`
RUN/stopped.json           why training stopped early on non-finite values (until it resumes)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from disvae import config as C
from disvae.errors import UserError

log = logging.getLogger(__name__)

CONFIG = "config.json"
MODEL = "model.safetensors"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
EVAL_LOSSES = "eval_losses.json"
BEST = "best.safetensors"  # weights with the lowest held-out loss (`--val-every`)
STOPPED = "stopped.json"  # {"step", "error", "time"}: training ended on non-finite values
LOCK = ".lock"
_RUN_FILES = (CONFIG, MODEL, TRAIN_LOG, EVAL_LOSSES, BEST, STOPPED)


class LoadedRun(NamedTuple):
    """``(model, config)`` of a run; ``model`` is in eval mode on the CPU."""

    model: Any
    config: C.RunConfig


def _run_record(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(path, record)`` of ``run_dir/config.json`` when it has a run's structure (a JSON
    object with the config's sections); `UserError` otherwise."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).exists():
        raise UserError(f"{str(run_dir)!r} does not exist; pass a run directory (`disvae train "
                        "--out RUN` writes one)")  # fmt: skip
    if not Path(run_dir).is_dir():
        raise UserError(f"{str(run_dir)!r} is a file, not a run directory; pass the directory "
                        "that holds a run's config.json")  # fmt: skip
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} is not a disvae run (no {CONFIG}); pass a run directory")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{str(path)!r} is not valid JSON; the run directory is damaged") from None
    if not isinstance(d, dict) or not all(k in d for k in C.SECTIONS):
        raise UserError(
            f"{str(path)!r} is not a disvae run's config (a run's has the sections "
            f"{', '.join(C.SECTIONS)}); pass a directory written by `disvae train`"
        )
    return path, d


def read_config(run_dir: str | Path) -> C.RunConfig:
    """The resolved `RunConfig` saved in ``run_dir/config.json``, every value checked."""
    path, d = _run_record(run_dir)
    cfg = C.from_dict({k: v for k, v in d.items() if k in C.SECTIONS}, source=str(path))
    try:  # a saved config is resolved already: every value is checked again, as train did
        # (one written by other code may leave rec_dist out: the library's default then)
        return C.resolve(cfg, cfg.loss.rec_dist or "bernoulli")
    except UserError as e:
        raise UserError(f"{str(path)!r}: {e}; the run's config is damaged") from None


def config_record(cfg: C.RunConfig) -> dict[str, Any]:
    """What goes into config.json: the config plus provenance."""
    from disvae.utils import git_commit, versions

    record = C.to_dict(cfg)
    record["versions"] = versions()
    record["git_commit"] = git_commit()
    record["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an ``out`` that is a file, or a non-empty directory (unless ``overwrite`` and it
    holds a disvae run). Reads only; `prepare_out_dir` repeats the check under the run lock."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; choose a directory")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        try:  # a run's structure is enough: a run with a damaged value may be replaced
            _run_record(out)
        except UserError:
            raise UserError(
                f"--out {str(out)!r} is not empty and is not a disvae run"
                + ("; --overwrite only replaces runs" if overwrite else "")
                + ": choose another --out (a new or empty directory)"
            ) from None
        if not overwrite:
            raise UserError(
                f"--out {str(out)!r} holds a run already; pass --resume {out} to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
    return out


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Make ``out`` ready for a new run (see `check_out_dir`); ``overwrite`` removes only a
    previous disvae run's files, never an arbitrary directory."""
    out = check_out_dir(out, overwrite)
    if overwrite:
        _remove_run_files(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        msg = f"cannot write to --out {str(out)!r}: {e.strerror}; choose another"
        raise UserError(msg) from None
    return out


# Everything a run and the commands on it write (evaluate --metrics, plot, report), which
# --overwrite removes: files, then directories. Other files in the directory are left alone.
_PRODUCT_FILES = (*_RUN_FILES, "metrics.json", "codes.npz", "report.html", "training.gif")
_PRODUCT_DIRS = (CHECKPOINTS, "training_frames", "plots")


def _remove_run_files(out: Path) -> None:
    """Remove the previous run in ``out`` (checkpoints first, config.json last: a removal that
    fails midway leaves nothing a --resume could mistake for the old run's state)."""
    doomed = [
        *(out / d for d in _PRODUCT_DIRS),
        *out.glob("events.out.tfevents.*"),
        *(out / f for f in _PRODUCT_FILES if f != CONFIG),
        out / CONFIG,
    ]
    for path in doomed:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as e:
            raise UserError(
                f"--overwrite: cannot remove {str(path)!r} of the previous run ({e.strerror}); "
                "fix its permissions or choose another --out"
            ) from None


class RunLock:
    """An exclusive lock on a run directory while a process trains in it.

    The lock is ``flock`` on ``RUN/.lock``: the kernel drops it when the process ends, however it
    ends (even SIGKILL), so a crash never leaves a stale lock. A second trainer is refused.
    """

    def __init__(self, run_dir: str | Path, create: bool) -> None:
        self.run_dir = Path(run_dir).expanduser()
        self.create = create
        self._fd: int | None = None
        self._made_dir = False

    def __enter__(self) -> RunLock:
        import os

        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"{str(self.run_dir)!r} is a file; choose a directory")
        if not self.run_dir.is_dir():
            if not self.create:
                raise UserError(f"{str(self.run_dir)!r} does not exist; pass a run directory")
            try:
                self.run_dir.mkdir(parents=True)
                self._made_dir = True
            except OSError as e:
                raise UserError(
                    f"cannot write to --out {str(self.run_dir)!r}: {e.strerror}; choose another"
                ) from None
        try:
            self._fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(
                f"cannot write to {str(self.run_dir)!r}: {e.strerror}; choose another directory"
            ) from None
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock (Windows): run unlocked
            pass
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise UserError(
                f"{str(self.run_dir)!r} is in use by another disvae process; wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        if self._made_dir and not any(p.name != LOCK for p in self.run_dir.iterdir()):
            # Nothing was written: leave no empty directory behind a failed start.
            (self.run_dir / LOCK).unlink(missing_ok=True)
            self.run_dir.rmdir()


def load_run(run_dir: str | Path, device: str = "cpu", weights: str = "final") -> LoadedRun:
    """The model and config of a run. ``weights``: ``"final"`` (the final weights, or the newest
    checkpoint while it trains), ``"best"`` (lowest held-out loss, from ``--val-every``),
    ``"latest"`` (the newest good checkpoint) or the path of one of the run's checkpoints."""
    model, cfg, _, _ = load_run_state(run_dir, weights)
    return LoadedRun(model.to(device).eval(), cfg)


WEIGHTS = ("final", "best", "latest")


def load_run_state(
    run_dir: str | Path, weights: str = "final"
) -> tuple[Any, C.RunConfig, dict, dict]:
    """(model, config, all saved tensors, metadata) of a run, from the weights chosen by
    ``weights`` (see `load_run`). The tensors include the discriminator of a FactorVAE run."""
    from disvae.models import build_model
    from disvae.training.checkpoint import (
        CheckpointError,
        load_latest,
        load_module_state,
        load_state,
    )

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    model = build_model(cfg.model, image_shape_of(run_dir), patches_of(run_dir))
    final = run_dir / MODEL
    if weights == "latest" or (weights == "final" and not final.is_file()):
        latest = load_latest(run_dir / CHECKPOINTS)
        if latest is None:
            what = "no checkpoint" if weights == "latest" else f"no {MODEL}, no checkpoint"
            raise UserError(f"{str(run_dir)!r} has no weights yet ({what})")
        tensors, meta, path = latest
    else:
        path = {"final": final, "best": run_dir / BEST}.get(weights, Path(weights))
        if weights == "best" and not path.is_file():
            raise UserError(
                f"{str(run_dir)!r} has no {BEST}: it is written by training with --val-every N"
            )
        if not path.is_file():
            raise UserError(
                f"weights {weights!r}: no such file; give one of {', '.join(WEIGHTS)} or the "
                "path of a .safetensors file of this run"
            )
        try:
            tensors, meta = load_state(path)
        except CheckpointError as e:
            if path != final:
                raise
            # (training wrote the file from its last checkpoint, which can write it again)
            raise CheckpointError(
                f"{e}; `disvae train --resume {run_dir}` writes it again from the run's "
                "last checkpoint"
            ) from None
    check_weights_of(run_dir, meta, path)
    load_module_state("model", model, tensors, str(path))
    return model, cfg, tensors, meta


def run_fingerprint(run_dir: str | Path) -> str | None:
    """The settings fingerprint config.json records (None for runs from before it)."""
    return _run_record(run_dir)[1].get("fingerprint")


def check_weights_of(run_dir: str | Path, meta: dict, path: str | Path) -> None:
    """Refuse weights (``meta``: their file's metadata) that another run wrote: both record
    the run's settings fingerprint (`config.fingerprint`); files and runs from before it was
    recorded pass."""
    ours = run_fingerprint(run_dir)
    theirs = meta.get("fingerprint") if isinstance(meta, dict) else None
    if ours and theirs and ours != theirs:
        raise UserError(
            f"{str(path)!r} holds the weights of another run (trained with other settings than "
            f"{str(run_dir)!r}); give weights this run wrote, or use them with their own run"
        )


def data_at(run_dir: str | Path, data_path: str | None) -> Any:
    """The run's dataset loaded from ``data_path`` (its config otherwise as saved), for a
    dataset that has moved since training; None when ``data_path`` is None (the run's own)."""
    if data_path is None:
        return None
    import dataclasses

    from disvae.data import load_data

    return load_data(dataclasses.replace(read_config(run_dir).data, path=data_path))


def check_preprocessing(run_dir: str | Path, data: Any) -> bool:
    """Warn when ``data`` was prepared by another version of its loader's preprocessing than
    the run trained on (config.json's ``preprocessing``; runs from before it was recorded:
    version 1). Returns whether the versions agree."""
    import warnings

    trained = _run_record(run_dir)[1].get("preprocessing", 1)
    now = getattr(data, "preprocessing", 1)
    if trained == now:
        return True
    warnings.warn(
        f"{str(run_dir)!r} trained on {data.name} as version {trained} of its loader prepared "
        f"it; this disvae prepares it with version {now} (docs/data.md), so the images differ "
        "somewhat from those it was trained on",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def check_same_data(run_dir: str | Path, image_shape: Any, n_train: int, n_val: int) -> None:
    """`UserError` when the data a resume loaded (its --data-path may have moved) is not the
    data the run trained on: other image shapes or another number of images (config.json's
    ``image_shape``, ``n_train`` and ``n_val``; a value missing there is not checked)."""
    record = _run_record(run_dir)[1]
    now = {"image_shape": list(image_shape), "n_train": n_train, "n_val": n_val}
    for key, value in now.items():
        if key in record and record[key] != value:
            raise UserError(
                f"the data loaded for {str(run_dir)!r} is not what it trained on ({key} "
                f"{value}, the run's {record[key]}); point --data-path at the same dataset"
            )


def check_own_data(run_dir: str | Path, data: Any) -> None:
    """`UserError` when the dataset config.json names has other images than the run's
    (config.json's ``image_shape``): a run trained on data passed in Python
    (``disvae.train(cfg, out, data=...)``), whose ``cfg.data`` need not describe it, would
    otherwise feed the model images of another shape (a PyTorch traceback)."""
    record = _run_record(run_dir)[1]
    want = record.get("image_shape")
    if want is None or list(data.image_shape) == want:
        return
    how = (
        "it trained on a dataset passed in Python (disvae.train(..., data=)): pass that dataset "
        "again (data=)"
        if record.get("data_passed")
        else "point --data-path at its dataset"
    )
    raise UserError(
        f"the dataset {data.info.name!r} that {str(run_dir)!r}'s config.json names has images "
        f"of {list(data.image_shape)}, the run's {want}; {how}"
    )


def warn_other_split(run_dir: str | Path, data: Any) -> None:
    """A warning when a run trained on data passed in Python has its held-out images taken from
    the dataset its config.json names (``data``) and that dataset is not the one the run split:
    it holds another number of images (config.json's ``n_images``; for runs made before it was
    recorded, the split sizes), so the same split seed picks other held-out images. The
    callers are those that use the held-out split (held-out losses, reconstructions)."""
    record = _run_record(run_dir)[1]
    if not record.get("data_passed"):
        return
    n = record.get("n_images")
    if isinstance(n, int) and not isinstance(n, bool):
        other, had = len(data) != n, f"{n} images"
    else:
        from disvae.data.batching import split_indices

        d = read_config(run_dir).data
        try:
            train, val = split_indices(len(data), d.val_fraction, d.split_seed, d.subset)
        except ValueError:  # (a dataset too small to split as the run did: surely another)
            train = val = []
        want = (record.get("n_train"), record.get("n_val"))
        other, had = (
            (len(train), len(val)) != want,
            "{} training and {} held-out images".format(*want),
        )
    if other:
        log.warning(
            "%s trained on a dataset passed in Python (%s); %r, which its config.json names, "
            "has %d images, so the held-out images taken from it are not the run's: pass the "
            "run's dataset (data=) to use its own",
            run_dir, had, data.info.name, len(data),
        )  # fmt: skip


def read_eval_losses(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/eval_losses.json`` (written by `disvae evaluate`) with ``losses`` kept to its
    numbers and non-empty lists of numbers; None when the file is missing, unreadable or holds
    no such loss (a damaged file is passed over by its readers, never fatal)."""
    try:
        doc = json.loads((Path(run_dir) / EVAL_LOSSES).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    losses = doc.get("losses") if isinstance(doc, dict) else None
    kept = {k: v for k, v in losses.items() if _numbers(v)} if isinstance(losses, dict) else {}
    return {**doc, "losses": kept} if kept else None


def write_stopped(run_dir: Path, step: int, error: str) -> None:
    """Record why training stopped before its end on non-finite values (``RUN/stopped.json``),
    for the report and the next reader; `clear_stopped` removes it when training goes on."""
    from disvae.utils import atomic_write_json

    doc = {"step": step, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(Path(run_dir) / STOPPED, doc)


def clear_stopped(run_dir: Path) -> None:
    (Path(run_dir) / STOPPED).unlink(missing_ok=True)


def read_stopped(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/stopped.json`` as ``{"step": int, "error": str, ...}``; None when the file is
    missing or damaged (it only explains a stop, so its readers pass over a bad one)."""
    try:
        doc = json.loads((Path(run_dir) / STOPPED).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return None
    step = doc.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None
    return doc


def _numbers(v: Any) -> bool:
    """A number (not a bool) or a non-empty list of numbers."""
    if isinstance(v, list):
        return bool(v) and all(_numbers(x) and not isinstance(x, list) for x in v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def image_shape_of(run_dir: Path) -> tuple[int, int, int]:
    """The image shape recorded in config.json (saved by the trainer)."""
    d = json.loads((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
    shape = d.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3):
        raise UserError(
            f"{str(run_dir)!r}: config.json's image_shape is missing or not [channels, height, "
            "width]; the run is damaged"
        )
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def patches_of(run_dir: Path) -> tuple[str, ...]:
    """The patch names of multi-patch data recorded in config.json; () for ordinary images."""
    config = (Path(run_dir) / CONFIG).read_text(encoding="utf-8")
    patches = json.loads(config).get("patches", [])
    if not (isinstance(patches, list) and all(isinstance(p, str) for p in patches)):
        raise UserError(f"{str(run_dir)!r}: config.json's patches is not a list of names")
    return tuple(patches)
