"""Property-based tests (Hypothesis) of the configurable architectures' shape planning and of
sweep files' expansion: what every valid input must satisfy, on inputs no example test lists."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from disvae import config as C
from disvae.errors import UserError
from disvae.models import build_model
from disvae.models.conv import _out, plan, spec_from_config
from disvae.sweep import spec as S

# ------------------------------------------------------------------ conv stacks of any shape

_layers = st.integers(1, 3).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(1, 4), min_size=n, max_size=n),  # channels
        st.lists(st.integers(1, 5), min_size=n, max_size=n),  # kernels
        st.lists(st.integers(1, 3), min_size=n, max_size=n),  # strides
        st.lists(st.integers(0, 2), min_size=n, max_size=n),  # paddings
    )
)
_shapes = st.tuples(st.integers(1, 3), st.integers(1, 24), st.integers(1, 24))


@settings(max_examples=150)
@given(_shapes, _layers, st.lists(st.integers(1, 8), max_size=2), st.integers(1, 4))
def test_a_conv_stack_either_is_refused_or_returns_the_input_shape(shape, layers, hidden, d):
    """Any kernels/strides/paddings/sizes: either a one-line `UserError` at build time, or a
    model whose decoder gives back exactly (C, H, W) and whose encoder gives (B, D) twice."""
    channels, kernels, strides, paddings = layers
    cfg = C.ModelConfig(arch="conv", latent_dim=d, channels=tuple(channels),
                        kernels=tuple(kernels), strides=tuple(strides), paddings=tuple(paddings),
                        hidden=tuple(hidden))  # fmt: skip
    try:
        model = build_model(cfg, shape)
    except UserError as e:
        assert "\n" not in str(e)
        size = shape[1:]
        for k, s, p in zip(kernels, strides, paddings, strict=True):  # the refusal is real:
            out = tuple(_out(n, k, s, p) for n in size)  # a layer leaves < 1 pixel, or a
            back = tuple((m - 1) * s - 2 * p + k for m in out)  # transposed conv cannot
            if min(out) < 1 or not all(0 <= n - b < s for n, b in zip(size, back, strict=True)):
                return  # return to its input's size with an output padding < stride
            size = out
        raise AssertionError(f"refused a buildable stack: {e}") from None
    x = torch.rand(2, *shape)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (2, d)
        assert model.decode(mu).shape == x.shape


@settings(max_examples=40)
@given(st.integers(1, 3), st.integers(8, 300), st.integers(8, 300))
def test_default_stacks_halve_every_size_to_4_to_7_and_come_back(c, h, w):
    spec = spec_from_config(C.ModelConfig(arch="conv"), (c, h, w))
    sizes = plan((c, h, w), spec)
    assert sizes[0][0] == (h, w)
    last = sizes[-1][1]
    assert 4 <= min(last) <= 7  # halved while at least 8 wide
    for (a, b, _), (a2, _, _) in zip(sizes, sizes[1:], strict=False):
        assert a2 == b and all(m == (n + 2 - 4) // 2 + 1 for n, m in zip(a, b, strict=True))
    assert spec.channels == tuple(min(256, 32 * 2 ** (i // 2)) for i in range(len(sizes)))


# ------------------------------------------------------------------------- sweep expansion

_values = st.lists(st.integers(1, 50).map(lambda v: v / 10), min_size=1, max_size=3, unique=True)


@settings(max_examples=60)
@given(
    st.lists(
        st.sampled_from(["betaH", "btcvae", "factor", "vae"]), min_size=1, max_size=3, unique=True
    ),  # fmt: skip
    st.dictionaries(st.sampled_from(["train.lr", "model.latent_dim"]), _values, max_size=2),
    st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True),
)
def test_a_sweep_is_the_product_of_its_methods_grid_and_seeds_with_unique_names(
    losses, grid, seeds
):
    grid = {k: [int(v * 10) for v in vs] if k == "model.latent_dim" else vs
            for k, vs in grid.items()}  # fmt: skip
    doc = {
        "seeds": seeds,
        "base": {"data": {"name": "dsprites"}, "train": {"steps": 10}},
        "grid": grid,
        "methods": [{"loss": name} for name in losses],
    }
    runs = S.expand(doc, "prop.toml")
    assert len(runs) == len(losses) * math.prod(map(len, grid.values())) * len(seeds)
    assert len({r.name for r in runs}) == len(runs)  # one directory each
    combos = set()
    for r in runs:
        assert r.config.loss.name == r.method and r.config.train.seed == r.seed
        assert r.config.train.steps == 10 and r.config.data.name == "dsprites"
        for key, value in r.params.items():
            section, name = key.split(".")
            assert getattr(getattr(r.config, section), name) == value
        combos.add((r.method, r.seed, tuple(sorted(r.params.items()))))
    assert len(combos) == len(runs)  # every point of the product once
    assert [r.name for r in S.expand(doc, "prop.toml")] == [r.name for r in runs]  # stable


@settings(max_examples=30)
@given(st.integers(1, 20), st.integers(0, 2**31), st.floats(1e-5, 1e-4), st.floats(2.0, 10.0))
def test_random_samples_are_reproducible_and_inside_their_range(n, seed, lo, ratio):
    hi = lo * ratio
    doc = {"seed": seed, "base": {"train": {"steps": 10}},
           "random": {"n": n, "train.lr": {"loguniform": [lo, hi]}}}  # fmt: skip
    lrs = [r.config.train.lr for r in S.expand(doc, "prop.toml")]
    assert len(lrs) == n and all(lo <= v <= hi for v in lrs)
    assert lrs == [r.config.train.lr for r in S.expand(doc, "prop.toml")]


@pytest.mark.parametrize("bad", [{"seeds": []}, {"seeds": [1, 1]}, {"methods": []},
                                 {"grid": {"train.lr": []}}, {"seed": -1}])  # fmt: skip
def test_a_sweep_that_would_be_empty_or_ambiguous_is_one_line(bad):
    with pytest.raises(UserError) as e:
        S.expand({"base": {"train": {"steps": 10}}, **bad}, "prop.toml")
    assert "\n" not in str(e.value) and str(e.value).startswith("prop.toml: ")
