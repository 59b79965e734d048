"""Sweeps: expand a sweep file into runs, run them on local processes or Ray, gather results.

Layers: `disvae.sweep` uses `training`, `evaluation` and `config`; nothing imports it but the CLI.
"""

from disvae.sweep.page import build_sweep_report
from disvae.sweep.results import read_results, write_results
from disvae.sweep.runner import SweepSummary, expand_only, find_out, run_sweep, sweep_status
from disvae.sweep.spec import EvalSpec, RunSpec, Sweep, load_sweep, sweep_names
from disvae.sweep.state import is_sweep_dir

__all__ = [
    "EvalSpec",
    "RunSpec",
    "Sweep",
    "SweepSummary",
    "build_sweep_report",
    "expand_only",
    "find_out",
    "is_sweep_dir",
    "load_sweep",
    "read_results",
    "run_sweep",
    "sweep_names",
    "sweep_status",
    "write_results",
]
