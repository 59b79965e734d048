"""Run a sweep: prepare its directory, pick what is left to do, execute it on a backend.

Local backend: each run is a separate worker process (``python -m disvae.sweep.worker SLOT``),
at most ``workers`` at a time, started by a thread pool in this process. A separate process per
run (rather than a `ProcessPoolExecutor`) means a crash, a segfault or the OOM killer ends only
that run: the pool is not broken, the exit code is recorded as the run's error, and every run
gets a fresh interpreter (no CUDA or thread state carried from one run to the next).

Ray backend: each run is a Ray task calling `disvae.sweep.worker.execute_run`; the sweep
directory must be on a file system every node sees.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disvae import runs
from disvae.errors import UserError
from disvae.sweep import state as S
from disvae.sweep.results import write_results
from disvae.sweep.spec import RunSpec, Sweep, load_sweep
from disvae.utils import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("sweeps/out")


@dataclass
class SweepSummary:
    """What a call to `run_sweep` did: the names it executed and the final status of each run."""

    out: Path
    ran: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)


def run_sweep(
    sweep: str | Path | Sweep,
    out: str | Path | None = None,
    *,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    overrides: list[str] | None = None,
    retry_failed: bool = False,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    progress: bool | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep into ``out`` (default ``sweeps/out/<name>``).

    Runs already done are skipped, half-trained ones resume from their checkpoint, failed ones
    are re-run only with ``retry_failed``. ``sweep_results.csv`` is rewritten as runs finish.
    """
    if backend not in ("local", "ray"):
        raise UserError(f"unknown backend {backend!r}; choose local or ray")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    check_resources(cpus_per_run, gpus_per_run)
    sw, out = _load(sweep, overrides, out)
    out = Path(out) if out is not None else DEFAULT_ROOT / sw.name
    todo = prepare(sw, out, retry_failed)
    summary = SweepSummary(out.resolve())
    t0 = time.perf_counter()
    log.info("sweep %s: %d runs, %d to run, into %s", sw.name, len(sw.runs), len(todo), out)
    tracker = _Tracker(out, len(todo), progress)
    try:
        with _terminate_as_interrupt():  # `kill PID` stops the runs as Ctrl-C does
            if todo and backend == "local":
                _run_local(todo, workers, tracker.finished)
            elif todo:
                _run_ray(todo, address, cpus_per_run, gpus_per_run, tracker.finished)
    finally:
        tracker.close()
        write_results(out)
    summary.ran = [p.name for p in todo]
    summary.status = {p.name: S.read_state(p)["status"] for p in S.slots(out)}
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


