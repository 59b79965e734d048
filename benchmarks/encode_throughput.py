"""Encoding throughput: how fast `disvae evaluate --metrics` turns dSprites into codes.

    python benchmarks/encode_throughput.py [--batch-sizes 200,1000] [--images 20000]
        [--reps 3] [--device cpu|cuda] [--amp auto|none|bf16]

The Burgess encoder (random weights: speed does not depend on them) encodes ``--images``
random dSprites images in three ways, timed in interleaved repetitions (images/s, median and
half the spread):

- limit:   the encoder's forward on one fixed in-memory batch, as the metrics run it
           (inference mode, channels-last, the ``--amp`` autocast): no data path at all;
- disvae:  `disvae.evaluation._encode_points`, the function `compute_metrics` encodes with
           (batches gathered by index from the bit-packed array, which `disvae evaluate`
           keeps on the device, codes copied to numpy);
- plain:   the common loop: a per-item `Dataset` and a `DataLoader`, the model in eval mode
           and NCHW under `torch.no_grad`, ``.cpu().numpy()`` per batch.

glibc's allocator is tuned for all three (process-wide, as `disvae evaluate` does). On CUDA
every timing starts and ends with a synchronisation, and ``auto`` is bf16 autocast.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from disvae import config as C
from disvae.data import load_dataset
from disvae.evaluation import _autocast, _encode_points, encode_amp, inference_copy
from disvae.models import build_model
from disvae.utils import tune_allocator
from train_throughput import ItemDataset, _sync


@torch.inference_mode()
def time_limit(model, x: torch.Tensor, n_images: int, amp: str) -> float:
    device = x.device
    batches = max(n_images // len(x), 1)
    with _autocast(amp, device):
        model.encode(x)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        with _autocast(amp, device):
            model.encode(x)
    _sync(device)
    return batches * len(x) / (time.perf_counter() - t0)


def time_disvae(model, data, index: np.ndarray, batch: int, amp: str) -> float:
    device = next(model.parameters()).device
    _encode_points(model, data, index[:batch], None, batch, lambda n: None, amp)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    mu, _, _ = _encode_points(model, data, index, None, batch, lambda n: None, amp)
    _sync(device)
    return len(mu) / (time.perf_counter() - t0)


def time_plain(model, packed: np.ndarray, index: np.ndarray, batch: int) -> float:
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(ItemDataset(packed, index), batch_size=batch)
    with torch.no_grad():
        model.encode(next(iter(loader)).to(device))  # warm-up, untimed
        _sync(device)
        t0 = time.perf_counter()
        for x in loader:
            mu, _ = model.encode(x.to(device))
            mu.cpu().numpy()
    _sync(device)
    return len(index) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="200,1000")
    parser.add_argument("--images", type=int, default=20_000, help="images per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="auto", choices=C.AMP_MODES)
    args = parser.parse_args()
    tune_allocator()
    device = torch.device(args.device)
    amp = encode_amp(args.amp, device)
    data = load_dataset("dsprites")
    packed = data._images.numpy()  # the plain loop reads this copy on the host, per item
    data.to(device)  # as `disvae evaluate` does: the bit-packed images resident on the device
    torch.manual_seed(0)
    model = build_model(C.ModelConfig(), data.image_shape).to(device).eval()
    fast = inference_copy(model)  # what compute_metrics encodes with
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    index = np.random.default_rng(0).choice(len(data), size=args.images, replace=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"amp {amp}, {args.images} images per repetition")  # fmt: skip
    cols = ("limit", "disvae", "plain")
    print(f"{'batch':>6}" + "".join(f"{c:>11}" for c in cols)
          + f"{'disvae/limit':>14}{'disvae/plain':>14}   (images/s)")  # fmt: skip
    for batch in map(int, args.batch_sizes.split(",")):
        x = data.batch(torch.as_tensor(index[:batch])).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        runs: dict[str, list[float]] = {c: [] for c in cols}
        for _ in range(args.reps):
            runs["limit"].append(time_limit(fast, x, args.images, amp))
            runs["disvae"].append(time_disvae(fast, data, index, batch, amp))
            runs["plain"].append(time_plain(plain, packed, index, batch))
        med = {k: statistics.median(v) for k, v in runs.items()}
        half = {k: (max(v) - min(v)) / 2 for k, v in runs.items()}
        row = "".join(" " + f"{med[k]:.0f}±{half[k]:.0f}".rjust(10) for k in cols)
        print(f"{batch:>6}{row}{med['disvae'] / med['limit']:>14.3f}"
              f"{med['disvae'] / med['plain']:>14.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
