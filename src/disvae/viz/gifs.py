"""Animated traversals, and the training GIF (a fixed traversal grid snapshotted while training).

Training GIF, as the training loop uses it::

    from disvae.viz import append_training_frame, prune_training_frames, training_snapshot
    from disvae.viz import write_training_gif

    # after restoring a checkpoint at `step` (resume): frames after it will be redone
    prune_training_frames(run_dir, after_step=step)
    # every `snapshot_every` steps (and at step 0 before training starts):
    append_training_frame(run_dir, step, training_snapshot(model))
    # when training ends:
    write_training_gif(run_dir)       # RUN/training.gif from RUN/training_frames/*.png

Frames live on disk as ``RUN/training_frames/step_00001000.png`` (a few kB each), so memory
stays flat, and a resumed run keeps the frames of its first part. `training_snapshot` draws no
random numbers (its base code is the prior mean), so calling it does not change training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from disvae.viz import images as I
from disvae.viz.traversal import (
    decode,
    kl_order,
    label_grids,
    row_labels,
    traversal_images,
    triangle_wave,
)

TRAINING_FRAMES = "training_frames"
TRAINING_GIF = "training.gif"
_FRAME_RE = re.compile(r"step_(\d+)\.png$")


def traversal_animation(
    model: torch.nn.Module,
    bases: np.ndarray,
    *,
    dims: Sequence[int],
    n_frames: int = 40,
    max_traversal: float = 2.0,
) -> np.ndarray:
    """Decodes for animated traversals: each latent of ``dims`` swept -m..m..-m in every base.

    Args:
        bases: base codes (K, D) (posterior means or prior samples).
        dims: the latents animated (one row each in a grid).
        n_frames: frames of one loop.

    Returns:
        float32 ``(n_frames, len(dims), K, C, H, W)`` in [0, 1].
    """
    bases = np.asarray(bases, np.float32)
    k, d_all = bases.shape
    values = triangle_wave(max_traversal, n_frames)
    z = np.broadcast_to(bases, (n_frames, len(dims), k, d_all)).copy()
    for row, d in enumerate(dims):
        z[:, row, :, d] = values[:, None]
    out = decode(model, z.reshape(-1, d_all))
    return out.reshape(n_frames, len(dims), k, *out.shape[1:])


def animation_frames(animation: np.ndarray, upsample: int = 1) -> list[np.ndarray]:
    """Pictures ``(H, W, C)`` of an animation ``(T, R, K, C, H, W)``: rows R, columns K."""
    t, r, k = animation.shape[:3]
    return [
        I.upsample(I.make_grid(frame.reshape(r * k, *frame.shape[2:]), k), upsample)
        for frame in animation
    ]


def traversal_gifs(
    model: torch.nn.Module,
    bases: np.ndarray,
    *,
    kl: np.ndarray | None = None,
    n_rows: int | None = None,
    n_frames: int = 40,
    max_traversal: float = 2.0,
    upsample: int = 1,
) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]]]:
    """Frames of the grid GIF (all latents moving together) and of one GIF per latent.

    Returns:
        ``(grid_frames, per_latent)``: ``n_frames`` pictures whose rows are the latents
        (largest KL first), labelled on the left as in `disvae.viz.traversals` (``z<d>``, and
        its KL when ``kl`` is given), and whose columns are the bases; and for each latent
        index d the ``n_frames`` pictures of its row alone (unlabelled: one latent a file).
    """
    dims = kl_order(kl, model.latent_dim)[: n_rows or model.latent_dim]
    anim = traversal_animation(
        model, bases, dims=dims, n_frames=n_frames, max_traversal=max_traversal
    )
    grid = label_grids(
        animation_frames(anim, upsample), row_labels(dims, kl), anim.shape[-2], upsample
    )
    per_latent = {
        int(d): animation_frames(anim[:, i : i + 1], upsample) for i, d in enumerate(dims)
    }
    return grid, per_latent


# ---------------------------------------------------------------------- the training GIF


GIF_LEVELS = 16  # grey/colour levels of training.gif frames (see `images.posterize`)


def training_snapshot(
    model: torch.nn.Module,
    base: np.ndarray | None = None,
    *,
    n_cols: int = 7,
    max_traversal: float = 2.0,
    max_rows: int = 10,
) -> np.ndarray:
    """One frame of the training GIF: the traversal grid of the first ``max_rows`` latents.

    Rows stay in index order (not sorted by KL) so that a latent keeps its row across frames;
    they are unlabelled (`training_gif_bytes` puts the ``zD`` labels beside them). Uses no
    randomness and restores the model's train/eval mode.

    Args:
        model: the VAE being trained (on any device).
        base: fixed base code (D,); None for the prior mean.

    Returns:
        uint8 picture ``(H, W, C)``.
    """
    dims = range(min(max_rows, model.latent_dim))
    imgs = traversal_images(model, base, dims=dims, n_cols=n_cols, max_traversal=max_traversal)
    return I.make_grid(imgs.reshape(-1, *imgs.shape[2:]), n_cols)


def append_training_frame(run_dir: str | Path, step: int, frame: np.ndarray) -> Path:
    """Store a training frame as ``RUN/training_frames/step_XXXXXXXX.png`` (atomically)."""
    folder = Path(run_dir) / TRAINING_FRAMES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.png"
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(I.png_bytes(frame))
    tmp.replace(path)
    return path


def training_frames(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the stored training frames, by step."""
    folder = Path(run_dir) / TRAINING_FRAMES
    found = []
    for p in folder.glob("step_*.png") if folder.is_dir() else []:
        m = _FRAME_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_training_frames(run_dir: str | Path, after_step: int) -> int:
    """Delete frames of steps > ``after_step`` (a resume redoes them); returns how many."""
    stale = [p for step, p in training_frames(run_dir) if step > after_step]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _training_rows(run_dir: Path, height: int) -> tuple[list[str], int] | None:
    """``(labels, cell height)`` of the rows of training frames ``height`` pixels high: latents
    0, 1, ... in index order (`training_snapshot`), cells of the run's image height
    (config.json). None when that is unknown or the frames are not such a grid (frames stored by
    other code), which are then shown unlabelled."""
    from disvae.errors import UserError
    from disvae.runs import image_shape_of

    try:
        cell = image_shape_of(run_dir)[1]
    except (UserError, OSError, ValueError):  # no config.json, or a damaged one
        return None
    rows, rest = divmod(height - 2, cell + 2)  # `make_grid`: rows * (cell + pad) + pad
    return ([f"z{d}" for d in range(rows)], cell) if rows >= 1 and not rest else None


