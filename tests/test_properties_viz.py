"""Property-based tests (Hypothesis) of the figures' arithmetic and of the readers behind the
pages: traversal ranges and grids, the per-dimension KL and its labels, the training log and its
loss curves, the sweep's results table and page, and what a run's report gathers.

Traversals are checked with a decoder whose logits are the code itself (a decode is sigmoid(z)
and the decoder keeps every code it was given), so each cell says exactly which code was decoded.
Readers get files written here in the format their writers use, then cut, garbled or replaced by
JSON of the wrong shape: they must give what survives (a value, a missing value, a one-line note),
never an exception. Nothing is trained: models are a few linear layers built here.

As in ``test_properties.py``, every property draws from a fixed seed (``derandomize=True``).
Each example writes into its own fresh folder (a function-scoped ``tmp_path`` is shared by all
examples of a test).
"""

from __future__ import annotations

import json
import math
import shlex
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats
from torch import nn

from conftest import damaged_bytes
from disvae import runs
from disvae.models.vae import VAE
from disvae.report.content import (
    ReportOptions,
    read_eval_losses,
    read_metrics,
    run_content,
    run_status,
)
from disvae.report.html import single_page
from disvae.sweep import state as S
from disvae.sweep.page import render_sweep_report, spearman_matrix
from disvae.sweep.results import AFTER, FIXED, collect, read_results, write_results
from disvae.training import checkpoint as ckpt
from disvae.viz import curves
from disvae.viz import images as I
from disvae.viz import traversal as T
from disvae.viz.plots import RunView

SEEDS = st.integers(0, 2**32 - 1)
# --max-traversal: absolute half-range from 0.5 up, a prior quantile below (`check_max_traversal`)
MAX_TRAVERSALS = st.floats(0, 1000, exclude_min=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-10, 10) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6,
)  # fmt: skip


def _fresh(factory) -> Path:
    """A new empty folder for one Hypothesis example."""
    return factory.mktemp("ex", numbered=True)


def _one_line(text: str) -> None:
    assert text and "\n" not in text and "\r" not in text and "Traceback" not in text


CUTS = st.none() | st.integers(0, 2**16)
EDITS = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=3)
# a file's new content: cut and/or bytes changed, JSON of another shape, or bytes not UTF-8
DAMAGE = st.one_of(
    st.tuples(st.just("bytes"), CUTS, EDITS),
    st.tuples(st.just("json"), JSON),
    st.tuples(st.just("garbage"), st.binary(max_size=8).map(lambda b: b"\xff" + b)),
    st.tuples(st.just("missing")),
)


def _damaged(raw: bytes, damage: tuple) -> bytes | None:
    """The bytes a file holds after ``damage`` (None: the file is gone)."""
    kind = damage[0]
    if kind == "bytes":
        return damaged_bytes(raw, damage[1], damage[2])
    if kind == "json":
        return json.dumps(damage[1]).encode()
    return damage[1] if kind == "garbage" else None


def _write(path: Path, raw: bytes | None) -> None:
    path.unlink(missing_ok=True)
    if raw is not None:
        path.write_bytes(raw)


# ================================================================================ traversals


