"""Saving and restoring a `Trainer`: checkpoints (everything needed to continue bit-for-bit)
and the final weights."""

from __future__ import annotations

import logging
from typing import Any

import torch

from disvae import runs
from disvae.errors import UserError
from disvae.training import accel, logs, runtime
from disvae.training import checkpoint as ckpt
from disvae.training.runtime import NonFiniteError

log = logging.getLogger("disvae.training.loop")


class TrainerState:
    """The checkpoint methods of `disvae.training.loop.Trainer` (a mixin: they read and set the
    trainer's model, optimizers, data stream, accumulators and counters)."""

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = ckpt.module_state("model", self.model)
        t, opt_meta = ckpt.optimizer_state("opt", self.opt)
        tensors.update(t)
        meta: dict[str, Any] = {
            "step": self.step,
            "opt": opt_meta,
            "n_summed": self.n_summed,
            "n_skipped": self.n_skipped,
            "lr_scale": self.lr_scale,
            "best_val": self.best_val,
            # how best_val was scored: "settled" (`validation.settled_step`); checkpoints
            # without it scored each step by its own schedules, not comparable
            "best_val_kind": "settled",
            "fingerprint": self.fingerprint,  # whose checkpoint (`runs.check_weights_of`)
        }
        if self.disc is not None:
            tensors.update(ckpt.module_state("disc", self.disc))
            t, meta["disc_opt"] = ckpt.optimizer_state("disc_opt", self.disc_opt)
            tensors.update(t)
        t, meta["rng"] = ckpt.rng_state()
        tensors.update(t)
        t, meta["data"] = self.stream.state()
        tensors.update({f"data.{k}": v for k, v in t.items()})
        tensors.update({f"acc.{k}": v for k, v in self.sums.items()})
        return tensors, meta

    def save_checkpoint(self) -> None:
        """Write a checkpoint (rank 0; every rank first pools its loss sums, so that a resume
        with any number of processes logs the same means)."""
        if self.dist.active:
            self.sums = self.dist.average(self.sums)
        # Every rank checks its (identical) weights, so all stop together instead of the others
        # waiting at the barrier below for a rank 0 that raised.
        modules = [m for m in (self.model, self.disc) if m is not None]
        if not all(torch.isfinite(p).all() for m in modules for p in m.state_dict().values()):
            raise NonFiniteError(
                f"weights became non-finite by step {self.step}; not checkpointing them "
                "(lower --lr; the last good checkpoint is kept)"
            )
        if not self.dist.main:
            self.dist.barrier()  # the file exists for every rank once this returns
            return
        tensors, meta = self.state()
        directory = self.out / runs.CHECKPOINTS
        try:
            directory.mkdir(exist_ok=True)
            ckpt.save_state(ckpt.checkpoint_path(directory, self.step), tensors, meta)
        except OSError as e:
            raise runtime.disk_error(e, f"checkpoint of step {self.step}", self.out) from None
        ckpt.prune(directory, self.cfg.train.keep_checkpoints)
        self.dist.barrier()

    def restore(self) -> None:
        """Continue from the newest good checkpoint of `self.out`."""
        latest = ckpt.load_latest(self.out / runs.CHECKPOINTS)
        if latest is None:
            raise UserError(
                f"--resume {str(self.out)!r}: no usable checkpoint to resume from (none in "
                f"{runs.CHECKPOINTS}/ passed its check); train it anew with `disvae train "
                f"--out {self.out} --overwrite` and the run's settings"
            )
        tensors, meta, path = latest
        runs.check_weights_of(self.out, meta, path)
        ckpt.load_module_state("model", self.model, tensors, str(path))
        accel.keep_optimizer_flags(meta["opt"]["param_groups"], self.opt)
        ckpt.load_optimizer_state("opt", self.opt, tensors, meta["opt"])
        if self.disc is not None:
            ckpt.load_module_state("disc", self.disc, tensors, str(path))
            accel.keep_optimizer_flags(meta["disc_opt"]["param_groups"], self.disc_opt)
            ckpt.load_optimizer_state("disc_opt", self.disc_opt, tensors, meta["disc_opt"])
        ckpt.set_rng_state(tensors, meta["rng"])
        data_t = {k[5:]: v for k, v in tensors.items() if k.startswith("data.")}
        self.stream.load_state(data_t, meta["data"])
        self.sums = {k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("acc.")}
        self.n_summed = meta["n_summed"]
        self.n_skipped = meta.get("n_skipped", 0)
        self.lr_scale = meta.get("lr_scale", 1.0)
        # A best held-out loss scored otherwise (older checkpoints) is not compared with this
        # run's: the next validation writes best.safetensors afresh.
        settled = meta.get("best_val_kind") == "settled"
        self.best_val = meta.get("best_val") if settled else None
        if self.guard is not None:
            self.guard.reset()
        if self.graph is not None:  # the optimizers' state tensors were replaced
            self.graph.reset()
        self.step = meta["step"]
        if not self.dist.main:  # rank 0 alone touches the run's files
            return
        logs.truncate_log(self.out / runs.TRAIN_LOG, self.step)
        if self.snapshot_every:
            from disvae import viz

            viz.prune_training_frames(self.out, after_step=self.step)

    def save_final(self) -> None:
        if not self.dist.main:
            return
        tensors = ckpt.module_state("model", self.model)
        if self.disc is not None:
            tensors.update(ckpt.module_state("disc", self.disc))
        try:
            ckpt.save_state(
                self.out / runs.MODEL, tensors, {"step": self.step, "fingerprint": self.fingerprint}
            )
            if self.snapshot_every:
                from disvae import viz

                viz.write_training_gif(self.out)
        except OSError as e:
            raise runtime.disk_error(e, "final weights", self.out) from None
