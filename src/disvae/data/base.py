"""Datasets as arrays: one uint8 (or bit-packed) image array, batches gathered by index.

Per-item ``__getitem__`` plus collation is where most VAE training loops lose their time; here a
batch is ``dataset.batch(index_tensor)``: one gather and one conversion to float, on the device
that holds the images.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import torch

_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)
_SHIFTS_ON: dict[torch.device, torch.Tensor] = {}  # per device: no host-to-device copy a batch


def _bit_shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS_ON:
        _SHIFTS_ON[device] = _BIT_SHIFTS.to(device)
    return _SHIFTS_ON[device]


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the library needs to know about a dataset."""

    name: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    default_rec_dist: str = "bernoulli"
    # Multi-patch data (the `stacked` dataset): the patch names in order. Every patch is a
    # square image of C/len(patches) channels; patch i is channels [i*c, (i+1)*c). Empty for
    # ordinary data.
    patches: tuple[str, ...] = ()


class ArrayDataset:
    """Images held in one array, either plain or bit-packed.

    Args:
        images: ``(N, C, H, W)`` uint8 array of values 0..255 when ``packed`` is False; when
            ``packed`` is True, ``(N, C*H*W/8)`` uint8 holding binary images packed with
            ``np.packbits`` (big-endian bit order, row-major over C, H, W), each pixel 0 or 1.
        info: name, image shape and default likelihood.
        packed: whether ``images`` is bit-packed.
    """

    # Where the images came from (set by the file loaders; shown by `disvae data info`).
    files: tuple[str, ...] = ()
    cache_file: str | None = None
    # The version of the loader's preprocessing (crop, resize, padding, orientation...) that
    # made these images; a run records it, and reading the run later warns if it changed.
    preprocessing: int = 1

    def __init__(self, images: np.ndarray | torch.Tensor, info: DatasetInfo, packed: bool) -> None:
        c, h, w = info.image_shape
        if packed and (c * h * w) % 8:
            raise ValueError("bit-packed images need C*H*W divisible by 8")
        self.info = info
        self.packed = packed
        self._images = images if isinstance(images, torch.Tensor) else _as_tensor(images)
        expected = (c * h * w // 8,) if packed else (c, h, w)
        if tuple(self._images.shape[1:]) != expected:
            raise ValueError(
                f"images of shape {tuple(self._images.shape)}, expected (N, *{expected})"
            )

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def device(self) -> torch.device:
        return self._images.device

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def to(self, device: torch.device | str) -> ArrayDataset:
        """Move the image array to ``device`` (in place) and return self."""
        self._images = self._images.to(device)
        return self

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images at ``index`` (shape ``(B,)``) as float32 in [0, 1], shape ``(B, C, H, W)``."""
        index = index.to(self._images.device)
        raw = self._images.index_select(0, index)
        if self.packed:
            bits = (raw.unsqueeze(-1) >> _bit_shifts(raw.device)) & 1
            return bits.reshape(len(index), *self.image_shape).to(torch.float32)
        return raw.to(torch.float32).div_(255.0)

    def numpy_images(self, index: np.ndarray) -> np.ndarray:
        """Images at ``index`` as uint8 ``(B, C, H, W)`` (0/1 for binary data, else 0..255)."""
        raw = self._images.index_select(0, torch.as_tensor(index, device=self._images.device))
        raw = raw.cpu().numpy()
        if self.packed:
            return np.unpackbits(raw, axis=1).reshape(len(index), *self.image_shape)
        return raw


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if not images.flags.writeable:
        # A read-only memory map: torch wants a writable buffer. A copy-on-write view shares
        # the pages with the file and never writes back. Only for a whole C-order map: a view
        # of one (a slice, a transpose) keeps the map's offset, not its own.
        if (
            isinstance(images, np.memmap)
            and isinstance(images.base, mmap.mmap)
            and images.flags.c_contiguous
        ):
            images = np.memmap(
                images.filename, dtype=np.uint8, mode="c", offset=images.offset, shape=images.shape
            )
        else:
            images = images.copy()
    return torch.from_numpy(np.ascontiguousarray(images))
