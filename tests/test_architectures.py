"""The conv and stacked architectures: shapes for every size, clear errors for impossible
combinations, config round trips, learning, tower separation, and pictures of multi-patch data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from disvae import config as C
from disvae import runs
from disvae.config import ModelConfig
from disvae.data import ArrayDataset, DatasetInfo
from disvae.errors import UserError
from disvae.models import build_model
from disvae.training import train
from disvae.viz import images as I
from disvae.viz import traversal as T

SIZES = (28, 32, 64, 128, 256)
SMALL = {"channels": (8, 16), "hidden": (32,)}  # fast towers for the stacked tests


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is as fast, and immune to oversubscribed CPUs (where
    two spinning threads make a small conv ~30x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _logits_shape(cfg: ModelConfig, shape, patches=()) -> tuple[int, ...]:
    torch.manual_seed(0)
    model = build_model(cfg, shape, patches)
    out = model(torch.rand(2, *shape))
    assert out.mu.shape == out.z.shape == (2, cfg.latent_dim)
    return tuple(out.logits.shape)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_defaults_return_the_input_shape(size, channels):
    assert _logits_shape(ModelConfig("conv", 5), (channels, size, size)) == (
        2,
        channels,
        size,
        size,
    )


@pytest.mark.parametrize("size", SIZES[1:])
@pytest.mark.parametrize("channels", [1, 3])
def test_burgess_returns_the_input_shape(size, channels):
    assert _logits_shape(ModelConfig("burgess", 5), (channels, size, size)) == (
        2, channels, size, size)  # fmt: skip


def test_conv_default_stacks_per_size():
    def convs(size):
        model = build_model(ModelConfig("conv"), (1, size, size))
        return [m.out_channels for m in model.encoder if isinstance(m, nn.Conv2d)]

    assert convs(28) == [32, 32]  # 28 -> 14 -> 7
    assert convs(32) == [32, 32, 64]  # -> 4
    assert convs(256) == [32, 32, 64, 64, 128, 128]


@pytest.mark.parametrize(
    "knobs, shape",
    [
        ({"channels": (16, 16, 32), "kernels": (3,), "paddings": (1,)}, (1, 28, 28)),  # 28-14-7-4
        (
            {"channels": (8, 8), "kernels": (5, 3), "strides": (3, 1), "paddings": (0, 2)},
            (3, 64, 64),
        ),
        ({"channels": (8,), "strides": (1,), "hidden": ()}, (1, 28, 28)),
        ({"channels": (), "hidden": (16,)}, (1, 8, 8)),  # no convs: a dense VAE
        ({"channels": (8, 8, 8)}, (3, 100, 100)),
    ],
)
def test_conv_knobs_return_the_input_shape(knobs, shape):
    assert _logits_shape(ModelConfig("conv", 4, **knobs), shape) == (2, *shape)


def test_output_padding_restores_odd_maps():
    cfg = ModelConfig("conv", 4, channels=(8, 8, 8), kernels=(3,), paddings=(1,))
    model = build_model(cfg, (1, 28, 28))  # 28 -> 14 -> 7 -> 4
    pads = [m.output_padding for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert pads == [(0, 0), (1, 1), (1, 1)]  # 4 -> 7 -> 14 -> 28 (without them: 27)


@pytest.mark.parametrize("n_patches", [1, 2, 3])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_stacked_returns_every_patch(n_patches, shared, channels):
    shape = (n_patches * channels, 28, 28)
    patches = tuple(f"p{i}" for i in range(n_patches))
    cfg = ModelConfig("stacked", 4, shared_tower=shared, **SMALL)
    assert _logits_shape(cfg, shape, patches) == (2, *shape)
    model = build_model(cfg, shape, patches)
    assert len(model.encoder.towers) == len(model.decoder.towers) == (1 if shared else n_patches)
    assert model.patches == patches


@pytest.mark.parametrize("size", [32, 64])
def test_stacked_burgess_towers(size):
    cfg = ModelConfig("stacked", 4, tower="burgess", fusion=(64,))
    assert _logits_shape(cfg, (2, size, size), ("a", "b")) == (2, 2, size, size)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "cfg, shape, patches, message",
    [
        (ModelConfig("conv", channels=(32,) * 6), (1, 28, 28), (),
         "conv layer 5 (kernel 4, stride 2, padding 1) would reduce a 1x1 map to 0x0 pixels"),
        (ModelConfig("conv", kernels=(11,)), (1, 8, 8), (),
         "conv layer 1 (kernel 11, stride 2, padding 1) would reduce a 8x8 map to 0x0"),
        (ModelConfig("conv", channels=(32, 64), kernels=(4, 4, 4)), (1, 64, 64), (),
         "lists disagree in length (model.channels has 2, model.kernels has 3 entries)"),
        (ModelConfig("conv", strides=(2, 2), paddings=(1, 1, 1)), (1, 64, 64), (),
         "model.strides has 2, model.paddings has 3"),
        (ModelConfig("conv", strides=(2, 0)), (1, 64, 64), (),
         "model.strides[1] must be at least 1"),
        (ModelConfig("conv", paddings=(-1,)), (1, 64, 64), (),
         "model.paddings[0] must be at least 0"),
        (ModelConfig("burgess", channels=(32,)), (1, 64, 64), (),
         "model.channels is not used by arch 'burgess'"),
        (ModelConfig("conv", shared_tower=True), (1, 64, 64), (),
         "model.shared_tower is not used by arch 'conv'"),
        (ModelConfig("burgess"), (1, 28, 28), (), "32, 64, 128 or 256 pixel images, got 28x28"),
        (ModelConfig("stacked"), (3, 32, 32), (), "arch 'stacked' needs multi-patch data"),
        (ModelConfig("stacked"), (3, 32, 32), ("a", "b"),
         "3 channels cannot hold 2 patches (a, b)"),
        (ModelConfig("stacked", tower="burgess", hidden=(64,)), (2, 32, 32), ("a", "b"),
         "model.hidden is not used by arch 'stacked' with tower 'burgess'"),
        (ModelConfig("stacked", tower="vgg"), (2, 32, 32), ("a", "b"), "unknown model.tower 'vgg'"),
        (ModelConfig("stacked", fusion=(0,)), (2, 32, 32), ("a", "b"),
         "model.fusion[0] must be at least 1"),
    ],
)  # fmt: skip
def test_impossible_combinations_name_the_problem(cfg, shape, patches, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_model(cfg, shape, patches)


# --------------------------------------------------------------------------- config


def test_conv_knobs_round_trip_through_toml_json_and_set(tmp_path):
    flags = ["arch=conv", "model.channels=[32, 32, 64]", "kernels=[4]", "hidden=[128,64]",
             "model.fusion=none"]  # fmt: skip
    cfg = C.apply_overrides(C.RunConfig(), flags)
    assert cfg.model.channels == (32, 32, 64) and cfg.model.kernels == (4,)
    assert cfg.model.hidden == (128, 64) and cfg.model.fusion is None
    (tmp_path / "run.toml").write_text(C.dumps_toml(cfg))
    assert C.load_file(tmp_path / "run.toml") == cfg
    (tmp_path / "config.json").write_text(json.dumps(C.to_dict(cfg)))
    assert C.load_file(tmp_path / "config.json") == cfg
    text = '[model]\narch = "stacked"\nchannels = [8, 16]\nshared_tower = true\nfusion = []\n'
    (tmp_path / "stacked.toml").write_text(text)
    m = C.load_file(tmp_path / "stacked.toml").model
    assert (m.arch, m.channels, m.shared_tower, m.fusion) == ("stacked", (8, 16), True, ())


@pytest.mark.parametrize(
    "flag, message",
    [
        ("model.channels=32", "model.channels must be a list of int or null, got 32"),
        ('channels=[32, "a"]', r"model.channels\[1\] must be int, got 'a'"),
        ("kernels=[3.5]", r"model.kernels\[0\] must be int"),
        ("shared_tower=1", "model.shared_tower must be bool or null"),
        ("model.widths=[3]", "unknown config key 'model.widths'"),
    ],
)
def test_wrong_knob_types_name_the_key(flag, message):
    with pytest.raises(UserError, match=message):
        C.apply_overrides(C.RunConfig(), [flag])


# --------------------------------------------------------------------------- towers


def _stacked(shared: bool, n_patches: int = 2) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig("stacked", 3, shared_tower=shared, **SMALL)
    patches = tuple(f"p{i}" for i in range(n_patches))
    return build_model(cfg, (n_patches, 28, 28), patches)


@pytest.mark.parametrize("shared", [False, True])
def test_each_patch_feature_sees_only_its_patch(shared):
    """The fusion's input for patch 0 depends on patch 0's pixels only (a tower reading the
    wrong channels, or every channel, fails this)."""
    model = _stacked(shared, n_patches=3)
    feats = {}
    hook = model.encoder.fusion.register_forward_pre_hook(lambda m, a: feats.update(x=a[0]))
    x = torch.rand(4, 3, 28, 28, requires_grad=True)
    model.encode(x)
    hook.remove()
    width = feats["x"].shape[1] // 3
    for p in range(3):
        (grad,) = torch.autograd.grad(feats["x"][:, p * width : (p + 1) * width].sum(), x,
                                      retain_graph=True)  # fmt: skip
        per_channel = grad.abs().sum(dim=(0, 2, 3))
        assert per_channel[p] > 0 and per_channel.sum() == per_channel[p]


def test_unshared_decoder_towers_are_separate():
    model = _stacked(shared=False)
    logits = model.decode(torch.randn(4, 3))
    logits[:, 0].sum().backward()  # patch 0's logits only
    grads = [sum(p.grad.abs().sum() for p in t.parameters() if p.grad is not None)
             for t in model.decoder.towers]  # fmt: skip
    assert grads[0] > 0 and grads[1] == 0


def test_shared_decoder_tells_patches_apart():
    model = _stacked(shared=True)
    logits = model.decode(torch.randn(4, 3))
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # the patch embedding differs
    with torch.no_grad():
        model.decoder.patch_embedding.zero_()
    logits = model.decode(torch.randn(4, 3))
    assert torch.allclose(logits[:, 0], logits[:, 1])  # ...and is all that differs


# --------------------------------------------------------------------------- training


def _squares(n: int, patches: tuple[str, ...], size: int = 28, seed: int = 0) -> ArrayDataset:
    """Each patch a white square at a random place: one 28x28 image per patch, stacked."""
    rng = np.random.default_rng(seed)
    p = max(1, len(patches))
    x = np.zeros((n, p, size, size), np.uint8)
    for i in range(n):
        for k in range(p):
            r, c = rng.integers(0, size - 8, 2)
            x[i, k, r : r + 8, c : c + 8] = 255
    return ArrayDataset(x, DatasetInfo("squares", (p, size, size), patches=patches), packed=False)


def _train(tmp_path, data, *flags: str):
    base = ["loss=vae", "latent_dim=4", "batch_size=32", "steps=60", "log_every=10",
            "lr=2e-3", "checkpoint_every=1000", "snapshot_every=0"]  # fmt: skip
    cfg = C.apply_overrides(C.RunConfig(), [*base, *flags])
    run = train(cfg, tmp_path / "run", data=data, progress=False)
    log = [json.loads(line) for line in (run / runs.TRAIN_LOG).read_text().splitlines()]
    return run, log


@pytest.mark.parametrize(
    "flags, patches",
    [
        (["arch=conv", "channels=[8, 16]", "hidden=[32]"], ()),
        (["arch=stacked", "channels=[8, 16]", "hidden=[32]", "fusion=[32]"], ("left", "right")),
    ],
)
def test_short_training_lowers_the_loss_and_reloads(tmp_path, flags, patches):
    data = _squares(256, patches)
    run, log = _train(tmp_path, data, *flags)
    assert log[-1]["recon"] < 0.7 * log[0]["recon"], (log[0], log[-1])
    assert json.loads((run / runs.CONFIG).read_text())["patches"] == list(patches)
    model, cfg = runs.load_run(run)
    assert model.patches == patches and cfg.model.channels == (8, 16)
    x = data.batch(torch.arange(4))
    assert model(x).logits.shape == x.shape
    if patches:
        _check_run_figures(run, data)


def _check_run_figures(run, data) -> None:
    """`disvae plot` and `disvae report` on a stacked run: patches side by side (2 x 28 wide)."""
    from disvae.report import render_report
    from disvae.viz import plot_run

    paths = plot_run(run, ["data-samples", "reconstruct", "reconstruct-traverse"], data=data)
    pics = {p.stem: I.read_png(p) for p in paths}
    assert pics["data-samples"].shape[1] == 7 * (56 + 2) + 2  # 7 cells of 2 patches a row
    assert pics["reconstruct"].shape[0] == 6 * 30 + 2  # 3 pairs of rows, each cell 28 high
    assert pics["reconstruct-traverse"].shape[0] == (2 + 4) * 30 + 2  # original, recon, 4 latents
    html = render_report([run], data=data)
    assert '"cell": [28, 56]' in html  # the latent explorer's cells hold both patches


# --------------------------------------------------------------------------- pictures


def test_tile_patches_lays_patches_side_by_side():
    x = np.zeros((2, 9, 2, 3), np.float32)  # 2 samples, 3 RGB patches of 2x3
    for p in range(3):
        x[:, 3 * p : 3 * p + 3] = p + np.arange(3)[None, :, None, None] / 10  # value p.channel
    x[1] += 10
    tiled = I.tile_patches(x, 3)
    assert tiled.shape == (2, 3, 2, 9)
    assert np.allclose(tiled[0, 1, 0], [0.1] * 3 + [1.1] * 3 + [2.1] * 3)  # channel 1 of each
    assert np.allclose(tiled[1, 2, 1], [10.2] * 3 + [11.2] * 3 + [12.2] * 3)
    assert I.tile_patches(x, 1) is x
    with pytest.raises(ValueError, match="9 channels do not split into 4 patches"):
        I.tile_patches(x, 4)


def test_figures_of_a_stacked_model_show_patches_side_by_side():
    from disvae.viz import reconstructions

    model = _stacked(shared=False).eval()
    assert T.decode(model, np.zeros((5, 3), np.float32)).shape == (5, 1, 28, 56)
    x = np.random.default_rng(0).random((4, 2, 28, 28)).astype(np.float32)
    assert T.shown(model, x).shape == (4, 1, 28, 56)
    assert np.array_equal(T.shown(model, x)[:, 0, :, 28:], x[:, 1])
    pic = reconstructions.reconstruct(model, x, n_cols=4)
    grid_width = 4 * (56 + 2) + 2
    assert pic.shape[0] == 2 * 30 + 2 and pic.shape[1] > grid_width and pic.shape[2] == 1
    pic = T.traversals(model, n_cols=3, reference=[("original", T.shown(model, x[:1]))])
    assert pic.shape[0] == 4 * 30 + 2  # the original's row and one row per latent
