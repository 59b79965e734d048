"""Datasets of image files: CelebA, 3D Chairs and any folder of images.

Each file is decoded once (in parallel worker processes), cropped, resized to ``img_size`` and
written to the uint8 cache; later runs memory-map the cache and never decode again.

- ``celeba``: CelebA's aligned-and-cropped faces, ``img_align_celeba/*.jpg``, 202,599 JPEGs of
  178x218 (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "Align&Cropped Images"). The
  central 140x140 square is cut and resized to 64x64, the preprocessing of Tolstikhin et al.
  2018 (WAE, Sec. 4: "we pre-process CelebA images by first taking a 140x140 center crop and
  then resizing to the 64x64 resolution"), which keeps the face and drops most background.
  When the attribute table ``list_attr_celeba.txt`` (or Kaggle's ``list_attr_celeba.csv``) lies
  beside ``img_align_celeba/`` or in ``Anno/``, its 40 binary attributes (Liu et al. 2015) are
  the factors (classes 0 = -1, 1 = 1): the metrics on codes (MIG, SAP, DCI, ...) then apply.
- ``chairs``: the 3D Chairs renders of Aubry et al. 2014,
  ``rendered_chairs/<chair>/renders/*.png``, 86,366 PNGs of 600x600 on a plain background
  (https://www.di.ens.fr/willow/research/seeing3Dchairs/). Converted to greyscale and resized to
  64x64, one channel, as disentangling-vae's Chairs dataset (``img_size = (1, 64, 64)``). Each
  chair is rendered from 62 viewpoints, 31 azimuths by 2 elevations (20 and 30 degrees) at one
  distance (Aubry et al. 2014; Dosovitskiy et al. 2015, "Learning to Generate Chairs"), written
  in the file names, ``image_<view>_p<elevation>_t<azimuth>_r<distance>.png``: elevation and
  azimuth are the factors (classes: their distinct values), so the metrics on codes apply to the
  pose. The chair itself (1,393 models of 62 images) is not a factor: too many classes of too
  few images for the metrics' classifiers.
- ``folder``: every file PIL can read under ``path``, recursively, any size or format; the
  largest centred square is cut and resized to ``img_size`` (default 64), RGB.

Default likelihood: Bernoulli for all three, as disentangling-vae and Burgess et al. 2018 train
on CelebA and Chairs (pass ``--rec-dist gaussian`` for a Gaussian).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from disvae.data.base import ArrayDataset, DatasetInfo
from disvae.data.cache import cached_source, with_source
from disvae.data.ground_truth import LabeledDataset
from disvae.data.images import Crop, decode_many, image_files
from disvae.data.registry import DATASETS
from disvae.errors import DataError

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CHAIRS_URL = "https://www.di.ens.fr/willow/research/seeing3Dchairs/"
CELEBA_CROP = 140  # side of the central square (Tolstikhin et al. 2018)
DEFAULT_SIZE = 64
_VERSION = 2  # 2: EXIF orientation applied, 16-bit images scaled


def files_dataset(
    name: str,
    files: list[Path],
    size: int,
    channels: int,
    crop: Crop,
    workers: int | None,
    rec_dist: str = "bernoulli",
) -> ArrayDataset:
    """Images ``files`` decoded (cropped by ``crop``, resized to ``size``) through the cache."""
    if size < 1:
        raise DataError(f"{name}: img_size must be positive, got {size}")
    shape = (len(files), channels, size, size)
    crops = [(crop,)] * len(files)

    def produce():
        try:
            yield from decode_many(files, size, channels, crops, workers)
        except DataError as err:  # name the dataset and say what to do
            raise DataError(f"{name}: {err}; {_REMEDY[name]}") from None

    images = cached_source(name, files, shape, produce, crop=crop, v=_VERSION)
    ds = ArrayDataset(images, DatasetInfo(name, shape[1:], rec_dist), packed=False)
    return with_source(ds, files, images, _VERSION)


_REMEDY = {
    "celeba": f"use the unmodified images from {CELEBA_URL}",
    "chairs": f"use the unmodified renders from {CHAIRS_URL}",
    "folder": "remove or replace that file",
}


def _under(path: str | None, folder: str) -> Path:
    """``path`` itself when it is named ``folder``, else ``path/folder``."""
    root = Path(path or "").expanduser()
    return root if root.name == folder else root / folder


@DATASETS.register("celeba")
def load_celeba(
    path: str | None, img_size: int | None = None, workers: int | None = None
) -> ArrayDataset:
    """CelebA faces from ``path`` (the folder holding ``img_align_celeba/``, or that folder);
    with the 40 binary attributes as factors when ``list_attr_celeba.txt`` (or Kaggle's
    ``list_attr_celeba.csv``) lies beside that folder or in its ``Anno/``."""
    root = _under(path, "img_align_celeba")
    if (root / "img_align_celeba").is_dir() and not any(root.glob("*.jpg")):
        root = root / "img_align_celeba"  # Kaggle's copy: img_align_celeba/img_align_celeba/
    files = sorted(root.glob("*.jpg")) if root.is_dir() else []
    if not files:
        raise DataError(
            f"CelebA: no .jpg files in {str(root)!r}; expected img_align_celeba/*.jpg (the "
            f"'Align&Cropped Images' 178x218 JPEGs) from {CELEBA_URL}"
        )
    data = files_dataset("celeba", files, img_size or DEFAULT_SIZE, 3, CELEBA_CROP, workers)
    table = celeba_attributes_file(root.parent)
    if table is None:
        return data
    names, values = read_celeba_attributes(table, [f.name for f in files])
    return _with_factors(data, names, values, [True] * len(names), source=table)


def _with_factors(
    data: ArrayDataset,
    names: Sequence[str],
    values: np.ndarray,
    categorical: Sequence[bool],
    source: Path | None = None,
) -> LabeledDataset:
    """``data`` (from `files_dataset`) as a `LabeledDataset` of the same images, cache and
    preprocessing version; ``source``, the file the factors come from, joins its sources."""
    labelled = LabeledDataset(data._images, data.info, False, names, values, categorical)
    labelled.files = (*data.files, *([str(source)] if source is not None else []))
    labelled.cache_file, labelled.preprocessing = data.cache_file, data.preprocessing
    return labelled


CELEBA_ATTRIBUTES = ("list_attr_celeba.txt", "list_attr_celeba.csv")


def celeba_attributes_file(root: Path) -> Path | None:
    """CelebA's attribute table in ``root`` (beside ``img_align_celeba/``), ``root/Anno``, or
    one folder up (Kaggle's copy nests ``img_align_celeba/img_align_celeba/``)."""
    for folder in (root, root / "Anno", root.parent):
        for name in CELEBA_ATTRIBUTES:
            if (folder / name).is_file():
                return folder / name
    return None


def read_celeba_attributes(file: Path, images: list[str]) -> tuple[list[str], np.ndarray]:
    """The attribute names (40) and values ``(len(images), 40)``, 0 or 1, of the images named
    ``images``, from CelebA's ``list_attr_celeba.txt`` (a count line, a line of names, then an
    image name and one 1 or -1 per attribute on each line, space-aligned) or Kaggle's CSV of the
    same (``image_id,`` then the names; one row per image)."""

    def fail(problem: str) -> DataError:
        return DataError(
            f"CelebA attributes {file}: {problem}; use the unmodified list_attr_celeba.txt from "
            f"{CELEBA_URL}, or remove it to load the images without factors"
        )

    try:
        lines = file.read_text(encoding="utf-8-sig", errors="strict").splitlines()  # -sig: a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise fail(f"cannot be read ({err})") from None
    if file.suffix == ".csv":
        rows = [[cell.strip() for cell in line.split(",")] for line in lines if line.strip()]
        if not rows or rows[0][0] != "image_id":
            raise fail("the first line is not 'image_id,' and the attribute names")
        names, body = rows[0][1:], rows[1:]
    else:
        if len(lines) < 2 or not lines[0].strip().isdecimal():  # (isdigit: '²', not an int)
            raise fail("the first line is not the number of images")
        names, body = lines[1].split(), [line.split() for line in lines[2:] if line.strip()]
        if len(body) != int(lines[0]):
            raise fail(f"the first line says {int(lines[0])} images, the table has {len(body)}")
    if len(set(names)) != len(names) or not names:
        raise fail("its attribute names are missing or repeated")
    table: dict[str, list[str]] = {}
    for row in body:
        if len(row) != len(names) + 1:
            raise fail(f"the row of {row[0]!r} has {len(row) - 1} values for {len(names)} names")
        table[row[0]] = row[1:]
    missing = [name for name in images if name not in table]
    if missing:
        raise fail(f"no attributes for {len(missing)} image(s), e.g. {missing[0]!r}")
    values = np.array([table[name] for name in images])
    if not np.isin(values, ("1", "-1")).all():
        raise fail("values other than 1 and -1")
    return names, (values == "1").astype(np.float64)


@DATASETS.register("chairs")
def load_chairs(
    path: str | None, img_size: int | None = None, workers: int | None = None
) -> ArrayDataset:
    """3D Chairs from ``path`` (the folder holding ``rendered_chairs/``, or that folder), with
    the elevation and azimuth of each render as its factors (`chairs_pose`)."""
    root = _under(path, "rendered_chairs")
    files = sorted(root.glob("*/renders/*.png")) if root.is_dir() else []
    if not files:
        raise DataError(
            f"3D Chairs: no rendered_chairs/*/renders/*.png under {str(root)!r}; expected the "
            f"extracted rendered_chairs.tar from {CHAIRS_URL}"
        )
    data = files_dataset("chairs", files, img_size or DEFAULT_SIZE, 1, None, workers)
    pose = chairs_pose(files)
    return data if pose is None else _with_factors(data, CHAIRS_FACTORS, pose, (True, True))


CHAIRS_FACTORS = ("elevation", "azimuth")
_CHAIRS_VIEW = re.compile(r"image_\d+_p(\d+)_t(\d+)_r\d+\.png")


def chairs_pose(files: list[Path]) -> np.ndarray | None:
    """Elevation and azimuth in degrees, ``(N, 2)``, of 3D Chairs renders, read from their names
    (``image_031_p020_t348_r096.png``: elevation 20, azimuth 348); None, with a warning, when a
    name does not follow that pattern (the images then load without factors)."""
    pose = np.zeros((len(files), 2))
    for i, file in enumerate(files):
        match = _CHAIRS_VIEW.fullmatch(file.name)
        if match is None:
            warnings.warn(
                f"3D Chairs: {file.name!r} is not named image_<view>_p<elevation>_t<azimuth>_"
                "r<distance>.png as the published renders are; loading the images without their "
                "pose factors",
                stacklevel=3,
            )
            return None
        pose[i] = int(match[1]), int(match[2])
    return pose


@DATASETS.register("folder")
def load_folder(
    path: str | None, img_size: int | None = None, workers: int | None = None
) -> ArrayDataset:
    """Every image under folder ``path`` (recursive), centre-cropped square, RGB."""
    if path is None:
        raise DataError("folder dataset: no --data-path given; pass --data-path DIR, a folder of "
                        "images")  # fmt: skip
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"folder dataset: {str(root)!r} is not a folder; pass --data-path DIR")
    files = image_files(root)
    if not files:
        raise DataError(f"folder dataset: no image files PIL can read under {str(root)!r}")
    return files_dataset("folder", files, img_size or DEFAULT_SIZE, 3, None, workers)
