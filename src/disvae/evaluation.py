"""Evaluate a run: the objective's terms on the whole held-out split."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disvae import config as C
from disvae import runs
from disvae.data import ArrayDataset
from disvae.errors import UserError

log = logging.getLogger(__name__)


@torch.inference_mode()
def heldout_losses(
    model: torch.nn.Module,
    data: ArrayDataset,
    indices: np.ndarray,
    loss_cfg: C.LossConfig,
    step: int,
    *,
    dataset_size: int,
    discriminator: torch.nn.Module | None = None,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Mean of every loss term over *all* images at ``indices`` (not a first batch).

    The model is put in eval mode: codes are the posterior means (no sampling), as in the
    held-out losses of the disentangling-vae project. Terms that depend on the minibatch
    (β-TCVAE's q(z) estimate) are computed per batch of ``batch_size`` and averaged, weighted by
    batch length. ``step`` fixes schedule values (β-VAE_B's capacity, warm-up).
    """
    from disvae.losses import LossContext, compute_loss

    if len(indices) == 0:
        raise UserError("the held-out split is empty; train with --val-fraction > 0")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = LossContext(dataset_size=dataset_size, discriminator=discriminator)
    sums: dict[str, torch.Tensor] = {}
    index = torch.as_tensor(indices, dtype=torch.int64)
    for start in range(0, len(index), batch_size):
        x = data.batch(index[start : start + batch_size]).to(device)
        result = compute_loss(model(x), x, step, loss_cfg, ctx)
        for k, v in result.terms.items():
            sums[k] = sums.get(k, 0) + v.double() * len(x)
    model.train(was_training)
    return {k: (v / len(index)).tolist() for k, v in sums.items()}


def evaluate(
    run_dir: str | Path,
    *,
    data: ArrayDataset | None = None,
    batch_size: int = 1000,
    device: str = "auto",
) -> dict[str, Any]:
    """Held-out losses of a run, written to ``run_dir/eval_losses.json`` and returned."""
    from disvae.data import load_dataset
    from disvae.data.batching import split_indices
    from disvae.models.discriminator import Discriminator
    from disvae.training.checkpoint import load_module_state
    from disvae.utils import atomic_write_json, pick_device

    run_dir = Path(run_dir)
    model, cfg, tensors, meta = runs.load_run_state(run_dir)
    dev = pick_device(device)
    if data is None:
        data = load_dataset(cfg.data.name, cfg.data.path)
    data.to(dev)
    train_idx, val_idx = split_indices(
        len(data), cfg.data.val_fraction, cfg.data.split_seed, cfg.data.subset
    )
    disc = None
    if cfg.loss.name == "factor":
        disc = Discriminator(cfg.model.latent_dim)
        load_module_state("disc", disc, tensors, str(run_dir))
        disc.to(dev).eval()
    t0 = time.perf_counter()
    losses = heldout_losses(
        model.to(dev), data, val_idx, cfg.loss, meta["step"],
        dataset_size=len(train_idx), discriminator=disc, batch_size=batch_size,
    )  # fmt: skip
    result = {
        "step": meta["step"],
        "split": "val",
        "n_images": len(val_idx),
        "seconds": round(time.perf_counter() - t0, 2),
        "losses": losses,
    }
    atomic_write_json(run_dir / runs.EVAL_LOSSES, result)
    return result
