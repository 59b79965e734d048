"""Property-based tests (Hypothesis) of the input and output code: dataset readers, the image
cache, image files, learning-rate and loss-weight schedules and checkpoints.

Readers: small files written here in the real on-disk format from arbitrary arrays are read
back through the public loader and compared with what was written (after the documented
conversion); damaged files (cut, bytes changed, garbage) give a `UserError`, never another
exception. Writers: a grid equals a hand-built layout; PNG and GIF files read back with Pillow
hold the pixels given. Schedules against their closed forms; checkpoints round-trip and refuse
damage.

As in ``test_properties.py``, every property draws from a fixed seed (``derandomize=True``).
Pixels are drawn from a seeded NumPy generator (Hypothesis draws the seed and the shapes):
drawing thousands of bytes one by one would be slow and add nothing. Each example writes into
its own fresh folder (a function-scoped ``tmp_path`` is shared by all examples of a test).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageSequence

from conftest import damaged_bytes
from disvae import config as C
from disvae.data import (
    ArrayDataset,
    GridDataset,
    LabeledDataset,
    cifar,
    load_dataset,
    plain_pickle,
    shapes3d,
)
from disvae.data.cache import cached
from disvae.data.folders import read_celeba_attributes
from disvae.data.images import decode_crops
from disvae.errors import DataError, UserError
from disvae.losses.schedules import capacity, warmup
from disvae.training import checkpoint as ckpt
from disvae.training.schedules import decay_steps, for_run, lr_factor
from disvae.viz import images as I

SEEDS = st.integers(0, 2**32 - 1)


def _fresh(factory) -> Path:
    """A new empty folder for one Hypothesis example."""
    return factory.mktemp("ex", numbered=True)


CUTS = st.none() | st.integers(0, 2**20)
EDITS = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=3)
GARBAGE = st.tuples(st.sampled_from([b"", b"\x1f\x8b", b"PK\x03\x04", b"\x80\x02"]), st.binary())


def _one_line(err: Exception) -> None:
    assert "\n" not in str(err) and str(err)


# ======================================================================================= IDX


def _write_idx(file: Path, magic: int, arr: np.ndarray) -> None:
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    file.write_bytes(gzip.compress(raw) if file.suffix == ".gz" else raw)


def _lanczos(img: np.ndarray, size: int) -> np.ndarray:
    """One channel-first uint8 image resized with PIL's Lanczos (the documented filter)."""
    pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
    out = np.asarray(pil.resize((size, size), Image.Resampling.LANCZOS))
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def _mnist_files(root: Path, seed: int, n_train: int, n_test: int, gz: bool):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train + n_test)
    ext = ".gz" if gz else ""
    for split, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        if split == "t10k" and n_test == 0:
            continue
        _write_idx(root / f"{split}-images-idx3-ubyte{ext}", 2051, imgs[sl])
        _write_idx(root / f"{split}-labels-idx1-ubyte{ext}", 2049, labels[sl])
    return imgs, labels


@settings(max_examples=25)
@given(
    SEEDS,
    st.integers(1, 4),
    st.integers(0, 3),
    st.booleans(),
    st.sampled_from(["mnist", "fashion"]),
    st.one_of(st.sampled_from([None, 28, 32]), st.integers(4, 40)),
)
def test_idx_files_read_back_as_written(tmp_path_factory, seed, n_train, n_test, gz, name, size):
    root = _fresh(tmp_path_factory)
    imgs, labels = _mnist_files(root, seed, n_train, n_test, gz)
    data = load_dataset(name, str(root), img_size=size)
    n = n_train + n_test
    s = size or 32
    assert isinstance(data, LabeledDataset) and len(data) == n and data.image_shape == (1, s, s)
    padded = np.pad(imgs[:, None], ((0, 0), (0, 0), (2, 2), (2, 2)))  # 28 -> 32, black border
    if s == 28:
        expected = imgs[:, None]
    elif s == 32:
        expected = padded
    else:  # padded to 32 first, then Lanczos
        expected = np.stack([_lanczos(p, s) for p in padded])
    got = data.numpy_images(np.arange(n))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(data.factor_values_raw[:, 0], labels)
    # the batches the model sees: the same pixels scaled to [0, 1]
    batch = data.batch(torch.arange(n)).numpy()
    np.testing.assert_allclose(batch, expected / 255.0, rtol=0, atol=1e-7)


@settings(max_examples=40)
@given(
    SEEDS,
    st.booleans(),
    st.integers(0, 3),
    CUTS,
    EDITS,
    st.none() | GARBAGE,
)
def test_damaged_idx_files_are_data_errors(tmp_path_factory, seed, gz, which, cut, edits, junk):
    root = _fresh(tmp_path_factory)
    _mnist_files(root, seed, 3, 2, gz)
    file = sorted(root.iterdir())[which]
    raw = file.read_bytes()
    file.write_bytes(junk[0] + junk[1] if junk is not None else damaged_bytes(raw, cut, edits))
    try:
        data = load_dataset("mnist", str(root))
    except DataError as err:
        _one_line(err)
        return
    # it loaded: then it is well formed (a changed pixel or a label still 0..9)
    assert data.image_shape == (1, 32, 32) and 1 <= len(data) <= 5
    assert data.factor_values_raw.min() >= 0 and data.factor_values_raw.max() <= 9


# ================================================================================== CIFAR-10


