"""Latent traversals: decode a base code with one latent swept across a range.

A traversal row for latent d holds the decodes of the base code with z_d replaced by each of
``n_cols`` values from -m to m. The range m is absolute, or, when ``max_traversal < 0.5``, a
quantile of the prior: m = Φ⁻¹(1 - q), so ``0.05`` gives ±1.645 (the convention of the
disentangling-vae project's ``--max-traversal``). The base code is the prior mean (zeros), a
prior sample, or the posterior mean of a chosen image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from disvae.viz import images as I
from disvae.viz.curves import format_kl


def traversal_range(max_traversal: float) -> float:
    """The half-width m of a traversal: ``max_traversal`` itself, or Φ⁻¹(1 - q) when q < 0.5."""
    if not max_traversal > 0:
        raise ValueError(f"max_traversal must be positive, got {max_traversal}")
    if max_traversal < 0.5:
        from scipy.stats import norm

        # Φ⁻¹(1 - q) as -Φ⁻¹(q): 1 - q rounds to 1 below q ≈ 1e-16, and ppf(1) is inf
        return float(norm.isf(max_traversal))
    return float(max_traversal)


def traversal_values(max_traversal: float, n: int) -> np.ndarray:
    """``n`` evenly spaced latent values from -m to m, shape (n,)."""
    m = traversal_range(max_traversal)
    return np.linspace(-m, m, n) if n > 1 else np.zeros(1)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def shown(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) of ``model``'s data as the figures draw them: for a multi-patch model
    (``model.patches`` names P patches) each sample's patches side by side, (N, C/P, H, P*W)."""
    return I.tile_patches(np.asarray(images), len(getattr(model, "patches", ())) or 1)


@torch.inference_mode()
def decode(model: torch.nn.Module, z: np.ndarray | torch.Tensor, batch: int = 256) -> np.ndarray:
    """Pixel means ``sigmoid(model.decode(z))`` as float32 ``(N, C, H, W)`` for codes (N, D),
    ready to draw: a multi-patch model's patches side by side (see `shown`)."""
    was_training = model.training
    model.eval()
    z = torch.as_tensor(np.asarray(z, dtype=np.float32))
    dev = _device(model)
    out = [
        torch.sigmoid(model.decode(z[i : i + batch].to(dev))).cpu() for i in range(0, len(z), batch)
    ]
    model.train(was_training)
    return shown(model, torch.cat(out).numpy())


