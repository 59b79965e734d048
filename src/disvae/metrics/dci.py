"""DCI: Disentanglement, Completeness, Informativeness (Eastwood & Williams 2018, "A Framework
for the Quantitative Evaluation of Disentangled Representations", Sec. 3 and Eqs. 1-2).

One regressor per factor predicts v_k from all codes; its feature importances fill R (D, K).
With P_ij = R_ij / sum_k R_ik: disentanglement D_i = 1 - H_K(P_i.) (entropy to base K), weighted
by rho_i = sum_k R_ik / sum R (Eq. 1 and the weighted average after it). Completeness
C_k = 1 - H_D(P~_.k) with P~_ik = R_ik / sum_i R_ik (Eq. 2), weighted by the factor's share of R
(the disentanglement_lib aggregation; uniform for tree importances, which sum to one per factor).

``model="gbt"`` (default) is the disentanglement_lib protocol (``dci.py``): gradient-boosted
trees (100 stages, depth 3, learning rate 0.1) per factor on 10,000 training points, importances =
``feature_importances_`` (mean impurity decrease), informativeness = mean test accuracy on 5,000
points. It runs our vectorised implementation of scikit-learn's algorithm (`disvae.metrics.gbt`:
all factors' trees at once, thresholds from at most 256 candidates per feature), about 8x faster;
``model="sklearn"`` fits scikit-learn's own ``GradientBoostingClassifier`` one factor at a time
(exact thresholds; a test checks that the two agree). ``model="lasso"`` is the paper's own
variant: a Lasso regression on standardised codes to the factor scaled to [0, 1], importances =
|weights|, informativeness = max(0, 1 - NRMSE) (test RMSE divided by the factor's standard
deviation; clipped at 0, no better than predicting the mean), averaged over factors.

A factor with a single value among the training points (zero entropy) is left out of D, C and I:
kept, it would count in the entropy base K of every code's D_i and score informativeness 1
without any code (MIG and SAP leave such factors out too).
"""

from __future__ import annotations

import numpy as np

from disvae.metrics._sampling import as_rng
from disvae.metrics._utils import check_codes_factors, train_test_split, warn_one_factor
from disvae.metrics.gbt import gbt_importance

DCI_MODELS = ("gbt", "sklearn", "lasso")


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy to ``base`` of each row of a (R, C) matrix of probabilities."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1) / np.log(base) if base > 1 else np.zeros(len(p))


