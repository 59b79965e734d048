"""Training throughput: disvae's trainer against the compute limit and a plain PyTorch loop.

    python benchmarks/train_throughput.py [--objectives vae,betaH,betaB,factor,btcvae]
        [--batch-sizes 64,256] [--steps 30] [--reps 3] [--device cpu|cuda]
        [--amp auto|none|bf16] [--compile] [--compile-mode MODE] [--channels-last auto|on|off]
        [--cuda-graph auto|on|off] [--no-plain]

For each objective and batch size, four ways of training the Burgess model on the built-in
dSprites are timed in interleaved repetitions (median and spread of images/s; FactorVAE counts
both of its batches):

- limit:   disvae's own step (forward, objective, backward, Adam; the discriminator's step for
           FactorVAE) on one fixed in-memory batch: no data loading at all;
- disvae:  the body of `Trainer.run`, as `disvae train` runs it (batches gathered by index
           from the bit-packed array, terms accumulated on the device, a log line every 100
           steps; checkpoints, amortised over thousands of steps, left out);
- plain:   the common loop: a `Dataset` whose `__getitem__` unpacks one image, a shuffling
           `DataLoader` (no workers), the same model and objective, `.item()` every step; run
           in this process, so it shares disvae's allocator setting (below);
- plain*:  the same plain loop in a child process that leaves glibc's allocator as it comes,
           i.e. what a plain PyTorch script gets. The child is started once per row and asked
           for one repetition at a time, so its repetitions interleave with the others.

The trainer runs with the speed settings given (by default those of `disvae train`: channels-
last, glibc's allocator told to keep freed buffers (`disvae.utils.tune_allocator`); on CUDA also
bf16 autocast, fused Adam, the sync-free non-finite check and the whole step recorded as one
CUDA graph, which the limit's step then is too); the plain loops always in fp32
eager mode, NCHW, plain Adam. On CUDA every timing starts and ends with a synchronisation.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from disvae import config as C
from disvae.data import load_dataset
from disvae.losses import compute_loss
from disvae.training.graph import GraphRecordingError
from disvae.training.logs import NullWriter
from disvae.training.loop import Trainer


def _trainer(name: str, batch: int, steps: int, data, args, out: Path) -> Trainer:
    compiled = args.compile or args.compile_mode != "default"  # a mode implies --compile
    speed = [f"amp={args.amp!r}", f"compile={str(compiled).lower()}",
             f"compile_mode={args.compile_mode!r}"]  # fmt: skip
    if args.channels_last != "auto":
        speed.append(f"channels_last={str(args.channels_last == 'on').lower()}")
    if args.cuda_graph != "auto":
        speed.append(f"cuda_graph={str(args.cuda_graph == 'on').lower()}")
    cfg = C.apply_overrides(
        C.RunConfig(),
        [f"loss={name}", f"batch_size={batch}", f"steps={steps}", "log_every=100",
         f"checkpoint_every={10**9}", "snapshot_every=0", f"device={args.device!r}", *speed],
    )  # fmt: skip
    cfg = C.resolve(cfg, data.info.default_rec_dist)
    return Trainer(cfg, out, data)


def _warm_up(t: Trainer) -> None:
    """Untimed steps: with ``--compile-mode reduce-overhead`` the first call of the compiled
    model only warms up and the CUDA graphs are recorded on the next ones; a recorded step
    (``--cuda-graph``, on by default on CUDA) is recorded after its warm-up steps (and again
    whenever the timing switches between the fixed batch and the real ones: `_rerecord`)."""
    graph = t.graph is not None and t.graph.enabled
    for _ in range(t.graph.WARMUP + 2 if graph else 3):
        t.train_step()


def _rerecord(t: Trainer) -> None:
    """Drop a recorded step: the limit's reads the fixed batch, the trainer's the gathers."""
    if t.graph is not None:
        t.graph.reset()


def time_limit(t: Trainer, steps: int) -> float:
    """Images/s of the trainer's step on one fixed batch (no data path)."""
    x = t.data.batch(t.stream.next(t.cfg.train.batch_size))
    real = t.data.batch
    t.data.batch = lambda index: x  # type: ignore[method-assign]
    _rerecord(t)
    try:
        _warm_up(t)
        _sync(t.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            t.train_step()
        _sync(t.device)
        dt = time.perf_counter() - t0
    finally:
        t.data.batch = real  # type: ignore[method-assign]
        _rerecord(t)
    return steps * t.cfg.train.batch_size * t.batches_per_step / dt


def time_trainer(t: Trainer, steps: int) -> float:
    """Images/s of the trainer's loop body: gather by index, step, accumulate the terms on the
    device; a log line (one host sync) every 100 steps as `Trainer.run` does. Checkpoints (every
    5,000 steps by default) are left out: they are amortised over thousands of steps."""
    writer = NullWriter()
    _warm_up(t)
    _sync(t.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        t.accumulate(t.train_step())
        t.step += 1
        if t.step % t.cfg.train.log_every == 0:
            t.flush_deferred()
            t.write_log(0.0, writer)
    _sync(t.device)
    return steps * t.cfg.train.batch_size * t.batches_per_step / (time.perf_counter() - t0)


class ItemDataset(torch.utils.data.Dataset):
    """The usual per-item dataset: unpack one bit-packed image in ``__getitem__``."""

    def __init__(self, packed: np.ndarray, indices: np.ndarray) -> None:
        self.packed, self.indices = packed, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        bits = np.unpackbits(self.packed[self.indices[i]])
        return torch.from_numpy(bits.reshape(1, 64, 64).astype(np.float32))


def time_plain(t: Trainer, steps: int, packed: np.ndarray) -> float:
    """Images/s of a plain DataLoader loop: copies of the trainer's model (and discriminator) in
    the default NCHW layout, plain Adam, the same objective."""
    import copy

    from disvae.losses import DISC_BETAS, LossContext

    batch = t.cfg.train.batch_size
    loader = torch.utils.data.DataLoader(
        ItemDataset(packed, t.train_idx), batch_size=batch, shuffle=True, drop_last=True
    )
    it = iter(loader)
    model = copy.deepcopy(t.model).to(memory_format=torch.contiguous_format)
    opt = torch.optim.Adam(model.parameters(), lr=t.cfg.train.lr)
    disc = copy.deepcopy(t.disc)
    disc_step = disc is not None
    if disc_step:
        disc_opt = torch.optim.Adam(disc.parameters(), lr=t.cfg.loss.lr_disc, betas=DISC_BETAS)
    ctx = LossContext(dataset_size=len(t.train_idx), discriminator=disc)
    t0 = None
    for i in range(steps + 1):
        if i == 1:
            _sync(t.device)
            t0 = time.perf_counter()
        x = next(it).to(t.device)
        out = model(x)
        result = compute_loss(out, x, t.step, t.cfg.loss, ctx)
        opt.zero_grad()
        result.total.backward()
        opt.step()
        if disc_step:
            from disvae.losses import discriminator_loss

            x2 = next(it).to(t.device)
            with torch.no_grad():
                z2 = model.sample(*model.encode(x2))
            d = discriminator_loss(disc, out.z, z2)
            disc_opt.zero_grad()
            d.total.backward()
            disc_opt.step()
            d.total.item()
        result.total.item()
    _sync(t.device)
    return steps * batch * t.batches_per_step / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainChild:
    """The plain loop of one row in a child process with glibc's allocator as it comes; each
    `rep()` asks it for one timed repetition (the child is set up once, outside the timings)."""

    def __init__(self, name: str, batch: int, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--child", "--objectives", name,
               "--batch-sizes", str(batch), "--steps", str(args.steps), "--device", args.device,
               "--amp", args.amp, "--channels-last", args.channels_last]  # fmt: skip
        env = dict(os.environ, DISVAE_MALLOC_TUNING="0")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True, bufsize=1)  # fmt: skip
        self._read()  # "ready": its set-up must not overlap the parent's timings

    def _read(self) -> str:
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the plain-loop child exited with code {self.proc.wait()}")
        return line

    def rep(self) -> float:
        assert self.proc.stdin
        self.proc.stdin.write("rep\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def child(args: argparse.Namespace, data, packed: np.ndarray) -> None:
    """Serve `PlainChild`: one plain-loop repetition per line read from stdin."""
    with tempfile.TemporaryDirectory() as tmp:
        t = _trainer(args.objectives, int(args.batch_sizes), 1, data, args, Path(tmp))
        print("ready", flush=True)
        for _ in sys.stdin:
            print(f"{time_plain(t, args.steps, packed):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", default="vae,betaH,betaB,factor,btcvae")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--steps", type=int, default=30, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="auto", choices=C.AMP_MODES)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--compile-mode", default="default", choices=C.COMPILE_MODES,
        help="torch.compile mode (implies --compile); reduce-overhead: CUDA graphs",
    )  # fmt: skip
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument(
        "--cuda-graph", default="auto", choices=("auto", "on", "off"),
        help="the trainer's whole step recorded as one CUDA graph (train.cuda_graph; auto: "
        "as `disvae train` decides, on for CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--no-plain", action="store_true",
        help="time only the limit and the trainer (the plain loops do not depend on the "
        "trainer's settings: a second run with other settings can skip them)",
    )  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = load_dataset("dsprites")
    packed = data._images.numpy()  # the bit-packed array the plain loop reads per item
    if args.child:
        return child(args, data, packed)
    from disvae.utils import tune_allocator

    tune_allocator()  # as `disvae train` does; process-wide, so the in-process plain loop too
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
        + (f" ({torch.cuda.get_device_name(args.device)})" if "cuda" in args.device else "")
    )
    cols = ("limit", "disvae", "plain", "plain*")
    head = f"{'objective':<9}{'batch':>6}" + "".join(f"{c:>10}" for c in cols)
    print(head + f"{'disvae/limit':>14}{'disvae/plain':>14}{'disvae/plain*':>15}"
          "   (images/s, median of reps ± half the spread)")  # fmt: skip
    shown = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.objectives.split(","):
            for batch in map(int, args.batch_sizes.split(",")):
                try:
                    shown = _row(name, batch, data, packed, args, Path(tmp), cols, shown)
                except GraphRecordingError as e:
                    # the process cannot go on with CUDA after a failed capture (graph.py)
                    print(f"{name:<9}{batch:>6}  failed: {e}; the remaining rows are not run")
                    return
                except Exception as e:  # noqa: BLE001 - one row's failure (say, out of memory)
                    first = (str(e).strip().splitlines() or [""])[0][:200]
                    print(f"{name:<9}{batch:>6}  failed: {type(e).__name__}: {first}", flush=True)
                gc.collect()  # the row's trainer (its graph, its buffers) before the next one


