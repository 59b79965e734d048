"""Property-based tests (Hypothesis), second pass over the metrics: the batch scores (β-VAE,
FactorVAE) on tiny synthetic grids, SAP, DCI's three models, Chen's MI / AAM on deterministic
posteriors, the unsupervised measures, `sample_codes`, the evaluation plumbing and the input
checks. tests/test_properties.py covers the MI / entropy / modularity / DCI-matrix helpers.

Examples are drawn from a fixed seed (``derandomize=True``); the statistical bounds below are
derived in each test and hold with probability >= 1 - 1e-6 per example.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from disvae import metrics
from disvae.data.base import DatasetInfo
from disvae.data.ground_truth import GridDataset
from disvae.errors import UserError
from disvae.evaluation import (
    MIN_POINTS,
    check_sample_sizes,
    flatten_metrics,
    format_metrics,
    resolve_metric_names,
)
from disvae.metrics._utils import mutual_info_matrix, relabel, top_two_gap
from disvae.metrics._utils import train_test_split as metric_split
from disvae.metrics.sap import sap_matrix


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _grid(sizes: tuple[int, ...]) -> GridDataset:
    """A full factor grid whose image i is 1 x 1 x K pixels holding its K factor classes."""
    n = int(np.prod(sizes))
    classes = np.stack(np.unravel_index(np.arange(n), sizes), axis=1)
    images = classes.astype(np.uint8).reshape(n, 1, 1, len(sizes))
    values = [np.arange(s, dtype=float) for s in sizes]
    names = [f"f{k}" for k in range(len(sizes))]
    return GridDataset(images, DatasetInfo("grid", (1, 1, len(sizes))), False, names, values)


def _classes(images: torch.Tensor) -> np.ndarray:
    """The factor classes an image of `_grid` shows (pixels are class / 255)."""
    return np.rint(images.reshape(len(images), -1).numpy() * 255).astype(np.int64)


def _hoeffding(n: int, delta: float = 1e-6) -> float:
    """t with P(|mean of n independent [0, 1] variables - its expectation| > t) <= delta."""
    return math.sqrt(math.log(2 / delta) / (2 * n))


_sizes = st.lists(st.integers(3, 5), min_size=2, max_size=4)


# ============================================================== β-VAE and FactorVAE scores


@settings(max_examples=8)
@given(_sizes, st.integers(0, 2), st.integers(0, 2), st.data())
def test_batch_scores_of_the_factors_themselves_are_perfect(sizes, n_const, n_noise, data):
    # Code = the factor classes, permuted, scaled by |s| in [0.5, 8] with random signs, plus
    # constant and N(0, 1) noise dimensions; a single-valued factor is added, as dSprites' colour.
    # FactorVAE: in a batch with factor k fixed, k's dimension has local variance exactly 0 and
    # every other varied one > 0 (all 16 images sharing a class of a factor of >= 3 classes has
    # probability <= 3^-15), so every vote is right: 1.0. β-VAE: the fixed factor's feature
    # mean|z1 - z2| is exactly 0 and the others are >= 0.5 * 8/9 on average: a linear classifier
    # separates them and scores 1.0. Constant dimensions are pruned; noise ones are not.
    sizes = [*sizes, 1]
    k = len(sizes)
    ds = _grid(tuple(sizes))
    perm = data.draw(st.permutations(range(k)))
    scale = np.array(data.draw(st.lists(_floats(0.5, 8), min_size=k, max_size=k)))
    sign = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=k, max_size=k)))
    noise_rng = np.random.default_rng(data.draw(st.integers(0, 1000)))

    def encode(images):
        c = _classes(images)[:, perm] * scale * sign
        extra = [np.full((len(c), n_const), 2.5), noise_rng.standard_normal((len(c), n_noise))]
        return np.concatenate([c, *extra], axis=1)

    kw = {"n_train": 60, "n_eval": 40, "batch_size": 16, "rng": 1}
    fv = metrics.factor_vae_score(ds, encode, n_variance=200, **kw)
    assert fv["train_accuracy"] == 1.0 and fv["eval_accuracy"] == 1.0
    # active: the varied factors' dimensions and the noise dimensions (std ~1 >> 0.05)
    assert fv["num_active_dims"] == (k - 1) + n_noise
    bv = metrics.beta_vae_score(ds, encode, **kw)
    assert bv == {"train_accuracy": 1.0, "eval_accuracy": 1.0}


@settings(max_examples=6)
@given(_sizes, st.integers(1, 4), st.integers(0, 10**6))
def test_batch_scores_of_an_encoder_blind_to_the_factors_are_at_chance(sizes, d, seed):
    # Codes drawn afresh, independently of the images: every evaluation label is uniform over
    # the K varied factors and independent of the classifier's prediction, so each evaluation
    # point is right with probability exactly 1/K, independently: Hoeffding bounds the mean.
    ds = _grid(tuple(sizes))
    rng = np.random.default_rng(seed)

    def encode(images):
        return rng.standard_normal((len(images), d))

    n_eval = 400
    kw = {"n_train": 50, "n_eval": n_eval, "batch_size": 4, "rng": seed}
    chance, t = 1 / len(sizes), _hoeffding(n_eval)
    bv = metrics.beta_vae_score(ds, encode, **kw)
    assert abs(bv["eval_accuracy"] - chance) <= t
    fv = metrics.factor_vae_score(ds, encode, n_variance=100, **kw)
    assert abs(fv["eval_accuracy"] - chance) <= t
    assert fv["num_active_dims"] == d


def _table_encoder(ds: GridDataset, d: int, seed: int):
    """A deterministic encoder: dyadic codes (multiples of 1/8, std >= 1) looked up by image,
    part factor-driven, part a fixed random table, so the scores are neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    classes = ds.classes_of(np.arange(len(ds)))
    mix = rng.integers(-2, 3, size=(ds.n_factors, d))
    table = classes @ mix + rng.integers(-16, 17, size=(len(ds), d)) / 8 + np.arange(d)

    def encode(images):
        return table[ds.index_of(_classes(images))]

    return table, encode