@settings(max_examples=20)
@given(
    SEEDS,
    st.integers(1, 3),
    st.sampled_from(["bin", 0, 1, 2, 3, 4, 5]),
    st.booleans(),
    st.sampled_from(["", "cifar-10-batches-bin", "cifar-10-batches-py"]),
    st.booleans(),
)
def test_cifar_batches_read_back_as_written(
    tmp_path_factory, seed, rows, kind, with_test, folder, str_keys
):
    root = _fresh(tmp_path_factory)
    (root / folder).mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    names = cifar.TRAIN + ([cifar.TEST] if with_test else [])
    flat = rng.integers(0, 256, (len(names), rows, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, (len(names), rows))
    for b, name in enumerate(names):
        if kind == "bin":
            rec = np.concatenate([labels[b, :, None].astype(np.uint8), flat[b]], axis=1)
            (root / folder / f"{name}.bin").write_bytes(rec.tobytes())
        else:
            k = (lambda s: s) if str_keys else str.encode
            batch = {k("batch_label"): b"x", k("labels"): labels[b].tolist(), k("data"): flat[b]}
            (root / folder / name).write_bytes(pickle.dumps(batch, protocol=kind))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifar, "ROWS_PER_BATCH", rows)
        data = load_dataset("cifar10", str(root))
    n = len(names) * rows
    assert data.image_shape == (3, 32, 32) and len(data) == n
    # each row: 1,024 red, then green, then blue bytes, each plane row-major
    expected = flat.reshape(n, 3072).reshape(n, 3, 32, 32)
    np.testing.assert_array_equal(data.numpy_images(np.arange(n)), expected)
    np.testing.assert_array_equal(data.factor_values_raw[:, 0], labels.reshape(-1))


_DTYPES = ["|u1", "|i1", "|b1", "<u2", ">u2", "<i4", ">i8", "<u8", "<f2", ">f4", "<f8", ">f8"]


@st.composite
def _np_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    rng = np.random.default_rng(draw(SEEDS))
    raw = rng.integers(0, 256, math.prod(shape) * dtype.itemsize, dtype=np.uint8).tobytes()
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if dtype.kind == "b":
        arr = arr.view(np.uint8) % 2 == 1
    if dtype.kind == "f":
        arr = np.where(np.isfinite(arr), arr, 0).astype(dtype)
    if draw(st.booleans()):
        arr = np.asfortranarray(arr)
    if draw(st.booleans()) and arr.ndim == 0:
        return arr[()]  # a numpy scalar
    return arr


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | _np_arrays()
)
_KEYS = st.text(max_size=4) | st.integers(-5, 5) | st.binary(max_size=4)
PLAIN = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_KEYS, inner, max_size=3)
    ),
    max_leaves=8,
)


def _same(a, b) -> bool:
    """Equal values of the same types (arrays: dtype, shape and bytes; floats: their bits)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return math.copysign(1, a) == math.copysign(1, b) and a == b
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=120)
@given(PLAIN, st.integers(0, 5))
@example(b"", 2)  # an empty bytes is bytes() at protocols 0-2: it was refused
def test_plain_pickle_reads_any_plain_data_as_pickle_wrote_it(value, protocol):
    got = plain_pickle.read(pickle.dumps(value, protocol=protocol))
    assert _same(got, value), (got, value)


@settings(max_examples=80)
@given(PLAIN, st.integers(0, 5), CUTS, EDITS, st.none() | GARBAGE)
def test_damaged_pickles_are_refused_with_pickle_data_error_only(value, protocol, cut, edits, junk):
    raw = pickle.dumps(value, protocol=protocol)
    raw = junk[0] + junk[1] if junk is not None else damaged_bytes(raw, cut, edits)
    try:
        plain_pickle.read(raw)
    except plain_pickle.PickleDataError as err:
        _one_line(err)


# ==================================================================================== images

MODES = ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "I", "F"]
FORMATS = {
    "L": "png",
    "RGB": "png",
    "RGBA": "png",
    "P": "png",
    "LA": "png",
    "1": "png",
    "I;16": "png",
    "I": "tif",
    "F": "tif",
}


def _picture(mode: str, w: int, h: int, rng: np.random.Generator, wide: bool):
    """(PIL image of ``mode``, its expected 8-bit RGB pixels by the documented conversion)."""
    if mode in ("L", "RGB", "RGBA", "LA"):
        c = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
        arr = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        im = Image.fromarray(arr[:, :, 0]) if c == 1 else Image.frombytes(mode, (w, h), arr)
        rgb = arr[:, :, :3] if c >= 3 else arr[:, :, :1].repeat(3, 2)  # alpha is dropped
        return im, rgb
    if mode == "P":
        idx = rng.integers(0, 256, (h, w), dtype=np.uint8)
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        im = Image.frombytes("P", (w, h), idx.tobytes())
        im.putpalette(palette.tobytes())
        return im, palette[idx]
    if mode == "1":
        bits = rng.integers(0, 2, (h, w)).astype(bool)
        return Image.fromarray(bits), np.where(bits, 255, 0).astype(np.uint8)[:, :, None].repeat(
            3, 2
        )
    if mode == "I;16":  # the top 8 of 16 bits
        arr = rng.integers(0, 65536 if wide else 256, (h, w), dtype=np.uint16)
        grey = (arr >> 8).astype(np.uint8)
    elif mode == "I":  # 16-bit data when a value exceeds 255, else 8-bit values as they are
        arr = rng.integers(-300, 70000 if wide else 256, (h, w)).astype(np.int32)
        grey = (np.clip(arr, 0, 65535) >> 8) if arr.max() > 255 else np.clip(arr, 0, 255)
    else:  # F: values in [0, 1] scaled by 255, else taken as 0..255; rounded, clipped
        arr = (rng.random((h, w)) * (400 if wide else 1) - (50 if wide else 0)).astype(np.float32)
        scaled = arr.astype(np.float64) * (255 if arr.max() <= 1 else 1)
        grey = np.clip(np.rint(scaled), 0, 255)
    im = Image.fromarray(arr)
    assert im.mode == mode
    return im, grey.astype(np.uint8)[:, :, None].repeat(3, 2)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, L = R 299/1000 + G 587/1000 + B 114/1000, as PIL rounds it."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


@st.composite
def _picture_files(draw, max_files=4):
    """Image files' specs: (mode, size s, width, height, seed, wide) with min(w, h) == s."""
    s = draw(st.integers(1, 10))
    specs = []
    for _ in range(draw(st.integers(1, max_files))):
        long_side = draw(st.integers(s, s + 7))
        w, h = (s, long_side) if draw(st.booleans()) else (long_side, s)
        specs.append((draw(st.sampled_from(MODES)), w, h, draw(SEEDS), draw(st.booleans())))
    return s, specs