@torch.inference_mode()
def encode(
    model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ``(mu, logvar)``, each float32 (N, D), of float images (N, C, H, W) in [0, 1]."""
    was_training = model.training
    model.eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    dev = _device(model)
    mus, logvars = [], []
    for i in range(0, len(x), batch):
        mu, logvar = model.encode(x[i : i + batch].to(dev))
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
    model.train(was_training)
    return torch.cat(mus).numpy(), torch.cat(logvars).numpy()


def kl_per_dim(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Mean over images of KL(q(z_d|x) || N(0, 1)) per dimension, shape (D,), in nats."""
    # In float64, with expm1: e^lv - 1 - lv of a collapsed latent (lv ≈ 0) is ~lv²/2, below
    # the rounding of a float32 e^lv, which made its KL negative (labelled "KL -4.4e-08").
    logvar = np.asarray(logvar, np.float64)
    kl = 0.5 * (np.asarray(mu, np.float64) ** 2 + (np.expm1(logvar) - logvar))
    return kl.mean(axis=0)


def kl_order(kl: np.ndarray | None, latent_dim: int) -> np.ndarray:
    """Latent indices by decreasing KL (index order when ``kl`` is None), shape (D,)."""
    if kl is None:
        return np.arange(latent_dim)
    return np.argsort(-np.asarray(kl), kind="stable")


def row_labels(dims: Sequence[int], kl: np.ndarray | None) -> list[str]:
    """Labels of traversal rows: ``z<d>``, with ``KL <value>`` (see `format_kl`) when ``kl``
    (D,) is given."""
    return [f"z{d}" + (f" KL {format_kl(kl[d])}" if kl is not None else "") for d in dims]


def label_grids(
    pictures: Sequence[np.ndarray], labels: Sequence[str], cell_height: int, upsample: int = 1
) -> list[np.ndarray]:
    """Pictures of one grid layout (a still, or the frames of an animation; `make_grid` with
    its padding of 2, cells ``cell_height`` high, then upsampled) with ``labels`` beside the
    rows: the same strip of labels, drawn once, left of each picture."""
    h, _, c = pictures[0].shape
    row_height, pad = (cell_height + 2) * upsample, 2 * upsample
    strip = I.label_strip(h, c, labels, row_height=row_height, pad=pad)
    return [np.concatenate([strip, p], axis=1) for p in pictures]


def traversal_images(
    model: torch.nn.Module,
    base: np.ndarray | None = None,
    *,
    dims: Sequence[int] | None = None,
    n_cols: int = 7,
    max_traversal: float = 2.0,
) -> np.ndarray:
    """Decodes of ``base`` with each latent in ``dims`` swept from -m to m.

    Args:
        model: a `disvae.models.VAE` (anything with ``decode`` and ``latent_dim``).
        base: base code (D,); None for the prior mean (zeros).
        dims: latents to traverse, one row each (default: all, in index order).
        n_cols: values per row.
        max_traversal: absolute range, or a prior quantile when < 0.5 (see `traversal_range`).

    Returns:
        float32 ``(len(dims), n_cols, C, H, W)`` in [0, 1].
    """
    d_all = model.latent_dim
    base = np.zeros(d_all, np.float32) if base is None else np.asarray(base, np.float32)
    dims = list(range(d_all)) if dims is None else list(dims)
    values = traversal_values(max_traversal, n_cols)
    z = np.repeat(base[None, None], len(dims), axis=0).repeat(n_cols, axis=1)
    for row, d in enumerate(dims):
        z[row, :, d] = values
    decoded = decode(model, z.reshape(-1, d_all))
    return decoded.reshape(len(dims), n_cols, *decoded.shape[1:])


def traversals(
    model: torch.nn.Module,
    *,
    base: np.ndarray | None = None,
    kl: np.ndarray | None = None,
    n_rows: int | None = None,
    n_cols: int = 7,
    max_traversal: float = 2.0,
    reference: Sequence[tuple[str, np.ndarray]] = (),
    upsample: int = 1,
) -> np.ndarray:
    """A traversal grid: one row per latent, sorted by KL (largest first), KL printed beside.

    Args:
        model: the VAE.
        base: base code (D,): a posterior mean, a prior sample, or None for zeros.
        kl: per-dimension KL (D,) used to sort and label rows; None: index order, no KL.
        n_rows: how many latents to show (the top ones by KL); default all.
        n_cols: traversal values per row.
        max_traversal: absolute range, or a prior quantile when < 0.5.
        reference: rows put above the traversals, each ``(label, images (k, C, H, W))`` with
            k ≤ n_cols (e.g. the original and its reconstruction, for reconstruct-traverse),
            as drawn (multi-patch data through `shown`, like the decodes).
        upsample: integer nearest-neighbour enlargement.

    Returns:
        uint8 picture ``(H, W, C)``.
    """
    order = kl_order(kl, model.latent_dim)[: n_rows or model.latent_dim]
    imgs = traversal_images(model, base, dims=order, n_cols=n_cols, max_traversal=max_traversal)
    c, h, w = imgs.shape[2:]
    labels = row_labels(order, kl)
    rows = []
    for _, ref in reference:
        ref = np.asarray(ref, np.float32)[:n_cols]
        blank = np.full((n_cols - len(ref), c, h, w), 0.5, np.float32)
        rows.append(np.concatenate([ref, blank]))
    cells = np.concatenate([*rows, imgs.reshape(-1, c, h, w)])
    labels = [name for name, _ in reference] + labels
    grid = I.upsample(I.make_grid(cells, n_cols), upsample)
    return label_grids([grid], labels, h, upsample)[0]


def triangle_wave(max_traversal: float, n_frames: int) -> np.ndarray:
    """Latent values of a looping animation: -m to m and back in ``n_frames`` steps, (n_frames,).

    The sequence is periodic: frame ``n_frames`` would equal frame 0, so a looping GIF is smooth.
    """
    m = traversal_range(max_traversal)
    phase = np.arange(n_frames) / n_frames
    return np.where(phase < 0.5, -m + 4 * m * phase, 3 * m - 4 * m * phase)
