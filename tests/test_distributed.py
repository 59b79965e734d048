"""Data-parallel training: 2 gloo processes launched by torchrun take the steps of one process
with the same global batch, only rank 0 writes, and a run resumes with another process count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from disvae.errors import UserError
from disvae.training.distributed import Dist, check_batch


def write_mnist(root: Path, n: int = 96) -> None:
    """Tiny MNIST IDX files (magic 2051/2049, big-endian sizes): blobs with labels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    cy, cx = rng.uniform(8, 20, (2, n, 1, 1))
    imgs = (np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18) * 255).astype(np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for name, magic, arr in (("train-images-idx3-ubyte", 2051, imgs),
                             ("train-labels-idx1-ubyte", 2049, labels)):  # fmt: skip
        head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        (root / name).write_bytes(head + arr.tobytes())


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _train(args: list[str], procs: int = 1) -> subprocess.CompletedProcess:
    if procs == 1:
        cmd = [sys.executable, "-m", "disvae", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", "-m", "disvae", "train"]  # fmt: skip
    # Its own session, so that a hang leaves no worker behind: torchrun's workers outlive it.
    with subprocess.Popen(cmd + args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as p:  # fmt: skip
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            out, err = p.communicate()
            pytest.fail(f"{' '.join(cmd)} hung for 240 s; its stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _assert_same_training(b: torch.Tensor, a: torch.Tensor, name: str) -> None:
    """Weights of the same steps on 1 and on 2 processes: equal up to summation order. Adam
    divides each gradient by its own running scale, so for a weight whose gradient is ~0 that
    rounding can move the update by a good part of the learning rate (1e-3): a few such weights
    may differ by ~1e-4 after 6 steps, while a wrong share or average moves most of them."""
    off = (b - a).abs() > 1e-5 + 1e-4 * a.abs()
    assert off.float().mean() <= 0.001, f"{name}: {int(off.sum())} of {off.numel()} differ"
    torch.testing.assert_close(b, a, rtol=0, atol=3e-4, msg=name)


def _weights(run: Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(run / "model.safetensors").items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_mnist(root)
    return root


def _args(mnist: Path, out: Path, steps: int) -> list[str]:
    return ["--dataset", "mnist", "--data-path", str(mnist), "--loss", "betaH",
            "--batch-size", "16", "--steps", str(steps), "--log-every", "2",
            "--checkpoint-every", "3", "--lr", "1e-3", "--out", str(out), "--no-progress",
            "--device", "cpu", "--set", "snapshot_every=0"]  # fmt: skip


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_processes_equal_one_and_resume_with_one(mnist, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    r = _train(_args(mnist, single, 6))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _train(_args(mnist, multi, 3), procs=2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("training betaH for 3 steps") == 1  # rank 0 alone says it
    # rank 0 alone wrote the log: one line per logged step, not two
    steps = [json.loads(x)["step"] for x in (multi / "train_log.jsonl").read_text().splitlines()]
    assert steps == [2, 3]
    # 3 steps on 2 processes, then 3 more on 1 process, equal 6 steps on 1 process
    r = _train(["--resume", str(multi), "--steps", "6", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(single), _weights(multi)
    assert a.keys() == b.keys()
    for k in a:
        _assert_same_training(b[k], a[k], k)
    la = (single / "train_log.jsonl").read_text().splitlines()
    lb = (multi / "train_log.jsonl").read_text().splitlines()
    assert json.loads(la[0])["loss"] == pytest.approx(json.loads(lb[0])["loss"], rel=1e-5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_batch_that_does_not_divide_is_a_clear_error(mnist, tmp_path):
    r = _train([*_args(mnist, tmp_path / "odd", 2), "--batch-size", "15"], procs=2)
    assert r.returncode != 0
    assert "must divide among the 2 processes" in r.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_refusal_of_rank_0_alone_stops_every_rank_with_one_line(mnist, tmp_path):
    """The run directory's checks happen on rank 0 (an --out that holds a run, the run's lock):
    the other ranks learn of its refusal and stop with one line too, not on a closed socket."""
    from disvae.cli import main

    run = tmp_path / "r"
    assert main(["train", *_args(mnist, run, 2)]) == 0  # in-process: only the refusal is torchrun's
    before = sorted(p.name for p in run.iterdir())
    r = _train(_args(mnist, run, 2), procs=2)
    assert r.returncode != 0
    assert "holds a run already" in r.stderr
    assert "rank 0 refused the run" in r.stderr  # rank 1's line
    assert "Connection closed" not in r.stderr and "gloo" not in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == before


def test_shares_cover_the_batch_without_overlap():
    batch = torch.arange(12)
    parts = [Dist(rank=r, world=3).share(batch) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    assert Dist().share(batch) is batch
    with pytest.raises(UserError, match="multiple of 4"):
        check_batch(Dist(rank=0, world=4), 30)
    check_batch(Dist(rank=0, world=4), 32)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_factor_vae_on_two_processes_equals_one(mnist, tmp_path):
    """The discriminator's "product of marginals" batch permutes each dimension across the whole
    global second batch (gathered from the ranks) with the global batch's noise, as one process
    does (Kim & Mnih 2018, Alg. 2): permuting each rank's share alone, with every rank drawing
    the same noise, trained another discriminator."""
    runs = {}
    for procs in (1, 2):
        run = runs[procs] = tmp_path / f"factor{procs}"
        args = _args(mnist, run, 4)
        args[args.index("betaH")] = "factor"
        r = _train(args, procs=procs)
        assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(x) for x in (runs[2] / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [2, 4] and "disc_loss" in log[-1]
    for prefix in ("disc", "model"):
        a, b = _weights(runs[1], prefix), _weights(runs[2], prefix)
        assert a and a.keys() == b.keys()
        for k in a:
            _assert_same_training(b[k], a[k], k)


def _collectives_worker(rank: int, store_path: str, out_path: str) -> None:
    """One of 2 gloo processes: what `main_says` and `average_gradients` give on each rank."""
    import torch.distributed as td

    torch.set_num_threads(1)
    td.init_process_group("gloo", store=td.FileStore(store_path, 2), rank=rank, world_size=2)
    dist = Dist(rank=rank, world=2)
    # Rank 0 sees no checkpoint yet; rank 1 already sees the one rank 0 just wrote.
    says = dist.main_says(rank == 0, torch.device("cpu"))
    lin = torch.nn.Linear(2, 1)
    grads = {}
    for case, term in (("finite", 1.5), ("nan_on_rank1", float("nan") if rank else 2.0)):
        lin.zero_grad()
        lin.weight.grad = torch.full((1, 2), float(rank + 1))
        lin.bias.grad = torch.tensor([10.0 * (rank + 1)])
        dist.average_gradients(lin, {"loss": torch.tensor(term), "kl": torch.ones(3)})
        grads[case] = [lin.weight.grad.tolist(), lin.bias.grad.tolist()]
    td.destroy_process_group()
    Path(out_path).write_text(json.dumps({"says": says, "grads": grads}))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_ranks_agree_on_file_decisions_and_on_skipped_steps(tmp_path):
    """Rank 0 decides what depends on the run's files (a rank that looks later may see what rank
    0 has written meanwhile: the step-0 checkpoint race that hung 2-process runs), and a
    non-finite loss term on one rank makes every rank's gradients non-finite."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [
        ctx.Process(target=_collectives_worker, args=(r, str(tmp_path / "store"), str(outs[r])))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [json.loads(o.read_text()) for o in outs]
    for res in results:
        assert res["says"] is True
        # mean of 1 and 2, of 10 and 20; the finite terms' 0.0 changes nothing
        assert res["grads"]["finite"] == [[[1.5, 1.5]], [15.0]]
        w, b = res["grads"]["nan_on_rank1"]
        assert all(np.isnan(v) for v in [*w[0], *b])


def test_bad_collective_timeout_is_one_line_and_exit_2(mnist, tmp_path):
    env = dict(_env(), WORLD_SIZE="2", RANK="0", DISVAE_DIST_TIMEOUT="abc")
    cmd = [sys.executable, "-m", "disvae", "train", *_args(mnist, tmp_path / "t", 2)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISVAE_DIST_TIMEOUT" in lines[0] and "positive" in lines[0]
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e400", ""])
def test_every_bad_collective_timeout_is_refused(value, monkeypatch):
    """(the process above shows how a refusal reaches the command line, once)"""
    from disvae.training.distributed import _timeout

    monkeypatch.setenv("DISVAE_DIST_TIMEOUT", value)
    with pytest.raises(UserError, match=r"DISVAE_DIST_TIMEOUT=.* must be a positive, finite"):
        _timeout()


def test_collective_timeout_default_and_value(monkeypatch):
    from datetime import timedelta

    from disvae.training.distributed import _timeout

    monkeypatch.delenv("DISVAE_DIST_TIMEOUT", raising=False)
    assert _timeout() == timedelta(hours=1)
    monkeypatch.setenv("DISVAE_DIST_TIMEOUT", "90.5")
    assert _timeout() == timedelta(seconds=90.5)


@pytest.mark.parametrize(
    "requested, backend, device",
    [("auto", "nccl", "cuda:1"), ("cuda", "nccl", "cuda:1"), ("cpu", "gloo", "cpu"),
     ("mps", "gloo", "mps")],
)  # fmt: skip
def test_backend_and_device_follow_the_requested_device(monkeypatch, requested, backend, device):
    # A machine with GPUs where the run asks for another device (e.g. `torchrun --nproc-per-node
    # 2 -m disvae train --device cpu`) must not join over NCCL (which has no CPU collectives)
    # nor pin rank 1 to a GPU that may not exist. Decided without a GPU: CUDA is faked.
    from disvae.training import distributed

    joined, pinned = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda b, **kw: joined.append(b))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist = distributed.from_environment(requested)
    assert (dist.rank, dist.world) == (1, 2)
    assert joined == [backend] and pinned == ([1] if backend == "nccl" else [])
    assert distributed.device_for(dist, requested) == device


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK is 2, not in 0..1"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' must be an integer >= 0"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1' must be an integer >= 0"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' must be an integer"),
        ({"RANK": "1"}, "RANK=1 but WORLD_SIZE is not set"),  # (trained, writing, as rank 0)
        ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK=1 but WORLD_SIZE is 1"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR expected, but not set"),
    ],
)
def test_inconsistent_torchrun_variables_are_user_errors(monkeypatch, env, needle):
    """Variables set by hand or half-inherited gave a KeyError/ValueError traceback, or let a
    process that is not rank 0 of one train alone and write the run."""
    from disvae.training import distributed

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(UserError, match="torchrun") as e:
        distributed.from_environment("cpu")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("env", [{}, {"RANK": "0"}, {"WORLD_SIZE": "1", "RANK": "0"}])
def test_one_process_variables_are_a_plain_run(monkeypatch, env):
    from disvae.training import distributed

    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.from_environment("cpu") == Dist()


def test_world_size_without_rank_is_one_line_and_exit_2(mnist, tmp_path):
    env = dict(_env(), WORLD_SIZE="2")
    cmd = [sys.executable, "-m", "disvae", "train", *_args(mnist, tmp_path / "t", 2)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "RANK is not set" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "t").exists()
