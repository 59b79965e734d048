"""The training objectives, looked up by name in `OBJECTIVES` (the config's ``loss.name``).

Every objective has the form ``total = recon + w(step) * R``: ``recon`` is the batch mean of the
per-sample negative log-likelihood (summed over pixels), ``R`` the objective's regulariser (every
term other than the reconstruction) and ``w(step) = warmup(step, cfg.reg_anneal)`` a linear
warm-up from 0 to 1 over ``reg_anneal`` steps (1 throughout when ``reg_anneal`` is 0, the papers'
setting). The warm-up multiplies the whole regulariser, for every objective alike.

Logged terms (detached tensors, scalars except ``kl_per_dim`` (D,)), for every objective:
``loss`` (total), ``recon``, ``kl`` (batch mean of the KL summed over dimensions), ``kl_per_dim``
and ``reg_weight`` (w); also ``capacity`` (betaB), ``tc`` (factor) and ``mi``, ``tc``, ``dw_kl``
(btcvae).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from disvae.config import LossConfig
from disvae.losses.schedules import capacity, warmup
from disvae.losses.terms import kl_normal, permute_dims, reconstruction_nll, tc_decomposition
from disvae.models.vae import VAEOutput
from disvae.registry import Registry

# Adam (beta1, beta2) of the FactorVAE discriminator (Kim & Mnih 2018, experimental setup).
DISC_BETAS = (0.5, 0.9)

BASE_TERMS = ("loss", "recon", "kl", "kl_per_dim", "reg_weight")
EXTRA_TERMS: dict[str, tuple[str, ...]] = {
    "vae": (),
    "betaH": (),
    "betaB": ("capacity",),
    "factor": ("tc",),
    "btcvae": ("mi", "tc", "dw_kl"),
}


@dataclass
class LossOutput:
    """A loss to backpropagate and the terms to log.

    total: scalar tensor with its graph. terms: name -> detached tensor (scalars; ``kl_per_dim``
    is (D,)); nothing is copied to the host.
    """

    total: Tensor
    terms: dict[str, Tensor]


@dataclass
class LossContext:
    """What an objective needs beyond the batch: the training-set size N (β-TCVAE) and the
    FactorVAE discriminator."""

    dataset_size: int
    discriminator: Callable[[Tensor], Tensor] | None = None  # codes (B, D) -> logits (B, 2)


# ``step`` is the 0-based optimisation step: an int, or a 0-d float tensor on the batch's device
# when the step is captured in a CUDA graph (the schedules then stay on the device).
Step = int | Tensor
Objective = Callable[[VAEOutput, Tensor, Step, LossConfig, LossContext], LossOutput]
OBJECTIVES: Registry[Objective] = Registry("loss")


def compute_loss(
    out: VAEOutput, x: Tensor, step: Step, cfg: LossConfig, ctx: LossContext
) -> LossOutput:
    """The objective named ``cfg.name`` on a batch x (B, C, H, W) and its forward pass ``out``.

    ``cfg`` must have been filled by `disvae.config.resolve`. An unknown name is a `UserError`
    listing the valid ones. Half-precision inputs (a forward under bf16 autocast) are cast to
    float32 first, so every term is computed in float32 whatever the caller passed.
    """
    objective = OBJECTIVES.get(cfg.name)
    out = VAEOutput(_fp32(out.logits), _fp32(out.mu), _fp32(out.logvar), _fp32(out.z))
    return objective(out, _fp32(x), step, cfg, ctx)


def _fp32(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a 16-bit float (no copy otherwise)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _shared(out: VAEOutput, x: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """``(recon, kl, kl_dim)``: batch-mean NLL, batch-mean summed KL (scalars), KL (B, D)."""
    recon = reconstruction_nll(out.logits, x, cfg.rec_dist or "bernoulli", cfg.rec_scale).mean()
    kl_dim = kl_normal(out.mu, out.logvar)
    return recon, kl_dim.sum(1).mean(), kl_dim


def _output(
    recon: Tensor, reg: Tensor, weight: float | Tensor, kl_dim: Tensor, **extra: Tensor | float
) -> LossOutput:
    """``total = recon + weight * reg`` and the logged terms, detached."""
    total = recon + weight * reg
    terms = {
        "loss": total,
        "recon": recon,
        "kl": kl_dim.sum(1).mean(),
        "kl_per_dim": kl_dim.mean(0),
        "reg_weight": weight,
        **extra,
    }
    # Python floats become 0-dim tensors by a fill on total's device: no host-to-device copy.
    detached = {
        k: v.detach() if isinstance(v, Tensor) else total.new_full((), float(v)).detach()
        for k, v in terms.items()
    }
    return LossOutput(total, detached)


@OBJECTIVES.register("vae")
def vae(out: VAEOutput, x: Tensor, step: Step, cfg: LossConfig, ctx: LossContext) -> LossOutput:
    """Negative ELBO: recon + KL(q(z|x) || p(z)) (Kingma & Welling 2014, Eq. 10)."""
    recon, kl, kl_dim = _shared(out, x, cfg)
    return _output(recon, kl, warmup(step, cfg.reg_anneal), kl_dim)


@OBJECTIVES.register("betaH")
def beta_h(out: VAEOutput, x: Tensor, step: Step, cfg: LossConfig, ctx: LossContext) -> LossOutput:
    """β-VAE: recon + β KL (Higgins et al. 2017, Eq. 4)."""
    recon, kl, kl_dim = _shared(out, x, cfg)
    return _output(recon, _req(cfg.beta, "beta") * kl, warmup(step, cfg.reg_anneal), kl_dim)


@OBJECTIVES.register("betaB")
def beta_b(out: VAEOutput, x: Tensor, step: Step, cfg: LossConfig, ctx: LossContext) -> LossOutput:
    """β-VAE with a controlled capacity: recon + γ |KL - C| (Burgess et al. 2018, Eq. 8).

    C rises linearly from ``c_init`` to ``c_fin`` over ``c_steps`` steps (Burgess et al. §4).
    """
    recon, kl, kl_dim = _shared(out, x, cfg)
    c_steps = int(_req(cfg.c_steps, "c_steps"))
    c = capacity(step, _req(cfg.c_init, "c_init"), _req(cfg.c_fin, "c_fin"), c_steps)
    reg = _req(cfg.gamma, "gamma") * (kl - c).abs()
    return _output(recon, reg, warmup(step, cfg.reg_anneal), kl_dim, capacity=c)


@OBJECTIVES.register("factor")
def factor(out: VAEOutput, x: Tensor, step: Step, cfg: LossConfig, ctx: LossContext) -> LossOutput:
    """FactorVAE: recon + KL + γ TC (Kim & Mnih 2018, Eq. 2).

    TC(z) = KL(q(z) || prod_d q(z_d)) is estimated with the density-ratio trick (§3) as
    mean(D(z)[:, 0] - D(z)[:, 1]) over the batch's sampled codes, class 0 being "joint". The
    gradient reaches the encoder through D's input; the training loop differentiates this loss
    with respect to the VAE's parameters only, D being trained on its own loss
    (`discriminator_loss`).
    """
    if ctx.discriminator is None:
        raise ValueError("the factor objective needs LossContext.discriminator")
    recon, kl, kl_dim = _shared(out, x, cfg)
    logits = ctx.discriminator(out.z)
    tc = (logits[:, 0] - logits[:, 1]).mean()
    reg = kl + _req(cfg.gamma, "gamma") * tc
    return _output(recon, reg, warmup(step, cfg.reg_anneal), kl_dim, tc=tc)


@OBJECTIVES.register("btcvae")
def btcvae(out: VAEOutput, x: Tensor, step: Step, cfg: LossConfig, ctx: LossContext) -> LossOutput:
    """β-TCVAE: recon + α MI + β TC + γ dimension-wise KL (Chen et al. 2018, Eq. 4).

    The three terms are estimated on the batch with `tc_decomposition` (``cfg.sampling``: mws or
    mss, using N = ``ctx.dataset_size``); with α = β = γ = 1 they sum to the Monte-Carlo KL.
    """
    recon, _, kl_dim = _shared(out, x, cfg)
    sampling = cfg.sampling or "mws"
    parts = tc_decomposition(out.z, out.mu, out.logvar, ctx.dataset_size, sampling)
    mi, tc, dw_kl = parts["mi"].mean(), parts["tc"].mean(), parts["dw_kl"].mean()
    alpha, beta, gamma = _req(cfg.alpha, "alpha"), _req(cfg.beta, "beta"), _req(cfg.gamma, "gamma")
    reg = alpha * mi + beta * tc + gamma * dw_kl
    return _output(recon, reg, warmup(step, cfg.reg_anneal), kl_dim, mi=mi, tc=tc, dw_kl=dw_kl)


def discriminator_loss(
    discriminator: Callable[[Tensor], Tensor],
    z: Tensor,
    z_other: Tensor,
    generator: torch.Generator | None = None,
    rows: Callable[[Tensor], Tensor] | None = None,
) -> LossOutput:
    """The FactorVAE discriminator's loss (Kim & Mnih 2018, Algorithm 2).

    Cross-entropy, averaged over both halves, of classifying ``z`` (B, D), codes of the VAE's
    batch, as class 0 "joint" and ``permute_dims(z_other)`` (B', D), codes of a second batch with
    each dimension shuffled, as class 1 "product of marginals". Both are detached, so no gradient
    reaches the VAE. The loop backpropagates this into D alone (the VAE loss gave D no
    gradients) and steps D's own Adam (lr ``cfg.lr_disc``, betas `DISC_BETAS`).

    ``rows`` (data-parallel training) picks this process's rows of the permuted batch:
    ``z_other`` is then the whole global second batch, so each dimension is shuffled across
    the global batch, as Algorithm 2 shuffles one process's batch.

    Terms: ``disc_loss`` and ``disc_acc`` (share of both halves classified correctly).
    """
    joint = z.detach()
    product = permute_dims(z_other.detach(), generator)
    if rows is not None:
        product = rows(product)
    logits = discriminator(torch.cat([joint, product]))
    target = torch.cat(
        [
            torch.zeros(joint.shape[0], dtype=torch.long, device=logits.device),
            torch.ones(product.shape[0], dtype=torch.long, device=logits.device),
        ]
    )
    loss = F.cross_entropy(logits, target)
    acc = (logits.argmax(1) == target).float().mean()
    return LossOutput(loss, {"disc_loss": loss.detach(), "disc_acc": acc.detach()})


def term_names(name: str) -> tuple[str, ...]:
    """The keys of `LossOutput.terms` for the objective ``name``."""
    OBJECTIVES.get(name)
    return BASE_TERMS + EXTRA_TERMS[name]


def _req(value: float | int | None, key: str) -> float:
    """A hyperparameter that `disvae.config.resolve` fills; None means it was not resolved."""
    if value is None:
        raise ValueError(f"loss.{key} is None; pass the config through disvae.config.resolve")
    return float(value)
