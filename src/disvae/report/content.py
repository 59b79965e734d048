"""What a report shows about one run, as data: figures as data URIs, tables as rows.

Everything a page embeds is computed here from a `disvae.viz.RunView`; the HTML is written by
`disvae.report.html`.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from disvae import runs
from disvae.errors import UserError
from disvae.viz import curves, gifs, reconstructions
from disvae.viz import images as I
from disvae.viz import traversal as T
from disvae.viz.plots import RunView

METRICS = "metrics.json"
EXPLORER_STEPS = 21  # slider positions per latent
EXPLORER_IMAGES = 5  # posterior starting images (plus the prior mean)
MAX_COLS = 64  # --cols: images per row of every figure
MAX_EXPLORER_STEPS = 101  # --slider-steps


@dataclass(frozen=True)
class ReportOptions:
    """Sizes of what the report embeds."""

    n_cols: int = 7
    max_traversal: float = 2.0
    n_frames: int = 20
    explorer_steps: int = EXPLORER_STEPS
    explorer_images: int = EXPLORER_IMAGES
    seed: int = 0

    def __post_init__(self) -> None:
        from disvae.utils import check_seed
        from disvae.viz.plots import MAX_FRAMES, check_max_traversal

        for name, flag, lo, hi in (
            ("n_cols", "--cols", 1, MAX_COLS),
            ("explorer_steps", "--slider-steps", 2, MAX_EXPLORER_STEPS),
            ("n_frames", "n_frames", 2, MAX_FRAMES),
            ("explorer_images", "explorer_images", 0, MAX_COLS),
        ):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise UserError(f"{flag} must be between {lo} and {hi}, got {value}")
        check_max_traversal(self.max_traversal)
        check_seed(self.seed)


@dataclass
class RunContent:
    """The embedded content of one run (data URIs are ``data:image/...;base64,...``)."""

    name: str
    facts: list[tuple[str, str]]
    record: dict[str, Any]
    metrics: dict[str, Any] | None = None
    figures: dict[str, str] = field(default_factory=dict)
    gifs: dict[str, str] = field(default_factory=dict)
    kl: list[float] | None = None
    explorer: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    eval_losses: dict[str, Any] | None = None  # `read_eval_losses`
    step: int = 0  # the step of the weights shown
    gif_columns: str = "the posterior means of different images"  # the traversal GIF's bases


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def png_uri(picture: np.ndarray) -> str:
    return data_uri(I.png_bytes(picture), "image/png")


def posterize(picture: np.ndarray, levels: int = 32) -> np.ndarray:
    """A uint8 picture reduced to ``levels`` values per channel: embedded GIFs and sprite
    sheets compress several times better, with no visible loss at the sizes shown."""
    step = 256 // levels
    return (picture // step * step + step // 2).astype(np.uint8)


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict to ``[("a.b", value), ...]`` (lists kept as values)."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.extend(flatten(v, key + ".") if isinstance(v, dict) else [(key, v)])
    return out


def read_metrics(run_dir) -> dict[str, Any] | None:
    """``RUN/metrics.json`` (written by `disvae evaluate` metrics) if present and readable."""
    path = run_dir / METRICS
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("metrics"), dict) else None


def read_eval_losses(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(document, note)`` of ``RUN/eval_losses.json`` (written by `disvae evaluate`): the
    document with ``losses`` kept to its numbers and lists of numbers, or None and a note saying
    why the file is left out (None and None when there is no file)."""
    doc = runs.read_eval_losses(run_dir)
    if doc is None and (run_dir / runs.EVAL_LOSSES).is_file():
        return None, (
            f"{runs.EVAL_LOSSES} is damaged (not the held-out losses `disvae evaluate` writes) "
            f"and is left out; `disvae evaluate {shlex.quote(str(run_dir))}` writes it again."
        )
    return doc, None


