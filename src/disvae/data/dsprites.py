"""dSprites: 737,280 binary 64x64 sprites on a full grid of 5 factors, rendered by our own code.

The layout is that of DeepMind's ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
(https://github.com/google-deepmind/dsprites-dataset, Apache-2.0): latents color (1), shape (3:
square, ellipse, heart), scale (6, 0.5..1), orientation (40, 0..2*pi), posX (32, 0..1) and
posY (32, 0..1), posY varying fastest.

The geometry follows the measured facts in ``shared/data/dsprites/README.md``: a pixel is on when
its centre lies inside the shape; the centre sits at ``16 + 32 * pos`` px; size is linear in
scale; rotation is counter-clockwise on screen about the centre. The constants below were then
fitted against the 202 identified frames of the published ``dsprites.gif`` (see
``benchmarks/render_dsprites.py``; 2 wrong pixels in total with these values).

Rendering works line by line: for every (shape, scale, orientation) combination and each of the
2048 distinct row offsets (64 rows x 32 posY) we find the x-intervals inside the shape; for each
posX an interval becomes a run of set bits in one 64-bit word per image row, with column 0 the
most significant bit, which in big-endian byte order is exactly the ``np.packbits`` layout.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from disvae.data.base import DatasetInfo
from disvae.data.cache import NPY_HEADER_ERRORS, cache_dir, with_source
from disvae.data.cache import cached as _cached
from disvae.data.ground_truth import GridDataset
from disvae.data.registry import DATASETS
from disvae.errors import DataError

logger = logging.getLogger(__name__)

URL = "https://github.com/google-deepmind/dsprites-dataset"
NPZ_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
LATENTS_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
LATENTS_SIZES = (1, 3, 6, 40, 32, 32)
# (first, last) value of each latent, spaced linearly (the published latents_values).
_LATENTS_RANGES = ((1.0, 1.0), (1.0, 3.0), (0.5, 1.0), (0.0, 2 * np.pi), (0.0, 1.0), (0.0, 1.0))
FACTOR_NAMES = LATENTS_NAMES[1:]
FACTOR_SIZES = LATENTS_SIZES[1:]
N_IMAGES = int(np.prod(LATENTS_SIZES))  # 737280
SIZE = 64
PACKED_BYTES = SIZE * SIZE // 8  # 512 bytes per packed image
RENDER_VERSION = 1  # bump whenever the rendered pixels change: it names the cache file
# Runs of frames of the published dsprites.gif with known factor classes (the README of
# shared/data/dsprites): first frame, shape (0 square, 1 ellipse, 2 heart), the varying factor
# (0 scale, 1 orientation, 2 posX, 3 posY), its class count, and the classes of the four
# factors scale, orientation, posX, posY where they do not vary. The renderer is checked on them.
GIF_RUNS = [
    (0, 2, 0, 6, (0, 0, 0, 0)),
    (18, 2, 1, 40, (5, 0, 0, 0)),
    (58, 2, 3, 32, (5, 0, 0, 0)),
    (90, 2, 2, 32, (5, 0, 0, 31)),
    (192, 1, 0, 6, (0, 0, 0, 0)),
    (210, 1, 1, 40, (5, 0, 0, 0)),
    (256, 0, 0, 6, (0, 0, 0, 0)),
    (274, 0, 1, 40, (5, 0, 0, 0)),
]

_PACK_VERSION = 1  # likewise for the cache of a converted real .npz

# Geometry at scale 1, in pixels (README facts, fitted against the GIF frames).
_SQUARE_HALF = 9.598  # README: side 19.2 px; the GIF allows half-sides in [9.5966, 9.5998)
_ELLIPSE_AXES = (12.76589, 7.21235)  # semi-axes; horizontal long axis at orientation 0
_HEART_SCALE = (0.5996, 0.66225)  # README: 0.6 in x, 0.6625 in y
_HEART_OFFSET = -1.436  # screen y (down) of the curve origin relative to the shape centre
_HEART_VERTICES = 1024  # polygon resolution of the parametric heart
_N_LINES = SIZE * LATENTS_SIZES[5]  # distinct row offsets: 64 rows x 32 posY
_RENDER_BLOCK = 16384  # images per block in `render`
# _PREFIX[k]: a uint64 with its k most significant bits set.
_PREFIX = np.array([((1 << k) - 1) << (64 - k) for k in range(65)], dtype=np.uint64)


def _axes(sizes: Sequence[int]) -> list[np.ndarray]:
    return [np.linspace(a, b, n) for (a, b), n in zip(_LATENTS_RANGES, sizes, strict=True)]


def latents_values(sizes: Sequence[int] = LATENTS_SIZES) -> np.ndarray:
    """The published ``latents_values`` (for the grid ``sizes``): float64 ``(prod(sizes), 6)``."""
    return np.stack([g.ravel() for g in np.meshgrid(*_axes(sizes), indexing="ij")], axis=1)


def latents_classes(sizes: Sequence[int] = LATENTS_SIZES) -> np.ndarray:
    """The published ``latents_classes`` (for the grid ``sizes``): int64 ``(prod(sizes), 6)``."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.int64) for n in sizes], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def factor_values() -> list[np.ndarray]:
    """Values of the 5 real factors (shape, scale, orientation, posX, posY), each ``(size,)``."""
    return _axes(LATENTS_SIZES)[1:]


