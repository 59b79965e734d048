"""A run killed with SIGKILL (or stopped with SIGTERM) at random moments and resumed ends with
the same bytes as an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from disvae.training.checkpoint import list_checkpoints

TESTS = Path(__file__).resolve().parent
RUNNER = (
    "import sys; sys.path.insert(0, {tests!r}); import conftest; "
    "from disvae.cli import main; sys.exit(main(sys.argv[1:]))"
)
ARGS = ["--dataset", "dsprites_tiny", "--loss", "factor", "--batch-size", "16", "--steps", "30",
        "--log-every", "2", "--checkpoint-every", "3", "--snapshot-every", "0", "--no-progress",
        "-q"]  # fmt: skip


def _start(argv: list[str], env: dict) -> subprocess.Popen:
    code = RUNNER.format(tests=str(TESTS))
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _lines(run: Path) -> int:
    log = run / "train_log.jsonl"
    return log.read_text().count("\n") if log.exists() else 0


def _log(run: Path) -> list[dict]:
    records = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "img_per_s"} for r in records]


@pytest.mark.slow
def test_sigkill_and_sigterm_at_random_moments_then_resume_is_exact(tmp_path):
    env = dict(os.environ, DISVAE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    whole = tmp_path / "whole"
    # (the uninterrupted run trains beside the first interrupted one: one thread each)
    done = _start(["train", *ARGS, "--out", str(whole)], env)

    rng = random.Random(0)
    run = tmp_path / "killed"
    argv = ["train", *ARGS, "--out", str(run)]
    interruptions = []
    for target, sig in ((2, signal.SIGKILL), (6, signal.SIGKILL), (9, signal.SIGTERM),
                        (12, signal.SIGKILL)):  # fmt: skip
        proc = _start(argv, env)
        deadline = time.monotonic() + 300
        while _lines(run) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))  # anywhere in a step, a log write or a checkpoint
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        interruptions.append((target, sig.name, code))
        if sig == signal.SIGTERM:
            # stopped with a checkpoint, and not a success: 128 + SIGTERM
            assert code == 128 + signal.SIGTERM
            # the summary names the step of its checkpoint, not of the last log line
            said = re.search(r"stopped at step (\d+)", proc.stdout.read())
            newest = list_checkpoints(run / "checkpoints")[-1][0]
            assert said and int(said[1]) == newest, said
        argv = ["train", "--resume", str(run), "--no-progress", "-q"]
    assert done.wait(timeout=600) == 0, done.stderr.read()
    proc = _start(argv, env)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    assert (run / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert _log(run) == _log(whole), interruptions
    steps = [r["step"] for r in _log(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 30
