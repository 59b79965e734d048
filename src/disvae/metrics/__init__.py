"""Disentanglement metrics: pure functions on numpy arrays, plus a registry for `evaluate`.

Array metrics take codes (N, D) float and factors (N, K) int class indices; the batch-based scores
take a ground-truth dataset and an ``encode`` function. Randomness is passed explicitly as a
``numpy.random.Generator`` (or a seed). Defaults follow the disentanglement_lib study
(Locatello et al. 2019). See docs/metrics.md for every protocol.

`METRICS` maps a name to a `MetricSpec`: what a metric needs (codes, posteriors, a dataset) and
how to compute it from an `EvalContext` built by `disvae.evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from disvae.metrics._sampling import CachedEncoder, encode_classes, sample_codes
from disvae.metrics._utils import discretize, entropy, mutual_info_matrix
from disvae.metrics.aam import aam, aam_from_mi
from disvae.metrics.beta_vae import beta_vae_score
from disvae.metrics.dci import dci, disentanglement_completeness
from disvae.metrics.factor_vae import factor_vae_score
from disvae.metrics.mig import mig, mig_per_factor
from disvae.metrics.mig_chen import chen_mutual_info, mig_chen, mig_from_mi
from disvae.metrics.modularity import modularity
from disvae.metrics.sap import sap
from disvae.metrics.unsupervised import (
    active_units,
    gaussian_total_correlation,
    kl_per_dim,
    total_correlation,
    unsupervised_scores,
)
from disvae.registry import Registry

__all__ = [
    "METRICS", "CachedEncoder", "EvalContext", "MetricSpec", "aam", "aam_from_mi",
    "active_units", "beta_vae_score", "chen_mutual_info", "dci", "discretize",
    "disentanglement_completeness", "encode_classes", "entropy", "factor_vae_score",
    "gaussian_total_correlation", "kl_per_dim", "mig", "mig_chen", "mig_from_mi",
    "mig_per_factor", "modularity", "mutual_info_matrix", "sample_codes", "sap",
    "total_correlation", "unsupervised_scores",
]  # fmt: skip


@dataclass
class EvalContext:
    """What a registered metric may use; filled lazily by the evaluation wrapper.

    Attributes:
        mu, logvar: (N, D) posteriors of ``n_samples`` points drawn uniformly from the data.
        factors: (N, K) their factor classes, or None for a dataset without factors.
        dataset, encode: the ground-truth dataset and a (cached) encoder, for the batch scores.
        recon_error: (N,) per-image reconstruction error of the same points, when available.
        params: protocol parameters (``n_bins``, ``n_train``, ``n_test``, ``seed``, ...).
        memo: results shared between metrics (e.g. Chen's MI matrix for mig_chen and aam).
    """

    mu: np.ndarray
    logvar: np.ndarray
    factors: np.ndarray | None
    dataset: Any = None
    encode: Any = None
    recon_error: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    def rng(self, name: str) -> np.random.Generator:
        """A generator of its own per metric: adding a metric never changes another's numbers."""
        salt = sum(ord(c) * 31**i for i, c in enumerate(name)) % (2**32)
        return np.random.default_rng([int(self.params.get("seed", 0)), salt])


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function of an `EvalContext` and whether it needs factors."""

    compute: Callable[[EvalContext], Any]
    needs_factors: bool = True
    needs_dataset: bool = False


METRICS: Registry[MetricSpec] = Registry("metric")


def _p(ctx: EvalContext, key: str, default: Any) -> Any:
    return ctx.params.get(key, default)


def _train(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, logvar, factors) of the first ``n_train`` sampled points (MIG's 10,000)."""
    n = _p(ctx, "n_train", 10_000)
    f = None if ctx.factors is None else ctx.factors[:n]
    return ctx.mu[:n], ctx.logvar[:n], f  # type: ignore[return-value]


def _split_kw(ctx: EvalContext) -> dict[str, Any]:
    return {"n_train": _p(ctx, "n_train", 10_000), "n_test": _p(ctx, "n_test", 5_000)}


def _batch_kw(ctx: EvalContext) -> dict[str, Any]:
    return {
        "n_train": _p(ctx, "n_train", 10_000),
        "n_eval": _p(ctx, "n_test", 5_000),
        "batch_size": _p(ctx, "batch_points", 64),
    }


def _chen_mi(ctx: EvalContext) -> np.ndarray:
    """Chen et al.'s MI matrix over the training points, computed once for mig_chen and aam."""
    if "chen_mi" not in ctx.memo:
        mu, lv, f = _train(ctx)
        n_mc = _p(ctx, "chen_samples", 2_000)  # Monte-Carlo draws per entropy (speed, documented)
        ctx.memo["chen_mi"] = chen_mutual_info(mu, lv, f, n_mc, ctx.rng("chen_mi"))
    return ctx.memo["chen_mi"]


def _register(name: str, **kw: Any) -> Callable[[Callable[[EvalContext], Any]], Any]:
    def decorate(fn: Callable[[EvalContext], Any]) -> Callable[[EvalContext], Any]:
        METRICS.register(name)(MetricSpec(fn, **kw))
        return fn

    return decorate


@_register("mig")
def _mig(c: EvalContext) -> float:
    mu, _, f = _train(c)
    return mig(mu, f, _p(c, "n_bins", 20))


@_register("sap")
def _sap(c: EvalContext) -> float:
    return sap(c.mu, c.factors, rng=c.rng("sap"), **_split_kw(c))


@_register("dci")
def _dci(c: EvalContext) -> dict[str, float]:
    model = _p(c, "dci_model", "gbt")
    return dci(c.mu, c.factors, model=model, rng=c.rng("dci"), **_split_kw(c))


@_register("modularity")
def _modularity(c: EvalContext) -> dict[str, float]:
    return modularity(c.mu, c.factors, _p(c, "n_bins", 20), rng=c.rng("modularity"), **_split_kw(c))


@_register("mig_chen")
def _mig_chen(c: EvalContext) -> float:
    return mig_from_mi(_chen_mi(c), _train(c)[2])


@_register("aam")
def _aam(c: EvalContext) -> float:
    return aam_from_mi(_chen_mi(c), _train(c)[2])


@_register("beta_vae", needs_dataset=True)
def _beta_vae(c: EvalContext) -> dict[str, float]:
    return beta_vae_score(c.dataset, c.encode, rng=c.rng("beta_vae"), **_batch_kw(c))


@_register("factor_vae", needs_dataset=True)
def _factor_vae(c: EvalContext) -> dict[str, float]:
    n_var = _p(c, "n_train", 10_000)
    kw = _batch_kw(c)
    return factor_vae_score(c.dataset, c.encode, n_variance=n_var, rng=c.rng("factor_vae"), **kw)


@_register("unsupervised", needs_factors=False)
def _unsupervised(c: EvalContext) -> dict[str, object]:
    mu, lv, _ = _train(c)
    err = None if c.recon_error is None else c.recon_error[: len(mu)]
    return unsupervised_scores(mu, lv, err, n_samples=None, rng=c.rng("unsupervised"))
