"""The preprocessed-image cache: one uint8 ``.npy`` per dataset source, memory-mapped.

Decoding JPEGs or PNGs (CelebA, 3D Chairs, image folders) costs far more than training reads;
the decoded, resized images are written once as a plain ``.npy`` and every later run or epoch
memory-maps it. A cache file is named by a hash of everything that determines its pixels (the
dataset, the resolved source path, each source file's size and mtime, the image size and a
format version), so an edited source or another size gets a new file and a stale one is never
read. Files are written to a temporary name, fsynced and renamed, so a crash leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import tokenize
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from disvae.errors import DataError

logger = logging.getLogger(__name__)

# What numpy's ``.npy`` header parser raises on a damaged header: ValueError mostly, but a header
# that is not a Python literal is retried through `tokenize` (to drop Python 2's "3L" ints),
# which raises TokenError or IndentationError (a SyntaxError).
NPY_HEADER_ERRORS = (ValueError, SyntaxError, tokenize.TokenError)


def cache_dir() -> Path:
    """Where preprocessed images are kept: ``$DISVAE_CACHE`` or ``~/.cache/disvae``."""
    env = os.environ.get("DISVAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "disvae"


def source_key(name: str, files: Sequence[Path], **params: Any) -> Path:
    """Cache path for dataset ``name`` built from ``files`` with ``params`` (img_size, ...).

    The key hashes each file's resolved path, size and mtime, so touching a source file or
    asking for another size gives another cache file.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"name": name, **params}, sort_keys=True, default=str).encode())
    for f in files:
        try:
            st = f.stat()
        except OSError as err:  # a link to nothing or a loop of links (a glob lists them)
            raise DataError(
                f"{name}: {f} cannot be read ({err.strerror}); restore that file or remove it"
            ) from None
        # surrogateescape: a file name that is not UTF-8 (a Latin-1 name from an old archive)
        h.update(
            f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape")
        )
    return cache_dir() / f"{name}-{h.hexdigest()[:20]}.npy"


def open_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached ``.npy`` at ``path`` memory-mapped read-only, or None (missing or broken)."""
    if not path.exists():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):  # a file that starts like a zip
            arr.close()
        ok = (
            isinstance(arr, np.memmap)
            and arr.shape == tuple(shape)
            and arr.dtype == np.uint8
            and arr.flags.c_contiguous  # the rows as the writer wrote them (not Fortran order)
            and path.stat().st_size == arr.offset + arr.nbytes
        )
    except (*NPY_HEADER_ERRORS, OSError, EOFError, zipfile.BadZipFile):
        ok = False
    if not ok:
        warnings.warn(f"cache {path} is incomplete or corrupt; rebuilding it", stacklevel=3)
        return None
    return arr


# A temp file untouched this long was left by a writer that was killed (a live one writes a
# chunk every few seconds); it may be as large as the cache (377 MB for dSprites).
STALE_TEMP_SECONDS = 3600


def remove_stale_temps(path: Path) -> None:
    """Remove the temp files of ``path``'s cache that killed writers left behind (by age, not
    by process id: the cache may be shared by several machines)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
                logger.info("removed %s, left by a cache writer that was stopped", tmp)
        except OSError:
            pass  # gone meanwhile, or not ours to remove: the new cache is written all the same


def write_npy_atomic(path: Path, shape: tuple[int, ...], chunks: Iterable[np.ndarray]) -> None:
    """Write uint8 ``chunks`` (rows of ``shape``) as one ``.npy``: temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
            np.lib.format.write_array_header_1_0(f, header)
            rows = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
                if chunk.shape[1:] != tuple(shape[1:]):
                    raise RuntimeError(f"chunk of shape {chunk.shape} for an array {shape}")
                f.write(chunk.data)
                rows += len(chunk)
            if rows != shape[0]:
                raise RuntimeError(f"produced {rows} rows, expected {shape[0]}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached(
    path: Path, shape: tuple[int, ...], produce: Callable[[], Iterable[np.ndarray]], what: str
) -> np.ndarray:
    """Rows of ``shape`` from the cache at ``path``, building it with ``produce()`` if needed.

    ``produce()`` yields uint8 chunks ``(n_i, *shape[1:])`` whose lengths add up to
    ``shape[0]``. Returns a read-only memory map (in memory if the cache cannot be written).
    """
    arr = open_npy(path, shape)
    if arr is not None:
        logger.debug("memory-mapping the cache %s", path)
        return arr
    logger.info("%s into %s (once; later runs memory-map it)", what, path)
    start = time.perf_counter()
    try:
        write_npy_atomic(path, shape, produce())
    except OSError as err:
        warnings.warn(f"cannot write the cache {path} ({err}); keeping it in memory", stacklevel=3)
        return np.concatenate(list(produce()))
    logger.info("%s took %.1f s", what, time.perf_counter() - start)
    arr = open_npy(path, shape)
    if arr is None:
        raise DataError(f"the cache {path} was written but cannot be read back")
    return arr


def cached_source(
    name: str,
    files: Sequence[Path],
    shape: tuple[int, ...],
    produce: Callable[[], Iterable[np.ndarray]],
    **params: Any,
) -> np.ndarray:
    """`cached` under the `source_key` of ``name``, ``files`` and ``params`` (see there)."""
    path = source_key(name, files, shape=list(shape), **params)
    return cached(path, shape, produce, f"{name}: preprocessing {shape[0]} images")


def with_source(dataset: Any, files: Sequence[Path], images: np.ndarray, version: int = 1) -> Any:
    """Record on ``dataset`` the source ``files``, the cache file behind ``images`` and the
    ``version`` of the preprocessing that made them (`ArrayDataset.preprocessing`)."""
    dataset.files = tuple(str(f) for f in files)
    dataset.preprocessing = int(version)
    dataset.cache_file = str(images.filename) if isinstance(images, np.memmap) else None
    return dataset