def _row(name, batch, data, packed, args, tmp: Path, cols, shown: bool) -> bool:
    """Times one objective at one batch size and prints its row; True once the settings line
    has been printed."""
    t = _trainer(name, batch, 1, data, args, tmp)
    if not shown:
        print("trainer settings:", t.accel.describe())
    plain_child = None if args.no_plain else PlainChild(name, batch, args)
    runs: dict[str, list[float]] = {c: [] for c in cols}
    try:
        for _ in range(args.reps):
            runs["limit"].append(time_limit(t, args.steps))
            runs["disvae"].append(time_trainer(t, args.steps))
            if plain_child is not None:
                runs["plain"].append(time_plain(t, args.steps, packed))
                runs["plain*"].append(plain_child.rep())
    finally:
        if plain_child is not None:
            plain_child.close()
    nan = float("nan")
    med = {k: statistics.median(v) if v else nan for k, v in runs.items()}
    spread = {k: (max(v) - min(v)) / 2 if v else nan for k, v in runs.items()}
    row = "".join(" " + f"{med[k]:.0f}±{spread[k]:.0f}".rjust(9) for k in cols)
    print(f"{name:<9}{batch:>6}{row}{med['disvae'] / med['limit']:>14.3f}"
          f"{med['disvae'] / med['plain']:>14.3f}"
          f"{med['disvae'] / med['plain*']:>15.3f}", flush=True)  # fmt: skip
    return True


if __name__ == "__main__":
    main()