def training_gif_bytes(run_dir: str | Path, fps: float = 5.0, upsample: int = 1) -> bytes | None:
    """The training GIF of the frames stored so far (each captioned with its step, its rows
    labelled ``zD`` as in `disvae.viz.traversals`), as bytes; None when there are none. Works
    while the run trains, or after it stopped early (when no ``RUN/training.gif`` was written):
    a frame pruned meanwhile is left out."""
    frames = []
    for s, p in training_frames(run_dir):
        try:
            frames.append((s, I.read_png(p)))
        except OSError:  # pruned by a resume since it was listed
            continue
    if not frames:
        return None
    shape = frames[0][1].shape
    frames = [(s, p) for s, p in frames if p.shape == shape]  # a changed layout cannot animate
    pictures = [I.upsample(p, upsample) for _, p in frames]
    # Labelled here, not in the stored frames: frames of runs from before the labels (a resume
    # keeps them) would otherwise differ in width from the new ones and be left out.
    rows = _training_rows(Path(run_dir), shape[0])
    if rows is not None:
        pictures = label_grids(pictures, rows[0], rows[1], upsample)
    return I.gif_bytes(
        [
            I.posterize(I.caption(p, f"step {s}"), GIF_LEVELS)
            for (s, _), p in zip(frames, pictures, strict=True)
        ],
        fps,
    )


def write_training_gif(run_dir: str | Path, fps: float = 5.0, upsample: int = 1) -> Path | None:
    """Assemble the stored frames, each captioned with its step, into ``RUN/training.gif``.

    Returns the GIF's path, or None when there are no frames.
    """
    data = training_gif_bytes(run_dir, fps, upsample)
    if data is None:
        return None
    path = Path(run_dir) / TRAINING_GIF
    tmp = path.with_suffix(".gif.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
