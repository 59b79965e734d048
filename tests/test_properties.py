"""Property-based tests (Hypothesis): losses, metrics, data and config against closed forms,
scipy, invariances the definitions imply, and round trips.

Every property draws its examples from a fixed seed (``derandomize=True``), so a run in CI sees
the same examples as a run here. The metrics are slow per example: their properties draw few,
small examples.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special, stats

from disvae import config as C
from disvae import metrics
from disvae.data.base import ArrayDataset, DatasetInfo
from disvae.data.batching import BatchStream, split_indices
from disvae.data.ground_truth import GridDataset
from disvae.losses import kl_normal, linear, log_normal, reconstruction_nll, tc_decomposition
from disvae.losses.terms import log_standard_normal
from disvae.metrics._utils import discretize, entropy, mutual_info_matrix, top_two_gap
from disvae.metrics._utils import train_test_split as metric_split
from disvae.metrics.dci import dci_importance, disentanglement_completeness
from disvae.metrics.modularity import modularity_score


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# ===================================================================================== losses


@settings(max_examples=60)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 5)), elements=_floats(-30, 30)
    ),
    st.data(),
)
def test_gaussian_kl_is_cross_entropy_minus_entropy_and_nonnegative(mu, data):
    logvar = data.draw(hnp.arrays(np.float64, mu.shape, elements=_floats(-20, 20)))
    got = kl_normal(_t(mu), _t(logvar)).numpy()
    # KL(q || p) = H(q, p) - H(q); H(q, p) = E_q[-log N(z; 0, 1)] = (log 2 pi + mu^2 + s^2) / 2,
    # and scipy's differential entropy of N(mu, s^2).
    s2 = np.exp(logvar)
    cross = 0.5 * (math.log(2 * math.pi) + mu**2 + s2)
    ent = stats.norm(mu, np.sqrt(s2)).entropy()
    np.testing.assert_allclose(got, cross - ent, rtol=1e-9, atol=1e-9)
    assert (got >= 0).all()
    # zero exactly at the prior's parameters, clearly positive away from them
    far = (np.abs(mu) > 1e-3) | (np.abs(logvar) > 1e-3)
    assert (got[far] > 0).all()
    assert kl_normal(_t(np.zeros_like(mu)), _t(np.zeros_like(mu))).abs().max().item() == 0.0
    assert (metrics.kl_per_dim(mu, logvar) >= 0).all()


@settings(max_examples=60)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 5)),
        elements=st.floats(-(2**-7), 2**-7, width=32),
    ),  # fmt: skip
    st.data(),
)
def test_gaussian_kl_of_a_nearly_collapsed_dimension_is_accurate_in_float32(logvar, data):
    # Near the prior (logvar ~ 0) exp(logvar) - 1 - logvar cancels: in float32 it came out
    # negative, or 100 times too large. The float64 value of the same float32 inputs is the
    # reference (relative error ~1e-16 there).
    mu = data.draw(
        hnp.arrays(np.float32, logvar.shape, elements=st.floats(-(2**-10), 2**-10, width=32))
    )
    got = kl_normal(torch.from_numpy(mu), torch.from_numpy(logvar)).numpy()
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    ref = 0.5 * (mu64**2 + np.expm1(lv64) - lv64)
    assert (got >= 0).all()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-12)
    # The metrics' float64 version: no cancellation either (relative error ~1e-16, not 1e-4).
    np.testing.assert_allclose(metrics.kl_per_dim(mu64, lv64), ref.mean(0), rtol=1e-9, atol=0)


@settings(max_examples=60)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=_floats(-40, 40)
    ),
    st.data(),
)
def test_log_normal_matches_scipy(z, data):
    mu = data.draw(hnp.arrays(np.float64, z.shape, elements=_floats(-40, 40)))
    logvar = data.draw(hnp.arrays(np.float64, z.shape, elements=_floats(-30, 30)))
    expected = stats.norm.logpdf(z, mu, np.exp(0.5 * logvar))
    np.testing.assert_allclose(log_normal(_t(z), _t(mu), _t(logvar)).numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(log_standard_normal(_t(z)).numpy(), stats.norm.logpdf(z), rtol=1e-12)


_IMAGE_SHAPES = st.tuples(
    st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)
)


@settings(max_examples=60)
@given(
    hnp.arrays(np.float64, _IMAGE_SHAPES, elements=_floats(-30, 30)),
    st.data(),
    st.sampled_from(["bernoulli", "gaussian", "laplace"]),
    _floats(0.01, 5.0),
)
def test_reconstruction_nll_is_the_per_pixel_nll_of_scipy_summed(logits, data, dist, scale):
    x = data.draw(hnp.arrays(np.float64, logits.shape, elements=_floats(0, 1)))
    got = reconstruction_nll(_t(logits), _t(x), dist, scale).numpy()
    mean = special.expit(logits)
    if dist == "bernoulli":  # cross-entropy with the log-sigmoids computed stably
        per_pixel = -(x * special.log_expit(logits) + (1 - x) * special.log_expit(-logits))
    elif dist == "gaussian":
        per_pixel = -stats.norm.logpdf(x, mean, scale)
    else:
        per_pixel = -stats.laplace.logpdf(x, mean, scale)
    assert got.shape == (len(logits),)
    np.testing.assert_allclose(got, per_pixel.reshape(len(x), -1).sum(1), rtol=1e-9, atol=1e-9)


def _posterior(data, b: int, d: int, mu_range=3.0, lv_lo=-3.0, lv_hi=2.0, dtype=np.float64):
    mu = data.draw(hnp.arrays(np.float64, (b, d), elements=_floats(-mu_range, mu_range)))
    logvar = data.draw(hnp.arrays(np.float64, (b, d), elements=_floats(lv_lo, lv_hi)))
    eps = data.draw(hnp.arrays(np.float64, (b, d), elements=_floats(-3, 3)))
    z = mu + np.exp(0.5 * logvar) * eps
    return z.astype(dtype), mu.astype(dtype), logvar.astype(dtype)


@settings(max_examples=60)
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 10**6),
    st.sampled_from(["mws", "mss"]),
    st.data(),
)
def test_tc_terms_telescope_to_the_log_ratio_and_follow_the_batch_order(b, d, n, sampling, data):
    z, mu, logvar = _posterior(data, b, d)
    parts = tc_decomposition(_t(z), _t(mu), _t(logvar), n, sampling)
    # mi + tc + dw_kl = log q(z|x) - log p(z), whatever the mixture weights (Chen et al. Eq. 2)
    sd = np.exp(0.5 * logvar)
    expected = (stats.norm.logpdf(z, mu, sd) - stats.norm.logpdf(z)).sum(1)
    total = (parts["mi"] + parts["tc"] + parts["dw_kl"]).numpy()
    np.testing.assert_allclose(total, expected, rtol=1e-9, atol=1e-9)
    # Permuting the batch permutes the per-sample terms (the weights treat members alike).
    perm = data.draw(st.permutations(range(b)))
    again = tc_decomposition(_t(z[perm]), _t(mu[perm]), _t(logvar[perm]), n, sampling)
    for key in ("mi", "tc", "dw_kl"):
        np.testing.assert_allclose(
            again[key].numpy(), parts[key].numpy()[perm], rtol=1e-9, atol=1e-9
        )


def _exact_mixture_terms(z, mu, logvar):
    """mi, tc, dw_kl with the exact aggregate posterior of the B points (N = B)."""
    sd = np.exp(0.5 * logvar)
    dens = stats.norm.logpdf(z[:, None, :], mu[None], sd[None])  # (B, B, D): log q(z_id | x_j)
    b = len(z)
    log_qz = special.logsumexp(dens.sum(2), axis=1) - math.log(b)
    log_prod = (special.logsumexp(dens, axis=1) - math.log(b)).sum(1)
    log_qzx = stats.norm.logpdf(z, mu, sd).sum(1)
    log_pz = stats.norm.logpdf(z).sum(1)
    return {"mi": log_qzx - log_qz, "tc": log_qz - log_prod, "dw_kl": log_prod - log_pz}


@settings(max_examples=40)
@given(st.integers(2, 6), st.integers(1, 4), st.data())
def test_when_the_batch_is_the_dataset_mss_is_exact_and_mws_is_offset_by_log_n(b, d, data):
    z, mu, logvar = _posterior(data, b, d)
    exact = _exact_mixture_terms(z, mu, logvar)
    mss = tc_decomposition(_t(z), _t(mu), _t(logvar), b, "mss")
    mws = tc_decomposition(_t(z), _t(mu), _t(logvar), b, "mws")
    # mws weights 1/N^2: q(z) low by N, each q(z_d) low by N (docstring of tc_decomposition)
    offset = {"mi": math.log(b), "tc": (d - 1) * math.log(b), "dw_kl": -d * math.log(b)}
    for key in ("mi", "tc", "dw_kl"):
        np.testing.assert_allclose(mss[key].numpy(), exact[key], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mws[key].numpy(), exact[key] + offset[key], rtol=1e-9, atol=1e-9)


@settings(max_examples=60)
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 10**6),
    st.sampled_from(["mws", "mss"]),
    st.data(),
)
def test_tc_terms_and_their_gradients_stay_finite_for_extreme_float32_posteriors(
    b, d, n, sampling, data
):
    # Far-apart means and nearly collapsed or very wide posteriors: pairwise densities underflow
    # (log density -inf between members), which must not become NaN in the terms or gradients.
    z, mu, logvar = _posterior(data, b, d, mu_range=50.0, lv_lo=-80.0, lv_hi=30.0, dtype=np.float32)
    mu_t = torch.tensor(mu, requires_grad=True)
    lv_t = torch.tensor(logvar, requires_grad=True)
    z_t = torch.tensor(z)
    parts = tc_decomposition(z_t, mu_t, lv_t, n, sampling)
    for value in parts.values():
        assert torch.isfinite(value).all()
    total = parts["mi"] + parts["tc"] + parts["dw_kl"]
    expected = (log_normal(z_t, mu_t, lv_t) - log_standard_normal(z_t)).sum(1)
    torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-2)
    grads = torch.autograd.grad((total + parts["tc"]).sum(), [mu_t, lv_t])
    assert all(torch.isfinite(g).all() for g in grads)


@settings(max_examples=100)
@given(_floats(-100, 100), _floats(-100, 100), st.integers(-5, 500), st.integers(-20, 700))
def test_linear_schedule_stays_between_its_ends_is_monotone_and_tensor_steps_agree(
    start, end, n_steps, step
):
    v = linear(start, end, step, n_steps)
    nxt = linear(start, end, step + 1, n_steps)
    lo, hi = min(start, end), max(start, end)
    assert lo - 1e-9 <= v <= hi + 1e-9
    assert (nxt - v) * (end - start) >= -1e-9  # moves towards end, never back
    if n_steps <= 0 or step >= n_steps:
        assert v == pytest.approx(end, abs=1e-9)
    elif step <= 0:
        assert v == pytest.approx(start, abs=1e-9)
    else:  # the line through (0, start) and (n_steps, end)
        assert v == pytest.approx(start + (end - start) * step / n_steps, rel=1e-9, abs=1e-9)
    for dtype in (torch.float32, torch.float64, torch.int64):
        on_device = linear(start, end, torch.tensor(step, dtype=dtype), n_steps)
        assert float(on_device) == pytest.approx(v, rel=1e-6, abs=1e-4)


# ============================================================================ metric helpers


_labels = hnp.arrays(
    np.int64, st.tuples(st.integers(2, 40), st.integers(1, 3)), elements=st.integers(0, 4)
)


@settings(max_examples=60)
@given(_labels, st.integers(-(10**12), 10**12), st.integers(1, 10**6))
def test_entropy_matches_scipy_and_depends_only_on_which_rows_share_a_value(labels, shift, scale):
    h = entropy(labels)
    for k in range(labels.shape[1]):
        counts = np.unique(labels[:, k], return_counts=True)[1]
        assert h[k] == pytest.approx(stats.entropy(counts), rel=1e-12, abs=1e-12)
    # Any injective relabelling the metrics accept as factor classes: shifted and scaled
    # integers (far beyond any bin count), integral floats, bools (for two-valued columns).
    np.testing.assert_allclose(entropy(labels * scale + shift), h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(entropy(labels.astype(np.float64) * 2.0), h, rtol=1e-12, atol=1e-12)
    binary = labels >= 2
    np.testing.assert_allclose(entropy(binary), entropy(binary.astype(np.int64)), atol=1e-12)


@settings(max_examples=50)
@given(_labels, st.data())
def test_mutual_info_is_symmetric_bounded_and_i_x_x_is_h_x(a, data):
    b = data.draw(
        hnp.arrays(np.int64, (len(a), data.draw(st.integers(1, 3))), elements=st.integers(0, 5))
    )
    ab, ba = mutual_info_matrix(a, b), mutual_info_matrix(b, a)
    np.testing.assert_allclose(ab, ba.T, rtol=1e-9, atol=1e-12)
    ha, hb = entropy(a), entropy(b)
    assert (ab >= 0).all()
    assert (ab <= np.minimum(ha[:, None], hb[None, :]) + 1e-9).all()
    np.testing.assert_allclose(np.diag(mutual_info_matrix(a, a)), ha, rtol=1e-9, atol=1e-12)
    from sklearn.metrics import mutual_info_score

    for j in range(a.shape[1]):
        for k in range(b.shape[1]):
            assert ab[j, k] == pytest.approx(mutual_info_score(a[:, j], b[:, k]), abs=1e-9)


@settings(max_examples=60)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(1, 5)), elements=_floats(-5, 5))
)
def test_top_two_gap_is_the_largest_minus_the_second(m):
    gap = top_two_gap(m)
    for k in range(m.shape[1]):
        col = sorted(m[:, k], reverse=True)
        assert gap[k] == col[0] - col[1]


_dyadic_codes = hnp.arrays(
    np.float64,
    st.tuples(st.integers(2, 60), st.integers(1, 4)),
    elements=st.integers(-512, 512).map(lambda i: i / 64),
)


@settings(max_examples=60)
@given(_dyadic_codes, st.integers(1, 25), st.integers(-3, 3), st.integers(-100, 100))
def test_discretize_is_monotone_spans_its_bins_and_ignores_exact_positive_affine_maps(
    codes, n_bins, exponent, shift
):
    bins = discretize(codes, n_bins)
    assert bins.min() >= 0 and bins.max() <= n_bins - 1
    for j in range(codes.shape[1]):
        order = np.argsort(codes[:, j], kind="stable")
        assert (np.diff(bins[order, j]) >= 0).all()  # monotone in the code
        lo, hi = codes[:, j].min(), codes[:, j].max()
        assert (bins[codes[:, j] == lo, j] == 0).all()
        if hi > lo:
            assert (bins[codes[:, j] == hi, j] == n_bins - 1).all()  # the maximum: last bin
        else:
            assert (bins[:, j] == 0).all()
    # Scaling by a power of 2 and an integer shift are exact in floating point: same bins.
    np.testing.assert_array_equal(discretize(codes * 2.0**exponent + shift, n_bins), bins)


@settings(max_examples=50)
@given(
    st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=30).filter(lambda v: max(v) > min(v)),
    st.integers(1, 25),
)
def test_discretize_of_codes_spanning_more_than_the_largest_float_is_that_of_the_halved_codes(
    values, n_bins
):
    """Codes near +-1e308 span a range that overflows to inf: their bins are those of the
    same codes halved (an exact map), not all 0."""
    codes = np.asarray(values)[:, None] * np.finfo(np.float64).max
    np.testing.assert_array_equal(discretize(codes, n_bins), discretize(codes / 2, n_bins))


@settings(max_examples=200)
@given(
    st.integers(2, 80),
    st.one_of(st.none(), st.integers(1, 100)),
    st.integers(1, 100),
    st.integers(0, 2**32 - 1),
)
def test_metric_split_is_disjoint_nonempty_and_of_the_asked_sizes_when_they_fit(
    n, n_train, n_test, seed
):
    tr, te = metric_split(n, n_train, n_test, np.random.default_rng(seed))
    assert len(tr) >= 1 and len(te) >= 1
    assert len(np.unique(tr)) == len(tr) and len(np.unique(te)) == len(te)
    assert len(np.intersect1d(tr, te)) == 0
    assert tr.min() >= 0 and te.min() >= 0 and max(tr.max(), te.max()) < n
    want_train = n - n_test if n_train is None else n_train
    if want_train >= 1 and want_train + n_test <= n:
        assert (len(tr), len(te)) == (want_train, n_test)
    else:
        assert len(te) <= n_test and len(tr) + len(te) == n


# ================================================================================= metrics


def _grid(sizes: tuple[int, ...], repeats: int) -> np.ndarray:
    g = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)
    return np.tile(g, (repeats, 1))


@settings(max_examples=25)
@given(
    st.lists(st.integers(2, 5), min_size=1, max_size=3),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(-2, 2),
    st.integers(-50, 50),
    st.data(),
)
def test_mig_is_one_for_codes_that_are_the_factors_of_a_full_grid(
    sizes, repeats, n_const, exponent, shift, data
):
    # On a full grid the factors are exactly independent (plug-in MI 0 between them); code k is
    # factor k (scaled, shifted), extra codes are constant: every gap is the whole H(v_k).
    f = _grid(tuple(sizes), repeats)
    codes = np.concatenate([f * 2.0**exponent + shift, np.full((len(f), n_const), 3.0)], axis=1)
    perm = data.draw(st.permutations(range(codes.shape[1])))
    assert metrics.mig(codes[:, perm], f) == pytest.approx(1.0, abs=1e-12)
    # Codes with no information: MIG 0; the factors of a full grid: MI exactly 0 between them.
    assert metrics.mig(np.full((len(f), 2), 0.5), f) == 0.0
    mi = mutual_info_matrix(f, f)
    assert (mi[~np.eye(len(sizes), dtype=bool)] == 0).all()


@settings(max_examples=25)
@given(_dyadic_codes, st.data())
def test_mig_is_invariant_to_code_order_factor_order_relabelling_and_positive_affine_maps(
    codes, data
):
    n, d = codes.shape
    f = data.draw(
        hnp.arrays(np.int64, (n, data.draw(st.integers(1, 3))), elements=st.integers(0, 3))
    )
    m = metrics.mig(codes, f)
    assert -1e-12 <= m <= 1 + 1e-12
    code_perm = data.draw(st.permutations(range(d)))
    factor_perm = data.draw(st.permutations(range(f.shape[1])))
    exps = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=d, max_size=d)))
    shifts = np.array(data.draw(st.lists(st.integers(-100, 100), min_size=d, max_size=d)))
    assert metrics.mig(codes[:, code_perm], f) == pytest.approx(m, abs=1e-12)
    assert metrics.mig(codes, f[:, factor_perm]) == pytest.approx(m, abs=1e-12)
    assert metrics.mig(codes, 7 * f - 3) == pytest.approx(m, abs=1e-12)
    assert metrics.mig(codes * 2.0**exps + shifts, f) == pytest.approx(m, abs=1e-12)


@settings(max_examples=60)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 4)),
        elements=st.one_of(st.just(0.0), _floats(1e-6, 3)),
    ),  # fmt: skip
    st.data(),
)
def test_modularity_score_is_the_ridgeway_zemel_formula(mi, data):
    d, k = mi.shape
    if k == 1:  # delta_i divides by K - 1: undefined (noise scored 1 here)
        assert math.isnan(modularity_score(mi))
        return
    expected = []
    for i in range(d):
        theta = mi[i].max()
        if theta == 0:
            expected.append(0.0)  # no information: scores 0, for every K
            continue
        j = int(np.argmax(mi[i]))
        template = np.zeros(k)
        template[j] = theta
        delta = np.sum((mi[i] - template) ** 2) / (theta**2 * (k - 1))
        expected.append(1.0 - delta)
    got = modularity_score(mi)
    assert got == pytest.approx(np.mean(expected), rel=1e-9, abs=1e-12)
    assert -1e-12 <= got <= 1 + 1e-12
    rows = data.draw(st.permutations(range(d)))
    cols = data.draw(st.permutations(range(k)))
    scale = data.draw(_floats(0.01, 100))
    assert modularity_score(mi[rows][:, cols] * scale) == pytest.approx(got, rel=1e-9, abs=1e-12)


@settings(max_examples=10)
@given(st.integers(40, 120), st.integers(1, 3), st.integers(2, 4), st.integers(0, 1000))
def test_modularity_of_codes_without_information_is_zero_with_one_varied_factor_too(
    n, d, classes, seed
):
    # The MI of a constant code must be exactly 0 (it was ~1e-17 from rounding, which
    # modularity, blind to the MI's scale, scored 1). A second, single-valued factor is left
    # out, leaving K = 1, where modularity is undefined: NaN (it used to score a perfect 1).
    f = np.random.default_rng(seed).integers(0, classes, size=(n, 2))
    assume(len(np.unique(f[:, 0])) > 1 and len(np.unique(f[:, 1])) > 1)
    codes = np.full((n, d), -1.5)
    assert (mutual_info_matrix(discretize(codes), f) == 0).all()
    assert metrics.modularity(codes, f, n_train=None, n_test=10)["modularity"] == 0.0
    f[:, 1] = 5
    with pytest.warns(RuntimeWarning, match="modularity is undefined with one varied factor"):
        assert math.isnan(metrics.modularity(codes, f, n_train=None, n_test=10)["modularity"])


@settings(max_examples=60)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=_floats(0, 10)
    ),
    st.data(),
)
def test_dci_disentanglement_completeness_invariances_and_bounds(r, data):
    assume(r.sum() > 0)
    dis, comp = disentanglement_completeness(r)
    assert -1e-12 <= dis <= 1 + 1e-12 and -1e-12 <= comp <= 1 + 1e-12
    rows = data.draw(st.permutations(range(r.shape[0])))
    cols = data.draw(st.permutations(range(r.shape[1])))
    scale = data.draw(_floats(0.01, 100))
    again = disentanglement_completeness(r[rows][:, cols] * scale)
    np.testing.assert_allclose(again, (dis, comp), rtol=1e-9, atol=1e-12)
    # Completeness is the disentanglement of the transposed matrix (Eqs. 1 and 2 swap roles).
    np.testing.assert_allclose(
        disentanglement_completeness(r.T), (comp, dis), rtol=1e-9, atol=1e-12
    )


@settings(max_examples=40)
@given(st.integers(2, 5), st.data())
def test_dci_of_a_scaled_permutation_is_one_and_of_a_uniform_matrix_zero(n, data):
    weights = np.array(data.draw(st.lists(_floats(0.1, 10), min_size=n, max_size=n)))
    perm = data.draw(st.permutations(range(n)))
    r = np.diag(weights)[perm]
    np.testing.assert_allclose(disentanglement_completeness(r), (1.0, 1.0), atol=1e-12)
    np.testing.assert_allclose(
        disentanglement_completeness(np.full((n, n), weights[0])), (0.0, 0.0), atol=1e-12
    )
    # By hand: R = [[1, 1], [0, 1]]: D = 2/3 * 0 + 1/3 * 1, C = 1/3 * 1 + 2/3 * 0.
    np.testing.assert_allclose(
        disentanglement_completeness(np.array([[1.0, 1.0], [0.0, 1.0]]) * weights[0]),
        (1 / 3, 1 / 3),
        atol=1e-12,
    )


@settings(max_examples=5)
@given(st.integers(30, 80), st.integers(1, 3), st.integers(1, 2), _floats(-5, 5), st.data())
def test_dci_of_constant_codes_has_no_importance_and_predicts_the_majority(n, d, k, value, data):
    # A collapsed encoder: every dimension constant, no split threshold anywhere. The boosted
    # trees used to crash (argmax of an empty array); they must never split instead, like
    # scikit-learn's, and predict each factor's most frequent training class.
    f = data.draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, 3)))
    assume(all(len(np.unique(f[:, j])) > 1 for j in range(k)))
    codes = np.full((n, d), value)
    importance, info = dci_importance(codes, f, n_train=None, n_test=10, rng=1)
    assert (importance == 0).all()
    tr, te = metric_split(n, None, 10, np.random.default_rng(1))
    varied = [j for j in range(k) if len(np.unique(f[tr, j])) > 1]  # (others: NaN, left out)
    for j in varied:
        counts = np.bincount(f[tr, j])
        if (counts == counts.max()).sum() == 1:  # a unique majority class
            assert info[j] == pytest.approx(np.mean(f[te, j] == counts.argmax()))
    out = metrics.dci(codes, f, n_train=None, n_test=10, rng=1)
    assert out["completeness"] == 0.0
    dis = out["disentanglement"]
    assert math.isnan(dis) if len(varied) == 1 else dis == 0.0  # (one factor: undefined)
    skl = metrics.dci(codes, f, n_train=None, n_test=10, rng=1, model="sklearn")
    assert skl == pytest.approx(out, nan_ok=True)


@settings(max_examples=8)
@given(st.integers(40, 80), st.integers(1, 3), st.integers(0, 1000))
def test_dci_trees_are_invariant_to_strictly_increasing_maps_of_each_code(n, d, seed):
    # Codes with few distinct values: the trees' thresholds sit between consecutive values, so
    # any strictly increasing map of a dimension gives the same splits, importances and accuracy.
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 3, size=(n, 2))
    codes = (f[:, rng.integers(0, 2, d)] + rng.integers(0, 3, size=(n, d))).astype(np.float64)
    warped = np.exp(codes / 3) + codes**3  # strictly increasing
    a = metrics.dci(codes, f, n_train=None, n_test=15, rng=seed)
    b = metrics.dci(warped, f, n_train=None, n_test=15, rng=seed)
    assert a == b


@settings(max_examples=8)
@given(st.integers(40, 80), st.integers(2, 3), st.integers(1, 2), st.integers(0, 1000), st.data())
def test_sap_and_modularity_are_invariant_to_the_order_of_codes_and_factors(n, d, k, seed, data):
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 3, size=(n, k))
    codes = f[:, rng.integers(0, k, d)] + 0.5 * rng.standard_normal((n, d))
    cp = data.draw(st.permutations(range(d)))
    fp = data.draw(st.permutations(range(k)))
    kw = {"n_train": None, "n_test": 15, "rng": seed}
    s = metrics.sap(codes, f, **kw)
    assert 0 <= s <= 1
    assert metrics.sap(codes[:, cp], f, **kw) == pytest.approx(s, abs=1e-12)
    assert metrics.sap(codes, f[:, fp], **kw) == pytest.approx(s, abs=1e-12)
    m = metrics.modularity(codes, f, **kw)
    for other in (
        metrics.modularity(codes[:, cp], f, **kw),
        metrics.modularity(codes, f[:, fp], **kw),
    ):
        assert other["modularity"] == pytest.approx(m["modularity"], abs=1e-12, nan_ok=True)
        assert other["explicitness"] == pytest.approx(m["explicitness"], abs=1e-6)


@settings(max_examples=10)
@given(st.integers(20, 60), st.integers(1, 2), st.integers(0, 1000))
def test_mig_chen_and_aam_take_any_factor_labels_the_metrics_accept(n, k, seed):
    # Factor classes are any integers (or integral floats, bools): only which rows share a value
    # matters. The normalising entropy used to be a bincount of the raw labels: a TypeError for
    # floats and bools, a huge allocation for large labels.
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 2, size=(n, k))
    mu = f[:, rng.integers(0, k, 2)] + 0.2 * rng.standard_normal((n, 2))
    lv = np.full((n, 2), -3.0)
    ref_mig = metrics.mig_chen(mu, lv, f, n_samples=None, rng=seed)
    ref_aam = metrics.aam(mu, lv, f, n_samples=None, rng=seed)
    assert ref_mig >= 0 and 0 <= ref_aam <= 1
    for labels in (f * 10**12 - 7, f.astype(np.float64), f.astype(bool)):
        assert metrics.mig_chen(mu, lv, labels, n_samples=None, rng=seed) == pytest.approx(ref_mig)
        assert metrics.aam(mu, lv, labels, n_samples=None, rng=seed) == pytest.approx(ref_aam)


@settings(max_examples=40)
@given(
    st.integers(5, 200),
    _floats(-0.95, 0.95),
    _floats(0.1, 10),
    _floats(0.1, 10),
    st.integers(0, 99),
)
def test_gaussian_tc_of_two_codes_is_minus_half_log_one_minus_rho_squared(n, rho, sx, sy, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    codes = np.stack([sx * x, sy * y], axis=1)
    r = np.corrcoef(codes, rowvar=False)[0, 1]
    assume(abs(r) < 0.999)
    tc = metrics.gaussian_total_correlation(codes)
    assert tc == pytest.approx(-0.5 * math.log(1 - r**2), rel=1e-6, abs=1e-9)
    assert tc >= -1e-12
    assert metrics.gaussian_total_correlation(codes[:, ::-1] * [3.0, 0.5]) == pytest.approx(
        tc, rel=1e-6, abs=1e-9
    )


@settings(max_examples=20)
@given(st.integers(1, 50), st.integers(1, 4), st.data())
def test_tc_of_identical_posteriors_is_zero_and_kl_matches_the_loss_term(n, d, data):
    # N copies of one Gaussian posterior: the aggregate posterior is that Gaussian, which
    # factorises, so its total correlation is 0 (up to float32 rounding).
    mu1 = np.array(data.draw(st.lists(_floats(-3, 3), min_size=d, max_size=d)))
    lv1 = np.array(data.draw(st.lists(_floats(-4, 2), min_size=d, max_size=d)))
    mu, lv = np.tile(mu1, (n, 1)), np.tile(lv1, (n, 1))
    assert metrics.total_correlation(mu, lv, n_samples=None, rng=0) == pytest.approx(
        0.0, abs=1e-4 * d
    )
    kl = metrics.kl_per_dim(mu, lv)
    np.testing.assert_allclose(kl, kl_normal(_t(mu1), _t(lv1)).numpy(), rtol=1e-12, atol=1e-12)


# ==================================================================================== data


@st.composite
def _binary_images(draw):
    c, h = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    w = draw(st.integers(1, 4)) * 8 // math.gcd(8, c * h)  # C*H*W divisible by 8
    n = draw(st.integers(1, 8))
    return draw(hnp.arrays(np.uint8, (n, c, h, w), elements=st.integers(0, 1)))


@settings(max_examples=60)
@given(_binary_images(), st.data(), st.sampled_from([torch.int64, torch.int32]))
def test_packed_batches_unpack_to_numpy_fancy_indexing(images, data, index_dtype):
    n, c, h, w = images.shape
    packed = np.packbits(images.reshape(n, -1), axis=1)
    ds = ArrayDataset(packed, DatasetInfo("p", (c, h, w)), packed=True)
    idx = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=10)), dtype=np.int64)
    got = ds.batch(torch.as_tensor(idx, dtype=index_dtype))
    assert got.dtype == torch.float32 and got.shape == (len(idx), c, h, w)
    np.testing.assert_array_equal(got.numpy(), images[idx].astype(np.float32))
    np.testing.assert_array_equal(ds.numpy_images(idx), images[idx])
    # the same images stored plain (0/255) give the same batch
    plain = ArrayDataset(images * 255, DatasetInfo("u", (c, h, w)), packed=False)
    np.testing.assert_array_equal(plain.batch(torch.as_tensor(idx)).numpy(), got.numpy())
    np.testing.assert_array_equal(plain.numpy_images(idx), images[idx] * 255)


@settings(max_examples=40)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_grid_index_and_classes_are_inverse_row_major(sizes, data):
    n = int(np.prod(sizes))
    images = np.zeros((n, 1, 1, 8), dtype=np.uint8)
    names = [str(i) for i in range(len(sizes))]
    values = [np.arange(s) * 0.5 for s in sizes]
    ds = GridDataset(images, DatasetInfo("g", (1, 1, 8)), False, names, values)
    idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=20)))
    classes = ds.classes_of(idx)
    np.testing.assert_array_equal(classes, np.stack(np.unravel_index(idx, sizes), axis=1))
    np.testing.assert_array_equal(ds.index_of(classes), idx)
    np.testing.assert_array_equal(ds.values_of(classes), classes * 0.5)


@settings(max_examples=100)
@given(
    st.integers(2, 300),
    _floats(0, 0.9),
    st.integers(0, 2**32),
    st.one_of(st.none(), st.integers(2, 400)),
)
def test_split_indices_is_a_seeded_disjoint_partition_of_the_used_images(n, frac, seed, subset):
    used = n if subset is None else min(subset, n)
    n_val = max(1, round(frac * used)) if frac > 0 else 0
    if n_val >= used:
        with pytest.raises(ValueError, match="nothing to train on"):
            split_indices(n, frac, seed, subset)
        return
    train, val = split_indices(n, frac, seed, subset)
    assert len(val) == n_val and len(train) == used - n_val
    assert len(np.intersect1d(train, val)) == 0
    both = np.concatenate([train, val])
    assert len(np.unique(both)) == used and both.min() >= 0 and both.max() < n
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    again = split_indices(n, frac, seed, subset)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


@settings(max_examples=60)
@given(
    st.integers(1, 30),
    st.integers(0, 2**31),
    st.lists(st.integers(1, 30), min_size=1, max_size=25),
    st.integers(0, 25),
)
def test_batch_stream_covers_epochs_without_repeats_and_resumes_exactly(n, seed, sizes, cut):
    indices = np.arange(n) * 3 + 100
    sizes = [s for s in sizes if s <= n]
    assume(sizes)
    s = BatchStream(indices, seed)
    seen: dict[int, list[int]] = {}
    state = None
    got = []
    for i, size in enumerate(sizes):
        if i == min(cut, len(sizes) - 1):
            tensors, scalars = s.state()
            state = ({k: v.clone() for k, v in tensors.items()}, dict(scalars))
            rest_from = i
        batch = s.next(size)
        assert batch.dtype == torch.int64 and batch.shape == (size,)
        seen.setdefault(s.epoch, []).extend(batch.tolist())
        got.append(batch)
    for items in seen.values():  # no index twice within an epoch, all from the indices
        assert len(items) == len(set(items)) <= n and set(items) <= set(indices.tolist())
    restored = BatchStream(indices, seed + 1)
    restored.load_state(*state)
    for size, expected in zip(sizes[rest_from:], got[rest_from:], strict=True):
        assert torch.equal(restored.next(size), expected)


# ================================================================================== config


def _toml_string(s: str) -> str:
    """A TOML basic string of ``s`` (escapes what TOML requires; everything else verbatim)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_bmp_text = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=12)
