"""CIFAR-10 from its binary or its python batches (https://www.cs.toronto.edu/~kriz/cifar.html).

Binary version (``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
``test_batch.bin``, each 10,000 rows of 3,073 bytes: 1 label byte (0..9), then 3,072 pixel bytes
- 1,024 red, 1,024 green, 1,024 blue, each a 32x32 plane in row-major order (the page's
"Binary version" section).

Python version (``cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5`` and
``test_batch``, each a pickled dict with ``data`` (a 10000x3072 uint8 numpy array, rows laid out
as above) and ``labels`` (a list of 10,000 ints 0..9); written by Python 2, so its keys are byte
strings. A pickle can call any importable function while it loads, so these are never
unpickled: `disvae.data.plain_pickle` reads their numbers, strings, lists and numpy arrays from
the opcodes without building any object or calling anything.

All six batches are used (the test batch when present), training first; disvae draws its own
validation split. Images are 32x32x3 (other ``img_size``: Lanczos resize). Default likelihood:
Gaussian, since natural colour images are not near-binary (the Bernoulli of dSprites and MNIST
is not a proper likelihood for them); ``--rec-dist bernoulli`` gives the disentangling-vae habit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from disvae.data import plain_pickle
from disvae.data.base import DatasetInfo
from disvae.data.cache import cached_source, with_source
from disvae.data.ground_truth import LabeledDataset
from disvae.data.images import resize_array
from disvae.data.registry import DATASETS
from disvae.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
ROWS_PER_BATCH = 10_000  # the published batch size (a module constant, so tests can shrink it)
PIXELS = 3 * 32 * 32
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = "test_batch"
_VERSION = 1


def _fail(file: Path, problem: str) -> DataError:
    return DataError(f"CIFAR-10 file {file}: {problem}; use the unmodified batches from {URL}")


def batch_files(path: str | None) -> tuple[list[Path], bool]:
    """The batch files under ``path`` (the batches folder or its parent) and whether binary."""
    root = Path(path or "").expanduser()
    for folder in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        for binary, suffix in ((True, ".bin"), (False, "")):
            train = [folder / f"{n}{suffix}" for n in TRAIN]
            if all(f.is_file() for f in train):
                test = folder / f"{TEST}{suffix}"
                return train + ([test] if test.is_file() else []), binary
    raise DataError(
        f"CIFAR-10: no data_batch_1..5 (python version) or data_batch_1..5.bin (binary version) "
        f"in {str(root)!r}; pass --data-path to the extracted batches from {URL}"
    )


def read_binary(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``(R, 3, 32, 32)``, labels ``(R,)``) of one binary batch."""
    raw = np.fromfile(file, dtype=np.uint8)
    if raw.size != ROWS_PER_BATCH * (1 + PIXELS):
        raise _fail(file, f"has {raw.size} bytes, expected {ROWS_PER_BATCH} rows of 3073")
    rows = raw.reshape(ROWS_PER_BATCH, 1 + PIXELS)
    return rows[:, 1:].reshape(-1, 3, 32, 32), rows[:, 0].copy()


def read_python(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``(R, 3, 32, 32)``, labels ``(R,)``) of one pickled batch."""
    try:
        batch = plain_pickle.read(file.read_bytes())
    except plain_pickle.PickleDataError as err:
        raise _fail(file, f"is not a readable CIFAR-10 pickle ({err})") from None
    except OSError as err:
        raise _fail(file, f"cannot be read ({err})") from None
    if not isinstance(batch, dict):
        raise _fail(file, f"holds a {type(batch).__name__}, expected a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise _fail(file, "has no uint8 array 'data'")
    if data.shape != (ROWS_PER_BATCH, PIXELS):
        raise _fail(file, f"data is {data.shape}, expected {(ROWS_PER_BATCH, PIXELS)}")
    if not (isinstance(labels, list) and all(type(v) is int for v in labels)):
        raise _fail(file, "has no list of int 'labels'")
    if any(not 0 <= v <= 9 for v in labels):  # (before int64: a huge int would overflow it)
        raise _fail(file, "holds labels outside 0..9")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (ROWS_PER_BATCH,):
        raise _fail(file, f"has {labels.size} labels, expected {ROWS_PER_BATCH}")
    return data.reshape(-1, 3, 32, 32), labels


def _read(file: Path, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_binary(file) if binary else read_python(file)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise _fail(file, "holds labels outside 0..9")
    return images, labels


@DATASETS.register("cifar10")
def load_cifar10(
    path: str | None, img_size: int | None = None, workers: int | None = None
) -> LabeledDataset:
    """CIFAR-10 (Krizhevsky 2009): 60,000 colour 32x32 images, factor ``class`` (10 classes)."""
    size = img_size or 32
    files, binary = batch_files(path)
    labels = np.concatenate([_read(f, binary)[1] for f in files])  # validates every file

    def produce():
        for f in files:
            yield resize_array(_read(f, binary)[0], size)

    shape = (len(labels), 3, size, size)
    images = cached_source("cifar10", files, shape, produce, v=_VERSION)
    info = DatasetInfo("cifar10", (3, size, size), "gaussian")
    ds = LabeledDataset(images, info, False, ("class",), labels[:, None], (True,))
    return with_source(ds, files, images, _VERSION)
