"""`disvae report`: one self-contained HTML file per run, or one comparing several runs.

Images and GIFs are inlined as data URIs and the stylesheet and script are inlined too, so
the file opens from disk in any browser with no network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from disvae.errors import UserError
from disvae.report.content import (
    ReportOptions,
    RunContent,
    check_run_dir,
    display_names,
    run_content,
)
from disvae.report.html import compare_page, single_page
from disvae.utils import atomic_write_bytes

log = logging.getLogger(__name__)

REPORT = "report.html"

__all__ = ["REPORT", "ReportOptions", "RunContent", "build_report", "render_report"]


def render_report(
    run_dirs: Sequence[str | Path],
    options: ReportOptions | None = None,
    *,
    data: Any = None,
) -> str:
    """The HTML text of the report of one run, or of the comparison of several.

    Args:
        run_dirs: one or more run directories (finished or still training).
        options: sizes of the embedded figures.
        data: an `ArrayDataset` to use for every run instead of loading each run's dataset.
    """
    from disvae.viz.plots import open_run

    if not run_dirs:
        raise UserError("pass at least one run directory")
    opts = options or ReportOptions()
    paths = [Path(p) for p in run_dirs]
    for p in paths:
        check_run_dir(p)
    resolved = [p.resolve() for p in paths]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            first = paths[resolved.index(r)]
            raise UserError(
                f"{str(paths[i])!r} is the run {str(first)!r} again; pass each run once"
            )
    single = len(paths) == 1
    contents = []
    for p, name in zip(paths, display_names(paths), strict=True):
        log.info("collecting %s", p)
        contents.append(run_content(open_run(p, data=data), opts, explorer=single))
        contents[-1].name = name
    return single_page(contents[0]) if single else compare_page(contents)


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    options: ReportOptions | None = None,
    *,
    data: Any = None,
) -> Path:
    """Write the report to ``out`` (default ``RUN/report.html`` for one run,
    ``compare.html`` in the working directory for several) and return its path."""
    if out is None:
        out = Path(run_dirs[0]) / REPORT if len(run_dirs) == 1 else Path("compare.html")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"-o {str(out)!r} is a directory; pass a file name such as report.html")
    if out.exists() and out.suffix.lower() not in (".html", ".htm"):
        raise UserError(
            f"-o {str(out)!r} exists and is not an HTML file; refusing to overwrite it, "
            "pass a new file name or an .html file"
        )
    html = render_report(run_dirs, options, data=data)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # (through a temporary file, removed if the write fails or is interrupted)
        atomic_write_bytes(out, html.encode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot write the report to {str(out)!r}: {e.strerror or e}") from None
    return out
