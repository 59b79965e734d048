"""Shared pieces of the metrics: input checks, discretisation, discrete entropy and MI, splits.

All information quantities are in nats. Shapes: ``codes`` (N, D) float, ``factors`` (N, K) int
class indices (any integers; they are relabelled to 0..n-1 per factor where it matters).
"""

from __future__ import annotations

import numpy as np


def _numeric(x: object, name: str) -> np.ndarray:
    """``x`` as a real numeric array (bools and integers allowed); ValueError otherwise."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def nonfinite_rows(a: np.ndarray) -> np.ndarray:
    """Boolean (N,): the rows of an (N, ...) array holding a NaN or an infinity."""
    # Reduced over the trailing axes, not reshaped: ``reshape(0, -1)`` of no rows is an error
    # ("cannot reshape array of size 0"), which hid "at least 2 points are needed".
    return ~np.isfinite(a).all(axis=tuple(range(1, a.ndim)))


def check_codes(codes: np.ndarray, name: str = "codes") -> np.ndarray:
    """``codes`` as float64 (N, D) with D >= 1 and only finite values; ValueError otherwise."""
    codes = _numeric(codes, name).astype(np.float64)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise ValueError(f"{name} must be (N, D) with D >= 1; got shape {codes.shape}")
    bad = int(nonfinite_rows(codes).sum())
    if bad:
        raise ValueError(f"{name} holds NaN or infinite values ({bad} of {len(codes)} rows)")
    return codes


def check_codes_factors(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` as float64 (N, D) and ``factors`` as int64 (N, K); ValueError on bad shapes,
    non-numeric or non-finite values, or fewer than 2 points."""
    codes_arr, factors = np.asarray(codes), _numeric(factors, "factors")
    if codes_arr.ndim != 2 or factors.ndim != 2:
        raise ValueError(
            f"codes must be (N, D) and factors (N, K); got {codes_arr.shape} and {factors.shape}"
        )
    codes = check_codes(codes_arr)
    if factors.shape[1] < 1:
        raise ValueError(f"factors must have at least one column (N, K); got {factors.shape}")
    if len(codes) != len(factors):
        raise ValueError(f"{len(codes)} codes but {len(factors)} factor rows")
    if len(codes) < 2:
        raise ValueError("at least 2 points are needed")
    if not np.issubdtype(factors.dtype, np.integer) and factors.dtype != bool:
        if not np.all(np.isfinite(factors)) or not np.all(factors == np.round(factors)):
            raise ValueError("factors must be integer class indices")
    return codes, relabel(factors)


