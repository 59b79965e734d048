"""Shared fixtures: a small dSprites subset rendered by our renderer, registered as a dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from disvae.data import DATASETS, ArrayDataset, DatasetInfo

TINY_N = 2048

# ``amp = "auto"`` means bf16 on a CPU with bf16 units (`accel.cpu_has_bf16`) and fp32 on others:
# the tests, whose tolerances compare fp32 runs, run fp32 on every CI machine (child processes
# too; set for the session, so that no test's ``monkeypatch.undo()`` lifts it). The bf16 path is
# tested where a test asks for it (``amp=bf16``, or this variable set to 1 in that test).
os.environ["DISVAE_CPU_BF16"] = "0"

# Property tests (tests/test_properties*.py) run the same generated inputs on every run (CI
# reproducible), without per-example deadlines (metrics take their time on a loaded machine);
# each test sets its own max_examples.
settings.register_profile(
    "disvae",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("disvae")


def damaged_bytes(raw: bytes, cut: int | None, edits: list[tuple[int, int]]) -> bytes:
    """``raw`` with byte ``pos % len`` set to ``value`` for each edit, then cut at ``cut``
    (the damaged files of the property tests: `from conftest import damaged_bytes`)."""
    out = bytearray(raw)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    if cut is not None:
        out = out[: cut % (len(out) + 1)]
    return bytes(out)


def make_tiny_dsprites(n: int = TINY_N, seed: int = 0) -> ArrayDataset:
    """``n`` dSprites images at random factor classes, bit-packed like the full dataset."""
    from disvae.data.dsprites import render

    rng = np.random.default_rng(seed)
    classes = np.stack([rng.integers(0, s, n) for s in (3, 6, 40, 32, 32)], axis=1)
    images = render(classes)
    packed = np.packbits(images.reshape(n, -1), axis=1)
    return ArrayDataset(packed, DatasetInfo("dsprites_tiny", (1, 64, 64), "bernoulli"), packed=True)


_CACHE: dict[int, np.ndarray] = {}


@DATASETS.register("dsprites_tiny")
def _load_tiny(path: str | None) -> ArrayDataset:
    """A test-only dataset: the CLI tests train on it in-process (path is ignored)."""
    if TINY_N not in _CACHE:
        _CACHE[TINY_N] = make_tiny_dsprites()._images.numpy().copy()
    return ArrayDataset(
        _CACHE[TINY_N].copy(), DatasetInfo("dsprites_tiny", (1, 64, 64), "bernoulli"), packed=True
    )


@pytest.fixture
def tiny_data() -> ArrayDataset:
    return _load_tiny(None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's dataset cache."""
    monkeypatch.setenv("DISVAE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _deterministic_cudnn(monkeypatch):
    """On a GPU, the tests that compare two runs bit for bit (resume, validation) need cuDNN's
    deterministic algorithms, which every trainer then respects (`accel.configure_backends`:
    no autotuner, which could pick a non-deterministic kernel). No effect on the CPU."""
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


@pytest.fixture(autouse=True)
def _no_stale_cli_log_handler():
    """`disvae.cli.main` gives the ``disvae`` logger a handler on the sys.stderr of its moment: a
    test's captured stream, closed after it. Removed after each test, so that a later test's
    library logging does not write "--- Logging error ---" tracebacks into its captured output."""
    import logging

    yield
    logger = logging.getLogger("disvae")
    for h in [h for h in logger.handlers if getattr(h, "_disvae_cli", False)]:
        logger.removeHandler(h)
