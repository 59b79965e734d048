"""Process-level helpers of the training loop: seeding, signals, disk errors."""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disvae.errors import UserError

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """A loss term became NaN or infinite."""


def disk_error(e: OSError, what: str, out: Path) -> UserError:
    return UserError(
        f"could not write the {what} in {str(out)!r}: {e.strerror or e}; the previous checkpoint "
        f"is intact: free space and continue with --resume {out}"
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# The signal that last stopped a training in this process (the CLI's exit status: 128 + it),
# and the step it stopped at (checkpointed there; the CLI's summary names it).
last_stop_signal: int | None = None
last_stop_step: int | None = None
# Whether the last `train` was a resume of a run that had already finished (nothing trained).
last_was_noop: bool = False


@contextmanager
def stop_on_signals(trainer: Any) -> Iterator[None]:
    """SIGINT/SIGTERM finish the current step, write a checkpoint and stop cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        global last_stop_signal
        log.warning("signal %d: stopping after this step and writing a checkpoint", signum)
        trainer._stop_requested = True
        last_stop_signal = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def rng_preserved(device: torch.device) -> Iterator[None]:
    """Run a block (metrics, held-out losses) without moving any global RNG: torch (CPU and
    ``device``), NumPy and Python states are restored after it, so training continues exactly
    as it would have without the block."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)
