"""Device and precision setup of the training step, kept out of the loop.

What `resolve` turns on (the fast path is the default path; each can be forced either way):

- **bf16 autocast** (``amp = "auto"``: on CUDA with bf16 support, and on CPUs with bf16 units,
  `cpu_has_bf16`): the model's forward (and FactorVAE's discriminator's, `Autocast`) runs under
  `torch.autocast`; its outputs are cast back to float32, so every loss term is computed in
  fp32 (the reductions over 4,096 pixels are where bf16's 8 bits of mantissa would hurt).
- **channels-last** (``channels_last = None``: on CUDA and the CPU): NHWC convolutions, for the
  tensor cores and for oneDNN on the CPU (+15% training and 2.7x encoding speed on 2 cores,
  where NCHW convolutions spend their time in page faults of layout reorders).
- **torch.compile** (``compile = true``, off by default: compilation costs tens of seconds): the
  model's forward and backward; if compilation fails the run warns once and continues eagerly.
  ``compile_mode = "reduce-overhead"`` adds CUDA graphs of the forward and backward: a
  batch-64 step of the Burgess model is ~300 small operations, whose launching from Python
  bounds it on a GPU (7.5 ms a step eager on an H200, at batch 64 and 1,024 alike); a graph
  replays them in one call. The recorded whole step (below, the default) goes further.
- **fused Adam** (on CUDA and the CPU, and wherever the deferred check is on): one pass over
  the parameters per step (on 2 CPU cores 0.4 instead of 2.2 ms for the Burgess model, 4.2
  instead of 12.3 ms for FactorVAE's 5-million-parameter discriminator), by `FusedAdam`,
  which also spares start-up the ``torch._dynamo`` import of ``torch.optim`` (about 3 s).
- **TF32** matmuls and convolutions and the cuDNN autotuner (CUDA; shapes are fixed). The
  autotuner is off with ``deterministic = true``, which a GPU run needs to be reproducible bit
  for bit.
- **sync-free non-finite check** (``nan_check = "auto"``: on CUDA, and with ``cuda_graph``):
  see `DeferredGuard`.
- **the whole step in one CUDA graph** (``cuda_graph = None``: on CUDA for one process, unless
  a setting rules it out: `auto_cuda_graph`): see `disvae.training.graph`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from disvae.config import TrainConfig
from disvae.errors import UserError
from disvae.models.vae import VAEOutput
from disvae.training.adam import FusedAdam, Optimizer


@dataclass(frozen=True)
class Accel:
    """The resolved speed settings of one run (`resolve` fills it from `TrainConfig`)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype of the forward; None: fp32
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode (TrainConfig.compile_mode)
    fused_adam: bool = False
    deferred_nan_check: bool = False
    deterministic: bool = False
    cuda_graph: bool = False  # the whole step in one CUDA graph (`disvae.training.graph`)

    def describe(self) -> dict[str, object]:
        """JSON-able summary for config.json / logs."""
        return {
            "device": str(self.device),
            "amp": "bf16" if self.amp_dtype is torch.bfloat16 else "none",
            "channels_last": self.channels_last,
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "fused_adam": self.fused_adam,
            "nan_check": "deferred" if self.deferred_nan_check else "step",
            "deterministic": self.deterministic,
            "cuda_graph": self.cuda_graph and self.device.type == "cuda",  # recorded for real
        }


def auto_amp(amp: str, device: torch.device) -> str:
    """``amp`` with "auto" decided for ``device``: bf16 on a CUDA GPU with bf16 support and on
    a CPU with bf16 units (`cpu_has_bf16`), fp32 ("none") elsewhere. Training and the metrics'
    encoding both decide it here."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "none"


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX, e.g. AMD Zen 4, Intel
    Sapphire Rapids), where oneDNN's bf16 convolutions beat fp32: on 2 Zen 4 cores a batch-64
    Burgess training step is 1.3x and encoding 1.9x as fast. Elsewhere bf16 is emulated, about
    20x slower than fp32 (measured on an AVX2 CPU). ``DISVAE_CPU_BF16=0`` (or 1) overrides."""
    forced = os.environ.get("DISVAE_CPU_BF16", "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise UserError(
                f"DISVAE_CPU_BF16={forced!r}: use 1 (bf16 autocast on this CPU), 0 (fp32), or "
                "unset it to let disvae detect bf16 units"
            )
        return forced == "1"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def auto_cuda_graph(cfg: TrainConfig, device: torch.device, distributed: bool = False) -> bool:
    """``cfg.cuda_graph`` with None ("auto") decided: the whole step is recorded on a CUDA
    device for one process, unless another setting asks for what a recorded step cannot give:
    ``deterministic`` (replays draw other random numbers than eager steps, so a resumed run
    would not repeat the uninterrupted one bit for bit), ``nan_check = "step"`` (a host read
    inside the step) or a compile mode recording CUDA graphs of its own. Under torchrun each
    step all-reduces across processes, which one process's graph does not record. On ROCm
    (AMD GPUs, also device type "cuda") the recorded step has not been measured: eager there
    unless asked for."""
    if cfg.cuda_graph is not None:
        return cfg.cuda_graph
    own_graphs = cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune")
    return (
        device.type == "cuda"
        and getattr(torch.version, "hip", None) is None
        and not distributed
        and not cfg.deterministic
        and cfg.nan_check != "step"
        and not own_graphs
    )


