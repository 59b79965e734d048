"""Pure tensor functions shared by the objectives: likelihoods, KL terms and the TC decomposition.

Every function here is stateless and differentiable; none reduces over the batch, so callers
choose how to average. Shapes: B batch, D latent dimensions, (C, H, W) an image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from disvae.errors import UserError

LOG_2PI = math.log(2 * math.pi)
REC_DISTS = ("bernoulli", "gaussian", "laplace")
SAMPLINGS = ("mws", "mss")


def reconstruction_nll(logits: Tensor, x: Tensor, dist: str, scale: float | None) -> Tensor:
    """Negative log-likelihood -log p(x|z) of images x under the decoder, summed over pixels.

    Args:
        logits: decoder output (B, C, H, W).
        x: data (B, C, H, W), floats in [0, 1].
        dist: ``bernoulli`` (logits are the Bernoulli logits), ``gaussian`` or ``laplace`` (mean
            ``sigmoid(logits)``, fixed scale).
        scale: sigma (gaussian) or b (laplace); unused for bernoulli.

    Returns:
        (B,) the per-sample NLL in nats. The papers average this over the batch.
    """
    if dist == "bernoulli":
        # -[x log p + (1 - x) log(1 - p)], p = sigmoid(logits) (Kingma & Welling 2014, App. C.1).
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif dist in ("gaussian", "laplace"):
        if scale is None or not scale > 0:
            raise UserError(f"the {dist} likelihood needs a positive loss.rec_scale, got {scale}")
        mean = torch.sigmoid(logits)
        if dist == "gaussian":
            # -log N(x; mean, scale^2) = (x - mean)^2 / (2 scale^2) + log scale + log(2 pi) / 2
            # (Kingma & Welling 2014, App. C.2, with a fixed variance).
            nll = 0.5 * ((x - mean) / scale) ** 2 + math.log(scale) + 0.5 * LOG_2PI
        else:
            # -log Laplace(x; mean, b) = |x - mean| / b + log(2 b).
            nll = (x - mean).abs() / scale + math.log(2 * scale)
    else:
        raise UserError(f"unknown rec_dist {dist!r}; choose one of: {', '.join(REC_DISTS)}")
    return nll.flatten(1).sum(1)


def kl_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension.

    -KL = 1/2 (1 + log sigma^2 - mu^2 - sigma^2) (Kingma & Welling 2014, Appendix B).

    ``sigma^2 - 1`` is computed as ``expm1(logvar)``: ``exp(logvar) - 1 - logvar`` cancels near
    logvar = 0 (a collapsed dimension), where in float32 it came out negative (-8e-9 at
    logvar = -1e-4) or 100 times too large; ``expm1(x) >= x`` keeps every term >= 0.

    Args:
        mu, logvar: posterior parameters (B, D).

    Returns:
        (B, D) the KL of each latent dimension, in nats.
    """
    return 0.5 * (mu.pow(2) + torch.expm1(logvar) - logvar)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log density log N(z; mu, exp(logvar)); the three tensors broadcast together.

    The difference is scaled by exp(-logvar / 2) before squaring: exp(-logvar) overflows float32
    below logvar = -88.7 and 0 * inf (z = mu, e.g. codes that are posterior means) is NaN, where
    the density is finite; the scaled form stays finite down to logvar = -177.
    """
    return -0.5 * (LOG_2PI + logvar + ((z - mu) * torch.exp(-0.5 * logvar)).pow(2))


def log_standard_normal(z: Tensor) -> Tensor:
    """Elementwise log N(z; 0, 1), the prior p(z_d) of every latent dimension."""
    return -0.5 * (LOG_2PI + z.pow(2))


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Shuffle each column of z independently across the batch (Kim & Mnih 2018, Algorithm 1).

    A sample of the product of the marginals q̄(z) = prod_d q(z_d), given samples of q(z).

    Args:
        z: codes (B, D).
        generator: optional random generator on z's device, for reproducible permutations.

    Returns:
        (B, D) with column d a random permutation of z[:, d].
    """
    keys = torch.rand(z.shape, generator=generator, device=z.device)
    return torch.gather(z, 0, keys.argsort(dim=0))


