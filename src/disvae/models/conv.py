"""The configurable convolutional encoder/decoder (``arch = "conv"``) and the blocks the others use.

Encoder: L conv layers (``channels[i]`` maps, ``kernels[i]``, ``strides[i]``, ``paddings[i]``,
ReLU), flatten, dense layers of widths ``hidden`` (ReLU), then dense 2D (mean and log-variance).
Decoder: the mirror image, dense D -> hidden[-1] -> ... -> hidden[0] -> the last feature map,
then L transposed convs back to the input, each with the ``output_padding`` that makes its output
exactly the size its conv took in (kernel 4, stride 2, padding 1: 28 -> 14 -> 7 and back).

This is the layout of Burgess et al. (2018), "Understanding disentangling in beta-VAE", §A.1 (the
`burgess` architecture is one instance of it, see `burgess.burgess_spec`) with every size a knob,
as in the ini-driven VAE projects of the field. Shapes are planned arithmetically at build time,
so an impossible combination is a `UserError` naming the layer before any weights exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from torch import nn

from disvae.config import CONV_KEYS, ModelConfig, reject_unused_model_keys
from disvae.errors import UserError
from disvae.models.vae import ARCHITECTURES

# Knobs of the conv stack in `ModelConfig`; the others are the stacked architecture's.
# Layer defaults: the Burgess et al. conv (4x4, stride 2, padding 1 halves the map).
DEFAULT_KERNEL, DEFAULT_STRIDE, DEFAULT_PADDING = 4, 2, 1
DEFAULT_HIDDEN = (256,)
MIN_DEFAULT_MAP = 8  # default stacks halve the map while it is at least this wide (ends at 4..7)


@dataclass(frozen=True)
class ConvSpec:
    """Every size of a conv stack; the per-layer tuples have one entry per conv layer."""

    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    paddings: tuple[int, ...]
    hidden: tuple[int, ...]


Size = tuple[int, int]


def reject_unused(cfg: ModelConfig, used: Sequence[str], why: str) -> None:
    """`disvae.config.reject_unused_model_keys` (kept here for the architectures)."""
    reject_unused_model_keys(cfg, used, why)


def default_spec(image_shape: tuple[int, int, int]) -> ConvSpec:
    """Stride-2 4x4 convs halving the map while it is at least 8 pixels (28 -> 14 -> 7,
    64 -> ... -> 4, 256 -> ... -> 4); 32 channels, doubled every second layer up to 256."""
    return _fill(image_shape, n_layers(image_shape), ModelConfig())


def n_layers(image_shape: tuple[int, int, int]) -> int:
    size, n = min(image_shape[1:]), 0
    while size >= MIN_DEFAULT_MAP:
        size = _out(size, DEFAULT_KERNEL, DEFAULT_STRIDE, DEFAULT_PADDING)
        n += 1
    return n


def spec_from_config(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> ConvSpec:
    """The `ConvSpec` of ``cfg``'s conv knobs; knobs left as None take the size's defaults.

    A per-layer list of one entry applies to every layer; lists of other lengths must agree
    with each other (and with ``channels``), or a `UserError` names them.
    """
    lists = {k: getattr(cfg, k) for k in CONV_KEYS[:4] if getattr(cfg, k) is not None}
    lengths = {k: len(v) for k, v in lists.items() if len(v) != 1 or k == "channels"}
    if len(set(lengths.values())) > 1:
        given = ", ".join(f"model.{k} has {n}" for k, n in lengths.items())
        raise UserError(
            f"the conv layer lists disagree in length ({given} entries); give one entry per "
            "layer, or a single entry for every layer"
        )
    n = next(iter(lengths.values())) if lengths else n_layers(image_shape)
    spec = _fill(image_shape, n, cfg)
    _check_values(spec)
    return spec


def _fill(image_shape: tuple[int, int, int], n: int, cfg: ModelConfig) -> ConvSpec:
    def per_layer(given: tuple[int, ...] | None, default: int) -> tuple[int, ...]:
        if given is None:
            return (default,) * n
        return given * n if len(given) == 1 and n != 1 else given

    default_channels = tuple(min(256, 32 * 2 ** (i // 2)) for i in range(n))
    return ConvSpec(
        channels=default_channels if cfg.channels is None else cfg.channels,
        kernels=per_layer(cfg.kernels, DEFAULT_KERNEL),
        strides=per_layer(cfg.strides, DEFAULT_STRIDE),
        paddings=per_layer(cfg.paddings, DEFAULT_PADDING),
        hidden=DEFAULT_HIDDEN if cfg.hidden is None else cfg.hidden,
    )


def _check_values(spec: ConvSpec) -> None:
    for key, least in (("channels", 1), ("kernels", 1), ("strides", 1), ("paddings", 0),
                       ("hidden", 1)):  # fmt: skip
        for i, v in enumerate(getattr(spec, key)):
            if v < least:
                raise UserError(f"model.{key}[{i}] must be at least {least}, got {v}")


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1  # Conv2d's output size (dilation 1)


def plan(image_shape: tuple[int, int, int], spec: ConvSpec) -> list[tuple[Size, Size, Size]]:
    """Per conv layer: (input size, output size, output padding of its transposed conv).

    Raises `UserError` naming the layer when a layer would leave less than one pixel.
    """
    size: Size = (image_shape[1], image_shape[2])
    layers = []
    for i, (k, s, p) in enumerate(zip(spec.kernels, spec.strides, spec.paddings, strict=True)):
        out = (_out(size[0], k, s, p), _out(size[1], k, s, p))
        if min(out) < 1:
            raise UserError(
                f"conv layer {i + 1} (kernel {k}, stride {s}, padding {p}) would reduce a "
                f"{size[0]}x{size[1]} map to {out[0]}x{out[1]} pixels; use fewer layers, "
                "smaller kernels or strides, or more padding (model.channels, model.kernels, "
                "model.strides, model.paddings)"
            )
        # ConvTranspose2d gives (m - 1) * s - 2p + k + output_padding; output_padding < s.
        pad = tuple(n - ((m - 1) * s - 2 * p + k) for n, m in zip(size, out, strict=True))
        if not all(0 <= q < s for q in pad):
            raise UserError(
                f"the decoder cannot return conv layer {i + 1}'s {out[0]}x{out[1]} map to "
                f"{size[0]}x{size[1]} (kernel {k}, stride {s}, padding {p})"
            )
        layers.append((size, out, pad))
        size = out
    return layers  # type: ignore[return-value]


def conv_encoder(
    image_shape: tuple[int, int, int], spec: ConvSpec, out_dim: int | None
) -> nn.Sequential:
    """Images (B, C, H, W) -> (B, out_dim); ``out_dim`` None: the last hidden layer's ReLU
    features (B, ``encoder.out_features``), for towers."""
    sizes = plan(image_shape, spec)
    layers: list[nn.Module] = []
    c = image_shape[0]
    for ch, k, s, p in zip(spec.channels, spec.kernels, spec.strides, spec.paddings, strict=True):
        layers += [nn.Conv2d(c, ch, k, s, p), nn.ReLU()]
        c = ch
    h, w = sizes[-1][1] if sizes else image_shape[1:]
    width = c * h * w
    layers.append(nn.Flatten())
    for units in spec.hidden:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
        width = out_dim
    encoder = nn.Sequential(*layers)
    encoder.out_features = width
    return encoder


def conv_decoder(image_shape: tuple[int, int, int], spec: ConvSpec, in_dim: int) -> nn.Sequential:
    """Codes (B, in_dim) -> logits (B, C, H, W): the mirror image of `conv_encoder`."""
    sizes = plan(image_shape, spec)
    c_last = spec.channels[-1] if spec.channels else image_shape[0]
    h, w = sizes[-1][1] if sizes else image_shape[1:]
    widths = [in_dim, *reversed(spec.hidden), c_last * h * w]
    layers: list[nn.Module] = []
    for a, b in pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    if not spec.channels:
        layers.pop()  # the dense layer is the output: logits, no ReLU
    layers.append(nn.Unflatten(1, (c_last, h, w)))
    for i in reversed(range(len(spec.channels))):
        c_out = image_shape[0] if i == 0 else spec.channels[i - 1]
        k, s, p, pad = spec.kernels[i], spec.strides[i], spec.paddings[i], sizes[i][2]
        layers.append(nn.ConvTranspose2d(spec.channels[i], c_out, k, s, p, output_padding=pad))
        if i:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def init_weights(module: nn.Module, heads: Sequence[nn.Module] = ()) -> None:
    """Kaiming-uniform weights for the ReLU layers, Xavier for the output layers, zero biases.

    He et al. (2015) initialisation keeps activations' scale through ReLU stacks; the output layers
    (posterior statistics, logits) have no ReLU after them, so they get Glorot's. The output
    layers are the last layer of each of ``heads`` (default: of ``module`` itself).
    """
    outputs = [[m for m in h.modules() if isinstance(m, _WEIGHTED)][-1] for h in heads or [module]]
    for m in module.modules():
        if not isinstance(m, _WEIGHTED):
            continue
        if any(m is o for o in outputs):
            nn.init.xavier_uniform_(m.weight)
        else:
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)


@ARCHITECTURES.register("conv")
def conv(
    cfg: ModelConfig, image_shape: tuple[int, int, int], patches: tuple[str, ...]
) -> tuple[nn.Module, nn.Module]:
    reject_unused(cfg, CONV_KEYS, "arch 'conv'")
    spec = spec_from_config(cfg, image_shape)
    encoder = conv_encoder(image_shape, spec, 2 * cfg.latent_dim)
    decoder = conv_decoder(image_shape, spec, cfg.latent_dim)
    init_weights(encoder)
    init_weights(decoder)
    return encoder, decoder