@settings(max_examples=30)
@given(_picture_files())
def test_folder_images_read_back_centre_cropped_in_rgb(tmp_path_factory, files):
    """Every mode PIL opens, as RGB, cut to the centred square; the square is ``img_size``, so
    no resampling: the pixels are the file's exactly."""
    s, specs = files
    root = _fresh(tmp_path_factory)
    expected = []
    for i, (mode, w, h, seed, wide) in enumerate(specs):
        im, rgb = _picture(mode, w, h, np.random.default_rng(seed), wide)
        im.save(root / f"{i:02d}.{FORMATS[mode]}")
        left, top = (w - s) // 2, (h - s) // 2
        expected.append(rgb[top : top + s, left : left + s].transpose(2, 0, 1))
    data = load_dataset("folder", str(root), img_size=s, workers=1)
    assert isinstance(data, ArrayDataset) and data.image_shape == (3, s, s)
    np.testing.assert_array_equal(data.numpy_images(np.arange(len(specs))), np.stack(expected))


@settings(max_examples=40)
@given(
    st.sampled_from(MODES),
    st.integers(4, 12),
    st.integers(4, 12),
    SEEDS,
    st.booleans(),
    st.sampled_from([1, 3]),
    st.data(),
)
def test_decoded_crops_are_the_boxes_of_the_converted_image_stacked(
    tmp_path_factory, mode, w, h, seed, wide, channels, data
):
    root = _fresh(tmp_path_factory)
    im, rgb = _picture(mode, w, h, np.random.default_rng(seed), wide)
    path = root / f"x.{FORMATS[mode]}"
    im.save(path)
    full = (
        (rgb if channels == 3 else _luma(rgb)[:, :, None])
        if mode in ("RGB", "RGBA", "P")
        else rgb[:, :, :channels]
    )  # grey images: L directly
    s = data.draw(st.integers(1, min(w, h)))
    crops, expected = [], []
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.booleans()):  # a centred s x s square
            crops.append(s)
            left, top = (w - s) // 2, (h - s) // 2
        else:  # a box
            left, top = data.draw(st.integers(0, w - s)), data.draw(st.integers(0, h - s))
            crops.append((left, top, left + s, top + s))
        expected.append(full[top : top + s, left : left + s].transpose(2, 0, 1))
    got = decode_crops(str(path), s, channels, crops)
    np.testing.assert_array_equal(got, np.concatenate(expected))


_ORIENT = {  # EXIF orientation tag: how the stored pixels map to the upright picture
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # 0th row top, 0th column right: mirrored
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),  # 0th row left, 0th column top
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # 0th row right, column top: 90° clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],  # 0th row left, column bottom: 90° anticlockwise
}


@settings(max_examples=30)
@given(st.integers(1, 8), st.integers(1, 9), st.integers(1, 9), SEEDS)
def test_images_are_turned_upright_by_their_exif_orientation(tmp_path_factory, tag, w, h, seed):
    root = _fresh(tmp_path_factory)
    stored = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = tag
    Image.fromarray(stored).save(root / "x.png", exif=exif)
    upright = _ORIENT[tag](stored)
    s = min(w, h)
    top, left = (upright.shape[0] - s) // 2, (upright.shape[1] - s) // 2
    got = decode_crops(str(root / "x.png"), s, 3, [None])
    np.testing.assert_array_equal(got, upright[top : top + s, left : left + s].transpose(2, 0, 1))


def _encoded(fmt: str, mode: str, exif: bool) -> bytes:
    im, _ = _picture(mode, 7, 9, np.random.default_rng(0), True)
    buf = io.BytesIO()
    extra = {}
    if exif:
        tags = Image.Exif()
        tags[0x0112], tags[0x010F], tags[0x0132] = 6, "maker", "2020:01:01 00:00:00"
        extra["exif"] = tags
    im.save(buf, format=fmt, **extra)
    return buf.getvalue()


