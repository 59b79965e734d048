"""MIG with Chen et al.'s own estimator, and the entropy estimator it rests on.

Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", Sec. 4.1 and Appendix C: the
mutual information I(z_j; v_k) = H(z_j) - H(z_j | v_k) is estimated from the posterior, not from
binned means. With the aggregate posterior q(z_j) = 1/N sum_n q(z_j | x_n) over the data,
H(z_j) = E[-log q(z_j)] is a Monte-Carlo average over one draw z ~ q(z|x_n) per sampled point;
H(z_j | v_k) averages the same estimate over the subsets of the data with v_k = v, weighted by
p(v). MIG then normalises the top-two gap by H(v_k) and averages over factors, as in `mig`.
The numbers differ from the binned MIG of disentanglement_lib (`disvae.metrics.mig`): the
β-TCVAE paper and the disentangling-vae project report this one; Locatello et al. 2019 and most
later papers report the binned one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from disvae.metrics._sampling import as_rng
from disvae.metrics._utils import (
    check_codes_factors,
    check_count,
    check_posteriors,
    entropy,
    top_two_gap,
)

_CHUNK = 64  # samples per block of the (samples, components, D) density array


def aggregate_entropies(
    mu: np.ndarray,
    logvar: np.ndarray,
    rng: np.random.Generator,
    n_samples: int | None = 10_000,
    joint: bool = False,
) -> tuple[np.ndarray, float]:
    """Entropies of the aggregate posterior q(z) = 1/N sum_n q(z|x_n) of N Gaussian posteriors.

    Args:
        mu, logvar: (N, D) posterior parameters; all N are mixture components.
        rng: draws the sampled points and their z ~ q(z|x).
        n_samples: points sampled (without replacement) for the Monte-Carlo mean (None: all).
        joint: also estimate the joint entropy H(z) (for the total correlation).

    Returns:
        (H(z_j) for each j, shape (D,); H(z) or NaN), in nats.
    """
    check_count(n_samples, "n_samples", allow_none=True)
    n, d = mu.shape
    pick = rng.permutation(n)[: n if n_samples is None else min(n, n_samples)]
    eps = rng.standard_normal((len(pick), d))
    z = torch.as_tensor(mu[pick] + np.exp(0.5 * logvar[pick]) * eps, dtype=torch.float32)
    m = torch.as_tensor(mu, dtype=torch.float32)[None]
    lv = torch.as_tensor(logvar, dtype=torch.float32)
    half_iv = (0.5 * torch.exp(-lv))[None]  # 1 / (2 sigma^2)
    const = (-0.5 * (math.log(2 * math.pi) + lv))[None]
    h_dims = torch.zeros(d, dtype=torch.float64)
    h_joint = 0.0
    with torch.inference_mode():
        for s in range(0, len(z), _CHUNK):
            logq = const - (z[s : s + _CHUNK, None, :] - m) ** 2 * half_iv  # (S, N, D)
            h_dims -= (torch.logsumexp(logq, dim=1) - math.log(n)).double().sum(0)
            if joint:
                h_joint -= float((torch.logsumexp(logq.sum(-1), dim=1) - math.log(n)).sum())
    h_dims = (h_dims / len(z)).numpy()
    return h_dims, (h_joint / len(z)) if joint else float("nan")


def chen_mutual_info(
    mu: np.ndarray,
    logvar: np.ndarray,
    factors: np.ndarray,
    n_samples: int | None = 10_000,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """I(z_j; v_k) in nats, shape (D, K), by Chen et al.'s estimator (Sec. 4.1, Appendix C).

    Args:
        mu, logvar: (N, D) posterior means and log-variances of the N points (ideally the whole
            dataset; the mixture q(z) is over these N).
        factors: (N, K) factor classes of the same points.
        n_samples: Monte-Carlo points per entropy estimate (Chen et al.: 10,000; None: all).
        rng: generator or seed (None: seed 0).
    """
    mu, factors = check_codes_factors(mu, factors)
    mu, logvar = check_posteriors(mu, logvar)
    rng = as_rng(rng)
    h_z, _ = aggregate_entropies(mu, logvar, rng, n_samples)
    mi = np.zeros((mu.shape[1], factors.shape[1]))
    for k in range(factors.shape[1]):
        values, counts = np.unique(factors[:, k], return_counts=True)
        h_cond = np.zeros(mu.shape[1])
        for v, c in zip(values, counts, strict=True):
            rows = factors[:, k] == v
            h_v, _ = aggregate_entropies(mu[rows], logvar[rows], rng, n_samples)
            h_cond += c / len(mu) * h_v
        mi[:, k] = h_z - h_cond
    return np.maximum(mi, 0.0)


def mig_from_mi(mi: np.ndarray, factors: np.ndarray) -> float:
    """Mean over factors of the top-two MI gap over H(v_k) (factors with one value left out)."""
    h = entropy(factors)
    keep = h > 0
    return float(np.mean(top_two_gap(mi)[keep] / h[keep])) if keep.any() else 0.0


def mig_chen(
    mu: np.ndarray,
    logvar: np.ndarray,
    factors: np.ndarray,
    n_samples: int | None = 10_000,
    rng: np.random.Generator | int | None = 0,
) -> float:
    """MIG (Chen et al. 2018, Sec. 4.1) with the posterior-based MI estimator: in [0, 1] up to
    the estimator's Monte-Carlo noise (a near-perfect code on few points can come out a little
    above 1; not clipped, as in the paper).

    Args: as `chen_mutual_info`: mu, logvar (N, D), factors (N, K) int classes.
    """
    return mig_from_mi(chen_mutual_info(mu, logvar, factors, n_samples, rng), factors)
