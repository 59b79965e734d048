"""Train/validation splits and a resumable stream of shuffled index batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def split_indices(
    n: int, val_fraction: float, split_seed: int, subset: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, val) image indices, fixed by ``split_seed``.

    With ``subset``, only that many images (drawn with the same seed) are used at all. The
    validation share is ``round(val_fraction * n_used)``, at least 1 when ``val_fraction > 0``.
    """
    order = np.random.default_rng(split_seed).permutation(n)
    if subset is not None:
        order = order[: min(subset, n)]
    n_val = max(1, round(val_fraction * len(order))) if val_fraction > 0 else 0
    if n_val >= len(order):
        raise ValueError(f"{len(order)} images leave nothing to train on after the split")
    val, train = order[:n_val], order[n_val:]
    return np.sort(train), np.sort(val)


class BatchStream:
    """Shuffled batches of dataset indices, epoch after epoch, with exact save/restore.

    Each epoch is a fresh permutation of ``indices`` drawn from a private `torch.Generator`; a
    request that would run past the end of an epoch starts the next one (the tail of the old
    epoch is dropped, as ``drop_last=True`` does).
    """

    def __init__(self, indices: np.ndarray, seed: int) -> None:
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.pos = 0
        self.perm = self._new_perm()
        self._resident: torch.Tensor | None = None  # this epoch's order on a device (`next`)
        self._resident_on: torch.device | None = None

    def _new_perm(self) -> torch.Tensor:
        self._resident = None
        return torch.randperm(len(self.indices), generator=self.generator).to(torch.int32)

    def next(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """The next ``n`` dataset indices, shape (n,), int64.

        With ``device``, a view of this epoch's order kept on that device (copied there once
        an epoch): a GPU step then reads its indices without a copy from host memory each step.
        The order is drawn on the host either way, so batches do not depend on the device.
        """
        if n > len(self.indices):
            raise ValueError(f"batch of {n} is larger than the {len(self.indices)} training images")
        if self.pos + n > len(self.perm):
            self.epoch += 1
            self.pos = 0
            self.perm = self._new_perm()
        start, self.pos = self.pos, self.pos + n
        if device is None:
            return self.indices[self.perm[start : self.pos].long()]
        if self._resident is None or self._resident_on != device:
            self._resident = self.indices[self.perm.long()].to(device)
            self._resident_on = device
        return self._resident[start : self.pos]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able scalars) that `load_state` restores exactly."""
        tensors = {"perm": self.perm, "generator": self.generator.get_state()}
        return tensors, {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
        if len(tensors["perm"]) != len(self.indices):
            raise ValueError("the saved data order is for a different training split")
        self.perm = tensors["perm"].to(torch.int32)
        self._resident = None
        self.generator.set_state(tensors["generator"])
        self.epoch = int(scalars["epoch"])
        self.pos = int(scalars["pos"])