@settings(max_examples=8)
@given(_sizes, st.integers(2, 4), st.integers(0, 1000), st.data())
def test_batch_score_invariances(sizes, d, seed, data):
    ds = _grid(tuple(sizes))
    table, encode = _table_encoder(ds, d, seed)
    assume((table.std(axis=0) >= 1).all())
    perm = np.array(data.draw(st.permutations(range(d))))
    exps = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=d, max_size=d)))
    signs = np.array(data.draw(st.lists(st.sampled_from([-1, 1]), min_size=d, max_size=d)))
    shifts = np.array(data.draw(st.lists(st.integers(-50, 50), min_size=d, max_size=d)))
    kw = {"n_train": 80, "n_eval": 60, "batch_size": 8, "rng": seed}

    def fv(enc):
        return metrics.factor_vae_score(ds, enc, n_variance=150, **kw)

    def bv(enc):
        return metrics.beta_vae_score(ds, enc, **kw)

    ref_f, ref_b = fv(encode), bv(encode)
    # FactorVAE: the vote is the argmin of the variance normalised by the global one. Permuting
    # the dimensions relabels the votes; a scale 2^e (exact in floating point), a sign and an
    # integer shift of dyadic codes leave every normalised variance bitwise equal. All stds stay
    # >= 1/8 >= 0.05: nothing is pruned.
    assert fv(lambda x: encode(x)[:, perm]) == ref_f
    assert fv(lambda x: encode(x) * (signs * 2.0**exps) + shifts) == ref_f
    # β-VAE: the features mean|z1 - z2| are unchanged (exactly, for dyadic codes) by signs and
    # shifts; a permutation permutes them, which the logistic regression's solution follows (up
    # to the solver's rounding: at most a point on the boundary, 1/60, may flip).
    assert bv(lambda x: -encode(x) * signs + shifts) == ref_b
    permuted = bv(lambda x: encode(x)[:, perm])
    for key in ref_b:
        assert permuted[key] == pytest.approx(ref_b[key], abs=1.01 / 60)
    # Not asserted: β-VAE is not invariant to a per-dimension scale (its classifier is an
    # L2-regularised logistic regression, C = 1), so a rescaled code can score differently.


@settings(max_examples=10)
@given(_sizes, st.integers(1, 4), st.integers(0, 1000), st.data())
def test_factor_vae_prunes_exactly_the_dimensions_whose_std_is_below_the_threshold(
    sizes, d, seed, data
):
    # The global std comes from the first n_variance codes the score draws with its generator
    # (reproduced here); a dimension is active iff std >= threshold (disentanglement_lib
    # _prune_dims). The threshold is drawn at, just above or just below one of the stds.
    ds = _grid(tuple(sizes))
    table, _ = _table_encoder(ds, d, seed)
    scale = np.array(data.draw(st.lists(_floats(1e-3, 0.2), min_size=d, max_size=d)))

    def encode(images):
        return table[ds.index_of(_classes(images))] * scale

    n_var = 120
    codes, _ = metrics.sample_codes(ds, encode, n_var, np.random.default_rng(seed))
    std = np.sqrt(codes.var(axis=0, ddof=1))
    j = data.draw(st.integers(0, d - 1))
    thr = float(std[j]) * data.draw(st.sampled_from([1.0, 1 + 1e-9, 1 - 1e-9]))
    active = int(np.sum(std >= thr))
    out = metrics.factor_vae_score(
        ds, encode, n_train=30, n_eval=20, batch_size=4, n_variance=n_var, prune_threshold=thr,
        rng=seed,
    )  # fmt: skip
    assert out["num_active_dims"] == active >= 0
    if active == 0:
        assert out["train_accuracy"] == 0.0 and out["eval_accuracy"] == 0.0
    else:
        assert 0 < out["train_accuracy"] <= 1  # a majority vote gets at least its own votes