def check_posteriors(mu: np.ndarray, logvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` and ``logvar`` as float64 (N, D) of the same shape, finite; ValueError otherwise
    (a (N, 1) logvar would otherwise broadcast against (N, D) means into wrong numbers)."""
    mu, logvar = check_codes(mu, "mu"), check_codes(logvar, "logvar")
    if logvar.shape != mu.shape:
        raise ValueError(f"mu and logvar must have the same shape; got {mu.shape} and "
                         f"{logvar.shape}")  # fmt: skip
    return mu, logvar


def check_count(value: object, name: str, minimum: int = 1, allow_none: bool = False) -> None:
    """ValueError unless ``value`` is an integer >= ``minimum`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        also = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{also}, got {value!r}")


def relabel(factors: np.ndarray) -> np.ndarray:
    """Each column mapped to 0..n_k-1 in sorted order of its values: int64 (N, K)."""
    factors = np.asarray(factors)
    out = np.empty(factors.shape, dtype=np.int64)
    for k in range(factors.shape[1]):
        out[:, k] = np.unique(factors[:, k], return_inverse=True)[1].ravel()
    return out


def discretize(codes: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Each code dimension cut into ``n_bins`` equal-width bins over its own [min, max].

    The disentanglement_lib protocol for MIG and modularity (``histogram_discretize``): the
    maximum falls into the last bin; a constant dimension falls into one bin. Returns int64
    (N, D) in 0..n_bins-1.
    """
    check_count(n_bins, "n_bins")
    codes = np.asarray(codes, dtype=np.float64)
    lo, hi = codes.min(axis=0), codes.max(axis=0)
    with np.errstate(over="ignore"):
        span = hi - lo
    if not np.isfinite(span).all():
        # a range wider than the largest float (codes near +-1e308): halving every value is
        # exact and brings the range back; the bins are the same equal-width cuts
        codes, lo, span = codes / 2, lo / 2, hi / 2 - lo / 2
    width = np.where(span > 0, span / n_bins, 1.0)
    bins = np.floor((codes - lo) / width).astype(np.int64)
    return np.clip(bins, 0, n_bins - 1)


def entropy(labels: np.ndarray) -> np.ndarray:
    """Discrete entropy in nats of each column of labels (N, K) -> (K,).

    Any labels the metrics accept as factor classes (integers of any range, integral floats,
    bools): only which rows share a value matters (`mig_chen` and `aam` pass their raw factors).
    """
    labels = np.asarray(labels)
    out = np.empty(labels.shape[1])
    for k in range(labels.shape[1]):
        p = np.unique(labels[:, k], return_counts=True)[1] / len(labels)
        out[k] = -np.sum(p * np.log(p))
    return out


def mutual_info_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Discrete mutual information in nats between every column of ``a`` (N, D) and of ``b``
    (N, K), both int labels >= 0: returns (D, K).

    Plug-in estimate from the joint histogram (the same quantity as
    ``sklearn.metrics.mutual_info_score``), one ``bincount`` per pair. The ratio p(a, b) /
    (p(a) p(b)) is taken on the integer counts, n_ab n / (n_a n_b): exactly 1 for columns that
    are independent in the sample (a constant code above all), so their MI is exactly 0. From
    probabilities, p(a) summed over b rounds, leaving MI ~1e-17 > 0 for a constant code, which
    modularity (invariant to the scale of the MI) turned into a score of 1.
    """
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    n = len(a)
    out = np.empty((a.shape[1], b.shape[1]))
    for k in range(b.shape[1]):
        bk = b[:, k]
        nb = int(bk.max()) + 1
        cb = np.bincount(bk, minlength=nb)
        for j in range(a.shape[1]):
            aj = a[:, j]
            na = int(aj.max()) + 1
            joint = np.bincount(aj * nb + bk, minlength=na * nb).reshape(na, nb)
            ca = joint.sum(axis=1)
            nz = joint > 0
            nij = joint[nz]
            ratio = (nij * n) / (ca[:, None] * cb[None, :])[nz]  # exact integers, one rounding
            out[j, k] = float(np.sum(nij / n * np.log(ratio)))
    return np.maximum(out, 0.0)


def train_test_split(
    n: int, n_train: int | None, n_test: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random index sets (train, test) of the N points; ``n_train=None``: all the rest.

    When N is smaller than asked, the test set keeps ``n_test / (n_train + n_test)`` of the points.
    ValueError for sizes below 1 (an empty training or test set has no score).
    """
    check_count(n_train, "n_train", allow_none=True)
    check_count(n_test, "n_test")
    if n < 2:
        raise ValueError(f"a train/test split needs at least 2 points, got {n}")
    perm = rng.permutation(n)
    want_train = n - n_test if n_train is None else n_train
    if want_train < 1 or want_train + n_test > n:  # (n_train None with n_test >= n: too few)
        share = n_test / (want_train + n_test) if want_train >= 1 else n_test / (n_test + 1)
        n_test = min(n - 1, max(1, int(round(n * share))))
        want_train = n - n_test
    return perm[n_test : n_test + want_train], perm[:n_test]


def sample_rows(n: int, n_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_samples`` rows drawn without replacement (all rows when None or >= n)."""
    if n_samples is None or n_samples >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=n_samples, replace=False))


def top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column of (D, K), the largest entry minus the second largest (the largest when D=1)."""
    s = np.sort(matrix, axis=0)[::-1]
    return s[0] - (s[1] if len(s) > 1 else 0.0)


def varied_factors(dataset: object) -> np.ndarray:
    """Indices of the factors of a ground-truth dataset that take more than one value; ValueError
    when none does (the batch scores draw their labels among them: nothing to score)."""
    varied = np.flatnonzero(np.asarray(dataset.factor_sizes) > 1)  # type: ignore[attr-defined]
    if not len(varied):
        raise ValueError(
            f"every factor of the dataset takes a single value (factor sizes "
            f"{tuple(dataset.factor_sizes)}): no factor to score"  # type: ignore[attr-defined]
        )
    return varied


def warn_one_factor(score: str) -> None:
    """The `RuntimeWarning` of a score that compares factors (DCI's disentanglement,
    modularity) computed with one varied factor, which makes it NaN."""
    import warnings

    warnings.warn(
        f"{score} is undefined with one varied factor (it measures how each code dimension "
        "spreads over factors; with one, any code, noise too, would score 1): NaN",
        RuntimeWarning,
        stacklevel=3,
    )
