"""Schedules of loss weights: pure functions of an explicit optimisation step (0-based).

Being functions of the step rather than stateful objects, they resume exactly from a checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear(start: float, end: float, step: int | Tensor, n_steps: int) -> float | Tensor:
    """``start`` at step 0, moving linearly to ``end`` at ``n_steps``, then held at ``end``.

    Steps before 0 give ``start``; ``n_steps <= 0`` gives ``end`` at every step. ``step`` may be
    a 0-d float tensor (a step captured in a CUDA graph reads it from the device): the value is
    then a float32 0-d tensor on its device, computed without reading it on the host; from a
    float64 step it is the float value rounded once to float32, as the losses use a float.
    """
    if n_steps <= 0:
        return float(end)
    if isinstance(step, Tensor):
        fraction = (step / n_steps).clamp(0.0, 1.0)
        return (start + (end - start) * fraction).to(torch.float32)
    fraction = min(max(step / n_steps, 0.0), 1.0)
    return float(start + (end - start) * fraction)


def capacity(step: int | Tensor, c_init: float, c_fin: float, c_steps: int) -> float | Tensor:
    """The target KL capacity C (nats) of β-VAE_B at ``step``.

    Burgess et al. (2018), §4: C is increased linearly from C_init to C_fin over ``c_steps``
    iterations, then held.
    """
    return linear(c_init, c_fin, step, c_steps)


def warmup(step: int | Tensor, reg_anneal: int) -> float | Tensor:
    """Factor on the regulariser: 0 at step 0 rising linearly to 1 at ``reg_anneal`` (1 if 0)."""
    return linear(0.0, 1.0, step, reg_anneal)
