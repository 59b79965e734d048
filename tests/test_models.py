"""The Burgess architecture: shapes, parameter count, the reparameterisation."""

import pytest
import torch

from disvae.config import ModelConfig
from disvae.errors import UserError
from disvae.models import VAE, build_model


@pytest.mark.parametrize(
    "shape", [(1, 64, 64), (3, 64, 64), (3, 32, 32), (1, 128, 128), (1, 256, 256)]
)
def test_shapes(shape):
    model = build_model(ModelConfig("burgess", latent_dim=7), shape)
    out = model(torch.rand(5, *shape))
    assert out.logits.shape == (5, *shape)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (5, 7)


def test_burgess_layer_sizes_match_the_paper():
    model = build_model(ModelConfig("burgess", latent_dim=10), (1, 64, 64))
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.out_channels == 32 and c.kernel_size == (4, 4) for c in convs)
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 256), (256, 256), (256, 20)]
    n = sum(p.numel() for p in model.parameters())
    # encoder: 4 convs (4*4*(1*32) + 3*4*4*32*32 + biases) + dense; decoder mirrors it
    enc = (16 * 32 + 32) + 3 * (16 * 32 * 32 + 32) + (512 * 256 + 256) + (256 * 256 + 256) + (
        256 * 20 + 20)  # fmt: skip
    dec = (10 * 256 + 256) + (256 * 256 + 256) + (256 * 512 + 512) + 3 * (16 * 32 * 32 + 32) + (
        16 * 32 + 1)  # fmt: skip
    assert n == enc + dec


def test_burgess_layer_sequence_matches_the_paper():
    # Burgess et al. (2018), §A.1: conv 32x4x4 stride 2 (x4 at 64 px), dense 256, 256, then 2D
    # (mean, log-variance); the decoder is the transpose, ReLU between layers, logits out (no
    # activation after the last layer, else the Bernoulli mean could not go below 1/2).
    model = build_model(ModelConfig("burgess", latent_dim=10), (3, 64, 64))
    nn = torch.nn

    def describe(seq):
        out = []
        for m in seq:
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                out.append((type(m).__name__, m.in_channels, m.out_channels, m.kernel_size,
                            m.stride, m.padding))  # fmt: skip
            elif isinstance(m, nn.Linear):
                out.append(("Linear", m.in_features, m.out_features))
            elif isinstance(m, nn.ReLU):
                out.append("ReLU")
        return out

    conv = [("Conv2d", c, 32, (4, 4), (2, 2), (1, 1)) for c in (3, 32, 32, 32)]
    assert describe(model.encoder) == [
        *[x for c in conv for x in (c, "ReLU")],
        ("Linear", 512, 256), "ReLU", ("Linear", 256, 256), "ReLU", ("Linear", 256, 20),
    ]  # fmt: skip
    deconv = [("ConvTranspose2d", 32, c, (4, 4), (2, 2), (1, 1)) for c in (32, 32, 32, 3)]
    assert describe(model.decoder) == [
        ("Linear", 10, 256), "ReLU", ("Linear", 256, 256), "ReLU", ("Linear", 256, 512), "ReLU",
        deconv[0], "ReLU", deconv[1], "ReLU", deconv[2], "ReLU", deconv[3],
    ]  # fmt: skip
    # The last 2D outputs: mean first, then log-variance.
    x = torch.rand(2, 3, 64, 64)
    stats = model.encoder(x)
    mu, logvar = model.encode(x)
    assert torch.equal(mu, stats[:, :10]) and torch.equal(logvar, stats[:, 10:])


def test_training_forward_is_the_reparameterised_sample():
    torch.manual_seed(0)
    model = build_model(ModelConfig("burgess", latent_dim=4), (1, 32, 32)).train()
    x, eps = torch.rand(3, 1, 32, 32), torch.randn(3, 4)
    out = model(x, eps)
    torch.testing.assert_close(out.z, out.mu + torch.exp(0.5 * out.logvar) * eps)
    torch.testing.assert_close(out.logits, model.decode(out.z))


def test_eval_uses_the_mean_and_training_samples():
    torch.manual_seed(0)
    model = build_model(ModelConfig("burgess", latent_dim=4), (1, 64, 64))
    x = torch.rand(3, 1, 64, 64)
    model.eval()
    out = model(x)
    assert torch.equal(out.z, out.mu)
    model.train()
    out = model(x)
    assert not torch.equal(out.z, out.mu)


def test_reparameterisation_moments():
    torch.manual_seed(0)
    mu = torch.full((200_000, 1), 2.0)
    logvar = torch.full((200_000, 1), torch.log(torch.tensor(0.25)).item())
    z = VAE.sample(mu, logvar)
    assert abs(z.mean().item() - 2.0) < 0.01 and abs(z.std().item() - 0.5) < 0.01


def test_bad_image_size_and_unknown_arch():
    with pytest.raises(UserError, match="32, 64, 128 or 256 pixel images, got 28x28"):
        build_model(ModelConfig("burgess"), (1, 28, 28))
    with pytest.raises(UserError, match="unknown architecture 'resnet'; choose one of: burgess"):
        build_model(ModelConfig("resnet"), (1, 64, 64))


def test_the_sample_is_float32_under_bf16_autocast():
    """The encoder and decoder may run in bf16, but z = mu + sigma * eps is formed in float32:
    in bf16, sigma * eps would keep 8 bits, and log q(z|x) (β-TCVAE's terms) would see it."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=6), (1, 64, 64)).train()
    x = torch.rand(4, 1, 64, 64)
    eps = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, eps)
        drawn = model(x)
    assert out.mu.dtype == torch.bfloat16  # the encoder did run in bf16
    assert out.z.dtype == drawn.z.dtype == torch.float32
    sigma = torch.exp(0.5 * out.logvar.float())
    torch.testing.assert_close(out.z - out.mu.float(), eps * sigma, rtol=1e-6, atol=1e-7)
