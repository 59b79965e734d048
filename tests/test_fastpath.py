"""The fast path (bf16 autocast, channels-last, torch.compile, the sync-free non-finite check)
against the fp32 eager path, and the schedules: learning rate, clipping, validation."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

from disvae import config as C
from disvae import runs
from disvae.cli import main
from disvae.training import accel, runtime, train
from disvae.training import checkpoint as ckpt
from disvae.training.loop import NonFiniteError, Trainer
from disvae.training.schedules import lr_factor

# On a GPU machine these run on the GPU (device auto), eagerly: some swap `data.batch`, which a
# recorded step would not call again (tests/test_graph.py tests the recorded step).
FAST = ["dataset=dsprites_tiny", "batch_size=16", "log_every=5", "lr=1e-3", "snapshot_every=0",
        "cuda_graph=false"]  # fmt: skip


def _cfg(loss: str = "betaH", *extra: str) -> C.RunConfig:
    return C.apply_overrides(C.RunConfig(), [f"loss={loss}", *FAST, *extra])


def _log(run) -> list[dict]:
    return [json.loads(x) for x in (run / runs.TRAIN_LOG).read_text().splitlines()]


def _losses(cfg: C.RunConfig, data, tmp_path, steps: int) -> list[float]:
    """Loss of each of the first ``steps`` steps of a fresh trainer (same seed, same batches)."""
    t = Trainer(C.resolve(cfg), tmp_path, data)
    out = []
    for _ in range(steps):
        terms = t.train_step()
        t.step += 1
        out.append(float(terms["loss"]))
    return out


class _PoisonedBatches:
    """Make the batches of chosen calls of ``data.batch`` NaN."""

    def __init__(self, data, bad_calls):
        self.bad_calls, self.calls, self._batch = bad_calls, 0, data.batch
        data.batch = self.batch

    def batch(self, index):
        self.calls += 1
        x = self._batch(index)
        return torch.full_like(x, float("nan")) if self.bad_calls(self.calls) else x


# ---------------------------------------------------------------------- learning-rate schedules


def test_schedule_values_at_hand_computed_steps():
    f = functools.partial(lr_factor, total_steps=100)
    assert [f(s, "none") for s in (0, 50, 10**6)] == [1.0, 1.0, 1.0]
    # step: x0.5 every 10 steps
    assert [f(s, "step", decay_steps=10, decay=0.5) for s in (0, 9, 10, 19, 25)] == [
        1.0, 1.0, 0.5, 0.5, 0.25]  # fmt: skip
    # cosine from 1 to floor 0.1: halfway is 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55
    cos = [f(s, "cosine", floor=0.1) for s in (0, 25, 50, 100, 150)]
    assert cos == pytest.approx([1.0, 0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2, 0.55, 0.1, 0.1])
    # warm-up over 4 steps: (s + 1) / 4, then the schedule counted from the end of the warm-up
    assert [f(s, "none", warmup=4) for s in (0, 1, 3, 4)] == [0.25, 0.5, 1.0, 1.0]
    assert f(1, "step", warmup=4, decay_steps=1, decay=0.5) == pytest.approx(0.5 * 0.5)
    assert f(4 + 48, "cosine", warmup=4) == pytest.approx(0.5)  # half of the 96 steps after it
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor(0, "linear", total_steps=10)


@pytest.mark.parametrize(
    "item, message",
    [("lr_schedule=linear", "train.lr_schedule must be one of"), ("lr_decay=2", "at most 1"),
     ("grad_clip=0", "train.grad_clip must be positive"), ("amp=fp16", "train.amp must be"),
     ("val_every=-1", "non-negative"), ("nan_check=never", "train.nan_check"),
     ("amp=none", "for the word none write --amp none")],
)  # fmt: skip
def test_bad_schedule_and_speed_values_name_the_key(item, message):
    with pytest.raises(C.UserError, match=message):
        C.resolve(C.apply_overrides(C.RunConfig(), [item]))


def test_resume_with_step_schedule_clip_and_validation_equals_an_uninterrupted_run(
    tiny_data, tmp_path
):
    # 1843 training images / 16 = 115.2 steps an epoch: decay every 0.05 epoch = 6 steps.
    extra = ["lr_schedule=step", "lr_decay_every=0.05", "lr_warmup=3", "grad_clip=100",
             "val_every=4", "val_images=32", "checkpoint_every=6", "log_every=3"]  # fmt: skip
    whole = train(_cfg("betaH", "steps=24", *extra), tmp_path / "w", data=tiny_data,
                  progress=False)  # fmt: skip
    part = train(_cfg("betaH", "steps=12", *extra), tmp_path / "p", data=tiny_data,
                 progress=False)  # fmt: skip
    train(C.apply_overrides(runs.read_config(part), ["steps=24"]), part, data=tiny_data,
          resume=True, progress=False)  # fmt: skip
    assert (whole / runs.MODEL).read_bytes() == (part / runs.MODEL).read_bytes()
    assert (whole / runs.BEST).read_bytes() == (part / runs.BEST).read_bytes()
    strip = lambda log: [{k: v for k, v in r.items() if k != "img_per_s"} for r in log]  # noqa: E731
    assert strip(_log(whole)) == strip(_log(part))
    lr = {r["step"]: r["lr"] for r in _log(whole)}
    # The lr logged at step s is the one of the update from s-1 to s.
    assert lr[3] == pytest.approx(1e-3)  # the last warm-up step: (2 + 1) / 3
    assert lr[9] == pytest.approx(1e-3 * 0.5)  # step 8 // 6 = 1
    assert lr[24] == pytest.approx(1e-3 * 0.5**3)  # step 23 // 6 = 3
    assert lr[4] == pytest.approx(1e-3) and lr[8] == pytest.approx(5e-4)


# Bit for bit on the CPU; on a GPU only with deterministic kernels (docs/train.md, Resuming).
ON_DEVICES = [pytest.param(['device="cpu"'], id="cpu")] + [
    pytest.param(['device="cuda"', "deterministic=true"], id="cuda-deterministic")
] * torch.cuda.is_available()


@pytest.mark.parametrize("device", ON_DEVICES)
def test_cosine_schedule_and_deferred_check_resume_exactly(
    tiny_data, tmp_path, monkeypatch, device
):
    extra = ["steps=30", "lr_schedule=cosine", "lr_floor=0.1", "lr_warmup=3",
             "nan_check=deferred", "checkpoint_every=10", *device]  # fmt: skip
    whole = train(_cfg("vae", *extra), tmp_path / "w", data=tiny_data, progress=False)
    real = Trainer.train_step

    def stop_at_17(self):  # what Ctrl-C does: finish the step, checkpoint, stop
        terms = real(self)
        self._stop_requested = self.step == 16
        return terms

    monkeypatch.setattr(Trainer, "train_step", stop_at_17)
    part = train(_cfg("vae", *extra), tmp_path / "p", data=tiny_data, progress=False)
    # stopped with a checkpoint at 17; no log line of its own (log_every 5): steps 16 and 17
    # are in the checkpoint's sums and go into the resumed run's line of step 20
    assert not (part / runs.MODEL).exists() and _log(part)[-1]["step"] == 15
    assert ckpt.list_checkpoints(part / runs.CHECKPOINTS)[-1][0] == 17
    assert runtime.last_stop_step == 17  # what the CLI's summary names
    monkeypatch.undo()
    train(runs.read_config(part), part, data=tiny_data, resume=True, progress=False)
    assert (whole / runs.MODEL).read_bytes() == (part / runs.MODEL).read_bytes()
    strip = lambda log: [{k: v for k, v in r.items() if k != "img_per_s"} for r in log]  # noqa: E731
    assert strip(_log(whole)) == strip(_log(part))
    last = lr_factor(29, "cosine", total_steps=30, warmup=3, floor=0.1)
    assert _log(whole)[-1]["lr"] == pytest.approx(1e-3 * last)


# ---------------------------------------------------------------------- clipping, validation


def test_grad_clip_bounds_the_norm_of_every_update(tiny_data, tmp_path):
    cfg = C.resolve(_cfg("factor", "steps=6", "grad_clip=0.5", "log_every=1"))
    t = Trainer(cfg, tmp_path, tiny_data)
    seen = []

    def record_before_step(opt):
        step = opt.step

        def recorded():
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            seen.append(float(torch.nn.utils.get_total_norm(grads)))
            step()

        opt.step = recorded

    record_before_step(t.opt)
    record_before_step(t.disc_opt)
    t.run(progress=False)
    log = _log(tmp_path)
    assert len(seen) == 12 and max(seen) <= 0.5 * (1 + 1e-5)
    # The logged norms are those before clipping: clipping really acted.
    assert min(r["grad_norm"] for r in log) > 0.5 and "disc_grad_norm" in log[0]


def test_val_every_logs_val_losses_and_keeps_the_best_weights(tiny_data, tmp_path):
    base = ["steps=20", "log_every=5", "checkpoint_every=100"]
    plain = train(_cfg("betaH", *base), tmp_path / "a", data=tiny_data, progress=False)
    run = train(_cfg("betaH", *base, "val_every=5", "val_images=100"), tmp_path / "b",
                data=tiny_data, progress=False)  # fmt: skip
    log = _log(run)
    val = {r["step"]: r["val/loss"] for r in log if "val/loss" in r}
    assert list(val) == [5, 10, 15, 20] and all("val/recon" in r for r in log)
    tensors, meta = ckpt.load_state(run / runs.BEST)
    assert meta["step"] == min(val, key=val.get) and meta["val_loss"] == min(val.values())
    assert any(k.startswith("model.") for k in tensors)
    # Validation leaves training untouched (its RNG draws are undone).
    assert (plain / runs.MODEL).read_bytes() == (run / runs.MODEL).read_bytes()
    with pytest.raises(C.UserError, match="needs a held-out split"):
        train(_cfg("betaH", *base, "val_every=5", "val_fraction=0"), tmp_path / "c",
              data=tiny_data)  # fmt: skip


def test_val_loss_scores_every_step_by_the_settled_objective(tiny_data, tmp_path):
    """Inside a warm-up the objective of the step weighs the regulariser by w(step) < 1, so an
    early step would look best; `val/loss` uses the final weights (w = 1, β-VAE_B's final C)."""
    base = ["steps=10", "log_every=5", "checkpoint_every=100", "val_every=5", "val_images=64",
            "reg_anneal=1000"]  # fmt: skip
    run = train(_cfg("betaH", *base, "beta=4"), tmp_path / "h", data=tiny_data, progress=False)
    for r in (r for r in _log(run) if "val/loss" in r):  # betaH: recon + w * beta * kl, w = 1
        assert r["val/loss"] == pytest.approx(r["val/recon"] + 4 * r["val/kl"], rel=1e-6)
        assert r["loss"] < r["recon"] + 0.1 * 4 * r["kl"]  # training: w(step) <= 0.01
    run = train(_cfg("betaB", *base, "c_fin=7", "c_steps=1000", "gamma=10"), tmp_path / "b",
                data=tiny_data, progress=False)  # fmt: skip
    for r in (r for r in _log(run) if "val/loss" in r):  # recon + gamma * |kl - C|, C = c_fin
        assert r["val/capacity"] == pytest.approx(7.0) and r["capacity"] < 0.1
        assert r["val/loss"] >= r["val/recon"] + 10 * abs(r["val/kl"] - 7) - 1e-3 * r["val/loss"]
    from disvae.evaluation import evaluate

    held_out = evaluate(run, data=tiny_data, device="cpu")["losses"]  # `disvae evaluate` alike
    assert held_out["capacity"] == pytest.approx(7.0)


def test_a_best_loss_scored_the_old_way_is_not_compared_on_resume(tiny_data, tmp_path):
    """A checkpoint from before settled scoring (no "best_val_kind") holds a best val/loss of
    another objective: the resumed run does not compare with it, so best.safetensors moves on."""
    base = ["log_every=5", "checkpoint_every=10", "val_every=5", "val_images=64"]
    run = train(_cfg("betaH", "steps=10", *base), tmp_path / "r", data=tiny_data, progress=False)
    last = run / runs.CHECKPOINTS / "step_000000010.safetensors"
    tensors, meta = ckpt.load_state(last)
    meta.pop("best_val_kind", None)
    meta["best_val"] = -1.0  # lower than any real loss: kept, nothing could beat it again
    ckpt.save_state(last, tensors, meta)
    cfg = C.apply_overrides(runs.read_config(run), ["steps=20"])
    train(cfg, run, data=tiny_data, resume=True, progress=False)
    val = {r["step"]: r["val/loss"] for r in _log(run) if "val/loss" in r and r["step"] > 10}
    best = ckpt.load_state(run / runs.BEST)[1]
    assert best["step"] == min(val, key=val.get) and best["val_loss"] == min(val.values())


# ---------------------------------------------------------------------- precision and compile


# On a GPU both sides run with TF32 convolutions (`accel.configure_backends`), whose algorithm
# cuDNN picks per memory layout: channels-last then differs by more than summation order.
_LAYOUT_RTOL = 1e-3 if torch.cuda.is_available() else 1e-4


@pytest.mark.parametrize(
    "setting, rtol",
    [
        # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2% per op); the losses are
        # sums over 4,096 pixels computed in fp32 from bf16 logits, and 5 Adam steps of lr 1e-3
        # move the two runs apart a little more: 2% separates that from a real bug (a loss in
        # bf16, a wrong cast), which shows as 10% or more.
        (("amp=bf16",), 2e-2),
        # Same arithmetic in another memory layout: only the summation order differs. amp is
        # pinned, as "auto" means bf16 on a GPU.
        (('amp="none"', "channels_last=true"), _LAYOUT_RTOL),
    ],
)
def test_amp_and_channels_last_are_close_to_fp32_eager(setting, rtol, tiny_data, tmp_path):
    ref = _losses(_cfg("factor", 'amp="none"', "channels_last=false"), tiny_data, tmp_path, 5)
    fast = _losses(_cfg("factor", *setting), tiny_data, tmp_path, 5)
    assert fast == pytest.approx(ref, rel=rtol)
    assert fast != ref or "amp=bf16" not in setting  # bf16 really ran


def test_factor_vae_discriminator_runs_under_the_runs_autocast(tiny_data, tmp_path):
    """FactorVAE's discriminator (as costly as the VAE) computes in bf16 with amp=bf16, in both
    of its uses (the VAE's TC term and its own loss); its weights, their gradients and the
    logits the losses see stay float32."""
    for amp, inner in (("amp=bf16", torch.bfloat16), ('amp="none"', torch.float32)):
        t = Trainer(C.resolve(_cfg("factor", amp)), tmp_path / amp, tiny_data)
        seen = []
        t.disc.net[0].register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        t.disc.net[-1].register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        logits = t.ctx.discriminator(torch.randn(4, t.disc.latent_dim, device=t.device))
        t.train_step()
        # first and last layer of each call (this one, then 2 uses): the output layer in fp32
        assert seen == [inner, torch.float32] * 3 and logits.dtype == torch.float32
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in t.disc.parameters())
        assert not any(k.startswith("module") for k in t.disc.state_dict())


