"""``sweep_results.csv``: one row per run, rewritten (atomically) as runs finish.

Columns: name, method, status, seed, the swept config keys, duration_s, step, error, the last
training-log record (``train/<term>``), the held-out losses (``val/<term>``), and the metrics
(``mig``, ``dci/disentanglement``, ...). Lists (per-dimension KL) are left out.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from disvae import runs
from disvae.sweep import state as S
from disvae.utils import atomic_write_bytes

FIXED = ("name", "method", "status", "seed")
AFTER = ("duration_s", "step", "error")


def run_row(slot: Path) -> dict[str, Any]:
    """The row of one run slot (missing files give missing values)."""
    spec = S.read_json(slot / S.SPEC)
    state = S.read_state(slot)
    run = slot / S.RUN
    row: dict[str, Any] = {
        "name": spec.get("name", slot.name),
        "method": spec.get("method"),
        "status": state["status"],
        "seed": spec.get("seed"),
        **_object(spec.get("params")),
        "duration_s": state.get("duration_s"),
        "error": state.get("error"),
    }
    last = _last_log_record(run / runs.TRAIN_LOG)
    row["step"] = last.get("step")
    row.update({f"train/{k}": v for k, v in last.items() if k != "step" and _scalar(v)})
    heldout = _object(S.read_json(run / runs.EVAL_LOSSES).get("losses"))
    row.update({f"val/{k}": v for k, v in heldout.items() if _scalar(v)})
    row.update(_flat_metrics(_object(S.read_json(run / "metrics.json").get("metrics"))))
    return row


def _object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else ``{}`` (a damaged file gives no values)."""
    return value if isinstance(value, dict) else {}


def collect(out: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` of every run of the sweep in ``out``, in the sweep file's order."""
    rows = [run_row(slot) for slot in S.slots(out)]
    swept: dict[str, None] = {}
    extra: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key in FIXED or key in AFTER:
                continue
            if key.startswith(("train/", "val/")) or "." not in key:
                extra[key] = None
            else:
                swept[key] = None
    columns = [*FIXED, *swept, *AFTER, *_ordered(extra)]
    return columns, rows


def metric_columns(columns: list[str]) -> list[str]:
    """The columns that hold disentanglement metrics."""
    skip = set(FIXED) | set(AFTER)
    return [
        c
        for c in columns
        if c not in skip and "." not in c and not c.startswith(("train/", "val/"))
    ]


def write_results(out: str | Path) -> Path:
    """Write ``out/sweep_results.csv`` and return its path."""
    out = Path(out)
    columns, rows = collect(out)
    buf = io.StringIO()
    # (the csv module's own line end, "\r\n": with "\n" alone, a value holding a "\r" is written
    # unquoted, and `read_results` splits its row there)
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    path = out / S.RESULTS
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_results(out: str | Path) -> list[dict[str, Any]]:
    """The rows of ``sweep_results.csv`` with numbers and booleans parsed (empty cells are
    None). The file is UTF-8 (`write_results`), whatever the locale's encoding."""
    with open(Path(out) / S.RESULTS, newline="", encoding="utf-8") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _ordered(keys: dict[str, None]) -> list[str]:
    train = [k for k in keys if k.startswith("train/")]
    val = [k for k in keys if k.startswith("val/")]
    return train + val + [k for k in keys if k not in train and k not in val]


def _last_log_record(path: Path) -> dict[str, Any]:
    """The last JSON line of a train log (``{}`` when it is no object). Lines that are not JSON
    are passed over, as `disvae.viz.curves.read_train_log` passes over them: a last line torn
    by a crash (a killed run's row kept none of its values), bytes that are not UTF-8."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return {}
    for raw in reversed(lines):
        try:
            return _object(json.loads(raw.decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return {}


def _flat_metrics(values: dict[str, Any]) -> dict[str, float]:
    """``{"dci": {"completeness": x}}`` -> ``{"dci/completeness": x}`` (scalars only)."""
    flat: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{kk}": vv for kk, vv in v.items() if _scalar(vv)})
        elif _scalar(v):
            flat[k] = v
    return flat


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):  # 6 significant digits; "2882.0", not "2882", reads back a float
        text = f"{v:.6g}"
        return text if any(c in text for c in ".ein") else text + ".0"
    return v


def _parse(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):  # a swept boolean (model.shared_tower = [true, false])
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
