"""The HTML report: self-contained, every section present, metrics shown, runs compared, and
its latent explorer driven in a real (headless) browser."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from disvae import config as C
from disvae import runs
from disvae.cli_viz import add_report_parser
from disvae.errors import UserError
from disvae.evaluation import evaluate
from disvae.report import ReportOptions, build_report, render_report
from disvae.report.content import (
    RunContent,
    display_names,
    explorer_data,
    read_eval_losses,
    run_content,
    run_status,
)
from disvae.report.html import COMPARE_SECTIONS, SINGLE_SECTIONS, _heldout_body, _metrics_body
from disvae.training import train
from disvae.training.loop import Trainer
from disvae.viz import decode
from disvae.viz.images import read_png
from disvae.viz.plots import open_run
from test_viz import as_pixels, file_size_limit, make_run, needs_fsize_limit

SMALL = ReportOptions(n_cols=3, n_frames=4, explorer_steps=5, explorer_images=2)
METRICS = {"metrics": {"mig": 0.31, "dci": {"disentanglement": 0.42, "completeness": 0.5,
           "informativeness": 0.9}}, "protocol": {"n_train": 1000}, "step": 20,
           "versions": {"disvae": "0.1.0"}}  # fmt: skip


class _Collector(HTMLParser):
    """Ids, external references and the explorer's data block of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id":
                self.ids.add(value)
            if name in ("src", "href") and value:
                self.refs.append(value)


def _parse(html: str) -> _Collector:
    p = _Collector()
    p.feed(html)
    p.close()
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("report") / "b1", decoder_gain=3.0)
    (run / "metrics.json").write_text(json.dumps(METRICS))
    return run


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    return build_report([run_dir], options=SMALL)


def test_report_is_self_contained_with_every_section(report, run_dir):
    assert report == run_dir / "report.html"
    html = report.read_text()
    page = _parse(html)
    assert {key for key, _ in SINGLE_SECTIONS} <= page.ids
    assert {"ex-image", "explorer-data"} <= page.ids
    assert "://" not in html, "no external URL (http, https, file, CDN)"
    assert all(r.startswith(("data:image/", "#")) for r in page.refs), page.refs
    assert "<link" not in html and "@import" not in html
    assert html.count('type="range"') == 4  # one slider per latent


def test_report_shows_metrics_config_and_explorer_data(report):
    html = report.read_text()
    assert "dci.disentanglement" in html and "0.42" in html and ">mig<" in html
    assert "betaB" in html and "dsprites_tiny" in html  # objective and dataset
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', html, re.S).group(1))
    assert len(data["values"]) == 5 and len(data["dims"]) == 4
    assert len(data["bases"]) == 1 + 2  # the prior mean and two posterior images
    assert all(b["sprite"].startswith("data:image/png;base64,") for b in data["bases"])


def test_comparison_page_puts_runs_side_by_side(run_dir, tmp_path):
    other = make_run(tmp_path / "tc1", latent_dim=3)
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "compare.html"
    args = parser.parse_args(["report", str(run_dir), str(other), "-o", str(out), "-c", "3", "-q"])
    assert args.func(args) == 0
    html = out.read_text()
    page = _parse(html)
    assert {key for key, _ in COMPARE_SECTIONS} <= page.ids
    assert "b1" in html and "tc1" in html and "0.31" in html and "model.latent_dim" in html
    assert "://" not in html
    with pytest.raises(UserError):
        build_report([tmp_path / "not-a-run"])


def test_report_of_a_train_log_with_bytes_that_are_not_utf8(tmp_path):
    run = make_run(tmp_path / "r")
    with open(run / "train_log.jsonl", "ab") as f:
        f.write(b'\xff\xfe{"step": 25}\n')
    html = build_report([run], options=SMALL).read_text()
    assert "No logged training steps" not in html  # the four good lines are plotted


