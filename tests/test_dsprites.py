"""dSprites: the published layout, our renderer (against the real GIF frames), cache and loader."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from disvae.data import DATASETS, load_dataset
from disvae.data import dsprites as ds
from disvae.errors import DataError

GIF = Path(__file__).resolve().parents[2] / "shared/data/dsprites/dsprites.gif"
N = 737280


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISVAE_CACHE", str(cache))
    return cache


def one(shape: int, scale: int, orient: int, px: int, py: int) -> np.ndarray:
    return ds.render(np.array([[shape, scale, orient, px, py]]))[0]


def centre_of_mass(img: np.ndarray) -> np.ndarray:
    """(x, y) of the on-pixel centres."""
    ys, xs = np.nonzero(img)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


# ----------------------------------------------------------------------------- layout
def test_latents_follow_the_published_grid() -> None:
    classes, values = ds.latents_classes(), ds.latents_values()
    assert classes.shape == values.shape == (N, 6)
    assert classes.dtype == np.int64 and values.dtype == np.float64
    sizes = [1, 3, 6, 40, 32, 32]
    rng = np.random.default_rng(0)
    for i in rng.integers(0, N, 2000).tolist() + [0, N - 1]:
        digits, rest = [], i
        for size in reversed(sizes):  # mixed radix, posY fastest
            rest, d = divmod(rest, size)
            digits.append(d)
        assert classes[i].tolist() == digits[::-1]
    ranges = [(1, 1), (1, 3), (0.5, 1), (0, 2 * np.pi), (0, 1), (0, 1)]
    for k, ((lo, hi), size) in enumerate(zip(ranges, sizes, strict=True)):
        expected = lo + (hi - lo) * classes[:, k] / max(size - 1, 1)
        np.testing.assert_allclose(values[:, k], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.unique(values[:, 2]), [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert values[:, 3].max() == 2 * np.pi


def test_dataset_factors_and_index_arithmetic() -> None:
    data = ds.DSprites(np.zeros((N, 512), dtype=np.uint8))  # lazily zeroed pages
    assert data.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert data.factor_sizes == (3, 6, 40, 32, 32)
    assert data.info.image_shape == (1, 64, 64) and data.info.default_rec_dist == "bernoulli"
    idx = np.random.default_rng(1).integers(0, N, 5000)
    classes = ds.latents_classes()[idx, 1:]
    np.testing.assert_array_equal(data.index_of(classes), idx)
    np.testing.assert_array_equal(data.classes_of(idx), classes)
    np.testing.assert_array_equal(data.values_of(classes), ds.latents_values()[idx, 1:])
    assert "dsprites" in DATASETS


# ----------------------------------------------------------------------------- renderer
def test_render_is_binary_and_checks_input() -> None:
    rng = np.random.default_rng(2)
    classes = np.stack([rng.integers(0, s, 300) for s in (3, 6, 40, 32, 32)], axis=1)
    imgs = ds.render(classes)
    assert imgs.shape == (300, 64, 64) and imgs.dtype == np.uint8
    assert set(np.unique(imgs)) == {0, 1}
    assert (imgs.reshape(300, -1).sum(1) > 10).all()
    assert ds.render(np.zeros((0, 5), dtype=int)).shape == (0, 64, 64)
    with pytest.raises(ValueError, match="out of range"):
        ds.render(np.array([[3, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        ds.render(np.zeros((2, 4), dtype=int))


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_area_grows_with_scale_quadratically(shape: int) -> None:
    areas = np.array([one(shape, s, 0, 15, 15).sum() for s in range(6)])
    assert (np.diff(areas) > 0).all()
    assert 3.5 < areas[-1] / areas[0] < 4.5  # size linear in scale: area ratio (1/0.5)^2


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_position_moves_the_centre_of_mass(shape: int) -> None:
    step = 32 / 31  # centre at 16 + 32 * pos px, pos = i / 31
    com_x = np.array([centre_of_mass(one(shape, 3, 7, i, 9)) for i in range(32)])
    com_y = np.array([centre_of_mass(one(shape, 3, 7, 9, j)) for j in range(32)])
    assert np.polyfit(np.arange(32), com_x[:, 0], 1)[0] == pytest.approx(step, abs=0.03)
    assert np.polyfit(np.arange(32), com_y[:, 1], 1)[0] == pytest.approx(step, abs=0.03)
    assert np.ptp(com_x[:, 1]) < 0.3 and np.ptp(com_y[:, 0]) < 0.3


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_rotation_mirrors_and_wraps(shape: int) -> None:
    # All three shapes are symmetric under x -> -x, so orientation -theta (class 39 - k) is
    # the mirror image of theta about the centre; at posX 0 the centre is x = 16 px.
    for k in range(40):
        img, mirrored = one(shape, 5, k, 0, 20), one(shape, 5, 39 - k, 0, 20)
        assert not img[:, 32:].any()
        np.testing.assert_array_equal(img[:, :32], mirrored[:, 31::-1], err_msg=str(k))
    np.testing.assert_array_equal(one(shape, 2, 0, 4, 5), one(shape, 2, 39, 4, 5))


def test_heart_rotates_counter_clockwise() -> None:
    # Upright (orientation 0, tip down) the heart's mass sits in its lobes, ~1.9 px above the
    # centre. A quarter turn counter-clockwise on screen (class 10 = 10 * 360/39 ~ 92 degrees)
    # carries "up" to "left", a half turn (class 20) to "down", three quarters to "right".
    c = 16 + 32 * 15 / 31
    offsets = {k: centre_of_mass(one(2, 5, k, 15, 15)) - c for k in (0, 10, 20, 29)}
    for k, direction in ((0, (0, -1)), (10, (-1, 0)), (20, (0, 1)), (29, (1, 0))):
        np.testing.assert_allclose(offsets[k], 1.9 * np.array(direction), atol=0.3)
    step = np.abs(one(2, 5, 1, 15, 15).astype(int) - one(2, 5, 0, 15, 15)).sum()
    assert step > 20  # one step of 2pi/39 visibly changes a heart


def test_square_quarter_turn_is_close_to_identity() -> None:
    # 10 steps of 2pi/39 are 0.041 rad past a quarter turn: only pixels near the edges change.
    square = one(0, 5, 0, 15, 15)
    near = np.abs(one(0, 5, 10, 15, 15).astype(int) - square).sum()
    far = np.abs(one(0, 5, 5, 15, 15).astype(int) - square).sum()
    assert near < 40 < far


def gif_frames() -> np.ndarray:
    if not GIF.is_file():
        pytest.skip(f"reference frames {GIF} absent (they live beside the repo, not in it)")
    from PIL import Image, ImageSequence

    with Image.open(GIF) as im:
        frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)]
    return (np.stack(frames) > 127).astype(np.uint8)


def test_matches_the_published_gif_frames() -> None:
    frames = gif_frames()
    index, classes = [], []
    for first, shape, varying, count, base in ds.GIF_RUNS:
        for k in range(count):
            c = list(base)
            c[varying] = k
            index.append(first + k)
            classes.append([shape, *c])
    assert len(index) == 202
    wrong = (ds.render(np.array(classes)) != frames[index]).reshape(202, -1).sum(1)
    # Measured: 2 wrong pixels in all (one frame), README baseline 44 (max 4, 177 exact).
    assert wrong.sum() <= 6 and wrong.max() <= 2 and (wrong == 0).sum() >= 199, wrong


@pytest.mark.parametrize("start,stop", [(0, 1), (39, 42), (317, 318), (719, 720)])
def test_packed_grid_agrees_with_render(start: int, stop: int) -> None:
    packed = np.concatenate(list(ds.render_grid_chunks(start, stop)))
    assert packed.shape == ((stop - start) * 1024, 512) and packed.dtype == np.uint8
    classes = ds.latents_classes()[start * 1024 : stop * 1024, 1:]
    np.testing.assert_array_equal(np.packbits(ds.render(classes).reshape(-1, 4096), axis=1), packed)


# ----------------------------------------------------------------------------- cache
def tiny_chunks(calls: list[int]):
    def produce():
        calls.append(1)
        yield np.arange(48, dtype=np.uint8).reshape(3, 16)
        yield np.full((2, 16), 7, dtype=np.uint8)

    return produce


def test_cache_is_written_once_then_memory_mapped(tmp_path: Path) -> None:
    calls: list[int] = []
    path = tmp_path / "sub" / "tiny.npy"
    first = ds._cached(path, (5, 16), tiny_chunks(calls), "test")
    again = ds._cached(path, (5, 16), tiny_chunks(calls), "test")
    assert calls == [1]
    assert isinstance(again, np.memmap) and not again.flags.writeable
    np.testing.assert_array_equal(first, again)
    assert again[4, 0] == 7 and again[1, 0] == 16
    assert [p.name for p in path.parent.iterdir()] == ["tiny.npy"]  # no temp file left


def test_truncated_or_wrong_cache_is_rebuilt_with_a_warning(tmp_path: Path) -> None:
    calls: list[int] = []
    path = tmp_path / "tiny.npy"
    ds._cached(path, (5, 16), tiny_chunks(calls), "test")
    path.write_bytes(path.read_bytes()[:-10])  # a half-written file
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        rebuilt = ds._cached(path, (5, 16), tiny_chunks(calls), "test")
    assert calls == [1, 1] and rebuilt[4, 15] == 7
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        ds._cached(path, (5, 16), tiny_chunks(calls), "test")
    np.save(path, np.zeros((4, 16), dtype=np.uint8))  # a valid .npy of the wrong shape
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        ds._cached(path, (5, 16), tiny_chunks(calls), "test")
    assert len(calls) == 4


def test_temp_files_of_killed_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    """A writer killed by SIGKILL leaves its temp file (as large as the cache) behind."""
    from disvae.data import cache

    path = tmp_path / "tiny.npy"
    old = tmp_path / ".tiny.npy.4242.deadbeef.tmp"
    live = tmp_path / ".tiny.npy.4343.cafef00d.tmp"
    other = tmp_path / ".other.npy.4242.deadbeef.tmp"  # another cache's: not this one's to judge
    for f in (old, live, other):
        f.write_bytes(b"x" * 100)
    hours_ago = os.stat(old).st_mtime - 2 * cache.STALE_TEMP_SECONDS
    os.utime(old, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    ds._cached(path, (5, 16), tiny_chunks([]), "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, other.name])


def test_cache_dir_expands_a_home_relative_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from disvae.data import cache

    monkeypatch.setenv("DISVAE_CACHE", "~/somewhere/cache")
    assert cache.cache_dir() == Path.home() / "somewhere" / "cache"


def test_failed_render_leaves_no_cache(tmp_path: Path) -> None:
    def broken():
        yield np.zeros((2, 16), dtype=np.uint8)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ds._cached(tmp_path / "x.npy", (5, 16), broken, "test")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    calls: list[int] = []
    with pytest.warns(UserWarning, match="keeping it in memory"):
        arr = ds._cached(tmp_path / "file" / "tiny.npy", (5, 16), tiny_chunks(calls), "test")
    assert arr.shape == (5, 16) and arr[4, 0] == 7


def test_builtin_load_memory_maps_an_existing_cache(
    _private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full-size cache file, sparse except for its first 1024 (genuinely rendered) images.
    _private_cache.mkdir()
    path = _private_cache / f"dsprites-rendered-v{ds.RENDER_VERSION}.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (N, 512)}
        )
        f.write(next(ds.render_grid_chunks(0, 1)).data)
        f.truncate(f.tell() - 1024 * 512 + N * 512)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although a valid cache exists")

    monkeypatch.setattr(ds, "render_grid_chunks", no_render)
    data = load_dataset("dsprites")
    assert isinstance(data, ds.DSprites) and len(data) == N
    idx = np.array([0, 5, 1023, 1024, N - 1])
    imgs = data.batch(torch.from_numpy(idx))
    assert imgs.shape == (5, 1, 64, 64) and imgs.dtype == torch.float32
    expected = ds.render(ds.latents_classes()[idx[:3], 1:])
    np.testing.assert_array_equal(imgs[:3, 0].numpy(), expected)
    assert imgs[3:].sum() == 0


# ----------------------------------------------------------------------------- real .npz
SMALL = (1, 3, 2, 2, 2, 2)  # a small grid in the published layout


def write_npz(path: Path, sizes=SMALL, drop: str | None = None, **override) -> np.ndarray:
    """A dSprites-like compressed npz of the grid ``sizes``; returns its images."""
    classes = ds.latents_classes(sizes)
    imgs = ds.render(np.clip(classes[:, 1:], 0, None) * [1, 2, 7, 9, 11])
    arrays = {
        "imgs": imgs,
        "latents_classes": classes,
        "latents_values": ds.latents_values(sizes),
        "metadata": np.array({"title": "dSprites"}, dtype=object),
    }
    arrays.update(override)
    arrays.pop(drop, None)
    np.savez_compressed(path, **arrays)
    return arrays.get("imgs")


def test_small_npz_is_validated_packed_and_cached(tmp_path: Path, _private_cache: Path) -> None:
    file = tmp_path / "small.npz"
    imgs = write_npz(file)
    packed = ds._read_npz(file, SMALL)
    np.testing.assert_array_equal(packed, np.packbits(imgs.reshape(len(imgs), -1), axis=1))
    assert isinstance(packed, np.memmap)
    assert len(list(_private_cache.glob("dsprites-npz-*.npy"))) == 1
    np.testing.assert_array_equal(ds._read_npz(file, SMALL), packed)  # from the cache


def test_npz_metadata_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    file = tmp_path / "evil.npz"
    write_npz(file, metadata=np.array([Payload()], dtype=object))
    ds._read_npz(file, SMALL)
    assert not marker.exists()
    with pytest.raises(DataError, match="object"):  # an object array where data belongs
        write_npz(file, latents_values=np.array([Payload()], dtype=object))
        ds._read_npz(file, SMALL)
    assert not marker.exists()
    np.load(file, allow_pickle=True)["latents_values"]  # the payload is live: loading runs it
    assert marker.exists()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"drop": "imgs"}, "missing"),
        ({"drop": "latents_classes"}, "missing"),
        ({"imgs": np.zeros((48, 64, 32), np.uint8)}, "imgs is uint8 .48, 64, 32."),
        ({"imgs": np.zeros((48, 64, 64), np.float32)}, "imgs is float32"),
        ({"imgs": np.full((48, 64, 64), 255, np.uint8)}, "other than 0 and 1"),
        ({"latents_classes": np.zeros((48, 6), np.int64)}, "latents_classes are not the grid"),
        ({"latents_classes": np.zeros((48, 5), np.int64)}, "latents_classes is int64 .48, 5."),
        ({"latents_classes": ds.latents_values(SMALL)}, "latents_classes is float64"),
        ({"latents_values": ds.latents_values(SMALL) * 2}, "latents_values differ"),
        ({"latents_values": np.asfortranarray(ds.latents_values(SMALL))}, "Fortran-order"),
    ],
)
def test_bad_npz_raises_one_line_data_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    file = tmp_path / "bad.npz"
    write_npz(file, **kwargs)
    with pytest.raises(DataError, match=message) as err:
        ds._read_npz(file, SMALL)
    assert "\n" not in str(err.value) and ds.URL in str(err.value)


def test_npz_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*github.com/google-deepmind/dsprites-dataset"):
        load_dataset("dsprites", str(tmp_path / "nowhere.npz"))
    with pytest.raises(DataError, match=ds.NPZ_NAME):  # a folder without the file
        load_dataset("dsprites", str(tmp_path))
    (tmp_path / ds.NPZ_NAME).write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("dsprites", str(tmp_path))
    with zipfile.ZipFile(tmp_path / ds.NPZ_NAME, "w") as zf:
        zf.writestr("imgs.npy", b"\x93NUMPY garbage")
        zf.writestr("latents_classes.npy", b"")
        zf.writestr("latents_values.npy", b"")
    with pytest.raises(DataError, match="cannot read its 'latents_classes' array"):
        load_dataset("dsprites", str(tmp_path / ds.NPZ_NAME))


def test_damaged_deflate_stream_of_the_images(tmp_path: Path) -> None:
    """Bytes changed inside the compressed images fail in zlib (not a bad CRC, not an OSError):
    a one-line `DataError` all the same."""
    file = tmp_path / "bad.npz"
    write_npz(file)
    with zipfile.ZipFile(file) as zf:
        info = zf.getinfo("imgs.npy")
    raw = bytearray(file.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the member's data
    raw[start + 36 : start + 40] = bytes(b ^ 0x5A for b in raw[start + 36 : start + 40])
    file.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"cannot read its 'imgs' array|imgs cannot be read") as err:
        ds._read_npz(file, SMALL)
    assert "\n" not in str(err.value)


def test_truncated_npz_images(tmp_path: Path) -> None:
    file = tmp_path / "cut.npz"
    imgs = write_npz(file)
    with zipfile.ZipFile(file) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["imgs.npy"] = members["imgs.npy"][: -imgs[0].size - 3]  # header intact, data short
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DataError, match="imgs is truncated"):
        ds._read_npz(file, SMALL)


# A .npy header numpy cannot parse as a literal, which it then retries through `tokenize`
# (TokenError: an unclosed bracket), as a damaged cache file or npz member may have.
UNTOKENIZABLE = (
    b"\x93NUMPY\x01\x00v\x00{'descr': '|u1'\x0c 'fortran_order': False, 'shape': (4, 16), }"
    + b" " * 27 + b"]" + b" " * 15 + b"\xf1" + b" " * 13 + b"\n"
)  # fmt: skip


def test_cache_with_an_untokenizable_header_is_rebuilt(tmp_path: Path) -> None:
    calls: list[int] = []
    path = tmp_path / "tiny.npy"
    path.write_bytes(UNTOKENIZABLE + bytes(80))
    with pytest.warns(UserWarning, match="incomplete or corrupt; rebuilding it"):
        rebuilt = ds._cached(path, (5, 16), tiny_chunks(calls), "test")
    assert calls == [1] and rebuilt[4, 15] == 7 and rebuilt[1, 0] == 16


def test_npz_member_with_an_untokenizable_header(tmp_path: Path) -> None:
    file = tmp_path / "bad.npz"
    with zipfile.ZipFile(file, "w") as zf:
        for name in ("imgs", "latents_classes", "latents_values"):
            zf.writestr(f"{name}.npy", UNTOKENIZABLE)
    with pytest.raises(DataError, match="cannot read its 'latents_classes' array") as err:
        ds._read_npz(file, SMALL)
    assert "\n" not in str(err.value) and ds.URL in str(err.value)
