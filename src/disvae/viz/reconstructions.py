"""Samples from the prior, samples of the data, and reconstructions."""

from __future__ import annotations

import numpy as np
import torch

from disvae.viz import images as I
from disvae.viz.traversal import decode, encode, shown


def prior_codes(latent_dim: int, n: int, seed: int | None = 0) -> np.ndarray:
    """``n`` codes drawn from the prior N(0, I), float32 (n, latent_dim)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, latent_dim)).astype(np.float32)


def samples(
    model: torch.nn.Module, *, n_rows: int = 6, n_cols: int = 7, seed: int | None = 0,
    upsample: int = 1,
) -> np.ndarray:  # fmt: skip
    """Decodes of ``n_rows * n_cols`` prior samples as one uint8 picture ``(H, W, C)``."""
    z = prior_codes(model.latent_dim, n_rows * n_cols, seed)
    return I.upsample(I.make_grid(decode(model, z), n_cols), upsample)


def data_samples(images: np.ndarray, *, n_cols: int = 7, upsample: int = 1) -> np.ndarray:
    """Dataset images (N, C, H, W) in [0, 1] as one uint8 picture ``(H, W, C)``."""
    return I.upsample(I.make_grid(images, n_cols), upsample)


def reconstruct_images(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Decodes of the posterior means of ``images`` (N, C, H, W): float32 (N, C, H, W), as
    drawn (a multi-patch model's patches side by side, see `traversal.shown`)."""
    mu, _ = encode(model, images)
    return decode(model, mu)


def reconstruct(
    model: torch.nn.Module, images: np.ndarray, *, n_cols: int = 7, upsample: int = 1
) -> np.ndarray:
    """Originals above their reconstructions (posterior mean, decoded), row pair by row pair.

    Args:
        images: (N, C, H, W) float in [0, 1]; each run of ``n_cols`` images gives one row of
            originals followed by one row of their reconstructions.

    Returns:
        uint8 picture ``(H, W, C)`` with 2 * ceil(N / n_cols) rows, labelled "data" / "recon".
    """
    images = np.asarray(images, np.float32)
    recon = reconstruct_images(model, images)
    images = shown(model, images)
    c, h, w = images.shape[1:]
    rows, labels = [], []
    for start in range(0, len(images), n_cols):
        for name, part in (("data", images), ("recon", recon)):
            row = part[start : start + n_cols]
            blank = np.full((n_cols - len(row), c, h, w), 0.5, np.float32)
            rows.append(np.concatenate([row, blank]))
            labels.append(name)
    grid = I.upsample(I.make_grid(np.concatenate(rows), n_cols), upsample)
    return I.label_rows(grid, labels, row_height=(h + 2) * upsample, pad=2 * upsample)
