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