_pos = st.floats(1e-8, 1e6, allow_nan=False)
_nonneg = st.floats(0.0, 1e6, allow_nan=False)

# key -> (strategy of the value, how it is written for --set). Strings are written as TOML.
_OVERRIDES = {
    "data.path": st.one_of(st.none(), _text),
    "data.subset": st.one_of(st.none(), st.integers(1, 10**9)),
    "data.val_fraction": st.floats(0.0, 0.99),
    "data.split_seed": st.integers(0, C.MAX_SEED),
    "model.latent_dim": st.integers(1, 512),
    "model.channels": st.one_of(st.none(), st.lists(st.integers(1, 512), max_size=4).map(tuple)),
    "loss.name": st.sampled_from(list(C.OBJECTIVE_DEFAULTS)),
    "loss.beta": st.one_of(st.none(), _nonneg),
    "loss.c_steps": st.one_of(st.none(), st.integers(0, 10**7)),
    "loss.reg_anneal": st.integers(0, 10**6),
    "train.steps": st.one_of(st.none(), st.integers(1, 10**9)),
    "train.epochs": st.one_of(st.none(), _pos),
    "train.lr": _pos,
    "train.seed": st.integers(0, C.MAX_SEED),
    "train.device": _text,
    "train.amp": st.sampled_from(list(C.AMP_MODES)),
    "train.compile": st.booleans(),
    "train.grad_clip": st.one_of(st.none(), _pos),
    "train.val_images": st.one_of(st.none(), st.integers(1, 10**6)),
    "train.channels_last": st.one_of(st.none(), st.booleans()),
}