def _report_err(argv: list[str], capsys) -> str:
    from disvae import cli

    assert cli.main(["report", *argv]) == 2  # argparse's refusals too
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-s", "-1"], "argument -s/--seed: must be at least 0, got -1"),
        (["-c", "100000"], "argument -c/--cols: must be at most 64, got 100000"),
        (["--slider-steps", "5000"], "argument --slider-steps: must be at most 101, got 5000"),
        (["-t", "inf"], "argument -t/--max-traversal: must be a number in (0, 1000]"),
        (["-o", "{run}/config.json"], "exists and is not an HTML file; refusing to overwrite it"),
        (["-o", "{run}"], "is a directory; pass a file name"),
    ],
)
def test_report_bad_counts_seeds_and_outputs_are_one_line_errors(tmp_path, capsys, flags, message):
    run = make_run(tmp_path / "r")
    before = (run / "config.json").read_bytes()
    err = _report_err([str(run), *[f.format(run=run) for f in flags]], capsys)
    assert message in err and "Traceback" not in err
    assert (run / "config.json").read_bytes() == before and not (run / "report.html").exists()


def test_report_options_refuse_what_the_cli_refuses():
    for bad in ({"seed": -1}, {"n_cols": 100_000}, {"max_traversal": float("nan")},
                {"explorer_steps": 1}):  # fmt: skip
        with pytest.raises(UserError):
            ReportOptions(**bad)


# ---------------------------------------------------------------------- status, held-out losses


def _train(out: Path, data, *extra: str) -> Path:
    cfg = C.apply_overrides(
        C.RunConfig(),
        ["dataset=dsprites_tiny", "batch_size=16", "latent_dim=3", "steps=10", "log_every=3",
         "checkpoint_every=4", "snapshot_every=0", *extra],
    )  # fmt: skip
    return train(cfg, out, data=data, progress=False)


def _status(run: Path) -> str:
    view = open_run(run, load_data=False)
    return run_status(view, view.train_log())


