"""Execute one run of a sweep: train (resuming a half-trained run), then evaluate.

`execute_run` is what every backend calls: a local worker process runs
``python -m disvae.sweep.worker SLOT``, a Ray task calls it directly. Whatever happens is
recorded in the slot's state file; a failure never propagates to the sweep.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from disvae import runs
from disvae.errors import UserError
from disvae.sweep import state as S
from disvae.sweep.spec import RunSpec

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on a signal before its last step (it checkpointed; resume continues)."""


def execute_run(slot: str | Path) -> dict[str, Any]:
    """Train and evaluate the run in ``slot``; return its final state (also on disk).

    A run with final weights is only evaluated again; a run with a checkpoint resumes from it;
    anything else starts afresh. Exceptions are caught and recorded as ``failed`` with a one-line
    message (the traceback goes to the log); an interrupt leaves the run ``pending``.
    """
    slot = Path(slot)
    with S.SlotLock(slot):
        spec = RunSpec.from_dict(S.read_json(slot / S.SPEC))
        before = S.read_state(slot)
        attempts = before["attempts"] + 1
        spent = S.seconds_spent(before)  # duration_s adds up every attempt's time
        t0 = time.time()
        S.write_state(slot, status="running", stage="train", error=None, attempts=attempts,
                      started=t0, host=S.host(), resumed_from_step=None)  # fmt: skip
        changes: dict[str, Any] = {}
        try:
            for module in spec.imports:
                importlib.import_module(module)
            changes["resumed_from_step"] = _train(spec, slot / S.RUN)
            S.write_state(slot, stage="evaluate", **changes)
            _evaluate(spec, slot / S.RUN)
            changes.update(status="done", stage=None)
        except (KeyboardInterrupt, Interrupted) as e:
            changes.update(status="pending", error=f"interrupted: {e}".rstrip(": "))
        except Exception as e:  # noqa: BLE001 - any failure is the run's, never the sweep's
            log.error("run %s failed:\n%s", spec.name, traceback.format_exc())
            changes.update(status="failed", error=one_line(e))
        return S.write_state(slot, finished=time.time(),
                             duration_s=round(spent + time.time() - t0, 2),
                             **changes)  # fmt: skip


def one_line(e: BaseException) -> str:
    """A one-line message: a `UserError`'s text, else ``Type: text`` (first line)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, UserError) else f"{type(e).__name__}: {text}".rstrip(": ")


def _train(spec: RunSpec, run: Path) -> int | None:
    """Train into ``run``; the step resumed from, or None when training started afresh."""
    from disvae.training import train
    from disvae.training.checkpoint import list_checkpoints

    if (run / runs.MODEL).is_file():
        return None  # trained already; only the evaluation is missing
    done = list_checkpoints(run / runs.CHECKPOINTS) if (run / runs.CONFIG).is_file() else []
    if done and done[-1][0] > 0:
        log.info("resuming %s from step %d", spec.name, done[-1][0])
        train(runs.read_config(run), run, resume=True, progress=False)
        resumed: int | None = done[-1][0]
    else:
        if run.exists():
            shutil.rmtree(run)  # a start that never checkpointed: begin again
        train(spec.config, run, progress=False)
        resumed = None
    if not (run / runs.MODEL).is_file():
        raise Interrupted("training stopped before its last step")
    return resumed


def _evaluate(spec: RunSpec, run: Path) -> None:
    from disvae.evaluation import evaluate, evaluate_metrics

    ev, device = spec.evaluate, spec.config.train.device
    if ev.heldout and spec.config.data.val_fraction > 0:
        evaluate(run, batch_size=ev.batch_size, device=device)
    if ev.metrics:
        evaluate_metrics(
            run, list(ev.metrics), n_samples=ev.n_samples, n_test=ev.n_test, seed=ev.seed,
            dci_model=ev.dci_model, batch_size=ev.batch_size, device=device,
        )  # fmt: skip


LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def execute_run_logged(slot: str | Path) -> dict[str, Any]:
    """`execute_run` with its log, warnings and output appended to the slot's worker.log, as a
    local worker's are (a Ray task's would otherwise stay in Ray's own session logs)."""
    import contextlib
    import warnings

    slot = Path(slot)
    root = logging.getLogger()
    with open(slot / S.WORKER_LOG, "a", encoding="utf-8") as f:
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                with warnings.catch_warnings():
                    logging.captureWarnings(True)
                    try:
                        return execute_run(slot)
                    finally:
                        logging.captureWarnings(False)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """``python -m disvae.sweep.worker SLOT``: exit 0 done, 1 failed, 130 interrupted."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m disvae.sweep.worker SLOT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        state = execute_run(args[0])
    except UserError as e:  # the slot is locked by another process
        print(f"disvae sweep worker: {e}", file=sys.stderr)
        return 3
    return {"done": 0, "failed": 1}.get(state["status"], 130)


if __name__ == "__main__":
    raise SystemExit(main())
