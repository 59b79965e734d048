"""The dataset + encode scores (β-VAE, FactorVAE) on a tiny synthetic grid whose pixels are the
factor classes, with factor-aligned, rotated and pure-noise encoders."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from disvae import metrics
from disvae.data.base import DatasetInfo
from disvae.data.ground_truth import GridDataset

SIZES = (3, 4, 5, 6)


def pixel_grid() -> GridDataset:
    """Image i is 1 x 1 x K pixels holding 40 * (factor class k) each."""
    n = int(np.prod(SIZES))
    classes = np.stack(np.unravel_index(np.arange(n), SIZES), axis=1)
    images = (classes * 40).astype(np.uint8).reshape(n, 1, 1, len(SIZES))
    values = [np.arange(s, dtype=float) for s in SIZES]
    info = DatasetInfo("pixel_grid", (1, 1, len(SIZES)))
    return GridDataset(images, info, False, [f"f{k}" for k in range(len(SIZES))], values)


def make_encoder(kind: str):
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((len(SIZES), len(SIZES))))

    def encode(images: torch.Tensor) -> np.ndarray:
        f = images.reshape(len(images), -1).numpy() * 255 / 40 / (np.array(SIZES) - 1)
        if kind == "noise":
            return rng.standard_normal(f.shape)
        codes = f + 0.01 * rng.standard_normal(f.shape)
        return codes @ q if kind == "rotated" else codes

    return encode


KW = {"n_train": 400, "n_eval": 200, "batch_size": 16, "rng": 0}


@pytest.fixture(scope="module")
def data() -> GridDataset:
    return pixel_grid()


def test_beta_vae_score(data):
    s = {
        k: metrics.beta_vae_score(data, make_encoder(k), **KW)
        for k in ("aligned", "rotated", "noise")
    }
    assert s["aligned"]["eval_accuracy"] > 0.97
    assert s["rotated"]["eval_accuracy"] < s["aligned"]["eval_accuracy"]
    assert s["noise"]["eval_accuracy"] < 0.4  # chance is 1/4


def test_factor_vae_score(data):
    kw = dict(KW, n_variance=500)
    s = {
        k: metrics.factor_vae_score(data, make_encoder(k), **kw)
        for k in ("aligned", "rotated", "noise")
    }
    assert s["aligned"]["eval_accuracy"] > 0.97
    assert s["rotated"]["eval_accuracy"] < s["aligned"]["eval_accuracy"] - 0.2
    assert s["noise"]["eval_accuracy"] < 0.4
    # aligned codes have standard deviations ~0.4: a high pruning threshold leaves nothing
    with pytest.warns(RuntimeWarning, match="no active code dimension"):
        pruned = metrics.factor_vae_score(data, make_encoder("aligned"), prune_threshold=10, **kw)
    assert pruned["eval_accuracy"] == 0.0


def test_factor_vae_of_a_collapsed_encoder_warns_that_it_is_no_score(data):
    """Every dimension pruned (a collapsed model): disentanglement_lib's 0 accuracies, below
    chance (1/4 here), with a warning saying that they are no score; none otherwise."""
    kw = dict(KW, n_variance=500)

    def collapsed(images):  # posterior means that barely move: std 0.001 < 0.05
        return 0.001 * make_encoder("aligned")(images)

    with pytest.warns(RuntimeWarning) as caught:
        fv = metrics.factor_vae_score(data, collapsed, **kw)
    assert fv == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("factor_vae: no active code dimension") and "\n" not in message
    assert "prune_threshold 0.05" in message and "not a score" in message
    assert caught[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.factor_vae_score(data, make_encoder("aligned"), **kw)["num_active_dims"] == 4


def test_cached_encoder_gives_the_same_numbers_and_encodes_each_image_once(data):
    plain = metrics.factor_vae_score(data, make_encoder("aligned"), **KW)
    cached = metrics.CachedEncoder(data, make_encoder("aligned"), batch_size=50)
    again = metrics.factor_vae_score(data, cached, **KW)
    assert again["eval_accuracy"] == pytest.approx(plain["eval_accuracy"], abs=0.03)
    assert cached.n_encoded <= len(data)
    a = metrics.beta_vae_score(data, cached, **KW)
    assert a == metrics.beta_vae_score(data, cached, **KW)  # same seed, same numbers


def test_constant_code_dimension(data):
    base = make_encoder("aligned")

    def encode(images):
        c = base(images)
        return np.concatenate([c, np.ones((len(c), 1))], axis=1)

    fv = metrics.factor_vae_score(data, encode, **KW)
    assert fv["num_active_dims"] == len(SIZES) and fv["eval_accuracy"] > 0.97  # pruned
    assert metrics.beta_vae_score(data, encode, **KW)["eval_accuracy"] > 0.9


def test_factor_vae_prunes_on_the_standard_deviation(data):
    # disentanglement_lib factor_vae.py, _prune_dims: sqrt(variance) >= 0.05. Factor 0 has 3
    # classes, aligned code {0, 0.5, 1} of variance 1/6; scaled to std 0.10 (variance 0.01) it
    # stays active under the std rule (a variance rule with 0.05 would drop it and lose factor 0).
    base = make_encoder("aligned")
    scale = 0.10 / np.sqrt(1 / 6)

    def encode(images):
        c = base(images)
        c[:, 0] *= scale
        return c

    fv = metrics.factor_vae_score(data, encode, **dict(KW, n_variance=500))
    assert fv["num_active_dims"] == len(SIZES)
    assert fv["eval_accuracy"] > 0.97


def test_beta_vae_classifier_is_one_vs_rest_liblinear(data):
    # disentanglement_lib beta_vae.py fits LogisticRegression() of scikit-learn 0.20, whose
    # defaults were liblinear and one-vs-rest. Reference here: one binary liblinear fit per
    # factor on the same points, predicting the factor of the largest decision value.
    from sklearn.linear_model import LogisticRegression

    from disvae.metrics.beta_vae import beta_vae_points

    rng = np.random.default_rng(0)  # the score's own draws with rng=0
    encode = make_encoder("rotated")
    x, y = beta_vae_points(data, encode, KW["n_train"], KW["batch_size"], rng)
    x_eval, y_eval = beta_vae_points(data, encode, KW["n_eval"], KW["batch_size"], rng)
    fits = [LogisticRegression(solver="liblinear").fit(x, y == k) for k in range(len(SIZES))]

    def accuracy(xs, ys):
        return np.mean(np.argmax([m.decision_function(xs) for m in fits], axis=0) == ys)

    multinomial = LogisticRegression(max_iter=1000).fit(x, y)
    assert multinomial.score(x, y) != accuracy(x, y)  # the case tells the two apart
    got = metrics.beta_vae_score(data, make_encoder("rotated"), **KW)
    assert got["train_accuracy"] == pytest.approx(accuracy(x, y), abs=1e-12)
    assert got["eval_accuracy"] == pytest.approx(accuracy(x_eval, y_eval), abs=1e-12)


def test_batch_scores_refuse_bad_sizes_and_non_finite_codes():
    data, enc = pixel_grid(), make_encoder("aligned")
    kw = {"n_train": 20, "n_eval": 10}
    cases = [
        (lambda: metrics.beta_vae_score(data, enc, batch_size=0, **kw), "batch_size must be"),
        (lambda: metrics.beta_vae_score(data, enc, n_train=0, n_eval=10), "n_train must be"),
        (lambda: metrics.beta_vae_score(data, enc, n_train=20, n_eval=0), "n_eval must be"),
        # a variance within a vote's batch needs 2 images (ddof=1): 1 gave NaN and argmin 0
        (lambda: metrics.factor_vae_score(data, enc, batch_size=1, **kw), ">= 2, got 1"),
        (lambda: metrics.factor_vae_score(data, enc, n_variance=1, **kw), "n_variance must be"),
        (lambda: metrics.sample_codes(data, enc, 0, np.random.default_rng(0)), "n must be"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()

    def nan_encode(images):
        codes = enc(images)
        codes[0] = np.nan
        return codes

    # NaN codes used to score FactorVAE 0 with no active dimension (silently) and end β-VAE in
    # scikit-learn's traceback.
    for score in (metrics.beta_vae_score, metrics.factor_vae_score):
        with pytest.raises(ValueError, match="encode returned NaN or infinite codes for 1 of"):
            score(data, nan_encode, batch_size=4, **kw)


def test_beta_vae_with_one_training_label_scores_the_eval_points_honestly():
    """One training point has one label: the classifier can only predict it, so the evaluation
    accuracy is the share of evaluation points with that label, not a perfect 1.0."""
    from disvae.metrics.beta_vae import beta_vae_points

    data = pixel_grid()
    res = metrics.beta_vae_score(data, make_encoder("noise"), n_train=1, n_eval=40, rng=3)
    rng = np.random.default_rng(3)  # the same draws as the score's (labels ignore the codes)
    _, y = beta_vae_points(data, make_encoder("noise"), 1, 64, rng)
    _, y_eval = beta_vae_points(data, make_encoder("noise"), 40, 64, rng)
    share = float(np.mean(y_eval == y[0]))
    assert 0.0 < share < 1.0  # (a seed where the old 1.0 is wrong)
    assert res == {"train_accuracy": 1.0, "eval_accuracy": pytest.approx(share)}
