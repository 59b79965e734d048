"""FactorVAE's trainer step with its discriminator under the run's autocast (the default) against
the discriminator in fp32, interleaved in one process on the same trainer.

    python benchmarks/factor_disc_amp.py [--batch-size 64] [--steps 15] [--reps 5]
                                         [--device cpu] [--amp auto|bf16]

The model runs under the run's autocast in both columns; only the discriminator's forward
(`disvae.training.accel.Autocast`) differs. Images/s count both of FactorVAE's batches. Where
``amp`` resolves to fp32 (a CPU without bf16 units) the two columns run the same code.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from disvae import config as C
from disvae.data import load_dataset
from disvae.training.loop import Trainer
from disvae.utils import tune_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16"))
    args = parser.parse_args()
    tune_allocator()
    # cuda_graph=false: the timings swap the discriminator's forward between steps, which a
    # recorded step (the CUDA default) would not call again
    overrides = ["loss=factor", f"batch_size={args.batch_size}", "snapshot_every=0",
                 f"device={args.device}", f"amp={args.amp}", "cuda_graph=false"]  # fmt: skip
    cfg = C.resolve(C.apply_overrides(C.RunConfig(), overrides))
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, tmp, load_dataset("dsprites"))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device "
              f"{t.device}, model amp {t.accel.amp_dtype}, batch {args.batch_size}")  # fmt: skip
        columns = {"discriminator under autocast": t.disc_forward, "discriminator fp32": t.disc}
        rates: dict[str, list[float]] = {name: [] for name in columns}
        for _ in range(3):  # warm-up
            t.train_step()
        for _ in range(args.reps):
            for name, forward in columns.items():
                t.disc_forward = t.ctx.discriminator = forward
                t.train_step()
                if t.device.type == "cuda":
                    torch.cuda.synchronize(t.device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    t.train_step()
                if t.device.type == "cuda":
                    torch.cuda.synchronize(t.device)
                images = args.steps * 2 * args.batch_size
                rates[name].append(images / (time.perf_counter() - start))
    for name, values in rates.items():
        spread = (max(values) - min(values)) / 2
        print(f"{name:30s} {statistics.median(values):8.0f} ± {spread:.0f} images/s")
    first, second = (statistics.median(v) for v in rates.values())
    print(f"ratio {first / second:.2f}")


if __name__ == "__main__":
    main()