_ENCODINGS = (
    [("PNG", m, False) for m in ("L", "RGB", "RGBA", "P", "I;16")]
    + [("TIFF", m, False) for m in ("RGB", "I", "F")]
    + [
        ("JPEG", "RGB", True),
        ("PNG", "RGB", True),
        ("WEBP", "RGB", True),
        ("GIF", "P", False),
        ("BMP", "RGB", False),
    ]
)


@settings(max_examples=60)
@given(st.sampled_from(_ENCODINGS), CUTS, EDITS, st.none() | GARBAGE, st.sampled_from([1, 3]))
# a damaged EXIF tag: ImageOps.exif_transpose, re-packing the EXIF block, raised struct.error
# (WebP) or AttributeError (JPEG)
@example(("WEBP", "RGB", True), None, [(203, 0)], None, 3)
@example(("JPEG", "RGB", True), None, [(43, 11)], None, 1)
def test_damaged_image_files_are_data_errors(tmp_path_factory, enc, cut, edits, junk, channels):
    raw = _encoded(*enc)
    path = _fresh(tmp_path_factory) / f"x.{enc[0].lower()}"
    path.write_bytes(junk[0] + junk[1] if junk is not None else damaged_bytes(raw, cut, edits))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (Pillow warns of truncated or odd files)
            got = decode_crops(str(path), 4, channels, [None])
    except DataError as err:
        _one_line(err)
        assert str(path) in str(err)
        return
    assert got.shape == (channels, 4, 4) and got.dtype == np.uint8


# ================================================================================== Shapes3D


@st.composite
def _grids(draw):
    sizes = draw(
        st.lists(st.integers(1, 3), min_size=6, max_size=6).filter(lambda s: math.prod(s) <= 12)
    )
    values = [
        np.array(sorted(draw(st.sets(st.floats(-1e6, 1e6, width=32), min_size=n, max_size=n))))
        for n in sizes
    ]
    return tuple(sizes), values


@settings(max_examples=20)
@given(_grids(), SEEDS, st.sampled_from(["<f8", "<f4", ">f8"]), st.integers(1, 5))
def test_shapes3d_file_reads_back_as_the_grid_written(tmp_path_factory, grid, seed, dtype, chunk):
    sizes, values = grid
    root = _fresh(tmp_path_factory)
    n = math.prod(sizes)
    imgs = np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    mesh = np.meshgrid(*values, indexing="ij")  # row-major: the last factor varies fastest
    labels = np.stack([m.ravel() for m in mesh], axis=1).astype(dtype)
    with h5py.File(root / "3dshapes.h5", "w") as h5:
        h5["images"], h5["labels"] = imgs, labels
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shapes3d, "FACTOR_SIZES", sizes)
        mp.setattr(shapes3d, "CHUNK", chunk)
        data = load_dataset("shapes3d", str(root))
    assert isinstance(data, GridDataset) and data.factor_sizes == sizes
    np.testing.assert_array_equal(data.numpy_images(np.arange(n)), imgs.transpose(0, 3, 1, 2))
    for got, want in zip(data.factor_values, values, strict=True):
        np.testing.assert_array_equal(got, want.astype(dtype).astype(np.float64))
    np.testing.assert_array_equal(data.values_of(data.classes_of(np.arange(n))), labels)


def _shapes3d_bytes() -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5["images"] = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        h5["labels"] = np.array([[0, 0, 0, 0, 0, 0.0], [0, 0, 0, 0, 0, 1.0]])
    return buf.getvalue()


@settings(max_examples=40)
@given(CUTS, EDITS.filter(bool), st.booleans(), st.none() | GARBAGE)
# damaged HDF5 metadata: h5py raised RuntimeError (a B-tree, 'key in file'), TypeError (a
# dataset name read as bytes)
@example(None, [(711, 255)], True, None)  # RuntimeError
@example(None, [(734, 255)], True, None)  # TypeError
def test_damaged_shapes3d_files_are_data_errors(tmp_path_factory, cut, edits, head, junk):
    raw = _shapes3d_bytes()
    if head:  # the metadata (superblock, groups, types) lies in the first 4 KB
        edits = [(pos % 4096, v) for pos, v in edits]
    root = _fresh(tmp_path_factory)
    raw = junk[0] + junk[1] if junk is not None else damaged_bytes(raw, cut, edits)
    (root / "3dshapes.h5").write_bytes(raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shapes3d, "FACTOR_SIZES", (1, 1, 1, 1, 1, 2))
        try:
            data = load_dataset("shapes3d", str(root))
        except DataError as err:
            _one_line(err)
            return
    assert len(data) == 2 and data.image_shape == (3, 64, 64)


# ================================================================================== stacked

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True).filter(lambda n: n != "image")


@st.composite
def _stacked(draw):
    """(size, images as (w, h, seed), patch names, factor names, samples of (image number,
    per patch a box or None, factor values))."""
    s = draw(st.integers(1, 8))
    images = []
    for _ in range(draw(st.integers(1, 3))):
        long_side = draw(st.integers(s, s + 6))
        images.append(((s, long_side) if draw(st.booleans()) else (long_side, s)) + (draw(SEEDS),))
    patches = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    factors = draw(st.lists(NAMES, max_size=3, unique=True))
    samples = []
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(0, len(images) - 1))
        w, h, _ = images[k]
        boxes = [
            None
            if draw(st.booleans())
            else (draw(st.integers(0, w - s)), draw(st.integers(0, h - s)))
            for _ in patches
        ]
        values = [draw(st.floats(allow_nan=False, allow_infinity=False)) for _ in factors]
        samples.append((k, boxes, values))
    return s, images, patches, factors, samples


