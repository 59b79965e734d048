"""disvae: learn and measure disentangled representations with variational autoencoders.

The public entry points are imported lazily so that ``import disvae`` (and ``disvae --help``)
stays fast: ``disvae.train``, ``disvae.evaluate``, ``disvae.load_run``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "load_run", "train"]


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
    raise AttributeError(f"module 'disvae' has no attribute {name!r}")
