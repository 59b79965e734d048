"""β-VAE score (Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework", Sec. 3 "Disentanglement metric" and Appendix A.4).

One point: pick a factor k uniformly; draw ``batch_size`` pairs of factor vectors that agree on k
(everything else uniform); encode both images of each pair; the point's feature is the mean over
the batch of |z1 - z2| (D,), its label k. A linear classifier is trained on ``n_train`` points;
the score is its accuracy on ``n_eval`` fresh points. The classifier is disentanglement_lib's
(``beta_vae.py``: ``LogisticRegression()`` with scikit-learn 0.20's defaults, as run by Locatello
et al. 2019): one-vs-rest logistic regression, one binary liblinear classifier per factor (C=1,
at most 100 iterations), predicting the factor of the highest decision value. The paper's own is
a linear softmax classifier trained with Adagrad. disentanglement_lib protocol: batch 64, 10,000
training and 5,000 evaluation points.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from disvae.metrics._sampling import EncodeFn, as_rng, encode_classes
from disvae.metrics._utils import check_count, varied_factors


def beta_vae_points(
    dataset: Any, encode: EncodeFn, n: int, batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of the β-VAE protocol: features (n, D) and factor labels (n,)."""
    varied = varied_factors(dataset)
    labels = varied[rng.integers(0, len(varied), size=n)]
    a = dataset.sample_factors(n * batch_size, rng)
    b = dataset.sample_factors(n * batch_size, rng)
    fixed = np.repeat(labels, batch_size)
    rows = np.arange(n * batch_size)
    b[rows, fixed] = a[rows, fixed]
    za = encode_classes(dataset, encode, a)
    zb = encode_classes(dataset, encode, b)
    feats = np.abs(za - zb).reshape(n, batch_size, -1).mean(axis=1)
    return feats, labels


def beta_vae_score(
    dataset: Any,
    encode: EncodeFn,
    *,
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, float]:
    """β-VAE score (Higgins et al. 2017, Sec. 3) of ``encode`` on a `GridDataset`.

    Args:
        dataset: a ground-truth dataset (``factor_sizes``, ``sample_factors``, ``index_of``,
            ``sample_observations_from_factors``).
        encode: images (B, C, H, W) -> codes (B, D); a `CachedEncoder` reuses codes by index.
        batch_size: pairs averaged per point (64).
        n_train, n_eval: points to train and to evaluate the classifier (10,000 / 5,000).
        rng: generator or seed.

    Returns:
        ``{"train_accuracy", "eval_accuracy"}``; chance is 1 / (number of varied factors).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    for name, value in (("batch_size", batch_size), ("n_train", n_train), ("n_eval", n_eval)):
        check_count(value, name)
    rng = as_rng(rng)
    x, y = beta_vae_points(dataset, encode, n_train, batch_size, rng)
    x_eval, y_eval = beta_vae_points(dataset, encode, n_eval, batch_size, rng)
    if len(np.unique(y)) < 2:
        # One label among the training points (a single varied factor, or very few points): the
        # classifier can only predict it, so the evaluation points are scored against it.
        return {"train_accuracy": 1.0, "eval_accuracy": float(np.mean(y_eval == y[0]))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # scikit-learn 0.20's LogisticRegression() default (disentanglement_lib beta_vae.py):
        # liblinear, one-vs-rest ("multi_class" is deprecated since, hence the wrapper).
        clf = OneVsRestClassifier(LogisticRegression(solver="liblinear")).fit(x, y)
    return {
        "train_accuracy": float(np.mean(clf.predict(x) == y)),
        "eval_accuracy": float(np.mean(clf.predict(x_eval) == y_eval)),
    }
