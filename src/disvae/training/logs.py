"""The training log: JSON lines, TensorBoard scalars and the progress bar's summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from disvae.utils import atomic_write_bytes


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


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resume starts from), a last
    line torn by a crash, and lines that are not JSON (e.g. garbled bytes)."""
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
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
    """Append one JSON line (a crash can tear only this last line; `truncate_log` drops it)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_scalars(writer: Any, record: dict[str, Any], step: int) -> None:
    """Every float of ``record`` as ``train/NAME`` (names with a group, ``val/loss`` or
    ``metrics/mig``, as they are); each list (kl_per_dim) as ``NAME/zD``."""
    for k, v in record.items():
        if isinstance(v, float) and k != "lr":
            writer.add_scalar(k if "/" in k else f"train/{k}", v, step)
        elif isinstance(v, list):
            for d, x in enumerate(v):
                writer.add_scalar(f"{k}/z{d}", x, step)
