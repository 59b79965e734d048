"""MNIST and Fashion-MNIST from their IDX files (gzipped or not).

The IDX format (http://yann.lecun.com/exdb/mnist/, section "FILE FORMATS FOR THE MNIST
DATABASE"): a 32-bit big-endian magic number whose first two bytes are 0, third byte the element
type (0x08: unsigned byte) and fourth byte the number of dimensions; then one 32-bit big-endian
size per dimension; then the elements, row-major. Images: magic 2051 (0x00000803), dims
(N, 28, 28), pixels 0 (background) to 255 (ink). Labels: magic 2049 (0x00000801), dims (N,),
values 0..9. Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist) uses the same
files and names, with clothing classes for labels.

Both the training (``train-*``, 60,000 images) and test (``t10k-*``, 10,000) files are used when
present, training first: disvae draws its own validation split. The 28x28 images are padded by 2
black pixels on every side to 32x32 by default (lossless: the digits are centred in a 20x20 box
with a 4-pixel margin, and LeNet-5 read MNIST padded to 32x32 the same way); ``img_size`` 28
keeps them as they are, any other size resizes them with Lanczos. Default likelihood:
Bernoulli, as the VAE literature models (near-binary) MNIST.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np

from disvae.data.base import DatasetInfo
from disvae.data.cache import cached_source, with_source
from disvae.data.ground_truth import LabeledDataset
from disvae.data.images import resize_array
from disvae.data.registry import DATASETS
from disvae.errors import DataError

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
NATIVE, DEFAULT_SIZE = 28, 32
SOURCES = {
    "mnist": ("MNIST", "digit", "http://yann.lecun.com/exdb/mnist/"),
    "fashion": ("Fashion-MNIST", "class", "https://github.com/zalandoresearch/fashion-mnist"),
}
_VERSION = 2  # bump when the preprocessing changes: it is part of the cache key


def _fail(name: str, file: Path | str, problem: str) -> DataError:
    title, _, url = SOURCES[name]
    return DataError(f"{title} file {file}: {problem}; use the unmodified IDX files from {url}")


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_files(name: str, path: str | None) -> list[tuple[Path, Path]]:
    """(images, labels) file pairs under ``path``: train, then t10k when present."""
    title, _, url = SOURCES[name]
    root = Path(path or "").expanduser()
    pairs = []
    for split in ("train", "t10k"):
        img = _find(root, f"{split}-images-idx3-ubyte")
        lab = _find(root, f"{split}-labels-idx1-ubyte")
        if img and lab:
            pairs.append((img, lab))
        elif split == "t10k" and (img or lab):
            warnings.warn(
                f"{title}: {(img or lab).name} in {str(root)!r} has no "
                f"{'labels' if img else 'images'} file beside it; the t10k split is left out",
                RuntimeWarning,
                stacklevel=2,
            )
        elif split == "train":
            raise DataError(
                f"{title}: no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] in "
                f"{str(root)!r}; pass --data-path to the folder of the IDX files from {url}"
            )
    return pairs


def read_idx(name: str, file: Path, magic: int, dims: tuple[int | None, ...]) -> np.ndarray:
    """The uint8 array of IDX ``file``, checked against ``magic`` and ``dims`` (None: any)."""
    try:
        raw = file.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # the gzip magic: a .gz file, whatever its name
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # zlib: a damaged .gz body
        raise _fail(name, file, f"cannot be read ({err})") from None
    header = 4 + 4 * len(dims)
    if len(raw) < header:
        raise _fail(name, file, "is truncated (no complete IDX header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _fail(name, file, f"magic number {found}, expected {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(dims)))
    if any(d is not None and d != s for d, s in zip(dims, shape, strict=True)):
        raise _fail(name, file, f"dimensions {shape}, expected {dims}")
    if len(raw) != header + int(np.prod(shape)):
        raise _fail(name, file, f"holds {len(raw) - header} bytes for dimensions {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _count(name: str, file: Path) -> int:
    """Number of images an IDX image file declares (reads its header only)."""
    try:
        with open(file, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(file, "rb") as f:
            head = f.read(8)
    except (OSError, EOFError, zlib.error) as err:  # zlib: a damaged .gz body
        raise _fail(name, file, f"cannot be read ({err})") from None
    if len(head) < 8 or int.from_bytes(head[:4], "big") != IMAGES_MAGIC:
        raise _fail(name, file, f"is not an IDX image file (magic {IMAGES_MAGIC})")
    return int.from_bytes(head[4:8], "big")


def _labels(name: str, pairs: list[tuple[Path, Path]]) -> list[np.ndarray]:
    """The labels of each pair's labels file."""
    labels = [read_idx(name, lab, LABELS_MAGIC, (None,)) for _, lab in pairs]
    for (_, lab_file), lab in zip(pairs, labels, strict=True):
        if lab.max(initial=0) > 9:
            raise _fail(name, lab_file, "holds labels above 9")
    return labels


def _images(name: str, pairs: list[tuple[Path, Path]], size: int):
    for img_file, _ in pairs:
        images = read_idx(name, img_file, IMAGES_MAGIC, (None, NATIVE, NATIVE))[:, None]
        if size == NATIVE:
            yield images
            continue
        # Padded to 32 first at every other size too, so the digit keeps the same share of the
        # frame (20 of 32 pixels) whatever the size.
        pad = (DEFAULT_SIZE - NATIVE) // 2
        padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        yield padded if size == DEFAULT_SIZE else resize_array(padded, size)


def load_idx(name: str, path: str | None, img_size: int | None = None) -> LabeledDataset:
    """MNIST-like data from the IDX files in folder ``path``: uint8 ``(N, 1, S, S)``."""
    size = img_size or DEFAULT_SIZE
    pairs = idx_files(name, path)
    parts = _labels(name, pairs)
    counts = [_count(name, img_file) for img_file, _ in pairs]
    for (img_file, lab_file), n, lab in zip(pairs, counts, parts, strict=True):  # each split
        if n != len(lab):
            raise _fail(name, img_file, f"{n} images for the {len(lab)} labels of {lab_file.name}")
    labels = np.concatenate(parts)
    if sum(counts) == 0:
        files = " and ".join(str(img) for img, _ in pairs)
        raise _fail(name, files, "holds no images (its header declares 0)")
    files = [f for pair in pairs for f in pair]
    shape = (len(labels), 1, size, size)
    images = cached_source(name, files, shape, lambda: _images(name, pairs, size), v=_VERSION)
    info = DatasetInfo(name, (1, size, size), "bernoulli")
    factor = SOURCES[name][1]
    ds = LabeledDataset(images, info, False, (factor,), labels[:, None], (True,))
    return with_source(ds, files, images, _VERSION)


@DATASETS.register("mnist")
def load_mnist(path: str | None, img_size: int | None = None, workers: int | None = None):
    """MNIST (LeCun et al. 1998): 70,000 handwritten digits, factor ``digit`` (10 classes)."""
    return load_idx("mnist", path, img_size)


@DATASETS.register("fashion")
def load_fashion(path: str | None, img_size: int | None = None, workers: int | None = None):
    """Fashion-MNIST (Xiao et al. 2017): 70,000 clothing images, factor ``class`` (10)."""
    return load_idx("fashion", path, img_size)
