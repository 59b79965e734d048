"""The stacked multi-patch architecture (``arch = "stacked"``). The design is ours (disvae).

Data: every patch is resized to S x S and the P patches are stacked along channels, so a sample
is (P*C, S, S) with patch i in channels [i*C, (i+1)*C) (`disvae.data.DatasetInfo.patches` names
them). One latent code describes the whole sample.

Encoder: one tower per patch, or with ``shared_tower`` one tower applied to every patch; a tower
is the `conv` stack (or, with ``tower = "burgess"``, the Burgess et al. 2018 §A.1 stack) up to its
last hidden layer. The P feature vectors are concatenated in patch order (so the fusion knows
which patch each came from) and fused by dense layers of widths ``fusion`` into the mean and
log-variance of one latent. Separate towers feeding a dense fusion follow the multi-input gaze
network of Krafka et al. (2016), "Eye Tracking for Everyone" (iTracker), §4.

Decoder: z -> dense layers (``fusion`` reversed) -> a fused code h; each patch's decoder tower
(the mirror of its encoder tower) maps h to that patch's logits. A shared decoder tower gets
h plus a learned embedding of the patch index (equivalently a per-patch bias of its first layer),
so one set of weights can draw different patches. The logits are (B, P*C, S, S): the likelihood
sums over every non-batch dimension, so over the patches, and the losses need no change.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from disvae.config import STACKED_KEYS, ModelConfig
from disvae.errors import UserError
from disvae.models.burgess import burgess_spec
from disvae.models.conv import (
    CONV_KEYS,
    ConvSpec,
    conv_decoder,
    conv_encoder,
    init_weights,
    reject_unused,
    spec_from_config,
)
from disvae.models.vae import ARCHITECTURES

TOWERS = ("conv", "burgess")
DEFAULT_FUSION = (256,)


def patch_shape(
    image_shape: tuple[int, int, int], patches: tuple[str, ...]
) -> tuple[int, int, int]:
    """(C, S, S) of one patch of samples of ``image_shape`` (P*C, S, S)."""
    n = len(patches)
    if n == 0:
        raise UserError(
            "arch 'stacked' needs multi-patch data (a dataset whose samples are named patches "
            "stacked along channels, e.g. --dataset stacked); for other data choose arch "
            "'conv' or 'burgess'"
        )
    c, h, w = image_shape
    if c % n:
        raise UserError(
            f"arch 'stacked': {c} channels cannot hold {n} patches ({', '.join(patches)}) "
            "with the same number of channels each"
        )
    return (c // n, h, w)


def tower_spec(cfg: ModelConfig, shape: tuple[int, int, int]) -> ConvSpec:
    """The conv stack of one tower for patches of ``shape`` (C, S, S)."""
    tower = cfg.tower or "conv"
    if tower not in TOWERS:
        raise UserError(f"unknown model.tower {tower!r}; choose one of: {', '.join(TOWERS)}")
    if tower == "burgess":
        reject_unused(cfg, STACKED_KEYS, "arch 'stacked' with tower 'burgess'")
        return burgess_spec(shape)
    reject_unused(cfg, STACKED_KEYS + CONV_KEYS, "arch 'stacked'")
    return spec_from_config(cfg, shape)


class StackedEncoder(nn.Module):
    """Samples (B, P*C, S, S) -> posterior statistics (B, 2D)."""

    def __init__(
        self, shape: tuple[int, int, int], n_patches: int, spec: ConvSpec,
        fusion: tuple[int, ...], latent_dim: int, shared: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.n_patches = n_patches
        n_towers = 1 if shared else n_patches
        self.towers = nn.ModuleList(conv_encoder(shape, spec, None) for _ in range(n_towers))
        width = self.towers[0].out_features * n_patches
        layers: list[nn.Module] = []
        for units in fusion:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, 2 * latent_dim))
        self.fusion = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.unflatten(1, (self.n_patches, -1))  # (B, P, C, S, S)
        if len(self.towers) == 1:  # shared: every patch through one tower, (B*P, F) -> (B, P*F)
            feats = self.towers[0](parts.flatten(0, 1)).view(len(x), -1)
        else:
            feats = torch.cat([t(parts[:, i]) for i, t in enumerate(self.towers)], dim=1)
        return self.fusion(feats)


class StackedDecoder(nn.Module):
    """Codes (B, D) -> logits (B, P*C, S, S)."""

    def __init__(
        self, shape: tuple[int, int, int], n_patches: int, spec: ConvSpec,
        fusion: tuple[int, ...], latent_dim: int, shared: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.n_patches = n_patches
        widths = [latent_dim, *reversed(fusion)]
        layers: list[nn.Module] = []
        for a, b in pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.fusion = nn.Sequential(*layers)
        n_towers = 1 if shared else n_patches
        self.towers = nn.ModuleList(conv_decoder(shape, spec, widths[-1]) for _ in range(n_towers))
        self.patch_embedding = nn.Parameter(torch.randn(n_patches, widths[-1])) if shared else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fusion(z)  # (B, H)
        if self.patch_embedding is None:
            return torch.cat([t(h) for t in self.towers], dim=1)
        hp = h[:, None, :] + self.patch_embedding  # (B, P, H)
        out = self.towers[0](hp.flatten(0, 1))  # (B*P, C, S, S)
        return out.unflatten(0, (len(z), self.n_patches)).flatten(1, 2)


@ARCHITECTURES.register("stacked")
def stacked(
    cfg: ModelConfig, image_shape: tuple[int, int, int], patches: tuple[str, ...]
) -> tuple[nn.Module, nn.Module]:
    shape = patch_shape(image_shape, patches)
    spec = tower_spec(cfg, shape)
    fusion = DEFAULT_FUSION if cfg.fusion is None else cfg.fusion
    for i, units in enumerate(fusion):
        if units < 1:
            raise UserError(f"model.fusion[{i}] must be at least 1, got {units}")
    args = (shape, len(patches), spec, fusion, cfg.latent_dim, bool(cfg.shared_tower))
    encoder, decoder = StackedEncoder(*args), StackedDecoder(*args)
    init_weights(encoder)
    init_weights(decoder, heads=list(decoder.towers))
    return encoder, decoder
