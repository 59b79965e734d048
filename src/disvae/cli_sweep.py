"""The `disvae sweep` subcommand (added to the parser by `disvae.cli`): a thin shell over
`disvae.sweep.run_sweep`, `sweep_status` and `expand_only`. Nothing heavy at import time."""

from __future__ import annotations

import argparse

from disvae.cli_format import HelpFormatter


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``disvae sweep FILE [--workers N] [--backend local|ray] [--status] ...``."""
    p = subparsers.add_parser(
        "sweep",
        help="run a sweep of many runs (methods × grids × seeds) locally or on Ray",
        description="Expand a sweep file (a path, or a shipped name: tiny, dsprites_study) into "
        "runs, train and evaluate each in its own process, and write sweep_results.csv. Run it "
        "again to resume: finished runs are kept, half-trained ones continue from their "
        "checkpoint. See docs/sweep.md.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("sweep", metavar="FILE", help="sweep file, shipped sweep name or sweep dir")
    p.add_argument(
        "--out", help="sweep directory: new, empty or this sweep's own (default: sweeps/out/<name>)"
    )
    p.add_argument("--workers", type=int, default=1, help="runs at a time (local backend)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="where runs go")
    p.add_argument("--address", help="Ray cluster address (e.g. auto); default: a local Ray")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs each run reserves")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs each run reserves")
    p.add_argument(
        "--set", metavar="KEY=VALUE", action="append", dest="overrides", default=[],
        help="override a config key of every run, e.g. --set train.device=cuda",
    )  # fmt: skip
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again too")
    p.add_argument("--status", action="store_true", help="print what finished, failed, is left")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    from disvae import sweep as SW
    from disvae.sweep.runner import check_resources

    check_resources(args.cpus_per_run, args.gpus_per_run)
    if args.dry_run:  # --out is checked too: a dry run says what the real one would refuse
        for run in SW.expand_only(args.sweep, args.overrides, args.out):
            print(run.name)
        return 0
    if args.status:
        print(format_status(SW.sweep_status(SW.find_out(args.sweep, args.out))))
        return 0
    summary = SW.run_sweep(
        args.sweep, args.out, workers=args.workers, backend=args.backend, address=args.address,
        overrides=args.overrides, retry_failed=args.retry_failed, cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        progress=False if args.no_progress or args.quiet else None,
    )  # fmt: skip
    counts = ", ".join(f"{summary.count(s)} {s}" for s in ("done", "failed", "pending"))
    if not args.quiet:  # (the failures still say so on stderr, and in the exit code)
        print(f"sweep {summary.out}: ran {len(summary.ran)} in {summary.seconds:.0f}s; {counts}")
        print(f"results: {summary.out / 'sweep_results.csv'}; page: disvae report {summary.out}")
    return 0 if summary.count("failed") == 0 else 1


def format_status(status: dict[str, list[dict]]) -> str:
    """The text of ``--status``: counts, then each failed run with its error, then the rest."""
    lines = ["  ".join(f"{k}: {len(v)}" for k, v in status.items())]
    for key in ("failed", "running", "pending", "done"):
        for s in status.get(key, []):
            extra = f"  ({s['duration_s']:.0f}s)" if s.get("duration_s") is not None else ""
            error = f"  {s['error']}" if s.get("error") else ""
            lines.append(f"{key:<8} {s['name']}{extra}{error}")
    return "\n".join(lines)
