"""disvae: learn and measure disentangled representations with variational autoencoders.

The public entry points are imported lazily so that ``import disvae`` (and ``disvae --help``)
stays fast: ``disvae.train``, ``disvae.evaluate``, ``disvae.load_run``, and the subpackages
(``disvae.config``, ``disvae.data``, ``disvae.metrics``, ...) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "load_run", "train"]
_SUBMODULES = {"config", "data", "errors", "evaluation", "losses", "metrics", "models",
               "registry", "report", "runs", "sweep", "training", "utils", "viz"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "train":
        from disvae.training import train

        return train
    if name == "evaluate":
        from disvae.evaluation import evaluate

        return evaluate
    if name == "load_run":
        from disvae.runs import load_run

        return load_run
    if name in _SUBMODULES:
        return importlib.import_module(f"disvae.{name}")
    raise AttributeError(f"module 'disvae' has no attribute {name!r}")
