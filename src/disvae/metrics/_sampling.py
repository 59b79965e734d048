"""The thin sampling layer between a ground-truth dataset, an ``encode`` function and the metrics.

``encode`` maps images (B, C, H, W) float tensor to codes (B, D) (any array-like). A
`CachedEncoder` additionally remembers the code of every dataset image it has encoded, so that the
batch-based scores (which draw millions of images from a dataset of 737,280) encode each distinct
image at most once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from disvae.metrics._utils import check_count, nonfinite_rows

EncodeFn = Callable[[Any], Any]


def _to_numpy(x: Any, n_images: int | None = None) -> np.ndarray:
    """``encode``'s output for ``n_images`` images as float64 (B, D); ValueError for codes that
    are not real numbers, not one row of D >= 1 numbers per image, or not finite (a diverged or
    damaged encoder), which would otherwise turn into a silent 0, a dropped imaginary part, a
    reshape error or a classifier's traceback."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise ValueError(f"encode must return real numeric codes, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]  # one code dimension
    if x.ndim != 2 or x.shape[1] < 1 or (n_images is not None and len(x) != n_images):
        want = "(B, D)" if n_images is None else f"({n_images}, D)"
        raise ValueError(
            f"encode must return codes of shape {want} with D >= 1, one row per image; got "
            f"shape {x.shape}"
        )
    bad = int(nonfinite_rows(x).sum())
    if bad:
        raise ValueError(
            f"encode returned NaN or infinite codes for {bad} of {len(x)} images; the encoder's "
            "weights are damaged or diverged"
        )
    return x


class CachedEncoder:
    """``encode`` plus a table of the codes of the dataset's images, filled on demand.

    The table holds float32 (the models' precision; for the full dSprites and D = 10 it is
    30 MB instead of 59), so codes of a float64 ``encode`` come back rounded to float32.

    Args:
        dataset: a `GridDataset` (or any object with ``batch(index_tensor)`` and ``len``).
        encode: images (B, C, H, W) -> codes (B, D).
        batch_size: images per call of ``encode``.
        progress: optional callable ``progress(n_images)`` called after each encoded batch.
    """

    def __init__(
        self,
        dataset: Any,
        encode: EncodeFn,
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.dataset = dataset
        self.encode = encode
        self.batch_size = batch_size
        self.progress = progress
        self._codes: np.ndarray | None = None
        self._done = np.zeros(len(dataset), dtype=bool)
        self.n_encoded = 0

    def __call__(self, images: Any) -> np.ndarray:
        return _to_numpy(self.encode(images), len(images))

    def missing(self, index: np.ndarray) -> np.ndarray:
        """The distinct indices among ``index`` whose codes are not known yet."""
        u = np.unique(np.asarray(index, dtype=np.int64))
        return u[~self._done[u]]

    def _store(self, chunk: np.ndarray, codes: np.ndarray) -> None:
        if self._codes is None:
            self._codes = np.zeros((len(self.dataset), codes.shape[1]), dtype=np.float32)
        if codes.shape[1] != self._codes.shape[1]:
            raise ValueError(f"encode returned codes of {codes.shape[1]} dimensions after "
                             f"{self._codes.shape[1]}; one D is needed")  # fmt: skip
        self._codes[chunk] = codes
        self._done[chunk] = True
        self.n_encoded += len(chunk)
        if self.progress is not None:
            self.progress(len(chunk))

    def encode_all(self) -> None:
        """Encode every image not yet known, in index order (contiguous batches: the cheapest
        gather), for scores that would draw most of the dataset anyway."""
        import torch

        todo = np.flatnonzero(~self._done)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            self._store(chunk, self(self.dataset.batch(torch.from_numpy(chunk))))

    def codes_at(self, index: np.ndarray) -> np.ndarray:
        """Codes (len(index), D) of dataset images ``index`` (N,), encoding only new ones."""
        import torch

        index = np.asarray(index, dtype=np.int64)
        todo = self.missing(index)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            self._store(chunk, self(self.dataset.batch(torch.from_numpy(chunk))))
        if self._codes is None:  # nothing asked for yet
            return np.zeros((len(index), 0))
        return self._codes[index].astype(np.float64)


def encode_classes(
    dataset: Any, encode: EncodeFn, classes: np.ndarray, batch_size: int = 1000
) -> np.ndarray:
    """Codes (N, D) of the images with factor classes (N, K), in ``batch_size`` chunks."""
    if isinstance(encode, CachedEncoder):
        return encode.codes_at(dataset.index_of(classes))
    out = []
    for s in range(0, len(classes), batch_size):
        chunk = classes[s : s + batch_size]
        out.append(_to_numpy(encode(dataset.sample_observations_from_factors(chunk)), len(chunk)))
    if len({o.shape[1] for o in out}) > 1:
        raise ValueError(f"encode returned codes of {sorted({o.shape[1] for o in out})} "
                         "dimensions for different batches; one D is needed")  # fmt: skip
    return np.concatenate(out) if out else np.zeros((0, 0))


def sample_codes(
    dataset: Any,
    encode: EncodeFn,
    n: int,
    rng: np.random.Generator | int | None = 0,
    batch_size: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of a `GridDataset` with uniformly drawn factor classes: their codes (n, D)
    float64, from ``encode`` (images (B, C, H, W) -> codes (B, D)) in batches of
    ``batch_size``, and the classes (n, K) int64. ``rng``: a generator or a seed (None: 0)."""
    check_count(n, "n")
    classes = dataset.sample_factors(n, as_rng(rng))
    return encode_classes(dataset, encode, classes, batch_size), classes


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A `numpy.random.Generator` from a generator, a seed, or None (seed 0: deterministic)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
