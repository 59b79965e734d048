"""FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising", Sec. 4 and Fig. 2).

Global per-dimension variances from ``n_variance`` random codes; dimensions whose standard
deviation is below ``prune_threshold`` (0.05) are "collapsed" and left out (disentanglement_lib
``factor_vae.py``, ``_prune_dims``, compares ``sqrt(variance)`` with the threshold). One point:
pick a factor k uniformly, fix it to a random value, draw ``batch_size`` images with the other
factors uniform, divide their codes by the global standard deviations and take the dimension d
with the least variance; the vote is (d, k). A majority-vote classifier (each d predicts the
factor it voted for most often) is built from ``n_train`` votes and its accuracy on ``n_eval``
fresh votes is the score. disentanglement_lib protocol: batch 64, 10,000 points for the
variances, 10,000 training and 5,000 evaluation votes; variances with ddof=1.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from disvae.metrics._sampling import EncodeFn, as_rng, encode_classes, sample_codes
from disvae.metrics._utils import check_count, varied_factors


def factor_vae_votes(
    dataset: Any,
    encode: EncodeFn,
    n: int,
    batch_size: int,
    global_var: np.ndarray,
    active: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` votes: (argmin code dimension among all D, factor index), both (n,)."""
    varied = varied_factors(dataset)
    labels = varied[rng.integers(0, len(varied), size=n)]
    classes = dataset.sample_factors(n * batch_size, rng)
    fixed_value = dataset.sample_factors(n, rng)[np.arange(n), labels]
    rows = np.arange(n * batch_size)
    classes[rows, np.repeat(labels, batch_size)] = np.repeat(fixed_value, batch_size)
    z = encode_classes(dataset, encode, classes).reshape(n, batch_size, -1)
    local_var = z.var(axis=1, ddof=1)[:, active] / global_var[active]
    return np.flatnonzero(active)[np.argmin(local_var, axis=1)], labels


def factor_vae_score(
    dataset: Any,
    encode: EncodeFn,
    *,
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    n_variance: int = 10_000,
    prune_threshold: float = 0.05,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, float]:
    """FactorVAE score (Kim & Mnih 2018, Sec. 4) of ``encode`` on a `GridDataset`.

    Args:
        dataset: a ground-truth dataset (see `beta_vae_score`).
        encode: images (B, C, H, W) -> codes (B, D); a `CachedEncoder` reuses codes by index.
        batch_size: images per vote (64); n_train / n_eval: votes (10,000 / 5,000).
        n_variance: random codes for the global variances (10,000).
        prune_threshold: dimensions whose global standard deviation is below it are ignored
            (0.05; disentanglement_lib ``_prune_dims`` compares the standard deviation).
        rng: generator or seed.

    Returns:
        ``{"train_accuracy", "eval_accuracy", "num_active_dims"}``; with no active dimension (a
        collapsed encoder) the accuracies are 0, as in disentanglement_lib, with a
        `RuntimeWarning` saying that they are no score.
    """
    # A vote needs a variance within its batch (ddof=1: 2 images), the pruning one over codes.
    for name, value, least in (("batch_size", batch_size, 2), ("n_train", n_train, 1),
                               ("n_eval", n_eval, 1), ("n_variance", n_variance, 2)):  # fmt: skip
        check_count(value, name, least)
    varied_factors(dataset)  # ValueError when no factor varies
    rng = as_rng(rng)
    codes, _ = sample_codes(dataset, encode, n_variance, rng)
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold  # on the std (disentanglement_lib _prune_dims)
    if not active.any():
        # disentanglement_lib's answer (0, 0, 0), kept so that scores compare with Locatello et
        # al. 2019; but 0 is below chance (1 / number of factors) and measures nothing: no
        # dimension is left to vote (Kim & Mnih's classifier is undefined), so say so.
        warnings.warn(
            "factor_vae: no active code dimension (every standard deviation is below "
            f"prune_threshold {prune_threshold:g}, largest {np.sqrt(global_var.max()):.3g}: a "
            "collapsed encoder), so its accuracies of 0 are a placeholder, not a score; check "
            "the model's KL per dimension",
            RuntimeWarning,
            stacklevel=2,
        )
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
    k = dataset.n_factors
    dims, labels = factor_vae_votes(dataset, encode, n_train, batch_size, global_var, active, rng)
    votes = np.zeros((len(global_var), k), dtype=np.int64)
    np.add.at(votes, (dims, labels), 1)
    classifier = votes.argmax(axis=1)  # each dimension predicts its majority factor
    train_acc = votes.max(axis=1).sum() / votes.sum()
    dims_e, labels_e = factor_vae_votes(
        dataset, encode, n_eval, batch_size, global_var, active, rng
    )
    return {
        "train_accuracy": float(train_acc),
        "eval_accuracy": float(np.mean(classifier[dims_e] == labels_e)),
        "num_active_dims": float(active.sum()),
    }
