"""Modularity and explicitness (Ridgeway & Zemel 2018, "Learning Deep Disentangled Embeddings
with the F-Statistic Loss", Sec. 3 "Modularity" and "Explicitness").

Modularity: with m_ik the MI between binned code i and factor k, theta_i = max_k m_ik and the
ideal template t_ik = theta_i at the argmax and 0 elsewhere,
delta_i = sum_k (m_ik - t_ik)^2 / (theta_i^2 (K - 1)) and modularity = mean_i (1 - delta_i).
As in disentanglement_lib (``modularity_explicitness.py``) a code dimension with no information
(theta_i = 0) scores 0 and stays in the mean. MI from 20 equal-width bins, 10,000 points.

Explicitness: per factor a one-vs-rest logistic regression on the standardised codes (Ridgeway &
Zemel 2018, Sec. 3 "Explicitness"; disentanglement_lib fits scikit-learn 0.20's default
``LogisticRegression()``, i.e. liblinear one-vs-rest, C=1): one binary liblinear classifier per
class, whose probabilities, normalised over the classes as scikit-learn's one-vs-rest
``predict_proba`` does, give one ROC-AUC per class on 5,000 test points; the mean over the
factor's classes, then over factors.

Factors with a single value among the training points carry no information to find and are left
out of both scores, as MIG and SAP leave them out (with none left both scores are 0). With one
factor left (MNIST's, CIFAR-10's label) modularity, which measures how a code dimension spreads
over factors, is undefined: NaN, with a warning (explicitness is still defined).
"""

from __future__ import annotations

import warnings

import numpy as np

from disvae.metrics._sampling import as_rng
from disvae.metrics._utils import (
    check_codes_factors,
    discretize,
    mutual_info_matrix,
    warn_one_factor,
)
from disvae.metrics._utils import train_test_split as _split


def modularity_score(mi: np.ndarray) -> float:
    """Modularity (Ridgeway & Zemel 2018, Sec. 3) of an MI matrix (D, K)."""
    mi = np.asarray(mi, dtype=np.float64)
    d, k = mi.shape
    if k < 2:
        # One factor: delta_i divides by K - 1 = 0. Every dimension would be "perfectly
        # modular", noise included (its binned MI with the factor is never exactly 0): the
        # score is undefined, NaN, not 1.
        return float("nan")
    sq = mi**2
    top = sq.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (sq.sum(axis=1) - top) / (top * (k - 1))
    return float(np.mean(np.where(top > 0, 1.0 - delta, 0.0)))


def explicitness_score(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
) -> float:
    """Mean over factors of the mean one-vs-rest test ROC-AUC of a logistic regression
    (liblinear one-vs-rest: Ridgeway & Zemel 2018, Sec. 3; disentanglement_lib)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.multiclass import OneVsRestClassifier

    mean, std = train_codes.mean(axis=0), train_codes.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x, x_test = (train_codes - mean) / std, (test_codes - mean) / std
    aucs = []
    for f in range(train_factors.shape[1]):
        y, y_test = train_factors[:, f], test_factors[:, f]
        classes = np.unique(y)
        if len(classes) < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = OneVsRestClassifier(LogisticRegression(solver="liblinear")).fit(x, y)
        proba = clf.predict_proba(x_test)
        per_class = [
            roc_auc_score(y_test == c, proba[:, i])
            for i, c in enumerate(clf.classes_)
            if 0 < np.sum(y_test == c) < len(y_test)
        ]
        if per_class:
            aucs.append(np.mean(per_class))
    return float(np.mean(aucs)) if aucs else 0.0


def modularity(
    codes: np.ndarray,
    factors: np.ndarray,
    n_bins: int = 20,
    *,
    n_train: int | None = 10_000,
    n_test: int = 5_000,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, float]:
    """Modularity and explicitness (Ridgeway & Zemel 2018) of codes (N, D) vs factors (N, K).

    The N points are split at random into ``n_train`` (modularity's MI and explicitness's
    training set) and ``n_test`` (explicitness's test set). Factors with a single value among
    the training points are left out (none left: both scores 0).

    Returns:
        ``{"modularity", "explicitness"}``, each in [0, 1] (explicitness 0.5 = chance).
    """
    codes, factors = check_codes_factors(codes, factors)
    tr, te = _split(len(codes), n_train, n_test, as_rng(rng))
    # A single-valued factor (zero entropy) is left out: kept, it would add a zero MI column and
    # raise K in delta_i's K - 1 (docs/metrics.md; MIG and SAP leave such factors out too).
    varied = factors[tr].max(axis=0) > factors[tr].min(axis=0)
    if not varied.any():
        return {"modularity": 0.0, "explicitness": 0.0}
    factors = factors[:, varied]
    if factors.shape[1] == 1:
        warn_one_factor("modularity")
    mi = mutual_info_matrix(discretize(codes[tr], n_bins), factors[tr])
    return {
        "modularity": modularity_score(mi),
        "explicitness": explicitness_score(codes[tr], factors[tr], codes[te], factors[te]),
    }
