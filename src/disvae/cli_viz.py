"""The `disvae plot` and `disvae report` subcommands (added to the parser by `disvae.cli`).

This module imports nothing heavy (the `disvae.viz` package pulls in torch and matplotlib), so
that `disvae --help` stays instant; the commands import what they need when they run.

Each ``add_*_parser(subparsers)`` adds its subcommand and sets ``func`` to a command taking the
parsed ``args`` and returning an exit code. Bad input raises `disvae.errors.UserError`.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from disvae.cli_format import HelpFormatter
from disvae.errors import UserError

# The names of `disvae.viz.plots.PLOTS` (kept here so that building the parser stays light;
# a test checks that the two agree).
PLOTS = (
    "samples", "data-samples", "reconstruct", "traversals", "reconstruct-traverse",
    "gif-traversals", "kl", "losses",
)  # fmt: skip

# Limits of `disvae.viz.plots` (MAX_FRAMES, MAX_TRAVERSAL) and of the report's counts, checked
# by argparse; a test checks that they agree with the library's.
MAX_FRAMES = 1000
MAX_TRAVERSAL = 1000.0
MAX_REPORT_COLS = 64
MAX_SLIDER_STEPS = 101
# The report's defaults (those of `ReportOptions`, which this light module does not import); a
# sweep's page refuses a value other than these (see cmd_report).
REPORT_COLS, REPORT_TRAVERSAL, REPORT_SLIDER_STEPS = 7, 2.0, 21

log = logging.getLogger(__name__)

_PLOT_HELP = (
    "samples: decodes of prior samples. data-samples: dataset images. reconstruct: originals "
    "above their reconstructions. traversals: one row per latent (largest KL first, KL printed), "
    "around the prior mean or, with --posterior, the posterior of an image. "
    "reconstruct-traverse: originals, reconstructions, then traversals. gif-traversals: an "
    "animated GIF per latent and a grid GIF of all. kl: per-dimension KL bars. losses: every "
    "logged term against step. all: every plot."
)


def _int_at_least(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {value}")
        return value

    return parse


def _traversal(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TRAVERSAL):
        raise argparse.ArgumentTypeError(
            f"must be a number in (0, {MAX_TRAVERSAL:g}] (below 0.5: a prior quantile), got {text}"
        )
    return value


def _add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-s",
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="seed of samples and image choice (a non-negative integer)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    p.add_argument("--data-path", help="where the dataset is, if not where training found it")


def add_plot_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``disvae plot RUN PLOT... [options]``."""
    p = subparsers.add_parser(
        "plot",
        help="figures of a run (PNG, GIF) into RUN/plots/",
        description="Write figures of RUN (finished, or still training: its newest checkpoint) "
        "into RUN/plots/. " + _PLOT_HELP,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", help="a run directory written by `disvae train`")
    p.add_argument("plots", nargs="+", metavar="PLOT", help=f"{' | '.join(PLOTS)} | all")
    p.add_argument(
        "-r",
        "--rows",
        type=_int_at_least(1),
        default=None,
        help="latents in traversals (default all) / rows of image grids (6)",
    )
    p.add_argument(
        "-c",
        "--cols",
        type=_int_at_least(1),
        default=7,
        help="images per row / values per traversal",
    )
    p.add_argument(
        "-i",
        "--idcs",
        type=_int_at_least(0),
        nargs="+",
        default=[],
        help="dataset indices of the images to show or traverse around (default: "
        "random validation images); the first is the traversal base",
    )
    p.add_argument(
        "-u",
        "--upsample",
        type=_int_at_least(1),
        default=1,
        help="enlarge images by this integer factor",
    )
    _add_seed(p)
    p.add_argument(
        "--n-steps", type=_int_at_least(2, MAX_FRAMES), default=40, help="frames per GIF loop"
    )
    p.add_argument(
        "-t",
        "--max-traversal",
        type=_traversal,
        default=2.0,
        help="traversal half-range; below 0.5 a quantile of the prior (0.05 -> ±1.645)",
    )
    p.add_argument(
        "--posterior",
        action="store_true",
        help="traverse around the posterior mean of an image, not the prior mean",
    )
    p.add_argument("-o", "--out-dir", help="where to write the files (default RUN/plots)")
    _common(p)
    p.set_defaults(func=cmd_plot)
    return p


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``disvae report RUN [RUN...] [-o FILE]``."""
    p = subparsers.add_parser(
        "report",
        help="a self-contained HTML report of one run, or several side by side",
        description="Write one HTML file (images inlined; opens offline in any browser): for "
        "one RUN, RUN/report.html with config, losses, KL, metrics, reconstructions, samples, "
        "traversals, GIFs and a latent explorer; for several, a comparison page.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or one sweep directory")
    p.add_argument(
        "-o", "--out", help="output file (default RUN/report.html; compare.html for several runs)"
    )
    p.add_argument(
        "-c",
        "--cols",
        type=_int_at_least(1, MAX_REPORT_COLS),
        default=REPORT_COLS,
        help="images per row",
    )
    p.add_argument(
        "-t",
        "--max-traversal",
        type=_traversal,
        default=REPORT_TRAVERSAL,
        help="traversal and slider half-range; below 0.5 a prior quantile",
    )
    p.add_argument(
        "--slider-steps",
        type=_int_at_least(2, MAX_SLIDER_STEPS),
        default=REPORT_SLIDER_STEPS,
        help="precomputed positions per explorer slider",
    )
    _add_seed(p)
    _common(p)
    p.set_defaults(func=cmd_report)
    return p


def cmd_plot(args: argparse.Namespace) -> int:
    from disvae import runs
    from disvae.viz.plots import PlotOptions, plot_run

    opts = PlotOptions(
        rows=args.rows,
        cols=args.cols,
        idcs=tuple(args.idcs),
        upsample=args.upsample,
        seed=args.seed,
        n_steps=args.n_steps,
        max_traversal=args.max_traversal,
        posterior=args.posterior,
    )
    data = runs.data_at(args.run, args.data_path)
    paths = plot_run(args.run, args.plots, opts, out_dir=args.out_dir, data=data)
    if not paths:
        raise UserError("no plot could be made; see the warnings above")
    if not args.quiet:
        folder = args.out_dir if args.out_dir is not None else Path(args.run) / "plots"
        print(f"wrote {len(paths)} file(s) into {folder}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from disvae import runs
    from disvae.report import ReportOptions, build_report
    from disvae.sweep.state import is_sweep_dir

    if len(args.runs) == 1 and is_sweep_dir(args.runs[0]):  # a sweep: its own page
        from disvae.sweep.page import build_sweep_report

        # The sweep's page draws no images: the run report's options would do nothing.
        given = [flag for flag, value, default in (
            ("--data-path", args.data_path, None), ("-c/--cols", args.cols, REPORT_COLS),
            ("-t/--max-traversal", args.max_traversal, REPORT_TRAVERSAL),
            ("--slider-steps", args.slider_steps, REPORT_SLIDER_STEPS), ("-s/--seed", args.seed, 0),
        ) if value != default]  # fmt: skip
        if given:
            raise UserError(
                f"{given[0]} applies to a run's report, not to a sweep's page; leave it out, or "
                f"pass a run of the sweep ({args.runs[0]}/runs/NAME/run)"
            )

        path = build_sweep_report(args.runs[0], args.out)
        if not args.quiet:
            print(f"wrote {path}")
        return 0
    if args.data_path is not None and len(args.runs) > 1:
        raise UserError("--data-path applies to one run; leave it out when comparing runs")
    opts = ReportOptions(
        n_cols=args.cols,
        max_traversal=args.max_traversal,
        explorer_steps=args.slider_steps,
        seed=args.seed,
    )
    data = runs.data_at(args.runs[0], args.data_path)
    path = build_report(args.runs, args.out, opts, data=data)
    if not args.quiet:
        size = path.stat().st_size / 1e6
        print(f"wrote {path} ({size:.1f} MB)")
    return 0