@settings(max_examples=5)
@given(_sizes, st.integers(0, 2**31))
def test_batch_scores_are_deterministic_for_a_seed(sizes, seed):
    ds = _grid(tuple(sizes))
    _, encode = _table_encoder(ds, 3, 5)
    kw = {"n_train": 40, "n_eval": 30, "batch_size": 6}
    for score, extra in ((metrics.beta_vae_score, {}),
                         (metrics.factor_vae_score, {"n_variance": 60})):  # fmt: skip
        a = score(ds, encode, rng=seed, **kw, **extra)
        assert score(ds, encode, rng=np.random.default_rng(seed), **kw, **extra) == a
        assert score(ds, encode, rng=seed, **kw, **extra) == a
        cached = metrics.CachedEncoder(ds, encode, batch_size=7)
        assert score(ds, cached, rng=seed, **kw, **extra) == a  # codes are small dyadics
    assert metrics.beta_vae_score(ds, encode, rng=None, **kw) == metrics.beta_vae_score(
        ds, encode, rng=0, **kw
    )


# ============================================================================ sample_codes


@settings(max_examples=8)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.integers(200, 2000),
       st.integers(1, 700), st.integers(0, 2**31))  # fmt: skip
def test_sample_codes_draws_uniform_classes_and_encodes_their_images(sizes, n, batch, seed):
    ds = _grid(tuple(sizes))
    calls = []

    def encode(images):
        calls.append(len(images))
        return _classes(images).astype(np.float64)

    codes, classes = metrics.sample_codes(ds, encode, n, np.random.default_rng(seed), batch)
    assert codes.shape == (n, len(sizes)) and classes.shape == (n, len(sizes))
    # The images encoded are those of the drawn classes (index_of / classes_of are inverse).
    np.testing.assert_array_equal(codes, classes)
    np.testing.assert_array_equal(ds.classes_of(ds.index_of(classes)), classes)
    assert calls == [min(batch, n - s) for s in range(0, n, batch)]
    # Uniform classes: per factor, Pearson's statistic is chi-square with s - 1 degrees of
    # freedom; it stays below the 1 - 1e-6 quantile.
    for k, s in enumerate(sizes):
        counts = np.bincount(classes[:, k], minlength=s)
        assert len(counts) == s
        if s > 1:
            chi2 = float(np.sum((counts - n / s) ** 2 / (n / s)))
            assert chi2 <= stats.chi2.ppf(1 - 1e-6, s - 1)
    # The same generator state gives the same draw; a cached encoder the same codes.
    again, classes2 = metrics.sample_codes(
        ds, metrics.CachedEncoder(ds, encode, 50), n, np.random.default_rng(seed)
    )
    np.testing.assert_array_equal(classes2, classes)
    np.testing.assert_array_equal(again, codes)
    # A seed stands for its generator, as in every metric (it raised AttributeError).
    np.testing.assert_array_equal(metrics.sample_codes(ds, encode, n, seed, batch)[1], classes)


# ===================================================================================== SAP


@settings(max_examples=15)
@given(st.lists(st.integers(2, 4), min_size=1, max_size=3), st.integers(1, 3),
       st.integers(0, 2), st.data())  # fmt: skip
def test_sap_matrix_of_matched_constant_and_other_factor_codes_on_a_full_grid(
    sizes, repeats, n_const, data
):
    # Train = test = a full grid (each class combination `repeats` times). Any classifier of a
    # constant code, or of a code that is another factor (exactly independent of v_k on a full
    # grid), is right on exactly 1/n_k of the points. A code equal to a binary factor (any
    # nonzero scale) is classified perfectly: for a linear SVM with balanced class weights and
    # the regularised intercept, the optimum puts both classes on their side. So SAP_k is
    # S_matched - 1/n_k (D >= 2), and exactly 1/2 for a binary factor.
    k = len(sizes)
    f = np.tile(np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), 1),
                (repeats, 1))  # fmt: skip
    scale = np.array(data.draw(st.lists(
        st.sampled_from([-8.0, -1.0, -0.25, 0.25, 1.0, 8.0]), min_size=k, max_size=k)))  # fmt: skip
    codes = np.concatenate([f * scale, np.full((len(f), n_const), 1.5)], axis=1)
    s = sap_matrix(codes, f, codes, f)
    for j in range(codes.shape[1]):
        for c in range(k):
            if j != c:
                assert s[j, c] == pytest.approx(1 / sizes[c], abs=1e-12)
            elif sizes[c] == 2:
                assert s[j, c] == 1.0
    gap = top_two_gap(s)
    if codes.shape[1] >= 2:
        np.testing.assert_allclose(gap, s[np.arange(k), np.arange(k)] - 1 / np.array(sizes))
    binary = np.array(sizes) == 2
    if codes.shape[1] >= 2:
        np.testing.assert_allclose(gap[binary], 0.5, atol=1e-12)
    else:
        np.testing.assert_allclose(gap[binary], 1.0, atol=1e-12)  # one dimension: no second


@settings(max_examples=10)
@given(st.integers(60, 200), st.integers(1, 4), st.integers(1, 3), st.integers(0, 1000),
       st.data())  # fmt: skip