def disentanglement_completeness(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix R (D, K) >= 0 (Eqs. 1-2)."""
    r = np.abs(np.asarray(importance, dtype=np.float64))
    total = r.sum()
    if total <= 0:
        return 0.0, 0.0
    d, k = r.shape
    row, col = r.sum(axis=1), r.sum(axis=0)
    p_rows = r / np.where(row > 0, row, 1.0)[:, None]
    per_code = np.where(row > 0, 1.0 - _entropy_rows(p_rows, k), 0.0)
    p_cols = (r / np.where(col > 0, col, 1.0)[None, :]).T
    per_factor = np.where(col > 0, 1.0 - _entropy_rows(p_cols, d), 0.0)
    return float(per_code @ (row / total)), float(per_factor @ (col / total))


def _fit_gbt(x, y, x_test, y_test, rng) -> tuple[np.ndarray, float]:
    from sklearn.ensemble import GradientBoostingClassifier

    seed = int(rng.integers(2**31 - 1))
    clf = GradientBoostingClassifier(random_state=seed)
    clf.fit(x, y)
    return clf.feature_importances_, float(np.mean(clf.predict(x_test) == y_test))


def _fit_lasso(x, y, x_test, y_test, alpha: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Lasso

    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    scale = max(float(y.max()), 1.0)
    reg = Lasso(alpha=alpha).fit((x - mean) / std, y / scale)
    pred = reg.predict((x_test - mean) / std)
    sd = float(np.std(y_test / scale))
    rmse = float(np.sqrt(np.mean((pred - y_test / scale) ** 2)))
    # Eastwood & Williams 2018, Sec. 3: informativeness = 1 - NRMSE, in [0, 1]; a regressor worse
    # than predicting the mean (NRMSE > 1, e.g. codes without information) is clipped to 0.
    return np.abs(reg.coef_), max(0.0, 1.0 - (rmse / sd if sd > 0 else 1.0))


def dci_importance(
    codes: np.ndarray,
    factors: np.ndarray,
    *,
    n_train: int | None = 10_000,
    n_test: int = 5_000,
    model: str = "gbt",
    lasso_alpha: float = 0.02,
    rng: np.random.Generator | int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance matrix R (D, K) and per-factor informativeness (K,) of the DCI protocol.

    A factor with a single value among the training points has nothing to predict: its column
    of R is 0 and its informativeness NaN, and `dci` leaves it out."""
    if model not in DCI_MODELS:
        raise ValueError(f"unknown DCI model {model!r}; choose one of {', '.join(DCI_MODELS)}")
    codes, factors = check_codes_factors(codes, factors)
    rng = as_rng(rng)
    tr, te = train_test_split(len(codes), n_train, n_test, rng)
    d, k = codes.shape[1], factors.shape[1]
    importance, info = np.zeros((d, k)), np.full(k, np.nan)
    varied = [f for f in range(k) if len(np.unique(factors[tr, f])) > 1]
    if model == "gbt":
        if varied:
            x, y = codes[tr], factors[tr][:, varied]
            seed = int(rng.integers(2**31 - 1))  # the trees' random tie-breaks (see gbt.py)
            imp, acc = gbt_importance(x, y, codes[te], factors[te][:, varied], random_state=seed)
            importance[:, varied], info[varied] = imp, acc
        return importance, info
    for f in varied:
        y, y_test = factors[tr, f], factors[te, f]
        if model == "sklearn":
            importance[:, f], info[f] = _fit_gbt(codes[tr], y, codes[te], y_test, rng)
        else:
            importance[:, f], info[f] = _fit_lasso(codes[tr], y, codes[te], y_test, lasso_alpha)
    return importance, info


def dci(
    codes: np.ndarray,
    factors: np.ndarray,
    *,
    n_train: int | None = 10_000,
    n_test: int = 5_000,
    model: str = "gbt",
    lasso_alpha: float = 0.02,
    rng: np.random.Generator | int | None = 0,
) -> dict[str, float]:
    """DCI scores (Eastwood & Williams 2018) of codes (N, D) against factor classes (N, K).

    The N points are split at random into ``n_train`` / ``n_test`` (fewer points: the same
    proportion). ``model``: ``"gbt"`` (disentanglement_lib's boosted trees, default),
    ``"sklearn"`` (the same with scikit-learn's own classifier: exact, slower) or ``"lasso"``
    (the paper).

    Factors with a single value among the training points are left out of D, C and I (as MIG
    and SAP leave them out); with none left all three are 0. With one factor left D is
    undefined (how a code spreads over one factor): NaN, with a `RuntimeWarning`.

    Returns:
        ``{"disentanglement", "completeness", "informativeness"}``, each in [0, 1].
    """
    importance, info = dci_importance(
        codes, factors, n_train=n_train, n_test=n_test, model=model, lasso_alpha=lasso_alpha,
        rng=rng,
    )  # fmt: skip
    varied = np.isfinite(info)  # single-valued factors: NaN, left out (K = varied factors)
    if not varied.any():
        return {"disentanglement": 0.0, "completeness": 0.0, "informativeness": 0.0}
    dis, comp = disentanglement_completeness(importance[:, varied])
    if varied.sum() == 1:  # (Eq. 1's entropy to the base K = 1: 1 for any code, noise too)
        warn_one_factor("dci disentanglement")
        dis = float("nan")
    return {
        "disentanglement": dis,
        "completeness": comp,
        "informativeness": float(info[varied].mean()),
    }