def _section(html: str, key: str) -> str:
    return re.search(rf'<section id="{key}">(.*?)</section>', html, re.S).group(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real 10-step run (checkpoints at 4, 8 and 10; log lines at 3, 6, 9 and 10)."""
    return _train(tmp_path_factory.mktemp("trained") / "t", None)  # dsprites_tiny: conftest


def test_status_of_a_finished_a_training_and_an_unfinished_run(trained, tmp_path):
    assert _status(trained) == "finished"
    with runs.RunLock(trained, create=False):  # as a trainer holds it while it trains
        assert _status(trained) == "training (step 10 of 10)"
    assert _status(trained) == "finished"  # the lock file stays; nobody holds it
    run = shutil.copytree(trained, tmp_path / "u")
    (run / runs.MODEL).unlink()
    assert _status(run) == f"stopped at step 10 of 10; resume: disvae train --resume {run}"
    # Killed after the log line of step 10 but before its checkpoint: resumable from step 4.
    for step in (8, 10):
        (run / runs.CHECKPOINTS / f"step_{step:09d}.safetensors").unlink()
    assert _status(run) == (
        "stopped at step 4 of 10 (its newest checkpoint; it logged step 10, then crashed or was "
        f"killed); resume: disvae train --resume {run}"
    )
    (run / runs.EVAL_LOSSES).write_text("{")  # damaged: left out, with a note
    html = build_report([run], options=SMALL).read_text()
    summary = _section(html, "summary")
    assert "stopped at step 4 of 10 (its newest checkpoint" in summary
    assert "training (checkpoint)" not in html
    assert "eval_losses.json is damaged" in summary
    assert "No eval_losses.json yet" in _section(html, "heldout")


def test_status_of_a_run_stopped_by_a_signal_and_of_one_stopped_by_nans(
    tiny_data, tmp_path, monkeypatch
):
    step = Trainer.train_step

    def sigterm_at_6(self):
        if self.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: stop after this step
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", sigterm_at_6)
    run = _train(tmp_path / "s", tiny_data)
    assert not (run / runs.MODEL).exists()
    assert _status(run) == f"stopped at step 7 of 10; resume: disvae train --resume {run}"

    def nan_from_5(self):
        if self.step >= 5:
            with torch.no_grad():
                for p in self.model.decoder.parameters():
                    p.fill_(float("nan"))
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", nan_from_5)
    with pytest.raises(UserError, match="not finite") as raised:
        _train(tmp_path / "n", tiny_data, "nan_patience=2", "nan_rollbacks=1")
    # The trainer's own record: the step it stopped at and the error it raised.
    assert runs.read_stopped(tmp_path / "n")["error"] == str(raised.value)
    stopped_at = runs.read_stopped(tmp_path / "n")["step"]
    assert stopped_at > 4
    assert _status(tmp_path / "n") == (
        f"stopped at step 4 of 10 (training ended at step {stopped_at}: {raised.value}); resume: "
        f"disvae train --resume {tmp_path / 'n'}, or train anew with a lower --lr"
    )
    # A run without the record (written before it existed, or the file damaged): the last log
    # line's count of skipped updates says as much.
    (tmp_path / "n" / runs.STOPPED).write_text("{")
    assert runs.read_stopped(tmp_path / "n") is None
    assert _status(tmp_path / "n") == (
        "stopped at step 4 of 10 after non-finite losses (1 update skipped by step 6, the last "
        f"logged line); resume: disvae train --resume {tmp_path / 'n'}, or train anew with a "
        "lower --lr"
    )


def test_held_out_losses_appear_in_the_report_and_side_by_side(trained, tiny_data, tmp_path):
    run = shutil.copytree(trained, tmp_path / "e")
    result = evaluate(run, data=tiny_data, device="cpu")
    html = render_report([run], SMALL, data=tiny_data)
    heldout = _section(html, "heldout")
    for term in ("loss", "recon", "kl"):
        value = result["losses"][term]
        assert f'<td>{term}</td><td class="num">{value:.4g}</td>' in heldout, term
    assert f"on {result['n_images']} held-out images (the val split)" in heldout
    assert result["n_images"] == 205 and "with the weights of step 10." in heldout
    # Side by side with a run whose file is damaged: its column says so, nothing fails.
    other = make_run(tmp_path / "none", latent_dim=3)
    (other / runs.EVAL_LOSSES).write_text('{"step": 10, "losses": {"recon": "x"}}')
    compare = _section(render_report([run, other], SMALL, data=tiny_data), "heldout")
    recon = result["losses"]["recon"]
    assert f'<td>recon</td><td class="num">{recon:.4g}</td><td>—</td>' in compare
    # Losses of older weights than those shown say so.
    stale = RunContent("e", [], {}, eval_losses={**result, "step": 8}, step=10)
    assert "with the weights of step 8; the weights shown here are step 10" in _heldout_body(stale)


def test_metrics_of_older_weights_say_so_as_the_held_out_losses_do(trained, tiny_data, tmp_path):
    """Scored at step 10, then resumed to step 12: both tables are of the weights of step 10,
    and both say so, with the command that scores the weights shown (the metrics said only
    "At step 10.")."""
    from disvae.evaluation import evaluate_metrics

    run = shutil.copytree(trained, tmp_path / "r")
    evaluate(run, data=tiny_data, device="cpu")
    evaluate_metrics(run, ["unsupervised"], n_samples=100, n_test=50, data=tiny_data,
                     device="cpu")  # fmt: skip
    train(C.apply_overrides(runs.read_config(run), ["steps=12"]), run, data=tiny_data,
          resume=True, progress=False)  # fmt: skip
    html = render_report([run], SMALL, data=tiny_data)
    stale = "with the weights of step 10; the weights shown here are step 12: run <code>"
    metrics, heldout = _section(html, "metrics"), _section(html, "heldout")
    assert stale + "disvae evaluate RUN --metrics unsupervised</code> again" in metrics
    assert stale + "disvae evaluate RUN</code> again" in heldout
    # Of the weights shown: no note. A file without its metric names (written by other code)
    # still says what to run.
    c = RunContent("r", [], {}, metrics={"metrics": {"mig": 0.3}, "step": 10}, step=10)
    assert "with the weights of step 10.</p>" in _metrics_body(c)
    c.step = 12
    assert "run <code>disvae evaluate RUN --metrics NAMES</code> again" in _metrics_body(c)


def test_a_factor_vae_score_without_active_dimensions_is_noted_as_no_score():
    doc = {"metrics": {"factor_vae": {"train_accuracy": 0.0, "eval_accuracy": 0.0,
                                      "num_active_dims": 0.0}}, "step": 10}  # fmt: skip
    body = _metrics_body(RunContent("r", [], {}, metrics=doc, step=10))
    assert "factor_vae: no code dimension was active" in body and "not a score" in body
    doc["metrics"]["factor_vae"].update(eval_accuracy=0.8, num_active_dims=3.0)
    assert "no code dimension" not in _metrics_body(RunContent("r", [], {}, metrics=doc, step=10))


def test_the_kl_table_the_explorer_and_the_figures_write_a_kl_alike(run_dir):
    """One rule (`format_kl`) on the bars, the traversal labels, the report's table and the
    explorer's sliders: 0.004943 was "0.004943" in the table and "0.00" beside its slider."""
    from disvae.report.html import _explorer_body, _kl_body
    from disvae.viz import kl_bars
    from disvae.viz.curves import format_kl
    from disvae.viz.traversal import row_labels

    kl = [0.004943, 0.0078, 0.0112, 1.23456, 0.0, 123.4, 2.0]
    order = sorted(range(len(kl)), key=lambda d: -kl[d])
    want = [format_kl(kl[d]) for d in order]
    assert want == ["123", "2", "1.23", "0.0112", "<0.01", "<0.01", "0"]
    pairs = list(zip(order, want, strict=True))
    table = re.findall(r'<td>z(\d+)</td><td class="num">([^<]*)</td>',
                       _kl_body(RunContent("r", [], {}, kl=kl)))  # fmt: skip
    assert [(int(d), html_unescape(t)) for d, t in table] == pairs
    ex = {"cell": [2, 2], "values": [-1.0, 1.0], "dims": order, "kl": [kl[d] for d in order],
          "bases": []}  # fmt: skip
    sliders = re.findall(r'<span>z(\d+) <span class="note">KL ([^<]*)</span>', _explorer_body(ex))
    assert [(int(d), html_unescape(t)) for d, t in sliders] == pairs
    bars = [t.get_text() for t in kl_bars(kl).axes[0].texts]
    assert bars == want
    assert row_labels(order, np.array(kl)) == [f"z{d} KL {t}" for d, t in pairs]
    # No KL known (no data, no eval_losses.json, no kl_per_dim logged): no "KL 0" by a slider.
    view = open_run(run_dir)
    view.kl = None
    ex = explorer_data(view, ReportOptions(n_cols=3, explorer_steps=3, explorer_images=0))
    assert ex["kl"] is None and ex["dims"] == [0, 1, 2, 3]
    labels = re.findall(r'<label class="ex-slider"><span>(.*?)</span><input', _explorer_body(ex))
    assert labels == ["z0", "z1", "z2", "z3"]


@pytest.mark.parametrize(
    "text",
    [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"losses": [1]}', b'{"losses": {"recon": "x"}}',
     b'{"losses": {"kl": true, "kl_per_dim": []}}'],
)  # fmt: skip
def test_a_damaged_eval_losses_file_is_left_out_with_a_note(tmp_path, text):
    (tmp_path / runs.EVAL_LOSSES).write_bytes(text)
    doc, note = read_eval_losses(tmp_path)
    assert doc is None and note.startswith("eval_losses.json is damaged")
    assert f"`disvae evaluate {tmp_path}` writes it again" in note
    (tmp_path / runs.EVAL_LOSSES).write_text('{"losses": {"kl": 1.5, "bad": "x", "d": [1, 2]}}')
    assert read_eval_losses(tmp_path) == ({"losses": {"kl": 1.5, "d": [1, 2]}}, None)


