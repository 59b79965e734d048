"""Figures: shapes and value ranges, traversals that see which latents are used, GIFs, the
training-GIF frame store, and `disvae plot` on finished, training and RGB runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from disvae import config as C
from disvae import runs, viz
from disvae.cli_viz import add_plot_parser
from disvae.data import ArrayDataset, DatasetInfo
from disvae.errors import UserError
from disvae.models import build_model
from disvae.models.vae import VAE
from disvae.training import checkpoint as ckpt

# ---------------------------------------------------------------------- helpers


class _OneLatentDecoder(nn.Module):
    """Logits that depend on z[:, 0] only: a bright square whose brightness follows z0."""

    def __init__(self, channels: int, size: int = 16) -> None:
        super().__init__()
        pattern = torch.zeros(channels, size, size)
        pattern[:, 4:12, 4:12] = 1.0
        self.register_buffer("pattern", pattern)
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * z[:, :1, None, None] * self.pattern - 1.0


def one_latent_model(channels: int = 1, latent_dim: int = 4, size: int = 16) -> VAE:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 2 * latent_dim))
    return VAE(encoder, _OneLatentDecoder(channels, size), latent_dim).eval()


def make_run(
    path: Path, dataset: str = "dsprites_tiny", image_shape=(1, 64, 64), latent_dim: int = 4,
    finished: bool = True, decoder_gain: float = 1.0,
) -> Path:  # fmt: skip
    """A run directory with random weights (final, or a checkpoint only) and a short log.

    ``decoder_gain`` scales the decoder's weights, so that its images vary visibly."""
    cfg = C.apply_overrides(C.RunConfig(), [f"dataset={dataset}", f"latent_dim={latent_dim}"])
    path.mkdir(parents=True)
    record = runs.config_record(cfg)
    record.update(image_shape=list(image_shape), n_train=100, n_val=10, total_steps=20)
    (path / runs.CONFIG).write_text(json.dumps(record))
    torch.manual_seed(0)
    model = build_model(cfg.model, tuple(image_shape))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(decoder_gain)
    tensors = ckpt.module_state("model", model)
    if finished:
        ckpt.save_state(path / runs.MODEL, tensors, {"step": 20})
    else:
        (path / runs.CHECKPOINTS).mkdir()
        ckpt.save_state(ckpt.checkpoint_path(path / runs.CHECKPOINTS, 10), tensors, {"step": 10})
    lines = [{"step": s, "epoch": 0, "loss": 100.0 / s, "recon": 90.0 / s, "kl": 1.0 + s,
              "kl_per_dim": [0.1 * s] * latent_dim, "lr": 1e-3}
             for s in (5, 10, 15, 20)]  # fmt: skip
    (path / runs.TRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def rgb_data(n: int = 64, size: int = 64) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    return ArrayDataset(images, DatasetInfo("rgb_test", (3, size, size)), packed=False)


@contextlib.contextmanager
def file_size_limit(n_bytes: int):
    """Writes past ``n_bytes`` of any file fail with EFBIG (an OSError) in this block, as on a
    full disk: a write that stops half-way. POSIX only (RLIMIT_FSIZE, SIGXFSZ ignored)."""
    import resource

    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


needs_fsize_limit = pytest.mark.skipif(
    not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits"
)


def cells(pic: np.ndarray, n_rows: int, n_cols: int, h: int, w: int, pad: int = 2) -> np.ndarray:
    """The image cells of the right-most ``make_grid`` layout in ``pic`` (row labels, if any,
    are on its left): int ``(n_rows, n_cols, h, w, C)``."""
    grid = pic[:, pic.shape[1] - (n_cols * (w + pad) + pad) :].astype(int)
    return np.stack([
        np.stack([grid[pad + r * (h + pad) :][:h, pad + k * (w + pad) :][:, :w]
                  for k in range(n_cols)])
        for r in range(n_rows)
    ])  # fmt: skip


def as_pixels(images: np.ndarray) -> np.ndarray:
    """Float images (N, C, H, W) in [0, 1] as the int (N, H, W, C) pixels a PNG holds."""
    return viz.images.to_uint8(np.asarray(images)).transpose(0, 2, 3, 1).astype(int)


def _check_picture(pic: np.ndarray, channels: int) -> None:
    assert pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == channels
    assert pic.min() >= 0 and pic.max() <= 255 and pic.std() > 0


# ---------------------------------------------------------------------- traversals


@pytest.mark.parametrize("channels", [1, 3])
def test_traversal_rows_see_which_latent_is_used(channels):
    model = one_latent_model(channels)
    imgs = viz.traversal_images(model, n_cols=5, max_traversal=2.0)
    assert imgs.shape == (4, 5, channels, 16, 16) and imgs.dtype == np.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0
    spread = imgs.max(axis=1) - imgs.min(axis=1)  # over the traversal values
    assert spread[0].max() > 0.5, "the used latent's row must change"
    assert np.all(spread[1:] == 0), "an unused latent's row must be constant"


def test_traversal_grid_is_sorted_by_kl_and_labelled():
    model = one_latent_model(3)
    kl = np.array([0.1, 0.0, 3.0, 0.0])
    pic = viz.traversals(model, kl=kl, n_rows=2, n_cols=5, upsample=2)
    _check_picture(pic, 3)
    cell = (16 + 2) * 2  # a 16-pixel image plus 2 of padding, upsampled twice
    assert pic.shape[0] == 2 * cell + 4
    grid = pic[:, -(5 * cell + 4) :]
    centres = lambda r: grid[4 + r * cell + 16, [4 + k * cell + 16 for k in range(5)]]  # noqa: E731
    # Rows are z2 (largest KL; ignored by the decoder, so constant), then z0 (used: varies).
    assert np.ptp(centres(0).astype(int), axis=0).max() == 0
    assert np.ptp(centres(1).astype(int), axis=0).max() > 100
    left = pic[:, : pic.shape[1] - grid.shape[1]]
    assert (left < 128).any(), "the KL labels are drawn"


def test_traversal_range_quantile_and_absolute():
    assert viz.traversal_range(0.05) == pytest.approx(1.6449, abs=1e-3)
    assert viz.traversal_range(2.0) == 2.0
    np.testing.assert_allclose(viz.traversal_values(3.0, 3), [-3, 0, 3])
    with pytest.raises(ValueError):
        viz.traversal_range(0.0)


# ---------------------------------------------------------------------- other figures


@pytest.mark.parametrize("channels", [1, 3])
def test_samples_data_and_reconstructions_shapes(channels):
    model = one_latent_model(channels)
    pic = viz.samples(model, n_rows=2, n_cols=3, upsample=2)
    assert pic.shape == (2 * 36 + 4, 3 * 36 + 4, channels)
    _check_picture(pic, channels)
    x = np.random.default_rng(0).random((5, channels, 16, 16)).astype(np.float32)
    data_pic = viz.data_samples(x, n_cols=3)
    assert data_pic.shape == (2 * 18 + 2, 3 * 18 + 2, channels)
    rec = viz.reconstruct(model, x, n_cols=3)
    assert rec.shape[0] == 4 * 18 + 2  # two pairs of (data, recon) rows
    _check_picture(rec, channels)


def test_curves_and_kl_bars_render():
    records = [{"step": s, "epoch": 0, "loss": 1.0 / s, "kl": 0.5, "kl_per_dim": [0.1, 0.2],
                "tc": -0.1 * s} for s in (1, 2, 3)]  # fmt: skip
    assert viz.curves.loss_terms(records) == ["loss", "kl", "kl_per_dim", "tc"]
    fig = viz.loss_curves(records)
    assert sum(ax.get_visible() for ax in fig.axes) == 4
    pic = viz.figure_to_array(fig)
    assert pic.dtype == np.uint8 and pic.shape[2] == 3 and pic.std() > 0
    bars = viz.kl_bars([0.1, 2.0, 0.5])
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["z1", "z2", "z0"]
    assert viz.figure_to_array(bars).shape[2] == 3


def test_kl_bar_labels_show_small_and_large_values_readably():
    fig = viz.kl_bars([0.0031, 1234.4, 0.5, 12.345, 0.0, 0.0123])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["z1", "z3", "z2", "z5", "z0", "z4"]
    assert [t.get_text() for t in ax.texts] == ["1234", "12.3", "0.5", "0.0123", "<0.01", "0"]
    fmt = viz.curves.format_kl
    assert [fmt(v) for v in (99.96, 2.0, 1.234567, -0.5, float("nan"))] == [
        "100", "2", "1.23", "-0.5", "nan"
    ]  # fmt: skip
    # The traversal figures' row labels print the KL the same way.
    kl = np.array([0.004, 0.0, 3.0])
    assert viz.traversal.row_labels([2, 0, 1], kl) == ["z2 KL 3", "z0 KL <0.01", "z1 KL 0"]
    assert viz.traversal.row_labels([1], None) == ["z1"]


# ---------------------------------------------------------------------- GIFs


def test_traversal_gifs_have_the_requested_frames_and_loop():
    model = one_latent_model(1)
    bases = np.zeros((3, 4), np.float32)
    grid, per = viz.traversal_gifs(model, bases, n_frames=12, max_traversal=2.0)
    assert len(grid) == 12 and set(per) == {0, 1, 2, 3}
    assert grid[0].shape[0] == 4 * 18 + 2 and grid[0].shape[1] > 3 * 18 + 2  # + row labels
    assert per[0][0].shape == (18 + 2, 3 * 18 + 2, 1)
    for frames in (grid, per[0]):
        with Image.open(io.BytesIO(viz.gif_bytes(frames, fps=10))) as im:
            assert im.n_frames == 12
            assert im.info.get("loop") == 0
    # -m .. m and back: the first and middle frames are the extremes, the animation is periodic.
    assert not np.array_equal(per[0][0], per[0][6])
    assert np.array_equal(per[0][3], per[0][9])


def test_traversal_gif_grid_has_the_row_labels_of_the_static_figure():
    model = one_latent_model(1)
    kl = np.array([0.1, 0.0, 3.0, 0.004])
    grid, per = viz.traversal_gifs(
        model, np.zeros((3, 4), np.float32), kl=kl, n_frames=4, upsample=2
    )
    cell = (16 + 2) * 2
    bare = (4 * cell + 4, 3 * cell + 4)  # the grid of 4 rows by 3 bases, without labels
    label_w = grid[0].shape[1] - bare[1]
    assert grid[0].shape[0] == bare[0] and label_w > 20  # wider by the label strip only
    assert per[2][0].shape == (cell + 4, bare[1], 1)  # one latent a file: no labels
    # The strip is the static traversals' own (same labels, same rows), on every frame.
    static = viz.traversals(model, kl=kl, n_cols=3, upsample=2)
    assert static.shape == grid[0].shape
    strip = static[:, :label_w]
    assert all(np.array_equal(f[:, :label_w], strip) for f in grid)
    assert not np.array_equal(grid[0][:, label_w:], grid[2][:, label_w:])  # the grid moves
    for r in range(4):  # every row's band holds dark text on the white strip
        band = strip[4 + r * cell : 4 + (r + 1) * cell]
        assert (band < 100).sum() > 20 and band.max() == 255
    assert (strip[:4] == 255).all()  # above the first row: blank
    unlabelled = viz.traversal_gifs(model, np.zeros((3, 4), np.float32), n_frames=4, upsample=2)
    assert not np.array_equal(unlabelled[0][0][:, :label_w], strip)  # no KL: other labels


def test_training_frames_assemble_into_a_gif(tmp_path):
    model = one_latent_model(1)
    for step in (0, 10, 20, 30):
        model.decoder.scale.data.fill_(step / 10)
        viz.append_training_frame(tmp_path, step, viz.training_snapshot(model, n_cols=5))
    assert viz.prune_training_frames(tmp_path, after_step=20) == 1  # a resume from step 20
    assert [s for s, _ in viz.training_frames(tmp_path)] == [0, 10, 20]
    path = viz.write_training_gif(tmp_path, fps=4)
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.info.get("loop") == 0
    assert viz.write_training_gif(tmp_path / "nothing") is None


# ---------------------------------------------------------------------- runs and the CLI


def _plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_plot_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plot", *argv])
    return args.func(args)


def test_plot_all_on_a_training_run(tmp_path):
    run = make_run(tmp_path / "r", finished=False)
    assert _plot([str(run), "all", "--cols", "3", "--n-steps", "4", "-q"]) == 0
    names = {p.name for p in (run / "plots").rglob("*") if p.is_file()}
    expected = {"samples.png", "data-samples.png", "reconstruct.png", "traversals.png",
                "reconstruct-traverse.png", "all.gif", "kl.png", "losses.png"}  # fmt: skip
    assert expected <= names and {f"z{d}.gif" for d in range(4)} <= names
    pic = viz.images.read_png(run / "plots" / "traversals.png")
    assert pic.shape[2] == 1


def test_plot_rgb_run_with_posterior_traversals(tmp_path):
    run = make_run(tmp_path / "rgb", image_shape=(3, 64, 64))
    paths = viz.plot_run(
        run,
        ["traversals", "reconstruct-traverse"],
        viz.PlotOptions(cols=3, rows=2, posterior=True, idcs=(0, 5)),
        data=rgb_data(),
    )
    assert {p.name for p in paths} == {"traversals_posterior.png",
                                       "reconstruct-traverse_posterior.png"}  # fmt: skip
    pic = viz.images.read_png(paths[1])
    assert pic.shape[2] == 3 and pic.shape[0] == 4 * 66 + 2


@pytest.mark.parametrize(
    "argv",
    [["{run}", "nonsense"], ["{run}", "data-samples", "--idcs", "99999"], ["{missing}", "samples"],
     # a prior traversal reads no image, and `all` skips what fails: the index is checked first
     ["{run}", "traversals", "--idcs", "99999"], ["{run}", "all", "--idcs", "3", "99999"]],
)  # fmt: skip
def test_plot_bad_input_is_a_user_error(tmp_path, argv):
    run = make_run(tmp_path / "r")
    argv = [a.format(run=run, missing=tmp_path / "nope") for a in argv]
    with pytest.raises(UserError, match="nonsense|99999 is out of range|does not exist"):
        _plot(argv)
    assert not (run / "plots").exists()
    with pytest.raises(UserError):
        viz.PlotOptions(upsample=0)


def test_a_train_log_with_bytes_that_are_not_utf8_loses_only_those_lines(tmp_path, capsys):
    from disvae import cli

    run = make_run(tmp_path / "r")
    with open(run / runs.TRAIN_LOG, "ab") as f:
        f.write(b'\xff\xfe{"step": 25}\n')
    assert [r["step"] for r in viz.read_train_log(run / runs.TRAIN_LOG)] == [5, 10, 15, 20]
    assert cli.main(["plot", str(run), "losses", "-q"]) == 0
    assert (run / "plots" / "losses.png").is_file()


def _main_err(argv: list[str], capsys) -> str:
    """The stderr of ``disvae ARGV``, which must fail with exit code 2."""
    from disvae import cli

    assert cli.main(argv) == 2  # argparse's refusals too
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["samples", "-s", "-1"], "argument -s/--seed: must be at least 0, got -1"),
        (["traversals", "-t", "inf"], "argument -t/--max-traversal: must be a number in (0, 1000]"),
        (["traversals", "-t", "1e9"], "argument -t/--max-traversal: must be a number in (0, 1000]"),
        (["gif-traversals", "--n-steps", "100000"], "--n-steps: must be at most 1000"),
        (["samples", "-u", "1000"], "disvae: error: plot 'samples' would be 464000 x 398000 "
         "pixels, over the limit of 8192 a side; lower --upsample, --cols or --rows"),
        (["samples", "-c", "200"], "over the limit of 8192 a side"),
        (["reconstruct", "-r", "100"], "over the limit of 8192 a side"),
        (["gif-traversals", "-u", "4", "--n-steps", "1000"], "lower --n-steps"),
    ],
)  # fmt: skip
def test_plot_sizes_seeds_and_ranges_out_of_bounds_are_one_line_errors(
    tmp_path, capsys, argv, message
):
    run = make_run(tmp_path / "r")
    err = _main_err(["plot", str(run), *argv], capsys)
    assert message in err and "Traceback" not in err
    assert not (run / "plots").exists()