def test_sap_is_in_unit_range_sign_invariant_and_independent_of_global_random_state(
    n, d, k, seed, data
):
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 3, size=(n, k))
    codes = f[:, rng.integers(0, k, d)] + rng.uniform(0.2, 2) * rng.standard_normal((n, d))
    kw = {"n_train": None, "n_test": n // 3, "rng": seed}
    s = metrics.sap(codes, f, **kw)
    assert 0.0 <= s <= 1.0
    # A one-feature linear SVM's objective is symmetric under x -> -x (w -> -w): the same
    # predictions. Not asserted: scale or shift invariance (C and the regularised intercept).
    signs = np.array(data.draw(st.lists(st.sampled_from([-1, 1]), min_size=d, max_size=d)))
    assert metrics.sap(codes * signs, f, **kw) == s
    # Determinism: numpy's global state (liblinear's default seed source) changes nothing.
    np.random.seed(seed + 1)  # noqa: NPY002 (the legacy global state is what is tested)
    assert metrics.sap(codes, f, **kw) == s


# ===================================================================================== DCI


@settings(max_examples=3)
@given(st.integers(90, 140), st.integers(2, 3), st.integers(0, 1000))
def test_dci_vectorised_trees_agree_with_sklearn_on_codes_with_few_values(n, d, seed):
    # docs/metrics.md: `model="gbt"` runs scikit-learn's algorithm with thresholds among <= 256
    # candidates, exact when a code takes <= 256 values (here <= 7). Differences remain only
    # from float rounding of near-equal gains (tests/test_gbt.py: importances within 0.01);
    # accuracies may differ by a test point or two per factor.
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 3, size=(n, 2))
    codes = (f[:, rng.integers(0, 2, d)] + rng.integers(0, 5, size=(n, d))).astype(np.float64)
    kw = {"n_train": None, "n_test": 40, "rng": seed}
    ours = metrics.dci(codes, f, **kw)
    ref = metrics.dci(codes, f, model="sklearn", **kw)
    assert ours["disentanglement"] == pytest.approx(ref["disentanglement"], abs=0.02)
    assert ours["completeness"] == pytest.approx(ref["completeness"], abs=0.02)
    assert ours["informativeness"] == pytest.approx(ref["informativeness"], abs=2.01 / 40)


@settings(max_examples=5)
@given(st.lists(st.integers(2, 4), min_size=1, max_size=3), st.integers(0, 2), st.data())
def test_dci_of_the_factors_themselves_is_informative_and_disentangled(sizes, n_const, data):
    # Codes = factor classes (permuted, plus constant dims) on a 4-times repeated full grid:
    # every test class is seen in training and one threshold separates any two classes, so the
    # boosted trees predict every factor perfectly: informativeness exactly 1. Importance sits
    # (almost) only on each factor's own code: D and C near 1.
    k = len(sizes)
    f = np.tile(np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), 1), (4, 1))
    perm = data.draw(st.permutations(range(k + n_const)))
    codes = np.concatenate([f, np.full((len(f), n_const), 7.0)], axis=1)[:, perm]
    n_test = len(f) // 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = metrics.dci(codes.astype(float), f, n_train=None, n_test=n_test, rng=3)
    assert out["informativeness"] == 1.0 and out["completeness"] > 0.95
    if k == 1:  # D compares factors: undefined with one (it would be 1 for any code)
        assert math.isnan(out["disentanglement"]) and len(caught) == 1
        assert "undefined with one varied factor" in str(caught[0].message)
    else:
        assert out["disentanglement"] > 0.95 and not caught


def test_dci_disentanglement_and_modularity_of_one_factor_are_nan_with_a_warning_for_any_code():
    """With one factor (MNIST's label) D's entropy has base K = 1 and modularity divides by
    K - 1 = 0: noise codes scored D = 1.0 and modularity 1.0."""
    rng = np.random.default_rng(0)
    codes, f = rng.normal(size=(400, 5)), rng.integers(0, 10, (400, 1))
    with pytest.warns(RuntimeWarning, match="dci disentanglement is undefined"):
        out = metrics.dci(codes, f, n_train=300, n_test=100)
    assert math.isnan(out["disentanglement"]) and 0 <= out["completeness"] <= 1
    with pytest.warns(RuntimeWarning, match="modularity is undefined"):
        out = metrics.modularity(codes, f, n_train=300, n_test=100)
    assert math.isnan(out["modularity"]) and 0 <= out["explicitness"] <= 1
    # one varied factor beside a constant one is one factor too
    f2 = np.concatenate([f, np.zeros_like(f)], axis=1)
    with pytest.warns(RuntimeWarning):
        assert math.isnan(metrics.modularity(codes, f2, n_train=300, n_test=100)["modularity"])


@settings(max_examples=15)
@given(st.integers(3, 8), st.integers(40, 200), _floats(0.2, 5), _floats(-5, 5),
       st.integers(0, 2), _floats(0.001, 0.05), st.integers(0, 1000))  # fmt: skip
