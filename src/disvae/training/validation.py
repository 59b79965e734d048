"""Held-out losses during training (``val_every``) and the best weights, kept in
``RUN/best.safetensors``.

The held-out losses are those of `disvae evaluate` (`disvae.evaluation.heldout_losses`: codes
are the posterior means, every term averaged over the images), on a fixed subset of the
validation split so that a check costs the same all run long. They run with every global RNG
state saved and restored, so a run with ``val_every`` trains exactly as one without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from disvae.config import LossConfig
from disvae.training import checkpoint as ckpt
from disvae.training import runtime


def val_subset(val_idx: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """``n`` indices of the validation split drawn once with ``seed`` (sorted), or all of it."""
    if n is None or n >= len(val_idx):
        return val_idx
    return np.sort(np.random.default_rng(seed).choice(val_idx, n, replace=False))


def settled_step(loss_cfg: LossConfig, step: int) -> int:
    """``step``, or the first step from which every schedule of the objective holds its final
    value (the regulariser's warm-up ``reg_anneal``, β-VAE_B's capacity ramp ``c_steps``) if
    that is later."""
    return max(step, loss_cfg.reg_anneal or 0, loss_cfg.c_steps or 0)


def heldout(
    model: torch.nn.Module,
    data: Any,
    indices: np.ndarray,
    loss_cfg: LossConfig,
    step: int,
    *,
    dataset_size: int,
    discriminator: torch.nn.Module | None,
    device: torch.device,
) -> dict[str, Any]:
    """``{"val/NAME": value}`` for every loss term of ``model`` over ``indices``
    (``val/kl_per_dim`` is a list of D floats), with the objective's schedules at their final
    values (`settled_step`): a step's ``val/loss`` then measures every step by one objective,
    so the lowest picks the best weights (inside a warm-up, the objective at that step would
    weigh the regulariser less, and an early step would win)."""
    from disvae.evaluation import heldout_losses

    with runtime.rng_preserved(device), torch.no_grad():
        values = heldout_losses(
            model, data, indices, loss_cfg, settled_step(loss_cfg, step),
            dataset_size=dataset_size, discriminator=discriminator,
        )  # fmt: skip
    return {f"val/{k}": v for k, v in values.items()}


def save_best(
    path: Path,
    model: torch.nn.Module,
    discriminator: torch.nn.Module | None,
    step: int,
    val_loss: float,
    fingerprint: str | None = None,
) -> None:
    """Write the weights (model, and FactorVAE's discriminator) with ``step`` and ``val_loss``
    in the metadata, atomically, in the format of ``model.safetensors``
    (`disvae.training.checkpoint.load_state` reads it)."""
    tensors = ckpt.module_state("model", model)
    if discriminator is not None:
        tensors.update(ckpt.module_state("disc", discriminator))
    meta = {"step": step, "val_loss": val_loss, "fingerprint": fingerprint}
    ckpt.save_state(path, tensors, {k: v for k, v in meta.items() if v is not None})