def test_auto_amp_is_bf16_on_a_cpu_with_bf16_units(tiny_data, tmp_path, monkeypatch, caplog):
    """``amp = "auto"``: bf16 where the CPU multiplies bf16 in hardware (decided by
    `accel.cpu_has_bf16`, which DISVAE_CPU_BF16 overrides), fp32 elsewhere; an explicit
    ``amp`` wins either way. The run records what "auto" became."""
    cpu = torch.device("cpu")
    for flag, auto in (("1", torch.bfloat16), ("0", None)):
        monkeypatch.setenv("DISVAE_CPU_BF16", flag)
        assert accel.cpu_has_bf16() == (flag == "1")
        assert accel.resolve(C.resolve(_cfg("vae")).train, cpu).amp_dtype == auto
        assert accel.resolve(C.resolve(_cfg("vae", 'amp="none"')).train, cpu).amp_dtype is None
        assert accel.resolve(C.resolve(_cfg("vae", "amp=bf16")).train, cpu).amp_dtype is not None
    monkeypatch.delenv("DISVAE_CPU_BF16")
    probes = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert accel.cpu_has_bf16() == probes  # this machine's own answer
    monkeypatch.setenv("DISVAE_CPU_BF16", "1")
    on_cpu = 'device="cpu"'  # (a GPU machine too: this is the CPU's rule)
    with caplog.at_level(logging.INFO, logger="disvae.training.loop"):
        run = train(_cfg("vae", on_cpu, "steps=4"), tmp_path / "r", data=tiny_data, progress=False)
    assert json.loads((run / runs.CONFIG).read_text())["speed"]["amp"] == "bf16"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training vae")]
    assert len(said) == 1 and said[0].endswith("(cpu, bf16 autocast)"), said  # the user is told
    ref = _losses(_cfg("vae", on_cpu, 'amp="none"'), tiny_data, tmp_path, 3)
    assert _losses(_cfg("vae", on_cpu), tiny_data, tmp_path, 3) == pytest.approx(ref, rel=2e-2)