def test_dci_lasso_of_an_exact_linear_code_has_the_closed_form_informativeness(
    classes, n, a, c, n_const, alpha, seed
):
    # One factor v, code z = a v + c (plus constant dims, which standardise to 0). With
    # t = v / max(v) and x the code standardised on the training points, t = s x + m exactly
    # (s = std of t on the training points); the Lasso (1/2n)|t - b - w x|^2 + alpha |w| gives
    # b = m, w = s - alpha, so the test residual is alpha x_test and
    # I = max(0, 1 - alpha * rms(x_test) / std(t_test)); C = 1 (one code); D, which compares
    # factors, is undefined with one: NaN.
    rng = np.random.default_rng(seed)
    v = rng.integers(0, classes, size=(n, 1))
    tr, te = metric_split(n, None, n // 3, np.random.default_rng(seed))
    assume(len(np.unique(v[tr])) > 1 and np.std(v[te]) > 0)
    codes = np.concatenate([a * v + c, np.full((n, n_const), 0.3)], axis=1)
    out = metrics.dci(codes, v, n_train=None, n_test=n // 3, model="lasso",
                      lasso_alpha=alpha, rng=seed)  # fmt: skip
    scale = max(v[tr].max(), 1)
    t_tr = v[tr, 0] / scale
    assume(t_tr.std() > alpha * 1.5)
    x_te = (codes[te, 0] - codes[tr, 0].mean()) / codes[tr, 0].std()
    expected = max(0.0, 1 - alpha * np.sqrt(np.mean(x_te**2)) / np.std(v[te, 0] / scale))
    assert out["informativeness"] == pytest.approx(expected, abs=2e-3)
    assert math.isnan(out["disentanglement"]) and out["completeness"] == 1.0


# ========================================================== Chen's MI, AAM (deterministic)


@settings(max_examples=6)
@given(st.lists(st.integers(2, 3), min_size=1, max_size=2), st.integers(150, 300),
       st.integers(0, 1000))  # fmt: skip
def test_chen_mi_of_nearly_deterministic_codes_is_the_plug_in_mi_of_the_code(sizes, n, seed):
    # Posteriors N(mu, 0.01^2) whose means take a few values >= 1 apart: q(z_j) is a mixture of
    # separated narrow Gaussians, so -log q(z) = -log p(code value) + 0.5 log(2 pi s^2) +
    # eps^2 / 2. The first terms give the plug-in entropies exactly (every point is sampled);
    # the eps^2 / 2 terms of H(z_j) and of H(z_j | v_k) use independent draws: their difference
    # has standard deviation 0.5 * sqrt(2/N + 2/N) = 1/sqrt(N). Bound: 5.5/sqrt(N) per entry.
    rng = np.random.default_rng(seed)
    f = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    mixed = (f.sum(axis=1) % 2)[:, None]
    codes = np.concatenate([f * 1.5, mixed * 2.0, f[:, :1] // 2 * 3.0, np.full((n, 1), 0.5)], 1)
    lv = np.full(codes.shape, 2 * math.log(0.01))
    mi = metrics.chen_mutual_info(codes, lv, f, n_samples=None, rng=seed)
    ref = mutual_info_matrix(relabel(codes), f)
    np.testing.assert_allclose(mi, ref, atol=5.5 / math.sqrt(n))
    # MIG's per-factor gap moves by at most twice the largest MI error.
    h = metrics.entropy(f)
    tol = 2 * 5.5 / math.sqrt(n) / h.min()
    assert metrics.mig_from_mi(mi, f) == pytest.approx(metrics.mig_from_mi(ref, f), abs=tol)


@settings(max_examples=60)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 4)),
        elements=st.one_of(st.just(0.0), _floats(1e-3, 3)),
    ),  # fmt: skip
)
def test_aam_is_the_axis_alignment_formula_and_bounded_by_the_gap_over_the_top(mi):
    d, k = mi.shape
    s = np.sort(mi, axis=0)[::-1]
    top, rest = s[0], s[1:].sum(axis=0)
    per = np.array([max(0.0, t - r) / t if t > 0 else 0.0 for t, r in zip(top, rest, strict=True)])
    got = metrics.aam_from_mi(mi)
    assert got == pytest.approx(per.mean(), abs=1e-12)
    assert 0 <= got <= 1
    # AAM_k <= (I1 - I2) / I1 (the rest includes I2), equality with two codes; one code: 1.
    second = s[1] if d > 1 else np.zeros(k)
    gap_over_top = np.where(top > 0, (top - second) / np.where(top > 0, top, 1), 0)
    assert np.all(per <= gap_over_top + 1e-12)
    if d == 2:
        np.testing.assert_allclose(per, gap_over_top, atol=1e-12)
    if d == 1:
        assert got == pytest.approx(np.mean(top > 0))
    # With MI <= H(v_k) (true for the MI of a discrete factor) and two codes, AAM >= MIG:
    # (I1 - I2) / I1 >= (I1 - I2) / H. Factors with H(v_k) = log 4 (4 equal classes).
    f = np.tile(np.arange(4), (k, 1)).T.repeat(2, axis=0)
    capped = np.minimum(mi, math.log(4))
    if d == 2:
        assert metrics.aam_from_mi(capped, f) >= metrics.mig_from_mi(capped, f) - 1e-12


