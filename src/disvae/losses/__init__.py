"""Objectives of the disentangling VAEs, their shared terms and weight schedules."""

from disvae.losses.objectives import (
    DISC_BETAS,
    OBJECTIVES,
    LossContext,
    LossOutput,
    compute_loss,
    discriminator_loss,
    term_names,
)
from disvae.losses.schedules import capacity, linear, warmup
from disvae.losses.terms import (
    kl_normal,
    log_normal,
    log_standard_normal,
    permute_dims,
    reconstruction_nll,
    tc_decomposition,
)

__all__ = [
    "DISC_BETAS",
    "OBJECTIVES",
    "LossContext",
    "LossOutput",
    "capacity",
    "compute_loss",
    "discriminator_loss",
    "kl_normal",
    "linear",
    "log_normal",
    "log_standard_normal",
    "permute_dims",
    "reconstruction_nll",
    "tc_decomposition",
    "term_names",
    "warmup",
]
