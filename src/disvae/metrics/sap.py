"""Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of Disentangled
Latent Concepts from Unlabeled Observations", Sec. 3, the SAP score).

Discrete-factor version of the disentanglement_lib protocol (``sap_score.py``, continuous=False):
for every pair (code dimension j, factor k) a linear SVM (``LinearSVC(C=0.01,
class_weight="balanced")``) is fit on the single feature z_j to predict v_k, and its test accuracy
fills the score matrix S (D, K). Per factor, the gap between the two best dimensions; the mean
over factors. 10,000 training and 5,000 test points.
"""

from __future__ import annotations

import warnings

import numpy as np

from disvae.metrics._sampling import as_rng
from disvae.metrics._utils import check_codes_factors, top_two_gap, train_test_split


def sap_matrix(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    c: float = 0.01,
) -> np.ndarray:
    """Test accuracy (D, K) of a one-feature linear SVM per (code dimension, factor)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    d, k = train_codes.shape[1], train_factors.shape[1]
    scores = np.zeros((d, k))
    for f in range(k):
        y, y_test = train_factors[:, f], test_factors[:, f]
        if len(np.unique(y)) < 2:
            continue  # a constant factor: nothing to predict
        for j in range(d):
            clf = LinearSVC(C=c, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(train_codes[:, j : j + 1], y)
            scores[j, f] = np.mean(clf.predict(test_codes[:, j : j + 1]) == y_test)
    return scores


def sap(
    codes: np.ndarray,
    factors: np.ndarray,
    *,
    n_train: int | None = 10_000,
    n_test: int = 5_000,
    c: float = 0.01,
    rng: np.random.Generator | int | None = 0,
) -> float:
    """SAP score (Kumar et al. 2018, Sec. 3), discrete-factor version, in [0, 1].

    The N points are split at random into ``n_train`` and ``n_test`` (fewer points: the same
    proportion); see the module docstring for the protocol.

    Args:
        codes: (N, D) float codes; factors: (N, K) int factor classes.
        n_train, n_test: split sizes (disentanglement_lib: 10,000 / 5,000).
        c: the SVM's inverse regularisation (0.01).
        rng: generator (or seed) for the split.
    """
    codes, factors = check_codes_factors(codes, factors)
    tr, te = train_test_split(len(codes), n_train, n_test, as_rng(rng))
    scores = sap_matrix(codes[tr], factors[tr], codes[te], factors[te], c)
    varied = np.array([len(np.unique(factors[:, f])) > 1 for f in range(factors.shape[1])])
    if not varied.any():
        return 0.0
    return float(np.mean(top_two_gap(scores)[varied]))