def test_compile_path_is_close_to_eager(tiny_data, tmp_path, monkeypatch):
    # The dynamo + AOTAutograd path of torch.compile without inductor's C++ code generation
    # (70 s for this model on two cores; a tiny model goes through inductor below).
    # On the CPU in fp32 on every machine: a GPU's TF32 and cuDNN's choice of algorithm would
    # differ from eager by more than the compiled graph does.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    fp32 = ('device="cpu"', 'amp="none"')
    ref = _losses(_cfg("betaH", *fp32), tiny_data, tmp_path, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback happened
        got = _losses(_cfg("betaH", *fp32, "compile=true"), tiny_data, tmp_path, 3)
    assert got == pytest.approx(ref, rel=1e-5)


def _tiny_vae():
    from disvae.models.vae import VAE

    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    dec = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Unflatten(1, (1, 8, 8)))
    return VAE(enc, dec, 4).eval()  # eval: z = mu, no sampling to compare


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_with_inductor_matches_eager_on_a_tiny_model(mode):
    pytest.importorskip("torch._inductor")
    model, x = _tiny_vae(), torch.rand(4, 1, 8, 8)
    settings = accel.Accel(torch.device("cpu"), compile=True, compile_mode=mode)
    fwd = accel.ModelForward(model, settings)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = fwd(x)
    except RuntimeWarning as e:
        pytest.skip(f"torch.compile unavailable here: {e}")
    ref = model(x)
    torch.testing.assert_close(got.logits, ref.logits, rtol=1e-5, atol=1e-6)