def test_plot_options_refuse_what_the_cli_refuses():
    for bad in ({"seed": -1}, {"max_traversal": float("inf")}, {"n_steps": 10_000}):
        with pytest.raises(UserError):
            viz.PlotOptions(**bad)


def test_plot_out_dir_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    run = make_run(tmp_path / "r")
    file = run / runs.CONFIG
    before = file.read_bytes()
    err = _main_err(["plot", str(run), "kl", "-o", str(file)], capsys)
    assert f"disvae: error: --out-dir {str(file)!r} is a file; pass a directory" in err
    assert err.count("\n") == 1 and file.read_bytes() == before


def test_the_light_cli_module_names_every_plot():
    from disvae import cli_viz
    from disvae.report import content
    from disvae.viz import plots
    from disvae.viz.plots import PLOTS

    assert cli_viz.PLOTS == PLOTS
    assert (cli_viz.MAX_FRAMES, cli_viz.MAX_TRAVERSAL) == (plots.MAX_FRAMES, plots.MAX_TRAVERSAL)
    assert (cli_viz.MAX_REPORT_COLS, cli_viz.MAX_SLIDER_STEPS) == (
        content.MAX_COLS,
        content.MAX_EXPLORER_STEPS,
    )
    d = content.ReportOptions()  # the report flags' defaults (a sweep's page refuses others)
    assert (cli_viz.REPORT_COLS, cli_viz.REPORT_TRAVERSAL, cli_viz.REPORT_SLIDER_STEPS) == (
        d.n_cols,
        d.max_traversal,
        d.explorer_steps,
    )