def tc_decomposition(
    z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, sampling: str
) -> dict[str, Tensor]:
    """The three parts of the KL term of Chen et al. (2018), Eq. (2), per sample.

    For z_i ~ q(z|x_i) the sum of the parts telescopes to log q(z_i|x_i) - log p(z_i), whose
    expectation is KL(q(z|x) || p(z)):

    - ``mi``    = log q(z_i|x_i) - log q(z_i)                    (index-code mutual information)
    - ``tc``    = log q(z_i) - sum_d log q(z_id)                 (total correlation)
    - ``dw_kl`` = sum_d log q(z_id) - log p(z_id)                (dimension-wise KL)

    The aggregate posterior q(z) = (1/N) sum_n q(z|x_n) and its marginals q(z_d) are estimated
    from the batch by a weighted mixture of the B posteriors, evaluated with logsumexp:

    - ``mws`` (minibatch weighted sampling, Chen et al. 2018, Appendix C.1): every weight is
      1 / (N B). The weights sum to 1 / N rather than 1, so the estimates of q(z) and of each
      q(z_d) are low by a factor k between B (mixture dominated by the sample's own posterior) and
      N (dominated by the others; k = N exactly when B = N): ``tc`` is raised by about
      (D - 1) log k, ``mi`` by log k, and ``dw_kl`` lowered by D log k. Their sum is unchanged.
    - ``mss``, an unbiased variant of minibatch stratified sampling (Chen et al. 2018, Appendix
      C.2, whose estimator also gives the sample's own point 1 / N but weights one other batch
      member apart from the rest): the sample's own data point is counted exactly, with
      weight 1 / N; the other N - 1 data points are represented evenly by the other B - 1 batch
      members, each with weight (N - 1) / (N (B - 1)). The weights sum to 1, and the mixture is
      unbiased for q(z_i) and each q(z_id) when the batch is a uniform draw without
      replacement. (B = 1 leaves only the own weight 1/N: no member represents the others.)

    Args:
        z: reparameterised samples (B, D), z_i ~ q(z|x_i).
        mu, logvar: posterior parameters (B, D).
        dataset_size: N, the number of training images.
        sampling: ``mws`` or ``mss``.

    Returns:
        dict of (B,) tensors ``mi``, ``tc``, ``dw_kl``. Memory O(B^2 D).
    """
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be positive, got {dataset_size}")
    log_qz_x = log_normal(z, mu, logvar).sum(1)  # (B,)
    log_pz = log_standard_normal(z).sum(1)  # (B,)
    # pair[i, j, d] = log q(z_id | x_j)
    pair = log_normal(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    log_w = _log_mixture_weights(z.shape[0], dataset_size, sampling, z)  # (B, B)
    log_qz = torch.logsumexp(pair.sum(2) + log_w, dim=1)  # (B,)
    log_prod_qzd = torch.logsumexp(pair + log_w.unsqueeze(2), dim=1).sum(1)  # (B,)
    return {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod_qzd, "dw_kl": log_prod_qzd - log_pz}


def _log_mixture_weights(batch: int, n: int, sampling: str, like: Tensor) -> Tensor:
    """(B, B) log weights w[i, j] of q(z_i|x_j) in the batch estimate of q(z_i)."""
    if sampling == "mws":
        return like.new_full((batch, batch), -math.log(n * batch))
    if sampling == "mss":
        off = math.log(n - 1) - math.log(n * max(batch - 1, 1)) if n > 1 else -math.inf
        log_w = like.new_full((batch, batch), off)
        log_w.fill_diagonal_(-math.log(n))
        return log_w
    raise UserError(f"unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLINGS)}")
