"""The training loop: one plain loop that reads top to bottom.

Each step: set the learning rate (a pure function of the step), take a batch of indices,
gather the images on the device, forward (under the run's precision settings, `accel`),
objective, backward, clip, Adam step (and, for FactorVAE, the discriminator's step on a second
batch), accumulate the loss terms on the device; every `log_every` steps write one JSON line and
TensorBoard scalars (and held-out losses every `val_every`); every `checkpoint_every` steps write
a checkpoint. No `.item()` inside the step; on CUDA not even the non-finite check reads the
device (`accel.DeferredGuard`), so the device never waits for the host.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from disvae import config as C
from disvae import runs
from disvae.data import ArrayDataset
from disvae.data.batching import BatchStream, split_indices
from disvae.errors import UserError
from disvae.losses import DISC_BETAS, LossContext, LossOutput, compute_loss, discriminator_loss
from disvae.models import build_model
from disvae.models.discriminator import Discriminator
from disvae.training import accel, distributed, logs, runtime, schedules, validation
from disvae.training import checkpoint as ckpt
from disvae.training.adam import LR_TENSOR, Optimizer
from disvae.training.graph import StepGraph
from disvae.training.nonfinite import NonFiniteHandling
from disvae.training.runtime import NonFiniteError
from disvae.training.state import TrainerState
from disvae.utils import atomic_write_json, pick_device, process_age

log = logging.getLogger(__name__)


class Trainer(TrainerState, NonFiniteHandling):
    """Holds everything one run needs; `run()` trains to the configured number of steps
    (saving and restoring its state: `TrainerState`)."""

    def __init__(
        self, cfg: C.RunConfig, out: Path, data: ArrayDataset, dist: distributed.Dist | None = None
    ) -> None:
        self.cfg, self.out, self.data = cfg, out, data
        # whose weights (`config.fingerprint`); a resumed run keeps the one it started with
        self.fingerprint = C.fingerprint(cfg)
        self.dist = dist or distributed.Dist()
        distributed.check_batch(self.dist, cfg.train.batch_size)
        self.device = pick_device(distributed.device_for(self.dist, cfg.train.device))
        try:
            self.train_idx, self.val_idx = split_indices(
                len(data), cfg.data.val_fraction, cfg.data.split_seed, cfg.data.subset
            )
        except ValueError as e:  # too few images for a held-out share and a training split
            raise UserError(
                f"{e} ({len(data)} in the dataset, --subset {cfg.data.subset}, --val-fraction "
                f"{cfg.data.val_fraction}); use more images or --val-fraction 0"
            ) from None
        if cfg.data.subset is not None and cfg.data.subset > len(data) and self.dist.main:
            log.warning(
                "--subset %d is more than the dataset's %d images: training on all of them",
                cfg.data.subset, len(data),
            )  # fmt: skip
        self.batches_per_step = 2 if cfg.loss.name == "factor" else 1
        if cfg.train.batch_size * self.batches_per_step > len(self.train_idx):
            raise UserError(
                f"batch size {cfg.train.batch_size} needs more than the {len(self.train_idx)} "
                "training images; lower --batch-size or use more data"
            )
        self.total_steps = C.total_steps(cfg.train, len(self.train_idx) // self.batches_per_step)
        if cfg.train.eval_every:
            from disvae.evaluation import check_metrics_during_training

            # before training, not at the first --eval-every step
            check_metrics_during_training(cfg.train.eval_metrics, data, cfg.train.eval_samples)
        snap = cfg.train.snapshot_every
        self.snapshot_every = max(1, self.total_steps // 50) if snap is None else snap
        if cfg.train.val_every and not len(self.val_idx):
            raise UserError("--val-every needs a held-out split; set --val-fraction > 0")
        self.val_idx_used = validation.val_subset(
            self.val_idx, cfg.train.val_images, cfg.data.split_seed
        )
        self.accel = accel.resolve(cfg.train, self.device, distributed=self.dist.active)
        accel.configure_backends(self.accel)
        runtime.seed_everything(cfg.train.seed)
        self.stream = BatchStream(self.train_idx, seed=cfg.train.seed)
        self.model = build_model(cfg.model, data.image_shape, getattr(data.info, "patches", ()))
        accel.prepare_model(self.model.to(self.device).train(), self.accel)
        self.forward = accel.ModelForward(self.model, self.accel)
        self.opt = accel.adam(self.model.parameters(), cfg.train.lr, self.accel)
        self.disc = self.disc_opt = None
        if cfg.loss.name == "factor":
            self.disc = Discriminator(cfg.model.latent_dim).to(self.device).train()
            self.disc_opt = accel.adam(
                self.disc.parameters(), cfg.loss.lr_disc, self.accel, betas=DISC_BETAS
            )
        steps_per_epoch = len(self.train_idx) / (self.batches_per_step * cfg.train.batch_size)
        self.lr_factor = schedules.for_run(cfg.train, self.total_steps, steps_per_epoch)
        self.guard = accel.DeferredGuard(self.device) if self.accel.deferred_nan_check else None
        # The discriminator's forward under the run's autocast (the weights stay self.disc's).
        self.disc_forward = None if self.disc is None else accel.Autocast(self.disc, self.accel)
        self.ctx = LossContext(dataset_size=len(self.train_idx), discriminator=self.disc_forward)
        self.data.to(self.device)
        self.graph = self._step_graph() if self.accel.cuda_graph else None
        self.step = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.n_summed = 0
        self.n_skipped = 0  # steps skipped for non-finite values since the last log line
        self.bad_streak = 0
        self.bad_term = ""
        self.rollbacks = 0
        self.lr_scale = 1.0  # learning-rate multiplier after rollbacks (saved in checkpoints)
        self.best_val: float | None = None  # lowest held-out loss so far (saved in checkpoints)
        self._stop_requested = False

    # ------------------------------------------------------------------ the step

    def train_step(self) -> dict[str, torch.Tensor] | None:
        """One optimisation step; returns the detached loss terms, or None when a loss term or
        gradient was not finite and the update was skipped (the name is in `self.bad_term`).
        With the deferred check the skip happens on the device: the terms come back zeroed and
        `self.guard` counts the step until the next `flush_deferred`. With ``cuda_graph`` the
        terms are the graph's outputs, overwritten by the next step."""
        self.set_lr()
        if self.graph is not None:
            self._load_graph_inputs()
            return self.graph()
        return self._step(lambda: self.next_batch(), self.step)

    def _step(
        self, batch: Callable[[], torch.Tensor], step: int | torch.Tensor
    ) -> dict[str, torch.Tensor] | None:
        """The step's work: ``batch()`` gives the VAE's batch, then (FactorVAE) the
        discriminator's; ``step`` feeds the objective's schedules."""
        x, noise = batch(), self.noise()
        try:
            out, result, ok = self._vae_update(x, noise, step)
        except Exception as e:
            if not self.forward.unproven:
                raise
            # The compiled backward failed (it is compiled at its first use): eager from here,
            # this step again on the same batch.
            self.forward.fall_back(e)
            out, result, ok = self._vae_update(x, noise, step)
        if ok is False:
            return None
        terms = dict(result.terms)
        if self.disc is not None:
            # Kim & Mnih (2018), Alg. 2: the discriminator sees codes of this batch (joint) and
            # permuted codes of a second batch (product of marginals). The VAE loss above gave
            # it no gradients (`_update` differentiates the updated module's parameters only).
            # Data-parallel ranks draw the global batch's noise and permute the global batch's
            # codes (gathered), each keeping its rows: W processes take one process's step.
            with torch.no_grad():
                mu, logvar = self.forward.encode(batch())
                z_other = self.dist.gather(self.model.sample(mu, logvar, self.noise()))
            d = discriminator_loss(self.disc_forward, out.z, z_other, rows=self.dist.share)
            ok = self._update(self.disc_opt, self.disc, d, "disc_grad_norm", ok)
            if ok is False:
                return None
            terms.update(d.terms)
        if self.guard is not None:
            self.guard.end_step(ok)
            terms = {k: torch.where(ok, v, 0.0) for k, v in terms.items()}
        return terms

    def _vae_update(self, x: torch.Tensor, noise: torch.Tensor | None, step: int | torch.Tensor):
        """Forward, objective and update of the VAE on batch ``x``: (output, loss, ok)."""
        out = self.forward(x, noise)
        result = compute_loss(out, x, step, self.cfg.loss, self.ctx)
        return out, result, self._update(self.opt, self.model, result, "grad_norm")

    # ------------------------------------------------------------------ the step as a CUDA graph

    def _step_graph(self) -> StepGraph:
        """The step over fixed device buffers (indices, step, learning rates), for `StepGraph`."""
        if self.dist.active:
            raise UserError(
                "train.cuda_graph records one process's step; drop --cuda-graph under torchrun"
            )
        if self.device.type != "cuda":
            warnings.warn(
                f"train.cuda_graph: no CUDA graphs on {self.device.type}; the step runs "
                "uncaptured (the same computation)",
                RuntimeWarning,
                stacklevel=3,
            )
        dev, batch = self.device, self.cfg.train.batch_size
        self._graph_index = [
            torch.zeros(batch, dtype=torch.int64, device=dev) for _ in range(self.batches_per_step)
        ]
        # float64: the schedules of a device step then equal those of the int step exactly
        self._graph_step = torch.zeros((), dtype=torch.float64, device=dev)
        # The learning rate as the kernels take it: float32 on CUDA; float64 on the CPU, whose
        # kernel then computes exactly as with a float lr.
        lr_dtype = torch.float64 if dev.type == "cpu" else torch.float32
        for opt in (self.opt, self.disc_opt):
            for group in opt.param_groups if opt is not None else ():
                group[LR_TENSOR] = torch.full((), float(group["lr"]), dtype=lr_dtype, device=dev)

        def body() -> dict[str, torch.Tensor]:
            index = iter(self._graph_index)
            terms = self._step(lambda: self.data.batch(next(index)), self._graph_step)
            assert terms is not None  # the deferred check never returns None
            return terms

        return StepGraph(body, dev)

    def _load_graph_inputs(self) -> None:
        """This step's indices and number into the recorded step's buffers (copies queued
        behind the previous step, which reads them: no host wait)."""
        for buffer in self._graph_index:
            buffer.copy_(self._next_index(), non_blocking=True)
        self._graph_step.fill_(self.step)

    def _update(
        self,
        opt: Optimizer,
        module: torch.nn.Module,
        result: LossOutput,
        norm_name: str,
        ok_before: torch.Tensor | None = None,
    ) -> bool | torch.Tensor:
        """Backward ``result.total``, check, clip (``grad_clip``; the norm before clipping is
        added to ``result.terms`` as ``norm_name``) and step ``opt``. Returns False for a skipped
        step, else True, or (deferred check) the device flag that gated the update."""
        opt.zero_grad(set_to_none=True)
        # Only this module's gradients: FactorVAE's VAE loss runs through the discriminator,
        # whose own update starts from fresh gradients (and a recorded step must not add to
        # gradients left from before its recording).
        result.total.backward(inputs=[p for p in module.parameters() if p.requires_grad])
        self.dist.average_gradients(module, result.terms)  # data-parallel: the mean gradient
        clip = self.cfg.train.grad_clip
        params = [p for p in module.parameters() if p.grad is not None]
        if self.guard is None:  # one host sync a step, free on the CPU
            bad = accel.first_nonfinite(result.terms, params)
            if bad:
                self.bad_term = bad
                return False
            ok = True
        if self.guard is not None or clip:
            norm = accel.grad_norm(params)
        if self.guard is not None:
            ok = self.guard.finite(result.terms, norm)
            ok = ok if ok_before is None else ok & ok_before
            accel.skip_unless(opt, ok)
        if clip:
            accel.clip_to(params, clip, norm)
            result.terms[norm_name] = norm  # before clipping
        opt.step()
        return ok

    def next_batch(self) -> torch.Tensor:
        """The next training batch on the device; with several processes, this rank's share
        of the global batch."""
        return self.data.batch(self.dist.share(self._next_index()))

    def _next_index(self) -> torch.Tensor:
        """The next global batch's dataset indices; on an accelerator already there (a view of
        the epoch's order, copied once an epoch: no copy from host memory each step)."""
        on = None if self.device.type == "cpu" else self.device
        return self.stream.next(self.cfg.train.batch_size, device=on)

    def noise(self) -> torch.Tensor | None:
        """Data-parallel ranks: this rank's rows of the global batch's reparameterisation noise
        (all ranks draw it alike), so W processes take one process's steps. None otherwise."""
        if not self.dist.active:
            return None
        shape = (self.cfg.train.batch_size, self.cfg.model.latent_dim)
        return self.dist.share(torch.randn(shape, device=self.device))

    def accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        """Add a step's terms to the sums of this log line (one multi-tensor launch on a GPU,
        where a launch per term would cost as much as a replayed step's arithmetic)."""
        if self.sums and self.sums.keys() == terms.keys():
            torch._foreach_add_(list(self.sums.values()), [terms[k] for k in self.sums])
        else:
            for k, v in terms.items():
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n_summed += 1

    # ------------------------------------------------------------------ the loop

    def run(self, progress: bool | None = None) -> None:
        """Train from `self.step` to `self.total_steps`, logging and checkpointing."""
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg = self.cfg.train
        if progress is None:
            progress = sys.stderr.isatty()
        progress = progress and self.dist.main
        writer = (
            logs.open_tensorboard(self.out, purge_step=self.step or None)
            if self.dist.main
            else None
        )
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not progress,
            unit="step",
            dynamic_ncols=True,
            desc=self.cfg.loss.name,
        )
        # Without a bar (stderr is a batch job's log file, a notebook, --no-progress) the log
        # steps are reported as lines (at INFO: silent in a library, shown by the CLI unless -q)
        lines = None if progress else logs.ProgressLines(self.total_steps, self.step)
        t_last, step_last = time.perf_counter(), self.step
        fresh = self.dist.main and not ckpt.list_checkpoints(self.out / runs.CHECKPOINTS)
        if self.dist.main_says(fresh, self.device):  # rank 0 may be writing it already
            self.save_checkpoint()  # step 0: something to roll back to, and resumable at once
            self.snapshot()
        if self.dist.main:  # training goes on: an earlier stop's reason no longer holds
            runs.clear_stopped(self.out)

        def after_step(last: bool, stop: bool) -> bool:
            """Log, validate, snapshot and checkpoint as this step calls for; True when the
            deferred non-finite check rolled the run back instead."""
            nonlocal t_last, step_last
            evaluate = bool(cfg.eval_every) and (self.step % cfg.eval_every == 0 or last)
            val = bool(cfg.val_every) and (self.step % cfg.val_every == 0 or last)
            # A stop (Ctrl-C, SIGTERM) writes no log line of its own: the steps since the last
            # line travel in the checkpoint's sums, and the resumed run logs them at the next
            # regular step, as an uninterrupted run does.
            log_now = self.step % cfg.log_every == 0 or last or evaluate or val
            save_now = self.step % cfg.checkpoint_every == 0 or last or stop
            if (log_now or save_now) and self.flush_deferred():  # rolled back: no more
                bar.n = self.step
                return True
            if log_now:
                extra = self.metrics() if evaluate else {}
                extra.update(self.validate() if val else {})
                now = time.perf_counter()
                rate = (self.step - step_last) * cfg.batch_size * self.batches_per_step
                record = self.write_log(rate / max(now - t_last, 1e-9), writer, extra)
                bar.set_postfix(logs.postfix(record), refresh=False)
                text = lines.line(record, last) if lines is not None and self.dist.main else None
                if text is not None:
                    log.info("%s", text)
                t_last, step_last = now, self.step
            if self.snapshot_every and (self.step % self.snapshot_every == 0 or last):
                self.snapshot()
            if save_now:
                self.save_checkpoint()
            return False

        if self.step == self.total_steps and self.n_summed:
            # Resumed at its last step from a checkpoint a stop wrote there, with steps not yet
            # logged: the last step's log line, frame and checkpoint, as an uninterrupted run
            # writes them, before the final weights.
            after_step(last=True, stop=False)
        first = True
        stop = False
        # (log lines, such as "first step done", go above the bar instead of onto its line)
        redirect = (
            logging_redirect_tqdm([logging.getLogger("disvae")], tqdm_class=tqdm)
            if progress
            else contextlib.nullcontext()
        )
        try:
            with runtime.stop_on_signals(self), redirect:
                while self.step < self.total_steps:
                    terms = self.train_step()
                    self.step += 1
                    if first:
                        first = False
                        self._report_startup()
                    # Whether to stop after this step is read once, here: a signal arriving
                    # later in the step (while it logs) stops the run after the next step, with
                    # its checkpoint, not at once without one. A signal to one rank stops them
                    # all at the same step.
                    stop = self._stop_requested
                    if self.dist.active:
                        stop = self.dist.any(stop, self.device)
                        self._stop_requested = self._stop_requested or stop
                    bar.update(1)
                    if terms is not None:
                        self.bad_streak = 0
                        self.accumulate(terms)
                    elif self.on_nonfinite():  # rolled back to an earlier step (checkpointed)
                        bar.n = self.step
                        if stop:
                            break
                        continue
                    after_step(self.step == self.total_steps, stop)
                    if stop:  # (after a rollback too: it went back to a checkpointed step)
                        break
                if stop and self.step < self.total_steps:  # (a stop at the last step finishes)
                    runtime.last_stop_step = self.step
        except NonFiniteError as e:
            self._record_stop(e)
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if self.step == self.total_steps:
            self.save_final()

    def _record_stop(self, error: NonFiniteError) -> None:
        """Leave the reason of a non-finite stop in the run (``stopped.json``): the report and
        a later reader see why the run ended before its last step, not only that it did."""
        if not self.dist.main:
            return
        try:
            runs.write_stopped(self.out, self.step, str(error))
        except OSError as e:  # the error being raised matters more than its record
            log.warning("could not write %s: %s", runs.STOPPED, e.strerror)

    def _report_startup(self) -> None:
        """Log how long after the process started its first step finished (the start-up cost a
        user waits for: imports, data, model, first step; `benchmarks/startup.py` reads it)."""
        age = process_age()
        if age is not None and self.dist.main:
            log.info("first step done %.1f s after the process started", age)

    def snapshot(self) -> None:
        """A frame of the training GIF: the traversal grid of the prior mean (no randomness, so
        resumed runs stay exact)."""
        if not self.snapshot_every or not self.dist.main:
            return
        from disvae import viz

        try:
            viz.append_training_frame(self.out, self.step, viz.training_snapshot(self.model))
        except OSError as e:
            raise runtime.disk_error(e, f"training frame of step {self.step}", self.out) from None

    def set_lr(self) -> None:
        """Learning rates of this step: base x rollback scale x schedule (of the step)."""
        factor = self.lr_scale * self.lr_factor(self.step)
        for opt, lr in ((self.opt, self.cfg.train.lr), (self.disc_opt, self.cfg.loss.lr_disc)):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr * factor
                if LR_TENSOR in group:  # read by a step recorded in a CUDA graph
                    group[LR_TENSOR].fill_(group["lr"])

    def metrics(self) -> dict[str, float]:
        """Disentanglement metrics of the current model (``eval_every``), as ``metrics/NAME``,
        computed from their own seeded generators without moving the global RNGs."""
        from disvae.evaluation import format_metrics, metrics_during_training

        cfg = self.cfg.train
        if not self.dist.main:  # rank 0 alone evaluates and logs
            return {}
        t0 = time.perf_counter()
        with runtime.rng_preserved(self.device):
            values = metrics_during_training(
                self.model, self.data, cfg.eval_metrics, rng_seed=cfg.seed,
                n_samples=cfg.eval_samples,
            )  # fmt: skip
        log.info(
            "metrics at step %d in %.1fs: %s", self.step, time.perf_counter() - t0,
            format_metrics(values),
        )  # fmt: skip
        return {f"metrics/{k}": v for k, v in values.items()}

    def validate(self) -> dict[str, Any]:
        """Held-out losses (``val_every``) as ``val/NAME``; the weights go to best.safetensors
        when ``val/loss`` is the lowest so far (a NaN never is)."""
        if not self.dist.main:
            return {}
        values = validation.heldout(
            self.model, self.data, self.val_idx_used, self.cfg.loss, self.step,
            dataset_size=len(self.train_idx), discriminator=self.disc, device=self.device,
        )  # fmt: skip
        loss = values["val/loss"]
        if self.best_val is None or loss < self.best_val:
            self.best_val = loss
            try:
                validation.save_best(
                    self.out / runs.BEST, self.model, self.disc, self.step, loss, self.fingerprint
                )
            except OSError as e:
                raise runtime.disk_error(e, "best weights", self.out) from None
        return values

    def write_log(
        self, img_per_s: float, writer: Any, extra: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Average the accumulated terms (over the ranks too), check them, and (rank 0) append
        a JSON line and write TensorBoard."""
        sums = self.dist.average(self.sums)
        means = {k: v / max(self.n_summed, 1) for k, v in sums.items()}
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
        if not self.dist.main:
            self.sums, self.n_summed, self.n_skipped = {}, 0, 0
            return record
        try:
            logs.append_record(self.out / runs.TRAIN_LOG, record)
        except OSError as e:
            raise runtime.disk_error(e, f"log line of step {self.step}", self.out) from None
        logs.write_scalars(writer, record, self.step)
        self.sums, self.n_summed, self.n_skipped = {}, 0, 0
        return record


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
    ``progress``: a tqdm bar (True; in a notebook, its widget), none (False), or a bar only
    when stderr is a terminal (None). Without a bar, each log step's terms go to the
    ``disvae`` logger at INFO as a line (at most one per 10 s): ``logging.basicConfig(
    level=logging.INFO)`` shows them. Launched by ``torchrun`` with several processes, they
    train one model data-parallel (`disvae.training.distributed`); rank 0 writes the run.
    """
    from disvae.utils import tune_allocator

    tune_allocator()
    dist = distributed.from_environment(cfg.train.device)
    try:
        return _train(cfg, Path(out).expanduser(), data, resume, overwrite, progress, dist)
    finally:
        distributed.shutdown(dist)


def plan(
    cfg: C.RunConfig, out: str | Path, *, data: ArrayDataset | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """What ``train(cfg, out)`` would train, checked as `train` checks it (the settings, the
    data, the model's shapes, ``out``), writing nothing: the resolved config and the figures
    that follow from it (``n_images``, ``image_shape``, ``n_train``, ``n_val``, ``total_steps``,
    ``epochs``, ``parameters``, ``device``, ``precision``). For `disvae train --dry-run`."""
    import dataclasses

    from disvae.data import load_data

    C.check(cfg)
    out = runs.check_out_dir(out, overwrite)
    if data is None:
        data = load_data(cfg.data)
    cfg = C.resolve(cfg, data.info.default_rec_dist)
    # The trainer's own checks, without capturing a CUDA graph (a resumable setting, so the
    # same run).
    no_graph = dataclasses.replace(cfg.train, cuda_graph=False)
    t = Trainer(dataclasses.replace(cfg, train=no_graph), out, data)
    images = t.total_steps * t.batches_per_step * cfg.train.batch_size
    modules = [m for m in (t.model, t.disc) if m is not None]
    return {
        "config": cfg,
        "n_images": len(data),
        "image_shape": tuple(data.image_shape),
        "n_train": len(t.train_idx),
        "n_val": len(t.val_idx),
        "total_steps": t.total_steps,
        "epochs": images / len(t.train_idx),
        "parameters": [sum(p.numel() for p in m.parameters()) for m in modules],
        "device": str(t.device),
        "precision": "bf16 autocast" if t.accel.amp_dtype is not None else "fp32",
        # (t records nothing; the run would, where this says so: not under torchrun)
        "cuda_graph": t.device.type == "cuda"
        and accel.auto_cuda_graph(cfg.train, t.device, os.environ.get("WORLD_SIZE", "1") != "1"),
    }


def _on_main(dist: distributed.Dist, device: torch.device, check: Callable[[], Any]) -> None:
    """Run ``check`` (a step on the run directory that rank 0 alone takes) on rank 0, and tell
    every rank whether it refused: a `UserError` there stops every rank with one line, instead
    of leaving the others to fail on a closed connection."""
    refused = None
    if dist.main:
        try:
            check()
        except UserError as e:
            refused = e
    if not dist.main_says(refused is None, device):
        if refused is not None:
            raise refused
        raise UserError("rank 0 refused the run (its error says why); every process stops")


def _final_weights_readable(out: Path) -> bool:
    """Whether the run's final weights are there and pass their checksums. Damaged ones are
    left to the resume, which writes them again from the last checkpoint (the run goes on
    from it and saves the final weights at its end, at once when it is the last step)."""
    path = out / runs.MODEL
    if not path.is_file():
        return False
    try:
        ckpt.load_state(path)
    except ckpt.CheckpointError as e:
        log.warning("%s; writing it again from the last checkpoint", e)
        return False
    return True


def _train(cfg, out, data, resume, overwrite, progress, dist: distributed.Dist) -> Path:
    from contextlib import ExitStack

    from disvae.data import load_data

    C.check(cfg)  # fail fast on bad values, before touching the disk or loading data
    runtime.last_was_noop = False
    distributed.check_batch(dist, cfg.train.batch_size)
    device = pick_device(distributed.device_for(dist, cfg.train.device))  # (for the agreements)
    if resume:
        saved = runs.read_config(out)  # (a clear error when `out` is not a run)
    else:
        _on_main(dist, device, lambda: runs.check_out_dir(out, overwrite))
    data_passed = data is not None  # (config.json says so: `cfg.data` may not describe it)
    if data is None:
        data = load_data(cfg.data)
    if resume and dist.main:  # (before config.json records this version)
        runs.check_preprocessing(out, data)
    cfg = C.resolve(cfg, data.info.default_rec_dist)
    if resume:  # (the CLI checks this too; a script's config is checked here)
        C.check_resumable(C.resolve(saved, data.info.default_rec_dist), cfg, str(out))
    with ExitStack() as held:
        lock = runs.RunLock(out, create=not resume)
        _on_main(dist, device, lambda: held.enter_context(lock))  # rank 0 holds the run
        # The trainer checks the settings against the data and the device (and writes nothing):
        # built before --overwrite removes the previous run, so that a refused setting leaves
        # that run as it was.
        trainer = Trainer(cfg, out, data, dist)
        if resume:  # (a run from before fingerprints takes this version's)
            trainer.fingerprint = runs.run_fingerprint(out) or trainer.fingerprint
        if not resume:
            _on_main(dist, device, lambda: runs.prepare_out_dir(out, overwrite))
        dist.barrier()  # the run directory is ready for every rank
        if resume:
            runs.check_same_data(out, data.image_shape, len(trainer.train_idx),
                                 len(trainer.val_idx))  # fmt: skip
            trainer.restore()
            if trainer.step > trainer.total_steps:
                raise UserError(
                    f"{str(out)!r} is already at step {trainer.step}, past the "
                    f"{trainer.total_steps} steps asked for; give --steps (or --epochs) beyond "
                    "it to train on"
                )
            finished = dist.main_says(_final_weights_readable(out), trainer.device)
            if trainer.step == trainer.total_steps and finished:
                log.info("%s already finished its %d steps; nothing to do", out, trainer.step)
                runtime.last_was_noop = True
                return out
        record = runs.config_record(cfg)
        record["image_shape"] = list(data.image_shape)
        record["patches"] = list(getattr(data.info, "patches", ()))
        record["preprocessing"] = getattr(data, "preprocessing", 1)
        record["n_train"], record["n_val"] = len(trainer.train_idx), len(trainer.val_idx)
        record["n_images"] = len(data)  # what the split drew from (a subset draws from all)
        record["total_steps"] = trainer.total_steps
        record["speed"] = trainer.forward.speed()  # what "auto" became on this device
        record["fingerprint"] = trainer.fingerprint
        record["processes"] = dist.world
        if data_passed:
            record["data_passed"] = True
        if dist.main:
            atomic_write_json(out / runs.CONFIG, record)

            def fell_back() -> None:  # config.json says how the run really trains
                atomic_write_json(out / runs.CONFIG, {**record, "speed": trainer.forward.speed()})

            trainer.forward.on_fall_back = fell_back
        precision = "bf16 autocast" if trainer.accel.amp_dtype is not None else "fp32"
        where = f"({trainer.device}, {precision})"
        if resume:
            log.info("resumed %s at step %d: training %s on to step %d %s", out, trainer.step,
                     cfg.loss.name, trainer.total_steps, where)  # fmt: skip
        else:
            log.info("training %s for %d steps into %s %s", cfg.loss.name, trainer.total_steps,
                     out, where)  # fmt: skip
        trainer.run(progress)
    return out
