"""The HTML report: self-contained, every section present, metrics shown, runs compared, and
its latent explorer driven in a real (headless) browser."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from disvae.cli_viz import add_report_parser
from disvae.errors import UserError
from disvae.report import ReportOptions, build_report
from disvae.report.html import COMPARE_SECTIONS, SINGLE_SECTIONS
from disvae.viz.images import read_png
from test_viz import make_run

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
