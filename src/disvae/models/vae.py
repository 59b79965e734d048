"""The VAE: an encoder to a diagonal Gaussian q(z|x), a reparameterised sample, a decoder to logits.

The model computes no loss (see `disvae.losses`). The decoder returns logits; the likelihood
turns them into a mean (sigmoid) or uses them directly (Bernoulli).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disvae.config import ModelConfig
from disvae.registry import Registry

# name -> callable(model config, image_shape, patch names) -> (encoder, decoder); the callable
# checks its knobs and the shapes and raises `UserError` for what it cannot build.
ARCHITECTURES: Registry = Registry("architecture")


@dataclass
class VAEOutput:
    """One forward pass. Shapes: logits (B, C, H, W); mu, logvar, z (B, D)."""

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class VAE(nn.Module):
    """Encoder -> (mu, logvar) -> z = mu + sigma * eps -> decoder -> logits.

    ``patches`` names the patches of multi-patch data (patch i in channels [i*C, (i+1)*C)),
    empty for ordinary images; the figures lay a sample's patches side by side.
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
        patches: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.patches = tuple(patches)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each (B, D), of images x (B, C, H, W)."""
        stats = self.encoder(x)
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def sample(
        mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reparameterised draw from N(mu, exp(logvar)) (Kingma & Welling 2014, Eq. 10), in
        float32 even under bf16 autocast (a bf16 draw would round z - mu, i.e. sigma * eps, to
        8 bits: log q(z|x) and β-TCVAE's density terms would see that noise). ``eps``: the
        standard-normal noise, when given (data-parallel ranks pass their rows of the global
        batch's noise); else drawn here."""
        mu, logvar = mu.float(), logvar.float()
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) of p(x|z) for codes z (B, D)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> VAEOutput:
        """One pass; ``eps`` (B, D), when given, is the standard-normal noise of the sample
        (data-parallel ranks pass their rows of the global batch's noise)."""
        mu, logvar = self.encode(x)
        z = self.sample(mu, logvar, eps) if self.training else mu
        return VAEOutput(self.decode(z), mu, logvar, z)


def build_model(
    cfg: ModelConfig, image_shape: tuple[int, int, int], patches: tuple[str, ...] = ()
) -> VAE:
    """A `VAE` of architecture ``cfg.arch`` for images of ``image_shape`` (C, H, W).

    Args:
        cfg: the architecture, latent size and knobs (`disvae.config.ModelConfig`).
        image_shape: (C, H, W) of one sample; for multi-patch data C = P * (channels per patch).
        patches: names of the P patches stacked along channels (`DatasetInfo.patches`), or ().

    Raises:
        UserError: unknown architecture, a knob it does not use, or shapes it cannot build.
    """
    image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
    patches = tuple(patches)
    encoder, decoder = ARCHITECTURES.get(cfg.arch)(cfg, image_shape, patches)
    return VAE(encoder, decoder, cfg.latent_dim, patches)


# Register the built-in architectures.
from disvae.models import burgess as _burgess  # noqa: E402, F401
from disvae.models import conv as _conv  # noqa: E402, F401
from disvae.models import stacked as _stacked  # noqa: E402, F401
