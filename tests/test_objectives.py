"""The objectives: totals against hand-computed formulas, gradients, logged terms, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from disvae import config
from disvae.config import LossConfig, RunConfig
from disvae.errors import UserError
from disvae.losses import (
    DISC_BETAS,
    OBJECTIVES,
    LossContext,
    compute_loss,
    discriminator_loss,
    term_names,
)
from disvae.models.discriminator import Discriminator
from disvae.models.vae import VAE, VAEOutput

B, D, IMG = 6, 3, (1, 4, 4)
N_DATA = 1000


def _resolved(name: str, **loss_kw) -> LossConfig:
    cfg = RunConfig(loss=LossConfig(name=name, **loss_kw))
    return config.resolve(cfg).loss


def _tiny_vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    pixels = math.prod(IMG)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 2 * D))
    decoder = nn.Sequential(nn.Linear(D, pixels), nn.Unflatten(1, IMG))
    return VAE(encoder, decoder, D)


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.rand((B, *IMG), generator=torch.Generator().manual_seed(seed))


def _hand_output(seed: int = 0) -> VAEOutput:
    """A fixed forward pass: logits, posterior parameters and a sample, float64."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((B, *IMG), generator=g, dtype=torch.float64)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D, generator=g, dtype=torch.float64)
    return VAEOutput(logits, mu, logvar, z)


def _params(out: VAEOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return out.logits, out.mu, out.logvar


def _expected_recon_kl(out: VAEOutput, x: torch.Tensor) -> tuple[float, float]:
    """Bernoulli NLL (summed over pixels, batch mean) and analytic KL, computed in numpy."""
    p = 1 / (1 + np.exp(-out.logits.numpy()))
    xs = x.numpy()
    recon = -(xs * np.log(p) + (1 - xs) * np.log(1 - p)).reshape(B, -1).sum(1).mean()
    mu, var = out.mu.numpy(), np.exp(out.logvar.numpy())
    kl = (0.5 * (var + mu**2 - 1 - np.log(var))).sum(1).mean()
    return float(recon), float(kl)


# --------------------------------------------------------------------------- totals by hand


def test_vae_and_beta_h_totals():
    out, x = _hand_output(), _batch().double()
    recon, kl = _expected_recon_kl(out, x)
    ctx = LossContext(N_DATA)
    res = compute_loss(out, x, 0, _resolved("vae"), ctx)
    assert res.total.item() == pytest.approx(recon + kl, rel=1e-10)
    assert res.terms["recon"].item() == pytest.approx(recon, rel=1e-10)
    assert res.terms["kl"].item() == pytest.approx(kl, rel=1e-10)
    assert res.terms["kl_per_dim"].sum().item() == pytest.approx(kl, rel=1e-10)
    res = compute_loss(out, x, 0, _resolved("betaH", beta=4.0), ctx)
    assert res.total.item() == pytest.approx(recon + 4.0 * kl, rel=1e-10)
    assert recon > 0 and kl > 0


@pytest.mark.parametrize("step", [0, 500, 1000, 5000])
def test_beta_b_total_follows_the_capacity_schedule(step):
    out, x = _hand_output(1), _batch(1).double()
    recon, kl = _expected_recon_kl(out, x)
    c_fin = 2 * kl  # C crosses the batch's KL half-way: both signs of KL - C are exercised
    cfg = _resolved("betaB", gamma=100.0, c_init=0.0, c_fin=c_fin, c_steps=1000)
    res = compute_loss(out, x, step, cfg, LossContext(N_DATA))
    c = c_fin * min(step / 1000, 1.0)
    assert res.terms["capacity"].item() == pytest.approx(c)
    assert res.total.item() == pytest.approx(recon + 100.0 * abs(kl - c), rel=1e-10)


@pytest.mark.parametrize("step, weight", [(0, 0.0), (3, 0.3), (10, 1.0), (40, 1.0)])
def test_warmup_multiplies_the_regulariser(step, weight):
    out, x = _hand_output(2), _batch(2).double()
    recon, kl = _expected_recon_kl(out, x)
    res = compute_loss(out, x, step, _resolved("betaH", beta=2.0, reg_anneal=10), LossContext(1))
    assert res.terms["reg_weight"].item() == pytest.approx(weight)
    assert res.total.item() == pytest.approx(recon + weight * 2.0 * kl, rel=1e-10)
    assert res.terms["kl"].item() == pytest.approx(kl, rel=1e-10)  # logged unweighted


def test_gaussian_likelihood_reaches_the_objective():
    out, x = _hand_output(3), _batch(3).double()
    _, kl = _expected_recon_kl(out, x)
    mean = 1 / (1 + np.exp(-out.logits.numpy()))
    recon = -stats.norm.logpdf(x.numpy(), mean, 0.2).reshape(B, -1).sum(1).mean()
    cfg = _resolved("vae", rec_dist="gaussian", rec_scale=0.2)
    res = compute_loss(out, x, 0, cfg, LossContext(N_DATA))
    assert res.total.item() == pytest.approx(recon + kl, rel=1e-10)


# --------------------------------------------------------------------------- FactorVAE


def _factor_setup():
    model = _tiny_vae()
    disc = Discriminator(D, hidden=16, n_layers=2)
    x = _batch()
    out = model(x)
    return model, disc, x, out


def test_factor_tc_is_the_discriminator_log_ratio():
    model, disc, x, out = _factor_setup()
    cfg = _resolved("factor", gamma=10.0)
    res = compute_loss(out, x, 0, cfg, LossContext(N_DATA, disc))
    logits = disc(out.z).detach()
    tc = (logits[:, 0] - logits[:, 1]).mean()
    torch.testing.assert_close(res.terms["tc"], tc)
    expected = res.terms["recon"] + res.terms["kl"] + 10.0 * tc
    torch.testing.assert_close(res.total.detach(), expected)


def test_factor_tc_term_gives_the_encoder_a_gradient():
    model, disc, x, out = _factor_setup()
    ctx = LossContext(N_DATA, disc)
    with_tc = compute_loss(out, x, 0, _resolved("factor", gamma=10.0), ctx).total
    without = compute_loss(out, x, 0, _resolved("factor", gamma=0.0), ctx).total
    (with_tc - without).backward()  # = 10 * TC
    enc = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in enc) and any(g.abs().sum() > 0 for g in enc)
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())


