"""Every metric on synthetic representations of the dSprites factor grid (the known answers).

    python benchmarks/metrics_synthetic.py            # 10,000 points, seed 0
    python benchmarks/metrics_synthetic.py --n 20000 --seed 1

Cases (the ones `tests/test_metrics*.py` check, at the full protocol's sample sizes):

- ``aligned``: code j = factor j's class scaled to [0, 1], plus N(0, 0.01²) noise;
- ``rotated``: the aligned codes times a random orthogonal matrix;
- ``noise``: standard normal codes, independent of the factors;
- ``duplicated``: aligned plus a copy of the x-position dimension (that factor's MIG gap ~0);
- ``constant``: aligned plus a dimension that never changes.

The "images" are 1 x 5 pixels holding the factor classes, and the encoder of each case maps them to
its codes, so the β-VAE and FactorVAE scores run their own sampling protocol on the whole grid
(737,280 points). Chen's MIG and AAM use each code as a posterior mean with standard deviation 0.01.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from disvae import metrics
from disvae.data.base import DatasetInfo
from disvae.data.ground_truth import GridDataset

SIZES = (3, 6, 40, 32, 32)
NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")


def grid() -> GridDataset:
    n = int(np.prod(SIZES))
    classes = np.stack(np.unravel_index(np.arange(n), SIZES), axis=1)
    images = classes.astype(np.uint8).reshape(n, 1, 1, len(SIZES))
    values = [np.arange(s, dtype=float) for s in SIZES]
    return GridDataset(images, DatasetInfo("grid", (1, 1, len(SIZES))), False, list(NAMES), values)


def case_codes(kind: str, classes: np.ndarray, rng: np.random.Generator, q: np.ndarray):
    if kind == "noise":
        return rng.standard_normal(classes.shape)
    a = classes / (np.array(SIZES) - 1) + 0.01 * rng.standard_normal(classes.shape)
    if kind == "rotated":
        return a @ q
    if kind == "duplicated":
        return np.concatenate([a, a[:, 3:4]], axis=1)
    if kind == "constant":
        return np.concatenate([a, np.full((len(a), 1), 0.5)], axis=1)
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="points for the array metrics")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = grid()
    rng = np.random.default_rng(args.seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(SIZES), len(SIZES))))
    factors = np.stack([rng.integers(0, s, args.n) for s in SIZES], axis=1)
    cases = ("aligned", "rotated", "noise", "duplicated", "constant")
    cols = ("mig", "mig_chen", "aam", "sap", "dci_d", "dci_c", "dci_i", "mod", "expl", "bvae",
            "fvae")  # fmt: skip
    print(f"{'case':<11}" + "".join(f"{c:>9}" for c in cols) + f"{'time s':>9}")
    for kind in cases:
        t0 = time.perf_counter()
        crng = np.random.default_rng(args.seed + 1)
        codes = case_codes(kind, factors, crng, q)
        logvar = np.full_like(codes, 2 * np.log(0.01))
        dci = metrics.dci(codes, factors, rng=args.seed)
        mod = metrics.modularity(codes, factors)
        erng = np.random.default_rng(args.seed + 2)

        def encode(images: torch.Tensor, kind=kind, erng=erng) -> np.ndarray:
            classes = np.rint(images.reshape(len(images), -1).numpy() * 255)  # pixels in [0, 1]
            return case_codes(kind, classes, erng, q)

        row = [
            metrics.mig(codes, factors),
            metrics.mig_chen(codes, logvar, factors, rng=args.seed),
            metrics.aam(codes, logvar, factors, rng=args.seed),
            metrics.sap(codes, factors, rng=args.seed),
            dci["disentanglement"],
            dci["completeness"],
            dci["informativeness"],
            mod["modularity"],
            mod["explicitness"],
            metrics.beta_vae_score(data, encode, rng=args.seed)["eval_accuracy"],
            metrics.factor_vae_score(data, encode, rng=args.seed)["eval_accuracy"],
        ]
        dt = time.perf_counter() - t0
        print(f"{kind:<11}" + "".join(f"{v:>9.3f}" for v in row) + f"{dt:>9.1f}", flush=True)
    print(f"\n{args.n} points, seed {args.seed}; β-VAE / FactorVAE: 10,000 train / 5,000 eval "
          f"batches of 64 on the full grid (chance {1 / len(SIZES):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
