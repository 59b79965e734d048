"""Shapes3D (Burgess & Kim 2018): 480,000 RGB 64x64 renders on a full grid of six factors.

The file ``3dshapes.h5`` (https://github.com/google-deepmind/3d-shapes, README "Dataset
format") holds two HDF5 datasets: ``images``, uint8 ``(480000, 64, 64, 3)``, and ``labels``,
float64 ``(480000, 6)`` with the factor values floor_hue (10 values), wall_hue (10), object_hue
(10), scale (8), shape (4) and orientation (15), in that order; the images enumerate the grid in
row-major order, orientation varying fastest. The loader checks that the labels form exactly
that grid (each column takes its number of distinct values, in grid order) and memory-maps the
images from a uint8 ``(N, 3, 64, 64)`` cache, converted in chunks so the whole array is never in
memory twice. Default likelihood: Bernoulli, as disentanglement_lib trains it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from disvae.data.base import DatasetInfo
from disvae.data.cache import cached_source, with_source
from disvae.data.ground_truth import GridDataset
from disvae.data.images import resize_array
from disvae.data.registry import DATASETS
from disvae.errors import DataError

URL = "https://github.com/google-deepmind/3d-shapes"
FILE_NAME = "3dshapes.h5"
FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)  # a module constant, so tests can shrink the grid
SIZE = 64
CHUNK = 4096  # images converted per read
_VERSION = 1
# What h5py raises on a damaged file besides OSError: RuntimeError (a broken B-tree or heap),
# TypeError (a garbled name read as bytes), ValueError (a float type it cannot map), KeyError.
H5_ERRORS = (OSError, RuntimeError, TypeError, ValueError, KeyError)


def _fail(file: Path, problem: str) -> DataError:
    return DataError(f"Shapes3D file {file}: {problem}; use the unmodified {FILE_NAME} from {URL}")


def h5_path(path: str | None) -> Path:
    """The ``3dshapes.h5`` at ``path`` (the file or its folder)."""
    file = Path(path or "").expanduser()
    if file.is_dir():
        file = file / FILE_NAME
    if not file.is_file():
        where = " (no --data-path given: looked in the current directory)" if not path else ""
        raise DataError(
            f"Shapes3D file {str(file)!r} not found{where}; download {FILE_NAME} from {URL} and "
            "pass --data-path to it or to its folder"
        )
    return file


def grid_values(file: Path, labels: np.ndarray) -> list[np.ndarray]:
    """The sorted values of each factor; `DataError` unless ``labels`` are the row-major grid."""
    sizes = FACTOR_SIZES
    if not np.isfinite(labels).all():  # (np.unique would take NaN or inf for a factor value)
        raise _fail(file, "labels hold NaN or infinite values")
    values = [np.unique(col) for col in labels.T]
    found = tuple(len(v) for v in values)
    if found != sizes:
        raise _fail(file, f"labels take {found} distinct values per factor, expected {sizes}")
    classes = np.stack(
        [np.searchsorted(v, col) for v, col in zip(values, labels.T, strict=True)], axis=1
    )
    expected = np.indices(sizes).reshape(len(sizes), -1).T
    if not np.array_equal(classes, expected):
        raise _fail(file, "labels are not the factor grid in row-major order, orientation fastest")
    return values


def _open(file: Path):
    import h5py

    try:
        return h5py.File(file, "r")
    except H5_ERRORS as err:
        raise _fail(file, f"is not a readable HDF5 file ({_line(err)})") from None


def _line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _read_labels(file: Path, h5) -> np.ndarray:
    import h5py

    n = int(np.prod(FACTOR_SIZES))
    found = {}
    for key in ("images", "labels"):
        if key not in h5:
            raise _fail(file, f"has datasets {sorted(h5)}, expected 'images' and 'labels'")
        try:
            found[key] = h5[key]
        except (KeyError, OSError) as err:  # a link to nothing: h5py raises KeyError
            raise _fail(file, f"{key!r} cannot be opened ({err})") from None
        if not isinstance(found[key], h5py.Dataset):
            raise _fail(file, f"{key!r} is an HDF5 {type(found[key]).__name__}, not a dataset")
    images, labels = found["images"], found["labels"]
    if images.shape != (n, SIZE, SIZE, 3) or images.dtype != np.uint8:
        raise _fail(
            file, f"images is {images.dtype} {images.shape}, expected uint8 {(n, 64, 64, 3)}"
        )
    if labels.shape != (n, len(FACTOR_SIZES)) or labels.dtype.kind != "f":
        raise _fail(file, f"labels is {labels.dtype} {labels.shape}, expected float {(n, 6)}")
    try:
        return labels[()].astype(np.float64)
    except OSError as err:
        raise _fail(file, f"labels cannot be read ({err})") from None


def _chunks(file: Path, size: int):
    with _open(file) as h5:
        images = h5["images"]
        for start in range(0, images.shape[0], CHUNK):
            try:
                block = images[start : start + CHUNK]
            except H5_ERRORS as err:
                raise _fail(file, f"images cannot be read ({_line(err)})") from None
            yield resize_array(block.transpose(0, 3, 1, 2), size)


@DATASETS.register("shapes3d")
def load_shapes3d(
    path: str | None, img_size: int | None = None, workers: int | None = None
) -> GridDataset:
    """Shapes3D from ``3dshapes.h5`` (file or folder): uint8 ``(480000, 3, S, S)`` on a grid."""
    size = img_size or SIZE
    file = h5_path(path)
    with _open(file) as h5:
        try:
            labels = _read_labels(file, h5)
        except H5_ERRORS as err:  # (its own DataErrors pass: they are none of these)
            raise _fail(file, f"is damaged ({_line(err)})") from None
    values = grid_values(file, labels)
    shape = (len(labels), 3, size, size)
    images = cached_source("shapes3d", [file], shape, lambda: _chunks(file, size), v=_VERSION)
    info = DatasetInfo("shapes3d", (3, size, size), "bernoulli")
    ds = GridDataset(images, info, False, FACTOR_NAMES, values)
    return with_source(ds, [file], images, _VERSION)