def _sweep(root: Path) -> Path:
    """A sweep directory's skeleton with two run slots a and b (runs made by `make_run`)."""
    (root / "runs").mkdir(parents=True)
    (root / "sweep.toml").write_text("")
    for name in ("a", "b"):
        (root / "runs" / name).mkdir()
        (root / "runs" / name / "spec.json").write_text("{}")
        make_run(root / "runs" / name / "run", latent_dim=3)
    return root


def test_a_sweep_directory_among_runs_says_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where compare.html would go
    sweep, run = _sweep(tmp_path / "sw"), make_run(tmp_path / "r", latent_dim=3)
    err = _report_err([str(sweep), str(run)], capsys)
    assert (
        f"{str(sweep)!r} is a sweep directory, not a run: `disvae report {sweep}` with no " in err
    )
    assert f"pass their run directories ({sweep}/runs/NAME/run)" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    err = _report_err([str(run), str(sweep / "runs" / "a")], capsys)
    assert (
        f"is a sweep's run slot; pass its run directory {str(sweep / 'runs' / 'a' / 'run')!r}"
        in err
    )
    err = _report_err([str(run), str(tmp_path / "r" / ".." / "r")], capsys)
    assert "again; pass each run once" in err and err.count("\n") == 1
    assert not (tmp_path / "compare.html").exists()
    # The sweep's page alone takes none of a run report's options (it would ignore them).
    for flags in (["-c", "3"], ["--data-path", str(tmp_path)], ["--slider-steps", "5"]):
        err = _report_err([str(sweep), *flags], capsys)
        assert "applies to a run's report, not to a sweep's page" in err, flags
    assert not (sweep / "report.html").exists()
    # Runs of sweeps are named by their slot (every run directory of a sweep is called "run").
    other = _sweep(tmp_path / "sw2")
    paths = [
        sweep / "runs" / "a" / "run",
        sweep / "runs" / "b" / "run",
        other / "runs" / "a" / "run",
    ]
    assert display_names(paths) == ["sw/a", "b", "sw2/a"]
    assert display_names([run, tmp_path / "sw" / "runs" / "a"]) == ["r", "a"]


