"""Loss terms, schedules and the FactorVAE discriminator against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from disvae.errors import UserError
from disvae.losses import (
    capacity,
    kl_normal,
    linear,
    log_normal,
    permute_dims,
    reconstruction_nll,
    tc_decomposition,
    warmup,
)
from disvae.models.discriminator import Discriminator

# A tiny hand-made batch: 2 images of 1x2x2 pixels, including exact 0/1 and fractional pixels.
LOGITS = np.array([[[[0.3, -1.2], [2.0, 0.0]]], [[[-0.7, 1.5], [-3.0, 0.4]]]])
X = np.array([[[[1.0, 0.0], [0.75, 0.5]]], [[[0.0, 1.0], [0.2, 1.0]]]])


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


# --------------------------------------------------------------------------- likelihoods


def test_bernoulli_nll_is_cross_entropy_summed_over_pixels():
    p = _sigmoid(LOGITS)
    expected = -(X * np.log(p) + (1 - X) * np.log(1 - p)).reshape(2, -1).sum(1)
    got = reconstruction_nll(_t(LOGITS), _t(X), "bernoulli", None)
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("scale", [0.1, 0.5, 2.0])
def test_gaussian_nll_matches_scipy(scale):
    pdf = stats.norm.pdf(X, loc=_sigmoid(LOGITS), scale=scale)
    expected = -np.log(pdf).reshape(2, -1).sum(1)
    got = reconstruction_nll(_t(LOGITS), _t(X), "gaussian", scale)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_laplace_nll_matches_scipy(scale):
    pdf = stats.laplace.pdf(X, loc=_sigmoid(LOGITS), scale=scale)
    expected = -np.log(pdf).reshape(2, -1).sum(1)
    got = reconstruction_nll(_t(LOGITS), _t(X), "laplace", scale)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_reconstruction_rejects_bad_settings():
    with pytest.raises(UserError, match="bernoulli, gaussian, laplace"):
        reconstruction_nll(_t(LOGITS), _t(X), "poisson", None)
    with pytest.raises(UserError, match="rec_scale"):
        reconstruction_nll(_t(LOGITS), _t(X), "gaussian", None)


# --------------------------------------------------------------------------- KL and densities


def test_kl_of_standard_normal_to_itself_is_zero():
    kl = kl_normal(torch.zeros(3, 4), torch.zeros(3, 4))
    assert kl.shape == (3, 4)
    assert torch.equal(kl, torch.zeros(3, 4))


def test_kl_matches_closed_form_for_known_parameters():
    mu, var = 1.5, 0.25
    # KL(N(mu, var) || N(0, 1)) = 1/2 (var + mu^2 - 1 - ln var)
    expected = 0.5 * (var + mu**2 - 1 - math.log(var))
    got = kl_normal(torch.tensor([[mu]]), torch.tensor([[math.log(var)]]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kl_matches_torch_distributions_per_dimension():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    torch.testing.assert_close(kl_normal(mu, logvar), torch.distributions.kl_divergence(q, p))


def test_log_normal_matches_scipy_with_broadcasting():
    z = np.array([[0.2], [-1.0], [3.0]])  # (3, 1)
    mu = np.array([[0.0, 1.0]])  # (1, 2)
    logvar = np.array([[0.5, -1.0]])
    expected = stats.norm.logpdf(z, loc=mu, scale=np.exp(0.5 * logvar))
    got = log_normal(_t(z), _t(mu), _t(logvar))
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


# --------------------------------------------------------------------------- permutations


def test_permute_dims_permutes_each_column_independently():
    z = torch.arange(100.0).unsqueeze(1).repeat(1, 3)  # three identical columns
    g = torch.Generator().manual_seed(3)
    out = permute_dims(z, g)
    assert out.shape == z.shape
    for d in range(3):
        assert torch.equal(out[:, d].sort().values, z[:, d])
        assert not torch.equal(out[:, d], z[:, d])
    # Different permutations per column: the identical columns come apart.
    assert not torch.equal(out[:, 0], out[:, 1])
    assert not torch.equal(out[:, 1], out[:, 2])
    again = permute_dims(z, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


# --------------------------------------------------------------------------- TC decomposition


def _posterior_batch(mu: torch.Tensor, sigma: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logvar = torch.full_like(mu, 2 * math.log(sigma))
    z = mu + sigma * torch.randn(mu.shape, generator=g, dtype=mu.dtype)
    return z, mu, logvar


@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_tc_decomposition_telescopes_to_log_ratio(sampling):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(16, 4, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(16, 4, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(16, 4, generator=g, dtype=torch.float64)
    parts = tc_decomposition(z, mu, logvar, dataset_size=1000, sampling=sampling)
    assert set(parts) == {"mi", "tc", "dw_kl"}
    assert all(v.shape == (16,) for v in parts.values())
    sd = np.exp(0.5 * logvar.numpy())
    log_q = stats.norm.logpdf(z.numpy(), mu.numpy(), sd).sum(1)
    log_p = stats.norm.logpdf(z.numpy()).sum(1)
    total = parts["mi"] + parts["tc"] + parts["dw_kl"]
    np.testing.assert_allclose(total.numpy(), log_q - log_p, rtol=1e-9, atol=1e-9)


def _grid(k: int, d: int) -> torch.Tensor:
    """Posterior means on a full product grid of k values per dimension: N = k**d points."""
    axes = [torch.linspace(-2, 2, k, dtype=torch.float64)] * d
    return torch.cartesian_prod(*axes).reshape(-1, d)


def test_tc_is_zero_for_a_factorised_dataset_seen_whole():
    mu = _grid(12, 2)  # 144 data points whose aggregate posterior factorises exactly
    z, mu, logvar = _posterior_batch(mu, sigma=0.3)
    tc = tc_decomposition(z, mu, logvar, dataset_size=len(mu), sampling="mss")["tc"]
    assert tc.abs().max().item() < 1e-9


def test_tc_is_near_zero_for_a_factorised_dataset_subsampled():
    mu_all = _grid(30, 2)  # N = 900
    idx = torch.randperm(len(mu_all), generator=torch.Generator().manual_seed(2))[:400]
    z, mu, logvar = _posterior_batch(mu_all[idx], sigma=0.4)
    tc = tc_decomposition(z, mu, logvar, dataset_size=len(mu_all), sampling="mss")["tc"]
    assert abs(tc.mean().item()) < 0.05


def test_tc_is_large_for_correlated_codes():
    t = torch.linspace(-2, 2, 144, dtype=torch.float64)
    mu = torch.stack([t, t], 1)  # both dimensions carry the same factor
    z, mu, logvar = _posterior_batch(mu, sigma=0.1)
    tc = tc_decomposition(z, mu, logvar, dataset_size=len(mu), sampling="mss")["tc"]
    # True TC of this mixture is about log(spread / sigma) ~ 2-3 nats.
    assert tc.mean().item() > 1.5


def test_mws_tc_is_offset_by_d_minus_one_log_n_when_the_batch_is_the_dataset():
    # With B = N, mss weights are all 1/N (the exact mixture) and mws weights all 1/N^2.
    mu = _grid(5, 3)  # N = 125, D = 3
    z, mu, logvar = _posterior_batch(mu, sigma=0.5)
    n = len(mu)
    mws = tc_decomposition(z, mu, logvar, dataset_size=n, sampling="mws")
    mss = tc_decomposition(z, mu, logvar, dataset_size=n, sampling="mss")
    torch.testing.assert_close(mws["tc"], mss["tc"] + 2 * math.log(n))
    torch.testing.assert_close(mws["mi"], mss["mi"] + math.log(n))
    torch.testing.assert_close(mws["dw_kl"], mss["dw_kl"] - 3 * math.log(n))


def test_tc_decomposition_rejects_unknown_sampling():
    z = torch.zeros(4, 2)
    with pytest.raises(UserError, match="mws, mss"):
        tc_decomposition(z, z, z, dataset_size=10, sampling="iid")


# --------------------------------------------------------------------------- schedules


def test_linear_schedule_clamps_and_handles_zero_steps():
    assert linear(2.0, 10.0, 0, 8) == 2.0
    assert linear(2.0, 10.0, 2, 8) == pytest.approx(4.0)
    assert linear(2.0, 10.0, 8, 8) == 10.0
    assert linear(2.0, 10.0, 50, 8) == 10.0
    assert linear(2.0, 10.0, -3, 8) == 2.0
    assert linear(2.0, 10.0, 0, 0) == 10.0


def test_capacity_schedule_of_burgess():
    c = {s: capacity(s, 0.0, 25.0, 100_000) for s in (0, 50_000, 100_000, 250_000)}
    assert c == {0: 0.0, 50_000: 12.5, 100_000: 25.0, 250_000: 25.0}
    assert capacity(500, 5.0, 5.0, 1000) == 5.0


def test_warmup():
    assert warmup(0, 0) == 1.0
    assert warmup(123, 0) == 1.0
    assert warmup(0, 10) == 0.0
    assert warmup(4, 10) == pytest.approx(0.4)
    assert warmup(10, 10) == 1.0
    assert warmup(11, 10) == 1.0


# --------------------------------------------------------------------------- discriminator


def test_discriminator_architecture_of_kim_and_mnih():
    disc = Discriminator(latent_dim=10)
    linears = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    relus = [m for m in disc.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert [(m.in_features, m.out_features) for m in linears] == (
        [(10, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    )
    assert len(relus) == 6 and all(m.negative_slope == 0.2 for m in relus)
    assert disc(torch.randn(7, 10)).shape == (7, 2)
    small = Discriminator(3, hidden=8, n_layers=2)
    assert small(torch.randn(4, 3)).shape == (4, 2)