class Terminated(KeyboardInterrupt):
    """SIGTERM to the sweep: handled as Ctrl-C (the runs checkpoint and are left pending)."""

    signum = signal.SIGTERM


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` in the main thread for the block (Python's default
    would end the sweep at once and leave its workers training as orphans)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def prepare(sw: Sweep, out: Path, retry_failed: bool = False) -> list[Path]:
    """Write the sweep's directory (new runs' specs, the sweep file) and return the slots to
    execute. A run whose saved spec differs from the file's is an error naming it; an ``out``
    that is not new, empty or this sweep's own directory is refused (see `check_out`)."""
    out = check_out(out, sw)
    root = out / S.RUNS
    fresh = not S.is_sweep_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / S.META).is_file():
            atomic_write_json(out / S.META, {"name": sw.name, "source": sw.source})
        if fresh:  # the sweep file first: from here on the directory is recognised as a sweep's
            atomic_write_bytes(out / S.SWEEP_FILE, sw.text.encode())
        root.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to --out {str(out)!r}: {e.strerror}") from None
    todo = []
    for index, run in enumerate(sw.runs):
        slot = root / run.name
        spec = dict(run.to_dict(), index=index)
        old = S.read_json(slot / S.SPEC)
        if old and _comparable(old) != _comparable(spec):
            raise UserError(
                f"{sw.source}: run {run.name} in {str(out)!r} was made with a different config; "
                "choose another --out for a changed sweep"
            )
        slot.mkdir(exist_ok=True)
        if not old or old.get("index") != index:
            atomic_write_json(slot / S.SPEC, spec)
        state = S.read_state(slot)
        if state["status"] == "done" and _finished(run, slot / S.RUN):
            continue
        if state["status"] == "failed" and not retry_failed:
            continue
        if state["status"] == "running" and S.SlotLock.busy(slot):
            log.warning("run %s is being executed by another process; left to it", run.name)
            continue
        if state["status"] != "pending" or not (slot / S.STATE).is_file():
            S.write_state(slot, status="pending")
        todo.append(slot)
    atomic_write_bytes(out / S.SWEEP_FILE, sw.text.encode())
    write_results(out)
    return todo


def _finished(run: RunSpec, directory: Path) -> bool:
    """Whether a run has its final weights and the evaluation's files its spec asks for (a
    missing or damaged metrics.json is evaluated again on resume, not left empty)."""
    if not (directory / runs.MODEL).is_file():
        return False
    ev = run.evaluate
    wanted = [("metrics.json", "metrics")] if ev.metrics else []
    if ev.heldout and run.config.data.val_fraction > 0:
        wanted.append((runs.EVAL_LOSSES, "losses"))
    return all(isinstance(S.read_json(directory / f).get(k), dict) for f, k in wanted)


def check_out(out: str | Path, sw: Sweep) -> Path:
    """Refuse an ``out`` that is a file, a disvae training run, a non-empty directory of other
    files or another sweep's directory: only a new or empty directory, or this sweep's own (to
    resume it), is written into. Reads only."""
    out = Path(out).expanduser()
    where = f"--out {str(out)!r}"
    if out.exists() and not out.is_dir():
        raise UserError(
            f"{where} is a file; choose a directory (a new or empty one, or the sweep's own "
            "directory to resume it)"
        )
    if not out.is_dir():
        return out
    if S.is_sweep_dir(out) or (out / S.META).is_file():
        other = _sweep_name(out)
        if other is not None and other != sw.name:
            raise UserError(
                f"{where} is the directory of sweep {other!r}, not {sw.name!r}; choose another "
                "--out (a sweep resumes only into its own directory)"
            )
        return out
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return out
    if (out / runs.CONFIG).is_file() or (out / runs.MODEL).is_file():
        raise UserError(
            f"{where} is a disvae training run, not a sweep directory; choose a new or empty "
            "--out for the sweep (the run is left as it is)"
        )
    raise UserError(
        f"{where} is not empty ({entries[0]!r}, ...) and is not a sweep directory (no "
        f"{S.SWEEP_FILE}); choose a new or empty --out, or the sweep's own directory to resume it"
    )


def _sweep_name(out: Path) -> str | None:
    """The name of the sweep in directory ``out``, when it is known."""
    name = S.read_json(out / S.META).get("name")
    if isinstance(name, str):
        return name
    try:  # a sweep directory made before sweep.json: the name its sweep file declares, if any
        from disvae.sweep.spec import tomllib

        name = tomllib.loads((out / S.SWEEP_FILE).read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return name if isinstance(name, str) else None


def check_resources(cpus_per_run: float, gpus_per_run: float) -> None:
    """Refuse what a run cannot reserve: CPUs must be > 0, GPUs >= 0 (fractions allowed)."""
    for flag, value, low, ok in (
        ("--cpus-per-run", cpus_per_run, "> 0 (e.g. 1 or 0.5)", lambda v: v > 0),
        ("--gpus-per-run", gpus_per_run, ">= 0 (e.g. 0, 1 or 0.5)", lambda v: v >= 0),
    ):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and ok(value)):
            raise UserError(f"{flag} must be a number {low}, got {value}")


# Train settings that change how fast a run goes, not what it trains; `--resume` accepts new
# values of them (config.RESUMABLE_KEYS), and a sweep made by an earlier disvae may hold another
# default (cuda_graph was false before "auto", None, became the default).
_SPEED_KEYS = ("device", "amp", "compile", "compile_mode", "channels_last", "nan_check",
               "deterministic", "cuda_graph")  # fmt: skip


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec without what may change on resume (the order, the device and speed settings)."""
    d = json.loads(json.dumps({k: v for k, v in spec.items() if k != "index"}))
    for key in _SPEED_KEYS:
        d["config"]["train"].pop(key, None)
    return d


# --------------------------------------------------------------------------- local processes


def _worker_env(workers: int) -> dict[str, str]:
    """The workers' environment: CPU threads split between them unless the user set them."""
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def _run_local(slots: list[Path], workers: int, finished: Callable[[Path], None]) -> None:
    env = _worker_env(workers)
    live: set[subprocess.Popen] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def execute(slot: Path) -> Path:
        if stop.is_set():
            return slot
        with open(slot / S.WORKER_LOG, "ab") as logf:
            cmd = [sys.executable, "-m", "disvae.sweep.worker", str(slot.resolve())]
            with lock:  # (a stop comes before this worker starts, or finds it in `live`)
                if stop.is_set():
                    return slot
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
                live.add(proc)
            rc = proc.wait()
            with lock:
                live.discard(proc)
        _record_exit(slot, rc, interrupted=stop.is_set())
        return slot

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep")
    try:
        futures = [pool.submit(execute, slot) for slot in slots]
        for future in as_completed(futures):
            finished(future.result())
    except BaseException:
        stop.set()
        with lock:
            for proc in live:
                proc.send_signal(signal.SIGINT)  # the trainer checkpoints and stops
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _record_exit(slot: Path, rc: int, interrupted: bool = False) -> None:
    """A worker that died without recording its end (killed, out of memory) fails its run; so
    does one that died before it started the run (its state still ``pending``: an import or a
    spec it could not read), unless the sweep was stopping it."""
    state = S.read_state(slot)
    if rc == 3 or state["status"] in ("done", "failed"):
        return  # (3: another process holds the run)
    if state["status"] == "pending" and (rc in (0, 130) or interrupted):
        return  # interrupted: it stays pending and is run again on resume
    how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
    if rc in (-9, 137):
        how += " (out of memory?)"
    tail = _log_tail(slot / S.WORKER_LOG)
    now = time.time()
    duration = round(S.seconds_spent(state) + now - state.get("started", now), 2)
    error = f"worker process died: {how}{tail}"
    S.write_state(slot, status="failed", error=error, finished=now, duration_s=duration)


def _log_tail(path: Path) -> str:
    try:
        lines = [
            ln
            for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip()
        ]
    except OSError:
        return ""
    return f"; last output: {lines[-1].strip()[:200]}" if lines else ""


# --------------------------------------------------------------------------- Ray


def import_ray():
    """The ``ray`` module, or a `UserError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray backend needs Ray: pip install 'disvae[ray]' (or pip install ray)"
        ) from None
    return ray