# ----------------------------------------------------------------------------- geometry
# cos and sin of the orientation classes, from one table so that every caller gets equal bits.
# Class 39 (2*pi) takes the angle of class 0: the published images of both are identical.
_ANGLES = (np.arange(40) % 39) * (2 * np.pi / 39)
_COS, _SIN = np.cos(_ANGLES), np.sin(_ANGLES)
_CENTRES = 16.0 + 32.0 * np.linspace(0.0, 1.0, 32)  # shape centre (px) of position class i


def _line_offsets() -> np.ndarray:
    """Row-centre offsets from the shape centre, ``(2048,)``; line ``64 * posY + row``."""
    return ((np.arange(SIZE) + 0.5)[None, :] - _CENTRES[:, None]).ravel()


def _local_vertices(shape: int) -> np.ndarray:
    """Polygon of the square (0) or heart (2) at scale 1, ``(V, 2)`` as (x right, y down)."""
    if shape == 0:
        h = _SQUARE_HALF
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    t = np.arange(_HEART_VERTICES) * (2 * np.pi / _HEART_VERTICES)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([_HEART_SCALE[0] * x, _HEART_OFFSET - _HEART_SCALE[1] * y], axis=1)


def _ellipse_intervals(scale: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x-intervals ``(C, 2048, 1, 2)`` where each line crosses the rotated ellipse."""
    a2 = (_ELLIPSE_AXES[0] * scale)[:, None] ** 2
    b2 = (_ELLIPSE_AXES[1] * scale)[:, None] ** 2
    c, s, dy = cos[:, None], sin[:, None], _line_offsets()[None, :]
    # Local coords u = dx*c - dy*s, v = dx*s + dy*c; u^2/a2 + v^2/b2 <= 1 is quadratic in dx.
    qa = c * c / a2 + s * s / b2
    qb = 2 * dy * s * c * (1 / b2 - 1 / a2)
    qc = dy * dy * (s * s / a2 + c * c / b2) - 1
    disc = qb * qb - 4 * qa * qc
    root = np.sqrt(np.maximum(disc, 0.0))
    lo = np.where(disc >= 0, (-qb - root) / (2 * qa), 0.0)
    hi = np.where(disc >= 0, (-qb + root) / (2 * qa), -1.0)  # (0, -1): an empty interval
    return np.stack([lo, hi], axis=-1)[:, :, None, :]


def _polygon_intervals(verts: np.ndarray) -> np.ndarray:
    """x-intervals ``(C, 2048, K, 2)`` inside polygons ``verts`` ``(C, V, 2)`` (screen offsets).

    Crossings of each line with the edges (half-open in y, so a vertex counts once), sorted
    and paired by the even-odd rule; lines with fewer intervals are padded with empty ones.
    """
    n_c, n_v, _ = verts.shape
    dy = _line_offsets()
    order = np.argsort(dy, kind="stable")
    x0, y0 = verts[..., 0].ravel(), verts[..., 1].ravel()
    nxt = (np.arange(n_c * n_v) + 1) - n_v * ((np.arange(n_c * n_v) % n_v) == n_v - 1)
    x1, y1 = x0[nxt], y0[nxt]
    first = np.searchsorted(dy[order], np.minimum(y0, y1), "left")
    count = np.searchsorted(dy[order], np.maximum(y0, y1), "left") - first
    edge = np.repeat(np.arange(n_c * n_v), count)
    step = np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count)
    line = order[np.repeat(first, count) + step]
    t = (dy[line] - y0[edge]) / (y1[edge] - y0[edge])
    x = x0[edge] + t * (x1[edge] - x0[edge])
    key = (edge // n_v) * _N_LINES + line
    srt = np.lexsort((x, key))
    key, x = key[srt], x[srt]
    rank = np.arange(len(key)) - np.searchsorted(key, key, "left")
    n_k = max(1, (int(rank.max(initial=0)) + 2) // 2)
    out = np.tile(np.array([0.0, -1.0]), (n_c * _N_LINES, n_k, 1))
    out[key, rank // 2, rank % 2] = x
    return out.reshape(n_c, _N_LINES, n_k, 2)


def _combo_intervals(shape: int, scale_idx: np.ndarray, orient_idx: np.ndarray) -> np.ndarray:
    """x-intervals ``(C, 2048, K, 2)`` of one shape at scale/orientation classes ``(C,)``."""
    scale = _axes(LATENTS_SIZES)[2][scale_idx]
    cos, sin = _COS[orient_idx], _SIN[orient_idx]
    if shape == 1:
        return _ellipse_intervals(scale, cos, sin)
    lv = _local_vertices(shape)  # rotate local (u, v) to screen: dx = u c + v s, dy = v c - u s
    c, s, k = cos[:, None], sin[:, None], scale[:, None]
    dx = k * (lv[None, :, 0] * c + lv[None, :, 1] * s)
    dy = k * (lv[None, :, 1] * c - lv[None, :, 0] * s)
    return _polygon_intervals(np.stack([dx, dy], axis=-1))


def _words(xa: np.ndarray, xb: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """Row words: bit (63 - col) set iff column ``col``'s centre is in an interval.

    ``xa``, ``xb``, ``cx`` broadcast to ``(..., K)``; the K intervals are OR-ed: ``(...)`` uint64.
    """
    lo = np.clip(np.ceil(cx + xa - 0.5), 0, SIZE).astype(np.intp)
    hi = np.clip(np.floor(cx + xb - 0.5) + 1, 0, SIZE).astype(np.intp)
    words = _PREFIX[np.maximum(hi, lo)] ^ _PREFIX[lo]
    return np.bitwise_or.reduce(words, axis=-1)


def render(classes: np.ndarray) -> np.ndarray:
    """Images of factor classes ``(N, 5)`` (shape, scale, orientation, posX, posY).

    Returns uint8 ``(N, 64, 64)`` of 0/1, rows growing downward, columns rightward.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] != 5 or classes.dtype.kind not in "iu":
        raise ValueError("classes must be an integer array of shape (N, 5)")
    if (classes < 0).any() or (classes >= np.array(FACTOR_SIZES)).any():
        raise ValueError(f"factor class out of range for sizes {FACTOR_SIZES}")
    if len(classes) > _RENDER_BLOCK:  # bound the (N, 64, K, 2) temporaries
        blocks = range(0, len(classes), _RENDER_BLOCK)
        return np.concatenate([render(classes[i : i + _RENDER_BLOCK]) for i in blocks])
    words = np.zeros((len(classes), SIZE), dtype=np.uint64)
    combos, which = np.unique(classes[:, :3], axis=0, return_inverse=True)
    which = which.reshape(-1)
    for shape in np.unique(combos[:, 0]).tolist():
        sel = np.flatnonzero(combos[:, 0] == shape)  # contiguous: unique sorts the rows
        iv = _combo_intervals(shape, combos[sel, 1], combos[sel, 2])
        items = np.flatnonzero(classes[:, 0] == shape)
        lines = classes[items, 4:5] * SIZE + np.arange(SIZE)  # (n, 64)
        rows = iv[(which[items] - sel[0])[:, None], lines]  # (n, 64, K, 2)
        cx = _CENTRES[classes[items, 3]][:, None, None]
        words[items] = _words(rows[..., 0], rows[..., 1], cx)
    packed = words.astype(">u8").view(np.uint8).reshape(len(classes), PACKED_BYTES)
    return np.unpackbits(packed, axis=1).reshape(len(classes), SIZE, SIZE)


