"""HTML pages from `RunContent`: one run, or several runs side by side. Self-contained."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from disvae.report.assets import CSS, JS
from disvae.report.content import RunContent, flatten
from disvae.utils import strict_json
from disvae.viz.curves import format_kl

SINGLE_SECTIONS = (
    ("summary", "Summary"),
    ("metrics", "Metrics"),
    ("heldout", "Held-out losses"),
    ("losses", "Loss curves"),
    ("kl", "KL per dimension"),
    ("reconstructions", "Reconstructions"),
    ("samples", "Samples"),
    ("traversals", "Traversals"),
    ("gifs", "Traversal GIFs"),
    ("explorer", "Latent explorer"),
    ("training", "Training"),
    ("config", "Configuration"),
)
COMPARE_SECTIONS = (
    ("runs", "Runs"),
    ("metrics", "Metrics"),
    ("heldout", "Held-out losses"),
    ("kl", "KL per dimension"),
    ("traversals", "Traversals"),
    ("reconstructions", "Reconstructions"),
    ("losses", "Loss curves"),
    ("config", "Configuration differences"),
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: Callable[[Any], str] = _fmt
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(fmt(v))}</td>'
            if isinstance(v, (int, float))
            else f"<td>{escape(fmt(v))}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(uri: str | None, alt: str, cls: str = "fig px") -> str:
    if not uri:
        return '<p class="note">Not available for this run.</p>'
    return f'<img class="{cls}" src="{uri}" alt="{escape(alt)}">'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>'


def _page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    toc = "".join(f'<a href="#{k}">{escape(t)}</a>' for k, t, _ in sections)
    body = "".join(_section(k, t, b) for k, t, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{escape(title)}</h1><div class="sub">{escape(subtitle)}</div></header>'
        f'<nav class="toc">{toc}</nav><main>{body}</main><script>{JS}</script></body></html>\n'
    )


def _metrics_rows(metrics: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """(name, value) of each metric; an undefined one (NaN, written as null) says so."""
    rows = flatten(metrics["metrics"]) if metrics else []
    return [(k, "undefined" if v is None else v) for k, v in rows]


def _weights_of(step: Any, c: RunContent, command: str) -> str:
    """`` with the weights of step N`` of a file `disvae evaluate` wrote, and, when the weights
    shown are of another step (the run trained on, or was resumed, since), that its numbers are
    stale and the ``command`` that scores the weights shown; empty for a step that is no int."""
    if not isinstance(step, int) or isinstance(step, bool):
        return ""
    said = f" with the weights of step {step}"
    if step != c.step:
        said += (
            f"; the weights shown here are step {c.step}: run <code>{escape(command)}</code> "
            "again to update them"
        )
    return said


def _metrics_body(c: RunContent) -> str:
    if not c.metrics:
        return '<p class="note">No metrics.json yet: run the metrics to fill this table.</p>'
    proto = c.metrics.get("protocol")
    names = proto.get("metrics") if isinstance(proto, dict) else None
    ok = isinstance(names, list) and names and all(isinstance(n, str) for n in names)
    again = f"disvae evaluate RUN --metrics {','.join(names) if ok else 'NAMES'}"
    said = _weights_of(c.metrics.get("step"), c, again)
    extra = f'<p class="note">Computed by <code>disvae evaluate --metrics</code>{said}.</p>'
    fv = c.metrics["metrics"].get("factor_vae")
    if isinstance(fv, dict) and fv.get("num_active_dims") == 0:  # (the warning is long gone)
        extra += (
            '<p class="note">factor_vae: no code dimension was active (all collapsed), so its '
            "accuracies of 0 are a placeholder, not a score (below chance).</p>"
        )
    if isinstance(proto, dict) and proto:
        extra += f"<details><summary>protocol</summary>{_table(['key', 'value'], flatten(proto))}"
        extra += "</details>"
    return _table(["metric", "value"], _metrics_rows(c.metrics)) + extra


def _heldout_body(c: RunContent) -> str:
    """The table of ``RUN/eval_losses.json``: each loss term on the held-out images."""
    e = c.eval_losses
    if not e:
        return (
            '<p class="note">No eval_losses.json yet: <code>disvae evaluate RUN</code> computes '
            "the losses on the held-out images.</p>"
        )
    split, n = e.get("split"), e.get("n_images")
    said = "Computed by <code>disvae evaluate</code>"
    if isinstance(n, int) and not isinstance(n, bool):
        said += f" on {n} held-out images"
    if isinstance(split, str) and split:
        said += f" (the {escape(split)} split)"
    said += _weights_of(e.get("step"), c, "disvae evaluate RUN")
    rows = [(k, v) for k, v in e["losses"].items()]
    return _table(["term", "mean per image"], rows) + f'<p class="note">{said}.</p>'


def _heldout_scalars(c: RunContent) -> dict[str, Any]:
    losses = c.eval_losses["losses"] if c.eval_losses else {}
    return {k: v for k, v in losses.items() if not isinstance(v, list)}


def _kl_body(c: RunContent) -> str:
    if c.kl is None:
        return '<p class="note">No KL available yet.</p>'
    order = sorted(range(len(c.kl)), key=lambda d: -c.kl[d])
    rows = [(f"z{d}", c.kl[d]) for d in order]
    # As on the bars, the traversal labels and the explorer's sliders (`format_kl`): one value
    # must not read 0.004943 here, <0.01 on the bars and 0.00 beside its slider.
    table = _table(["latent", "KL (nats)"], rows, _fmt_kl)
    return f'<div class="row">{_img(c.figures.get("kl"), "KL bars", "fig")}{table}</div>'


def _fmt_kl(v: Any) -> str:
    return format_kl(v) if isinstance(v, float) else _fmt(v)


def _gifs_body(c: RunContent) -> str:
    return (
        '<p class="note">Every latent moves from -max to max and back, all at once: rows are '
        f"latents by decreasing KL, columns are {escape(c.gif_columns)}. "
        "<code>disvae plot RUN gif-traversals</code> writes one GIF per latent.</p>"
        f'<div class="card" style="display:inline-block">{_img(c.gifs.get("all"), "all latents")}'
        "</div>"
    )


def _kl_note(kl: float | None) -> str:
    """A slider's KL, written as the KL table and the figures write it (`format_kl`)."""
    return "" if kl is None else f' <span class="note">KL {escape(format_kl(kl))}</span>'