@settings(max_examples=30)
@given(_stacked(), st.sampled_from(["json", "csv"]), st.booleans())
def test_stacked_index_reads_back_the_boxes_and_factors_written(tmp_path_factory, spec, fmt, text):
    s, images, patches, factors, samples = spec
    root = _fresh(tmp_path_factory)
    (root / "img").mkdir()
    rgbs = []
    for k, (w, h, seed) in enumerate(images):
        rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "img" / f"{k}.png")
        rgbs.append(rgb)
    expected = []
    rows = []
    for k, boxes, values in samples:
        h, w = rgbs[k].shape[:2]
        parts, cells = [], {}
        for name, box in zip(patches, boxes, strict=True):
            left, top = box if box is not None else ((w - s) // 2, (h - s) // 2)
            parts.append(rgbs[k][top : top + s, left : left + s].transpose(2, 0, 1))
            if box is not None:
                cells[name] = f"{left} {top} {s} {s}" if text else [left, top, s, s]
        expected.append(np.concatenate(parts))
        rows.append((f"img/{k}.png", cells, values))
    if fmt == "json":
        doc = {
            "patches": patches,
            "factors": factors,
            "samples": [
                {"image": img, "boxes": cells, "factors": dict(zip(factors, v, strict=True))}
                for img, cells, v in rows
            ],
        }
        (root / "index.json").write_text(json.dumps(doc))
    else:
        lines = [",".join(["image"] + [f"patch:{p}" for p in patches] + factors)]
        for img, cells, v in rows:
            boxes = [
                c if isinstance(c := cells.get(p, ""), str) else " ".join(map(str, c))
                for p in patches
            ]
            lines.append(",".join([img, *boxes, *map(repr, v)]))
        (root / "index.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset("stacked", str(root), img_size=s, workers=1)
    assert data.image_shape == (3 * len(patches), s, s) and data.info.patches == tuple(patches)
    np.testing.assert_array_equal(data.numpy_images(np.arange(len(rows))), np.stack(expected))
    if factors:
        assert isinstance(data, LabeledDataset) and data.factor_names == tuple(factors)
        np.testing.assert_array_equal(data.factor_values_raw, [v for _, _, v in rows])
    else:
        assert not isinstance(data, LabeledDataset)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELDS = [
    (),
    ("patches",),
    ("factors",),
    ("samples",),
    ("samples", 0),
    ("samples", 0, "image"),
    ("samples", 0, "boxes"),
    ("samples", 0, "boxes", "a"),
    ("samples", 0, "factors"),
    ("samples", 0, "factors", "f"),
]


@settings(max_examples=60)
@given(st.sampled_from(_FIELDS), JSON, st.none() | st.text(max_size=40), st.booleans())
def test_any_stacked_index_loads_or_is_a_data_error(tmp_path_factory, field, value, csv, drop):
    """A valid JSON index with one field replaced by any JSON value (or removed), or a CSV of
    any text: it loads or is refused with a one-line `DataError`."""
    root = _fresh(tmp_path_factory)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(root / "x.png")
    if csv is not None:
        (root / "index.csv").write_text("image,patch:a,f\n" + csv, encoding="utf-8")
    else:
        doc = {
            "patches": ["a"],
            "factors": ["f"],
            "samples": [{"image": "x.png", "boxes": {"a": "0 0 3 3"}, "factors": {"f": 1}}],
        }
        parent, key = doc, None
        for key in field[:-1]:
            parent = parent[key]
        if not field:
            doc = value
        elif drop:
            del parent[field[-1]]
        else:
            parent[field[-1]] = value
        (root / "index.json").write_text(json.dumps(doc), encoding="utf-8")
    try:
        data = load_dataset("stacked", str(root), img_size=2, workers=1)
    except DataError as err:
        _one_line(err)
        return
    assert data.image_shape[1:] == (2, 2) and len(data) >= 1


# ========================================================================== CelebA attributes


@settings(max_examples=40)
@given(
    st.lists(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    st.integers(1, 5),
    SEEDS,
    st.sampled_from(["txt", "csv"]),
    st.data(),
)
def test_celeba_attribute_table_reads_back_as_written(tmp_path_factory, names, n, seed, fmt, data):
    root = _fresh(tmp_path_factory)
    values = np.random.default_rng(seed).choice([-1, 1], (n, len(names)))
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    if fmt == "txt":  # a count line, the names, then one space-aligned row per image
        lines = [str(n), " ".join(names)]
        for f, row in zip(files, values, strict=True):
            lines.append(f"{f}  " + " ".join(f"{v:2d}" for v in row))
    else:
        lines = [",".join(["image_id", *names])]
        lines += [",".join([f, *map(str, row)]) for f, row in zip(files, values, strict=True)]
    table = root / f"list_attr_celeba.{fmt}"
    table.write_text("\n".join(lines) + "\n")
    asked = data.draw(st.permutations(files))[: data.draw(st.integers(1, n))]
    got_names, got = read_celeba_attributes(table, asked)
    assert got_names == names
    rows = [files.index(a) for a in asked]
    np.testing.assert_array_equal(got, (values[rows] == 1).astype(np.float64))


DIGITS = st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3)


@settings(max_examples=60)
@given(
    st.one_of(DIGITS, st.integers(-1, 4).map(str), st.text(max_size=4)),
    st.text(max_size=30),
    st.sampled_from(["txt", "csv"]),
)
@example("²", "A\nx.jpg 1\n", "txt")  # '²'.isdigit(), but int('²') raised ValueError
def test_any_celeba_attribute_table_reads_or_is_a_data_error(tmp_path_factory, count, body, fmt):
    table = _fresh(tmp_path_factory) / f"list_attr_celeba.{fmt}"
    table.write_text(f"{count}\n{body}" if fmt == "txt" else f"image_id,{count}\n{body}")
    try:
        names, values = read_celeba_attributes(table, ["x.jpg"])
    except DataError as err:
        _one_line(err)
        return
    assert values.shape == (1, len(names)) and set(np.unique(values)) <= {0.0, 1.0}


# ===================================================================================== cache


@st.composite
def _cache_arrays(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    arr = np.random.default_rng(draw(SEEDS)).integers(0, 256, shape, dtype=np.uint8)
    cuts = sorted(draw(st.lists(st.integers(0, shape[0]), max_size=3)))
    return arr, [arr[a:b] for a, b in zip([0, *cuts], [*cuts, shape[0]], strict=True)]


@st.composite
def _cache_damage(draw):
    kind = draw(st.sampled_from(["cut", "append", "edit", "header", "garbage", "dir"]))
    if kind == "cut":
        return kind, draw(st.integers(0, 2**20))
    if kind == "append":
        return kind, draw(st.binary(min_size=1, max_size=8))
    if kind == "edit":
        return kind, draw(EDITS.filter(bool))
    if kind == "header":  # another header over the same bytes
        descr = draw(st.sampled_from(["|u1", "<u1", "|i1", "|b1", "<u2", "<f4", "|S1"]))
        return kind, (descr, draw(st.booleans()), draw(st.booleans()))
    if kind == "garbage":
        return kind, draw(GARBAGE)
    return kind, None


@settings(max_examples=50)
@given(_cache_arrays(), _cache_damage())
# a header that says Fortran order over the rows the writer wrote in C order was trusted
@example(
    (np.arange(6, dtype=np.uint8).reshape(2, 3), [np.arange(6, dtype=np.uint8).reshape(2, 3)]),
    ("header", ("|u1", True, False)),
)
# a file that starts like a zip: numpy opened it as .npz and raised BadZipFile
@example(
    (np.arange(3, dtype=np.uint8), [np.arange(3, dtype=np.uint8)]),
    ("garbage", (b"PK\x03\x04", b"")),
)
def test_cache_round_trips_and_a_damaged_cache_is_rebuilt(tmp_path_factory, arrays, damage):
    arr, chunks = arrays
    path = _fresh(tmp_path_factory) / "sub" / "x.npy"
    built = []

    def produce():
        built.append(1)
        return iter(chunks)

    got = cached(path, arr.shape, produce, "test")
    np.testing.assert_array_equal(got, arr)
    assert got.dtype == np.uint8 and not got.flags.writeable and len(built) == 1
    again = cached(path, arr.shape, produce, "test")  # memory-mapped, not built again
    np.testing.assert_array_equal(again, arr)
    assert len(built) == 1
    del got, again
    kind, how = damage
    raw = path.read_bytes()
    offset = len(raw) - arr.nbytes
    if kind == "cut":
        raw = raw[: how % len(raw)]  # strictly shorter
    elif kind == "append":
        raw += how
    elif kind == "edit":
        raw = damaged_bytes(raw[:offset], None, how) + raw[offset:]  # the header only
    elif kind == "header":
        descr, fortran, other_shape = how
        shape = arr.shape[::-1] + (1,) if other_shape else arr.shape
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": descr, "fortran_order": fortran, "shape": shape}
        )
        raw = buf.getvalue() + raw[offset:]
    elif kind == "garbage":
        raw = how[0] + how[1]
    if kind == "dir":
        path.unlink()
        path.mkdir()  # not even a file: kept in memory, with a warning
    else:
        path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "incomplete or corrupt; rebuilding it"
        rebuilt = cached(path, arr.shape, produce, "test")
    np.testing.assert_array_equal(rebuilt, arr)
    if kind in ("cut", "append", "garbage"):
        assert len(built) == 2  # never trusted


# ============================================================================== image output


@st.composite
def _batches(draw):
    n, c = draw(st.integers(0, 7)), draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(SEEDS))
    if draw(st.booleans()):
        return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    return rng.uniform(-0.5, 1.5, (n, c, h, w))


@settings(max_examples=80)
@given(_batches(), st.integers(1, 5), st.integers(0, 4))
def test_make_grid_is_the_hand_built_layout(images, n_cols, pad):
    n, c, h, w = images.shape
    cells = (
        images
        if images.dtype == np.uint8
        else np.floor(np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    )  # to_uint8: clip to [0, 1], round half up
    n_rows = max(1, math.ceil(n / n_cols))
    expected = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, c), 128, np.uint8)
    for i in range(n):
        r, k = i // n_cols, i % n_cols
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        expected[y : y + h, x : x + w] = cells[i].transpose(1, 2, 0)
    np.testing.assert_array_equal(I.make_grid(images, n_cols, pad), expected)


