"""What the trainer does when a loss term or gradient is not finite (a mixin of `Trainer`).

A skipped update is counted; after ``nan_patience`` in a row the run rolls back to its newest
checkpoint with the learning rate times ``nan_lr_factor``, at most ``nan_rollbacks`` times, then
stops with a message naming the step and the term. With the deferred check (CUDA) the skips are
counted on the device and read at log and checkpoint steps (`flush_deferred`).
"""

from __future__ import annotations

import logging

from disvae.training.runtime import NonFiniteError

log = logging.getLogger("disvae.training.loop")


class NonFiniteHandling:
    """The non-finite-step methods of `disvae.training.loop.Trainer`."""

    def on_nonfinite(self) -> bool:
        """A skipped step: warn; after `nan_patience` in a row roll back with a lower learning
        rate (returns True), or stop when `nan_rollbacks` rollbacks did not help."""
        self.n_skipped += 1
        self.bad_streak += 1
        if self.bad_streak == 1:
            log.warning("step %d: %r is not finite; update skipped", self.step, self.bad_term)
        return self._roll_back_if_stuck()

    def flush_deferred(self) -> bool:
        """Read the deferred check's counters (one host sync, at log/checkpoint steps only) and
        act as `on_nonfinite` would have: returns True when the run rolled back."""
        if self.guard is None:
            return False
        n_bad, worst, current, name = self.guard.flush()
        if not n_bad:
            self.bad_streak = 0
            return False
        self.n_summed -= n_bad  # the skipped steps' terms were zeroed, not summed
        self.n_skipped += n_bad
        self.bad_term = name
        log.warning("%d updates skipped by step %d: %r was not finite", n_bad, self.step, name)
        self.bad_streak = worst
        if self._roll_back_if_stuck():
            return True
        self.bad_streak = current
        return False

    def _roll_back_if_stuck(self) -> bool:
        cfg = self.cfg.train
        if self.bad_streak < cfg.nan_patience:
            return False
        if self.rollbacks >= cfg.nan_rollbacks:
            raise NonFiniteError(
                f"{self.bad_term!r} was not finite for {self.bad_streak} steps in a row at step "
                f"{self.step}, after {self.rollbacks} rollbacks with lower learning rates; check "
                "the data or lower --lr (the last good checkpoint is kept)"
            )
        scale = self.lr_scale * cfg.nan_lr_factor
        self.restore()
        self.rollbacks += 1
        self.lr_scale = scale  # `set_lr` applies it from the next step on
        self.bad_streak = 0
        log.warning("rolled back to step %d with learning rate x%g", self.step, scale)
        return True
