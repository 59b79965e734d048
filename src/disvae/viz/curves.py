"""Loss curves and per-dimension KL bars as matplotlib Figures (no pyplot global state).

Figures are built with `matplotlib.figure.Figure` and rendered with the Agg canvas, so using
these functions never changes the backend of a user's notebook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Keys of a train-log record that are not plotted against the step.
_NOT_TERMS = {"step", "epoch"}


def read_train_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``train_log.jsonl``.

    A line that is not a JSON record (a torn last line, mid-write, or bytes that are not
    UTF-8) is skipped.
    """
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for raw in path.read_bytes().splitlines():
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def literal(text: object) -> str:
    """``text`` as matplotlib shows it literally: names from users (sweep methods, run
    directories, logged keys) may hold ``$``, which matplotlib reads as math text, and an
    invalid formula ("$\\frac$") fails the whole figure when it is drawn."""
    return str(text).replace("$", r"\$")


def figure_to_array(fig) -> np.ndarray:
    """Render a Figure with Agg: uint8 RGB picture ``(H, W, 3)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _kind(value: Any) -> str | int | None:
    """What a logged value is: ``"number"``, the length of a list of numbers, or None."""
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list) and value and all(isinstance(x, (int, float)) for x in value):
        return len(value)
    return None


def loss_terms(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the logged terms in first-seen order (numbers or lists of numbers)."""
    names: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if k in _NOT_TERMS or k in names:
                continue
            if _kind(v) is not None:
                names.append(k)
    return names


def _points(records: Sequence[Mapping[str, Any]], name: str) -> list[tuple[Any, Any]]:
    """``(step, value)`` of the records whose ``name`` is of the kind of its first value (a
    number, or a list of numbers that long): a value of another kind (a damaged line) is left
    out with its step, so that no value is drawn at another record's step."""
    kind = next(_kind(r[name]) for r in records if _kind(r.get(name)) is not None)
    return [(r["step"], r[name]) for r in records if _kind(r.get(name)) == kind]


def loss_curves(records: Sequence[Mapping[str, Any]], title: str = ""):
    """Every logged term against step, one panel per term (``kl_per_dim``: a line per dim).

    Args:
        records: train-log records (dicts with ``step`` and the terms).

    Returns:
        a `matplotlib.figure.Figure`.
    """
    names = loss_terms(records)
    n_cols = 3
    n_rows = max(1, -(-len(names) // n_cols))
    fig = _figure(4.0 * n_cols, 2.6 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        pts = _points(records, name)
        steps = np.array([p[0] for p in pts])
        marker = "o" if len(pts) == 1 else None  # a line through one point draws nothing
        if isinstance(pts[0][1], list):
            values = np.array([p[1] for p in pts], dtype=float)
            for d in range(values.shape[1]):
                ax.plot(steps, values[:, d], lw=1, marker=marker, label=f"z{d}")
            if values.shape[1] <= 12:
                ax.legend(fontsize=6, ncol=2)
        else:
            ax.plot(steps, np.array([p[1] for p in pts], dtype=float), lw=1.2, marker=marker)
        ax.set_title(literal(name), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(literal(title))
    return fig


def format_kl(value: float) -> str:
    """A KL value (nats) as a short label: 3 significant digits (``0.0123``, ``1.5``, ``12.3``),
    whole nats from 100 up (``1234``), ``<0.01`` for the small positive values of collapsed
    dimensions (which 2 fixed decimals would show as ``0.00``), ``0`` for exactly zero."""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if 0 < v < 0.01:
        return "<0.01"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def kl_bars(kl: Sequence[float], title: str = "KL per latent dimension"):
    """Bars of the per-dimension KL (nats), sorted largest first, labelled z<index>, each with
    its value on top (see `format_kl`).

    Args:
        kl: per-dimension KL, shape (D,).

    Returns:
        a `matplotlib.figure.Figure`.
    """
    kl = np.asarray(kl, dtype=float)
    order = np.argsort(-kl, kind="stable")
    fig = _figure(max(4.0, 0.45 * len(kl) + 1.5), 3.0)
    ax = fig.subplots()
    bars = ax.bar(range(len(kl)), kl[order], color="#3b6ea8")
    ax.bar_label(bars, labels=[format_kl(v) for v in kl[order]], fontsize=7)
    ax.set_xticks(range(len(kl)), [f"z{d}" for d in order], fontsize=8)
    ax.set_ylabel("KL (nats)")
    ax.set_title(literal(title), fontsize=10)
    ax.margins(y=0.15)
    return fig