def _explorer_body(ex: dict[str, Any] | None) -> str:
    if ex is None:
        return '<p class="note">Not available.</p>'
    # (strict JSON for the page's JSON.parse: a non-finite number, e.g. the KL of a diverged
    # latent, is null there; Python's json would write Infinity, which no browser parses)
    data = json.dumps(strict_json(ex), allow_nan=False).replace("</", "<\\/")
    buttons = "".join(
        f'<button type="button" title="{escape(b["label"])}">'
        f'<img src="{b["thumb"]}" alt="{escape(b["label"])}"></button>'
        for b in ex["bases"]
    )
    s_max = len(ex["values"]) - 1
    kls = ex["kl"] if ex["kl"] is not None else [None] * len(ex["dims"])  # None: no KL known
    sliders = "".join(
        f'<label class="ex-slider"><span>z{d}{_kl_note(kl)}</span>'
        f'<input type="range" min="0" max="{s_max}" step="1" value="{s_max // 2}" '
        f'data-dim="{d}" data-row="{row}"><output></output></label>'
        for row, (d, kl) in enumerate(zip(ex["dims"], kls, strict=True))
    )
    return (
        '<p class="note">Pick a starting image, then move a slider: the picture is the decode '
        "of that image's code with the one latent set to the slider's value. Moving a slider puts "
        "the others back at the starting code, so what you see is always an exact decode "
        "(precomputed, so this works offline).</p>"
        f'<div class="explorer"><div><div id="ex-image" role="img" aria-label="decoded image">'
        f'</div><div id="ex-caption"></div></div><div><h3>Starting code</h3>'
        f'<div class="ex-bases">{buttons}</div><h3>Latents (largest KL first)</h3>{sliders}'
        '<p><button type="button" id="ex-reset">Back to the starting code</button></p></div>'
        f'</div><script type="application/json" id="explorer-data">{data}</script>'
    )