class _Echo(nn.Module):
    """A model whose decoder's logits are the code itself, ``(B, 1, 1, D)``: the decode of z is
    sigmoid(z), and every code it decoded is kept in ``seen``, in order."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.zero = nn.Parameter(torch.zeros(()))  # (a parameter says the device)
        self.seen: list[torch.Tensor] = []

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.seen.append(z.clone())
        return z[:, None, None, :] + self.zero


@settings(max_examples=100)
@given(MAX_TRAVERSALS, MAX_TRAVERSALS, st.integers(1, 200))
@example(1e-20, 0.05, 7)  # 1 - q rounds to 1 below q ~ 1e-16: Φ⁻¹(1 - q) taken as written is inf
def test_traversal_values_span_minus_m_to_m_evenly_and_m_follows_its_closed_form(q, q2, n):
    """m = ``max_traversal`` from 0.5 up; below, m = Φ⁻¹(1 - q), i.e. Φ(-m) = q: finite and
    positive for every q > 0, larger for a smaller q. The n values run from exactly -m to
    exactly m, increasing by 2m / (n - 1) (to rounding), symmetric about 0 (to rounding)."""
    m = T.traversal_range(q)
    if q >= 0.5:
        assert m == q
    else:
        assert math.isfinite(m) and m > 0
        # (in logs: Φ(-m) of q = 5e-324 is below the smallest float, and so 0)
        assert math.isclose(stats.norm.logcdf(-m), math.log(q), rel_tol=1e-12)
        if q2 < 0.5:  # monotone: a smaller tail probability reaches further out
            lo, hi = sorted((q, q2))
            assert T.traversal_range(lo) >= T.traversal_range(hi)
    v = T.traversal_values(q, n)
    assert v.shape == (n,)
    if n == 1:
        assert v.tolist() == [0.0]
        return
    ulp = np.spacing(m)
    assert v[0] == -m and v[-1] == m
    assert (np.diff(v) > 0).all()
    np.testing.assert_allclose(np.diff(v), 2 * m / (n - 1), rtol=1e-9, atol=8 * ulp)
    assert np.abs(v + v[::-1]).max() <= 8 * ulp


@settings(max_examples=40)
@given(st.integers(1, 6), st.data())
def test_a_traversal_row_changes_its_latent_alone_and_keeps_the_others_at_the_base(d, data):
    """Row r, column c of `traversal_images` is the decode of the base code (zeros without
    one) with z[dims[r]] = values[c] and every other latent at the base: the decoder sees exactly
    those len(dims) × n_cols codes, row by row (in batches, past 256 codes too), and the images
    are their decodes, shape (len(dims), n_cols, C, H, W)."""
    dims = data.draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=8), label="dims")
    n_cols = data.draw(st.integers(1, 50), label="n_cols")
    q = data.draw(MAX_TRAVERSALS, label="max_traversal")
    base = data.draw(
        st.none() | hnp.arrays(np.float32, d, elements=st.floats(-5, 5, width=32)), label="base"
    )
    model = _Echo(d)
    imgs = T.traversal_images(model, base, dims=dims, n_cols=n_cols, max_traversal=q)
    assert imgs.shape == (len(dims), n_cols, 1, 1, d) and imgs.dtype == np.float32
    seen = torch.cat(model.seen)
    assert seen.shape == (len(dims) * n_cols, d)
    ref = np.zeros(d, np.float32) if base is None else base
    values = T.traversal_values(q, n_cols).astype(np.float32)
    for r, k in enumerate(dims):
        expected = np.tile(ref, (n_cols, 1))
        expected[:, k] = values
        np.testing.assert_array_equal(seen[r * n_cols : (r + 1) * n_cols].numpy(), expected)
    np.testing.assert_array_equal(
        imgs.reshape(-1, d), torch.sigmoid(seen).numpy()
    )  # the pixels are the decodes, nothing else


_KLS = st.lists(st.sampled_from([0.0, 0.004, 0.5, 1.0, 12.25]), min_size=1, max_size=5)


@settings(max_examples=20)
@given(_KLS, st.booleans(), st.data())
def test_a_traversal_grid_is_reference_rows_then_latents_by_kl_each_n_cols_wide(kls, use_kl, data):
    """`traversals`: a grid of (references + shown latents) rows × n_cols cells, enlarged
    ``upsample`` times, with the row labels on its left. Latent rows come by decreasing KL (ties
    in index order; index order without a KL), the first ``n_rows``; each is that latent's
    traversal; a reference row holds its first n_cols images, the rest blank (0.5 grey)."""
    d = len(kls)
    kl = np.array(kls) if use_kl else None
    n_rows = data.draw(st.none() | st.integers(1, d + 1), label="n_rows")
    n_cols = data.draw(st.integers(1, 6), label="n_cols")
    up = data.draw(st.integers(1, 3), label="upsample")
    rng = np.random.default_rng(data.draw(SEEDS, label="seed"))
    refs = [(f"ref{i}", rng.random((data.draw(st.integers(0, 8)), 1, 1, d), dtype=np.float32))
            for i in range(data.draw(st.integers(0, 2), label="n_refs"))]  # fmt: skip
    model = _Echo(d)
    pic = T.traversals(model, kl=kl, n_rows=n_rows, n_cols=n_cols, max_traversal=2.0,
                       reference=refs, upsample=up)  # fmt: skip
    order = sorted(range(d), key=lambda i: -kls[i]) if use_kl else list(range(d))
    shown = order[: n_rows or d]
    cells = [np.concatenate([ref[:n_cols], np.full((max(0, n_cols - len(ref)), 1, 1, d), 0.5)])
             for _, ref in refs]  # fmt: skip
    cells += [T.traversal_images(_Echo(d), dims=[k], n_cols=n_cols, max_traversal=2.0)[0]
              for k in shown]  # fmt: skip
    grid = I.upsample(I.make_grid(np.concatenate(cells), n_cols), up)
    labels = [name for name, _ in refs] + [
        f"z{k}" + (f" KL {curves.format_kl(kls[k])}" if use_kl else "") for k in shown
    ]
    assert grid.shape[0] == ((len(refs) + len(shown)) * (1 + 2) + 2) * up
    assert pic.shape == (grid.shape[0], I.label_width(labels) + grid.shape[1], 1)
    np.testing.assert_array_equal(pic[:, -grid.shape[1] :], grid)
    strip = I.label_strip(grid.shape[0], 1, labels, row_height=3 * up, pad=2 * up)
    np.testing.assert_array_equal(pic[:, : -grid.shape[1]], strip)


@settings(max_examples=100)
@given(MAX_TRAVERSALS, st.integers(1, 300))
def test_the_gif_wave_is_a_periodic_triangle_from_minus_m_to_m(q, n):
    """Frame k of `triangle_wave` is -m + 4m·k/n in the first half of the loop and
    3m - 4m·k/n in the second: it starts at -m, stays in [-m, m], reaches m at k = n/2, and
    moves at most 4m/n a frame, from the last frame back to the first too (a smooth loop)."""
    m = T.traversal_range(q)
    v = T.triangle_wave(q, n)
    k = np.arange(n)
    expected = np.where(k / n < 0.5, -m + 4 * m * k / n, 3 * m - 4 * m * k / n)
    tol = 8 * np.spacing(m)
    np.testing.assert_allclose(v, expected, rtol=1e-12, atol=tol)
    assert v.shape == (n,) and v[0] == -m
    assert (v >= -m - tol).all() and (v <= m + tol).all()
    if n % 2 == 0:
        assert abs(v[n // 2] - m) <= tol
    steps = np.abs(np.diff(np.append(v, v[0])))
    assert (steps <= 4 * m / n + tol).all()


_POSTERIOR = st.tuples(st.integers(1, 6), st.integers(1, 4)).flatmap(
    lambda s: st.tuples(
        hnp.arrays(np.float32, s, elements=st.just(0.0) | st.floats(-3, 3, width=32)),
        hnp.arrays(np.float32, s, elements=st.floats(-(2**-10), 2**-10, width=32)
                   | st.floats(-8, 8, width=32)),
    )
)  # fmt: skip


@settings(max_examples=50)
@given(_POSTERIOR)
@example((np.zeros((1, 1), np.float32), np.full((1, 1), 2.3e-4, np.float32)))
def test_per_dimension_kl_is_its_closed_form_never_negative_and_its_label_has_no_minus(post):
    """KL(N(mu, e^lv) || N(0, 1)) = (mu² + e^lv - 1 - lv) / 2 ≥ 0, averaged over images: to
    float64 accuracy, so a collapsed latent (mu ≈ 0, lv ≈ 0) is a tiny KL ≥ 0, labelled
    ``<0.01`` or ``0``, never ``-4.4e-08`` (the float32 rounding of e^lv)."""
    mu, lv = post
    kl = T.kl_per_dim(mu, lv)
    m, v = mu.astype(np.float64), lv.astype(np.float64)
    expected = (0.5 * (m**2 + np.vectorize(math.expm1)(v) - v)).mean(axis=0)
    assert kl.shape == (mu.shape[1],)
    np.testing.assert_allclose(kl, expected, rtol=1e-12, atol=1e-300)
    assert (kl >= 0).all()
    for dim, label in enumerate(T.row_labels(range(len(kl)), kl)):
        assert label == f"z{dim} KL {curves.format_kl(kl[dim])}" and "KL -" not in label


@settings(max_examples=200)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.floats(-200, 200))
def test_kl_labels_are_three_significant_digits_whole_nats_from_100_and_flags_for_tiny(v):
    """`format_kl`: ``0`` for zero, ``<0.01`` for 0 < v < 0.01, the value to 3 significant
    digits below 100 in size, to the whole nat from 100 up; a non-finite value as Python
    prints it."""
    text = curves.format_kl(v)
    if not math.isfinite(v):
        assert text == str(v)
    elif v == 0:
        assert text == "0"
    elif 0 < v < 0.01:
        assert text == "<0.01"
    elif abs(v) >= 100:
        assert "." not in text and "e" not in text and abs(float(text) - v) <= 0.5
    else:
        digit = 10.0 ** (math.floor(math.log10(abs(v))) - 2)  # the 3rd significant digit
        assert abs(float(text) - v) <= 0.5 * digit * (1 + 1e-9)
        assert len(text.lstrip("-0.").split("e")[0].replace(".", "")) <= 3


# =========================================================================== train log, curves


_STEPS = st.integers(0, 12)  # few: steps repeat and go back, as in a log written twice over
_RECORD = st.fixed_dictionaries(
    {"step": _STEPS},
    optional={
        "epoch": st.integers(0, 3),
        "loss": st.floats(-1e3, 1e3) | st.integers(-5, 5),
        "kl_per_dim": st.lists(st.floats(0, 10), min_size=2, max_size=2)
        | st.lists(st.floats(0, 10), min_size=1, max_size=3),
        "lr": st.floats(0, 1),
    },
)
# a term of another kind than its first value (a damaged line; another run's line)
_ODD = st.fixed_dictionaries(
    {"step": _STEPS},
    optional={
        "loss": st.sampled_from([None, "x", [1.0], {"a": 1}]),
        "kl_per_dim": st.sampled_from([3.5, "x", [], ["x", "y"], [[1.0, 2.0]], None]),
    },
)
_NOT_RECORDS = st.sampled_from(
    [b"", b"   ", b"7", b"[1, 2]", b"null", b'"step"', b'{"loss": 1.0}', b"{\"step\": 1",
     b"\xff\xfe{}", b'{"step": 3, "x": "\xe9"}', b"not json"]
)  # fmt: skip


@settings(max_examples=40)
@given(
    st.lists(st.tuples(st.booleans(), _RECORD, _NOT_RECORDS), max_size=8),
    st.none() | st.tuples(_RECORD, st.integers(1, 10**6)),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_the_train_log_reader_keeps_exactly_the_complete_records_in_file_order(
    tmp_path_factory, lines, torn, eol
):
    """`read_train_log` returns the JSON objects with a ``step`` of the log, in file order
    (steps repeated or going back kept as written); blank lines, other JSON, bytes that are not
    UTF-8 and a last record torn mid-write (any proper prefix of its line) are skipped. No
    file: no records."""
    path = _fresh(tmp_path_factory) / runs.TRAIN_LOG
    assert curves.read_train_log(path) == []
    raw, expected = b"", []
    for is_record, rec, junk in lines:
        raw += (json.dumps(rec).encode() if is_record else junk) + eol
        expected += [rec] if is_record else []
    if torn is not None:
        text = json.dumps(torn[0]).encode()
        raw += text[: 1 + torn[1] % (len(text) - 1)]  # 1 to len - 1 bytes of it, no line end
    path.write_bytes(raw)
    assert json.dumps(curves.read_train_log(path)) == json.dumps(expected)


def _kind(v) -> str | int | None:
    """A logged value's kind: "number", the length of a list of numbers, or None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "number"
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
        return len(v)
    return None