def resolve(cfg: TrainConfig, device: torch.device, distributed: bool = False) -> Accel:
    """The speed settings of ``cfg`` on ``device`` ("auto" values decided here; ``distributed``:
    the run is one of several torchrun processes)."""
    cuda = device.type == "cuda"
    amp = auto_amp(cfg.amp, device)
    graph = auto_cuda_graph(cfg, device, distributed)
    # A step recorded in a CUDA graph cannot read the device: the check must be the deferred one.
    deferred = cfg.nan_check == "deferred" or (cfg.nan_check == "auto" and (cuda or graph))
    cl = cfg.channels_last
    return Accel(
        device=device,
        amp_dtype=torch.bfloat16 if amp == "bf16" else None,
        channels_last=device.type in ("cuda", "cpu") if cl is None else cl,
        compile=cfg.compile,
        compile_mode=cfg.compile_mode,
        # The deferred check skips updates through fused Adam's `found_inf` argument.
        fused_adam=device.type in ("cuda", "cpu") or deferred,
        deferred_nan_check=deferred,
        deterministic=cfg.deterministic,
        cuda_graph=graph,
    )


def configure_backends(accel: Accel) -> None:
    """Allow TF32 and cuDNN autotuning on CUDA; with ``deterministic``, deterministic kernels
    only. Process-wide settings, as every trainer makes them; a deterministic run's stay on.

    The autotuner times the convolution algorithms in each process and keeps the fastest, which
    may differ between processes and may be non-deterministic (atomic adds in the weight
    gradient): two runs then agree to float rounding only. ``deterministic`` (or
    `torch.backends.cudnn.deterministic` set by the user in the process) turns the autotuner off
    and asks cuDNN for deterministic algorithms; other non-deterministic operations warn, and
    cuBLAS gets the fixed workspace that ``CUBLAS_WORKSPACE_CONFIG`` must set before its first
    use (PyTorch's reproducibility notes).
    """
    if accel.deterministic:
        if (
            accel.device.type == "cuda"
            and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
            and torch.cuda.is_initialized()
        ):
            warnings.warn(
                "deterministic: CUDA was in use in this process before CUBLAS_WORKSPACE_CONFIG "
                "was set, so cuBLAS may keep a workspace with non-deterministic matmuls; for "
                "bit-exact runs set CUBLAS_WORKSPACE_CONFIG=:4096:8 before the process starts",
                RuntimeWarning,
                stacklevel=3,
            )
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    if accel.device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.deterministic
    torch.set_float32_matmul_precision("high")


def autocast(accel: Accel) -> AbstractContextManager:
    dtype = accel.amp_dtype
    # Autocast's cache of cast weights must be off in a recorded CUDA graph (PyTorch's CUDA
    # graph notes): cast copies made during the capture would be freed at the context's exit.
    return torch.autocast(
        accel.device.type, dtype=dtype or torch.float32, enabled=bool(dtype),
        cache_enabled=not accel.cuda_graph,
    )  # fmt: skip


def prepare_model(model: torch.nn.Module, accel: Accel) -> torch.nn.Module:
    """Move ``model``'s 4-d weights to channels-last when asked (in place)."""
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def adam(params, lr: float, accel: Accel, **kwargs) -> FusedAdam | torch.optim.Adam:
    """Adam: `FusedAdam` (the fused kernel, no ``torch._dynamo`` import) when ``accel`` says
    fused, ``torch.optim.Adam``'s default implementation otherwise (devices without the kernel).
    """
    if accel.fused_adam:
        return FusedAdam(params, lr=lr, **kwargs)
    return torch.optim.Adam(params, lr=lr, **kwargs)


