"""Time every metric on the full dSprites from saved (synthetic) codes, beside a reference.

    python benchmarks/metrics.py                 # all metrics, synthetic codes
    python benchmarks/metrics.py --skip dci      # leave out the slow ones
    python benchmarks/metrics.py --run runs/b1   # also time `evaluate --metrics all` on a run

Codes come from a quick synthetic encoder: every image's factor classes, scaled, a random
rotation of half of them, plus noise; they are computed for all 737,280 images at once and then
indexed. The reference for MIG is a per-factor Python loop over
`sklearn.metrics.mutual_info_score`, on the same binned codes; the ratio is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from disvae import metrics


def synthetic_codes(classes: np.ndarray, sizes: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = classes / (np.array(sizes) - 1)
    q, _ = np.linalg.qr(rng.standard_normal((2, 2)))
    f[:, 3:5] = f[:, 3:5] @ q  # entangle posX and posY
    extra = rng.standard_normal((len(f), 5))
    return np.concatenate([f, extra], axis=1) + 0.05 * rng.standard_normal((len(f), 10))


def reference_mig(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> float:
    from sklearn.metrics import mutual_info_score

    binned = metrics.discretize(codes, n_bins)
    gaps = []
    for k in range(factors.shape[1]):
        mi = sorted(mutual_info_score(binned[:, j], factors[:, k]) for j in range(codes.shape[1]))
        h = mutual_info_score(factors[:, k], factors[:, k])
        gaps.append((mi[-1] - mi[-2]) / h)
    return float(np.mean(gaps))


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip", default="", help="comma-separated metrics to leave out")
    p.add_argument("--run", help="a run directory: also time evaluate --metrics all on it")
    p.add_argument(
        "--sklearn-dci",
        action="store_true",
        help="also time DCI with scikit-learn's GradientBoostingClassifier (about 5 minutes)",
    )
    args = p.parse_args()
    skip = set(args.skip.split(",")) | (set() if args.sklearn_dci else {"dci_sklearn"})
    from disvae.data import load_dataset

    data, t = timed(load_dataset, "dsprites")
    print(f"load dSprites: {t:.1f}s ({len(data)} images)")
    classes = data.classes_of(np.arange(len(data)))
    codes = synthetic_codes(classes, data.factor_sizes)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(data), 15_000, replace=False)
    c, f = codes[idx], classes[idx]
    logvar = np.full(c[:10_000].shape, np.log(0.05**2))
    rows: list[tuple[str, object, float]] = []
    m, t = timed(metrics.mig, codes, classes)
    ref, tr = timed(reference_mig, codes, classes)
    print(f"MIG on all {len(data)} codes: {m:.4f} in {t:.2f}s; sklearn loop {ref:.4f} in "
          f"{tr:.2f}s; ratio {tr / t:.1f}x")  # fmt: skip
    m, t = timed(metrics.mig, c[:10_000], f[:10_000])
    ref, tr = timed(reference_mig, c[:10_000], f[:10_000])
    print(f"MIG on 10,000 codes: {t:.3f}s; sklearn loop {tr:.3f}s; ratio {tr / t:.1f}x")
    todo = {
        "sap": lambda: metrics.sap(c, f),
        "dci": lambda: metrics.dci(c, f),
        "dci_lasso": lambda: metrics.dci(c, f, model="lasso"),
        "dci_sklearn": lambda: metrics.dci(c, f, model="sklearn"),
        "modularity": lambda: metrics.modularity(c, f),
        "mig_chen": lambda: metrics.mig_chen(c[:10_000], logvar, f[:10_000], None),
        "aam": lambda: metrics.aam(c[:10_000], logvar, f[:10_000], None),
    }
    lookup = metrics.CachedEncoder(data, None)  # codes by index: no image is encoded
    lookup._codes, lookup._done[:] = codes.astype(np.float32), True
    todo["beta_vae"] = lambda: metrics.beta_vae_score(data, lookup)
    todo["factor_vae"] = lambda: metrics.factor_vae_score(data, lookup)
    for name, fn in todo.items():
        if name in skip:
            continue
        out, t = timed(fn)
        rows.append((name, out, t))
        print(f"{name:<12} {t:7.2f}s  {out}", flush=True)
    times = {name: t for name, _, t in rows}
    if "dci" in times and "dci_sklearn" in times:
        print(
            f"DCI boosted trees: ours {times['dci']:.1f}s, scikit-learn "
            f"{times['dci_sklearn']:.1f}s; ratio {times['dci_sklearn'] / times['dci']:.1f}x"
        )
    if args.run:
        from disvae.evaluation import evaluate_metrics

        res, t = timed(evaluate_metrics, args.run, "all", data=data, device="cpu")
        print(f"evaluate --metrics all: {t:.1f}s, {res['protocol']['points_encoded']} images "
              f"encoded; per metric {res['protocol']['seconds']}")  # fmt: skip


if __name__ == "__main__":
    main()
