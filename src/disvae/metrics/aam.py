"""Axis Alignment Metric (AAM) of the disentangling-vae project (Dubois et al. 2019,
https://github.com/YannDubs/disentangling-vae, README "Metrics").

With I(z_j; v_k) from Chen et al.'s posterior-based estimator (`disvae.metrics.mig_chen`) sorted
per factor, I_(1) >= I_(2) >= ...: AAM_k = max(0, I_(1) - sum_{j>=2} I_(j)) / I_(1) (0 when
I_(1) = 0), and AAM is the mean over factors. Unlike MIG it does not measure how much a dimension
knows about a factor, only whether the information sits on a single axis: it is 1 when exactly
one dimension carries the factor, and 0 when the others together carry as much as the best one.
"""

from __future__ import annotations

import numpy as np

from disvae.metrics._utils import entropy
from disvae.metrics.mig_chen import chen_mutual_info


def aam_from_mi(mi: np.ndarray, factors: np.ndarray | None = None) -> float:
    """AAM of an MI matrix (D, K) (factors with a single value left out when given)."""
    s = np.sort(np.maximum(mi, 0.0), axis=0)[::-1]
    top, rest = s[0], s[1:].sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(top > 0, np.maximum(top - rest, 0.0) / top, 0.0)
    if factors is not None:
        keep = entropy(factors) > 0
        per = per[keep]
    return float(per.mean()) if len(per) else 0.0


def aam(
    mu: np.ndarray,
    logvar: np.ndarray,
    factors: np.ndarray,
    n_samples: int | None = 10_000,
    rng: np.random.Generator | int | None = 0,
) -> float:
    """Axis Alignment Metric (disentangling-vae) in [0, 1] from posteriors mu, logvar (N, D) and
    factor classes (N, K); arguments as `disvae.metrics.mig_chen`."""
    mi = chen_mutual_info(mu, logvar, factors, n_samples, rng)
    return aam_from_mi(mi, np.asarray(factors))
