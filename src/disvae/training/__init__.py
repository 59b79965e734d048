"""The training loop and checkpoints."""

from disvae.training.loop import Trainer, train

__all__ = ["Trainer", "train"]
