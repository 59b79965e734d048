"""Image files to uint8 arrays: crop, resize, and decode many files in worker processes.

Every image-file dataset (CelebA, 3D Chairs, image folders, stacked patches) goes through
`decode_crops`: open the file with PIL, convert to greyscale or RGB, cut one or more crops,
resize each to ``size x size`` with a Lanczos filter (PIL's former ANTIALIAS, which the
disentangling-vae preprocessing uses), and stack them along channels. `decode_many` runs it over
a list of files in a process pool and yields chunks in file order, ready for the cache writer.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from disvae.errors import DataError

logger = logging.getLogger(__name__)

# A crop: None (the largest centred square), an int k (the centred k x k square), or a box
# (left, top, right, bottom) in pixels, as PIL's Image.crop takes it.
Crop = int | tuple[int, int, int, int] | None
CHUNK = 256  # images per chunk handed to the cache writer


# Formats Pillow registers that are not pictures to train on, or that it cannot decode by
# itself: PostScript (needs Ghostscript), the stubs of scientific containers (BUFR, GRIB, HDF5),
# MPEG (identified, not decoded), WMF (Windows only), IPTC metadata. Save-only formats (PDF,
# Palm) are left out anyway: Pillow has no opener for them.
NOT_IMAGES = frozenset({"EPS", "BUFR", "GRIB", "HDF5", "MPEG", "WMF", "IPTC"})


def image_extensions() -> set[str]:
    """The file extensions (lower case, with the dot) of formats this Pillow opens as images,
    plugins such as pillow-heif included."""
    Image.init()
    return {
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if (fmt in Image.OPEN or fmt == "MPO") and fmt not in NOT_IMAGES  # MPO: a JPEG
    }


def image_files(root: Path, pattern: str = "**/*") -> list[Path]:
    """Image files (`image_extensions`) under ``root`` matching ``pattern``, sorted; other
    files are skipped."""
    exts = image_extensions()
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() in exts and p.is_file())


def crop_box(width: int, height: int, crop: Crop) -> tuple[int, int, int, int]:
    """The pixel box ``(left, top, right, bottom)`` of ``crop`` in a ``width x height`` image."""
    if crop is None or isinstance(crop, int):
        side = min(width, height) if crop is None else crop
        if side > min(width, height):
            raise ValueError(f"a centred {side}x{side} crop of a {width}x{height} image")
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side
    left, top, right, bottom = (int(v) for v in crop)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"box {crop} outside the {width}x{height} image")
    return left, top, right, bottom


def to_array(img: Image.Image, size: int) -> np.ndarray:
    """A PIL image (L or RGB) resized to ``size x size`` as uint8 ``(C, size, size)``."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# EXIF orientation -> the transposition that shows the picture upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright_8bit(im: Image.Image) -> Image.Image:
    """``im`` as it is meant to be seen: turned by its EXIF orientation (a phone's photo is
    stored sideways with a tag saying so), and 16-bit greyscale (16-bit PNGs, TIFFs) scaled to
    8 bits (Pillow's own conversion would clip every value above 255 to white). A 32-bit
    integer image is taken as 16-bit data when a value exceeds 255, else kept as it is; a 32-bit
    float image as values in [0, 1] when none exceeds 1 (Pillow would clip them to black), else
    in 0..255."""
    im.load()  # (a PNG may keep its EXIF after the pixels)
    orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    # Not ImageOps.exif_transpose: it also re-packs the EXIF block without the tag, which raises
    # struct.error or AttributeError on a damaged tag that the pixels never needed.
    if isinstance(orientation, int) and orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    if im.mode.startswith("I;16"):  # 16-bit greyscale: the top 8 bits
        return Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    if im.mode == "I":  # 32-bit ints: 16-bit data when above 255, else 8-bit values as they are
        arr = np.asarray(im).astype(np.int64)
        arr = np.clip(arr, 0, 65535) >> 8 if arr.max(initial=0) > 255 else np.clip(arr, 0, 255)
        return Image.fromarray(arr.astype(np.uint8), "L")
    if im.mode == "F":  # 32-bit floats (scientific TIFFs): in [0, 1] scaled to 255, else 0..255
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("its pixels hold NaN or infinite values")
        arr = arr * 255 if arr.max(initial=0) <= 1 else arr
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    return im


def decode_crops(path: str, size: int, channels: int, crops: Sequence[Crop]) -> np.ndarray:
    """The crops of image file ``path``, each resized, stacked: uint8 ``(len(crops)*C, S, S)``.

    Raises `DataError` naming the file when it cannot be decoded or a crop does not fit.
    """
    try:
        with Image.open(path) as im:
            im = _upright_8bit(im).convert("L" if channels == 1 else "RGB")
            parts = [to_array(im.crop(crop_box(*im.size, c)), size) for c in crops]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"image {path} cannot be used: {err}") from None
    return np.concatenate(parts, axis=0)


def _decode_task(task: tuple[str, int, int, Sequence[Crop]]) -> np.ndarray:
    return decode_crops(*task)


def resolve_workers(workers: int | None) -> int:
    """Worker processes to use: ``workers`` or, when None, every CPU."""
    return max(1, workers if workers is not None else (os.cpu_count() or 1))


def decode_many(
    paths: Sequence[Path], size: int, channels: int, crops: Sequence[Sequence[Crop]],
    workers: int | None = None,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Decode ``paths[i]`` with ``crops[i]``; yield uint8 chunks ``(n, P*C, S, S)`` in order.

    With more than one worker the files are decoded in a process pool (fork where the platform
    has it: the workers only run PIL and NumPy). A progress bar is shown on a terminal only.
    """
    tasks = [(str(p), size, channels, tuple(c)) for p, c in zip(paths, crops, strict=True)]
    n_workers = min(resolve_workers(workers), len(tasks))
    bar = _progress(len(tasks))
    try:
        if n_workers <= 1:
            yield from _chunks(map(_decode_task, tasks), bar)
            return
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else methods[0])
        with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
            chunksize = max(1, min(64, len(tasks) // (4 * n_workers)))
            yield from _chunks(pool.map(_decode_task, tasks, chunksize=chunksize), bar)
    finally:
        if bar is not None:
            bar.close()


def _chunks(arrays: Iterator[np.ndarray], bar) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for arr in arrays:
        buf.append(arr)
        if bar is not None:
            bar.update(1)
        if len(buf) == CHUNK:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def _progress(total: int):
    """A tqdm bar on stderr when it is a terminal, else None (a quiet library)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="decoding images", unit="img", leave=False)


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` (C 1 or 3) resized to ``(N, C, size, size)`` with Lanczos."""
    if images.shape[2:] == (size, size):
        return images
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
        out[i] = to_array(pil, size)
    return out