def _init_ray(ray, address: str | None) -> None:
    """Start a local Ray (no address) or join a cluster, or raise a one-line `UserError`; an
    address ``host:port`` that does not answer is refused at once (Ray would retry for many
    minutes)."""
    where = f"join the Ray cluster at --address {address}" if address else "start a local Ray"
    host, sep, port = (address or "").rpartition(":")
    if sep and host and port.isdigit() and "://" not in address:
        import socket

        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_S).close()
        except OSError as e:
            raise UserError(
                f"cannot {where}: nothing answers there ({e.strerror or e}); check the address "
                "(`ray status` on the head node), or leave out --address for a local Ray"
            ) from None
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError, ...
        from disvae.sweep.worker import one_line

        raise UserError(
            f"cannot {where}: {one_line(e)}"
            + ("; start one with `ray start --head`" if address == "auto" else "")
        ) from None


RAY_CONNECT_S = 10.0  # how long a --address host:port may take to accept a connection
RAY_STOP_WAIT_S = 120.0  # how long an interrupted Ray sweep waits for its runs' checkpoints


def _run_ray(
    slots: list[Path],
    address: str | None,
    cpus: float,
    gpus: float,
    finished: Callable[[Path], None],
) -> None:
    ray = import_ray()
    from disvae.sweep.worker import execute_run_logged, one_line

    try:
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute_run_logged)
    except (TypeError, ValueError) as e:  # what Ray refuses beyond `check_resources`
        raise UserError(f"--cpus-per-run {cpus} / --gpus-per-run {gpus}: Ray: {e}") from None
    own = not ray.is_initialized()
    if own:
        _init_ray(ray, address)
    refs = {task.remote(str(slot.resolve())): slot for slot in slots}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the task's process died
                    S.write_state(refs[ref], status="failed", error=f"ray task: {one_line(e)}")
                finished(refs[ref])
    except BaseException:
        for ref in pending:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: the trainer checkpoints
        # Shutting Ray down now would kill the tasks before their checkpoint is written.
        stopped, _ = ray.wait(pending, num_returns=len(pending), timeout=RAY_STOP_WAIT_S)
        for ref in stopped:
            finished(refs[ref])
        raise
    finally:
        if own:
            ray.shutdown()


