"""The training loop: one plain loop that reads top to bottom.

Each step: take a batch of indices, gather the images on the device, forward, objective,
backward, Adam step (and, for FactorVAE, the discriminator's step on a second batch), accumulate
the loss terms on the device; every `log_every` steps write one JSON line and TensorBoard
scalars; every `checkpoint_every` steps write a checkpoint. No `.item()` inside the step, so the
device never waits for the host.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import sys
import time
from contextlib import contextmanager
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
        seed_everything(cfg.train.seed)
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
        self._stop_requested = False

    # ------------------------------------------------------------------ the step

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the detached loss terms."""
        B = self.cfg.train.batch_size
        x = self.data.batch(self.stream.next(B))
        out = self.model(x)
        result = compute_loss(out, x, self.step, self.cfg.loss, self.ctx)
        self.opt.zero_grad(set_to_none=True)
        result.total.backward()
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
            self.disc_opt.step()
            terms.update(d.terms)
        return terms

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
        writer = _tensorboard(self.out, purge_step=self.step or None)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not progress,
            unit="step",
            dynamic_ncols=True,
            desc=self.cfg.loss.name,
        )
        t_last, step_last = time.perf_counter(), self.step
        try:
            with _stop_on_signals(self):
                while self.step < self.total_steps and not self._stop_requested:
                    self.accumulate(self.train_step())
                    self.step += 1
                    bar.update(1)
                    last = self.step == self.total_steps
                    if self.step % cfg.log_every == 0 or last or self._stop_requested:
                        now = time.perf_counter()
                        rate = (self.step - step_last) * cfg.batch_size * self.batches_per_step
                        record = self.write_log(rate / max(now - t_last, 1e-9), writer)
                        bar.set_postfix(_postfix(record), refresh=False)
                        t_last, step_last = now, self.step
                    if self.step % cfg.checkpoint_every == 0 or last or self._stop_requested:
                        self.save_checkpoint()
        finally:
            bar.close()
            writer.close()
        if self.step == self.total_steps:
            self.save_final()

    def write_log(self, img_per_s: float, writer: Any) -> dict[str, Any]:
        """Average the accumulated terms, check them, append a JSON line, write TensorBoard."""
        means = {k: v / self.n_summed for k, v in self.sums.items()}
        record: dict[str, Any] = {"step": self.step, "epoch": self.stream.epoch}
        for k, v in means.items():
            record[k] = v.tolist() if v.ndim else float(v)
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise NonFiniteError(
                f"loss term {bad[0]!r} became {record[bad[0]]} by step {self.step}; lower --lr "
                "or check the data (the last good checkpoint is kept)"
            )
        record["lr"] = self.opt.param_groups[0]["lr"]
        record["img_per_s"] = round(img_per_s, 1)
        with open(self.out / runs.TRAIN_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if isinstance(v, float) and k != "lr":
                writer.add_scalar(f"train/{k}", v, self.step)
            elif isinstance(v, list):
                for d, x in enumerate(v):
                    writer.add_scalar(f"{k}/z{d}", x, self.step)
        self.sums, self.n_summed = {}, 0
        return record

    # ------------------------------------------------------------------ saving and restoring

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = ckpt.module_state("model", self.model)
        t, opt_meta = ckpt.optimizer_state("opt", self.opt)
        tensors.update(t)
        meta: dict[str, Any] = {"step": self.step, "opt": opt_meta, "n_summed": self.n_summed}
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
        directory.mkdir(exist_ok=True)
        ckpt.save_state(ckpt.checkpoint_path(directory, self.step), tensors, meta)
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
        self.step = meta["step"]
        _truncate_log(self.out / runs.TRAIN_LOG, self.step)
        log.info("resumed %s at step %d", self.out, self.step)

    def save_final(self) -> None:
        tensors = ckpt.module_state("model", self.model)
        if self.disc is not None:
            tensors.update(ckpt.module_state("disc", self.disc))
        ckpt.save_state(self.out / runs.MODEL, tensors, {"step": self.step})


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
    if not resume:
        out = runs.prepare_out_dir(out, overwrite)
    if data is None:
        data = load_dataset(cfg.data.name, cfg.data.path)
    cfg = C.resolve(cfg, data.info.default_rec_dist)
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _tensorboard(out: Path, purge_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return _NullWriter()
    return SummaryWriter(log_dir=str(out), purge_step=purge_step)


class _NullWriter:  # pragma: no cover
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    keys = ("loss", "recon", "kl", "tc", "capacity", "disc_acc", "img_per_s")
    return {k.replace("img_per_s", "img/s"): f"{record[k]:.4g}" for k in keys if k in record}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resume starts from)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        path.write_text("".join(kept))


@contextmanager
def _stop_on_signals(trainer: Trainer):
    """SIGINT/SIGTERM finish the current step, write a checkpoint and stop cleanly."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping after this step and writing a checkpoint", signum)
        trainer._stop_requested = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