@settings(max_examples=8)
@given(st.lists(_RECORD | _ODD, min_size=1, max_size=10))
@example([{"step": 1, "kl_per_dim": [1.0, 2.0]}, {"step": 2, "kl_per_dim": [5.0]},
          {"step": 3, "kl_per_dim": [3.0, 4.0]}])  # fmt: skip
@example([{"step": 1, "loss": 1.0}, {"step": 2, "loss": [2.0]}, {"step": 3, "loss": 3.0}])
def test_loss_curves_plot_each_logged_value_at_its_own_step_unsmoothed(records):
    """One panel per term (in first-seen order, ``step`` and ``epoch`` excepted), titled with
    it. A term takes the kind of its first number or list of numbers; a scalar term's line is
    the points (step, value) of the records holding a number, in file order; a list term has a
    line per entry d, the points (step, value[d]) of the records holding a list of numbers as
    long as the first. No smoothing: the points are the logged values themselves. Values of
    another kind are left out, never plotted at another record's step, nor an exception."""
    names, kinds = [], {}
    for rec in records:
        for k, v in rec.items():
            if k not in ("step", "epoch") and k not in kinds and _kind(v) is not None:
                names.append(k)
                kinds[k] = _kind(v)
    assert curves.loss_terms(records) == names
    fig = curves.loss_curves(records)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == names
    for ax, name in zip(axes, names, strict=True):
        pts = [(r["step"], r[name]) for r in records if _kind(r.get(name)) == kinds[name]]
        steps = [s for s, _ in pts]
        lines = ax.get_lines()
        if kinds[name] == "number":
            assert len(lines) == 1
            assert lines[0].get_xdata().tolist() == steps
            assert lines[0].get_ydata().tolist() == [float(v) for _, v in pts]
        else:
            assert len(lines) == kinds[name]
            for d, line in enumerate(lines):
                assert line.get_xdata().tolist() == steps
                assert line.get_ydata().tolist() == [float(v[d]) for _, v in pts]