# ================================================================ unsupervised measures


@settings(max_examples=25)
@given(st.lists(st.integers(-6, 3), min_size=1, max_size=6), st.integers(1, 40), st.data())
def test_active_units_count_dimensions_whose_mean_varies_more_than_the_threshold(exps, half, data):
    # Column j is +-2^e_j, balanced over 2 * half points: its variance is exactly 4^e_j.
    a = 2.0 ** np.array(exps)
    mu = np.concatenate([np.tile(a, (half, 1)), np.tile(-a, (half, 1))])
    thr = float(data.draw(st.sampled_from(list(a**2)))) * data.draw(
        st.sampled_from([0.5, 1.0, 2.0])
    )
    assert metrics.active_units(mu, thr) == int(np.sum(a**2 > thr))  # strictly greater
    out = metrics.unsupervised_scores(mu, np.zeros_like(mu), active_threshold=thr,
                                      n_samples=20)  # fmt: skip
    assert out["active_units"] == float(np.sum(a**2 > thr))
    # KL of N(mu, 1) to N(0, 1) is mu^2 / 2 per dimension.
    np.testing.assert_allclose(out["kl_per_dim"], a**2 / 2, rtol=1e-12)
    assert out["kl"] == pytest.approx(float(np.sum(a**2 / 2)))


@settings(max_examples=15)
@given(st.integers(100, 400), st.integers(2, 5), st.integers(0, 10**6))
def test_gaussian_tc_of_independent_codes_is_within_its_sampling_error(n, d, seed):
    # Gaussian TC = -0.5 log det R (R the sample correlation). For independent Gaussian codes,
    # Bartlett's statistic -(n - 1 - (2d + 5)/6) log det R is chi-square with d(d - 1)/2
    # degrees of freedom (the likelihood-ratio test of independence): below its 1 - 1e-6
    # quantile. Scaling and shifting the codes changes nothing.
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-5, 5, d)
    tc = metrics.gaussian_total_correlation(mu)
    q = d * (d - 1) // 2
    assert tc >= -1e-12
    assert 2 * (n - 1 - (2 * d + 5) / 6) * tc <= stats.chi2.ppf(1 - 1e-6, q)
    assert metrics.gaussian_total_correlation(mu * 3 - 1) == pytest.approx(tc, abs=1e-9)


@settings(max_examples=10)
@given(st.integers(50, 200), _floats(-3, 3).filter(lambda s: abs(s) > 0.1), st.integers(0, 999))
def test_tc_of_a_duplicated_dimension_is_large(n, factor, seed):
    # A code dimension copied (times a factor): the Gaussian fit is singular, TC = +inf in exact
    # arithmetic; in floating point it is inf or at least ~15. Chen's estimator with posteriors
    # N(mu, 0.01^2) around N distinct means >= 1 apart: H(z_1) = H(z_2) = log N + h and
    # H(z_1, z_2) = log N + h_1 + h_2 (the eps^2 terms cancel: the same draws), so TC = log N.
    rng = np.random.default_rng(seed)
    x = rng.permutation(n).astype(np.float64)
    mu = np.stack([x, factor * x], axis=1)
    assert metrics.gaussian_total_correlation(mu) > 10
    lv = np.stack([np.full(n, 2 * math.log(0.01)), np.full(n, 2 * math.log(0.01 * abs(factor)))], 1)
    assume(abs(factor) >= 1)  # the copy's means stay >= 1 apart
    tc = metrics.total_correlation(mu, lv, n_samples=None, rng=seed)
    assert tc == pytest.approx(math.log(n), abs=1e-3)
    out = metrics.unsupervised_scores(mu, lv, np.arange(n, dtype=float), n_samples=None, rng=seed)
    assert out["total_correlation"] == tc
    assert out["reconstruction_error"] == pytest.approx((n - 1) / 2)


# ===================================================================== evaluation plumbing

_NAMES = sorted(MIN_POINTS)
_BATCH = {"beta_vae", "factor_vae"}
_FACTORLESS = {"unsupervised"}


@settings(max_examples=60)
@given(st.lists(st.sampled_from([*_NAMES, "all"]), max_size=6),
       st.sampled_from(["grid", "labels", "none", True, False]), st.booleans())  # fmt: skip
def test_resolve_metric_names_expands_all_checks_what_the_data_offers_and_keeps_order(
    names, kind, as_string
):
    k = {True: "grid", False: "none"}.get(kind, kind) if isinstance(kind, bool) else kind
    usable = {n for n in _NAMES if (k == "grid") or (k == "labels" and n not in _BATCH)
              or (k == "none" and n in _FACTORLESS)}  # fmt: skip
    given_names = " , ".join(names) + "," if as_string else names
    if not names:
        with pytest.raises(UserError, match="no metric given"):
            resolve_metric_names(given_names, kind)
        return
    if "all" in names:
        assert resolve_metric_names(given_names, kind) == sorted(usable)
        return
    bad = [n for n in names if n not in usable]
    if bad:
        first = bad[0]
        why = "needs ground-truth factors" if k == "none" else "full factor grid"
        with pytest.raises(UserError, match=f"{first!r}.*{why}|{why}"):
            resolve_metric_names(given_names, kind)
        return
    assert resolve_metric_names(given_names, kind) == list(dict.fromkeys(names))


