"""Every dataset loader on tiny fixture files written here in the real on-disk format."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from disvae import config as C
from disvae.data import (
    GridDataset,
    LabeledDataset,
    cifar,
    describe,
    images,
    load_data,
    load_dataset,
    plain_pickle,
    shapes3d,
)
from disvae.data.base import DatasetInfo
from disvae.errors import DataError

RNG = np.random.default_rng(0)


def blobs(n: int, h: int, w: int, c: int = 1) -> np.ndarray:
    """``n`` uint8 ``(H, W, C)`` images: a bright disc at a position that depends on i."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w, c), dtype=np.uint8)
    for i in range(n):
        cy, cx = h * (0.3 + 0.4 * (i % 3) / 2), w * (0.3 + 0.4 * (i // 3 % 3) / 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 5) ** 2
        out[i][disc] = 255 - 40 * np.arange(c)
    return out


# ----------------------------------------------------------------------------- IDX
def write_idx(file: Path, magic: int, arr: np.ndarray) -> None:
    """An IDX file (big-endian magic, then one big-endian size per dimension, then bytes)."""
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    if file.suffix == ".gz":
        raw = gzip.compress(raw)
    file.write_bytes(raw)


def make_mnist(root: Path, n_train: int = 20, n_test: int = 4, gz: bool = True) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    imgs = blobs(n_train + n_test, 28, 28)[..., 0]
    labels = np.arange(n_train + n_test) % 10
    for split, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(root / f"{split}-images-idx3-ubyte{ext}", 2051, imgs[sl])
        write_idx(root / f"{split}-labels-idx1-ubyte{ext}", 2049, labels[sl])
    return imgs


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_pads_to_32_and_keeps_labels(tmp_path: Path, gz: bool) -> None:
    imgs = make_mnist(tmp_path, gz=gz)
    data = load_dataset("mnist", str(tmp_path))
    assert isinstance(data, LabeledDataset) and len(data) == 24
    assert data.image_shape == (1, 32, 32) and data.info.default_rec_dist == "bernoulli"
    raw = data.numpy_images(np.arange(24))
    assert raw.dtype == np.uint8 and raw.max() == 255
    np.testing.assert_array_equal(raw[:, 0, 2:30, 2:30], imgs)  # padding is lossless
    assert raw[:, :, :2].max() == 0 and raw[:, :, :, 30:].max() == 0
    assert data.factor_names == ("digit",) and data.n_classes == (10,)
    from disvae.data import idx

    assert data.preprocessing == idx._VERSION > 1  # recorded with a run (pad before resize)
    np.testing.assert_array_equal(data.factors[:, 0], np.arange(24) % 10)
    assert load_dataset("mnist", str(tmp_path), img_size=28).image_shape == (1, 28, 28)
    assert load_dataset("fashion", str(tmp_path), img_size=64).factor_names == ("class",)


def test_idx_errors_name_the_problem_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*yann.lecun.com"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(DataError, match="fashion-mnist"):
        load_dataset("fashion", str(tmp_path))
    make_mnist(tmp_path, gz=False)
    lab = tmp_path / "train-labels-idx1-ubyte"
    write_idx(lab, 2051, np.arange(20) % 10)  # an image magic on a label file
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        load_dataset("mnist", str(tmp_path))
    write_idx(lab, 2049, np.arange(20) % 10)
    img = tmp_path / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"holds \d+ bytes for dimensions \(20, 28, 28\)"):
        load_dataset("mnist", str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cannot be read"):
        load_dataset("mnist", str(tmp_path))


def test_a_damaged_gzip_body_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    """A .gz whose compressed stream is damaged fails in zlib (not an OSError)."""
    from disvae import cli

    make_mnist(tmp_path, gz=True)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(f.read_bytes())
    raw[20:60] = bytes(b ^ 0xFF for b in raw[20:60])  # inside the deflate stream
    f.write_bytes(bytes(raw))
    assert cli.main(["data", "info", "mnist", "--data-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte.gz" in err and "cannot be read" in err


def test_idx_files_with_no_images_are_a_one_line_error(tmp_path: Path, capsys) -> None:
    from disvae import cli

    write_idx(tmp_path / "train-images-idx3-ubyte", 2051, np.zeros((0, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, np.zeros(0))
    assert cli.main(["data", "info", "mnist", "--data-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte: holds no images" in err


# ----------------------------------------------------------------------------- CIFAR-10
def py2_cifar_pickle(data: np.ndarray, labels: list[int], title: bytes) -> bytes:
    """A batch as the published files hold it: Python 2's cPickle at protocol 2 (its str as
    BINSTRING, numpy 1's ``numpy.core.multiarray._reconstruct`` with a ``(1, shape, dtype,
    False, raw)`` state, ints as BININT1/BININT2), opcode by opcode."""

    def text(b: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def num(v: int) -> bytes:  # BININT1 or BININT2
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    dtype = (
        b"cnumpy\ndtype\nq\x05"
        + text(b"u1")
        + num(0)
        + num(1)
        + b"\x87Rq\x06("
        + num(3)
        + text(b"|")
        + b"NNN"
        + b"J\xff\xff\xff\xff" * 2
        + num(0)
        + b"tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
        + num(0)
        + b"\x85"
        + text(b"b")
        + b"\x87Rq\x04("
        + num(1)
        + num(data.shape[0])
        + num(3072)
        + b"\x86"
        + dtype
        + b"\x89"
        + text(data.tobytes())
        + b"tb"
    )
    labels_list = b"]q\x07(" + b"".join(num(v) for v in labels) + b"e"
    return (b"\x80\x02}q\x01(" + text(b"data") + array + text(b"labels") + labels_list
            + text(b"batch_label") + text(title) + b"u.")  # fmt: skip


def make_cifar(
    root: Path, binary: bool, rows: int, protocol: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The six batches; python ones as the published files (``protocol`` None), or as
    Python 3's pickle writes them at ``protocol``."""
    root.mkdir(parents=True, exist_ok=True)
    imgs = blobs(6 * rows, 32, 32, 3).transpose(0, 3, 1, 2)  # (N, 3, 32, 32): R, G, B planes
    labels = np.arange(6 * rows) % 10
    for b, name in enumerate(cifar.TRAIN + [cifar.TEST]):
        sl = slice(b * rows, (b + 1) * rows)
        flat = imgs[sl].reshape(rows, 3072)
        if binary:
            rec = np.concatenate([labels[sl, None].astype(np.uint8), flat], axis=1)
            (root / f"{name}.bin").write_bytes(rec.tobytes())
        elif protocol is None:
            (root / name).write_bytes(py2_cifar_pickle(flat, labels[sl].tolist(), name.encode()))
        else:
            batch = {b"batch_label": b"x", b"labels": labels[sl].tolist(), b"data": flat,
                     b"filenames": [b"f.png"] * rows}  # fmt: skip
            (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return imgs, labels


@pytest.mark.parametrize("binary", [True, False])
def test_cifar10_binary_and_python_batches(tmp_path, monkeypatch, binary: bool) -> None:
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 3)
    folder = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    imgs, labels = make_cifar(tmp_path / folder, binary, 3)
    data = load_dataset("cifar10", str(tmp_path))
    assert data.image_shape == (3, 32, 32) and len(data) == 18
    assert data.info.default_rec_dist == "gaussian"
    np.testing.assert_array_equal(data.numpy_images(np.arange(18)), imgs)
    np.testing.assert_array_equal(data.factors[:, 0], labels)
    f = tmp_path / folder / ("data_batch_3.bin" if binary else "data_batch_3")
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"data_batch_3.*cs.toronto.edu/~kriz/cifar.html"):
        load_dataset("cifar10", str(tmp_path))


@pytest.mark.parametrize("protocol", [None, 0, 2, 4, 5])
def test_cifar_pickles_are_read_without_unpickling(tmp_path, monkeypatch, protocol) -> None:
    """The published (Python 2) batches and Python 3's pickles of every protocol load with
    `pickle`'s loaders made to fail: nothing is unpickled."""
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 3)
    imgs, labels = make_cifar(tmp_path, binary=False, rows=3, protocol=protocol)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    data = load_dataset("cifar10", str(tmp_path))
    np.testing.assert_array_equal(data.numpy_images(np.arange(18)), imgs)
    np.testing.assert_array_equal(data.factors[:, 0], labels)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_runs_code_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 2)
    make_cifar(tmp_path, binary=False, rows=2)
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    for protocol in range(6):
        payload = pickle.dumps({b"data": evil, b"labels": [0, 1]}, protocol=protocol)
        with pytest.raises(plain_pickle.PickleDataError, match="refused .*system"):
            plain_pickle.read(payload)
    (tmp_path / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError, match="data_batch_2.*refused"):
        load_dataset("cifar10", str(tmp_path))
    assert not evil.marker.exists()
    with pytest.raises(plain_pickle.PickleDataError, match="builtins.eval"):
        plain_pickle.read(pickle.dumps(eval))


def test_plain_pickle_resolves_shared_objects_once_and_refuses_cycles() -> None:
    """x_{i+1} = [x_i, x_i] through the memo: 30 levels in ~150 bytes. Copied at each
    reference it would be 2**30 lists; each object is resolved once, so sharing is kept."""
    chain = b"\x80\x02]q\x00"  # x_0 = [], memo 0
    for i in range(30):  # drop x_i, push [memo i, memo i] as x_{i+1}, memo i + 1
        chain += b"0(h" + bytes([i]) + b"h" + bytes([i]) + b"lq" + bytes([i + 1])
    top = plain_pickle.read(chain + b".")
    node = top
    for _ in range(30):
        assert len(node) == 2 and node[0] is node[1]
        node = node[0]
    assert node == []
    with pytest.raises(plain_pickle.PickleDataError, match="cycle"):
        plain_pickle.read(b"\x80\x02]q\x00h\x00a.")  # a list that holds itself
    with pytest.raises(plain_pickle.PickleDataError, match="deeper than"):
        plain_pickle.read(b"\x80\x02" + b"]" * 40 + b"a" * 39 + b".")


def test_damaged_cifar_pickles_are_one_line_data_errors(tmp_path, monkeypatch) -> None:
    """Random byte changes and cuts of a published-format batch: it loads (a changed pixel or
    label) or fails with a `DataError`, never another exception."""
    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 3)
    make_cifar(tmp_path, binary=False, rows=3)
    good = (tmp_path / "data_batch_1").read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(400):
        bad = bytearray(good)
        for pos in rng.integers(0, len(bad), size=1 + i % 3):
            bad[pos] = rng.integers(0, 256)
        if i % 4 == 0:
            bad = bad[: rng.integers(0, len(bad))]
        (tmp_path / "data_batch_1").write_bytes(bytes(bad))
        try:
            cifar.read_python(tmp_path / "data_batch_1")
            outcomes["loaded"] += 1
        except DataError as err:
            assert "\n" not in str(err) and cifar.URL in str(err)
            outcomes["refused"] += 1
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 100, outcomes


# ----------------------------------------------------------------------------- Shapes3D
SMALL_GRID = (2, 2, 2, 2, 2, 3)


def make_shapes3d(file: Path) -> np.ndarray:
    n = int(np.prod(SMALL_GRID))
    axes = [np.linspace(0, 1, s) if s != 4 else np.arange(4.0) for s in SMALL_GRID]
    labels = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    imgs = blobs(n, 64, 64, 3)
    imgs[:, 0, 0, :] = np.arange(n)[:, None]  # pixel (0, 0) numbers the image
    with h5py.File(file, "w") as h5:
        h5["images"] = imgs
        h5["labels"] = labels
    return labels


def test_shapes3d_grid_factors_and_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shapes3d, "FACTOR_SIZES", SMALL_GRID)
    monkeypatch.setattr(shapes3d, "CHUNK", 5)  # several chunks into the cache
    labels = make_shapes3d(tmp_path / "3dshapes.h5")
    data = load_dataset("shapes3d", str(tmp_path))
    assert isinstance(data, GridDataset) and data.factor_sizes == SMALL_GRID
    assert data.image_shape == (3, 64, 64) and data.info.default_rec_dist == "bernoulli"
    raw = data.numpy_images(np.arange(len(data)))
    np.testing.assert_array_equal(raw[:, 0, 0, 0], np.arange(len(data)))
    np.testing.assert_allclose(data.values_of(data.classes_of(np.arange(96))), labels)
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        h5["images"] = np.zeros((96, 64, 64, 3), np.uint8)
        h5["labels"] = labels[::-1]
    with pytest.raises(DataError, match="not the factor grid.*github.com/google-deepmind/3d"):
        load_dataset("shapes3d", str(tmp_path / "bad.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        load_dataset("shapes3d", str(tmp_path / "junk.h5"))
    with pytest.raises(DataError, match="nowhere' not found; download 3dshapes.h5"):
        load_dataset("shapes3d", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path.parent)  # (no 3dshapes.h5 there)
    with pytest.raises(DataError, match="no --data-path given.*pass --data-path"):
        load_dataset("shapes3d", None)


# ----------------------------------------------------------------------------- image folders
def make_celeba(root: Path, n: int = 3) -> None:
    (root / "img_align_celeba").mkdir(parents=True)
    for i, img in enumerate(blobs(n, 218, 178, 3)):
        img[:39] = img[-39:] = (0, 0, 255)  # outside the central 140x140: blue
        img[:, :19] = img[:, -19:] = (0, 0, 255)
        Image.fromarray(img).save(root / "img_align_celeba" / f"{i + 1:06d}.jpg", quality=95)


def chairs_name(view: int) -> str:
    """The published name of view ``view`` (0..61): 31 azimuths of 360/31 degrees (rounded
    down) at elevation 20, then the same at elevation 30; distance 96."""
    elevation, azimuth = 20 + 10 * (view // 31), (view % 31) * 360 // 31
    return f"image_{view + 1:03d}_p{elevation:03d}_t{azimuth:03d}_r096.png"


def make_chairs(root: Path, n: int = 3, name=chairs_name) -> None:
    for i, img in enumerate(blobs(n, 600, 600, 3)):
        d = root / "rendered_chairs" / f"chair_{i % 2}" / "renders"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / name(i * 7 % 62))


def make_folder(root: Path, n: int = 4) -> None:
    for i in range(n):
        img = blobs(i + 1, 50 + 10 * i, 40 + 7 * i, 3)[i]
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"{i}.{['png', 'jpg', 'bmp'][i % 3]}")
    (root / "notes.txt").write_text("not an image")


def test_celeba_chairs_and_folder_shapes(tmp_path: Path) -> None:
    make_celeba(tmp_path / "celeba")
    data = load_dataset("celeba", str(tmp_path / "celeba"), workers=1)
    assert data.image_shape == (3, 64, 64) and len(data) == 3
    raw = data.numpy_images(np.arange(3)).astype(int)
    assert raw[:, 2].mean() < 60  # the blue border was cropped away
    make_chairs(tmp_path / "ch")
    data = load_dataset("chairs", str(tmp_path / "ch" / "rendered_chairs"), workers=1)
    assert data.image_shape == (1, 64, 64) and len(data) == 3
    assert data.numpy_images(np.arange(3)).max() > 200
    make_folder(tmp_path / "f")
    data = load_dataset("folder", str(tmp_path / "f"), img_size=32, workers=1)
    assert data.image_shape == (3, 32, 32) and len(data) == 4
    assert data.numpy_images(np.arange(4)).dtype == np.uint8


def test_chairs_pose_is_read_from_the_file_names(tmp_path: Path) -> None:
    """image_<view>_p<elevation>_t<azimuth>_r<distance>.png: elevation and azimuth are the
    factors, classes in the order of their values; a name off the pattern: no factors."""
    from disvae.data import describe
    from disvae.evaluation import factor_kind

    make_chairs(tmp_path / "a", n=6)  # views 0, 7, 14, 21, 28, 35 of chairs 0 and 1
    data = load_dataset("chairs", str(tmp_path / "a"), workers=1)
    assert isinstance(data, LabeledDataset) and factor_kind(data) == "labels"
    assert data.factor_names == ("elevation", "azimuth") and len(data) == 6
    # sorted paths: chair_0 has views 0, 14, 28 (file names sort by view), chair_1 7, 21, 35
    views = [0, 14, 28, 7, 21, 35]
    elevation = [20 + 10 * (v // 31) for v in views]
    azimuth = [(v % 31) * 360 // 31 for v in views]  # 0, 162, 325, 81, 243, 46
    np.testing.assert_array_equal(data.factor_values_raw, np.c_[elevation, azimuth])
    np.testing.assert_array_equal(data.factors[:, 0], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(data.factors[:, 1], [0, 3, 5, 2, 4, 1])
    assert describe("chairs", str(tmp_path / "a"))["factors"] == {"elevation": 2, "azimuth": 6}
    make_chairs(tmp_path / "b", n=3, name=lambda v: f"view_{v}.png")
    with pytest.warns(UserWarning, match=r"'view_0.png' is not named image_<view>_p<elevation>"):
        data = load_dataset("chairs", str(tmp_path / "b"), workers=1)
    assert not isinstance(data, LabeledDataset) and len(data) == 3


CELEBA_NAMES = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
                "Bangs"] + [f"Attr_{i}" for i in range(6, 39)] + ["Young"]  # fmt: skip


def write_celeba_attributes(file: Path, values: np.ndarray, names=CELEBA_NAMES, count=None) -> None:
    """``list_attr_celeba.txt`` as published: the count, the names, then per image its file name
    and one 1 or -1 per attribute, right-aligned in columns of 3 (so some are two spaces apart);
    ``.csv``: Kaggle's table."""
    file.parent.mkdir(parents=True, exist_ok=True)
    rows = [(f"{i + 1:06d}.jpg", [1 if v else -1 for v in row]) for i, row in enumerate(values)]
    if file.suffix == ".csv":
        lines = ["image_id," + ",".join(names)] + [f"{n}," + ",".join(map(str, r)) for n, r in rows]
    else:
        lines = [str(len(rows) if count is None else count), " ".join(names) + " "]
        lines += [n + "".join(f"{v:3d}" for v in r) for n, r in rows]
    file.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("where", ["list_attr_celeba.txt", "Anno/list_attr_celeba.txt",
                                   "list_attr_celeba.csv"])  # fmt: skip
def test_celeba_attributes_are_its_factors(tmp_path: Path, where: str) -> None:
    from disvae.evaluation import factor_kind

    make_celeba(tmp_path)
    values = np.zeros((3, 40), bool)
    values[0, 0] = values[1, [0, 39]] = values[2, 5] = True
    write_celeba_attributes(tmp_path / where, values)
    data = load_dataset("celeba", str(tmp_path), workers=1)
    assert isinstance(data, LabeledDataset) and factor_kind(data) == "labels"
    assert data.factor_names == tuple(CELEBA_NAMES) and data.n_classes[0] == 2
    np.testing.assert_array_equal(data.factors, values.astype(int))  # -1 -> 0, 1 -> 1
    assert data.image_shape == (3, 64, 64) and len(data) == 3 and data.files[-1].endswith(where)


def test_celeba_as_kaggle_ships_it(tmp_path: Path) -> None:
    """Kaggle's copy: img_align_celeba/img_align_celeba/*.jpg, the CSV at the top, with a BOM
    and ", " separators; loaded from the top folder."""
    make_celeba(tmp_path / "img_align_celeba")  # -> img_align_celeba/img_align_celeba/*.jpg
    values = np.eye(3, 40, dtype=bool)
    write_celeba_attributes(tmp_path / "list_attr_celeba.csv", values)
    table = tmp_path / "list_attr_celeba.csv"
    table.write_text("\ufeff" + table.read_text().replace(",", ", "), encoding="utf-8")
    data = load_dataset("celeba", str(tmp_path), workers=1)
    assert len(data) == 3 and isinstance(data, LabeledDataset)
    np.testing.assert_array_equal(data.factors, values.astype(int))


def test_celeba_attribute_table_that_does_not_fit_is_a_one_line_error(tmp_path: Path) -> None:
    make_celeba(tmp_path)
    table = tmp_path / "list_attr_celeba.txt"
    ok = np.zeros((3, 40), bool)
    for kwargs, message in [
        ({"count": 5}, "says 5 images, the table has 3"),
        ({"values": ok[:2], "count": 2}, "no attributes for 1 image.*000003.jpg"),
        ({"names": CELEBA_NAMES[:39]}, "has 40 values for 39 names"),
        ({"names": CELEBA_NAMES[:39] + ["Bald"]}, "names are missing or repeated"),
    ]:
        write_celeba_attributes(table, kwargs.pop("values", ok), **kwargs)
        with pytest.raises(DataError, match=message) as err:
            load_dataset("celeba", str(tmp_path), workers=1)
        assert "\n" not in str(err.value) and "mmlab.ie.cuhk.edu.hk" in str(err.value)
    write_celeba_attributes(table, ok)
    table.write_text(table.read_text().replace(" -1", "  0", 1))
    with pytest.raises(DataError, match="values other than 1 and -1"):
        load_dataset("celeba", str(tmp_path), workers=1)
    table.unlink()
    assert not isinstance(load_dataset("celeba", str(tmp_path), workers=1), LabeledDataset)


def test_folder_errors_and_corrupt_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"img_align_celeba/\*\.jpg.*mmlab.ie.cuhk.edu.hk"):
        load_dataset("celeba", str(tmp_path))
    with pytest.raises(DataError, match=r"rendered_chairs/\*/renders/\*\.png.*seeing3Dchairs"):
        load_dataset("chairs", str(tmp_path))
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("folder", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no --data-path given"):
        load_dataset("folder", None)
    make_folder(tmp_path / "f")
    (tmp_path / "f" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"image .*broken\.jpg cannot be used.*remove or replace"):
        load_dataset("folder", str(tmp_path / "f"), workers=1)
    (tmp_path / "c" / "img_align_celeba").mkdir(parents=True)
    (tmp_path / "c" / "img_align_celeba" / "000001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"celeba: image .*000001\.jpg .*mmlab.ie.cuhk.edu.hk"):
        load_dataset("celeba", str(tmp_path / "c"), workers=1)


def test_folder_reads_images_upright_and_16_bit_and_skips_other_files(tmp_path: Path) -> None:
    """A folder of a PDF, a JPEG stored sideways with its EXIF orientation tag, and a 16-bit
    greyscale PNG ramp: the PDF is skipped, the photo comes out upright, the ramp scaled."""
    root = tmp_path / "f"
    root.mkdir()
    (root / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    # Seen upright, the photo has a white top-left quarter. It is stored turned a quarter
    # anticlockwise (white at the bottom left) with Orientation = 6 ("rotate 90° clockwise to
    # view").
    upright = np.zeros((32, 32, 3), np.uint8)
    upright[:16, :16] = 255
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # k=1: anticlockwise
    assert stored[16:, :16].min() == 255 and stored[:16, :16].max() == 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "photo.jpg", exif=exif, quality=95)
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(root / "ramp.png")
    assert Image.open(root / "ramp.png").mode.startswith("I")  # really 16-bit on disk
    small = np.full((32, 32), 200, np.int32)  # a 32-bit integer image of 8-bit values
    Image.fromarray(small, "I").save(root / "wide.tif")
    assert Image.open(root / "wide.tif").mode == "I"
    data = load_dataset("folder", str(root), img_size=32, workers=1)
    assert len(data) == 3  # photo.jpg, ramp.png, wide.tif; not notes.pdf
    photo, grey, wide = data.numpy_images(np.arange(3)).astype(float)
    assert wide.min() == wide.max() == 200  # kept: not taken for 16-bit data
    exts = images.image_extensions()
    assert {".png", ".jpg", ".tif", ".webp", ".mpo"} <= exts
    assert not {".pdf", ".eps", ".h5", ".txt"} & exts
    assert photo[:, 2:14, 2:14].min() > 200 and photo[:, 2:14, 18:30].max() < 50  # upright
    ramp_row = grey[0].mean(axis=0)  # left to right: dark to bright, not clipped to white
    assert ramp_row[0] < 20 and ramp_row[-1] > 235 and 100 < ramp_row.mean() < 155


def test_float_tiffs_are_scaled_not_clipped_to_black(tmp_path: Path) -> None:
    """32-bit float images (mode F): Pillow's own conversion clips values in [0, 1] to 0 or 1."""
    root = tmp_path / "f"
    root.mkdir()
    unit = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))  # 0..1, left to right
    Image.fromarray(unit, "F").save(root / "a_unit.tif")
    Image.fromarray(unit * 200, "F").save(root / "b_wide.tif")  # already on 0..255
    assert Image.open(root / "a_unit.tif").mode == "F"
    unit_img, wide_img = load_dataset("folder", str(root), img_size=32, workers=1).numpy_images(
        np.arange(2)
    )
    np.testing.assert_array_equal(unit_img[0, 0], np.rint(unit[0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(wide_img[0, 0], np.rint(unit[0] * 200).astype(np.uint8))
    bad = unit.copy()
    bad[3, 3] = np.nan
    Image.fromarray(bad, "F").save(root / "c_nan.tif")
    with pytest.raises(DataError, match=r"c_nan\.tif cannot be used: its pixels hold NaN"):
        load_dataset("folder", str(root), img_size=32, workers=1)


def test_cache_is_reused_and_parallel_decoding_matches(tmp_path, monkeypatch) -> None:
    make_folder(tmp_path / "f", n=6)
    serial = load_dataset("folder", str(tmp_path / "f"), workers=1)
    assert serial.cache_file and Path(serial.cache_file).is_file()

    def boom(*args):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(images, "decode_crops", boom)
        again = load_dataset("folder", str(tmp_path / "f"))
    np.testing.assert_array_equal(
        again.numpy_images(np.arange(6)), serial.numpy_images(np.arange(6))
    )
    os.remove(serial.cache_file)
    parallel = load_dataset("folder", str(tmp_path / "f"), workers=2)
    np.testing.assert_array_equal(
        parallel.numpy_images(np.arange(6)), serial.numpy_images(np.arange(6))
    )
    os.utime(tmp_path / "f" / "a" / "1.jpg", ns=(1, 1))  # a changed source: a new cache file
    assert load_dataset("folder", str(tmp_path / "f"), workers=1).cache_file != serial.cache_file


# ----------------------------------------------------------------------------- stacked
PATCHES = ["face", "right_eye", "left_eye"]
FACTORS = ["gaze_x", "gaze_y", "scale"]


def make_stacked(root: Path, n: int = 5, fmt: str = "json") -> np.ndarray:
    """Face images 100x80 (W x H) with a red right eye and a green left eye; index file."""
    (root / "faces").mkdir(parents=True, exist_ok=True)
    values = np.stack([np.linspace(-1, 1, n), np.linspace(0.5, -0.5, n), np.full(n, 1.0)], 1)
    samples = []
    for i in range(n):
        img = np.full((80, 100, 3), 90, dtype=np.uint8)
        img[20:40, 10 + i : 40 + i] = (255, 0, 0)
        img[20:40, 60:90] = (0, 255, 0)
        Image.fromarray(img).save(root / "faces" / f"{i}.png")
        boxes = {"right_eye": [10 + i, 20, 30, 20], "left_eye": [60, 20, 30, 20]}
        factors = dict(zip(FACTORS, values[i].tolist(), strict=True))
        samples.append({"image": f"faces/{i}.png", "boxes": boxes, "factors": factors})
    if fmt == "json":
        index = {"patches": PATCHES, "factors": FACTORS, "samples": samples}
        (root / "index.json").write_text(json.dumps(index))
    else:
        lines = ["image," + ",".join(f"patch:{p}" for p in PATCHES) + "," + ",".join(FACTORS)]
        for s, v in zip(samples, values, strict=True):
            boxes = [" ".join(map(str, s["boxes"].get(p, []))) for p in PATCHES]
            lines.append(",".join([s["image"], *boxes, *map(str, v)]))
        (root / "index.csv").write_text("\n".join(lines) + "\n")
    return values


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_stacked_patches_along_channels(tmp_path: Path, fmt: str, capsys) -> None:
    values = make_stacked(tmp_path, fmt=fmt)
    data = load_dataset("stacked", str(tmp_path), img_size=32, workers=1)
    assert data.image_shape == (9, 32, 32) and data.info.patches == tuple(PATCHES)
    raw = data.numpy_images(np.arange(5)).astype(int)
    right, left = raw[:, 3:6].mean(axis=(2, 3)), raw[:, 6:9].mean(axis=(2, 3))
    assert (right[:, 0] > 240).all() and (right[:, 1:] < 15).all()  # the red patch
    assert (left[:, 1] > 240).all() and (left[:, [0, 2]] < 15).all()  # the green patch
    face = raw[:, 0:3]  # the whole image: grey with both eyes
    assert np.median(face) == 90 and face[:, 0].max() > 240 and face[:, 1].max() > 240
    assert data.factor_names == tuple(FACTORS)
    np.testing.assert_allclose(data.factor_values_raw, values)
    np.testing.assert_array_equal(data.factors[:, 0], [0, 5, 10, 15, 19])  # 20 bins
    np.testing.assert_array_equal(data.factors[:, 2], 0)  # a constant factor: one bin
    if fmt == "json":  # `data info` says the classes are bins of a continuous value
        from disvae import cli

        assert describe("stacked", str(tmp_path), img_size=32)["continuous_factors"] == FACTORS
        assert cli.main(["data", "info", "stacked", "--data-path", str(tmp_path),
                         "--img-size", "32"]) == 0  # fmt: skip
        assert "gaze_x (20 bins of a continuous value)" in capsys.readouterr().out


def test_stacked_index_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="index file .*index.json' not found;.*docs/data.md"):
        load_dataset("stacked", str(tmp_path))
    make_stacked(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    index["samples"][2]["boxes"]["left_eye"] = [90, 20, 30, 20]  # past the right edge
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"2\.png cannot be used: box .* outside the 100x80"):
        load_dataset("stacked", str(tmp_path), workers=1)
    index["samples"][2]["factors"]["scale"] = "big"
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="sample 2 has a factor that is not a number"):
        load_dataset("stacked", str(tmp_path))
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_dataset("stacked", str(tmp_path / "index.json"))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_stacked_index_without_factors_is_a_dataset_without_factors(tmp_path, fmt, capsys):
    from disvae import cli
    from disvae.evaluation import factor_kind

    make_stacked(tmp_path, n=3)
    index = json.loads((tmp_path / "index.json").read_text())
    if fmt == "json":
        index["factors"] = []
        for sample in index["samples"]:
            sample["factors"] = {}
        (tmp_path / "index.json").write_text(json.dumps(index))
    else:
        (tmp_path / "index.json").unlink()
        rows = ["image,patch:face"] + [f"{s['image']}," for s in index["samples"]]
        (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset("stacked", str(tmp_path), img_size=32, workers=1)
    assert len(data) == 3 and factor_kind(data) == "none"
    assert describe("stacked", str(tmp_path), img_size=32)["factors"] == {}
    assert cli.main(["data", "info", "stacked", "--data-path", str(tmp_path)]) == 0
    assert "factors:    none" in capsys.readouterr().out


def test_labeled_dataset_with_no_images_or_no_factors() -> None:
    info = DatasetInfo("x", (1, 4, 4), "bernoulli")
    empty = LabeledDataset(np.zeros((0, 1, 4, 4), np.uint8), info, False, ("a",), np.zeros((0, 1)),
                           [True])  # fmt: skip
    assert empty.factors.shape == (0, 1)
    none = LabeledDataset(np.zeros((2, 1, 4, 4), np.uint8), info, False, (), np.zeros((2, 0)), [])
    assert none.factors.shape == (2, 0) and none.n_classes == ()


# ----------------------------------------------------------------------------- plumbing
def test_describe_and_data_info_cli(tmp_path: Path, capsys) -> None:
    from disvae import cli

    make_mnist(tmp_path)
    info = describe("mnist", str(tmp_path))
    assert info["n_images"] == 24 and info["image_shape"] == [1, 32, 32]
    assert info["factors"] == {"digit": 10} and not info["grid"] and len(info["files"]) == 4
    assert info["continuous_factors"] == []  # labels are classes
    assert (
        cli.main(["data", "info", "mnist", "--data-path", str(tmp_path), "--img-size", "64"]) == 0
    )
    out = capsys.readouterr().out
    assert "24 of 1x64x64" in out and "digit (10)" in out and ".npy" in out
    assert cli.main(["data", "info", "mnist", "--data-path", str(tmp_path / "x")]) == 2
    assert "yann.lecun.com" in capsys.readouterr().err


def test_dsprites_rejects_other_sizes_and_config_carries_img_size() -> None:
    with pytest.raises(DataError, match="64x64; img_size 32"):
        load_dataset("dsprites", img_size=32)
    cfg = C.apply_overrides(C.RunConfig(), ["img_size=32", "workers=2"])
    assert (cfg.data.img_size, cfg.data.workers) == (32, 2)
    with pytest.raises(Exception, match="data.img_size must be positive"):
        C.resolve(C.apply_overrides(C.RunConfig(), ["img_size=0"]))


def _write(name: str, root: Path) -> str:
    """A fixture of dataset ``name`` with enough images for batches of 8; its data path."""
    if name in ("mnist", "fashion"):
        make_mnist(root, n_train=30, n_test=6)
    elif name == "cifar10":
        make_cifar(root, binary=True, rows=6)
    elif name == "shapes3d":
        root.mkdir(parents=True)
        make_shapes3d(root / "3dshapes.h5")
    elif name == "celeba":
        make_celeba(root, n=18)
    elif name == "chairs":
        make_chairs(root, n=18)
    elif name == "folder":
        make_folder(root, n=18)
    else:
        make_stacked(root, n=18)
    return str(root)


TRAINED = ["mnist", "cifar10", "shapes3d", "celeba", "chairs", "folder", "stacked"]


@pytest.mark.parametrize("name", TRAINED)
def test_short_training_run_lowers_the_loss(name, tmp_path, monkeypatch) -> None:
    from disvae import runs
    from disvae.training import train

    monkeypatch.setattr(cifar, "ROWS_PER_BATCH", 6)
    monkeypatch.setattr(shapes3d, "FACTOR_SIZES", SMALL_GRID)
    path = _write(name, tmp_path / "data")
    size = 32  # every loader resizes; small images keep the test fast
    # stacked data trains with its shipped preset: the stacked architecture, beta-VAE
    base, loss = (
        (C.load_preset("stacked_gaze"), []) if name == "stacked" else (C.RunConfig(), ["loss=vae"])
    )
    cfg = C.apply_overrides(
        base,
        [f"dataset={name}", f"data.path={json.dumps(path)}", f"img_size={size}", "workers=1",
         *loss, "batch_size=8", "steps=20", "epochs=none", "log_every=5", "lr=2e-3",
         "device=cpu", "checkpoint_every=1000", "snapshot_every=0"],
    )  # fmt: skip
    run = train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(x) for x in (run / runs.TRAIN_LOG).read_text().splitlines()]
    first, last = log[0], log[-1]
    assert last["step"] == 20 and last["recon"] < 0.9 * first["recon"], (first, last)
    assert load_data(runs.read_config(run).data).image_shape[1:] == (size, size)


def test_a_run_resumes_from_data_that_moved_but_not_from_other_data(tmp_path: Path, capsys):
    from disvae import cli

    make_mnist(tmp_path / "a")
    run = tmp_path / "run"
    common = ["--batch-size", "8", "--no-progress", "--log-every", "2", "--checkpoint-every", "2"]
    assert cli.main(["train", "--dataset", "mnist", "--data-path", str(tmp_path / "a"),
                     "--loss", "vae", "--steps", "2", "--out", str(run), *common]) == 0  # fmt: skip
    (tmp_path / "a").rename(tmp_path / "b")  # the data moved
    assert cli.main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 2
    assert "--data-path" in capsys.readouterr().err  # where it was: a clear error
    assert cli.main(["train", "--resume", str(run), "--steps", "4", "--no-progress",
                     "--data-path", str(tmp_path / "b"), "--workers", "1"]) == 0  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["path"] == str(tmp_path / "b") and saved["total_steps"] == 4
    make_mnist(tmp_path / "c", n_train=30)  # another dataset: more images
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--steps", "6", "--no-progress",
                     "--data-path", str(tmp_path / "c")]) == 2  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after the cache's progress)
    assert "disvae: error:" in last and "not what it trained on (n_train 31, the run's 22)" in last
    assert json.loads((run / "config.json").read_text())["total_steps"] == 4  # left as it was


def test_mnist_counts_each_split_and_says_when_a_test_file_is_alone(tmp_path: Path) -> None:
    make_mnist(tmp_path / "a")
    labels = np.arange(19) % 10  # one label short in the train split only
    write_idx(tmp_path / "a" / "train-labels-idx1-ubyte.gz", 2049, labels)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: 20 images for the 19 "
                                        r"labels of train-labels-idx1-ubyte.gz"):  # fmt: skip
        load_dataset("mnist", str(tmp_path / "a"))
    make_mnist(tmp_path / "b")
    (tmp_path / "b" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.warns(RuntimeWarning, match="t10k-images-idx3-ubyte.gz .* has no labels file"):
        data = load_dataset("mnist", str(tmp_path / "b"))
    assert len(data) == 20  # the train split alone


def test_stacked_csv_with_a_bom_and_errors_named_by_their_line(tmp_path: Path) -> None:
    make_stacked(tmp_path / "a", fmt="csv")
    csv_file = tmp_path / "a" / "index.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes())  # Excel's "CSV UTF-8"
    assert len(load_dataset("stacked", str(tmp_path / "a"), img_size=32, workers=1)) == 5
    lines = csv_file.read_text(encoding="utf-8-sig").splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",abc"  # the 4th line of the file: a bad factor
    csv_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="row 4 has a factor that is not a number"):
        load_dataset("stacked", str(tmp_path / "a"), img_size=32, workers=1)
    make_stacked(tmp_path / "b")
    index = json.loads((tmp_path / "b" / "index.json").read_text())
    index["samples"][1]["factors"]["gaze_z"] = 1.0  # a typo of a declared factor
    (tmp_path / "b" / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"sample 1 has factors the index does not declare"):
        load_dataset("stacked", str(tmp_path / "b"), img_size=32, workers=1)


def test_folder_with_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """A Latin-1 file name (bytes that are not UTF-8, as old archives have) loads: the cache
    key hashes it without a UnicodeEncodeError."""
    root = tmp_path / "f"
    root.mkdir()
    for i, value in enumerate((40, 200)):
        Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(root / f"{i}.png")
    os.rename(root / "1.png", os.fsencode(root) + b"/\xe9t\xe9.png")  # "été" in Latin-1
    data = load_dataset("folder", str(root), img_size=8, workers=1)
    assert len(data) == 2 and data.files[1].endswith("\udce9t\udce9.png")
    np.testing.assert_array_equal(data.numpy_images(np.arange(2))[:, 0, 0, 0], [40, 200])


def test_shapes3d_groups_dangling_links_and_nan_labels_are_one_line_errors(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(shapes3d, "FACTOR_SIZES", SMALL_GRID)
    labels = make_shapes3d(tmp_path / "good.h5")
    images = np.zeros((96, 64, 64, 3), np.uint8)
    cases = {
        "group.h5": ({"images": None, "labels": labels}, "'images' is an HDF5 Group, not a"),
        "link.h5": ({"images": h5py.SoftLink("/gone"), "labels": labels},
                    r"'images' cannot be opened \(.*not found"),
        "nan.h5": ({"images": images, "labels": np.where(labels == 1.0, np.nan, labels)},
                   "labels hold NaN or infinite values"),
        "inf.h5": ({"images": images, "labels": np.where(labels == 1.0, np.inf, labels)},
                   "labels hold NaN or infinite values"),
    }  # fmt: skip
    for name, (content, message) in cases.items():
        with h5py.File(tmp_path / name, "w") as h5:
            for key, value in content.items():
                if value is None:
                    h5.create_group(key)
                else:
                    h5[key] = value
        with pytest.raises(DataError, match=message) as err:
            load_dataset("shapes3d", str(tmp_path / name))
        assert "\n" not in str(err.value) and shapes3d.URL in str(err.value)


def test_stacked_index_numbers_too_big_for_a_float_and_deep_json(tmp_path: Path) -> None:
    """Infinity, 1e400 or 10**400 in a box or a factor, and JSON nested past Python's recursion
    limit: one-line errors naming the sample, not OverflowError or RecursionError."""
    make_stacked(tmp_path, n=2)
    good = json.loads((tmp_path / "index.json").read_text())
    for box in ("Infinity", "1e400", "1" + "0" * 400):
        text = json.dumps(good).replace("[60, 20, 30, 20]", f"[{box}, 20, 30, 20]", 1)
        (tmp_path / "index.json").write_text(text)
        with pytest.raises(DataError, match=r"sample 0: box \[.*\] is not 'left top width"):
            load_dataset("stacked", str(tmp_path), workers=1)
    text = json.dumps(good).replace('"scale": 1.0', '"scale": 1' + "0" * 400, 1)
    (tmp_path / "index.json").write_text(text)
    with pytest.raises(DataError, match="sample 0 has a factor that is not a number"):
        load_dataset("stacked", str(tmp_path), workers=1)
    (tmp_path / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"index.json is not readable JSON \(maximum recursion"):
        load_dataset("stacked", str(tmp_path), workers=1)
    (tmp_path / "index.json").unlink()
    lines = ["image,patch:face,x", "faces/0.png,inf 0 3 3,1"]
    (tmp_path / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 2: box 'inf 0 3 3' is not 'left top width"):
        load_dataset("stacked", str(tmp_path), workers=1)


def test_stacked_index_with_a_bom_or_an_unnamed_csv_column(tmp_path: Path) -> None:
    """A JSON index saved as "UTF-8 with BOM" (Windows Notepad) loads, as a CSV one does; a CSV
    header with an empty column (a trailing comma) says which column, not "'f' must be..."."""
    make_stacked(tmp_path / "a", n=2)
    index = tmp_path / "a" / "index.json"
    index.write_bytes(b"\xef\xbb\xbf" + index.read_bytes())
    data = load_dataset("stacked", str(tmp_path / "a"), img_size=16, workers=1)
    assert len(data) == 2 and data.info.patches == tuple(PATCHES)
    make_stacked(tmp_path / "b", n=2, fmt="csv")
    csv_file = tmp_path / "b" / "index.csv"
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join([lines[0] + ","] + [line + "," for line in lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"index.csv: header column 8 has no name; see docs"):
        load_dataset("stacked", str(tmp_path / "b"), workers=1)
    csv_file.write_text("image,patch:\nfaces/0.png,\n")
    with pytest.raises(DataError, match=r"index.csv: header column 2 has no name"):
        load_dataset("stacked", str(tmp_path / "b"), workers=1)


def test_blank_lines_in_a_csv_index_are_skipped(tmp_path: Path) -> None:
    """An editor's blank last line (or blank lines between blocks) made "row N has 0 cells"."""
    make_stacked(tmp_path / "a", n=3, fmt="csv")
    csv_file = tmp_path / "a" / "index.csv"
    plain = load_dataset("stacked", str(tmp_path / "a"), img_size=16, workers=1)
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join([*lines[:2], "", "  ", *lines[2:], "", ""]) + "\n")
    blanks = load_dataset("stacked", str(tmp_path / "a"), img_size=16, workers=1)
    assert len(blanks) == 3
    np.testing.assert_array_equal(
        blanks.numpy_images(np.arange(3)), plain.numpy_images(np.arange(3))
    )
    csv_file.write_text("\n".join([*lines[:2], "", "faces/0.png"]) + "\n")
    with pytest.raises(DataError, match=r"row 4 has 1 cells"):  # (numbered as in the file)
        load_dataset("stacked", str(tmp_path / "a"), img_size=16, workers=1)


def test_plain_pickle_refusal_of_a_global_named_with_a_newline_is_one_line() -> None:
    """STACK_GLOBAL takes its names from strings of the file, which may hold a newline: the
    refusal quotes the name rather than print a second line of the attacker's text."""
    payload = b"\x80\x04\x8c\x0aos\nfake ok\x94\x8c\x06system\x94\x93)R."
    with pytest.raises(plain_pickle.PickleDataError) as err:
        plain_pickle.read(payload)
    assert str(err.value).startswith("refused 'os\\nfake ok.system': only numbers")
    assert "\n" not in str(err.value)


def test_a_broken_link_among_celeba_or_chairs_images_is_a_one_line_error(tmp_path: Path) -> None:
    """CelebA and Chairs list their files by glob, which lists a link to nothing or a loop of
    links: hashing the cache key stats it. A `DataError` naming it, not an OSError."""
    make_celeba(tmp_path / "c", n=2)
    faces = tmp_path / "c" / "img_align_celeba"
    os.symlink(faces / "gone.jpg", faces / "000003.jpg")
    with pytest.raises(DataError, match=r"celeba: .*000003\.jpg cannot be read \(No such file"):
        load_dataset("celeba", str(tmp_path / "c"), workers=1)
    make_chairs(tmp_path / "h", n=1)
    renders = tmp_path / "h" / "rendered_chairs" / "chair_0" / "renders"
    loop = renders / chairs_name(5)
    os.symlink(loop, loop)
    with pytest.raises(DataError, match=r"chairs: .*_r096\.png cannot be read \(Too many levels"):
        load_dataset("chairs", str(tmp_path / "h"), workers=1)
