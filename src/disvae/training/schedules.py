"""Learning-rate schedules: pure functions of the optimisation step.

The loop sets ``group["lr"] = lr * lr_scale * lr_factor(step, ...)`` before every update, so
the learning rate never lives in hidden optimizer state: a resumed run recomputes it from the
step it restarts at (bit-exact), and the rollback factor ``lr_scale`` (see the NaN handling in
`disvae.training.loop`) multiplies whatever the schedule says. ``step`` is the number of updates
already taken (0 for the first update), as in nanoGPT's ``get_lr(it)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from disvae.config import TrainConfig

SCHEDULES = ("none", "step", "cosine")


def lr_factor(
    step: int,
    schedule: str,
    *,
    total_steps: int,
    warmup: int = 0,
    decay_steps: int = 1,
    decay: float = 0.5,
    floor: float = 0.0,
) -> float:
    """The multiplier of the base learning rate for the update at ``step`` (0-based).

    - ``none``: 1.
    - ``step``: ``decay ** (step // decay_steps)`` (PyTorch's ``StepLR``; the loop converts
      ``lr_decay_every`` epochs into ``decay_steps``).
    - ``cosine``: from 1 at the end of the warm-up to ``floor`` at ``total_steps`` along half a
      cosine (Loshchilov & Hutter 2017, Eq. 5, one cycle, no restarts).

    A linear warm-up over the first ``warmup`` steps, ``(step + 1) / warmup``, multiplies any of
    them (Goyal et al. 2017), so the first update is small but not zero.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    warm = (step + 1) / warmup if step < warmup else 1.0
    if schedule == "step":
        return warm * decay ** (step // max(1, decay_steps))
    if schedule == "cosine":
        span = max(1, total_steps - warmup)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return warm


def decay_steps(epochs: float, steps_per_epoch: float) -> int:
    """Steps in ``epochs`` passes over the training split (at least 1)."""
    return max(1, round(epochs * steps_per_epoch))


def for_run(cfg: TrainConfig, total_steps: int, steps_per_epoch: float) -> Callable[[int], float]:
    """``step -> factor`` of ``cfg``'s schedule for a run of ``total_steps`` steps."""
    return functools.partial(
        lr_factor,
        schedule=cfg.lr_schedule,
        total_steps=total_steps,
        warmup=cfg.lr_warmup,
        decay_steps=decay_steps(cfg.lr_decay_every, steps_per_epoch),
        decay=cfg.lr_decay,
        floor=cfg.lr_floor,
    )