# --------------------------------------------------------------------------- progress


class _Tracker:
    """Progress as runs finish: a bar on a TTY, a log line otherwise; results rewritten."""

    def __init__(self, out: Path, total: int, progress: bool | None) -> None:
        self.out, self.total, self.n = out, total, 0
        if progress is None:
            progress = sys.stderr.isatty()
        self.bar = None
        if progress and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="run", desc="sweep", dynamic_ncols=True)
        self.counts = dict.fromkeys(S.STATUSES, 0)
        self.lock = threading.Lock()

    def finished(self, slot: Path) -> None:
        with self.lock:
            self.n += 1
            state = S.read_state(slot)
            self.counts[state["status"]] = self.counts.get(state["status"], 0) + 1
            write_results(self.out)
            line = f"[{self.n}/{self.total}] {state['status']} {slot.name}"
            if state.get("duration_s") is not None:
                line += f" ({state['duration_s']:.0f}s)"
            if state.get("error"):
                line += f": {state['error']}"
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(done=self.counts["done"], failed=self.counts["failed"])
                self.bar.write(line)
            else:
                log.info("%s", line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- status


def find_out(sweep_or_dir: str | Path, out: str | Path | None = None) -> Path:
    """The output directory of a sweep given by file, shipped name or directory."""
    if out is not None:
        return Path(out)
    if S.is_sweep_dir(sweep_or_dir):
        return Path(sweep_or_dir)
    return DEFAULT_ROOT / load_sweep(sweep_or_dir).name


def sweep_status(out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{status: [state of each run]}`` of a sweep directory (a run's state has its name)."""
    out = Path(out)
    if not S.is_sweep_dir(out):
        raise UserError(f"{str(out)!r} is not a sweep directory (no {S.SWEEP_FILE}); run it first")
    result: dict[str, list[dict[str, Any]]] = {s: [] for s in S.STATUSES}
    for slot in S.slots(out):
        state = dict(S.read_state(slot), name=slot.name)
        if state["status"] == "running" and not S.SlotLock.busy(slot):
            state["status"], state["error"] = "pending", "interrupted (no process holds it)"
        result.setdefault(state["status"], []).append(state)
    return result


def expand_only(
    sweep: str | Path, overrides: list[str] | None = None, out: str | Path | None = None
) -> list[RunSpec]:
    """The runs a sweep file expands into (checked), without running anything; with ``out``,
    also checks that the sweep could be written there (`check_out`, the default
    ``sweeps/out/<name>`` when ``out`` is None), which a run would do."""
    sw, out = _load(sweep, overrides, out)
    check_out(out if out is not None else DEFAULT_ROOT / sw.name, sw)
    return sw.runs


def _load(
    sweep: str | Path | Sweep, overrides: list[str] | None, out: str | Path | None
) -> tuple[Sweep, str | Path | None]:
    """``(sweep, out)``: a sweep file or shipped name as given; a sweep directory stands for
    the sweep file it keeps (its copy), with itself as ``out`` (continuing it)."""
    from dataclasses import replace

    if isinstance(sweep, Sweep):
        return sweep, out
    if not S.is_sweep_dir(sweep):
        return load_sweep(sweep, overrides), out
    directory = Path(sweep)
    if out is not None and Path(out).resolve() != directory.resolve():
        raise UserError(
            f"{str(directory)!r} is a sweep directory: it continues in place; leave out --out "
            "(or give the same)"
        )
    sw = load_sweep(directory / S.SWEEP_FILE, overrides)
    name = _sweep_name(directory)  # (the copy is sweep.toml: its stem is not the name)
    return (replace(sw, name=name) if name else sw), directory
