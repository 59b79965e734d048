"""The training loop: one plain loop that reads top to bottom.

Each step: take a batch of indices, gather the images on the device, forward, objective,
backward, Adam step (and, for FactorVAE, the discriminator's step on a second batch), accumulate
the loss terms on the device; every `log_every` steps write one JSON line and TensorBoard
scalars; every `checkpoint_every` steps write a checkpoint. No `.item()` inside the step, so the
device never waits for the host.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disvae import config as C
from disvae import runs
from disvae.data import ArrayDataset
from disvae.data.batching import BatchStream, split_indices
from disvae.errors import UserError
from disvae.losses import DISC_BETAS, LossContext, compute_loss, discriminator_loss
from disvae.models import build_model
from disvae.models.discriminator import Discriminator
from disvae.training import checkpoint as ckpt
from disvae.training import logs, runtime
from disvae.utils import atomic_write_json, pick_device

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """A loss term became NaN or infinite."""


class Trainer:
    """Holds everything one run needs; `run()` trains to the configured number of steps."""

    def __init__(self, cfg: C.RunConfig, out: Path, data: ArrayDataset) -> None:
        self.cfg, self.out, self.data = cfg, out, data
        self.device = pick_device(cfg.train.device)
        self.train_idx, self.val_idx = split_indices(
            len(data), cfg.data.val_fraction, cfg.data.split_seed, cfg.data.subset
        )
        self.batches_per_step = 2 if cfg.loss.name == "factor" else 1
        if cfg.train.batch_size * self.batches_per_step > len(self.train_idx):
            raise UserError(
                f"batch size {cfg.train.batch_size} needs more than the {len(self.train_idx)} "
                "training images; lower --batch-size or use more data"
            )
        self.total_steps = C.total_steps(cfg.train, len(self.train_idx) // self.batches_per_step)
        if cfg.train.eval_every:
            from disvae.evaluation import resolve_metric_names

            resolve_metric_names(cfg.train.eval_metrics, hasattr(data, "factor_sizes"))
        snap = cfg.train.snapshot_every
        self.snapshot_every = max(1, self.total_steps // 50) if snap is None else snap
        runtime.seed_everything(cfg.train.seed)
        self.stream = BatchStream(self.train_idx, seed=cfg.train.seed)
        self.model = build_model(cfg.model.arch, data.image_shape, cfg.model.latent_dim)
        self.model.to(self.device).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.disc = self.disc_opt = None
        if cfg.loss.name == "factor":
            self.disc = Discriminator(cfg.model.latent_dim).to(self.device).train()
            self.disc_opt = torch.optim.Adam(
                self.disc.parameters(), lr=cfg.loss.lr_disc, betas=DISC_BETAS
            )
        self.ctx = LossContext(dataset_size=len(self.train_idx), discriminator=self.disc)
        self.data.to(self.device)
        self.step = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.n_summed = 0
        self.n_skipped = 0  # steps skipped for non-finite values since the last log line
        self.bad_streak = 0
        self.bad_term = ""
        self.rollbacks = 0
        self.lr_scale = 1.0  # learning-rate multiplier after rollbacks (saved in checkpoints)
        self._stop_requested = False

    # ------------------------------------------------------------------ the step

    def train_step(self) -> dict[str, torch.Tensor] | None:
        """One optimisation step; returns the detached loss terms, or None when a loss term or
        gradient was not finite and the update was skipped (the name is in `self.bad_term`)."""
        B = self.cfg.train.batch_size
        x = self.data.batch(self.stream.next(B))
        out = self.model(x)
        result = compute_loss(out, x, self.step, self.cfg.loss, self.ctx)
        self.opt.zero_grad(set_to_none=True)
        result.total.backward()
        if self._nonfinite(result.terms, self.model):
            return None
        self.opt.step()
        terms = dict(result.terms)
        if self.disc is not None:
            # Kim & Mnih (2018), Alg. 2: the discriminator sees codes of this batch (joint) and
            # permuted codes of a second batch (product of marginals). Its grads from the VAE
            # loss above are discarded first.
            with torch.no_grad():
                mu, logvar = self.model.encode(self.data.batch(self.stream.next(B)))
                z_other = self.model.sample(mu, logvar)
            d = discriminator_loss(self.disc, out.z, z_other)
            self.disc_opt.zero_grad(set_to_none=True)
            d.total.backward()
            if self._nonfinite(d.terms, self.disc):
                return None
            self.disc_opt.step()
            terms.update(d.terms)
        return terms

    def _nonfinite(self, terms: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
        """Whether a loss term or a gradient of ``module`` is NaN/inf (one host sync a step,
        which is free on the CPU). Records the first bad name in `self.bad_term`."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        ok = torch.stack([torch.isfinite(v).all() for v in (*terms.values(), *grads)]).all()
        if bool(ok):
            return False
        # Name the most specific culprit: a term other than the total, else the total.
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        bad = [k for k in bad if k != "loss"] or bad
        self.bad_term = bad[0] if bad else "gradient"
        return True

    def accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n_summed += 1

    # ------------------------------------------------------------------ the loop

    def run(self, progress: bool | None = None) -> None:
        """Train from `self.step` to `self.total_steps`, logging and checkpointing."""
        from tqdm.auto import tqdm

        cfg = self.cfg.train
        if progress is None:
            progress = sys.stderr.isatty()
        writer = logs.open_tensorboard(self.out, purge_step=self.step or None)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not progress,
            unit="step",
            dynamic_ncols=True,
            desc=self.cfg.loss.name,
        )
        t_last, step_last = time.perf_counter(), self.step
        if not ckpt.list_checkpoints(self.out / runs.CHECKPOINTS):
            self.save_checkpoint()  # step 0: something to roll back to, and resumable at once
            self.snapshot()
        try:
            with runtime.stop_on_signals(self):
                while self.step < self.total_steps and not self._stop_requested:
                    terms = self.train_step()
                    self.step += 1
                    bar.update(1)
                    if terms is not None:
                        self.bad_streak = 0
                        self.accumulate(terms)
                    elif self.on_nonfinite():  # rolled back to an earlier step
                        bar.n = self.step
                        continue
                    last = self.step == self.total_steps
                    evaluate = bool(cfg.eval_every) and (self.step % cfg.eval_every == 0 or last)
                    if self.step % cfg.log_every == 0 or last or self._stop_requested or evaluate:
                        extra = self.metrics() if evaluate else {}
                        now = time.perf_counter()
                        rate = (self.step - step_last) * cfg.batch_size * self.batches_per_step
                        record = self.write_log(rate / max(now - t_last, 1e-9), writer, extra)
                        bar.set_postfix(logs.postfix(record), refresh=False)
                        t_last, step_last = now, self.step
                    if self.snapshot_every and (self.step % self.snapshot_every == 0 or last):
                        self.snapshot()
                    if self.step % cfg.checkpoint_every == 0 or last or self._stop_requested:
                        self.save_checkpoint()
        finally:
            bar.close()
            writer.close()
        if self.step == self.total_steps:
            self.save_final()

    def on_nonfinite(self) -> bool:
        """A skipped step: warn; after `nan_patience` in a row roll back with a lower learning
        rate (returns True), or stop when `nan_rollbacks` rollbacks did not help."""
        cfg = self.cfg.train
        self.n_skipped += 1
        self.bad_streak += 1
        if self.bad_streak == 1:
            log.warning("step %d: %r is not finite; update skipped", self.step, self.bad_term)
        if self.bad_streak < cfg.nan_patience:
            return False
        if self.rollbacks >= cfg.nan_rollbacks:
            raise NonFiniteError(
                f"{self.bad_term!r} was not finite for {self.bad_streak} steps in a row at step "
                f"{self.step}, after {self.rollbacks} rollbacks with lower learning rates; check "
                "the data or lower --lr (the last good checkpoint is kept)"
            )
        scale = self.lr_scale * cfg.nan_lr_factor
        self.restore()
        self.rollbacks += 1
        self.set_lr_scale(scale)
        self.bad_streak = 0
        log.warning("rolled back to step %d with learning rate x%g", self.step, scale)
        return True

    def snapshot(self) -> None:
        """A frame of the training GIF: the traversal grid of the prior mean (no randomness, so
        resumed runs stay exact)."""
        if not self.snapshot_every:
            return
        from disvae import viz

        try:
            viz.append_training_frame(self.out, self.step, viz.training_snapshot(self.model))
        except OSError as e:
            raise runtime.disk_error(e, f"training frame of step {self.step}", self.out) from None

    def set_lr_scale(self, scale: float) -> None:
        self.lr_scale = scale
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.train.lr * scale
        if self.disc_opt is not None:
            for group in self.disc_opt.param_groups:
                group["lr"] = self.cfg.loss.lr_disc * scale

    def metrics(self) -> dict[str, float]:
        """Disentanglement metrics of the current model (``eval_every``), as ``metrics/NAME``.

        Computed from their own seeded generators with every global RNG state saved and
        restored, so training continues exactly as it would have without them.
        """
        from disvae.evaluation import metrics_during_training

        cfg = self.cfg.train
        t0 = time.perf_counter()
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            values = metrics_during_training(
                self.model,
                self.data,
                cfg.eval_metrics,
                rng_seed=cfg.seed,
                n_samples=cfg.eval_samples,
            )
        np.random.set_state(np_state)
        random.setstate(py_state)
        log.info("metrics at step %d in %.1fs: %s", self.step, time.perf_counter() - t0, values)
        return {f"metrics/{k}": v for k, v in values.items()}

    def write_log(
        self, img_per_s: float, writer: Any, extra: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Average the accumulated terms, check them, append a JSON line, write TensorBoard."""
        means = {k: v / max(self.n_summed, 1) for k, v in self.sums.items()}
        record: dict[str, Any] = {"step": self.step, "epoch": self.stream.epoch}
        for k, v in means.items():
            record[k] = v.tolist() if v.ndim else float(v)
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise NonFiniteError(
                f"loss term {bad[0]!r} became {record[bad[0]]} by step {self.step}; lower --lr "
                "or check the data (the last good checkpoint is kept)"
            )
        record.update(extra or {})
        record["lr"] = self.opt.param_groups[0]["lr"]
        record["skipped"] = self.n_skipped
        record["img_per_s"] = round(img_per_s, 1)
        try:
            logs.append_record(self.out / runs.TRAIN_LOG, record)
        except OSError as e:
            raise runtime.disk_error(e, f"log line of step {self.step}", self.out) from None
        logs.write_scalars(writer, record, self.step)
        self.sums, self.n_summed, self.n_skipped = {}, 0, 0
        return record

    # ------------------------------------------------------------------ saving and restoring

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
        tensors, meta = self.state()
        weights = [v for k, v in tensors.items() if k.startswith(("model.", "disc."))]
        if not all(torch.isfinite(w).all() for w in weights):
            raise NonFiniteError(
                f"weights became non-finite by step {self.step}; not checkpointing them "
                "(lower --lr; the last good checkpoint is kept)"
            )
        directory = self.out / runs.CHECKPOINTS
        try:
            directory.mkdir(exist_ok=True)
            ckpt.save_state(ckpt.checkpoint_path(directory, self.step), tensors, meta)
        except OSError as e:
            raise runtime.disk_error(e, f"checkpoint of step {self.step}", self.out) from None
        ckpt.prune(directory, self.cfg.train.keep_checkpoints)

    def restore(self) -> None:
        """Continue from the newest good checkpoint of `self.out`."""
        latest = ckpt.load_latest(self.out / runs.CHECKPOINTS)
        if latest is None:
            raise UserError(f"--resume {str(self.out)!r}: no usable checkpoint to resume from")
        tensors, meta, path = latest
        ckpt.load_module_state("model", self.model, tensors, str(path))
        ckpt.load_optimizer_state("opt", self.opt, tensors, meta["opt"])
        if self.disc is not None:
            ckpt.load_module_state("disc", self.disc, tensors, str(path))
            ckpt.load_optimizer_state("disc_opt", self.disc_opt, tensors, meta["disc_opt"])
        ckpt.set_rng_state(tensors, meta["rng"])
        data_t = {k[5:]: v for k, v in tensors.items() if k.startswith("data.")}
        self.stream.load_state(data_t, meta["data"])
        self.sums = {k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("acc.")}
        self.n_summed = meta["n_summed"]
        self.n_skipped = meta.get("n_skipped", 0)
        self.lr_scale = meta.get("lr_scale", 1.0)
        self.step = meta["step"]
        logs.truncate_log(self.out / runs.TRAIN_LOG, self.step)
        if self.snapshot_every:
            from disvae import viz

            viz.prune_training_frames(self.out, after_step=self.step)
        log.info("resumed %s at step %d", self.out, self.step)

    def save_final(self) -> None:
        tensors = ckpt.module_state("model", self.model)
        if self.disc is not None:
            tensors.update(ckpt.module_state("disc", self.disc))
        try:
            ckpt.save_state(self.out / runs.MODEL, tensors, {"step": self.step})
            if self.snapshot_every:
                from disvae import viz

                viz.write_training_gif(self.out)
        except OSError as e:
            raise runtime.disk_error(e, "final weights", self.out) from None


# ---------------------------------------------------------------------- entry point


def train(
    cfg: C.RunConfig,
    out: str | Path,
    *,
    data: ArrayDataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Train a model as ``cfg`` says into run directory ``out``; return ``out``.

    With ``resume``, ``cfg`` is the run's saved config (possibly with more steps) and training
    continues from the newest checkpoint in ``out``. ``data`` may be given to skip loading.
    """
    from disvae.data import load_dataset

    out = Path(out).expanduser()
    # Fail fast on bad values, before touching the disk or loading data (the dataset's default
    # likelihood is not known yet; a scale alone implies a non-Bernoulli one).
    C.resolve(cfg, "gaussian" if cfg.loss.rec_scale is not None else "bernoulli")
    if resume:
        runs.read_config(out)  # a clear error when `out` is not a run
    else:
        runs.check_out_dir(out, overwrite)
    if data is None:
        data = load_dataset(cfg.data.name, cfg.data.path)
    cfg = C.resolve(cfg, data.info.default_rec_dist)
    with runs.RunLock(out, create=not resume):
        if not resume:
            runs.prepare_out_dir(out, overwrite)
        trainer = Trainer(cfg, out, data)
        if resume:
            trainer.restore()
        record = runs.config_record(cfg)
        record["image_shape"] = list(data.image_shape)
        record["n_train"], record["n_val"] = len(trainer.train_idx), len(trainer.val_idx)
        record["total_steps"] = trainer.total_steps
        atomic_write_json(out / runs.CONFIG, record)
        log.info("training %s for %d steps into %s", cfg.loss.name, trainer.total_steps, out)
        trainer.run(progress)
    return out