# ---------------------------------------------------------------------- in a real browser

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--window-size=800,600", "--virtual-time-budget=3000", "--hide-scrollbars"]  # fmt: skip


def _screenshot(page: Path, fragment: str, out: Path) -> np.ndarray:
    """Chromium's screenshot of ``page#fragment``, uint8 (H, W, 3)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [_CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
               f"{page.resolve().as_uri()}#{fragment}"]  # fmt: skip
        subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert out.is_file(), f"chromium wrote no screenshot: {' '.join(cmd)}"
    return read_png(out)


@pytest.mark.skipif(
    _CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_a_slider_changes_the_displayed_image(report, tmp_path):
    html = report.read_text()
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', html, re.S).group(1))
    dim, top = data["dims"][0], data["values"][-1]
    # The hook pins the explorer image to the window's top-left 256x256 pixels; with a
    # slider it moves that slider through the page's own input event.
    still = _screenshot(report, "test-slider", tmp_path / "still.png")[:256, :256].astype(int)
    moved = _screenshot(report, f"test-slider={dim}:{top}", tmp_path / "moved.png")
    moved = moved[:256, :256].astype(int)
    again = _screenshot(report, "test-slider", tmp_path / "again.png")[:256, :256].astype(int)
    assert np.array_equal(still, again), "screenshots of the same state must agree"
    assert not (still == 136).all(), "the sprite is drawn (not the empty #888 box)"
    assert moved.std() > 10, "the moved slider shows a decoded image, not a flat box"
    assert np.abs(moved - still).mean() > 2.0, "moving the slider must change the image"


# ---------------------------------------------------------------------- the explorer's pixels


def _explorer(html: str) -> dict:
    return json.loads(re.search(r'id="explorer-data">(.*?)</script>', html, re.S).group(1))


def _png(uri: str) -> np.ndarray:
    """A PNG data URI as int pixels (H, W, C)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        arr = np.asarray(im)
    return (arr[:, :, None] if arr.ndim == 2 else arr).astype(int)


