"""Stacked multi-patch inputs: each sample is an image plus named patches cut from it.

An index file (JSON or CSV, specified in docs/data.md) lists, per sample, an image file
(relative to the index's folder), a box per patch (``left top width height`` in pixels; no box:
the whole image, centre-cropped square) and regressed factors (e.g. gaze_x, gaze_y, scale).

Every patch is resized to the same ``img_size`` square (default 64) in RGB and the patches are
stacked along channels: a sample is uint8 ``(P*3, S, S)``, patch ``i`` in channels
``[3i, 3i+3)``, and ``DatasetInfo.patches`` names them in order. The factors are continuous:
`LabeledDataset` keeps them raw and in 20 equal-width bins for the code-based metrics.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from disvae.data.base import ArrayDataset, DatasetInfo
from disvae.data.cache import cached_source, with_source
from disvae.data.ground_truth import LabeledDataset
from disvae.data.images import decode_many
from disvae.data.registry import DATASETS
from disvae.errors import DataError

INDEX_NAMES = ("index.json", "index.csv")
CHANNELS = 3
DEFAULT_SIZE = 64
_VERSION = 2  # 2: EXIF orientation applied, 16-bit images scaled
_SPEC = "see docs/data.md ('stacked') for the index format"


class Index:
    """A parsed index: patch and factor names, and per sample its file, crops and factors."""

    def __init__(self, file: Path, patches: list[str], factors: list[str]) -> None:
        self.file, self.patches, self.factors = file, patches, factors
        self.images: list[Path] = []
        self.crops: list[tuple[Any, ...]] = []  # per sample, one crop per patch
        self.values: list[list[float]] = []

    def fail(self, problem: str) -> DataError:
        return DataError(f"stacked index {self.file}: {problem}; {_SPEC}")

    def add(self, where: str, image: Any, boxes: dict[str, Any], values: list[Any]) -> None:
        """Check and append one sample (``where`` names it in messages: a JSON index's
        ``sample N``, a CSV index's ``row N``, its line in the file)."""
        if not isinstance(image, str) or not image:
            raise self.fail(f"{where} has no image file")
        unknown = set(boxes) - set(self.patches)
        if unknown:
            raise self.fail(f"{where} has boxes for unknown patches {sorted(unknown)}")
        self.images.append(self.file.parent / image)
        self.crops.append(tuple(self._box(where, boxes.get(p)) for p in self.patches))
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError, OverflowError):  # Overflow: an int beyond any float
            raise self.fail(f"{where} has a factor that is not a number: {values}") from None
        if len(floats) != len(self.factors) or not all(map(math.isfinite, floats)):
            raise self.fail(f"{where} needs finite values for factors {self.factors}")
        self.values.append(floats)

    def _box(self, where: str, box: Any) -> tuple[int, int, int, int] | None:
        if box is None or box == "" or box == []:
            return None
        parts = box.split() if isinstance(box, str) else box
        try:
            left, top, width, height = (int(round(float(v))) for v in parts)
        except (TypeError, ValueError, OverflowError):  # Overflow: inf, 1e400, 10**400
            raise self.fail(f"{where}: box {box!r} is not 'left top width height'") from None
        if width < 1 or height < 1:
            raise self.fail(f"{where}: box {box!r} is empty")
        return left, top, left + width, top + height


def _names(index_file: Path, obj: Any, key: str) -> list[str]:
    names = obj.get(key, []) if isinstance(obj, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"stacked index {index_file}: {key!r} must be a list of names; {_SPEC}")
    if len(set(names)) != len(names):
        raise DataError(f"stacked index {index_file}: {key!r} repeats a name")
    return names


def parse_json(file: Path) -> Index:
    """Read a JSON index: ``{"patches": [...], "factors": [...], "samples": [...]}``."""
    try:
        obj = json.loads(file.read_text(encoding="utf-8-sig"))  # JSON is UTF-8; -sig: a BOM
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"stacked index {file} is not readable JSON ({err}); {_SPEC}") from None
    index = Index(file, _names(file, obj, "patches"), _names(file, obj, "factors"))
    samples = obj.get("samples")
    if not isinstance(samples, list):
        raise index.fail("'samples' must be a list")
    for row, s in enumerate(samples):
        if not isinstance(s, dict):
            raise index.fail(f"sample {row} is not an object")
        boxes, values = s.get("boxes") or {}, s.get("factors") or {}
        if not isinstance(boxes, dict) or not isinstance(values, dict):
            raise index.fail(f"sample {row}: 'boxes' and 'factors' must be objects")
        unknown = sorted(set(values) - set(index.factors))
        if unknown:
            raise index.fail(f"sample {row} has factors the index does not declare: {unknown}")
        index.add(f"sample {row}", s.get("image"), boxes, [values.get(f) for f in index.factors])
    return index