def keep_optimizer_flags(saved_groups: list[dict], opt: Optimizer) -> None:
    """Give param groups read from a checkpoint this run's fused/foreach flags (a run may be
    resumed on another device), before `load_state_dict` places the state by them."""
    for saved, own in zip(saved_groups, opt.param_groups, strict=False):
        saved["fused"], saved["foreach"] = own.get("fused"), own.get("foreach")


def capturing() -> bool:
    """Whether this thread's current CUDA stream is recording a graph (false without CUDA)."""
    try:
        return torch.cuda.is_current_stream_capturing()
    except RuntimeError:  # a build without CUDA
        return False


class ModelForward:
    """``model(x)`` under the run's autocast and memory format, compiled when asked.

    Outputs come back in float32. A compilation that fails (no C++ compiler, an unsupported
    backend) warns once and the run continues eagerly with the same module and weights.
    """

    def __init__(self, model: torch.nn.Module, accel: Accel) -> None:
        self.model, self.accel = model, accel
        self._compiled: Callable | None = None
        # CUDA graphs (reduce-overhead, max-autotune on CUDA) replay into the same output
        # buffers: each training step is marked as a new one, so the previous step's outputs,
        # no longer used, may be overwritten.
        self._graphs = accel.device.type == "cuda" and accel.compile_mode in (
            "reduce-overhead",
            "max-autotune",
        )
        self._calls = 0  # calls of the compiled model so far
        self.fallback_reason: str | None = None  # why a requested compilation was given up
        self.on_fall_back: Callable[[], None] | None = None  # called once, after it
        if accel.compile:
            mode = None if accel.compile_mode == "default" else accel.compile_mode
            try:
                self._compiled = torch.compile(model, mode=mode)
            except Exception as e:  # noqa: BLE001 - any failure: eager
                self.fall_back(e)

    # The first calls compile (and, with CUDA graphs, record) the forward; AOTAutograd compiles
    # the backward lazily at the first backward pass. Failures there may still fall back.
    UNPROVEN_CALLS = 3

    @property
    def unproven(self) -> bool:
        """Whether a failure now (in this forward or the backward of its output) may still be
        the compiler's: compiled, and within its first `UNPROVEN_CALLS` calls."""
        return self._compiled is not None and self._calls <= self.UNPROVEN_CALLS

    def fall_back(self, e: Exception) -> None:
        """Warn once and run eagerly from now on (the compiled model failed with ``e``).

        Not while a CUDA graph is being recorded (`--cuda-graph`): a failed capture leaves
        CUDA in capture mode, so an eager retry cannot work, and the recording's own error
        (`GraphRecordingError`) must stop the run with ``compile`` still as it was; ``e`` is
        raised again."""
        if capturing():
            raise e
        reason = f"{type(e).__name__}: {str(e)[:200]}"
        warnings.warn(f"torch.compile failed ({reason}); training eagerly", RuntimeWarning,
                      stacklevel=3)  # fmt: skip
        self._compiled, self.fallback_reason = None, reason
        if self.on_fall_back is not None:
            self.on_fall_back()

    def speed(self) -> dict[str, object]:
        """`Accel.describe` as it stands: ``compile`` false (and ``compile_error``) after a
        fall-back to eager."""
        described = self.accel.describe()
        if self.fallback_reason is not None:
            described.update(compile=False, compile_error=self.fallback_reason)
        return described

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.accel.channels_last else x

    def __call__(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> VAEOutput:
        x = self._input(x)
        with autocast(self.accel):
            out = None
            if self._compiled is not None:
                try:
                    if self._graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    self._calls += 1
                    out = self._compiled(x, eps)
                except Exception as e:  # noqa: BLE001 - backend errors surface at first call
                    self.fall_back(e)
            if out is None:
                out = self.model(x, eps)
        return VAEOutput(out.logits.float(), out.mu.float(), out.logvar.float(), out.z.float())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` in float32 (eager: FactorVAE's second batch, under no_grad)."""
        with autocast(self.accel):
            mu, logvar = self.model.encode(self._input(x))
        return mu.float(), logvar.float()


class Autocast:
    """``module(z)`` under the run's autocast, its output in float32: FactorVAE's discriminator,
    an MLP of 5 million weights whose forward and backward cost a step about as much as the
    VAE's (at 128 codes on 2 Zen 4 cores: 32 ms in fp32, 16 ms in bf16). The weights stay fp32;
    the discriminator computes its output layer in float32 itself (`Discriminator.forward`).
    Not a module: the caller's keeps its parameters and state_dict."""

    def __init__(self, module: torch.nn.Module, accel: Accel) -> None:
        self.module, self.accel = module, accel

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.accel.amp_dtype is None:
            return self.module(z)
        with autocast(self.accel):
            return self.module(z).float()


def first_nonfinite(terms: dict[str, torch.Tensor], params: list[torch.Tensor]) -> str | None:
    """The name of a non-finite loss term (one other than the total if any), "gradient" when
    only a gradient of ``params`` is, or None when all are finite (one host sync)."""
    grads = [p.grad for p in params]
    ok = torch.stack([torch.isfinite(v).all() for v in (*terms.values(), *grads)]).all()
    if bool(ok):
        return None
    bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
    bad = [k for k in bad if k != "loss"] or bad
    return bad[0] if bad else "gradient"


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients of ``params`` (a device scalar; no host sync)."""
    return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)


def clip_to(params: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """Scale the gradients so that their global norm is at most ``max_norm`` (no host sync)."""
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)


def skip_unless(opt: Optimizer, ok: torch.Tensor) -> None:
    """Make the next ``opt.step()`` a no-op when the device flag ``ok`` is False, without reading
    it on the host: fused Adam skips its update (and undoes its step count) when ``found_inf``
    is 1, the mechanism `torch.amp.GradScaler` uses."""
    opt.found_inf = (~ok).to(torch.float32).reshape(())  # type: ignore[attr-defined]


class DeferredGuard:
    """Sync-free detection of non-finite steps (the CUDA default; ``nan_check = "deferred"``).

    `finite` compares loss terms and the gradient norm on the device and returns a flag that
    gates the update (`skip_unless`) and masks the summed terms; `end_step` counts skipped
    steps and the longest run of them. `flush` reads the counters on the host: the loop calls it
    only at log and checkpoint steps, which synchronise anyway, and rolls back there when a run
    of ``nan_patience`` skipped steps happened. So the outcome equals the per-step check's
    (same steps skipped, same log averages), only noticed up to ``log_every`` steps later.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = lambda: torch.zeros((), dtype=torch.int64, device=self.device)  # noqa: E731
        self.n_bad, self.streak, self.worst = zero(), zero(), zero()
        self._bad: dict[tuple, torch.Tensor] = {}  # (term names, sizes) -> bad counts per value

    def finite(self, terms: dict[str, torch.Tensor], norm: torch.Tensor) -> torch.Tensor:
        """A device bool: every term and the gradient norm ``norm`` are finite."""
        values = [v.detach().reshape(-1).float() for v in terms.values()] + [norm.reshape(1)]
        bad = ~torch.isfinite(torch.cat(values))
        layout = (tuple(terms), tuple(v.numel() for v in values))
        seen = self._bad.get(layout)
        if seen is None:
            self._bad[layout] = bad.long()
        else:
            seen.add_(bad)
        return ~bad.any()

    # The counters are updated in place: a step recorded in a CUDA graph (`training.graph`)
    # keeps writing to the tensors it was recorded with.
    def end_step(self, ok: torch.Tensor) -> None:
        bad = (~ok).long()
        self.n_bad.add_(bad)
        self.streak.add_(1).mul_(bad)
        torch.maximum(self.worst, self.streak, out=self.worst)

    def flush(self) -> tuple[int, int, int, str]:
        """``(skipped steps, longest run, current run, first bad name)`` since the last flush
        (one host sync). The name prefers a term over the total, "gradient" if only those."""
        n_bad, worst, streak = torch.stack([self.n_bad, self.worst, self.streak]).tolist()
        name = self._first_bad_name() if n_bad else ""
        self.n_bad.zero_()
        self.worst.copy_(self.streak)
        for counts in self._bad.values():
            counts.zero_()
        return n_bad, worst, streak, name

    def _first_bad_name(self) -> str:
        for (names, sizes), counts in self._bad.items():
            counts, pos, bad = counts.tolist(), 0, []
            for name, size in zip(names, sizes, strict=False):  # sizes ends with the norm's
                if any(counts[pos : pos + size]):
                    bad.append(name)
                pos += size
            bad = [n for n in bad if n != "loss"] or bad
            if bad:
                return bad[0]
        return "gradient"
