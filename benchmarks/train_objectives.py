"""Train every objective for a few hundred steps on the built-in dSprites; print img/s and losses.

    python benchmarks/train_objectives.py [--steps 400] [--batch-size 64] [--device cpu]

img/s is measured over the second half of the steps (after warm-up) by the trainer's own log;
FactorVAE counts both of its batches. The loss columns are the trainer's averages over the last
logged window.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from disvae import config as C
from disvae.data import load_dataset
from disvae.training import train

OBJECTIVES = ("vae", "betaH", "betaB", "factor", "btcvae")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    t0 = time.perf_counter()
    data = load_dataset("dsprites")
    print(f"dSprites loaded in {time.perf_counter() - t0:.1f}s ({len(data)} images)")
    half = max(1, args.steps // 2)
    print(f"{'loss':<8}{'img/s':>9}{'loss@end':>12}{'recon':>10}{'kl':>8}  (step {args.steps})")
    for name in OBJECTIVES:
        cfg = C.apply_overrides(
            C.RunConfig(),
            [f"loss={name}", f"steps={args.steps}", f"batch_size={args.batch_size}",
             f"log_every={half}", f"checkpoint_every={args.steps}", f"device={args.device!r}"],
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            run = train(cfg, Path(tmp) / name, data=data, progress=False)
            last = json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])
        print(
            f"{name:<8}{last['img_per_s']:>9.0f}{last['loss']:>12.2f}{last['recon']:>10.2f}"
            f"{last['kl']:>8.2f}"
        )


if __name__ == "__main__":
    main()