# ============================================================================== sweep results


def _slot(out: Path, index: int, spec: dict, state: dict | None, files: dict[str, str]) -> Path:
    slot = out / S.RUNS / f"slot{index}"
    (slot / S.RUN).mkdir(parents=True)
    (slot / S.SPEC).write_text(json.dumps(spec))
    if state is not None:
        (slot / S.STATE).write_text(json.dumps(state))
    for name, text in files.items():
        (slot / S.RUN / name).write_text(text)
    return slot


def _not_a_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


# text as a name, a method, a swept value or an error holds: commas, quotes, line ends, HTML
_TEXT = st.text(st.sampled_from("ab,\"'\n\r <>&é;="), min_size=1, max_size=8).filter(_not_a_number)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_VALUE = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | _FLOAT | _TEXT
_RUN = st.fixed_dictionaries(
    {
        "spec": st.fixed_dictionaries(
            {"name": _TEXT, "method": _TEXT, "params": st.dictionaries(
                st.sampled_from(["loss.beta", "model.latent_dim", "data.name"]), _VALUE)},
            optional={"seed": st.integers(0, 99)},
        ),
        "state": st.none() | st.fixed_dictionaries(
            {"status": st.sampled_from(S.STATUSES)},
            optional={"duration_s": _FLOAT, "error": _TEXT},
        ),
        "metrics": st.dictionaries(st.sampled_from(["mig", "sap"]), _FLOAT | st.booleans()),
        "dci": st.dictionaries(st.sampled_from(["disentanglement", "completeness"]), _FLOAT),
        "val": st.dictionaries(st.sampled_from(["recon", "kl"]), _FLOAT),
        "last": st.none() | st.fixed_dictionaries(
            {"step": st.integers(0, 10**6)}, optional={"loss": _FLOAT, "kl": _FLOAT}),
    }
)  # fmt: skip


def _same(got, want) -> bool:
    """``got`` (read back) is ``want`` (written): ints and text exactly, floats to 6
    significant digits (non-finite ones exactly), no value as None."""
    if want is None or isinstance(want, (str, int)):  # (bool too)
        return got == want and type(got) is type(want)
    if not isinstance(got, float):
        return False
    if math.isnan(want) or math.isinf(want):
        return math.isnan(got) if math.isnan(want) else got == want
    return abs(got - want) <= 5e-6 * abs(want) * (1 + 1e-9)


def _write_runs(out: Path, spec_runs: list[dict], order: list[int]) -> list[dict]:
    """Write a sweep directory of ``spec_runs`` (run i has index order[i]); the rows expected
    back, in the sweep file's order."""
    (out / S.SWEEP_FILE).write_text('name = "t"\n')
    expected = {}
    for i, (run, index) in enumerate(zip(spec_runs, order, strict=True)):
        spec = dict(run["spec"], index=index)
        metrics = dict(run["metrics"], **({"dci": run["dci"]} if run["dci"] else {}))
        files = {
            "metrics.json": json.dumps({"metrics": metrics}),
            runs.EVAL_LOSSES: json.dumps({"losses": {**run["val"], "kl_per_dim": [1.0]}}),
        }
        if run["last"] is not None:
            first = json.dumps({"step": 0, "loss": 1.0})
            files[runs.TRAIN_LOG] = f"{first}\n{json.dumps({**run['last'], 'kl_per_dim': [1]})}\n"
        _slot(out, i, spec, run["state"], files)
        state = run["state"] or {}
        last = run["last"] or {}
        row = {"name": spec["name"], "method": spec["method"],
               "status": state.get("status", "pending"), "seed": spec.get("seed"),
               **spec["params"], "duration_s": state.get("duration_s"),
               "error": state.get("error"), "step": last.get("step")}  # fmt: skip
        row.update({f"train/{k}": v for k, v in last.items() if k != "step"})
        row.update({f"val/{k}": v for k, v in run["val"].items()})
        row.update({k: v for k, v in run["metrics"].items() if not isinstance(v, bool)})
        row.update({f"dci/{k}": v for k, v in run["dci"].items()})
        expected[index] = row
    return [expected[i] for i in sorted(expected)]


