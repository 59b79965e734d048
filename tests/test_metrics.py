"""Known-answer tests of the array metrics on synthetic representations of a dSprites-like grid.

Aligned codes = factors (scaled, small noise) must score near the maximum; a random rotation of
them clearly lower; pure noise near 0. Invariances and determinism are checked too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from disvae import metrics

SIZES = (3, 6, 40, 32, 32)  # dSprites' factor grid


def grid_factors(n: int, seed: int = 0, sizes=SIZES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)


def aligned(f: np.ndarray, seed: int = 1, noise: float = 0.01, sizes=SIZES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return f / (np.array(sizes) - 1) + noise * rng.standard_normal(f.shape)


def rotated(codes: np.ndarray, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((codes.shape[1], codes.shape[1])))
    return codes @ q


def noise(n: int, d: int = 5, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    f = grid_factors(6000)
    a = aligned(f)
    return {"aligned": (a, f), "rotated": (rotated(a), f), "noise": (noise(len(f)), f)}


def test_mig_by_hand():
    # factor v = [0,0,1,1]; z1 = [0,1,1,1] -> bins [0,1,1,1]; z2 constant carries nothing.
    f = np.array([[0], [0], [1], [1]])
    z = np.array([[0.0, 5.0], [1.0, 5.0], [1.0, 5.0], [1.0, 5.0]])
    mi = 0.25 * math.log(2) + 0.25 * math.log(2 / 3) + 0.5 * math.log(4 / 3)
    assert metrics.mutual_info_matrix(metrics.discretize(z, 2), f)[:, 0] == pytest.approx([mi, 0])
    assert metrics.mig(z, f, n_bins=2) == pytest.approx(mi / math.log(2))


def test_mutual_info_matches_sklearn(cases):
    from sklearn.metrics import mutual_info_score

    codes, f = cases["rotated"]
    b = metrics.discretize(codes, 20)
    ours = metrics.mutual_info_matrix(b, f)
    for j in range(codes.shape[1]):
        for k in range(f.shape[1]):
            assert ours[j, k] == pytest.approx(mutual_info_score(b[:, j], f[:, k]), abs=1e-10)


def test_mig_aligned_rotated_noise(cases):
    a, r, n = (metrics.mig(*cases[k]) for k in ("aligned", "rotated", "noise"))
    # 20 bins cannot hold all of log(40) nats: the binned ceiling on dSprites is ~0.85.
    assert a > 0.8 and r < a - 0.3 and n < 0.05


def test_mig_duplicated_dimension_closes_the_gap(cases):
    codes, f = cases["aligned"]
    dup = np.concatenate([codes, codes[:, 2:3]], axis=1)
    per = metrics.mig_per_factor(dup, f)
    assert per[2] < 0.01 and np.all(per[[0, 1, 3, 4]] > 0.75)


def test_constant_dimension_crashes_nothing(cases):
    codes, f = cases["aligned"]
    c = np.concatenate([codes, np.full((len(codes), 1), 3.0)], axis=1)
    assert metrics.mig(c, f) > 0.8
    assert metrics.sap(c, f, n_train=2000, n_test=1000) > 0.1
    assert metrics.modularity(c, f, n_train=2000, n_test=500)["modularity"] > 0.7
    assert metrics.dci(c, f, model="lasso")["disentanglement"] > 0.5
    fc = np.concatenate([f, np.zeros((len(f), 1), dtype=int)], axis=1)
    assert metrics.mig(codes, fc) == pytest.approx(
        metrics.mig(codes, f)
    )  # a constant factor is left out


def test_invariances(cases):
    codes, f = cases["rotated"]
    perm = codes[:, [3, 0, 4, 2, 1]]
    scaled = codes * np.array([5.0, 0.1, 1.0, -2.0, 1.0]) + 7.0
    m = metrics.mig(codes, f)
    assert metrics.mig(perm, f) == pytest.approx(m)
    assert metrics.mig(scaled, f) == pytest.approx(m)
    kw = {"n_train": 2000, "n_test": 1000, "rng": 5}
    assert metrics.modularity(scaled, f, **kw)["modularity"] == pytest.approx(
        metrics.modularity(codes, f, **kw)["modularity"]
    )
    assert metrics.sap(perm, f, **kw) == pytest.approx(metrics.sap(codes, f, **kw))
    d0 = metrics.dci(codes, f, model="lasso", rng=5)["disentanglement"]
    assert metrics.dci(perm, f, model="lasso", rng=5)["disentanglement"] == pytest.approx(d0, 1e-4)


def test_sap(cases):
    kw = {"n_train": 2000, "n_test": 1000}
    a, r, n = (metrics.sap(*cases[k], **kw) for k in ("aligned", "rotated", "noise"))
    assert a > 0.15 and r < a - 0.05 and n < 0.02


def test_modularity(cases):
    kw = {"n_train": 3000, "n_test": 1000}
    a, r, n = (metrics.modularity(*cases[k], **kw) for k in ("aligned", "rotated", "noise"))
    assert a["modularity"] > 0.95 and r["modularity"] < a["modularity"] - 0.15
    assert a["explicitness"] > 0.8 and abs(n["explicitness"] - 0.5) < 0.05


def test_dci_lasso(cases):
    a, r, n = (metrics.dci(*cases[k], model="lasso") for k in ("aligned", "rotated", "noise"))
    assert a["disentanglement"] > 0.9 and a["completeness"] > 0.9
    assert r["disentanglement"] < a["disentanglement"] - 0.3
    assert a["informativeness"] > 0.9 and n["informativeness"] < 0.05


def test_dci_gbt_small_grid():
    sizes = (3, 4, 5)
    f = grid_factors(900, sizes=sizes)
    a = aligned(f, sizes=sizes)
    kw = {"n_train": 600, "n_test": 300}
    ra = metrics.dci(a, f, **kw)
    rr = metrics.dci(rotated(a), f, **kw)
    assert ra["disentanglement"] > 0.9 and ra["completeness"] > 0.9
    assert ra["informativeness"] > 0.95
    assert rr["disentanglement"] < ra["disentanglement"] - 0.2
    assert metrics.dci(a, f, **kw) == ra  # same seed, same numbers


def test_disentanglement_completeness_closed_form():
    assert metrics.disentanglement_completeness(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert metrics.disentanglement_completeness(np.ones((3, 3))) == pytest.approx((0.0, 0.0))
    assert metrics.disentanglement_completeness(np.zeros((2, 2))) == (0.0, 0.0)


def test_mig_chen_and_aam():
    sizes = (3, 6, 8)
    f = grid_factors(1000, sizes=sizes)
    a = aligned(f, sizes=sizes)
    lv = np.full(a.shape, math.log(0.02**2))
    mi = {
        "aligned": metrics.chen_mutual_info(a, lv, f, rng=0),
        "rotated": metrics.chen_mutual_info(rotated(a), lv, f, rng=0),
        "noise": metrics.chen_mutual_info(noise(len(f), 3), np.zeros(a.shape), f, rng=0),
    }
    good, rot, nz = (metrics.mig_from_mi(m, f) for m in mi.values())
    assert good > 0.6 and rot < good - 0.2 and nz < 0.05
    aam, aam_rot = (metrics.aam_from_mi(mi[k], f) for k in ("aligned", "rotated"))
    assert aam > 0.8 and aam_rot < aam - 0.3
    assert metrics.mig_chen(a, lv, f, rng=0) == good  # same seed, same number
    assert metrics.aam(a, lv, f, rng=0) == aam


def test_unsupervised():
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((2000, 3))
    assert metrics.kl_per_dim(np.zeros((5, 2)), np.zeros((5, 2))) == pytest.approx([0, 0])
    assert metrics.active_units(np.c_[mu[:, :2], np.zeros(2000)]) == 2
    lv = np.full(mu.shape, -2.0)
    mix = mu @ np.array([[1, 0.9, 0], [0, 1, 0], [0, 0, 1]])
    indep = metrics.total_correlation(mu, lv, n_samples=2000)
    corr = metrics.total_correlation(mix, lv, n_samples=2000)
    assert abs(indep) < 0.1 and corr > indep + 0.2
    assert abs(metrics.gaussian_total_correlation(mu)) < 0.01
    # closed form for the mixed Gaussian: 0.5 log(S11 S22 / det S), S = A^T A
    s = np.array([[1, 0.9], [0.9, 1.81]])
    exact = 0.5 * math.log(s[0, 0] * s[1, 1] / np.linalg.det(s))
    assert metrics.gaussian_total_correlation(mix) == pytest.approx(exact, abs=0.03)


def test_seed_and_sample_size_convergence():
    f = grid_factors(20000, seed=4)
    r = rotated(aligned(f))
    assert metrics.sap(r, f, n_train=2000, n_test=1000, rng=3) == metrics.sap(
        r, f, n_train=2000, n_test=1000, rng=3
    )
    full = metrics.mig(r, f)
    gaps = [abs(metrics.mig(r[:n], f[:n]) - full) for n in (1000, 10000)]
    assert gaps[1] < gaps[0] and gaps[1] < 0.02


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError):
        metrics.mig(np.zeros((10, 2)), np.zeros((9, 1), dtype=int))
    with pytest.raises(ValueError):
        metrics.mig(np.full((10, 2), np.nan), np.zeros((10, 1), dtype=int))


def test_explicitness_is_one_vs_rest_liblinear():
    # Ridgeway & Zemel 2018, Sec. 3 and disentanglement_lib (scikit-learn 0.20's default
    # LogisticRegression: liblinear, one-vs-rest). Reference computed here class by class: a
    # binary liblinear fit per class, its P(class), normalised over the classes (one-vs-rest
    # predict_proba), the ROC-AUC of each class on the test points, the mean.
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from disvae.metrics.modularity import explicitness_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=(400, 1))
    centres = np.array([[0.0, 0.0], [1.0, 0.2], [0.2, 1.0], [3.0, 3.0]])
    codes = centres[y[:, 0]] + 0.8 * rng.standard_normal((400, 2))
    x, x_test, f, f_test = codes[:250], codes[250:], y[:250, 0], y[250:, 0]
    mean, std = x.mean(axis=0), x.std(axis=0)
    xs, xt = (x - mean) / std, (x_test - mean) / std

    def mean_auc(proba):
        return np.mean([roc_auc_score(f_test == c, proba[:, c]) for c in range(4)])

    p = np.stack(
        [LogisticRegression(solver="liblinear").fit(xs, f == c).predict_proba(xt)[:, 1]
         for c in range(4)], axis=1,
    )  # fmt: skip
    ovr = mean_auc(p / p.sum(axis=1, keepdims=True))
    multinomial = mean_auc(LogisticRegression().fit(xs, f).predict_proba(xt))
    assert abs(ovr - multinomial) > 1e-4  # the case tells the two classifiers apart
    got = explicitness_score(codes[:250], y[:250], codes[250:], y[250:])
    assert got == pytest.approx(ovr, abs=1e-6)


def test_dci_and_modularity_leave_out_a_single_valued_factor():
    # docs/metrics.md: factors with one value are left out (as MIG and SAP do); kept, they would
    # score informativeness 1, raise DCI's entropy base K and modularity's K - 1.
    sizes = (3, 4, 5)
    f = grid_factors(900, sizes=sizes)
    codes = rotated(aligned(f, sizes=sizes)[:, [0, 1, 2, 0]] + 0.1 * noise(900, 4))
    fc = np.concatenate([f, np.full((len(f), 1), 2)], axis=1)
    kw = {"n_train": 600, "n_test": 300, "rng": 1}
    for model in ("lasso", "gbt"):
        ref = metrics.dci(codes, f, model=model, **kw)
        assert metrics.dci(codes, fc, model=model, **kw) == pytest.approx(ref, abs=1e-12)
    ref = metrics.modularity(codes, f, **kw)
    assert metrics.modularity(codes, fc, **kw) == pytest.approx(ref, abs=1e-12)
    # nothing left to score: 0, as MIG
    none = np.zeros((len(f), 2), dtype=int)
    assert metrics.dci(codes, none, model="lasso", **kw) == {
        "disentanglement": 0.0, "completeness": 0.0, "informativeness": 0.0
    }  # fmt: skip
    assert metrics.modularity(codes, none, **kw) == {"modularity": 0.0, "explicitness": 0.0}


def test_dci_lasso_informativeness_is_clipped_at_zero():
    # Eastwood & Williams 2018: I = 1 - NRMSE in [0, 1]. Codes without information and almost no
    # shrinkage overfit a few training points: the test NRMSE exceeds 1 (computed here), and the
    # informativeness is clipped to 0 (no better than predicting the mean).
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(0)
    codes = rng.standard_normal((60, 20))
    f = rng.integers(0, 5, size=(60, 1))
    tr, te = metrics._utils.train_test_split(60, 30, 30, np.random.default_rng(4))
    x, xt = codes[tr], codes[te]
    mean, std = x.mean(axis=0), x.std(axis=0)
    reg = Lasso(alpha=1e-4, max_iter=100_000).fit((x - mean) / std, f[tr, 0] / 4)
    pred = reg.predict((xt - mean) / std)
    nrmse = np.sqrt(np.mean((pred - f[te, 0] / 4) ** 2)) / np.std(f[te, 0] / 4)
    assert nrmse > 1
    r = metrics.dci(codes, f, n_train=30, n_test=30, model="lasso", lasso_alpha=1e-4, rng=4)
    assert r["informativeness"] == 0.0


def test_labelled_points_are_drawn_without_replacement():
    # compute_metrics on a labelled dataset: the n_samples + n_test points are distinct images
    # when the dataset has enough (train and test share none); with too few, drawn with
    # replacement. The dataset records which images were asked for.
    import torch

    from disvae.data.base import DatasetInfo
    from disvae.data.ground_truth import LabeledDataset
    from disvae.evaluation import compute_metrics

    class Recording(LabeledDataset):
        asked: list[np.ndarray] = []

        def factors_of(self, index):
            self.asked.append(np.asarray(index))
            return super().factors_of(index)

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def encode(self, x):
            z = x.flatten(1)[:, :2] * self.w
            return z, torch.zeros_like(z)

    n = 1000
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 1, 1, 2), dtype=np.uint8)
    labels = rng.integers(0, 3, size=(n, 1)).astype(float)
    data = Recording(images, DatasetInfo("rec", (1, 1, 2)), False, ["a"], labels, [True])
    compute_metrics(Stub(), data, "mig", n_samples=400, n_test=100, seed=0)
    index = data.asked[-1]
    assert len(index) == 500 and len(np.unique(index)) == 500
    compute_metrics(Stub(), data, "mig", n_samples=900, n_test=200, seed=0)
    index = data.asked[-1]
    assert len(index) == 1100 and index.min() >= 0 and index.max() < n
    assert len(np.unique(index)) < n  # more points than images: some drawn twice


def test_bad_inputs_are_value_errors_that_say_what_is_wrong():
    """Wrong shapes, types, NaN and sizes are a ValueError naming the problem, never a deep
    traceback, a broadcast or a silently different sample."""
    f = grid_factors(300, sizes=(3, 4))
    c = aligned(f, sizes=(3, 4))
    lv = np.full_like(c, -2.0)
    nan = np.where(c > 0.9, np.nan, c)
    cases = [
        (lambda: metrics.mig(c, f.astype(str)), "factors must be a real numeric array"),
        (lambda: metrics.mig(c.astype(complex), f), "codes must be a real numeric array"),
        (lambda: metrics.mig(c[:, :0], f), r"codes must be \(N, D\) with D >= 1"),
        (lambda: metrics.mig(c, f[:, :0]), "factors must have at least one column"),
        (lambda: metrics.mig(c, f, 2.5), "n_bins must be an integer >= 1, got 2.5"),
        (lambda: metrics.mig(c, f, True), "n_bins must be an integer >= 1, got True"),
        (lambda: metrics.mig_chen(c, np.where(c > 0.9, np.inf, lv), f), "logvar holds NaN"),
        (lambda: metrics.mig_chen(c, lv, f, n_samples=-5), "n_samples must be an integer >= 1"),
        (lambda: metrics.aam(c, lv, f, n_samples=0), "n_samples must be an integer >= 1"),
        (lambda: metrics.sap(c, f, n_test=0), "n_test must be an integer >= 1, got 0"),
        (lambda: metrics.sap(c, f, n_train=-5), "n_train must be an integer >= 1 or None"),
        (lambda: metrics.dci(c, f, n_test=-1), "n_test must be an integer >= 1, got -1"),
        (lambda: metrics.dci(c, f, model="lasso", n_test=0), "n_test must be an integer >= 1"),
        (lambda: metrics.modularity(c, f, n_train=0), "n_train must be an integer >= 1"),
        (lambda: metrics.unsupervised_scores(c, lv[:, :1]), "mu and logvar must have the same"),
        (lambda: metrics.unsupervised_scores(nan, lv), r"mu holds NaN or infinite values \("),
        (lambda: metrics.unsupervised_scores(c, lv, np.ones(3)), "recon_error must be 300"),
        (lambda: metrics.unsupervised_scores(c[:1], lv[:1]), "at least 2 points are needed"),
        (lambda: metrics.kl_per_dim(c, lv[:, :1]), "mu and logvar must have the same shape"),
        (lambda: metrics.total_correlation(c, lv, n_samples=0), "n_samples must be an integer"),
        (lambda: metrics.gaussian_total_correlation(c[:1]), "a covariance needs at least 2"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_rng_none_is_seed_zero_everywhere():
    """docs/metrics.md: randomness defaults to seed 0, the same numbers every time; None
    (numpy's 'fresh entropy') gave other numbers on every call for the split-based metrics."""
    f = grid_factors(400, sizes=(3, 6, 8))
    c = aligned(f, noise=0.3, sizes=(3, 6, 8))
    lv = np.full_like(c, -1.0)
    assert metrics.sap(c, f, n_train=200, n_test=100, rng=None) == metrics.sap(
        c, f, n_train=200, n_test=100, rng=0
    )
    assert metrics.dci(c, f, n_train=200, n_test=100, model="lasso", rng=None) == metrics.dci(
        c, f, n_train=200, n_test=100, model="lasso", rng=0
    )
    assert metrics.modularity(c, f, n_train=200, n_test=100, rng=None) == metrics.modularity(
        c, f, n_train=200, n_test=100, rng=0
    )
    assert metrics.mig_chen(c, lv, f, 100, rng=None) == metrics.mig_chen(c, lv, f, 100, rng=0)
    assert metrics.total_correlation(c, lv, 100, rng=None) == metrics.total_correlation(
        c, lv, 100, rng=0
    )


def test_split_never_leaves_an_empty_training_set():
    split = metrics._utils.train_test_split
    # n_train None with n_test >= N used to give an empty training set (and a 0 or a traceback).
    tr, te = split(10, None, 10, np.random.default_rng(0))
    assert len(tr) == 1 and len(te) == 9 and not set(tr) & set(te)
    tr, te = split(2, 1, 5000, np.random.default_rng(0))
    assert len(tr) == 1 and len(te) == 1
    tr, te = split(60, 30, 30, np.random.default_rng(4))  # enough points: as asked
    assert len(tr) == 30 and len(te) == 30
    with pytest.raises(ValueError, match="at least 2 points"):
        split(1, None, 1, np.random.default_rng(0))
