"""Mutual Information Gap with binned codes (the disentanglement_lib protocol).

Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", Sec. 4.1, Eq. (MIG):
``MIG = 1/K sum_k 1/H(v_k) (I(z_j(k); v_k) - max_{j != j(k)} I(z_j; v_k))`` with
``j(k) = argmax_j I(z_j; v_k)``. Chen et al. estimate I(z_j; v_k) from the posterior q(z|x) over
the whole dataset (see `disvae.metrics.mig_chen`); Locatello et al. 2019 (disentanglement_lib,
``mig.py``) instead discretise the posterior *means* into 20 equal-width bins and use the plug-in
discrete MI over 10,000 points. This function is the latter; the two give different numbers.
"""

from __future__ import annotations

import numpy as np

from disvae.metrics._utils import (
    check_codes_factors,
    discretize,
    entropy,
    mutual_info_matrix,
    top_two_gap,
)


def mig_per_factor(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Normalised gap per factor, shape (K,); NaN for a factor that takes a single value.

    Args:
        codes: (N, D) float codes (posterior means).
        factors: (N, K) int factor classes.
        n_bins: equal-width bins per code dimension over its [min, max].
    """
    codes, factors = check_codes_factors(codes, factors)
    mi = mutual_info_matrix(discretize(codes, n_bins), factors)  # (D, K)
    h = entropy(factors)  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(h > 0, top_two_gap(mi) / np.where(h > 0, h, 1.0), np.nan)


def mig(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> float:
    """Mutual Information Gap (Chen et al. 2018, Sec. 4.1) on binned codes, in [0, 1].

    Protocol (disentanglement_lib, Locatello et al. 2019): every code dimension is discretised
    into ``n_bins`` equal-width bins over its range; discrete MI in nats between each binned
    dimension and each factor; per factor the gap between the two largest MIs divided by the
    factor's entropy; the mean over factors (factors with a single value are left out).
    The sampling wrapper (`disvae.evaluation`) draws 10,000 points by default.

    Args:
        codes: (N, D) float codes.
        factors: (N, K) int factor classes.
        n_bins: bins per code dimension (20 in disentanglement_lib).
    """
    per = mig_per_factor(codes, factors, n_bins)
    return float(np.nanmean(per)) if np.any(np.isfinite(per)) else 0.0