def test_resolve_metric_names_lists_the_valid_names_for_an_unknown_one():
    with pytest.raises(UserError, match="unknown metric 'mig2'.*aam.*unsupervised"):
        resolve_metric_names("mig,mig2", "grid")


@settings(max_examples=60)
@given(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=4, unique=True),
       st.integers(0, 200), st.integers(0, 100))  # fmt: skip
def test_check_sample_sizes_refuses_exactly_below_the_minimum_and_names_the_first(
    names, n_samples, n_test
):
    short = [n for n in names if n_samples < MIN_POINTS[n][0] or n_test < MIN_POINTS[n][1]]
    if not short:
        check_sample_sizes(names, n_samples, n_test)
        return
    first = short[0]
    need_train, need_test = MIN_POINTS[first]
    flag, need = ("--n-samples", need_train) if n_samples < need_train else ("--n-test", need_test)
    with pytest.raises(UserError, match=f"metric {first!r} needs at least {need} .*{flag}"):
        check_sample_sizes(names, n_samples, n_test)


@settings(max_examples=60)
@given(st.dictionaries(
    st.text("abc_", min_size=1, max_size=4),
    st.one_of(_floats(-1e6, 1e6), st.integers(-100, 100),
              st.lists(_floats(0, 1), max_size=3),
              st.dictionaries(st.text("xyz", min_size=1, max_size=3),
                              st.one_of(_floats(-10, 10), st.lists(_floats(0, 1), max_size=2)),
                              max_size=3)),
    max_size=4))  # fmt: skip
def test_flatten_and_format_metrics(values):
    flat = flatten_metrics(values)
    expected = {}
    for k, v in values.items():
        if isinstance(v, dict):
            expected.update({f"{k}/{kk}": float(vv) for kk, vv in v.items()
                             if not isinstance(vv, list)})  # fmt: skip
        elif not isinstance(v, list):
            expected[k] = float(v)
    assert flat == expected and all(type(v) is float for v in flat.values())
    assert list(flat) == list(expected)  # the order of the dict
    assert format_metrics(values) == ", ".join(f"{k} {v:.4f}" for k, v in expected.items())


# ============================================================================ input checks


def _bad_arrays(codes: np.ndarray, factors: np.ndarray):
    """(codes, factors, message regex) of malformed inputs built from valid ones."""
    n, d = codes.shape
    nan = codes.copy()
    nan[n // 2, d - 1] = np.nan
    inf = codes.copy()
    inf[0, 0] = -np.inf
    return [
        (nan, factors, "NaN or infinite"),
        (inf, factors, "NaN or infinite"),
        (codes[:, 0], factors, r"must be \(N, D\)"),
        (codes[:, :, None], factors, r"must be \(N, D\)"),
        (codes[:, :0], factors, "D >= 1"),
        (codes[:0], factors[:0], "at least 2 points"),
        (codes[:1], factors[:1], "at least 2 points"),
        (codes[:-1], factors, "codes but .* factor rows"),
        (codes.astype(complex), factors, "real numeric"),
        (codes.astype(str), factors, "real numeric"),
        (codes, factors + 0.5, "integer class indices"),
        (codes, np.where(factors > 0, np.nan, factors), "integer class indices"),
        (codes, factors[:, 0], r"must be \(N, D\) and factors \(N, K\)"),
        (codes, factors[:, :0], "at least one column"),
        (codes, factors.astype(object), "real numeric"),
        (None, factors, r"must be \(N, D\)"),
    ]


_ARRAY_METRICS = {
    "mig": lambda c, f: metrics.mig(c, f),
    "sap": lambda c, f: metrics.sap(c, f, n_train=None, n_test=5),
    "dci": lambda c, f: metrics.dci(c, f, n_train=None, n_test=5),
    "dci_lasso": lambda c, f: metrics.dci(c, f, n_train=None, n_test=5, model="lasso"),
    "modularity": lambda c, f: metrics.modularity(c, f, n_train=None, n_test=5),
    "mig_chen": lambda c, f: metrics.mig_chen(c, np.zeros(np.shape(c)), f, n_samples=10),
    "aam": lambda c, f: metrics.aam(c, np.zeros(np.shape(c)), f, n_samples=10),
}


@settings(max_examples=6)
@given(st.integers(12, 30), st.integers(1, 3), st.integers(1, 3), st.integers(0, 1000))
def test_every_array_metric_refuses_malformed_input_with_a_value_error_naming_it(n, d, k, seed):
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 3, size=(n, k))
    codes = f[:, rng.integers(0, k, d)] + 0.3 * rng.standard_normal((n, d))
    for name, fn in _ARRAY_METRICS.items():
        for bad_codes, bad_f, message in _bad_arrays(codes, f):
            with pytest.raises(ValueError, match=message):
                fn(bad_codes, bad_f)
        # A single-valued factor is left out (docs/metrics.md); with none left the score is 0.
        one = np.zeros((n, 1), dtype=np.int64)
        got = fn(codes, one)
        assert all(v == 0.0 for v in (got.values() if isinstance(got, dict) else [got])), name
    # The factor-free measures: the same checks on the posteriors.
    lv = np.zeros_like(codes)
    nan, inf = codes.copy(), codes.copy()
    nan[-1, -1], inf[0, 0] = np.nan, np.inf
    for mu, logvar, message in [
        (nan, lv, "mu holds NaN or infinite"),
        (codes, inf, "logvar holds NaN or infinite"),
        (codes[:, :, None], lv[:, :, None], r"mu must be \(N, D\)"),
        (codes[:, :0], lv[:, :0], "D >= 1"),
        (codes[:0], lv[:0], "at least 2 points"),
        (codes[:1], lv[:1], "at least 2 points"),
        (codes.astype(complex), lv, "real numeric"),
        (codes, lv[:-1], "mu and logvar must have the same shape"),
        (codes, lv[:, :1].T, "mu and logvar must have the same shape"),
    ]:
        with pytest.raises(ValueError, match=message):
            metrics.unsupervised_scores(mu, logvar)


