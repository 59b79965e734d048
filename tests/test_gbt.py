"""The vectorised boosted trees behind DCI agree with scikit-learn's GradientBoostingClassifier."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from disvae import metrics
from disvae.metrics.gbt import apply_bins, bin_thresholds, gbt_importance


def _data(n: int, seed: int, discrete: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.stack([rng.integers(0, 3, n), rng.integers(0, 5, n), rng.integers(0, 2, n)], 1)
    x = rng.normal(size=(n, 4))
    x[:, 0] += 0.9 * y[:, 0]
    x[:, 1] += 0.6 * y[:, 1]
    x[:, 2] += 1.2 * y[:, 2]
    x[:, 3] = 0.5 * x[:, 1] + rng.normal(size=n)  # shares some information with factor 1
    return (np.round(x * 3) / 3 if discrete else x), y


def _sklearn(x, y, x_test, y_test, n_stages):
    from sklearn.ensemble import GradientBoostingClassifier

    imp, acc = [], []
    for f in range(y.shape[1]):
        clf = GradientBoostingClassifier(n_estimators=n_stages, random_state=0).fit(x, y[:, f])
        imp.append(clf.feature_importances_)
        acc.append(np.mean(clf.predict(x_test) == y_test[:, f]))
    return np.array(imp).T, np.array(acc)


def test_matches_sklearn_when_thresholds_are_exact():
    # Fewer than 256 distinct values per code: the candidate thresholds are sklearn's, so the
    # trees (and their importances) must agree up to float rounding and ties.
    x, y = _data(900, 0, discrete=True)
    ours = gbt_importance(x[:600], y[:600], x[600:], y[600:], n_stages=30)
    ref = _sklearn(x[:600], y[:600], x[600:], y[600:], 30)
    np.testing.assert_allclose(ours[0], ref[0], atol=0.01)
    np.testing.assert_allclose(ours[1], ref[1], atol=0.01)


def test_dci_close_to_sklearn_on_continuous_codes():
    x, y = _data(1500, 1, discrete=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = metrics.dci(x, y, n_train=1000, n_test=500, model="sklearn")
    ours = metrics.dci(x, y, n_train=1000, n_test=500, model="gbt")
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=0.05), key  # binned thresholds


def test_hand_case_one_informative_code():
    # y is the sign of code 0; code 1 is noise: every split, hence all importance, is code 0's.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 2))
    y = (x[:, :1] > 0).astype(int)
    imp, acc = gbt_importance(x[:300], y[:300], x[300:], y[300:], n_stages=5, max_depth=1)
    np.testing.assert_allclose(imp[:, 0], [1.0, 0.0])
    assert acc[0] >= 0.97  # test points near 0 may fall on the wrong side of the midpoint


def test_bins_are_exact_for_few_values_and_bounded_otherwise():
    x = np.array([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0], [1.0, 5.0]])
    t = bin_thresholds(x)
    np.testing.assert_allclose(t[0], [0.5, 2.0])  # midpoints, as sklearn's thresholds
    assert len(t[1]) == 0  # a constant code offers no split
    np.testing.assert_array_equal(apply_bins(x, t)[:, 0], [0, 1, 2, 1])
    many = np.random.default_rng(0).normal(size=(5000, 1))
    assert len(bin_thresholds(many, 64)[0]) == 63


def test_constant_factor_and_code_do_not_break_dci():
    x, y = _data(600, 3, discrete=False)
    x[:, 3] = 1.0
    y[:, 2] = 0
    r = metrics.dci(x, y, n_train=400, n_test=200)
    assert all(np.isfinite(v) for v in r.values())


def test_duplicated_code_shares_importance_like_sklearn():
    # scikit-learn's splitter visits features in a random order per node, so an exact copy of a
    # code wins half the tied splits; ties here are broken at random too (not to the lowest
    # index). Exact thresholds (few distinct values): D and C match model="sklearn".
    rng = np.random.default_rng(0)
    y = np.stack([rng.integers(0, 3, 450), rng.integers(0, 2, 450)], 1)
    x = np.round((y + 0.4 * rng.normal(size=(450, 2))) * 3) / 3
    x = np.concatenate([x, x[:, :1]], axis=1)  # code 2 = code 0
    imp, _ = gbt_importance(x[:300], y[:300], x[300:], y[300:], random_state=0)
    assert imp[0, 0] > 0.25 and imp[2, 0] > 0.25  # both copies of factor 0's code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = metrics.dci(x, y, n_train=300, n_test=150, model="sklearn")
    ours = metrics.dci(x, y, n_train=300, n_test=150)
    assert ours["completeness"] == pytest.approx(ref["completeness"], abs=0.1)
    assert ours["disentanglement"] == pytest.approx(ref["disentanglement"], abs=0.1)