@settings(max_examples=20)
@given(st.lists(_RUN, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_the_results_table_reads_back_every_value_as_written_in_the_sweep_files_order(
    tmp_path_factory, spec_runs, rnd
):
    """`write_results` then `read_results`: a row per run, in the order of the runs' indices
    (not of their directories); each value as written (text with commas, quotes and line ends;
    ints exactly; floats to 6 significant digits; nan and ±inf), a missing one None; a run
    without a state pending; lists and booleans left out. Columns: name, method, status, seed,
    the swept keys, duration_s, step, error, then train/, val/ and the metrics, each once."""
    out = _fresh(tmp_path_factory)
    order = list(range(len(spec_runs)))
    rnd.shuffle(order)
    expected = _write_runs(out, spec_runs, order)
    columns, _ = collect(out)
    assert len(set(columns)) == len(columns)
    assert columns[:4] == list(FIXED)
    swept = list(dict.fromkeys(k for row in expected for k in row if "." in k))
    assert columns[4 : 4 + len(swept)] == swept
    assert columns[4 + len(swept) : 7 + len(swept)] == list(AFTER)
    rest = columns[7 + len(swept) :]
    assert set(rest) == {k for row in expected for k in row} - set(columns[: 7 + len(swept)])
    prefix = [0 if c.startswith("train/") else 1 if c.startswith("val/") else 2 for c in rest]
    assert prefix == sorted(prefix)
    write_results(out)
    got = read_results(out)
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert list(row) == columns
        for c in columns:
            assert _same(row[c], want.get(c)), (c, row[c], want.get(c))


_LOG = [{"step": 10, "loss": 2.5, "kl": 1.0}, {"step": 20, "loss": 1.5, "kl": 0.5}]


@settings(max_examples=20)
@given(st.integers(0, 10**6), st.integers(0, 2), st.binary(max_size=6), st.booleans())
def test_a_torn_or_garbled_log_line_leaves_the_row_at_the_last_complete_record(
    tmp_path_factory, cut, where, junk, torn
):
    """The train/ values and step of a row are those of the log's last complete record: a
    last line torn mid-write (a crash) and lines of bytes that are not UTF-8, anywhere, are
    passed over, as `read_train_log` passes over them."""
    out = _fresh(tmp_path_factory)
    (out / S.SWEEP_FILE).write_text("")
    lines = [json.dumps(r).encode() for r in _LOG]
    lines.insert(where, b"\xff" + junk)
    raw = b"\n".join(lines) + b"\n"
    if torn:
        more = json.dumps({"step": 30, "loss": 0.5, "kl": 0.25}).encode()
        raw += more[: 1 + cut % (len(more) - 1)]
    _slot(out, 0, {"name": "a", "index": 0}, {"status": "failed"}, {})
    (out / S.RUNS / "slot0" / S.RUN / runs.TRAIN_LOG).write_bytes(raw)
    [row] = collect(out)[1]
    assert row["step"] == 20 and row["train/loss"] == 1.5 and row["train/kl"] == 0.5


_FILES = ["spec", "state", "metrics", "eval", "log", "sweep"]


@settings(max_examples=15)
@given(
    st.lists(_RUN, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from(_FILES), DAMAGE), min_size=1,
             max_size=4),
)  # fmt: skip
@example(
    [{"spec": {"name": "a", "method": "m", "params": {}}, "state": {"status": "done"},
      "metrics": {"mig": 0.5}, "dci": {}, "val": {}, "last": None}],
    [(0, "spec", ("json", {"name": "a", "method": ["m"], "params": [1]}))],
)  # fmt: skip
@example(
    [{"spec": {"name": "a", "method": "m", "params": {}}, "state": {"status": "done"},
      "metrics": {"mig": 0.5}, "dci": {}, "val": {}, "last": None}],
    [(0, "sweep", ("garbage", b"\xff"))],
)  # fmt: skip
@example(  # a spec cut to nothing: its slot sorted in the directory's arbitrary order
    [{"spec": {"name": ";", "method": ";", "params": {}}, "state": None, "metrics": {},
      "dci": {}, "val": {}, "last": None}] * 3,
    [(2, "spec", ("bytes", 0, []))],
)  # fmt: skip
def test_damaged_sweep_files_give_a_results_table_and_a_page_never_an_exception(
    tmp_path_factory, spec_runs, damages
):
    """Any run file cut, garbled, of the wrong JSON shape or gone: `write_results` and the
    sweep's page still come out, with a row per run that has a spec file (its name from
    there, else from its directory) whose status is its state's, pending without one. (A
    spec's ``index``, which orders the slots, is kept a number here: `state.slots`, outside
    these modules, cannot sort a text index among numbers.)"""
    out = _fresh(tmp_path_factory)
    _write_runs(out, spec_runs, list(range(len(spec_runs))))
    paths = {"spec": S.SPEC, "state": S.STATE, "metrics": f"{S.RUN}/metrics.json",
             "eval": f"{S.RUN}/{runs.EVAL_LOSSES}", "log": f"{S.RUN}/{runs.TRAIN_LOG}"}  # fmt: skip
    for i, which, damage in damages:
        if which == "sweep":
            path = out / S.SWEEP_FILE
        else:
            path = out / S.RUNS / f"slot{i % len(spec_runs)}" / paths[which]
        raw = _damaged(path.read_bytes() if path.is_file() else b"", damage)
        if which == "spec" and raw is not None:  # keep the index (`state.slots` sorts on it)
            doc = _json_of(raw)
            if isinstance(doc, dict):
                doc["index"] = i % len(spec_runs)
                raw = json.dumps(doc).encode()
        if which == "sweep" and raw is None:
            raw = b""  # (without its sweep file the folder is no sweep: not this property)
        _write(path, raw)
    slots = S.slots(out)  # index order; a spec damaged past its index last, by name
    assert sorted(slots) == [p for p in sorted((out / S.RUNS).iterdir())
                             if (p / S.SPEC).is_file()]  # fmt: skip
    indices = [_json_of((p / S.SPEC).read_bytes()) for p in slots]
    indices = [d.get("index") if isinstance(d, dict) else None for d in indices]
    whole = [i for i in indices if type(i) is int]
    assert indices[: len(whole)] == sorted(whole)
    assert [p.name for p in slots[len(whole) :]] == sorted(p.name for p in slots[len(whole) :])
    rows = collect(out)[1]
    assert len(rows) == len(slots)
    for row, slot in zip(rows, slots, strict=True):
        spec = _json_of((slot / S.SPEC).read_bytes())
        state = _json_of((slot / S.STATE).read_bytes()) if (slot / S.STATE).is_file() else {}
        spec, state = (d if isinstance(d, dict) else {} for d in (spec, state))
        assert row["name"] == spec.get("name", slot.name)
        assert row["status"] == state.get("status", "pending")
    write_results(out)
    assert len(read_results(out)) == len(slots)
    page = render_sweep_report(out)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def _json_of(raw: bytes):
    """The JSON value of a file's bytes, None when they are not UTF-8 JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        return None


class _Parsed(HTMLParser):
    """The start tags (with attributes) and text runs of a page, entities decoded."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


_MARK = st.text(st.sampled_from("ab <>&\"'=/;"), max_size=6)


@settings(max_examples=4)
@given(st.lists(st.tuples(_MARK, st.sampled_from(["done", "failed"])), min_size=1, max_size=3),
       _MARK)  # fmt: skip
def test_the_sweep_page_shows_names_and_values_as_text_never_as_markup(
    tmp_path_factory, marks, mark
):
    """Run names, method names, swept values, metric names, errors and the sweep file are
    escaped: the page holds no element they spell (``<x-in>``), and each reads back, entities
    decoded, as the text it is (in a table cell, a heading, the sweep file's listing)."""
    out = _fresh(tmp_path_factory)
    inject = lambda s: f'{s}<x-in a="1">&amp;{s}'  # noqa: E731
    metric = inject(mark)
    (out / S.SWEEP_FILE).write_text(f"# {inject(mark)}\n")
    for i, (m, status) in enumerate(marks):
        spec = {"name": inject(f"{m}{i}"), "method": inject(m), "index": i,
                "params": {"loss.beta": inject(f"v{i}")}}  # fmt: skip
        state = {"status": status, "error": inject(f"err{i}")}
        metrics = json.dumps({"metrics": {metric: 0.25 * i}})
        _slot(out, i, spec, state, {"metrics.json": metrics})
    parsed = _Parsed(render_sweep_report(out))
    assert "x-in" not in {tag for tag, _ in parsed.tags}
    texts = set(parsed.text)
    assert metric in texts and f"# {inject(mark)}\n" in texts
    for i, (m, status) in enumerate(marks):
        assert {inject(f"{m}{i}"), inject(m), inject(f"v{i}")} <= texts
        assert (inject(f"err{i}") in texts) == (status == "failed")
    alts = [a.get("alt") for tag, a in parsed.tags if tag == "img"]
    assert all(alt == metric for alt in alts)  # (a figure's alt text: its metric)


def test_names_with_dollar_signs_are_drawn_as_text_not_as_math(tmp_path):
    """Matplotlib reads ``$...$`` as math text and fails the figure on an invalid formula: a
    method, metric, swept value, logged key or run title holding one still gets its figure."""
    bad = r"a$\frac$b"
    out = tmp_path / "sweep"
    out.mkdir()
    (out / S.SWEEP_FILE).write_text("# a sweep\n")
    for i in range(2):
        spec = {"name": f"r{i}", "method": bad, "index": i, "params": {"loss.beta": f"{bad}{i}"}}
        _slot(out, i, spec, {"status": "done"}, {"metrics.json": json.dumps({"metrics": {bad: i}})})
    page = render_sweep_report(out)
    assert page.count('<img class="fig"') == 1 and escape(bad) in page
    records = [{"step": 1, "loss": 2.0, bad: 1.0}, {"step": 2, "loss": 1.0, bad: 0.5}]
    for fig in (curves.loss_curves(records, title=bad), curves.kl_bars([0.5, 0.1], title=bad)):
        assert curves.figure_to_array(fig).ndim == 3
    assert curves.literal("$5 and $x$") == r"\$5 and \$x\$"


_METRIC_VALUES = st.none() | st.just(math.nan) | st.integers(-4, 4).map(float)


@settings(max_examples=50)
@given(st.lists(st.tuples(_METRIC_VALUES, _METRIC_VALUES, _METRIC_VALUES), max_size=9),
       st.booleans())  # fmt: skip
def test_spearman_is_the_rank_correlation_of_the_runs_with_both_metrics(values, drop):
    """ρ(a, b) over the runs where both are finite: the Pearson correlation of their average
    ranks; None when fewer than 3 runs have both or one is constant on them. Symmetric, 1 on
    the diagonal, in [-1, 1], unchanged by a strictly increasing map of a metric (x³ + 7),
    negated by a decreasing one (-x). A missing key is a missing value."""
    names = ["a", "b", "c"]
    rows = [{n: v for n, v in zip(names, vals, strict=True) if not (drop and v is None)}
            for vals in values]  # fmt: skip
    matrix = spearman_matrix(rows, names)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            pairs = [(r[a], r[b]) for r in rows
                     if r.get(a) is not None and r.get(b) is not None
                     and math.isfinite(r[a]) and math.isfinite(r[b])]  # fmt: skip
            x, y = np.array(pairs).T if pairs else (np.zeros(0), np.zeros(0))
            if len(pairs) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
                assert matrix[i][j] is None
                continue
            rx, ry = stats.rankdata(x), stats.rankdata(y)
            pearson = ((rx - rx.mean()) @ (ry - ry.mean())) / math.sqrt(
                ((rx - rx.mean()) ** 2).sum() * ((ry - ry.mean()) ** 2).sum()
            )
            assert math.isclose(matrix[i][j], pearson, abs_tol=1e-12)
            assert -1 - 1e-12 <= matrix[i][j] <= 1 + 1e-12
            assert math.isclose(matrix[i][j], matrix[j][i], abs_tol=1e-12)
            if i == j:
                assert math.isclose(matrix[i][j], 1.0, abs_tol=1e-12)
    mapped = [{**r, **({"a": r["a"] ** 3 + 7} if r.get("a") is not None else {}),
               **({"b": -r["b"]} if r.get("b") is not None else {})} for r in rows]  # fmt: skip
    again = spearman_matrix(mapped, names)
    for i, j, sign in ((0, 2, 1), (0, 0, 1), (1, 2, -1), (0, 1, -1)):
        if matrix[i][j] is None:
            assert again[i][j] is None
        else:
            assert math.isclose(again[i][j], sign * matrix[i][j], abs_tol=1e-12)


# ============================================================================= report content

_STOPPED = st.one_of(
    st.tuples(st.just(True), st.fixed_dictionaries(
        {"step": st.integers(0, 99), "error": st.text(st.sampled_from("ab :"), max_size=6)})),
    st.tuples(st.just(False), st.sampled_from(
        [{"step": -1, "error": "x"}, {"step": True, "error": "x"}, {"step": "3", "error": "x"},
         {"step": 3}, {"step": 3, "error": 5}, [3, "x"], "x"])),
    st.tuples(st.just(False), st.sampled_from([b"{\"step\": 3, \"err", b"\xff", b""])),
)  # fmt: skip


def _as_bytes(doc) -> bytes:
    """A file's bytes: ``doc`` itself, or its JSON."""
    return doc if isinstance(doc, bytes) else json.dumps(doc).encode()


_LOG_STEPS = st.lists(st.integers(0, 60) | st.sampled_from(["7", None, 7.0]), max_size=5)


@settings(max_examples=40)
@given(
    st.integers(0, 50),
    st.one_of(st.integers(1, 60), st.sampled_from([0, -5, None, "40", True, 2.5])),
    st.lists(st.integers(0, 60), max_size=3),
    st.booleans(),
    _LOG_STEPS,
    st.none() | st.integers(0, 3) | st.sampled_from([True, "2"]),
    st.none() | _STOPPED,
)
def test_the_status_of_a_run_names_its_newest_checkpoint_and_why_it_stopped(
    tmp_path_factory, step, total, ckpts, has_model, log_steps, skipped, stopped
):
    """No trainer in it: ``finished`` when it has final weights and reached its total_steps
    (or has none); else ``stopped at step N[ of T]`` where N is its newest checkpoint (the
    weights' step without one), then why: the trainer's stopped.json when it is well formed,
    else non-finite updates skipped on the last logged line, else a log past N (crashed or
    killed); then how to resume, and a lower --lr after a non-finite stop. One line."""
    run = _fresh(tmp_path_factory)
    if has_model:
        (run / runs.MODEL).write_bytes(b"")
    (run / runs.CHECKPOINTS).mkdir()
    for s in ckpts:
        ckpt.checkpoint_path(run / runs.CHECKPOINTS, s).write_bytes(b"")
    (run / runs.CHECKPOINTS / "step_x.safetensors").write_bytes(b"")  # (not a checkpoint)
    records = [{"step": s, "loss": 1.0} for s in log_steps]
    if records and skipped is not None:
        records[-1]["skipped"] = skipped
    (run / runs.TRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in records))
    valid = False
    if stopped is not None:
        valid, doc = stopped
        _write(run / runs.STOPPED, _as_bytes(doc))
    record = {} if total is None else {"total_steps": total}
    view = RunView(run, None, record, step)
    status = run_status(view, curves.read_train_log(run / runs.TRAIN_LOG))
    _one_line(status)
    real_total = total if type(total) is int and total > 0 else None
    if has_model and (real_total is None or step >= real_total):
        assert status == "finished"
        return
    at = max(ckpts) if ckpts else step
    of = f" of {real_total}" if real_total else ""
    assert status.startswith(f"stopped at step {at}{of}")
    logged = max((s for s in log_steps if type(s) is int), default=None)
    last_skipped = records[-1].get("skipped") if records else None
    non_finite = type(last_skipped) is int and last_skipped > 0
    if valid:
        assert f"(training ended at step {doc['step']}: {doc['error']})" in status
    elif non_finite:
        assert f"({last_skipped} update" in status and f"by step {records[-1]['step']}" in status
    elif logged is not None and logged > at:
        assert f"it logged step {logged}, then crashed or was killed" in status
    else:
        assert status.startswith(f"stopped at step {at}{of}; resume")
    resume = f"resume: disvae train --resume {shlex.quote(str(run))}"
    lower = ", or train anew with a lower --lr"
    assert status.endswith(resume + (lower if valid or non_finite else ""))


