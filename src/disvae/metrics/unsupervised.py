"""Measures that need no ground-truth factors: per-dimension KL and active units, total
correlation of the aggregate posterior, and (given per-image values) reconstruction error.
"""

from __future__ import annotations

import numpy as np

from disvae.metrics._sampling import as_rng
from disvae.metrics._utils import check_codes, check_posteriors
from disvae.metrics.mig_chen import aggregate_entropies


def kl_per_dim(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Mean over points of KL(q(z_j|x) || N(0, 1)) in nats, shape (D,), from (N, D) posteriors
    (Kingma & Welling 2014, Appendix B); ``expm1`` as in `disvae.losses.kl_normal` (no
    cancellation near logvar = 0, never negative)."""
    mu, logvar = check_posteriors(mu, logvar)
    return 0.5 * np.mean(mu**2 + np.expm1(logvar) - logvar, axis=0)


def active_units(mu: np.ndarray, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies across the data: Var_x(E_q[z_j|x]) > threshold
    (Burda et al. 2016, "Importance Weighted Autoencoders", Sec. 5.2). ``mu``: (N, D)."""
    mu = check_codes(mu, "mu")
    if len(mu) < 2:
        raise ValueError(f"a variance needs at least 2 points, got {len(mu)}")
    return int(np.sum(np.var(mu, axis=0) > threshold))


MIN_EIGENVALUE = 1e-12  # of the codes' correlation matrix (see gaussian_total_correlation)


def gaussian_total_correlation(mu: np.ndarray) -> float:
    """TC of a Gaussian fitted to the codes (N, D): 0.5 (sum_j log Sigma_jj - log det Sigma)
    (the unsupervised score of Locatello et al. 2019, Sec. 4, ``unsupervised_metrics.py``).

    Computed as -0.5 log det R of the correlation matrix R, with R's eigenvalues floored at
    ``1e-12``: codes with an exact linear dependence (a duplicated dimension) have an infinite
    TC, which rounding made either inf or ~18 nats depending on the sign of a tiny determinant;
    each degenerate direction now counts as 0.5 log 1e12 = 13.8 nats, a finite number for
    metrics.json."""
    mu = check_codes(mu, "mu")
    if len(mu) < 2:
        raise ValueError(f"a covariance needs at least 2 points, got {len(mu)}")
    cov = np.atleast_2d(np.cov(mu, rowvar=False))
    diag = np.diag(cov)
    if np.any(diag <= 0):
        keep = diag > 0
        cov, diag = cov[np.ix_(keep, keep)], diag[keep]
    if len(diag) == 0:
        return 0.0
    sd = np.sqrt(diag)
    eig = np.linalg.eigvalsh(cov / np.outer(sd, sd))
    return float(max(0.0, -0.5 * np.sum(np.log(np.maximum(eig, MIN_EIGENVALUE)))))


def total_correlation(
    mu: np.ndarray,
    logvar: np.ndarray,
    n_samples: int | None = 10_000,
    rng: np.random.Generator | int | None = 0,
) -> float:
    """TC of the aggregate posterior q(z) = 1/N sum_n q(z|x_n): sum_j H(z_j) - H(z), in nats.

    The Monte-Carlo estimator of Chen et al. 2018 (Sec. 3, "Estimating E_q(z)[log q(z)]", with
    the whole sample as the mixture); ``mu, logvar``: (N, D); ``rng`` None: seed 0.
    """
    mu, logvar = check_posteriors(mu, logvar)
    h_dims, h_joint = aggregate_entropies(mu, logvar, as_rng(rng), n_samples, joint=True)
    return float(np.sum(h_dims) - h_joint)


def unsupervised_scores(
    mu: np.ndarray,
    logvar: np.ndarray,
    recon_error: np.ndarray | None = None,
    *,
    n_samples: int | None = 10_000,
    active_threshold: float = 0.01,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, object]:
    """All factor-free measures of posteriors (N, D) and optional per-image errors (N,).

    ValueError for means and log-variances of different shapes (no broadcasting), non-finite
    values, fewer than 2 points, or errors that are not one finite number per point."""
    mu, logvar = check_posteriors(mu, logvar)
    if len(mu) < 2:
        raise ValueError(f"at least 2 points are needed, got {len(mu)}")
    if recon_error is not None:
        recon_error = np.asarray(recon_error, dtype=np.float64)
        if recon_error.shape != (len(mu),) or not np.all(np.isfinite(recon_error)):
            raise ValueError(
                f"recon_error must be {len(mu)} finite numbers, one per point (shape "
                f"({len(mu)},)); got shape {recon_error.shape}"
            )
    kl = kl_per_dim(mu, logvar)
    out: dict[str, object] = {
        "kl_per_dim": [float(v) for v in kl],
        "kl": float(kl.sum()),
        "active_units": float(active_units(mu, active_threshold)),
        "total_correlation": total_correlation(mu, logvar, n_samples, rng),
        "gaussian_total_correlation": gaussian_total_correlation(mu),
    }
    if recon_error is not None:
        out["reconstruction_error"] = float(np.mean(recon_error))
    return out
