"""The training log: JSON lines, TensorBoard scalars and the progress bar's summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from disvae.utils import atomic_write_bytes, strict_json


def open_tensorboard(out: Path, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return NullWriter()
    return SummaryWriter(log_dir=str(out), purge_step=purge_step)


class NullWriter:  # pragma: no cover
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def postfix(record: dict[str, Any]) -> dict[str, str]:
    keys = ("loss", "recon", "kl", "tc", "capacity", "disc_acc", "img_per_s")
    return {k.replace("img_per_s", "img/s"): f"{record[k]:.4g}" for k in keys if k in record}


class ProgressLines:
    """Progress as plain log lines, for when there is no progress bar (stderr is a file: a
    batch job's log, ``nohup``, a notebook): at a log step, at most one line per ``every_s``
    seconds, and always at the last step, e.g.
    ``step 200/300 (67%)  loss=596 recon=592.1 kl=3.9 img/s=523  eta 0:00:15``.
    ``clock``: seconds (`time.monotonic`; a test passes its own)."""

    def __init__(self, total: int, start: int, every_s: float = 10.0, clock: Any = None) -> None:
        import time

        self.total, self.every_s = total, every_s
        self.clock = clock or time.monotonic
        self.t0, self.step0 = self.clock(), start
        self.t_last: float | None = None

    def line(self, record: dict[str, Any], last: bool) -> str | None:
        """The line for a log step's ``record``, or None when the last one is too recent."""
        now = self.clock()
        if not last and self.t_last is not None and now - self.t_last < self.every_s:
            return None
        self.t_last = now
        step = record["step"]
        parts = [f"step {step}/{self.total} ({100 * step // max(self.total, 1)}%)"]
        parts.append(" ".join(f"{k}={v}" for k, v in postfix(record).items()))
        rate = (step - self.step0) / max(now - self.t0, 1e-9)  # steps/s since the start
        if not last and step > self.step0:
            parts.append(f"eta {_duration((self.total - step) / rate)}")
        return "  ".join(p for p in parts if p)


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resume starts from), a last
    line torn by a crash, and lines that are not JSON (e.g. garbled bytes)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(kept).encode())


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a crash can tear only this last line; `truncate_log` drops it).
    Strict JSON, as jq and JavaScript read it: an undefined metric logged by ``--eval-every``
    (NaN: DCI's disentanglement with one factor) is written as null."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")


def write_scalars(writer: Any, record: dict[str, Any], step: int) -> None:
    """Every float of ``record`` as ``train/NAME`` (names with a group, ``val/loss`` or
    ``metrics/mig``, as they are); each list (kl_per_dim) as ``NAME/zD``."""
    for k, v in record.items():
        if isinstance(v, float) and k != "lr":
            writer.add_scalar(k if "/" in k else f"train/{k}", v, step)
        elif isinstance(v, list):
            for d, x in enumerate(v):
                writer.add_scalar(f"{k}/z{d}", x, step)