@settings(max_examples=50)
@given(DAMAGE, DAMAGE)
def test_damaged_metrics_and_held_out_losses_are_left_out_with_a_one_line_note(
    tmp_path_factory, damage, eval_damage
):
    """metrics.json is taken when it is a JSON object whose ``metrics`` is an object, else it
    is no metrics (None). eval_losses.json is taken, its losses kept to numbers and lists of
    numbers, or left out with one line naming the file and the command that writes it again;
    no file, no note."""
    run = _fresh(tmp_path_factory)
    good = {"metrics": {"mig": 0.5, "dci": {"completeness": 0.25}}, "step": 3}
    raw = _damaged(json.dumps(good).encode(), damage)
    _write(run / "metrics.json", raw)
    try:
        doc = json.loads(raw.decode("utf-8")) if raw is not None else None
    except ValueError:
        doc = None
    ok = isinstance(doc, dict) and isinstance(doc.get("metrics"), dict)
    assert read_metrics(run) == (doc if ok else None)
    assert read_eval_losses(run) == (None, None)
    losses = {"recon": 10.5, "kl": 2.0, "kl_per_dim": [1.0, 1.0], "n": True}
    raw = _damaged(json.dumps({"losses": losses, "step": 3}).encode(), eval_damage)
    _write(run / runs.EVAL_LOSSES, raw)
    doc, note = read_eval_losses(run)
    if raw is None:
        assert (doc, note) == (None, None)
    elif doc is None:
        _one_line(note)
        assert runs.EVAL_LOSSES in note and f"disvae evaluate {shlex.quote(str(run))}" in note
    else:
        assert note is None and doc["losses"]
        for v in doc["losses"].values():
            assert _kind(v) is not None