def test_discriminator_loss_does_not_reach_the_vae():
    model, disc, x, out = _factor_setup()
    out2 = model(_batch(5))
    res = discriminator_loss(disc, out.z, out2.z, torch.Generator().manual_seed(0))
    res.total.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in disc.parameters())
    assert set(res.terms) == {"disc_loss", "disc_acc"}
    assert not any(t.requires_grad for t in res.terms.values())
    assert 0.0 <= res.terms["disc_acc"].item() <= 1.0


def test_discriminator_loss_is_the_averaged_cross_entropy():
    disc = nn.Linear(D, 2)
    g = torch.Generator().manual_seed(4)
    z, z_other = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    res = discriminator_loss(disc, z, z_other, torch.Generator().manual_seed(7))
    perm = torch.rand(z_other.shape, generator=torch.Generator().manual_seed(7)).argsort(0)
    z_perm = torch.gather(z_other, 0, perm)
    # -1/(2m) sum[log D(z) + log(1 - D(z_perm))], D the softmax probability of class 0.
    log_p_joint = torch.log_softmax(disc(z), 1)[:, 0]
    log_p_prod = torch.log_softmax(disc(z_perm), 1)[:, 1]
    expected = -(log_p_joint.sum() + log_p_prod.sum()) / (2 * B)
    torch.testing.assert_close(res.total, expected)
    assert DISC_BETAS == (0.5, 0.9)


def test_factor_needs_a_discriminator():
    out, x = _hand_output(), _batch().double()
    with pytest.raises(ValueError, match="discriminator"):
        compute_loss(out, x, 0, _resolved("factor"), LossContext(N_DATA))


# --------------------------------------------------------------------------- β-TCVAE


def test_btcvae_with_unit_weights_is_exactly_the_monte_carlo_elbo():
    out, x = _hand_output(6), _batch(6).double()
    recon, _ = _expected_recon_kl(out, x)
    cfg = _resolved("btcvae", alpha=1.0, beta=1.0, gamma=1.0, sampling="mws")
    res = compute_loss(out, x, 0, cfg, LossContext(N_DATA))
    z, mu, sd = out.z.numpy(), out.mu.numpy(), np.exp(0.5 * out.logvar.numpy())
    mc_kl = (stats.norm.logpdf(z, mu, sd) - stats.norm.logpdf(z)).sum(1).mean()
    assert res.total.item() == pytest.approx(recon + mc_kl, rel=1e-10)
    parts = res.terms["mi"] + res.terms["tc"] + res.terms["dw_kl"]
    assert parts.item() == pytest.approx(mc_kl, rel=1e-9)


@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_btcvae_with_unit_weights_matches_the_elbo_in_expectation(sampling):
    out, x = _hand_output(7), _batch(7).double()
    recon, kl = _expected_recon_kl(out, x)
    cfg = _resolved("btcvae", alpha=1.0, beta=1.0, gamma=1.0, sampling=sampling)
    # The hand batch repeated 20 times: the same recon and analytic KL, 120 draws of z per call.
    reps = 20
    logits, mu, logvar, xs = (t.repeat(reps, *[1] * (t.ndim - 1)) for t in (*_params(out), x))
    g = torch.Generator().manual_seed(8)
    totals = []
    for _ in range(40):
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g, dtype=mu.dtype)
        res = compute_loss(VAEOutput(logits, mu, logvar, z), xs, 0, cfg, LossContext(N_DATA))
        totals.append(res.total)
    totals_t = torch.stack(totals)
    sem = totals_t.std().item() / math.sqrt(len(totals))
    assert abs(totals_t.mean().item() - (recon + kl)) < 4 * sem + 1e-3
    assert sem < 0.05 * kl  # the check is tight enough to mean something


