"""`disvae plot`: every figure of a run directory, written into ``RUN/plots/``.

Works on a finished run (``model.safetensors``) and on one still training (its newest
checkpoint), on any dataset (grayscale or RGB).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disvae import runs
from disvae.errors import UserError
from disvae.utils import check_seed
from disvae.viz import curves, gifs, reconstructions
from disvae.viz import images as I
from disvae.viz import traversal as T

log = logging.getLogger(__name__)

PLOTS = (
    "samples",
    "data-samples",
    "reconstruct",
    "traversals",
    "reconstruct-traverse",
    "gif-traversals",
    "kl",
    "losses",
)
GIF_FPS = 10.0
KL_IMAGES = 512  # validation images the per-dimension KL is estimated on
MAX_SIDE = 8192  # pixels a side of one figure (rows, cols and upsample multiply up to it)
MAX_GIF_PIXELS = 2**28  # pixels of all the frames of one GIF together (about 270 million)
MAX_FRAMES = 1000  # --n-steps: frames of one GIF loop
MAX_TRAVERSAL = 1000.0  # --max-traversal: a prior N(0, 1) has no mass that far out


@dataclass(frozen=True)
class PlotOptions:
    """Options shared by the plots (the `disvae plot` flags).

    rows: latents shown in traversals (default: all), rows of sample grids (default 6).
    cols: images per row / traversal values per latent. idcs: dataset indices of the images
    to reconstruct or traverse around (default: random validation images drawn with ``seed``).
    max_traversal: absolute half-range, or a prior quantile when < 0.5. posterior: traverse
    around the posterior mean of the first image instead of the prior mean.
    """

    rows: int | None = None
    cols: int = 7
    idcs: tuple[int, ...] = ()
    upsample: int = 1
    seed: int = 0
    n_steps: int = 40
    max_traversal: float = 2.0
    posterior: bool = False

    def __post_init__(self) -> None:
        for name in ("cols", "upsample", "n_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.rows is not None and self.rows < 1:
            raise UserError("--rows must be at least 1")
        check_max_traversal(self.max_traversal)
        if self.n_steps > MAX_FRAMES:
            raise UserError(f"--n-steps must be at most {MAX_FRAMES}, got {self.n_steps}")
        check_seed(self.seed)
        if any(i < 0 for i in self.idcs):
            raise UserError("--idcs must be non-negative dataset indices")


def check_max_traversal(value: float) -> None:
    """`UserError` unless the traversal half-range is finite, positive and at most
    `MAX_TRAVERSAL` (below 0.5 it is a quantile of the prior)."""
    if not (math.isfinite(value) and 0 < value <= MAX_TRAVERSAL):
        raise UserError(
            f"--max-traversal must be a number in (0, {MAX_TRAVERSAL:g}] (below 0.5: a quantile "
            f"of the prior), got {value}"
        )


def check_side(name: str, height: int, width: int, flags: str) -> None:
    """`UserError` when a figure would be over `MAX_SIDE` pixels a side."""
    if max(height, width) > MAX_SIDE:
        raise UserError(
            f"{name} would be {width} x {height} pixels, over the limit of {MAX_SIDE} a side; "
            f"lower {flags}"
        )


@dataclass
class RunView:
    """What the plots and the report need from a run: model, config record, data, KL."""

    run_dir: Path
    model: torch.nn.Module
    record: dict[str, Any]
    step: int
    data: Any = None
    val_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kl: np.ndarray | None = None
    kl_source: str = ""
    _cell: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    @property
    def cell(self) -> tuple[int, int]:
        """(H, W) of one image as the figures draw it (a multi-patch model's side by side)."""
        if self._cell is None:
            shown = T.decode(self.model, np.zeros((1, self.model.latent_dim), np.float32))
            self._cell = (int(shown.shape[-2]), int(shown.shape[-1]))
        return self._cell

    def check_idcs(self, idcs: Sequence[int]) -> None:
        """`UserError` for an index past the dataset's end (when the dataset is loaded)."""
        bad = [i for i in idcs if self.data is not None and i >= len(self.data)]
        if bad:
            raise UserError(
                f"--idcs {bad[0]} is out of range: the dataset has {len(self.data)} images "
                f"(indices 0 to {len(self.data) - 1})"
            )

    def images(self, idcs: Sequence[int] = (), n: int = 0, seed: int = 0) -> np.ndarray:
        """Float images (N, C, H, W): the dataset images at ``idcs``, then random validation
        images (drawn with ``seed``) up to ``n`` in all."""
        if self.data is None:
            raise UserError(f"the dataset of {self.name!r} could not be loaded; see the warning")
        self.check_idcs(idcs)
        pool = self.val_idx if len(self.val_idx) else np.arange(len(self.data))
        extra = max(0, n - len(idcs))
        rng = np.random.default_rng(seed)
        chosen = rng.choice(pool, size=min(extra, len(pool)), replace=False) if extra else []
        index = np.concatenate([np.asarray(idcs, np.int64), np.asarray(chosen, np.int64)])
        return self.data.batch(torch.as_tensor(index)).cpu().numpy()

    def train_log(self) -> list[dict[str, Any]]:
        return curves.read_train_log(self.run_dir / runs.TRAIN_LOG)


def open_run(run_dir: str | Path, data: Any = None, load_data: bool = True) -> RunView:
    """Load a run for plotting: weights (final or newest checkpoint), its dataset, the KL.

    Args:
        data: the run's `ArrayDataset`, to skip loading it.
        load_data: False to skip the dataset (figures that need images are then unavailable).
    """
    from disvae.data import load_data as load_dataset_of
    from disvae.data.batching import split_indices

    run_dir = Path(run_dir)
    model, cfg, _, meta = runs.load_run_state(run_dir)
    model.eval()
    record = json.loads((run_dir / runs.CONFIG).read_text(encoding="utf-8"))
    view = RunView(run_dir, model, record, int(meta.get("step", 0)))
    if data is None and load_data:
        try:
            data = load_dataset_of(cfg.data)
        except (UserError, OSError) as e:
            log.warning(
                "dataset %r not loaded (%s); figures that need images are skipped", cfg.data.name, e
            )
        else:
            runs.check_own_data(run_dir, data)  # (a run trained on data passed in Python)
            runs.warn_other_split(run_dir, data)  # (its held-out reconstructions)
    if data is not None:
        runs.check_preprocessing(run_dir, data)
        view.data = data
        _, view.val_idx = split_indices(
            len(data), cfg.data.val_fraction, cfg.data.split_seed, cfg.data.subset
        )
    view.kl, view.kl_source = _run_kl(view)
    return view


def _run_kl(view: RunView) -> tuple[np.ndarray | None, str]:
    """Per-dimension KL: on validation images when the data is there, else from the logs."""
    if view.data is not None:
        x = view.images(n=KL_IMAGES, seed=0)
        return T.kl_per_dim(*T.encode(view.model, x)), f"{len(x)} validation images"
    doc = runs.read_eval_losses(view.run_dir)  # (a damaged one: None, the train log has it)
    kl = doc["losses"].get("kl_per_dim") if doc else None
    if isinstance(kl, list):
        return np.asarray(kl, float), runs.EVAL_LOSSES
    records = [r for r in view.train_log() if r.get("kl_per_dim")]
    if records:
        return np.asarray(
            records[-1]["kl_per_dim"], float
        ), f"train log, step {records[-1]['step']}"
    return None, ""


def _bases(view: RunView, opts: PlotOptions, n: int) -> np.ndarray:
    """Base codes (n, D): posterior means of chosen images, or prior samples without data."""
    if view.data is None:
        return reconstructions.prior_codes(view.model.latent_dim, n, opts.seed)
    return T.encode(view.model, view.images(opts.idcs, n, opts.seed)[:n])[0]


GRID_PLOTS = ("samples", "data-samples", "reconstruct", "traversals", "reconstruct-traverse",
              "gif-traversals")  # fmt: skip


def _grid_rows(view: RunView, name: str, opts: PlotOptions) -> int | None:
    """Image rows of a plot's grid (None: a figure of fixed size)."""
    if name not in GRID_PLOTS:
        return None
    d = view.model.latent_dim
    shown = min(opts.rows or d, d)
    per_row = -(-len(opts.idcs) // opts.cols)  # rows that --idcs alone fill
    return {
        "samples": opts.rows or 6,
        "data-samples": max(opts.rows or 6, per_row),
        "reconstruct": 2 * max(opts.rows or 3, per_row),
        "traversals": shown,
        "reconstruct-traverse": shown + 2,
        "gif-traversals": shown,
    }.get(name)


def check_size(view: RunView, name: str, opts: PlotOptions) -> None:
    """`UserError` when a plot would be over `MAX_SIDE` pixels a side (or, a GIF, over
    `MAX_GIF_PIXELS` in all its frames), before any of it is computed."""
    rows = _grid_rows(view, name, opts)
    if rows is None:
        return
    h, w = view.cell
    height = (rows * (h + 2) + 2) * opts.upsample
    width = (opts.cols * (w + 2) + 2) * opts.upsample
    if name in ("traversals", "reconstruct-traverse", "gif-traversals"):  # + the row labels
        refs = ["original", "reconstruction"] if name == "reconstruct-traverse" else []
        width += I.label_width(refs + T.row_labels(range(view.model.latent_dim), view.kl))
    check_side(f"plot {name!r}", height, width, "--upsample, --cols or --rows")
    if name == "gif-traversals" and height * width * opts.n_steps > MAX_GIF_PIXELS:
        raise UserError(
            f"plot {name!r} would hold {height * width * opts.n_steps:,} pixels in its "
            f"{opts.n_steps} frames, over the limit of {MAX_GIF_PIXELS:,}; lower --n-steps, "
            "--upsample, --cols or --rows"
        )


def make_figure(view: RunView, name: str, opts: PlotOptions) -> dict[str, Any]:
    """The figure(s) of one plot: ``{relative file name: picture (H, W, C) or GIF frames}``."""
    check_size(view, name, opts)
    m, up, cols = view.model, opts.upsample, opts.cols
    if name == "samples":
        pic = reconstructions.samples(
            m, n_rows=opts.rows or 6, n_cols=cols, seed=opts.seed, upsample=up
        )
        return {"samples.png": pic}
    if name == "data-samples":
        x = view.images(opts.idcs, (opts.rows or 6) * cols, opts.seed)
        pic = reconstructions.data_samples(T.shown(m, x), n_cols=cols, upsample=up)
        return {"data-samples.png": pic}
    if name == "reconstruct":
        x = view.images(opts.idcs, (opts.rows or 3) * cols, opts.seed)
        return {"reconstruct.png": reconstructions.reconstruct(m, x, n_cols=cols, upsample=up)}
    if name in ("traversals", "reconstruct-traverse"):
        reference: list[tuple[str, np.ndarray]] = []
        base = None
        if opts.posterior or name == "reconstruct-traverse":
            x = view.images(opts.idcs, cols if name == "reconstruct-traverse" else 1, opts.seed)
            base = T.encode(m, x[:1])[0][0] if opts.posterior else None
            if name == "reconstruct-traverse":
                reference = [
                    ("original", T.shown(m, x)),
                    ("reconstruction", reconstructions.reconstruct_images(m, x)),
                ]
        pic = T.traversals(
            m,
            base=base,
            kl=view.kl,
            n_rows=opts.rows,
            n_cols=cols,
            max_traversal=opts.max_traversal,
            reference=reference,
            upsample=up,
        )
        suffix = "_posterior" if opts.posterior else ""
        return {f"{name}{suffix}.png": pic}
    if name == "gif-traversals":
        grid, per = gifs.traversal_gifs(
            m,
            _bases(view, opts, cols),
            kl=view.kl,
            n_rows=opts.rows,
            n_frames=opts.n_steps,
            max_traversal=opts.max_traversal,
            upsample=up,
        )
        out: dict[str, Any] = {"gif-traversals/all.gif": grid}
        out.update({f"gif-traversals/z{d}.gif": frames for d, frames in per.items()})
        return out
    if name == "kl":
        if view.kl is None:
            raise UserError(f"no per-dimension KL for {view.name!r}: no data, eval or train log")
        fig = curves.kl_bars(view.kl, f"KL per latent dimension ({view.kl_source})")
        return {"kl.png": curves.figure_to_array(fig)}
    if name == "losses":
        records = view.train_log()
        if not records:
            raise UserError(f"{view.name!r} has no logged steps yet ({runs.TRAIN_LOG} is empty)")
        return {"losses.png": curves.figure_to_array(curves.loss_curves(records, view.name))}
    raise UserError(f"unknown plot {name!r}; choose from: {', '.join(PLOTS)}, all")


def plot_run(
    run_dir: str | Path,
    names: Iterable[str] = ("all",),
    options: PlotOptions | None = None,
    *,
    out_dir: str | Path | None = None,
    data: Any = None,
) -> list[Path]:
    """Write the named plots of a run as PNG/GIF files into ``out_dir`` (default RUN/plots).

    ``all`` makes every plot; with ``all``, plots that cannot be made (no dataset, no log yet)
    are skipped with a warning instead of failing. Returns the written paths.
    """
    opts = options or PlotOptions()
    names = list(names)
    unknown = [n for n in names if n not in PLOTS and n != "all"]
    if unknown:
        raise UserError(f"unknown plot {unknown[0]!r}; choose from: {', '.join(PLOTS)}, all")
    wanted = list(PLOTS) if "all" in names else list(dict.fromkeys(names))
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {str(out)!r} is a file; pass a directory (new or existing)")
    if wanted == ["losses"]:  # the curves read the log alone: no weights, no dataset
        runs.read_config(run_dir)
        record = json.loads((Path(run_dir) / runs.CONFIG).read_text(encoding="utf-8"))
        view = RunView(Path(run_dir), None, record, 0)  # type: ignore[arg-type]
    else:
        view = open_run(run_dir, data=data)
    # Before any plot: with `all` a bad index would only skip the plots that read images, and
    # a traversal from the prior does not read them at all.
    view.check_idcs(opts.idcs)
    traversed = [n for n in wanted if n in ("traversals", "reconstruct-traverse", "gif-traversals")]
    if traversed and opts.rows is not None and opts.rows > view.model.latent_dim:
        # (a row per latent: the figures are right, but not the size the flag asked for)
        d = view.model.latent_dim
        log.info(
            "--rows %d is more than the model's %d latents: %s show%s all %d, one row each",
            opts.rows, d, ", ".join(traversed), "s" if len(traversed) == 1 else "", d,
        )  # fmt: skip
    written = []
    for name in wanted:
        try:
            figures = make_figure(view, name, opts)
        except UserError as e:
            if "all" not in names:
                raise
            log.warning("skipped %s: %s", name, e)
            continue
        for rel, pic in figures.items():
            path = out / rel
            try:
                if rel.endswith(".gif"):
                    written.append(I.save_gif(pic, path, fps=GIF_FPS))
                else:
                    written.append(I.save_png(pic, path))
            except OSError as e:
                raise UserError(
                    f"cannot write {str(path)!r}: {e.strerror or e}; pass a writable --out-dir"
                ) from None
        if name == "gif-traversals":
            _remove_stale_latent_gifs(out / "gif-traversals", set(figures))
    return written


def _remove_stale_latent_gifs(folder: Path, kept: set[str]) -> None:
    """Per-latent GIFs of an earlier call with more rows (``z7.gif`` after ``--rows 5``)
    would sit beside the new set as if they belonged to it."""
    for path in folder.glob("z*.gif"):
        if re.fullmatch(r"z\d+\.gif", path.name) and f"gif-traversals/{path.name}" not in kept:
            path.unlink(missing_ok=True)