@settings(max_examples=60)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), SEEDS)
def test_tile_patches_puts_each_patch_beside_the_previous(n, p, h, w, seed):
    c = 3
    x = np.random.default_rng(seed).random((n, p * c, h, w))
    got = I.tile_patches(x, p)
    assert got.shape == (n, c, h, p * w)
    for i in range(p):
        np.testing.assert_array_equal(got[..., i * w : (i + 1) * w], x[:, i * c : (i + 1) * c])


@st.composite
def _pictures(draw):
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    shape = draw(st.sampled_from([(h, w, 1), (h, w, 3), (h, w)]))
    rng = np.random.default_rng(draw(SEEDS))
    if draw(st.booleans()):
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.uniform(-0.2, 1.2, shape)


@settings(max_examples=60)
@given(_pictures())
def test_png_files_hold_the_pictures_pixels(tmp_path_factory, picture):
    path = I.save_png(picture, _fresh(tmp_path_factory) / "a" / "b.png")
    expected = I.to_uint8(picture)
    expected = expected[:, :, None] if expected.ndim == 2 else expected
    with Image.open(path) as im:  # read by Pillow itself, then by our reader
        assert im.format == "PNG" and im.mode == ("L" if expected.shape[2] == 1 else "RGB")
        np.testing.assert_array_equal(np.asarray(im).reshape(expected.shape), expected)
    np.testing.assert_array_equal(I.read_png(path), expected)
    if picture.dtype != np.uint8:  # to_uint8: clip, round half up; NaN would be 0
        np.testing.assert_array_equal(
            expected.reshape(picture.shape), np.floor(np.clip(picture, 0, 1) * 255 + 0.5)
        )