def test_btcvae_weights_scale_their_terms():
    out, x = _hand_output(9), _batch(9).double()
    ctx = LossContext(N_DATA)
    base = compute_loss(out, x, 0, _resolved("btcvae", alpha=1.0, beta=1.0, gamma=1.0), ctx)
    res = compute_loss(out, x, 0, _resolved("btcvae", alpha=0.5, beta=6.0, gamma=2.0), ctx)
    t = base.terms
    expected = t["recon"] + 0.5 * t["mi"] + 6.0 * t["tc"] + 2.0 * t["dw_kl"]
    torch.testing.assert_close(res.total, expected)


# --------------------------------------------------------------------------- every objective

CASES = [
    ("vae", {}),
    ("vae", {"rec_dist": "laplace"}),
    ("betaH", {}),
    ("betaH", {"reg_anneal": 100}),
    ("betaB", {}),
    ("factor", {}),
    ("btcvae", {}),
    ("btcvae", {"sampling": "mss", "rec_dist": "gaussian"}),
]


@pytest.mark.parametrize("name, loss_kw", CASES)
def test_every_objective_is_finite_differentiable_and_logs_its_terms(name, loss_kw):
    model = _tiny_vae()
    disc = Discriminator(D, hidden=16, n_layers=2)
    x = _batch()
    cfg = _resolved(name, **loss_kw)
    res = compute_loss(model(x), x, 10, cfg, LossContext(N_DATA, disc))
    assert res.total.ndim == 0 and torch.isfinite(res.total)
    res.total.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert tuple(res.terms) == term_names(name)
    assert {"loss", "recon", "kl", "kl_per_dim", "reg_weight"} <= set(res.terms)
    for key, value in res.terms.items():
        assert not value.requires_grad
        assert value.shape == ((D,) if key == "kl_per_dim" else ())
    torch.testing.assert_close(res.terms["loss"], res.total.detach())


@pytest.mark.parametrize("name, loss_kw", CASES)
def test_half_precision_inputs_are_computed_in_float32(name, loss_kw):
    # A forward under bf16 autocast gives bf16 logits, mu and logvar (and z = mu in eval mode).
    # The objective must equal the float32 objective of the same values: in bf16 the KL, the
    # pixel sum and β-TCVAE's log-densities (log N B ~ 18, kept to 8 bits) lose ~0.1-1 nats.
    g = torch.Generator().manual_seed(11)
    b, d = 32, 4
    logits = (3 * torch.randn(b, 1, 16, 16, generator=g)).bfloat16()
    mu = torch.randn(b, d, generator=g).bfloat16()
    logvar = (torch.randn(b, d, generator=g) - 2).bfloat16()
    z = mu.float() + torch.exp(0.5 * logvar.float()) * torch.randn(b, d, generator=g)
    x = torch.rand(b, 1, 16, 16, generator=g).round().bfloat16()
    disc = Discriminator(d, hidden=16, n_layers=2)
    ctx = LossContext(737_280, disc)
    cfg = _resolved(name, **loss_kw)
    for codes in (z, mu):  # a float32 sample; bf16 posterior means
        half = compute_loss(VAEOutput(logits, mu, logvar, codes), x, 10, cfg, ctx)
        full = VAEOutput(logits.float(), mu.float(), logvar.float(), codes.float())
        ref = compute_loss(full, x.float(), 10, cfg, ctx)
        assert half.total.dtype == torch.float32
        for key, value in ref.terms.items():
            assert half.terms[key].dtype == value.dtype, key
            torch.testing.assert_close(half.terms[key], value, rtol=1e-6, atol=1e-5, msg=key)


def test_registry_matches_the_config_objectives():
    assert set(OBJECTIVES.names()) == set(config.OBJECTIVE_DEFAULTS)


def test_unknown_objective_is_a_user_error_listing_the_valid_ones():
    out, x = _hand_output(), _batch().double()
    with pytest.raises(UserError) as err:
        compute_loss(out, x, 0, LossConfig(name="wae"), LossContext(N_DATA))
    for name in ("vae", "betaH", "betaB", "factor", "btcvae"):
        assert name in str(err.value)
    assert "wae" in str(err.value)


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["vae", "betaH", "betaB", "factor", "btcvae"])
def test_dsprites_presets_load_and_resolve(name):
    cfg = config.resolve(config.load_preset(f"{name}_dsprites"))
    assert cfg.loss.name == name
    assert cfg.data.name == "dsprites"
    assert (cfg.model.arch, cfg.model.latent_dim) == ("burgess", 10)
    assert cfg.train.batch_size == 64
