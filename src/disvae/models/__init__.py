"""Encoders, decoders and the VAE; architectures are looked up by name in `ARCHITECTURES`."""

from disvae.models.vae import ARCHITECTURES, VAE, VAEOutput, build_model

__all__ = ["ARCHITECTURES", "VAE", "VAEOutput", "build_model"]