def _set_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value)


_override_lists = st.lists(
    st.sampled_from(sorted(_OVERRIDES)).flatmap(lambda k: st.tuples(st.just(k), _OVERRIDES[k])),
    max_size=8,
)


def _apply(items) -> C.RunConfig:
    return C.apply_overrides(C.RunConfig(), [f"{k}={_set_text(v)}" for k, v in items])


def _get(cfg: C.RunConfig, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


@settings(max_examples=80)
@given(_override_lists)
def test_set_overrides_set_exactly_the_value_and_survive_a_json_round_trip(items):
    cfg = _apply(items)
    last = dict(items)  # a later override of a key wins
    for key, value in last.items():
        if key in ("train.steps", "train.epochs") and _get(cfg, key) is None and value is not None:
            continue  # steps and epochs: a later one of the pair clears the other
        assert _get(cfg, key) == value
    back = C.from_dict(json.loads(json.dumps(C.to_dict(cfg))))
    assert back == cfg
    assert C.fingerprint(back) == C.fingerprint(cfg)


@settings(max_examples=80)
@given(_override_lists)
def test_toml_dump_reads_back_as_the_same_config(items):
    cfg = _apply(items)
    assert C.from_dict(C.tomllib.loads(C.dumps_toml(cfg))) == cfg


def test_toml_dump_keeps_val_images_none():
    cfg = C.apply_overrides(C.RunConfig(), ["val_images=none"])
    assert C.from_dict(C.tomllib.loads(C.dumps_toml(cfg))).train.val_images is None


def test_toml_dump_writes_characters_beyond_the_bmp():
    cfg = C.apply_overrides(C.RunConfig(), ['path="/data/\U0001f600"'])
    assert C.from_dict(C.tomllib.loads(C.dumps_toml(cfg))) == cfg


@settings(max_examples=60)
@given(st.text(max_size=12))
def test_toml_dump_writes_any_string_as_itself(text):
    """Quotes, backslashes, control characters, DEL (which TOML requires escaped) and
    characters beyond U+FFFF (which JSON writes as surrogate pairs, TOML refuses)."""
    cfg = replace(C.RunConfig(), data=replace(C.RunConfig().data, path=text))
    assert C.from_dict(C.tomllib.loads(C.dumps_toml(cfg))).data.path == text


def test_none_in_a_config_file_is_the_string_none_where_a_string_is_no_value():
    got = C.from_dict(
        C.tomllib.loads('[train]\nval_images = "none"\n[data]\npath = "none"\nsubset = "NULL"')
    )
    assert got.train.val_images is None and got.data.subset is None
    assert got.data.path == "none"  # a string setting keeps the word (a folder named none)


_FIXED_KEYS = [
    f"{s}.{f.name}"
    for s in ("data", "model", "loss", "train")
    for f in fields(type(getattr(C.RunConfig(), s)))
    if f"{s}.{f.name}" not in C.RESUMABLE_KEYS
]


@settings(max_examples=80)
@given(_override_lists, _override_lists)
def test_fingerprint_changes_exactly_when_a_setting_outside_the_resumable_keys_changes(a, b):
    ca, cb = _apply(a), _apply(b)
    same = all(_get(ca, k) == _get(cb, k) for k in _FIXED_KEYS)
    assert (C.fingerprint(ca) == C.fingerprint(cb)) == same
    # Changing only resumable keys keeps it; changing any fixed key changes it.
    resumable = replace(ca, train=replace(ca.train, log_every=ca.train.log_every + 1,
                                          device="cuda:3", val_images=None))  # fmt: skip
    assert C.fingerprint(resumable) == C.fingerprint(ca)
    moved = replace(ca, data=replace(ca.data, split_seed=ca.data.split_seed ^ 1))
    assert C.fingerprint(moved) != C.fingerprint(ca)


def test_minus_zero_and_zero_are_one_setting_for_the_fingerprint():
    """-0.0 == 0.0 for every check of a resume, so the weights of the one are the other's."""
    a = C.apply_overrides(C.RunConfig(), ["loss=betaH", "beta=0.0", "val_fraction=0.0"])
    b = C.apply_overrides(C.RunConfig(), ["loss=betaH", "beta=-0.0", "val_fraction=-0.0"])
    assert a == b and C.fingerprint(a) == C.fingerprint(b)
    assert C.fingerprint(a) != C.fingerprint(replace(a, loss=replace(a.loss, beta=1e-300)))
