"""Datasets with known generative factors laid out on a full grid (dSprites, Shapes3D, ...).

The protocol the metrics rely on (after disentanglement_lib's ``GroundTruthData``): factor names,
sizes and values; ``sample_factors`` draws factor classes; ``index_of`` maps classes to the
image index, so images for any factor combination can be drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from disvae.data.base import ArrayDataset, DatasetInfo


class GridDataset(ArrayDataset):
    """An `ArrayDataset` whose images enumerate a full factor grid in row-major order.

    Image ``i`` has factor classes given by the mixed-radix digits of ``i`` over
    ``factor_sizes``, the last factor varying fastest (the order of dSprites and Shapes3D).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        info: DatasetInfo,
        packed: bool,
        factor_names: Sequence[str],
        factor_values: Sequence[np.ndarray],
    ) -> None:
        super().__init__(images, info, packed)
        if len(factor_names) != len(factor_values):
            raise ValueError("one value array per factor name is needed")
        self.factor_names = tuple(factor_names)
        self.factor_values = tuple(np.asarray(v, dtype=np.float64) for v in factor_values)
        self.factor_sizes = tuple(len(v) for v in self.factor_values)
        if int(np.prod(self.factor_sizes)) != len(self):
            raise ValueError(
                f"{len(self)} images do not fill a grid of factor sizes {self.factor_sizes}"
            )
        # strides[k]: how far the index moves when factor k grows by one class.
        self._strides = np.cumprod((1,) + self.factor_sizes[:0:-1])[::-1].astype(np.int64)

    @property
    def n_factors(self) -> int:
        return len(self.factor_sizes)

    def index_of(self, classes: np.ndarray) -> np.ndarray:
        """Image indices, shape ``(N,)``, of factor classes ``(N, K)``."""
        classes = np.asarray(classes, dtype=np.int64)
        if classes.ndim != 2 or classes.shape[1] != self.n_factors:
            raise ValueError(f"classes must have shape (N, {self.n_factors})")
        if (classes < 0).any() or (classes >= np.array(self.factor_sizes)).any():
            raise ValueError("factor class out of range")
        return classes @ self._strides

    def classes_of(self, index: np.ndarray) -> np.ndarray:
        """Factor classes, shape ``(N, K)``, of image indices ``(N,)``."""
        index = np.asarray(index, dtype=np.int64)
        return (index[:, None] // self._strides) % np.array(self.factor_sizes)

    def values_of(self, classes: np.ndarray) -> np.ndarray:
        """Factor values, shape ``(N, K)``, of factor classes ``(N, K)``."""
        classes = np.asarray(classes, dtype=np.int64)
        return np.stack([v[classes[:, k]] for k, v in enumerate(self.factor_values)], axis=1)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor-class vectors drawn uniformly, shape ``(n, K)``."""
        return np.stack([rng.integers(0, s, size=n) for s in self.factor_sizes], axis=1)

    def sample_observations_from_factors(self, classes: np.ndarray) -> torch.Tensor:
        """Images for factor classes ``(N, K)`` as float ``(N, C, H, W)`` in [0, 1]."""
        return self.batch(torch.from_numpy(self.index_of(classes)))


N_BINS = 20  # bins of a continuous factor (the MIG/SAP convention of disentanglement_lib)


class LabeledDataset(ArrayDataset):
    """An `ArrayDataset` with a factor table but no grid (MNIST labels, gaze angles, ...).

    Code-based metrics (MIG, SAP, DCI, modularity) need, for every image, one class index per
    factor; they cannot draw images for chosen factors (no ``index_of``), so the intervention
    scores (β-VAE, FactorVAE) do not apply.

    Args:
        images, info, packed: as for `ArrayDataset`.
        factor_names: ``K`` names.
        values: ``(N, K)`` raw factor values (float64 after conversion).
        categorical: per factor, True when its values are classes (labels: each distinct value
            becomes a class, in sorted order), False when continuous (split into ``N_BINS``
            equal-width bins between its minimum and maximum).

    Attributes:
        factors: ``(N, K)`` int64 class indices; ``factor_values_raw``: ``(N, K)`` float64;
        n_classes: classes per factor (``K``,).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        info: DatasetInfo,
        packed: bool,
        factor_names: Sequence[str],
        values: np.ndarray,
        categorical: Sequence[bool],
    ) -> None:
        super().__init__(images, info, packed)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape != (len(self), len(factor_names)):
            raise ValueError(f"factor values {values.shape}, expected ({len(self)}, K names)")
        if len(categorical) != len(factor_names):
            raise ValueError("one categorical flag per factor name is needed")
        self.factor_names = tuple(factor_names)
        self.categorical = tuple(bool(c) for c in categorical)
        self.factor_values_raw = values
        columns = [
            np.unique(col, return_inverse=True)[1] if cat else discretize(col)
            for col, cat in zip(values.T, categorical, strict=True)
        ]
        self.factors = np.zeros((len(self), len(factor_names)), dtype=np.int64)
        for k, col in enumerate(columns):
            self.factors[:, k] = col
        self.n_classes = tuple(int(c.max(initial=-1)) + 1 for c in self.factors.T)

    @property
    def n_factors(self) -> int:
        return len(self.factor_names)

    def factors_of(self, index: np.ndarray) -> np.ndarray:
        """Factor classes ``(N, K)`` int64 of image indices ``(N,)``."""
        return self.factors[np.asarray(index, dtype=np.int64)]


def discretize(values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Class indices ``(N,)`` of ``values`` ``(N,)`` in ``n_bins`` equal-width bins (min..max)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        return np.zeros(len(values), dtype=np.int64)
    edges = np.linspace(lo, hi, n_bins + 1)[1:-1]
    return np.digitize(values, edges).astype(np.int64)