def _tiny_vae(latent_dim: int = 2) -> VAE:
    """A linear VAE of 1×4×4 images (weights of a fixed seed): cheap to draw every figure of."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 2 * latent_dim))
    decoder = nn.Sequential(nn.Linear(latent_dim, 16), nn.Unflatten(1, (1, 4, 4)))
    return VAE(encoder, decoder, latent_dim).eval()


_SMALL = ReportOptions(n_cols=2, n_frames=2, explorer_steps=3, explorer_images=0)


@settings(max_examples=3)
@given(st.lists(_RECORD | _ODD, max_size=4), DAMAGE, DAMAGE, st.none() | _STOPPED)
@example([{"step": 1, "loss": 1.0}, {"step": 2, "loss": [2.0]}], ("missing",), ("missing",), None)
def test_a_runs_report_content_from_damaged_files_is_notes_and_figures_never_an_exception(
    tmp_path_factory, records, metrics_damage, eval_damage, stopped
):
    """`run_content` of a run (no dataset) whose log, metrics.json, eval_losses.json and
    stopped.json are damaged: it comes back and its page renders; every note is one line; the
    loss curves are there exactly when the log has a record, else a note says there are none."""
    run = _fresh(tmp_path_factory)
    (run / runs.TRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in records) + '{"st')
    _write(run / "metrics.json", _damaged(b'{"metrics": {"mig": 0.5}}', metrics_damage))
    _write(run / runs.EVAL_LOSSES, _damaged(b'{"losses": {"kl": 1.0}}', eval_damage))
    if stopped is not None:
        _write(run / runs.STOPPED, _as_bytes(stopped[1]))
    view = RunView(run, _tiny_vae(), {"total_steps": 10}, 2, kl=np.array([0.5, 0.0]))
    content = run_content(view, _SMALL)
    page = single_page(content)
    assert page.startswith("<!DOCTYPE html>")
    for note in content.notes:
        _one_line(note)
    assert ("losses" in content.figures) == bool(records)
    assert ("No logged training steps yet." in content.notes) == (not records)
    for _, fact in content.facts:
        assert "\n" not in fact