# The page's own script run by Node.js on a stand-in for the few DOM calls it makes. Input on
# stdin: {js, data, sliders: [{dim, row}] (the page's inputs, in order), actions: [{base} |
# {dim, step}]}; output: the explorer image's style after each action (a click on a starting
# code's button, or a slider moved to a step through its input event, as a user does).
_FAKE_DOM = r"""
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const node = (extra) => Object.assign({style: {}, textContent: "", dataset: {}, listeners: {},
  classList: {add() {}, toggle() {}},
  addEventListener(type, f) { this.listeners[type] = f; },
  dispatchEvent(e) { if (this.listeners[e.type]) this.listeners[e.type](e); }}, extra);
const byId = {"explorer-data": node({textContent: input.data}), "ex-image": node(),
              "ex-caption": node(), "ex-reset": node()};
const sliders = input.sliders.map((a) => { const out = node();
  return node({value: "0", dataset: a, parentNode: {querySelector: () => out}}); });
const buttons = JSON.parse(input.data).bases.map(() => node());
globalThis.document = {getElementById: (id) => byId[id] || null, body: node(),
  querySelectorAll: (sel) => (sel === ".ex-slider input" ? sliders : buttons)};
globalThis.location = {hash: ""};
new Function(input.js)();
const shown = [];
for (const a of input.actions) {
  if ("base" in a) buttons[a.base].listeners.click();
  else { const s = sliders.find((i) => i.dataset.dim === String(a.dim));
         s.value = String(a.step); s.dispatchEvent({type: "input"}); }
  const st = byId["ex-image"].style;
  shown.push({image: st.backgroundImage, position: st.backgroundPosition,
              size: st.backgroundSize, height: st.height});
}
process.stdout.write(JSON.stringify(shown));
"""


