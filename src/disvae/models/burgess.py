"""The encoder/decoder of Burgess et al. (2018), "Understanding disentangling in beta-VAE", §A.1.

Encoder: conv 32x4x4 stride 2 (x3 for 32x32 images, x4 for 64x64, x5 for 128, x6 for 256: down to
a 4x4 map), dense 256, dense 256, dense 2D (mean and log-variance). Decoder: the transpose. ReLU
throughout; the decoder ends in logits. Built from the `conv` architecture's blocks: it is the conv
stack with every size fixed, so it takes no model knobs.
"""

from __future__ import annotations

import math

from torch import nn

from disvae.config import ModelConfig
from disvae.errors import UserError
from disvae.models.conv import ConvSpec, conv_decoder, conv_encoder, init_weights, reject_unused
from disvae.models.vae import ARCHITECTURES

CHANNELS = 32
KERNEL = 4
HIDDEN = 256
SIZES = (32, 64, 128, 256)


def burgess_spec(image_shape: tuple[int, int, int]) -> ConvSpec:
    """The Burgess et al. stack for square 32..256 pixel images; `UserError` for other sizes."""
    _, h, w = image_shape
    if h != w or h not in SIZES:
        raise UserError(
            f"the burgess architecture takes square 32, 64, 128 or 256 pixel images, got {h}x{w}; "
            "resize the data (--img-size) or choose arch 'conv' (any size)"
        )
    n = int(math.log2(h)) - 2  # down to 4x4
    return ConvSpec((CHANNELS,) * n, (KERNEL,) * n, (2,) * n, (1,) * n, (HIDDEN, HIDDEN))


@ARCHITECTURES.register("burgess")
def burgess(
    cfg: ModelConfig, image_shape: tuple[int, int, int], patches: tuple[str, ...]
) -> tuple[nn.Module, nn.Module]:
    reject_unused(cfg, (), "arch 'burgess' (fixed sizes; arch 'conv' has the knobs)")
    spec = burgess_spec(image_shape)
    encoder = conv_encoder(image_shape, spec, 2 * cfg.latent_dim)
    decoder = conv_decoder(image_shape, spec, cfg.latent_dim)
    init_weights(encoder)
    init_weights(decoder)
    return encoder, decoder