def _bad_encoders():
    """(name, encode, message regex): encoders returning what no code can be."""

    def classes(x):
        return _classes(x).astype(np.float64)

    def nan_at(x):
        c = classes(x)
        c[-1, 0] = np.nan
        return c

    return [
        ("fewer rows", lambda x: classes(x)[:-1], r"shape \(\d+, D\).*got shape"),
        ("more rows", lambda x: np.concatenate([classes(x), classes(x)[:1]]), "one row per"),
        ("3-d", lambda x: classes(x)[:, :, None], r"got shape \(\d+, \d+, 1\)"),
        ("scalar", lambda x: np.float64(1.0), r"got shape \(\)"),
        ("no dims", lambda x: classes(x)[:, :0], "D >= 1"),
        ("None", lambda x: None, "real numeric codes, got dtype object"),
        ("complex", lambda x: classes(x).astype(complex), "real numeric codes"),
        ("strings", lambda x: classes(x).astype(str), "real numeric codes"),
        ("nan", nan_at, "NaN or infinite codes"),
        ("inf tensor", lambda x: torch.full((len(x), 2), float("inf")), "NaN or infinite"),
    ]


@settings(max_examples=3)
@given(st.lists(st.integers(2, 4), min_size=1, max_size=3), st.booleans(), st.integers(0, 99))
def test_batch_scores_refuse_a_malformed_encoder_or_grid_with_a_value_error_naming_it(
    sizes, cached, seed
):
    ds = _grid(tuple(sizes))
    kw = {"n_train": 10, "n_eval": 6, "batch_size": 3, "rng": seed}
    for _, enc, message in _bad_encoders():
        e = metrics.CachedEncoder(ds, enc, batch_size=5) if cached else enc
        calls = (
            lambda e=e: metrics.beta_vae_score(ds, e, **kw),
            lambda e=e: metrics.factor_vae_score(ds, e, n_variance=8, **kw),
            lambda e=e: metrics.sample_codes(ds, e, 7, np.random.default_rng(seed)),
        )
        for call in calls:
            with pytest.raises(ValueError, match=message):
                call()
    # A grid whose every factor takes one value (one image): nothing to score.
    one = _grid((1,) * len(sizes))
    for score in (metrics.beta_vae_score, metrics.factor_vae_score):
        with pytest.raises(ValueError, match="every factor of the dataset takes a single value"):
            score(one, lambda x: _classes(x).astype(float), **kw)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.floats(-8, 8).filter(lambda a: abs(a) > 1e-3), st.integers(20, 300))
def test_gaussian_tc_of_a_linear_dependence_is_one_finite_value(scale, n):
    """[x, a x] has an infinite TC; rounding made it inf or ~18 nats by the sign of a tiny
    determinant (inf then broke metrics.json for strict readers). Now every such pair gives
    0.5 log 1e12 - 0.5 log 2 (eigenvalues 2 and the floor 1e-12 of the correlation matrix)."""
    from disvae.metrics.unsupervised import MIN_EIGENVALUE, gaussian_total_correlation

    x = np.random.default_rng(n).normal(size=(n, 1))
    tc = gaussian_total_correlation(np.hstack([x, scale * x]))
    assert tc == pytest.approx(-0.5 * math.log(MIN_EIGENVALUE) - 0.5 * math.log(2), abs=1e-6)


def test_active_units_needs_two_points():
    for n in (0, 1):
        with pytest.raises(ValueError, match="at least 2 points"):
            metrics.active_units(np.zeros((n, 3)))
