"""The VAE: an encoder to a diagonal Gaussian q(z|x), a reparameterised sample, a decoder to logits.

The model computes no loss (see `disvae.losses`). The decoder returns logits; the likelihood
turns them into a mean (sigmoid) or uses them directly (Bernoulli).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disvae.registry import Registry

# name -> callable(image_shape, latent_dim) -> (encoder, decoder)
ARCHITECTURES: Registry = Registry("architecture")


@dataclass
class VAEOutput:
    """One forward pass. Shapes: logits (B, C, H, W); mu, logvar, z (B, D)."""

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class VAE(nn.Module):
    """Encoder -> (mu, logvar) -> z = mu + sigma * eps -> decoder -> logits."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each (B, D), of images x (B, C, H, W)."""
        stats = self.encoder(x)
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Reparameterised draw from N(mu, exp(logvar)) (Kingma & Welling 2014, Eq. 10)."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) of p(x|z) for codes z (B, D)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = self.sample(mu, logvar) if self.training else mu
        return VAEOutput(self.decode(z), mu, logvar, z)


def build_model(arch: str, image_shape: tuple[int, int, int], latent_dim: int) -> VAE:
    """A `VAE` of the named architecture for images of ``image_shape`` (C, H, W)."""
    encoder, decoder = ARCHITECTURES.get(arch)(image_shape, latent_dim)
    return VAE(encoder, decoder, latent_dim)


# Register the built-in architectures.
from disvae.models import burgess as _burgess  # noqa: E402, F401