def single_page(c: RunContent) -> str:
    """The report of one run."""
    f = c.figures
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in c.notes)
    versions = c.record.get("versions") or {}
    bodies = {
        "summary": _table(["", ""], c.facts) + notes
        + ("<h3>Versions</h3>" + _table(["package", "version"], list(versions.items()))
           if versions else ""),
        "metrics": _metrics_body(c),
        "heldout": _heldout_body(c),
        "losses": _img(f.get("losses"), "loss curves", "fig"),
        "kl": _kl_body(c),
        "reconstructions": '<p class="note">Rows of originals, each above its reconstruction '
        "(decoded posterior mean).</p>" + _img(f.get("reconstruct"), "reconstructions"),
        "samples": '<p class="note">Decodes of samples from the prior N(0, I).</p>'
        + _img(f.get("samples"), "samples"),
        "traversals": '<h3>Around the prior mean</h3>' + _img(f.get("traversals"), "traversals")
        + "<h3>Around the posterior of an image</h3>"
        + _img(f.get("traversals_posterior"), "posterior traversals"),
        "gifs": _gifs_body(c),
        "explorer": _explorer_body(c.explorer),
        "training": _img(c.gifs.get("training"), "training GIF")
        if "training" in c.gifs else '<p class="note">No training frames in this run.</p>',
        "config": "<pre>" + escape(json.dumps(c.record, indent=2)) + "</pre>",
    }  # fmt: skip
    subtitle = " · ".join(f"{k}: {v}" for k, v in c.facts[:5])
    return _page(c.name, subtitle, [(k, t, bodies[k]) for k, t in SINGLE_SECTIONS])


def _side_by_side(contents: Sequence[RunContent], key: str, cls: str = "fig px") -> str:
    cards = "".join(
        f'<div class="card"><div class="cap">{escape(c.name)}</div>'
        f"{_img(c.figures.get(key), c.name + ' ' + key, cls)}</div>"
        for c in contents
    )
    return f'<div class="cols">{cards}</div>'


def _config_diff(contents: Sequence[RunContent]) -> list[list[Any]]:
    keys = ("data", "model", "loss", "train")
    tables = [dict(flatten({k: c.record.get(k, {}) for k in keys})) for c in contents]
    all_keys = sorted(set().union(*tables))
    return [
        [k, *[t.get(k, "") for t in tables]]
        for k in all_keys
        if len({json.dumps(t.get(k), sort_keys=True) for t in tables}) > 1
    ]


def compare_page(contents: Sequence[RunContent]) -> str:
    """Several runs side by side: metrics, KL bars, traversals, reconstructions, losses."""
    names = [c.name for c in contents]
    facts = [[name, *[v for _, v in c.facts[:6]]] for name, c in zip(names, contents, strict=True)]
    metric_keys = list(dict.fromkeys(k for c in contents for k, _ in _metrics_rows(c.metrics)))
    per_run = [dict(_metrics_rows(c.metrics)) for c in contents]
    metric_rows = [[k, *[r.get(k, "—") for r in per_run]] for k in metric_keys]
    heldout = [_heldout_scalars(c) for c in contents]
    terms = list(dict.fromkeys(k for h in heldout for k in h))
    heldout_rows = [[k, *[h.get(k, "—") for h in heldout]] for k in terms]
    diff = _config_diff(contents)
    bodies = {
        "runs": _table(["run", *[k for k, _ in contents[0].facts[:6]]], facts),
        "metrics": _table(["metric", *names], metric_rows) if metric_rows
        else '<p class="note">No run has a metrics.json yet.</p>',
        "heldout": _table(["term", *names], heldout_rows) if heldout_rows
        else '<p class="note">No run has an eval_losses.json yet (<code>disvae evaluate RUN'
        "</code>).</p>",
        "kl": _side_by_side(contents, "kl", "fig"),
        "traversals": _side_by_side(contents, "traversals"),
        "reconstructions": _side_by_side(contents, "reconstruct"),
        "losses": _side_by_side(contents, "losses", "fig"),
        "config": _table(["key", *names], diff) if diff
        else '<p class="note">The runs have the same configuration.</p>',
    }  # fmt: skip
    title = "Comparison: " + ", ".join(names)
    return _page(title, f"{len(contents)} runs", [(k, t, bodies[k]) for k, t in COMPARE_SECTIONS])
