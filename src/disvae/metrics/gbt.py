"""Gradient-boosted trees for DCI's importance matrix, vectorised over every class of every factor.

The disentanglement_lib DCI protocol fits scikit-learn's ``GradientBoostingClassifier`` (100
stages, depth-3 regression trees, learning rate 0.1, multinomial deviance) per factor and reads
``feature_importances_``. That is about 11,000 trees for dSprites' 113 factor classes, built one
at a time (about 25 ms each on one core: some 5 minutes). This module runs the same algorithm
(Friedman 2001, "Greedy Function Approximation", Alg. 6 "LK_TreeBoost", as scikit-learn implements
it) with every tree of a stage grown at once, level by level, from histograms:

- initial raw scores: the log class priors (binary factors: the prior's log-odds, and one tree
  per stage);
- each stage: negative gradients ``g = y_k - p_k`` of the softmax; one regression tree per class
  fitted to ``g`` by least squares (split gain = S_L^2/N_L + S_R^2/N_R - S^2/N, the impurity
  decrease), depth 3, at least one sample per leaf;
- leaf values: one Newton step, ``(K-1)/K * sum(g) / sum(p (1 - p))`` (``sum(g) / sum(p (1 - p))``
  for binary factors), scaled by the learning rate;
- importances: each tree's impurity decreases per feature divided by the sample count, averaged
  over the trees that split at all, normalised to sum to one (``feature_importances_``).

The one difference from scikit-learn: split thresholds are searched among at most ``n_bins``
candidates per feature (midpoints between consecutive distinct values when a feature has at most
``n_bins`` of them, which is then exact; otherwise midpoints between quantiles), as in histogram
boosting (Ke et al. 2017, LightGBM).

Ties: scikit-learn's tree splitter visits the features of each node in a random order (seeded by
``random_state``) and keeps the first best split, so exactly tied features (a duplicated code) win
at random and share the importance. Here too: among the features whose best gain equals the
node's maximum exactly, one is drawn uniformly (a generator seeded by ``random_state``); within a
feature the lowest threshold wins, as in scikit-learn's scan. A node without a tie is unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TINY = 1e-150  # scikit-learn's _safe_divide: a (near-)zero Hessian gives a zero update


def bin_thresholds(x: np.ndarray, n_bins: int = 256) -> list[np.ndarray]:
    """Per feature of ``x`` (N, D): increasing split thresholds (at most ``n_bins - 1``)."""
    out = []
    for col in np.asarray(x, dtype=np.float64).T:
        values = np.unique(col)
        if len(values) > n_bins:
            values = np.unique(np.quantile(col, np.linspace(0, 1, n_bins)))
        out.append((values[:-1] + values[1:]) / 2)
    return out


def apply_bins(x: np.ndarray, thresholds: list[np.ndarray]) -> np.ndarray:
    """Bin indices (N, D): the number of thresholds each value is above (``x > t``)."""
    x = np.asarray(x, dtype=np.float64)
    cols = [np.searchsorted(t, x[:, j], side="left") for j, t in enumerate(thresholds)]
    return np.stack(cols, axis=1).astype(np.int64)


@dataclass
class _Groups:
    """Columns of the joint raw-score matrix: one group per factor."""

    offsets: list[int]  # start column of each factor
    sizes: list[int]  # columns of each factor (1 for a binary factor)
    classes: list[np.ndarray]  # class labels of each factor, in column order


def _targets(y: np.ndarray) -> tuple[_Groups, np.ndarray, np.ndarray]:
    """Column layout, one-hot targets (N, C) and initial raw scores (C,) of factors y (N, K)."""
    offsets, sizes, classes, onehots, init = [], [], [], [], []
    col = 0
    for f in range(y.shape[1]):
        labels, codes = np.unique(y[:, f], return_inverse=True)
        prior = np.bincount(codes, minlength=len(labels)) / len(codes)
        prior = np.clip(prior, np.finfo(np.float64).eps, 1 - np.finfo(np.float64).eps)
        onehot = np.eye(len(labels))[codes]
        if len(labels) == 2:  # binomial deviance: one column for the positive class
            onehot, raw0 = onehot[:, 1:], np.log(prior[1:] / (1 - prior[1:]))
        else:
            raw0 = np.log(prior)
        offsets.append(col)
        sizes.append(onehot.shape[1])
        classes.append(labels)
        onehots.append(onehot)
        init.append(raw0)
        col += onehot.shape[1]
    return _Groups(offsets, sizes, classes), np.concatenate(onehots, 1), np.concatenate(init)


def _probabilities(raw: np.ndarray, groups: _Groups) -> np.ndarray:
    """Softmax per factor (sigmoid for binary factors) of raw scores (N, C)."""
    p = np.empty_like(raw)
    for o, s in zip(groups.offsets, groups.sizes, strict=True):
        r = raw[:, o : o + s]
        if s == 1:
            p[:, o] = 1 / (1 + np.exp(-r[:, 0]))
        else:
            e = np.exp(r - r.max(axis=1, keepdims=True))
            p[:, o : o + s] = e / e.sum(axis=1, keepdims=True)
    return p


def bin_matrix(bins: np.ndarray, n_bins: int):
    """The sparse one-hot matrix (D * B, N) of bin indices (N, D): row f * B + b marks the
    samples whose feature f falls in bin b."""
    from scipy import sparse

    n, d = bins.shape
    rows = (np.arange(d) * n_bins + bins).T.ravel()  # feature-major, so each row is contiguous
    cols = np.tile(np.arange(n), d)
    ones = np.ones(n * d, dtype=np.float32)
    return sparse.csr_matrix((ones, (rows, cols)), shape=(d * n_bins, n))


def _histograms(g, node, onehot, nodes, d, n_bins):
    """Sums of g (C, N) and sample counts per (tree, node, feature, bin) for the listed node
    ids, each (C, len(nodes), D, B): one sparse product of the bin matrix with the targets spread
    over the nodes."""
    c, n = g.shape
    member = node.T[:, :, None] == np.asarray(nodes)  # (N, C, M)
    w = np.concatenate([member * g.T[:, :, None], member], axis=1, dtype=np.float32)
    # float32 halves the memory traffic of the product; counts stay exact (< 2**24).
    h = np.asarray(onehot @ w.reshape(n, -1), dtype=np.float64)  # (D * B, 2 * C * M)
    h = h.reshape(d, n_bins, 2, c, len(nodes)).transpose(2, 3, 4, 0, 1)
    return h[0], h[1]


def _gather(a: np.ndarray, node: np.ndarray) -> np.ndarray:
    """``a[c, node[c, i]]`` for a (C, M) and node (C, N)."""
    return a.ravel()[node + (np.arange(a.shape[0]) * a.shape[1])[:, None]]


def _grow_level(g, node, bins, onehot, level, n_bins, parent, importance, rng):
    """Split every node of every tree once (the best least-squares split, if any; exact ties
    between features broken uniformly at random with ``rng``, see the module docstring).

    Args: g (C, N) targets of C trees; node (C, N) each sample's node at depth ``level``;
    bins (N, D); ``parent``: the (sums, counts) histograms of the level above, or None at the
    root (children's histograms are then computed for left children only and the right ones are
    the parent's minus the left's). Adds the impurity decreases to ``importance`` (C, D).
    Returns the samples' nodes one level down (a node that does not split sends all its samples
    left), the splits (feature, bin, made) as (C, M) arrays and this level's histograms.
    """
    c, n = g.shape
    d, m = bins.shape[1], 2**level
    if parent is None:
        s, cnt = _histograms(g, node, onehot, [0], d, n_bins)
    else:
        sl, nl = _histograms(g, node, onehot, np.arange(0, m, 2), d, n_bins)
        s = np.stack([sl, parent[0] - sl], axis=2).reshape(c, m, d, n_bins)
        cnt = np.stack([nl, parent[1] - nl], axis=2).reshape(c, m, d, n_bins)
    sl, nl = np.cumsum(s, -1)[..., :-1], np.cumsum(cnt, -1)[..., :-1]
    st, nt = s[:, :, :1].sum(-1, keepdims=True), cnt[:, :, :1].sum(-1, keepdims=True)
    sr, nr = st - sl, nt - nl
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = sl**2 / nl + sr**2 / nr - st**2 / nt
    gain = np.where((nl > 0.5) & (nr > 0.5), gain, -np.inf)  # (C, M, D, B - 1)
    thr = gain.argmax(-1)  # (C, M, D): each feature's best bin; ties: the lowest threshold
    feat_gain = np.take_along_axis(gain, thr[..., None], -1)[..., 0]
    best_gain = feat_gain.max(-1)  # (C, M)
    # Among the features tied at the maximum, a uniformly random one (sklearn's random feature
    # order per node); an untied maximum is the only candidate, so it is chosen as before.
    tied = feat_gain == best_gain[..., None]
    feat = np.where(tied, rng.random(tied.shape), -1.0).argmax(-1)
    thr = np.take_along_axis(thr, feat[..., None], -1)[..., 0]
    split = np.isfinite(best_gain) & (best_gain > 0)
    # Impurity decrease weighted by the node's share of the samples (sklearn's importances).
    rows = np.repeat(np.arange(c), m)
    np.add.at(importance, (rows, feat.ravel()), np.where(split, best_gain, 0).ravel() / n)
    splits = (feat, thr, split)
    return _route(node, bins, *splits), splits, (s, cnt)


def _route(node, bins, feat, thr, split):
    """Move samples (bins (N, D)) one level down trees whose splits are (C, M) arrays."""
    above = bins[np.arange(bins.shape[0]), _gather(feat, node)] > _gather(thr, node)
    return 2 * node + (_gather(split, node) & above)


def _leaf_values(g, p, node, n_leaves, factor):
    """Newton step per leaf: factor * sum(g) / sum(p (1 - p)), (C, L); 0 where the sum is ~0."""
    c = g.shape[0]
    key = (node + np.arange(c)[:, None] * n_leaves).ravel()
    num = np.bincount(key, weights=g.ravel(), minlength=c * n_leaves).reshape(c, n_leaves)
    hess = (p * (1 - p)).ravel()
    den = np.bincount(key, weights=hess, minlength=c * n_leaves).reshape(c, n_leaves)
    ok = np.abs(den) >= _TINY
    return np.where(ok, factor[:, None] * num / np.where(ok, den, 1.0), 0.0)


def gbt_importance(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_stages: int = 100,
    max_depth: int = 3,
    learning_rate: float = 0.1,
    n_bins: int = 256,
    random_state: int | np.random.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Boosted-tree importances (D, K) and test accuracies (K,) of codes x (N, D) for each of the
    K factors y (N, K) (class labels), all factors fitted at once. ``random_state`` seeds the
    breaking of exact ties between features. See the module docstring."""
    rng = np.random.default_rng(random_state)
    x, x_test = np.asarray(x, np.float64), np.asarray(x_test, np.float64)
    y, y_test = np.asarray(y), np.asarray(y_test)
    thresholds = bin_thresholds(x, n_bins)
    # Bins per feature: at least 2, so that codes whose every dimension is constant (no
    # threshold anywhere: a collapsed encoder) give trees that never split, not an empty argmax.
    b = max(1, *(len(t) for t in thresholds)) + 1
    bins, bins_test = apply_bins(x, thresholds), apply_bins(x_test, thresholds)
    onehot_bins = bin_matrix(bins, b)
    groups, onehot, raw0 = _targets(y)
    c, n, d = onehot.shape[1], len(x), x.shape[1]
    factor = np.concatenate([np.full(s, 1.0 if s == 1 else (s - 1) / s) for s in groups.sizes])
    raw = np.tile(raw0, (n, 1))
    raw_test = np.tile(raw0, (len(x_test), 1))
    importance = np.zeros((c, d))
    n_relevant = np.zeros(c)
    for _ in range(n_stages):
        p = _probabilities(raw, groups)
        g = (onehot - p).T  # (C, N): negative gradients, one regression target per tree
        node = np.zeros((c, n), dtype=np.int64)
        node_test = np.zeros((c, len(x_test)), dtype=np.int64)
        stage_imp = np.zeros((c, d))
        root_split, hist = None, None
        for level in range(max_depth):
            node, splits, hist = _grow_level(
                g, node, bins, onehot_bins, level, b, hist, stage_imp, rng
            )
            node_test = _route(node_test, bins_test, *splits)
            root_split = splits[2][:, 0] if level == 0 else root_split
        leaves = _leaf_values(g, p.T, node, 2**max_depth, factor)
        raw += learning_rate * _gather(leaves, node).T
        raw_test += learning_rate * _gather(leaves, node_test).T
        importance += stage_imp
        n_relevant += root_split
    return _per_factor(importance, n_relevant, groups, raw_test, y_test)


def _per_factor(importance, n_relevant, groups, raw_test, y_test):
    """Sum the class trees of each factor into normalised importances and test accuracy."""
    k = len(groups.sizes)
    imp = np.zeros((importance.shape[1], k))
    acc = np.zeros(k)
    layout = zip(groups.offsets, groups.sizes, groups.classes, strict=True)
    for f, (o, s, labels) in enumerate(layout):
        trees = n_relevant[o : o + s].sum()
        total = importance[o : o + s].sum(axis=0) / max(trees, 1)
        imp[:, f] = total / total.sum() if total.sum() > 0 else 0.0
        r = raw_test[:, o : o + s]
        pred = labels[(r[:, 0] > 0).astype(int)] if s == 1 else labels[r.argmax(axis=1)]
        acc[f] = float(np.mean(pred == y_test[:, f]))
    return imp, acc
