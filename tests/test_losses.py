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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_nll_is_stable_at_extreme_logits(dtype):
    # The NLL is softplus(l) - x l = max(l, 0) - x l + log1p(exp(-|l|)). Taking logs of
    # sigmoid(l) and 1 - sigmoid(l) instead gives -log(0) = inf at l = 50 already (1 - sigmoid(50)
    # rounds to 0, in float64 too).
    logits = np.array([50.0, -50.0, 100.0, -100.0, 50.0, -50.0])
    x = np.array([0.0, 1.0, 0.0, 1.0, 0.3, 0.7])
    expected = np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))
    lg = torch.tensor(logits, dtype=dtype).view(-1, 1, 1, 1).requires_grad_()
    got = reconstruction_nll(lg, torch.tensor(x, dtype=dtype).view(-1, 1, 1, 1), "bernoulli", None)
    np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=1e-6)
    got.sum().backward()
    # d NLL / d logit = sigmoid(l) - x: finite, and +-1 where the prediction is confidently wrong
    np.testing.assert_allclose(lg.grad.flatten().double().numpy(), _sigmoid(logits) - x, atol=1e-6)


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


@pytest.mark.parametrize("logvar", [-100.0, -90.0, -20.0, 0.0, 20.0, 80.0])
def test_log_normal_is_finite_at_extreme_log_variances(logvar):
    # At z = mu (codes that are posterior means; or a sample mu + sigma * eps that rounds to mu)
    # log N(mu; mu, e^lv) = -(log 2 pi + lv) / 2 exactly. exp(-lv) alone overflows float32 below
    # lv = -88.7, and 0 * inf was NaN.
    mu = torch.tensor([[0.3, -1.7, 0.0]])
    lv = torch.full_like(mu, logvar, requires_grad=True)
    got = log_normal(mu, mu, lv)
    torch.testing.assert_close(got, torch.full_like(mu, -0.5 * (math.log(2 * math.pi) + logvar)))
    got.sum().backward()
    torch.testing.assert_close(lv.grad, torch.full_like(mu, -0.5))
    # One standard deviation away: -(log 2 pi + lv + 1) / 2.
    z = mu + math.exp(0.5 * logvar)
    if bool((z != mu).all()):
        ref = stats.norm.logpdf(z.double().numpy(), mu.double().numpy(), math.exp(0.5 * logvar))
        np.testing.assert_allclose(log_normal(z, mu, lv).detach().numpy(), ref, rtol=1e-4)


@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_tc_decomposition_is_finite_for_collapsed_posteriors(sampling):
    # Posterior means as codes (eval mode) with a variance of e^-100 in some dimensions: every
    # density is finite (float32), so the three terms must be too, and telescope as always.
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g)
    logvar = torch.tensor([-100.0, -1.0, 0.5]).expand(5, 3).clone().requires_grad_()
    parts = tc_decomposition(mu, mu, logvar, dataset_size=50, sampling=sampling)
    for value in parts.values():
        assert torch.isfinite(value).all()
    total = parts["mi"] + parts["tc"] + parts["dw_kl"]
    expected = (-0.5 * logvar - 0.5 * (-mu.pow(2))).sum(1)  # log q(mu|x) - log p(mu)
    torch.testing.assert_close(total, expected)
    total.sum().backward()
    assert torch.isfinite(logvar.grad).all()


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


def _reference_tc(z, mu, logvar, n, sampling):
    """mi, tc, dw_kl by plain loops over the batch (Chen et al. 2018, Eq. 2 and App. C), with
    the mixture weights written out: mws 1/(NB) each; mss 1/N for the sample's own posterior,
    (N - 1)/(N (B - 1)) for each other batch member."""
    b, d = z.shape
    sd = np.exp(0.5 * logvar)

    def w(i, j):
        if sampling == "mws":
            return 1.0 / (n * b)
        return 1.0 / n if i == j else (n - 1) / (n * (b - 1))

    out = {"mi": np.zeros(b), "tc": np.zeros(b), "dw_kl": np.zeros(b)}
    for i in range(b):
        log_qzx = sum(stats.norm.logpdf(z[i, k], mu[i, k], sd[i, k]) for k in range(d))
        log_pz = sum(stats.norm.logpdf(z[i, k]) for k in range(d))
        qz = sum(w(i, j) * np.prod(stats.norm.pdf(z[i], mu[j], sd[j])) for j in range(b))
        log_prod = sum(
            math.log(sum(w(i, j) * stats.norm.pdf(z[i, k], mu[j, k], sd[j, k]) for j in range(b)))
            for k in range(d)
        )
        out["mi"][i] = log_qzx - math.log(qz)
        out["tc"][i] = math.log(qz) - log_prod
        out["dw_kl"][i] = log_prod - log_pz
    return out


@pytest.mark.parametrize("sampling", ["mws", "mss"])
@pytest.mark.parametrize("batch, n", [(1, 1000), (2, 1000), (2, 2), (5, 1000), (5, 3), (5, 1)])
def test_tc_decomposition_matches_a_plain_loop(sampling, batch, n):
    # Batches of 1 and 2, and datasets smaller than the batch (N = 1: every batch member is
    # the same image, so q(z) is its posterior and the others weigh 0 under mss).
    rng = np.random.default_rng(batch * 100 + n)
    mu = rng.normal(size=(batch, 3))
    logvar = rng.normal(scale=0.7, size=(batch, 3))
    z = mu + np.exp(0.5 * logvar) * rng.normal(size=(batch, 3))
    got = tc_decomposition(_t(z), _t(mu), _t(logvar), dataset_size=n, sampling=sampling)
    if sampling == "mss" and batch == 1:
        # No other member: only the sample's own posterior, weight 1/N.
        expected = _reference_tc(z, mu, logvar, n, "mws")
    else:
        expected = _reference_tc(z, mu, logvar, n, sampling)
    for key in ("mi", "tc", "dw_kl"):
        np.testing.assert_allclose(got[key].numpy(), expected[key], rtol=1e-9, atol=1e-9)
    if sampling == "mss" and n == 1:
        np.testing.assert_allclose(got["mi"].numpy(), 0.0, atol=1e-12)


def test_mss_mixture_is_unbiased_for_q_z_and_its_marginals():
    # Over every batch of B = 3 out of N = 6 data points that contains the sample's own point i
    # (a uniform draw without replacement), the mss mixture averages to q(z) = (1/N) sum_n
    # q(z|x_n) exactly, for the joint and for each dimension's marginal q(z_d).
    from itertools import combinations

    from disvae.losses.terms import _log_mixture_weights

    n, b = 6, 3
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(n, 2, generator=g, dtype=torch.float64)
    logvar = 0.4 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    z = torch.randn(2, generator=g, dtype=torch.float64)
    dens = log_normal(z, mu, logvar).exp()  # (N, D): q(z_d | x_n)
    exact_joint, exact_marg = dens.prod(1).mean(), dens.mean(0)
    w = _log_mixture_weights(b, n, "mss", mu)[0].exp()  # row of batch member 0 = point i
    for i in range(n):
        batches = [[i, *o] for o in combinations([j for j in range(n) if j != i], b - 1)]
        joint = torch.stack([(w * dens[idx].prod(1)).sum() for idx in batches]).mean()
        marg = torch.stack([(w[:, None] * dens[idx]).sum(0) for idx in batches]).mean(0)
        torch.testing.assert_close(joint, exact_joint, rtol=1e-12, atol=0)
        torch.testing.assert_close(marg, exact_marg, rtol=1e-12, atol=0)


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
