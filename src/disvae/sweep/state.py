"""The sweep directory on disk: one slot per run with its spec, state and run directory.

OUT/sweep.toml               the sweep file as it was run (read back by --status and report)
OUT/sweep.json               the sweep's name and source (a resume must be of the same sweep)
OUT/sweep_results.csv        one row per run (see `disvae.sweep.results`)
OUT/report.html              the sweep's page (``disvae report OUT``)
OUT/runs/NAME/spec.json      the run's name, method, swept values, seed, config, evaluation
OUT/runs/NAME/state.json     status (pending | running | done | failed), error, duration, attempts
OUT/runs/NAME/worker.log     what the worker process printed
OUT/runs/NAME/run/           the disvae run directory (config.json, weights, metrics.json, ...)
OUT/runs/NAME/.lock          held (flock) by the process executing the run

Every JSON file is written atomically (temporary file + rename), so a killed sweep never
leaves half a state file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from disvae.errors import UserError
from disvae.utils import atomic_write_json, flock_held

SWEEP_FILE = "sweep.toml"
META = "sweep.json"
RESULTS = "sweep_results.csv"
RUNS = "runs"
SPEC = "spec.json"
STATE = "state.json"
WORKER_LOG = "worker.log"
RUN = "run"
LOCK = ".lock"
STATUSES = ("pending", "running", "done", "failed")


def is_sweep_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / SWEEP_FILE).is_file() and (p / RUNS).is_dir()


def slots(out: str | Path) -> list[Path]:
    """The run slots of a sweep directory, in the order of the sweep file."""
    root = Path(out) / RUNS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / SPEC).is_file()]

    def order(slot: Path) -> tuple[int, int, str]:
        # (a damaged spec without an integer index goes last, by name: not first in the
        # directory's own arbitrary order, and no TypeError comparing a text index with 0)
        index = read_json(slot / SPEC).get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return (0, index, slot.name)
        return (1, 0, slot.name)

    return sorted(found, key=order)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable, corrupt or not an
    object (``[]``, ``null``: a damaged file must not stop the sweep or its results)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def read_state(slot: Path) -> dict[str, Any]:
    """The state of a run; ``{"status": "pending"}`` when none was written yet."""
    state = read_json(slot / STATE)
    state.setdefault("status", "pending")
    state.setdefault("attempts", 0)
    return state


def write_state(slot: Path, **changes: Any) -> dict[str, Any]:
    """Update the run's state file (atomically) and return the new state."""
    state = read_state(slot)
    state.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_json(slot / STATE, state)
    return state


def seconds_spent(state: dict[str, Any]) -> float:
    """The ``duration_s`` the run's earlier attempts add up to (0 before its first)."""
    spent = state.get("duration_s")
    return float(spent) if isinstance(spent, (int, float)) and not isinstance(spent, bool) else 0.0


class SlotLock:
    """An exclusive ``flock`` on a run slot while a process executes it (dropped by the kernel
    when the process dies, however it dies); `busy` tells whether another process holds it."""

    def __init__(self, slot: Path) -> None:
        self.slot = slot
        self._fd: int | None = None

    def __enter__(self) -> SlotLock:
        self._fd = os.open(self.slot / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock (Windows): unlocked
            pass
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise UserError(f"run {self.slot.name} is being executed by another process") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def busy(slot: Path) -> bool:
        return flock_held(slot / LOCK)


def host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
