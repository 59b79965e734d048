"""Where a training step's time goes: torch.profiler over the trainer's own steps.

    python benchmarks/profile_step.py                       # betaB, batch 64, CPU, tuned allocator
    python benchmarks/profile_step.py --allocator default   # glibc as it comes (the "before")
    python benchmarks/profile_step.py --loss factor --steps 40 --top 20

Prints the step's wall time split into phases (data gather, forward, loss, backward, optimizer,
bookkeeping; from `record_function` ranges around the trainer's own calls) and the operators with
the most self time. The allocator matters on the CPU: glibc returns every large freed buffer to the
kernel, so each layer's activations are page-faulted in again every step (see
`disvae.utils.tune_allocator`); compare the two `--allocator` settings.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from disvae import config as C
from disvae.data import load_dataset
from disvae.losses import compute_loss
from disvae.training.loop import Trainer

PHASES = ("data", "forward", "loss", "backward+optimizer", "bookkeeping")


def instrumented_step(t: Trainer) -> None:
    """`Trainer.train_step` for the VAE, cut into named ranges (the discriminator's update of
    FactorVAE runs inside "backward+optimizer" through `train_step` itself)."""
    if t.disc is not None:
        with record_function("backward+optimizer"):
            t.accumulate(t.train_step())
        return
    t.set_lr()
    with record_function("data"):
        x = t.next_batch()
    with record_function("forward"):
        out = t.forward(x, t.noise())
    with record_function("loss"):
        result = compute_loss(out, x, t.step, t.cfg.loss, t.ctx)
    with record_function("backward+optimizer"):
        t._update(t.opt, t.model, result, "grad_norm")
    with record_function("bookkeeping"):
        t.accumulate(dict(result.terms))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loss", default="betaB")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--allocator", default="tuned", choices=("tuned", "default"))
    p.add_argument("--top", type=int, default=12, help="operators listed")
    args = p.parse_args()
    if args.allocator == "tuned":
        from disvae.utils import tune_allocator

        tune_allocator()
    data = load_dataset("dsprites")
    cfg = C.apply_overrides(
        C.RunConfig(),
        [f"loss={args.loss}", f"batch_size={args.batch_size}", "snapshot_every=0",
         f"device={args.device!r}", "cuda_graph=false"],  # the step's parts, not one graph launch
    )  # fmt: skip
    cfg = C.resolve(cfg, data.info.default_rec_dist)
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, Path(tmp), data)
        for _ in range(5):  # warm-up: first-touch allocations, oneDNN primitive caches
            instrumented_step(t)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if "cuda" in args.device else [])
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(args.steps):
                instrumented_step(t)
            if "cuda" in args.device:
                torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    n_img = args.steps * args.batch_size * t.batches_per_step
    print(f"{args.loss}, batch {args.batch_size}, {args.device}, allocator {args.allocator}, "
          f"{torch.get_num_threads()} threads: {wall / args.steps * 1e3:.1f} ms/step, "
          f"{n_img / wall:.0f} images/s under the profiler")  # fmt: skip
    events = {e.key: e for e in prof.key_averages()}
    total = sum(events[k].cpu_time_total for k in PHASES if k in events)
    print("\nphase                  ms/step   share")
    for k in PHASES:
        if k in events:
            ms = events[k].cpu_time_total / 1e3 / args.steps
            print(f"{k:<20}{ms:>10.2f}{events[k].cpu_time_total / total:>8.0%}")
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
