"""The dataset registry: name -> loader(path) -> ArrayDataset."""

from __future__ import annotations

from disvae.data.base import ArrayDataset
from disvae.registry import Registry

DATASETS: Registry = Registry("dataset")


def load_dataset(name: str, path: str | None = None) -> ArrayDataset:
    """Load dataset ``name`` from ``path`` (None: the built-in source, where there is one)."""
    loader = DATASETS.get(name)
    return loader(path)


# Register the built-in datasets.
from disvae.data import dsprites as _dsprites  # noqa: E402, F401