def _shown_cell(style: dict, sprite: np.ndarray) -> np.ndarray:
    """The part of ``sprite`` the explorer image shows: its 256-pixel-wide box over the sheet
    as the script scaled and moved it, in the sheet's pixels."""
    px = lambda text: [float(v) for v in re.findall(r"-?[\d.]+(?=px)", text)]  # noqa: E731
    (sheet_w, sheet_h), (x, y), [box_h] = (
        px(style["size"]),
        px(style["position"]),
        px(style["height"]),
    )
    sx, sy = sprite.shape[1] / sheet_w, sprite.shape[0] / sheet_h  # sheet pixels per CSS pixel
    left, top = round(-x * sx), round(-y * sy)
    return sprite[top : top + round(box_h * sy), left : left + round(256 * sx)]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_explorer_script_shows_the_decode_of_the_code_its_sliders_show(report, run_dir):
    """What the page's script puts in the explorer's box, after clicks and slider moves, is the
    decode of the starting code with the moved latent at the slider's value (to the sheets' 32
    grey levels), for every latent and starting code."""
    html = report.read_text()
    data = _explorer(html)
    sliders = [
        {"dim": d, "row": r}
        for d, r in re.findall(r'<input type="range"[^>]*data-dim="(\d+)" data-row="(\d+)"', html)
    ]
    assert [int(a["dim"]) for a in sliders] == data["dims"]
    js = re.findall(r"<script>(.*?)</script>", html, re.S)[-1]
    steps = len(data["values"])
    actions, expected = [], []  # (base, dim or None, step)
    for k in range(len(data["bases"])):
        actions.append({"base": k})
        expected.append((k, None, None))
        for d in data["dims"]:
            for s in (0, steps - 1, 1):
                actions.append({"dim": d, "step": s})
                expected.append((k, d, s))
    run = subprocess.run(
        ["node", "-e", _FAKE_DOM],
        input=json.dumps({"js": js, "data": json.dumps(data), "sliders": sliders,
                          "actions": actions}),  # fmt: skip
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    shown = json.loads(run.stdout)
    model = open_run(run_dir, load_data=False).model
    h, w = data["cell"]
    for style, (k, d, s) in zip(shown, expected, strict=True):
        base = data["bases"][k]
        assert style["image"] == f'url("{base["sprite"]}")'
        cell = _shown_cell(style, _png(base["sprite"]))
        z = np.array([base["code"]], np.float32)
        if d is not None:
            z[0, d] = data["values"][s]
        want = as_pixels(decode(model, z))[0]
        assert cell.shape == want.shape == (h, w, 1), (k, d, s)
        assert np.abs(cell - want).max() <= 5, (k, d, s)  # 32 levels: 4 off, and the rounding


def test_an_explorer_without_posterior_images_starts_from_the_prior_mean_alone(run_dir):
    view = open_run(run_dir)
    opts = ReportOptions(n_cols=3, explorer_steps=3, explorer_images=0)
    ex = explorer_data(view, opts)
    assert [b["label"] for b in ex["bases"]] == ["prior mean (z = 0)"]
    sheet = _png(ex["bases"][0]["sprite"])
    z = np.zeros((1, 4), np.float32)
    z[0, ex["dims"][0]] = ex["values"][2]
    want = as_pixels(decode(view.model, z))[0]
    assert np.abs(sheet[:64, 3 * 64 : 4 * 64] - want).max() <= 5  # row 0, column 1 + step 2


@needs_fsize_limit
def test_a_report_write_that_fails_half_way_keeps_the_old_file_and_leaves_no_other(
    tmp_path, monkeypatch
):
    import disvae.report

    out = tmp_path / "out.html"
    out.write_text("<p>the report of yesterday</p>")
    monkeypatch.setattr(disvae.report, "render_report", lambda *a, **k: "<p>x</p>" * 10_000)
    with file_size_limit(4096), pytest.raises(UserError, match="cannot write the report to"):
        build_report([tmp_path], out)  # as a full disk (or Ctrl-C) would stop it
    assert out.read_text() == "<p>the report of yesterday</p>"
    assert sorted(os.listdir(tmp_path)) == ["out.html"]  # no half-written temporary left behind


def test_a_run_stopped_before_its_end_shows_the_training_frames_it_stored(tmp_path):
    """Only a finished run's trainer writes training.gif; a run still training or stopped early
    has the frames alone, and the report animates those (writing nothing into the run)."""
    from PIL import Image, ImageSequence

    from disvae.viz import append_training_frame
    from disvae.viz.images import posterize

    run = make_run(tmp_path / "r", finished=False)
    rng = np.random.default_rng(0)
    frames = {s: rng.integers(0, 256, (20, 30, 1), dtype=np.uint8) for s in (0, 5, 10)}
    for step, frame in frames.items():
        append_training_frame(run, step, frame)
    before = sorted(p.name for p in run.iterdir())
    html = render_report([run], SMALL)
    assert sorted(p.name for p in run.iterdir()) == before  # no training.gif written
    uri = re.search(r'src="(data:image/gif;base64,[^"]*)"', _section(html, "training")).group(1)
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        shown = [np.asarray(f.convert("L")).astype(int) for f in ImageSequence.Iterator(im)]
    assert len(shown) == 3
    for got, frame in zip(shown, frames.values(), strict=True):  # under a 14-pixel caption
        np.testing.assert_array_equal(got[14:], posterize(frame, 16)[:, :, 0])
        assert (got[:14] < 128).any()  # the step's caption


def test_the_gif_note_says_what_its_columns_are(trained, tiny_data):
    """Without the dataset the traversal GIF starts from prior samples; the page said they were
    posterior means of images all the same."""
    from disvae.report.html import single_page

    opts = ReportOptions(explorer_images=0)
    without = single_page(run_content(open_run(trained, load_data=False), opts, explorer=False))
    with_data = single_page(run_content(open_run(trained, data=tiny_data), opts, explorer=False))
    assert "columns are codes drawn from the prior" in _section(without, "gifs")
    assert "posterior means" not in _section(without, "gifs")
    assert "columns are the posterior means of different images" in _section(with_data, "gifs")


def test_the_explorer_block_is_strict_json_when_a_kl_is_not_finite(run_dir):
    """A diverged latent's KL (inf) or a NaN code would make Python write Infinity/NaN, which
    the page's JSON.parse refuses: the whole explorer would then stay blank."""
    from disvae.report.html import _explorer_body

    ex = explorer_data(open_run(run_dir), ReportOptions(n_cols=3, explorer_steps=3))
    ex["kl"][0] = float("inf")
    ex["bases"][0]["code"][1] = float("nan")
    block = re.search(r'id="explorer-data">(.*?)</script>', _explorer_body(ex), re.S).group(1)

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    data = json.loads(block, parse_constant=refuse)  # as strict as a browser's JSON.parse
    assert data["kl"][0] is None and data["bases"][0]["code"][1] is None
    assert data["kl"][1:] == ex["kl"][1:] and data["values"] == ex["values"]
