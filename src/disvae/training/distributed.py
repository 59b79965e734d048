"""Data-parallel training over several processes, launched by ``torchrun`` (torch.distributed).

Semantics (docs/train.md, "Several GPUs or machines"):

- ``--batch-size`` is the **global** batch: every step, all ranks draw the same global batch of
  indices from the same seeded `BatchStream`, and rank r takes its contiguous share
  ``[r * B/W, (r+1) * B/W)``. The shares never overlap and cover the batch; a checkpoint holds the
  global data order, so a run resumes with any number of processes that divides the batch.
- All ranks seed their generators alike and draw the reparameterisation noise for the whole global
  batch, each keeping its rows, so W processes take exactly the steps one process takes with the
  same global batch (up to float summation order), for objectives whose loss is a mean over the
  batch. β-TCVAE's minibatch estimate of q(z) uses each rank's own share (M = B/W) with the full
  training-set size N (Chen et al. 2018, Eq. S6), so it is an estimate from a smaller minibatch.
  FactorVAE's discriminator permutes the codes of the whole global second batch (gathered from
  the ranks, permuted alike on every rank, each keeping its rows), as one process does.
- Gradients are averaged with one all-reduce of a flat buffer per module and step (the models are
  small, a few MB, so overlapping it with the backward pass, as `DistributedDataParallel` does,
  would save nothing); FactorVAE's discriminator is averaged the same way.
- Only rank 0 writes: logs, TensorBoard, checkpoints, the training GIF, the final weights.

Backends: NCCL on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from disvae.errors import UserError


@dataclass(frozen=True)
class Dist:
    """This process's place among ``world`` data-parallel processes (1: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch (its first dimension divides by ``world``)."""
        if not self.active:
            return batch
        n = batch.shape[0] // self.world
        return batch[self.rank * n : (self.rank + 1) * n]

    def gather(self, share: torch.Tensor) -> torch.Tensor:
        """The global batch whose rows the ranks hold, from this rank's ``share`` (every rank
        holds a share of the same shape; `share` undoes this)."""
        if not self.active:
            return share
        parts = [torch.empty_like(share) for _ in range(self.world)]
        torch.distributed.all_gather(parts, share.contiguous())
        return torch.cat(parts)

    def average_gradients(
        self, module: torch.nn.Module, terms: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Replace every gradient of ``module`` by its mean over the ranks (one all-reduce).

        ``terms`` (this rank's loss terms) ride along as one extra element, 0 when they are all
        finite and NaN otherwise, which is added to every averaged gradient: a non-finite term
        on any rank makes the gradients non-finite on all of them, so every rank skips the same
        steps and rolls back together (a skip decided by one rank alone would leave the others
        waiting in a collective it never joins). Adding 0.0 changes no gradient.
        """
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        parts = [g.reshape(-1) for g in grads]
        if terms:
            flag = sum(v.detach().float().sum() for v in terms.values()) * 0.0
            parts.append(flag.reshape(1).to(grads[0].dtype))
        flat = torch.cat(parts)
        torch.distributed.all_reduce(flat)
        flat /= self.world
        if terms:
            flat[:-1] += flat[-1]  # in place: the flag's element lies past every gradient
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def average(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over the ranks of each tensor (same names and shapes on every rank)."""
        if not self.active or not tensors:
            return tensors
        names = sorted(tensors)
        flat = torch.cat([tensors[k].double().reshape(-1) for k in names])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        out, offset = {}, 0
        for k in names:
            t = tensors[k]
            out[k] = flat[offset : offset + t.numel()].view(t.shape).to(t.dtype)
            offset += t.numel()
        return out

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (e.g. a stop request from a signal)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def main_says(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank: for decisions that read the run's files, which rank
        0 may be writing while another rank looks (one broadcast)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def from_environment(requested: str = "auto") -> Dist:
    """The `Dist` that ``torchrun`` describes in the environment; joins the process group, with
    NCCL when the run trains on CUDA (``requested`` is the run's ``--device``), else gloo.

    Without ``WORLD_SIZE`` (or with 1) this is a plain single-process run. Variables that do
    not describe one consistent place among the processes (``WORLD_SIZE`` without ``RANK``, a
    rank outside ``[0, WORLD_SIZE)``, a rank > 0 alone, non-integers) are a `UserError`: a
    rank that guessed would write the run as rank 0 or wait for peers that never come.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", None)
    if world <= 1:
        if rank:
            raise UserError(
                f"RANK={rank} but WORLD_SIZE is {os.environ.get('WORLD_SIZE', 'not set')}: "
                f"{_LAUNCH}, or unset RANK to train in one process"
            )
        return Dist()
    if rank is None or rank >= world:
        got = "not set" if rank is None else f"{rank}, not in 0..{world - 1}"
        raise UserError(f"WORLD_SIZE={world} but RANK is {got}: {_LAUNCH}")
    import torch.distributed as td

    if not td.is_initialized():
        cuda = _on_cuda(requested)
        if cuda:
            torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
        try:
            td.init_process_group("nccl" if cuda else "gloo", timeout=_timeout())
        except (ValueError, RuntimeError) as e:  # a missing MASTER_ADDR, peers that never came
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"rank {rank} of {world} could not join the others: {text}; {_LAUNCH}"
            ) from None
    return Dist(rank=rank, world=world)


_LAUNCH = (
    "launch the processes with torchrun (it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR "
    "and MASTER_PORT alike), e.g. torchrun --nproc-per-node 2 -m disvae train ..."
)


def _env_int(name: str, default: int | None) -> int | None:
    """The integer >= 0 in environment variable ``name`` (``default`` when unset)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"{name}={raw!r} must be an integer >= 0: {_LAUNCH}")
    return value


def _timeout():
    """How long a rank waits in a collective: ``DISVAE_DIST_TIMEOUT`` seconds, default one hour.

    The other ranks wait at their next collective while rank 0 alone validates, computes metrics
    during training (minutes on a large dataset) or writes a checkpoint, longer than NCCL's
    10-minute default allows.
    """
    from datetime import timedelta

    raw = os.environ.get("DISVAE_DIST_TIMEOUT", "3600")
    try:
        seconds = float(raw)
        if not seconds > 0:
            raise ValueError
        return timedelta(seconds=seconds)
    except (ValueError, OverflowError):  # "abc", "0", "nan"; "inf" overflows timedelta
        raise UserError(
            f"DISVAE_DIST_TIMEOUT={raw!r} must be a positive, finite number of seconds"
        ) from None


def _on_cuda(requested: str) -> bool:
    """Whether a run asking for device ``requested`` trains on CUDA (auto: when present)."""
    return torch.cuda.is_available() and (requested == "auto" or requested.startswith("cuda"))


def device_for(dist: Dist, requested: str) -> str:
    """The device a rank trains on: ``cuda:LOCAL_RANK`` when CUDA is asked for (or auto)."""
    if not dist.active or not _on_cuda(requested):
        return requested
    return f"cuda:{_env_int('LOCAL_RANK', 0)}"


def check_batch(dist: Dist, batch_size: int) -> None:
    if batch_size % dist.world:
        raise UserError(
            f"--batch-size {batch_size} is the global batch and must divide among the "
            f"{dist.world} processes; use a multiple of {dist.world}"
        )


def shutdown(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