def lock_held(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (`runs.RunLock`: a trainer is in it now)."""
    from disvae.utils import flock_held

    return flock_held(run_dir / runs.LOCK)


def _sweep_slot(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """``(sweep directory, slot state)`` when ``run_dir`` is a run of a sweep
    (``OUT/runs/NAME/run``); None otherwise."""
    from disvae.sweep import state as S

    slot = run_dir.resolve().parent
    if run_dir.resolve().name != S.RUN or not (slot / S.SPEC).is_file():
        return None
    return slot.parent.parent, S.read_state(slot)


def run_status(view: RunView, records: list[dict[str, Any]]) -> str:
    """What the run is doing: ``finished``; ``training (step N of M)`` while a trainer holds its
    lock; otherwise ``stopped at step N of M`` (N: its newest checkpoint) with how to resume,
    and what the files say of why: the trainer's record of a non-finite stop (stopped.json),
    else updates skipped for non-finite losses in the last log line, a log past that
    checkpoint (crashed, killed or failed after it); and a sweep's error."""
    from disvae.training.checkpoint import list_checkpoints

    run_dir = view.run_dir
    total = view.record.get("total_steps")
    total = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else None
    of = f" of {total}" if total else ""
    saved = list_checkpoints(run_dir / runs.CHECKPOINTS)
    ckpt = saved[-1][0] if saved else None
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    logged = max(steps, default=None)
    if lock_held(run_dir):
        now = max(s for s in (ckpt, logged, view.step) if s is not None)
        return f"training (step {now}{of})"
    if (run_dir / runs.MODEL).is_file() and (total is None or view.step >= total):
        return "finished"
    at = ckpt if ckpt is not None else view.step
    sweep = _sweep_slot(run_dir)
    failed = sweep is not None and sweep[1].get("status") == "failed"
    if sweep is not None:
        again = f"disvae sweep {shlex.quote(str(sweep[0]))}" + (" --retry-failed" if failed else "")
        resume = f"continue it with its sweep: {again}"
    else:
        resume = f"resume: disvae train --resume {shlex.quote(str(run_dir))}"
    skipped = records[-1].get("skipped") if records else None
    stopped = runs.read_stopped(run_dir)
    if stopped is not None:  # the trainer's own record of a non-finite stop
        why = f" (training ended at step {stopped['step']}: {stopped['error']})"
        resume += ", or train anew with a lower --lr"
    elif isinstance(skipped, int) and not isinstance(skipped, bool) and skipped > 0:
        why = (
            f" after non-finite losses ({skipped} update{'s' if skipped > 1 else ''} skipped by "
            f"step {records[-1]['step']}, the last logged line)"
        )
        resume += ", or train anew with a lower --lr"
    elif logged is not None and logged > at:
        why = f" (its newest checkpoint; it logged step {logged}, then crashed or was killed)"
    else:
        why = ""
    text = f"stopped at step {at}{of}{why}; {resume}"
    if failed and sweep[1].get("error"):
        text += f"; the sweep's error: {sweep[1]['error']}"
    return text


def _facts(view: RunView, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    rec = view.record
    total = rec.get("total_steps")
    return [
        ("dataset", str(rec.get("data", {}).get("name"))),
        ("objective", str(rec.get("loss", {}).get("name"))),
        ("latent dims", str(view.model.latent_dim)),
        ("image shape", "×".join(str(s) for s in rec.get("image_shape", []))),
        ("step", f"{view.step} / {total}" if total else str(view.step)),
        ("status", run_status(view, records)),
        ("train / val images", f"{rec.get('n_train')} / {rec.get('n_val')}"),
        ("git commit", str(rec.get("git_commit") or "unknown")),
    ]


def run_content(view: RunView, opts: ReportOptions, explorer: bool = True) -> RunContent:
    """Every figure and table of one run's report."""
    check_sizes(view, opts)
    records = view.train_log()
    c = RunContent(view.name, _facts(view, records), view.record, read_metrics(view.run_dir))
    c.step = view.step
    c.eval_losses, damaged = read_eval_losses(view.run_dir)
    if damaged:
        c.notes.append(damaged)
    m, cols = view.model, opts.n_cols
    if records:
        c.figures["losses"] = png_uri(curves.figure_to_array(curves.loss_curves(records)))
    else:
        c.notes.append("No logged training steps yet.")
    if view.kl is not None:
        c.kl = [float(v) for v in view.kl]
        fig = curves.kl_bars(view.kl, f"KL per latent dimension ({view.kl_source})")
        c.figures["kl"] = png_uri(curves.figure_to_array(fig))
    c.figures["samples"] = png_uri(
        reconstructions.samples(m, n_rows=3, n_cols=cols, seed=opts.seed)
    )
    c.figures["traversals"] = png_uri(
        T.traversals(m, kl=view.kl, n_cols=cols, max_traversal=opts.max_traversal)
    )
    bases = reconstructions.prior_codes(m.latent_dim, cols, opts.seed)
    if view.data is not None:
        x = view.images(n=max(2 * cols, opts.explorer_images), seed=opts.seed)
        c.figures["reconstruct"] = png_uri(
            reconstructions.reconstruct(m, x[: 2 * cols], n_cols=cols)
        )
        mu = T.encode(m, x[:1])[0][0]
        c.figures["traversals_posterior"] = png_uri(
            T.traversals(
                m,
                base=mu,
                kl=view.kl,
                n_cols=cols,
                max_traversal=opts.max_traversal,
                reference=[("original", T.shown(m, x[:1]))],
            )
        )
        bases = T.encode(m, x[:cols])[0]
    else:
        c.notes.append("The dataset could not be loaded: no reconstructions or posteriors.")
        c.gif_columns = "codes drawn from the prior (the dataset could not be loaded)"
    grid, _ = gifs.traversal_gifs(
        m, bases[:5], kl=view.kl, n_frames=opts.n_frames, max_traversal=opts.max_traversal
    )
    # Only the grid GIF (it holds every latent's row; `disvae plot` writes one file per latent).
    c.gifs["all"] = data_uri(I.gif_bytes([posterize(f) for f in grid]), "image/gif")
    # From the stored frames (a run still training, or stopped early, has no training.gif yet,
    # and a resumed one an old one); the file when its frames were deleted.
    training = gifs.training_gif_bytes(view.run_dir)
    training_gif = view.run_dir / gifs.TRAINING_GIF
    if training is None and training_gif.is_file():
        training = training_gif.read_bytes()
    if training is not None:
        c.gifs["training"] = data_uri(training, "image/gif")
    if explorer:
        c.explorer = explorer_data(view, opts)
    return c


def check_sizes(view: RunView, opts: ReportOptions) -> None:
    """`UserError` when a row of ``--cols`` images or an explorer sprite sheet would be over
    `disvae.viz.plots.MAX_SIDE` pixels wide for this run's images."""
    from disvae.viz.plots import check_side

    h, w = view.cell
    check_side(f"a row of --cols {opts.n_cols} images", h + 4, opts.n_cols * (w + 2) + 2, "--cols")
    steps = opts.explorer_steps
    check_side(f"the explorer's sprite sheet ({steps} steps)", h, (steps + 1) * w, "--slider-steps")


def explorer_data(view: RunView, opts: ReportOptions) -> dict[str, Any]:
    """Precomputed decodes for the latent explorer (format in `disvae.report.assets`).

    For each base code (the prior mean, then posterior means of validation images) one sprite
    sheet: row r = latent ``dims[r]`` (largest KL first); column 0 the base's decode, column
    1 + s the decode with that latent set to ``values[s]``.
    """
    m = view.model
    dims = T.kl_order(view.kl, m.latent_dim)
    values = T.traversal_values(opts.max_traversal, opts.explorer_steps)
    codes = [("prior mean (z = 0)", np.zeros(m.latent_dim, np.float32), None)]
    if view.data is not None and opts.explorer_images:
        x = view.images(n=opts.explorer_images, seed=opts.seed + 1)
        mus = T.encode(m, x)[0]
        codes += [(f"image {i + 1} (posterior mean)", mus[i], x[i]) for i in range(len(x))]
    bases = []
    for label, code, thumb in codes:
        imgs = T.traversal_images(
            m, code, dims=dims, n_cols=len(values), max_traversal=opts.max_traversal
        )
        own = T.decode(m, code[None])
        sheet = np.concatenate([np.repeat(own[None], len(dims), axis=0), imgs], axis=1)
        sprite = I.make_grid(sheet.reshape(-1, *sheet.shape[2:]), sheet.shape[1], pad=0)
        sprite = posterize(sprite)
        shown = own[0] if thumb is None else T.shown(m, thumb[None])[0]
        bases.append(
            {
                "label": label,
                "code": [float(v) for v in code],
                "sprite": png_uri(sprite),
                "thumb": png_uri(I.make_grid(shown[None], 1, pad=0)),
            }
        )
    return {
        "cell": list(sheet.shape[-2:]),
        "values": [float(v) for v in values],
        "dims": [int(d) for d in dims],
        # (None when no KL is known: zeros would label every slider "KL 0")
        "kl": None if view.kl is None else [float(view.kl[d]) for d in dims],
        "bases": bases,
    }


def check_run_dir(path: Path) -> None:
    """Refuse anything that is not a run directory, with one line (a sweep directory or a
    sweep's run slot with what to pass instead)."""
    from disvae.sweep import state as S

    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist; pass a run directory")
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is not a directory; pass a run directory")
    if S.is_sweep_dir(path):
        runs_of = shlex.quote(str(path / S.RUNS / "NAME" / S.RUN))
        raise UserError(
            f"{str(path)!r} is a sweep directory, not a run: `disvae report "
            f"{shlex.quote(str(path))}` with no other directory writes the sweep's page; to "
            f"compare its runs, pass their run directories ({runs_of})"
        )
    if (path / S.SPEC).is_file() and (path / S.RUN).is_dir():
        raise UserError(
            f"{str(path)!r} is a sweep's run slot; pass its run directory {str(path / S.RUN)!r}"
        )
    runs.read_config(path)


def display_names(paths: list[Path]) -> list[str]:
    """A distinct name per run directory for the page: the directory's name (a sweep's run,
    ``OUT/runs/NAME/run``, is NAME), with the name of the directory above in front where names
    repeat (a sweep's: OUT), and the path as given where they still do."""
    chains = []
    for p in paths:
        r = p.resolve()
        chains.append(
            (r.parent.name, r.parent.parent.parent.name)
            if _sweep_slot(r)
            else (r.name, r.parent.name)
        )
    names = [own for own, _ in chains]
    for attempt in (lambda i: f"{chains[i][1]}/{chains[i][0]}", lambda i: str(paths[i])):
        dupes = {n for n in names if names.count(n) > 1}
        names = [attempt(i) if n in dupes else n for i, n in enumerate(names)]
    return names