@settings(max_examples=40)
@given(
    st.integers(1, 5),
    st.integers(1, 10),
    st.integers(1, 10),
    st.sampled_from([1, 3]),
    st.integers(1, 256),
    SEEDS,
    st.sampled_from([2.0, 4.0, 10.0, 25.0]),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_gif_frames_read_back_as_given_when_they_fit_a_palette(
    tmp_path_factory, n, h, w, c, colours, seed, fps, repeat
):
    """Grey frames (256 levels) and colour frames of at most 256 colours fit GIF's palette:
    they come back exactly. Identical consecutive frames may be merged, their durations added:
    expanded by duration the frames are those given."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (colours, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        if i and repeat[i - 1]:
            frames.append(frames[-1].copy())
        elif c == 1:
            frames.append(rng.integers(0, 256, (h, w, 1), dtype=np.uint8))
        else:
            frames.append(palette[rng.integers(0, colours, (h, w))])
    path = I.save_gif(frames, _fresh(tmp_path_factory) / "x.gif", fps=fps)
    step = max(20, round(1000 / fps))
    got = []
    with Image.open(path) as im:
        assert im.info.get("loop") == 0  # loops forever
        for frame in ImageSequence.Iterator(im):
            arr = np.asarray(frame.convert("L" if c == 1 else "RGB"))
            assert frame.info["duration"] % step == 0
            got += [arr.reshape(h, w, c)] * (frame.info["duration"] // step)
    assert len(got) == n
    for a, b in zip(got, frames, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=80)
@given(_pictures(), st.integers(2, 256))
def test_posterize_rounds_to_the_nearest_of_levels_even_steps(picture, levels):
    got = I.posterize(picture, levels)
    x = I.to_uint8(picture).astype(np.float64)
    step = 255 / (levels - 1)
    allowed = np.round(np.arange(levels) * step)  # the levels, 0 and 255 among them
    assert got.dtype == np.uint8 and got.shape == x.shape
    assert np.isin(got, allowed).all()
    assert (np.abs(got - x) <= step / 2 + 0.5).all()  # the nearest level (up to rounding)
    np.testing.assert_array_equal(I.posterize(got, levels), got)  # idempotent


# ================================================================================ schedules


@settings(max_examples=200)
@given(
    st.integers(0, 2000),
    st.sampled_from(["none", "step", "cosine"]),
    st.integers(1, 1500),
    st.integers(0, 300),
    st.integers(1, 400),
    st.floats(0.01, 1.0),
    st.floats(0.0, 1.0),
)
def test_lr_factor_is_its_closed_form(step, schedule, total, warm, every, decay, floor):
    got = lr_factor(
        step, schedule, total_steps=total, warmup=warm, decay_steps=every, decay=decay, floor=floor
    )
    ramp = (step + 1) / warm if step < warm else 1.0  # linear warm-up, first update not 0
    if schedule == "none":
        expected = ramp
    elif schedule == "step":  # StepLR: decay once every `every` steps
        expected = ramp * decay ** (step // every)
    else:  # SGDR, Eq. 5: eta_min + (eta_max - eta_min)(1 + cos(pi T_cur / T)) / 2, one cycle
        t = min(max(step - warm, 0), max(1, total - warm))
        expected = ramp * (
            floor + (1 - floor) * (1 + math.cos(math.pi * t / max(1, total - warm))) / 2
        )
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert 0 <= got <= 1  # (0: a floor of 0, or many decays underflowing)
    nxt = lr_factor(
        step + 1,
        schedule,
        total_steps=total,
        warmup=warm,
        decay_steps=every,
        decay=decay,
        floor=floor,
    )
    if step + 1 < warm and schedule != "step":  # rises through the warm-up (unless decayed)
        assert nxt > got
    elif step >= warm:  # never rises afterwards
        assert nxt <= got + 1e-15
    if schedule == "cosine" and step >= max(total, warm + 1):
        assert got == pytest.approx(floor, abs=1e-12)


@settings(max_examples=60)
@given(
    st.sampled_from(["none", "step", "cosine"]),
    st.integers(0, 50),
    st.floats(0.05, 20.0),
    st.floats(0.1, 1.0),
    st.floats(0.0, 0.9),
    st.integers(1, 500),
    st.floats(0.5, 300.0),
    st.integers(0, 1000),
)
def test_a_runs_lr_schedule_is_lr_factor_with_its_decay_epochs_in_steps(
    schedule, warm, epochs, decay, floor, total, per_epoch, step
):
    cfg = C.TrainConfig(
        lr_schedule=schedule, lr_warmup=warm, lr_decay_every=epochs, lr_decay=decay, lr_floor=floor
    )
    every = decay_steps(epochs, per_epoch)
    assert every == max(1, round(epochs * per_epoch))
    expected = lr_factor(
        step, schedule, total_steps=total, warmup=warm, decay_steps=every, decay=decay, floor=floor
    )
    assert for_run(cfg, total, per_epoch)(step) == expected


@settings(max_examples=100)
@given(st.integers(-10, 600), st.integers(-3, 500), st.floats(0, 50), st.floats(0, 50))
def test_warmup_and_capacity_are_clamped_ramps(step, n, c0, c1):
    frac = 1.0 if n <= 0 else min(max(step / n, 0.0), 1.0)
    assert warmup(step, n) == pytest.approx(frac, abs=1e-12)
    assert capacity(step, c0, c1, n) == pytest.approx(c0 + (c1 - c0) * frac, abs=1e-9)


# =============================================================================== checkpoints

_TORCH_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
]


@st.composite
def _state_dicts(draw):
    names = draw(
        st.lists(
            st.from_regex(r"[a-z]{1,3}(\.[a-z0-9]{1,3}){0,2}", fullmatch=True),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(_TORCH_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        t = torch.randint(-100, 100, shape, generator=gen).to(dtype)
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if draw(st.booleans()) and t.dim() >= 2:
            t = t.transpose(0, 1)  # not contiguous
        out[name] = t
    return out


META = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=4,
)


def _equal_state(a: dict, b: dict) -> bool:
    return list(sorted(a)) == list(sorted(b)) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


@settings(max_examples=40)
@given(_state_dicts(), META)
def test_checkpoints_round_trip_any_state_dict_and_metadata(tmp_path_factory, tensors, meta):
    path = _fresh(tmp_path_factory) / "step_000000001.safetensors"
    ckpt.save_state(path, tensors, meta)
    got, got_meta = ckpt.load_state(path)
    assert _equal_state(got, tensors) and got_meta == meta
    first = path.read_bytes()
    ckpt.save_state(path, tensors, meta)
    assert path.read_bytes() == first  # identical state, identical bytes


ALNUM = b"0123456789abcdefgmnstvxyzAMN"


@settings(max_examples=60)
@given(
    _state_dicts(),
    META,
    CUTS,
    EDITS.filter(bool),
    st.sampled_from(["anywhere", "header", "metadata"]),
    st.none() | GARBAGE,
)
# one letter changed in a key of the JSON metadata: 'version' or 'meta' went missing (KeyError);
# a digit changed in the metadata's values was loaded as if it had been saved
@example({"w": torch.zeros(2)}, {}, None, [(14, 27)], "metadata", None)  # "Nersion"
@example({"w": torch.zeros(2)}, {}, None, [(88, 26)], "metadata", None)  # "Meta"
@example({"w": torch.zeros(2)}, {"step": 12}, None, [(96, 3)], "metadata", None)  # 12 -> 13
def test_damaged_checkpoints_are_refused_or_load_exactly_what_was_saved(
    tmp_path_factory, tensors, meta, cut, edits, where, junk
):
    """Cut, changed bytes (anywhere; in the safetensors header of names, dtypes, shapes and
    offsets; or a letter or digit of the JSON metadata changed into another), garbage: the
    checkpoint is refused with a one-line `CheckpointError`, or loads exactly as saved."""
    path = _fresh(tmp_path_factory) / "c.safetensors"
    ckpt.save_state(path, tensors, meta)
    raw = path.read_bytes()
    end = 8 + int.from_bytes(raw[:8], "little")
    if where == "header":
        edits = [(pos % end, v) for pos, v in edits]
    elif where == "metadata":  # positions counted among the letters and digits of the JSON
        begin = raw.index(b'"disvae":"') + len(b'"disvae":"')
        alnum = [i for i in range(begin, end) if raw[i] in ALNUM]
        edits = [(alnum[pos % len(alnum)], ALNUM[v % len(ALNUM)]) for pos, v in edits]
        cut = None
    path.write_bytes(junk[0] + junk[1] if junk is not None else damaged_bytes(raw, cut, edits))
    try:
        got, got_meta = ckpt.load_state(path)
    except ckpt.CheckpointError as err:
        assert isinstance(err, UserError)
        _one_line(err)
        return
    # Not refused: then nothing changed that matters
    assert _equal_state(got, tensors) and got_meta == meta
