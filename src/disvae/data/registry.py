"""The dataset registry: name -> loader(path, img_size=..., workers=...) -> ArrayDataset.

A loader takes the user's ``path`` (None: the built-in source, where there is one) and the
keyword options ``img_size`` (side of the square images; None: the dataset's default) and
``workers`` (decoding processes; None: every CPU). Options left as None are not passed, so a
loader that has no use for an option need not accept it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from disvae.data.base import ArrayDataset
from disvae.registry import Registry

if TYPE_CHECKING:
    from disvae.config import DataConfig

DATASETS: Registry = Registry("dataset")


def load_dataset(
    name: str, path: str | None = None, img_size: int | None = None, workers: int | None = None
) -> ArrayDataset:
    """Load dataset ``name`` from ``path`` (None: the built-in source, where there is one)."""
    loader = DATASETS.get(name)
    options = {k: v for k, v in (("img_size", img_size), ("workers", workers)) if v is not None}
    return loader(path, **options)


def load_data(data_cfg: DataConfig) -> ArrayDataset:
    """The dataset a run's ``[data]`` section describes (name, path, img_size, workers)."""
    return load_dataset(data_cfg.name, data_cfg.path, data_cfg.img_size, data_cfg.workers)


def describe(
    name: str, path: str | None = None, img_size: int | None = None, workers: int | None = None
) -> dict[str, Any]:
    """What loading dataset ``name`` from ``path`` finds: a JSON-able summary.

    Keys: name, path, files, n_images, image_shape (C, H, W), channels, default_rec_dist,
    patches, factors (``{name: number of classes}``, empty without ground truth; a continuous
    factor's classes are its bins), continuous_factors (their names), grid (whether the factors
    form a full grid), cache_file.
    """
    data = load_dataset(name, path, img_size, workers)
    sizes = getattr(data, "factor_sizes", None) or getattr(data, "n_classes", ())
    factors = dict(zip(getattr(data, "factor_names", ()), map(int, sizes), strict=True))
    kinds = getattr(data, "categorical", (True,) * len(factors))  # a grid's are classes
    return {
        "name": name,
        "path": path,
        "files": list(data.files),
        "n_images": len(data),
        "image_shape": list(data.image_shape),
        "channels": data.image_shape[0],
        "default_rec_dist": data.info.default_rec_dist,
        "patches": list(data.info.patches),
        "factors": factors,
        "continuous_factors": [n for n, c in zip(factors, kinds, strict=True) if not c],
        "grid": hasattr(data, "factor_sizes"),
        "cache_file": data.cache_file,
    }


# Register the built-in datasets.
from disvae.data import cifar as _cifar  # noqa: E402, F401
from disvae.data import dsprites as _dsprites  # noqa: E402, F401
from disvae.data import folders as _folders  # noqa: E402, F401
from disvae.data import idx as _idx  # noqa: E402, F401
from disvae.data import shapes3d as _shapes3d  # noqa: E402, F401
from disvae.data import stacked as _stacked  # noqa: E402, F401