def test_posterize_keeps_16_levels_within_half_a_step():
    from disvae.viz.images import posterize

    picture = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    out = posterize(picture, 16)
    assert out.dtype == np.uint8 and len(np.unique(out)) == 16
    assert np.abs(out.astype(int) - picture).max() <= 9  # half of a 17-grey step, rounded
    assert out.min() == 0 and out.max() == 255


def test_non_finite_images_convert_deterministically_without_a_warning():
    from disvae.viz.images import gif_bytes, make_grid, to_uint8

    x = np.array([np.nan, np.inf, -np.inf, 0.5, 2.0, -1.0, 0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" would raise
        for dtype in (np.float64, np.float32, np.float16):
            assert to_uint8(x.astype(dtype)).tolist() == [0, 255, 0, 128, 255, 0, 0, 255]
        batch = np.full((2, 1, 4, 4), np.nan, np.float32)  # a model whose weights went NaN
        batch[1, 0, 0, 0] = np.inf
        grid = make_grid(batch, n_cols=2)
        gif_bytes([grid, grid])
    assert grid.shape == (4 + 4, 2 * 6 + 2, 1)
    assert (grid[2:6, 2:6] == 0).all() and grid[2, 8] == 255 and (grid[2, 9:12] == 0).all()
    assert grid[0, 0] == viz.images.PAD_VALUE


def test_format_table_fits_its_columns_to_the_longest_entry():
    from disvae.cli_format import format_table

    rows = [
        ("mig", "0.1234", "(0.1s)"),
        ("modularity/explicitness", "0.9876", "(12.3s)"),
        ("unsupervised/gaussian_total_correlation", "12345.6789", "(0.0s)"),
        ("dci/disentanglement", "-0.5000", "(103.2s)"),
    ]
    lines = format_table(rows)
    assert lines[0] == "  mig" + " " * 36 + "      0.1234    (0.1s)"
    assert lines[2] == "  unsupervised/gaussian_total_correlation  12345.6789    (0.0s)"
    assert len({len(line) for line in lines}) == 1  # right-aligned last column: all as wide
    name_w = len(rows[2][0])
    for line, (name, value, secs) in zip(lines, rows, strict=True):
        assert line[2:].startswith(name) and line[2 + len(name) : 2 + name_w + 2].strip() == ""
        assert line[: 2 + name_w + 2 + 10].endswith(value)  # numbers end in one column
        assert line.endswith(secs)
    # Left-aligned columns start at one offset; short rows and no trailing spaces.
    assert format_table([("a", "x", 1), ("bbb", "yy")], align="<<", indent="", gap=1) == [
        "a   x  1",
        "bbb yy",
    ]
    assert format_table([]) == []


def test_loss_curves_need_only_the_log_and_a_damaged_eval_file_falls_back_to_it(tmp_path):
    run = make_run(tmp_path / "r")
    (run / runs.MODEL).unlink()  # no weights at all (no checkpoint either)
    [path] = viz.plot_run(run, ["losses"])
    assert path.name == "losses.png" and viz.images.read_png(path).std() > 0
    with pytest.raises(UserError, match="no weights yet"):
        viz.plot_run(run, ["kl"])
    run = make_run(tmp_path / "r2")
    (run / runs.EVAL_LOSSES).write_text('{"losses": {"kl_per_dim": "x"}')  # torn and wrong
    view = viz.plots.open_run(run, load_data=False)
    assert view.kl_source == "train log, step 20"  # the last logged line's KL
    np.testing.assert_allclose(view.kl, [2.0] * 4)


def test_the_size_check_counts_the_row_labels(tmp_path):
    """124 traversal values of 64-pixel cells fill 8,186 of the 8,192 pixels a side allowed;
    the row labels beside them take it over: refused before anything is drawn."""
    run = make_run(tmp_path / "r", latent_dim=2)
    with pytest.raises(UserError, match="over the limit of 8192 a side"):
        viz.plot_run(run, ["traversals"], viz.PlotOptions(cols=124, rows=1))
    assert not (run / "plots").exists()
    [path] = viz.plot_run(run, ["traversals"], viz.PlotOptions(cols=110, rows=1))
    view = viz.plots.open_run(run)  # (the KL of the labels: on the data, as plot_run's)
    labels = viz.traversal.row_labels(range(2), view.kl)
    expected = 110 * 66 + 2 + viz.images.label_width(labels)
    assert viz.images.read_png(path).shape[1] == expected <= 8192


# ---------------------------------------------------------------------- pixels and files


def test_plotted_traversals_and_reconstructions_are_the_decoders_pixels(tmp_path):
    """Every cell of the written PNGs is the decode (or the data image) it stands for: rows in
    KL order, each latent set to -m..m, originals paired with their own reconstructions, RGB
    channels in order and images not transposed."""
    run = make_run(tmp_path / "rgb", image_shape=(3, 64, 64), decoder_gain=3.0)
    data = rgb_data()
    idcs = (5, 0, 9, 2, 7, 1)
    opts = viz.PlotOptions(cols=3, rows=2, idcs=idcs, max_traversal=1.5)
    paths = viz.plot_run(run, ["traversals", "reconstruct"], opts, data=data)
    view = viz.plots.open_run(run, data=data)
    m = view.model
    trav = cells(viz.images.read_png(paths[0]), 2, 3, 64, 64)
    order = viz.traversal.kl_order(view.kl, 4)[:2]
    for r, d in enumerate(order):
        z = np.zeros((3, 4), np.float32)
        z[:, d] = [-1.5, 0.0, 1.5]
        # (±1: a batch of another size may round a last float bit differently)
        np.testing.assert_allclose(trav[r], as_pixels(viz.decode(m, z)), atol=1)
    rec = cells(viz.images.read_png(paths[1]), 4, 3, 64, 64)
    x = data.numpy_images(np.array(idcs)).astype(np.float32) / 255
    recon = as_pixels(viz.reconstruct_images(m, x))
    for r in range(2):  # a row of originals, then the row of their reconstructions
        np.testing.assert_array_equal(
            rec[2 * r], data.numpy_images(np.array(idcs[3 * r : 3 * r + 3])).transpose(0, 2, 3, 1)
        )
        np.testing.assert_allclose(rec[2 * r + 1], recon[3 * r : 3 * r + 3], atol=1)


@needs_fsize_limit
def test_a_write_that_fails_half_way_keeps_the_old_figure_whole(tmp_path):
    old = np.zeros((8, 8, 1), np.uint8)
    new = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # ~12 kB
    png, gif = viz.save_png(old, tmp_path / "a.png"), viz.save_gif([old, old], tmp_path / "a.gif")
    before = {p: p.read_bytes() for p in (png, gif)}
    assert max(len(b) for b in before.values()) < 4096
    with file_size_limit(4096):  # as a full disk (or Ctrl-C) would stop it
        with pytest.raises(OSError):
            viz.save_png(new, png)
        with pytest.raises(OSError):
            viz.save_gif([new, new[::-1]], gif)
    assert {p: p.read_bytes() for p in (png, gif)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.png"]  # no temporary


def test_loss_curves_of_a_single_log_line_mark_its_values():
    """A run's first log line is one point per term: a line through it draws nothing."""
    fig = viz.loss_curves([{"step": 100, "epoch": 0, "loss": 5.0, "kl_per_dim": [0.1, 0.2]}])
    assert [line.get_marker() for ax in fig.axes for line in ax.lines] == ["o", "o", "o"]
    one = viz.loss_curves([{"step": 100, "epoch": 0, "loss": 5.0}])  # no legend either
    pic = viz.figure_to_array(one).astype(int)
    blue = np.abs(pic - [31, 119, 180]).sum(axis=2) < 40  # matplotlib's first colour
    assert blue.sum() > 10, "the value is drawn"
    two = viz.loss_curves([{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}])
    assert two.axes[0].lines[0].get_marker() in ("None", None)  # lines stay plain


def test_plot_says_the_folder_it_wrote_into(tmp_path, capsys):
    run = make_run(tmp_path / "r")
    assert _plot([str(run), "gif-traversals", "kl", "-r", "1", "-c", "2", "--n-steps", "2"]) == 0
    assert capsys.readouterr().out == f"wrote 3 file(s) into {run / 'plots'}\n"
    assert (run / "plots" / "kl.png").is_file()


def test_fewer_gif_rows_remove_the_per_latent_gifs_of_an_earlier_call(tmp_path):
    run = make_run(tmp_path / "r")
    gifs = run / "plots" / "gif-traversals"
    mine = gifs / "zoom.gif"
    assert _plot([str(run), "gif-traversals", "-r", "3", "-c", "1", "--n-steps", "2"]) == 0
    first = sorted(p.name for p in gifs.glob("z[0-9]*.gif"))
    assert len(first) == 3
    mine.write_bytes(b"a file of the user's")
    assert _plot([str(run), "gif-traversals", "-r", "1", "-c", "1", "--n-steps", "2"]) == 0
    left = sorted(p.name for p in gifs.glob("z[0-9]*.gif"))
    assert len(left) == 1 and left[0] in first
    assert (gifs / "all.gif").is_file() and mine.read_bytes() == b"a file of the user's"


def test_more_rows_than_latents_says_that_all_latents_are_shown(tmp_path, capsys):
    """`--rows 50` on a 4-latent model draws the 4 rows it has, and says so on one line
    (silently, the figure looked like a lost flag); the library itself stays quiet."""
    from disvae import cli

    run = make_run(tmp_path / "r")
    viz.plot_run(run, ["traversals"], viz.PlotOptions(rows=50, cols=2))  # no logging set up
    assert capsys.readouterr().err == ""
    argv = ["plot", str(run), "traversals", "gif-traversals", "-c", "2", "--n-steps", "2"]
    assert cli.main([*argv, "--rows", "50"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "--rows 50 is more than the model's 4 latents: traversals, gif-traversals show all 4, "
        "one row each\n"
    )
    pic = viz.images.read_png(run / "plots" / "traversals.png")
    assert pic.shape[0] == 4 * 66 + 2  # 4 rows of 64-pixel images
    assert cli.main(["plot", str(run), "traversals", "--rows", "4", "-c", "1"]) == 0  # all it has
    assert cli.main(["plot", str(run), "samples", "--rows", "50", "-c", "1"]) == 0  # grid rows
    assert capsys.readouterr().err == ""


def test_the_training_gif_labels_its_rows_as_the_traversals_do(tiny_data, tmp_path):
    """A real run's training.gif (frames of latents 0..2 in index order) has the row labels of
    traversals.png beside every frame, under the step caption."""
    from PIL import ImageSequence

    from disvae.training import train

    cfg = C.apply_overrides(C.RunConfig(), ["dataset=dsprites_tiny", "batch_size=16",
                            "latent_dim=3", "steps=2", "snapshot_every=1"])  # fmt: skip
    run = train(cfg, tmp_path / "g", data=tiny_data, progress=False)
    with Image.open(run / "training.gif") as im:
        frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(im)]
    assert len(frames) == 3  # steps 0, 1, 2
    model, _ = runs.load_run(run)
    static = viz.traversals(model, n_cols=7)  # kl None: index order, labelled z0, z1, z2
    grid_w = 7 * 66 + 2
    label_w = static.shape[1] - grid_w
    assert label_w > 10
    strip = viz.images.posterize(static[:, :label_w], 16)[:, :, 0]
    for f in frames:
        assert f.shape == (14 + 3 * 66 + 2, label_w + grid_w)  # caption, then strip | grid
        np.testing.assert_array_equal(f[14:, :label_w], strip)
    # Frames that are no grid of the run's images (stored by other code) are shown as they are.
    other = tmp_path / "other"
    shutil.copytree(run, other)
    for step, _ in viz.training_frames(other):
        viz.append_training_frame(other, step, np.zeros((20, 30, 1), np.uint8))
    with Image.open(io.BytesIO(viz.training_gif_bytes(other))) as im:
        assert im.size == (30, 14 + 20)
