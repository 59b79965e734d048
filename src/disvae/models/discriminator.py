"""The FactorVAE discriminator (Kim & Mnih 2018, "Disentangling by Factorising", Appendix).

An MLP on latent codes: 6 fully connected layers of 1000 units with LeakyReLU(0.2), then a
layer to 2 logits: class 0 "sample of q(z)" (joint), class 1 "sample of prod_d q(z_d)".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

HIDDEN = 1000
N_LAYERS = 6
NEGATIVE_SLOPE = 0.2


class Discriminator(nn.Module):
    """MLP from codes (B, latent_dim) to 2 logits (B, 2)."""

    def __init__(self, latent_dim: int, hidden: int = HIDDEN, n_layers: int = N_LAYERS) -> None:
        super().__init__()
        if latent_dim < 1 or hidden < 1 or n_layers < 1:
            raise ValueError(
                f"latent_dim, hidden and n_layers must be positive, got "
                f"{latent_dim}, {hidden}, {n_layers}"
            )
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(NEGATIVE_SLOPE)]
            width = hidden
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: Tensor) -> Tensor:
        """Logits (B, 2) for codes z (B, latent_dim). Under autocast (bf16) the hidden layers
        compute in bf16 and the output layer in float32: the TC estimate is a difference of the
        two logits, which bf16's 8-bit mantissa would round (to 1/16 at a logit of 8)."""
        hidden = self.net[:-1](z)
        with torch.autocast(z.device.type, enabled=False):
            return self.net[-1](hidden.float())