def parse_csv(file: Path) -> Index:
    """Read a CSV index: columns ``image``, ``patch:NAME`` (one per patch), then factors."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:  # (Excel's CSV has a BOM)
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"stacked index {file} is not readable CSV ({err}); {_SPEC}") from None
    header = [h.strip() for h in rows[0]] if rows else []
    if not header or header[0] != "image":
        raise DataError(f"stacked index {file}: the first column must be 'image'; {_SPEC}")
    unnamed = [i + 1 for i, h in enumerate(header) if h in ("", "patch:")]
    if unnamed:  # (a trailing comma on the header line makes an empty last column)
        raise DataError(f"stacked index {file}: header column {unnamed[0]} has no name; {_SPEC}")
    patches = [h[len("patch:") :] for h in header[1:] if h.startswith("patch:")]
    factors = [h for h in header[1:] if not h.startswith("patch:")]
    index = Index(file, _names(file, {"p": patches}, "p"), _names(file, {"f": factors}, "f"))
    for row, cells in enumerate(rows[1:]):
        if not any(c.strip() for c in cells):
            continue  # a blank line (an editor's last one, or between blocks of rows)
        if len(cells) != len(header):
            raise index.fail(f"row {row + 2} has {len(cells)} cells, the header {len(header)}")
        cell = dict(zip(header, cells, strict=True))
        boxes = {p: cell[f"patch:{p}"].strip() for p in patches}
        index.add(f"row {row + 2}", cell["image"].strip(), boxes, [cell[f] for f in factors])
    return index


def read_index(path: str | None) -> Index:
    """The index at ``path``: a ``.json``/``.csv`` file, or a folder holding ``index.json/csv``."""
    file = Path(path or "").expanduser()
    if file.is_dir():
        file = next((file / n for n in INDEX_NAMES if (file / n).is_file()), file / INDEX_NAMES[0])
    if not file.is_file():
        where = " (no --data-path given: looked in the current directory)" if not path else ""
        raise DataError(f"stacked dataset: index file {str(file)!r} not found{where}; {_SPEC}")
    index = parse_csv(file) if file.suffix.lower() == ".csv" else parse_json(file)
    if not index.patches:
        raise index.fail("it names no patches")
    if not index.images:
        raise index.fail("it lists no samples")
    missing = [p for p in index.images if not p.is_file()]
    if missing:
        raise index.fail(f"{len(missing)} image files are missing, e.g. {missing[0]}")
    return index


@DATASETS.register("stacked")
def load_stacked(
    path: str | None, img_size: int | None = None, workers: int | None = None
) -> ArrayDataset:
    """Multi-patch samples from an index: uint8 ``(N, P*3, S, S)``, continuous factors (a
    `LabeledDataset`; a plain `ArrayDataset` when the index names no factors)."""
    size = img_size or DEFAULT_SIZE
    index = read_index(path)
    shape = (len(index.images), len(index.patches) * CHANNELS, size, size)

    def produce():
        return decode_many(index.images, size, CHANNELS, index.crops, workers)

    # The index is part of the key: its boxes decide the pixels.
    files = [index.file, *index.images]
    images = cached_source("stacked", files, shape, produce, v=_VERSION)
    info = DatasetInfo("stacked", shape[1:], "bernoulli", patches=tuple(index.patches))
    if not index.factors:  # no ground truth: a dataset without factors (as celeba, folder)
        return with_source(ArrayDataset(images, info, False), files, images, _VERSION)
    values = np.array(index.values, dtype=np.float64).reshape(len(index.images), -1)
    categorical = [False] * len(index.factors)
    ds = LabeledDataset(images, info, False, index.factors, values, categorical)
    return with_source(ds, files, images, _VERSION)
