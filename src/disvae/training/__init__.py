"""The training loop and checkpoints."""

from disvae.training.loop import Trainer, plan, train

__all__ = ["Trainer", "plan", "train"]
