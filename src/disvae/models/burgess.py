"""The encoder/decoder of Burgess et al. (2018), "Understanding disentangling in beta-VAE", §A.1.

Encoder: conv 32x4x4 stride 2 (x3 for 32x32 images, x4 for 64x64), dense 256, dense 256, dense 2D
(mean and log-variance). Decoder: the transpose. ReLU throughout; the decoder ends in logits.
"""

from __future__ import annotations

import math

from torch import nn

from disvae.errors import UserError
from disvae.models.vae import ARCHITECTURES

CHANNELS = 32
KERNEL = 4
HIDDEN = 256


def _n_convs(image_shape: tuple[int, int, int]) -> int:
    _, h, w = image_shape
    if h != w or h not in (32, 64, 128):
        raise UserError(
            f"the burgess architecture takes square 32, 64 or 128 pixel images, got {h}x{w}; "
            "resize the data (--img-size) or choose another --arch"
        )
    return int(math.log2(h)) - 2  # down to 4x4


class BurgessEncoder(nn.Sequential):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int) -> None:
        c = image_shape[0]
        layers: list[nn.Module] = []
        for i in range(_n_convs(image_shape)):
            layers += [nn.Conv2d(c if i == 0 else CHANNELS, CHANNELS, KERNEL, 2, 1), nn.ReLU()]
        layers += [
            nn.Flatten(),
            nn.Linear(CHANNELS * 4 * 4, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, 2 * latent_dim),
        ]  # fmt: skip
        super().__init__(*layers)
        init_weights(self)


class BurgessDecoder(nn.Sequential):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int) -> None:
        c = image_shape[0]
        n = _n_convs(image_shape)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, CHANNELS * 4 * 4), nn.ReLU(),
            nn.Unflatten(1, (CHANNELS, 4, 4)),
        ]  # fmt: skip
        for i in range(n):
            last = i == n - 1
            layers.append(nn.ConvTranspose2d(CHANNELS, c if last else CHANNELS, KERNEL, 2, 1))
            if not last:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        init_weights(self)


def init_weights(module: nn.Module) -> None:
    """Kaiming-uniform weights for the ReLU layers, Xavier for the last one, zero biases.

    He et al. (2015) initialisation keeps activations' scale through ReLU stacks; the output layers
    (posterior statistics, logits) have no ReLU after them, so they get Glorot's.
    """
    layers = [
        m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
    ]
    for m in layers:
        if m is layers[-1]:
            nn.init.xavier_uniform_(m.weight)
        else:
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)


@ARCHITECTURES.register("burgess")
def burgess(image_shape: tuple[int, int, int], latent_dim: int) -> tuple[nn.Module, nn.Module]:
    return BurgessEncoder(image_shape, latent_dim), BurgessDecoder(image_shape, latent_dim)