def render_grid_chunks(start: int = 0, stop: int = 720) -> Iterator[np.ndarray]:
    """Bit-packed images of (shape, scale, orientation) combinations ``start..stop-1``.

    Combination ``k`` holds images ``1024 k .. 1024 k + 1023`` of the full grid. Yields one
    uint8 ``(1024 * n, 512)`` array per run of ``n`` combinations sharing a shape and scale.
    """
    n_orient = FACTOR_SIZES[2]
    combo = start
    while combo < stop:
        shape, scale = divmod(combo // n_orient, FACTOR_SIZES[1])
        end = min(stop, (combo // n_orient + 1) * n_orient)
        orient = np.arange(combo, end) % n_orient
        iv = _combo_intervals(shape, np.full(len(orient), scale), orient)
        words = _words(iv[..., None, :, 0], iv[..., None, :, 1], _CENTRES[:, None])
        # (C, posY * 64 + row, posX) -> (C, posX, posY, row): the grid order, posY fastest.
        words = words.reshape(len(orient), FACTOR_SIZES[4], SIZE, FACTOR_SIZES[3])
        words = np.ascontiguousarray(words.transpose(0, 3, 1, 2), dtype=">u8")
        yield words.view(np.uint8).reshape(-1, PACKED_BYTES)
        combo = end


# ----------------------------------------------------------------------------- cache
def rendered_images() -> np.ndarray:
    """The full rendered grid, bit-packed, ``(737280, 512)`` uint8 (memory-mapped cache)."""
    path = cache_dir() / f"dsprites-rendered-v{RENDER_VERSION}.npy"
    return _cached(path, (N_IMAGES, PACKED_BYTES), render_grid_chunks, "rendering 737280 images")


# ----------------------------------------------------------------------------- real .npz
# The npz is a zip of .npy members; we read them with zipfile and the .npy header parser, so
# nothing is ever unpickled (like np.load(allow_pickle=False)) and "metadata.npy" (a pickled
# dict) is never opened.
def _fail(file: Path | str, problem: str) -> DataError:
    return DataError(f"dSprites file {file}: {problem}; use the unmodified {NPZ_NAME} from {URL}")


def _npz_path(path: str | os.PathLike) -> Path:
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / NPZ_NAME
    if not file.is_file():
        raise DataError(f"dSprites file {file} not found; download {NPZ_NAME} from {URL}")
    return file


def _open_member(zf: zipfile.ZipFile, name: str, file: Path) -> tuple[tuple, np.dtype, BinaryIO]:
    """Open ``name.npy`` in the npz as a stream: (shape, dtype, stream positioned at the data)."""
    try:
        stream = zf.open(f"{name}.npy")
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (KeyError, *NPY_HEADER_ERRORS, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise _fail(file, f"cannot read its {name!r} array ({err})") from None
    if fortran or dtype.hasobject:
        stream.close()
        raise _fail(file, f"{name} is stored as {'Fortran-order' if fortran else 'object'} data")
    return shape, dtype, stream


def _read_exact(stream: BinaryIO, count: int, file: Path, name: str) -> bytes:
    try:
        data = stream.read(count)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # bad CRC, deflate
        raise _fail(file, f"{name} cannot be read ({err})") from None
    if len(data) != count:
        raise _fail(file, f"{name} is truncated")
    return data


def _read_latents(file: Path, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``latents_classes`` and ``latents_values`` of the npz, shapes checked against ``(n, k)``."""
    out = []
    with zipfile.ZipFile(file) as zf:
        for name, kind, expect in (
            ("latents_classes", "iu", "int"),
            ("latents_values", "f", "float"),
        ):
            shape, dtype, stream = _open_member(zf, name, file)
            with stream:
                if shape != (n, k) or dtype.kind not in kind:
                    raise _fail(file, f"{name} is {dtype} {shape}, expected {expect} {(n, k)}")
                data = _read_exact(stream, n * k * dtype.itemsize, file, name)
            out.append(np.frombuffer(data, dtype=dtype).reshape(n, k))
    return out[0], out[1]


def _validate_latents(
    file: Path | str, classes: np.ndarray, values: np.ndarray, sizes: Sequence[int]
) -> None:
    """Raise `DataError` unless the latents are the published grid of ``sizes``."""
    if not np.array_equal(classes, latents_classes(sizes)):
        raise _fail(file, f"latents_classes are not the grid of sizes {list(sizes)}, posY fastest")
    if not np.allclose(values, latents_values(sizes), rtol=0, atol=1e-6):
        raise _fail(file, "latents_values differ from the published factor values")


def _packed_npz_chunks(file: Path, n: int, rows: int = 16384) -> Iterator[np.ndarray]:
    """Stream ``imgs`` out of the (compressed) npz, checked and bit-packed: ``(rows, 512)``."""
    with zipfile.ZipFile(file) as zf:
        shape, dtype, stream = _open_member(zf, "imgs", file)
        with stream:
            if shape != (n, SIZE, SIZE) or dtype != np.uint8:
                raise _fail(file, f"imgs is {dtype} {shape}, expected uint8 {(n, SIZE, SIZE)}")
            for start in range(0, n, rows):
                count = min(rows, n - start) * SIZE * SIZE
                data = _read_exact(stream, count, file, "imgs")
                img = np.frombuffer(data, dtype=np.uint8).reshape(-1, SIZE * SIZE)
                if img.max(initial=0) > 1:
                    raise _fail(file, "imgs holds values other than 0 and 1")
                yield np.packbits(img, axis=1)


def _read_npz(file: Path, sizes: Sequence[int] = LATENTS_SIZES) -> np.ndarray:
    """Validate the npz at ``file`` and return its images bit-packed, ``(N, 512)`` uint8.

    The packed images are cached under `cache_dir`, keyed by the file's size and mtime.
    """
    n = int(np.prod(sizes))
    try:
        with zipfile.ZipFile(file) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile) as err:
        raise _fail(file, f"not a readable .npz archive ({err})") from None
    missing = [k for k in ("imgs", "latents_classes", "latents_values") if f"{k}.npy" not in names]
    if missing:
        raise _fail(file, f"arrays {missing} are missing, expected imgs and latents_*")
    classes, values = _read_latents(file, n, len(sizes))
    _validate_latents(file, classes, values, sizes)
    st = file.stat()
    path = cache_dir() / f"dsprites-npz-{st.st_size}-{st.st_mtime_ns}-v{_PACK_VERSION}.npy"
    return _cached(path, (n, PACKED_BYTES), lambda: _packed_npz_chunks(file, n), f"packing {file}")


# ----------------------------------------------------------------------------- dataset
class DSprites(GridDataset):
    """dSprites: 737,280 binary 64x64 images on the grid shape x scale x orientation x posX x posY.

    Args:
        packed_images: ``(737280, 512)`` uint8, each row one image bit-packed by ``np.packbits``
            (row-major 64x64), in the published order (posY fastest).
    """

    info = DatasetInfo("dsprites", (1, SIZE, SIZE), "bernoulli")

    def __init__(self, packed_images: np.ndarray) -> None:
        super().__init__(packed_images, self.info, True, FACTOR_NAMES, factor_values())


@DATASETS.register("dsprites")
def load_dsprites(
    path: str | None = None, img_size: int | None = None, workers: int | None = None
) -> DSprites:
    """dSprites from our renderer (``path`` None) or from DeepMind's ``.npz`` (file or folder).

    Either way the packed images are cached once and memory-mapped on later runs. The images
    are 64x64 only (``img_size`` other than None or 64 is an error); ``workers`` is unused.
    """
    if img_size not in (None, SIZE):
        raise DataError(f"dSprites images are {SIZE}x{SIZE}; img_size {img_size} is not available")
    if path is None:
        images = rendered_images()
        return with_source(DSprites(images), [], images)
    file = _npz_path(path)
    images = _read_npz(file)
    return with_source(DSprites(images), [file], images)
