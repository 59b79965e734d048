"""The sweep's HTML page: each metric against the swept hyperparameter per method (median and
spread over seeds), a Spearman rank-correlation table between metrics, and every run's row.

Self-contained like the run reports (`disvae.report`): figures are inlined as PNG data URIs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from disvae.errors import UserError
from disvae.sweep import state as S
from disvae.sweep.results import collect, metric_columns

REPORT = "report.html"
_MAX_COLS = 4


def build_sweep_report(out: str | Path, path: str | Path | None = None) -> Path:
    """Write the page of the sweep in ``out`` to ``path`` (default ``out/report.html``)."""
    from disvae.utils import atomic_write_bytes

    out = Path(out)
    if not S.is_sweep_dir(out):
        raise UserError(f"{str(out)!r} is not a sweep directory (no {S.SWEEP_FILE})")
    target = Path(path) if path is not None else out / REPORT
    atomic_write_bytes(target, render_sweep_report(out).encode("utf-8"))
    return target


def render_sweep_report(out: Path) -> str:
    """The HTML text of the sweep page."""
    from disvae.report.html import _page, _table

    columns, rows = collect(out)
    metrics = metric_columns(columns)
    done = [r for r in rows if r["status"] == "done"]
    counts = {s: sum(r["status"] == s for r in rows) for s in S.STATUSES}
    summary = _table(["status", "runs"], [[s, n] for s, n in counts.items()])
    failed = [[r["name"], r.get("error") or ""] for r in rows if r["status"] == "failed"]
    if failed:
        summary += "<h3>Failed runs</h3>" + _table(["run", "error"], failed)
    # (a damaged byte shows as "\ufffd" rather than stopping the page)
    sweep_file = (out / S.SWEEP_FILE).read_bytes().decode("utf-8", errors="replace")
    summary += f"<h3>Sweep file</h3><pre>{escape(sweep_file)}</pre>"
    plotted = metrics + [c for c in ("val/recon", "val/kl") if c in columns]
    plots = "".join(_metric_figure(done, m) for m in plotted) or _note("No finished run yet.")
    corr = _spearman_table(done, metrics, _table)
    swept = [c for c in columns if "." in c]
    shown = ["name", "method", "status", "seed", *swept, *metrics]
    table = _table(shown, [[_cell(r.get(c)) for c in shown] for r in rows])
    sections = [
        ("summary", "Summary", summary),
        ("plots", "Metrics against hyperparameters", _PLOT_NOTE + plots),
        ("correlation", "Rank correlation between metrics", corr),
        ("runs", "Runs", table),
    ]
    subtitle = f"{len(rows)} runs, {counts['done']} done, {counts['failed']} failed — {out}"
    return _page(f"Sweep {out.name}", subtitle, sections)


_PLOT_NOTE = (
    '<p class="note">Per method, each metric against its swept hyperparameter: the line joins '
    "the medians over seeds (and over any other swept key), the thick bar spans the "
    "interquartile range, the thin bar min to max; dots are single runs.</p>"
)


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _cell(v: Any) -> Any:
    return "" if v is None else v


# --------------------------------------------------------------------------- figures


def _x_key(runs: list[dict[str, Any]]) -> str | None:
    """The swept key a method's runs vary most along (None: nothing varies)."""
    keys = [k for k in runs[0] if "." in k]
    varying = [k for k in keys if len({_hashable(r.get(k)) for r in runs}) > 1]
    return max(varying, key=lambda k: len({_hashable(r.get(k)) for r in runs})) if varying else None


def _hashable(v: Any) -> Any:
    """A swept value as a key: a list (``model.hidden = [[64], [128]]``) as its text."""
    return str(v) if isinstance(v, (list, dict)) else v


def _metric_figure(rows: list[dict[str, Any]], metric: str) -> str:
    from disvae.report.content import png_uri
    from disvae.viz.curves import figure_to_array

    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if _finite(r.get(metric)):
            by_method[_hashable(r["method"])].append(r)  # (a damaged spec's: a list)
    if not by_method:
        return ""
    fig = _spread_figure(by_method, metric)
    uri = png_uri(figure_to_array(fig))
    return f'<h3>{escape(metric)}</h3><img class="fig" src="{uri}" alt="{escape(metric)}">'


def _spread_figure(by_method: dict[str, list[dict[str, Any]]], metric: str):
    from matplotlib.figure import Figure

    from disvae.viz.curves import literal

    n = len(by_method)
    ncols = min(n, _MAX_COLS)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.7 * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (method, runs) in zip(axes, by_method.items(), strict=False):
        key = _x_key(runs)
        groups: dict[Any, list[float]] = defaultdict(list)
        for r in runs:
            groups[_hashable(r.get(key)) if key else method].append(float(r[metric]))
        xs = sorted(groups, key=lambda v: (not _finite(v), v if _finite(v) else str(v)))
        numeric = key is not None and all(_finite(x) for x in xs)
        pos = [float(x) for x in xs] if numeric else list(range(len(xs)))
        stats = [np.percentile(groups[x], [0, 25, 50, 75, 100]) for x in xs]
        lo, q1, med, q3, hi = (np.array(s) for s in zip(*stats, strict=True))
        ax.vlines(pos, lo, hi, color="#8aa4c8", linewidth=1)
        ax.vlines(pos, q1, q3, color="#2f5f9e", linewidth=4)
        ax.plot(pos, med, "o-", color="#1f3b63", markersize=4)
        for p, x in zip(pos, xs, strict=True):
            ax.plot([p] * len(groups[x]), groups[x], ".", color="#c0504d", alpha=0.5, ms=3)
        if numeric and min(pos) > 0 and max(pos) / min(pos) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(pos, [literal(x) for x in xs])
        ax.set_title(literal(method), fontsize=10)
        ax.set_xlabel(literal(key or ""), fontsize=9)
        ax.set_ylabel(literal(metric), fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


# --------------------------------------------------------------------------- correlation


def spearman_matrix(rows: list[dict[str, Any]], metrics: list[str]) -> list[list[float | None]]:
    """Spearman's rank correlation of every pair of metrics over the runs that have both
    (None where fewer than 3 runs have both or a metric is constant)."""
    from scipy.stats import spearmanr

    matrix: list[list[float | None]] = []
    for a in metrics:
        line: list[float | None] = []
        for b in metrics:
            pairs = [(r[a], r[b]) for r in rows if _finite(r.get(a)) and _finite(r.get(b))]
            x, y = (
                (np.array(v, dtype=float) for v in zip(*pairs, strict=True)) if pairs else ([], [])
            )
            if len(pairs) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
                line.append(None)
            else:
                line.append(float(spearmanr(x, y).statistic))
        matrix.append(line)
    return matrix


def _spearman_table(rows: list[dict[str, Any]], metrics: list[str], table) -> str:
    if not metrics:
        return _note("No metrics were evaluated (add metrics to [evaluate] in the sweep file).")
    matrix = spearman_matrix(rows, metrics)
    body = [[m, *("–" if v is None else round(v, 3) for v in line)]
            for m, line in zip(metrics, matrix, strict=True)]  # fmt: skip
    note = _note(
        f"Spearman's ρ over the {len(rows)} finished runs (pairs where both metrics are "
        "defined; – where fewer than 3 runs or a constant metric)."
    )
    return note + f'<div id="spearman">{table(["metric", *metrics], body)}</div>'


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
