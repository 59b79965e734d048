"""Start-up: how long `disvae --help` takes, and how soon the first training step comes.

    python benchmarks/startup.py [--reps 5]

Each command runs ``--reps`` times as a fresh process (the dSprites cache is built first, so
its one-time rendering is not counted). For `disvae train` the figure is the trainer's own log
line, "first step done X s after the process started" (interpreter start, imports, data, model,
the step-0 checkpoint and the first step). For comparison it also times ``import torch`` alone
and ``import torch._dynamo``, which the first call of any ``torch.optim`` optimizer brings in
even when nothing is compiled (the trainer's `FusedAdam` avoids it).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DISVAE = [sys.executable, "-m", "disvae"]


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def first_step(out: Path) -> float:
    cmd = [*DISVAE, "train", "--dataset", "dsprites", "--loss", "betaB", "--steps", "1",
           "--no-progress", "--overwrite", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    found = re.search(r"first step done ([0-9.]+) s", res.stderr + res.stdout)
    if not found:
        raise SystemExit("the trainer did not log its first step:\n" + res.stderr[-2000:])
    return float(found.group(1))


def show(label: str, values: list[float]) -> None:
    print(f"{label:<44}{statistics.median(values):>7.2f} s  (min {min(values):.2f}, "
          f"max {max(values):.2f}, {len(values)} runs)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    from disvae.data import load_dataset

    load_dataset("dsprites")  # the cache exists from here on
    py = sys.executable
    runs: dict[str, list[float]] = {k: [] for k in ("help", "torch", "dynamo", "first")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):  # interleaved, so a busy moment hits every column alike
            runs["help"].append(wall([*DISVAE, "--help"]))
            runs["torch"].append(wall([py, "-c", "import torch"]))
            runs["dynamo"].append(wall([py, "-c", "import torch._dynamo"]))
            runs["first"].append(first_step(Path(tmp) / "run"))
    show("disvae --help", runs["help"])
    show("python -c 'import torch'", runs["torch"])
    show("python -c 'import torch._dynamo'", runs["dynamo"])
    show("disvae train: first step after process start", runs["first"])


if __name__ == "__main__":
    main()