def test_compile_mode_reaches_torch_compile_from_the_command_line(tmp_path, monkeypatch):
    seen = []

    def recording(module, **kwargs):
        seen.append(kwargs)
        return module  # eager: only the arguments matter here

    monkeypatch.setattr(torch, "compile", recording)
    common = ["train", "--dataset", "dsprites_tiny", "--steps", "1", "--no-progress", "-q"]
    assert main([*common, "--compile-mode", "reduce-overhead", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--compile", "--out", str(tmp_path / "b")]) == 0
    assert seen == [{"mode": "reduce-overhead"}, {"mode": None}]  # --compile-mode implies it
    cfg = json.loads((tmp_path / "a" / runs.CONFIG).read_text())["train"]
    assert cfg["compile"] is True and cfg["compile_mode"] == "reduce-overhead"
    bad = main([*common, "--set", 'compile_mode="fastest"', "--out", str(tmp_path / "c")])
    assert bad == 2 and not (tmp_path / "c").exists()


def test_a_failing_compile_warns_once_and_runs_eagerly(monkeypatch):
    def broken(module, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    model, x = _tiny_vae(), torch.rand(4, 1, 8, 8)
    fwd = accel.ModelForward(model, accel.Accel(torch.device("cpu"), compile=True))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as caught:
        outs = [fwd(x) for _ in range(3)]
    assert len(caught) == 1
    assert all(torch.equal(o.logits, model(x).logits) for o in outs)
    assert fwd.speed()["compile"] is False and "no C++" in fwd.speed()["compile_error"]


def test_compile_failing_at_once_is_recorded_in_the_run(tiny_data, tmp_path, monkeypatch):
    def refused(module, **kwargs):
        raise RuntimeError("backend not available")

    monkeypatch.setattr(torch, "compile", refused)
    with pytest.warns(RuntimeWarning, match="backend not available"):
        run = train(_cfg("betaH", "steps=2", "compile=true"), tmp_path / "a", data=tiny_data,
                    progress=False)  # fmt: skip
    record = json.loads((run / runs.CONFIG).read_text())
    assert record["train"]["compile"] is True  # asked for, and resumed as asked
    speed = record["speed"]
    assert speed["compile"] is False and "not available" in speed["compile_error"]


class _FailingBackward(torch.autograd.Function):
    """Identity forward whose backward fails, as a compiled backward can at its first use."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward kernel failed to compile")


def test_a_compiled_backward_that_fails_falls_back_to_eager(tiny_data, tmp_path, monkeypatch):
    def compiled_with_broken_backward(module, **kwargs):
        def call(x, eps=None):
            out = module(x, eps)
            out.logits = _FailingBackward.apply(out.logits)
            return out

        return call

    monkeypatch.setattr(torch, "compile", compiled_with_broken_backward)
    with pytest.warns(RuntimeWarning, match="backward kernel failed") as caught:
        run = train(_cfg("betaH", "steps=6", "compile=true"), tmp_path / "a", data=tiny_data,
                    progress=False)  # fmt: skip
    assert len(caught) == 1
    speed = json.loads((run / runs.CONFIG).read_text())["speed"]  # says how it really trained
    assert speed["compile"] is False and "backward kernel failed" in speed["compile_error"]
    log = _log(run)
    assert log[-1]["step"] == 6 and log[-1]["skipped"] == 0
    assert all(math.isfinite(r["loss"]) for r in log)
    # Past its first calls a compiled model's errors are the run's own: they are raised.
    monkeypatch.setattr(accel.ModelForward, "UNPROVEN_CALLS", 0)
    with pytest.raises(RuntimeError, match="backward kernel failed"):
        train(_cfg("betaH", "steps=2", "compile=true"), tmp_path / "b", data=tiny_data,
              progress=False)  # fmt: skip


def test_deterministic_turns_the_autotuner_off_and_reaches_torch(tmp_path, monkeypatch):
    # cuDNN's flags are plain process-wide settings: they can be set (and are restored here)
    # without a GPU, so configure_backends is checked for a CUDA device on any machine. (It also
    # allows cuBLAS TF32, as every CUDA trainer in the process does; nothing on the CPU.)
    cudnn = torch.backends.cudnn
    for name in ("deterministic", "benchmark", "allow_tf32"):
        monkeypatch.setattr(cudnn, name, False)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda p: None)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: calls.append(k))
    cuda = torch.device("cuda")
    accel.configure_backends(accel.Accel(cuda))
    assert cudnn.benchmark and not cudnn.deterministic and not calls
    assert cudnn.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CUDA not used yet: the variable comes in time
        accel.configure_backends(accel.Accel(cuda, deterministic=True))
    assert cudnn.deterministic and not cudnn.benchmark and calls == [{"warn_only": True}]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    # CUDA used before, the variable not set by the user: too late for cuBLAS, said once.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.warns(RuntimeWarning, match="CUBLAS_WORKSPACE_CONFIG=:4096:8 before the process"):
        accel.configure_backends(accel.Accel(cuda, deterministic=True))
    with warnings.catch_warnings():  # set now (by the call above, or by the user): no warning
        warnings.simplefilter("error")
        accel.configure_backends(accel.Accel(cuda, deterministic=True))
    # From the command line, into config.json; it may change on --resume.
    run = tmp_path / "d"
    common = ["--no-progress", "-q"]
    assert main(["train", "--dataset", "dsprites_tiny", "--steps", "1", "--deterministic",
                 "--out", str(run), *common]) == 0  # fmt: skip
    assert json.loads((run / runs.CONFIG).read_text())["train"]["deterministic"] is True
    assert main(["train", "--resume", str(run), "--steps", "2", "--no-deterministic",
                 *common]) == 0  # fmt: skip
    assert json.loads((run / runs.CONFIG).read_text())["train"]["deterministic"] is False


def test_auto_settings_are_the_fast_path_on_cuda_only():
    cfg = C.TrainConfig()
    cpu = accel.resolve(cfg, torch.device("cpu"))
    # channels-last is also the CPU's fast layout (oneDNN); bf16 and the deferred check are not
    assert cpu.amp_dtype is None and cpu.channels_last and not cpu.deferred_nan_check
    assert cpu.fused_adam  # its CPU kernel: one pass instead of one per Adam operation
    forced = accel.resolve(C.TrainConfig(nan_check="deferred", amp="bf16"), torch.device("cpu"))
    assert forced.deferred_nan_check and forced.fused_adam and forced.amp_dtype is torch.bfloat16


# ---------------------------------------------------------------------- the deferred NaN check


def test_deferred_check_skips_the_same_steps_as_the_step_check(tiny_data, tmp_path):
    logs = {}
    for mode in ("step", "deferred"):
        _PoisonedBatches(tiny_data, lambda call: call in (3, 11))
        run = train(_cfg("betaH", "steps=20", "checkpoint_every=4", f"nan_check={mode}"),
                    tmp_path / mode, data=tiny_data, progress=False)  # fmt: skip
        logs[mode] = _log(run)
        tiny_data.batch = tiny_data.batch.__self__._batch  # unwrap for the next mode
        model, _ = runs.load_run(run)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r["skipped"] for r in logs["deferred"]] == [r["skipped"] for r in logs["step"]]
    assert sum(r["skipped"] for r in logs["step"]) == 2
    # Same steps skipped and averaged; fused and plain Adam round differently, so not bitwise.
    for a, b in zip(logs["step"], logs["deferred"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)


def test_deferred_check_names_a_nan_gradient(tiny_data, tmp_path):
    cfg = C.resolve(_cfg("betaH", "steps=10", "checkpoint_every=5", "nan_check=deferred"))
    t = Trainer(cfg, runs.prepare_out_dir(tmp_path / "g", overwrite=False), tiny_data)
    w = t.model.decoder[0].weight
    w.register_hook(lambda g: torch.full_like(g, float("nan")) if t.step == 5 else g)
    t.run(progress=False)
    assert t.bad_term == "gradient"
    assert sum(r["skipped"] for r in _log(tmp_path / "g")) == 1


def test_deferred_check_rolls_back_then_stops_naming_the_term(tiny_data, tmp_path):
    poison = _PoisonedBatches(tiny_data, lambda call: call >= 12)
    cfg = _cfg("betaH", "steps=60", "checkpoint_every=5", "nan_patience=3", "nan_rollbacks=2",
               "nan_check=deferred")  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"'recon' was not finite .* after 2 rollbacks"):
        train(cfg, tmp_path / "p", data=tiny_data, progress=False)
    assert poison.calls > 20  # batches were drawn again after the rollbacks
    for _, path in ckpt.list_checkpoints(tmp_path / "p" / runs.CHECKPOINTS):
        tensors, _ = ckpt.load_state(path)
        assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
    steps = [r["step"] for r in _log(tmp_path / "p")]
    assert steps == sorted(set(steps))


# ---------------------------------------------------------------------- config file = flags


def test_a_toml_config_and_the_same_flags_give_identical_config_json(tmp_path):
    toml = """
[data]
name = "dsprites_tiny"
val_fraction = 0.2
[model]
latent_dim = 6
[loss]
name = "betaH"
beta = 3.0
[train]
steps = 2
batch_size = 16
lr = 0.002
lr_schedule = "step"
lr_decay_every = 2.5
lr_decay = 0.3
lr_warmup = 1
grad_clip = 10.0
val_every = 2
val_images = 32
amp = "none"
channels_last = false
compile = false
snapshot_every = 0
"""
    (tmp_path / "c.toml").write_text(toml)
    flags = ["--dataset", "dsprites_tiny", "--val-fraction", "0.2", "--latent-dim", "6",
             "--loss", "betaH", "--beta", "3", "--steps", "2", "--batch-size", "16",
             "--lr", "0.002", "--lr-schedule", "step", "--lr-decay-every", "2.5",
             "--lr-decay", "0.3", "--lr-warmup", "1", "--grad-clip", "10", "--val-every", "2",
             "--val-images", "32", "--amp", "none", "--no-channels-last", "--no-compile",
             "--snapshot-every", "0"]  # fmt: skip
    common = ["train", "--no-progress", "-q"]
    assert main([*common, "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "a")]) == 0
    assert main([*common, *flags, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / runs.CONFIG).read_text()) for d in "ab")
    a.pop("written"), b.pop("written")
    assert a == b
    assert a["train"]["lr_schedule"] == "step" and a["train"]["grad_clip"] == 10.0
    assert (tmp_path / "a" / runs.BEST).is_file()


# ---------------------------------------------------------------------- start-up


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_process_age_counts_from_the_process_start():
    # A child that sleeps 0.6 s before asking is at least that old, and not minutes old (a
    # wrong /proc field gives the machine's uptime or a negative age clamped to 0).
    code = (
        "import time; time.sleep(0.6); from disvae.utils import process_age; print(process_age())"
    )
    t0 = time.monotonic()
    age = float(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert 0.6 <= age <= time.monotonic() - t0 + 0.5


def test_the_first_step_reports_how_soon_it_came(tiny_data, tmp_path, caplog, monkeypatch):
    import disvae.training.loop as loop

    monkeypatch.setattr(loop, "process_age", lambda: 3.31)
    with caplog.at_level(logging.INFO, logger="disvae.training.loop"):
        train(_cfg("betaH", "steps=3"), tmp_path / "r", data=tiny_data, progress=False)
    lines = [r.getMessage() for r in caplog.records if "first step" in r.getMessage()]
    assert lines == ["first step done 3.3 s after the process started"]  # once, not per step


_FAULTS = """
import resource, sys, torch
from disvae.utils import tune_allocator
print(int(tune_allocator()))
def touch():
    x = torch.ones(16 << 20)  # 64 MB: above glibc's largest mmap threshold (32 MB)
    del x
for _ in range(10):  # the heap settles after a few (aligned requests do not fit the last hole)
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_big_buffers_instead_of_faulting_them_in_again():
    def faults(tuning: str) -> tuple[int, int]:
        env = dict(os.environ, DISVAE_MALLOC_TUNING=tuning)
        out = subprocess.check_output([sys.executable, "-c", _FAULTS], env=env, text=True)
        applied, n = map(int, out.split())
        return applied, n

    applied, tuned = faults("1")
    if not applied:
        pytest.skip("not glibc")
    untouched, plain = faults("0")
    if untouched == 0 and plain == 0:
        pytest.skip("this kernel reports no minor page faults (a sandbox such as gVisor)")
    # 5 x 64 MB = 81,920 pages of 4 KB: glibc maps each buffer anew and faults every page in;
    # tuned, the heap keeps the pages and the same buffer comes back already resident.
    assert untouched == 0 and plain > 60_000
    assert tuned < 2_000
