"""The whole training step as one CUDA graph (``train.cuda_graph``): the step over fixed device
buffers must be the eager step exactly (checked on the CPU, where it runs uncaptured), and the
recording's bookkeeping (warm-up, capture, replay, re-recording after a restore, the clear stop
with `GraphRecordingError` when a capture fails) is checked with a stand-in for the CUDA graph
API. On a GPU the last tests record real graphs."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import warnings

import pytest
import torch

from disvae import config as C
from disvae import runs
from disvae.cli import main
from disvae.losses.schedules import capacity, linear, warmup
from disvae.training import accel, distributed, graph, train
from disvae.training.adam import LR_TENSOR, FusedAdam
from disvae.training.loop import Trainer

FAST = ["dataset=dsprites_tiny", "batch_size=16", "log_every=5", "lr=1e-3", "snapshot_every=0"]
CUDA = torch.cuda.is_available()


def _cfg(loss: str, *extra: str) -> C.RunConfig:
    """A tiny run on the CPU (also on a GPU machine: these tests compare bit for bit), unless
    ``extra`` names the device."""
    device = [] if any(e.startswith("device=") for e in extra) else ['device="cpu"']
    return C.resolve(C.apply_overrides(C.RunConfig(), [f"loss={loss}", *FAST, *device, *extra]))


def _trainer(cfg, data, tmp_path) -> Trainer:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "train.cuda_graph: no CUDA graphs", RuntimeWarning)
        return Trainer(cfg, tmp_path, data)


def _steps(t: Trainer, n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(n):
        terms = t.train_step()
        t.step += 1
        out.append({k: v.clone() for k, v in terms.items()})  # a replay overwrites them
    return out


def _log(run) -> list[dict]:
    return [json.loads(x) for x in (run / runs.TRAIN_LOG).read_text().splitlines()]


# ---------------------------------------------------------------------- the pieces


def test_schedules_of_a_device_step_equal_those_of_an_int_step():
    for step in (0, 1, 3, 7, 10, 25):
        t = torch.tensor(float(step))
        # capacity: 0.5 + (25 - 0.5) * min(step / 7, 1); warm-up: min(step / 4, 1)
        assert float(capacity(t, 0.5, 25.0, 7)) == pytest.approx(capacity(step, 0.5, 25.0, 7))
        assert float(capacity(t, 0.5, 25.0, 7)) == pytest.approx(0.5 + 24.5 * min(step / 7, 1))
        assert float(warmup(t, 4)) == pytest.approx(min(step / 4, 1.0))
        assert isinstance(warmup(t, 4), torch.Tensor)
    assert warmup(torch.tensor(3.0), 0) == 1.0  # no warm-up: the constant, as for an int
    assert float(linear(2.0, 4.0, torch.tensor(-3.0), 5)) == 2.0  # held before step 0
    # From a float64 step (the recorded step's buffer): exactly the float value, rounded once to
    # float32 as a loss uses it, at every step (float32 arithmetic differs at about 1 in 4).
    for step in range(0, 3000, 7):
        t = torch.tensor(float(step), dtype=torch.float64)
        c = capacity(t, 0.5, 25.0, 100_000)
        assert c.dtype == torch.float32
        assert torch.equal(c, torch.tensor(capacity(step, 0.5, 25.0, 100_000)).float())
        assert torch.equal(warmup(t, 777), torch.tensor(warmup(step, 777)).float())


def test_fused_adam_reads_a_device_learning_rate_exactly():
    torch.manual_seed(0)
    params = [torch.randn(50, requires_grad=True) for _ in range(2)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    a, b = FusedAdam(params, lr=3e-3), FusedAdam(twins, lr=3e-3)
    b.param_groups[0][LR_TENSOR] = torch.tensor(0.0, dtype=torch.float64)
    for i in range(4):
        grads = [torch.randn(50) for _ in params]
        for p, q, g in zip(params, twins, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        lr = 3e-3 * 0.5**i  # a schedule: the tensor must follow it, the float lr is ignored
        a.param_groups[0]["lr"] = lr
        b.param_groups[0][LR_TENSOR].fill_(lr)
        a.step()
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twins, strict=True))
    assert LR_TENSOR not in b.state_dict()["param_groups"][0]  # never saved
    b.param_groups[0][LR_TENSOR] = torch.tensor([1e-3], dtype=torch.float64)
    with pytest.raises(ValueError, match="must be a 0-d tensor"):
        b.step()


def test_deferred_guard_counts_in_place():
    guard = accel.DeferredGuard(torch.device("cpu"))
    tensors = [guard.n_bad, guard.streak, guard.worst]
    ptrs = [t.data_ptr() for t in tensors]
    terms = {"loss": torch.tensor(1.0), "kl": torch.tensor(2.0)}
    pattern = [True, False, False, True, False, False, False, True]  # ok flags of 8 steps
    for ok in pattern:
        value = 1.0 if ok else float("nan")
        flag = guard.finite({**terms, "kl": torch.tensor(value)}, torch.tensor(1.0))
        guard.end_step(flag)
    # 5 bad steps, the longest run 3, none running at the end
    assert guard.flush() == (5, 3, 0, "kl")
    guard.end_step(torch.tensor(False))
    guard.end_step(torch.tensor(False))
    assert guard.flush() == (2, 2, 2, "gradient")  # bad steps whose terms were not checked
    # A recorded step keeps writing to the tensors it was recorded with.
    assert [t.data_ptr() for t in (guard.n_bad, guard.streak, guard.worst)] == ptrs


def test_bad_combinations_are_refused(tiny_data, tmp_path):
    with pytest.raises(C.UserError, match="needs the sync-free non-finite check"):
        _cfg("betaH", "cuda_graph=true", "nan_check=step")
    with pytest.raises(C.UserError, match="compile_mode 'reduce-overhead'"):
        _cfg("betaH", "cuda_graph=true", "compile=true", 'compile_mode="reduce-overhead"')
    _cfg("betaH", "cuda_graph=true", "compile=true", 'compile_mode="max-autotune-no-cudagraphs"')
    with pytest.raises(C.UserError, match="drop --cuda-graph under torchrun"):
        Trainer(_cfg("betaH", "cuda_graph=true"), tmp_path, tiny_data, distributed.Dist(0, 2))
    # On the CPU it says it records nothing, and turns the sync-free check on.
    with pytest.warns(RuntimeWarning, match="no CUDA graphs on cpu"):
        t = Trainer(_cfg("betaH", "cuda_graph=true"), tmp_path, tiny_data)
    assert t.accel.deferred_nan_check and t.graph is not None and not t.graph.enabled


@pytest.mark.parametrize(
    "extra, device, distributed, on",
    [([], "cuda", False, True),  # the default on a GPU
     ([], "cuda:1", False, True),
     ([], "cpu", False, False),  # nothing to record
     ([], "mps", False, False),
     ([], "cuda", True, False),  # torchrun: the all-reduce is one process's part of the step
     (["deterministic=true"], "cuda", False, False),  # replays draw other noise: no exact resume
     (["nan_check=step"], "cuda", False, False),  # a host read in the step
     (["compile=true", 'compile_mode="reduce-overhead"'], "cuda", False, False),  # its own graphs
     (["compile=true", 'compile_mode="max-autotune"'], "cuda", False, False),
     (["compile=true", 'compile_mode="max-autotune-no-cudagraphs"'], "cuda", False, True),
     (["compile=true"], "cuda", False, True),
     (["cuda_graph=false"], "cuda", False, False),  # what the user says stands
     (["cuda_graph=true"], "cpu", False, True),  # (runs uncaptured there, with a warning)
     (["cuda_graph=true", "deterministic=true"], "cuda", False, True)],
)  # fmt: skip
def test_auto_records_the_step_on_one_cuda_process_unless_a_setting_rules_it_out(
    extra, device, distributed, on
):
    cfg = _cfg("betaH", *extra)
    assert cfg.train.cuda_graph is (None if not any("cuda_graph" in e for e in extra) else on)
    assert accel.auto_cuda_graph(cfg.train, torch.device(device), distributed) is on


def test_auto_leaves_the_step_eager_on_rocm_unless_asked(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)  # an AMD GPU's build
    cuda = torch.device("cuda")  # (ROCm's device type too)
    assert not accel.auto_cuda_graph(_cfg("betaH").train, cuda)
    assert accel.auto_cuda_graph(_cfg("betaH", "cuda_graph=true").train, cuda)


def test_auto_on_the_cpu_is_the_eager_step_without_a_warning(tiny_data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "no CUDA graphs on cpu" is for an explicit request
        t = Trainer(_cfg("betaH"), tmp_path, tiny_data)
    assert t.graph is None and not t.accel.cuda_graph and not t.accel.deferred_nan_check


# ---------------------------------------------------------------------- the step itself


@pytest.mark.parametrize(
    "loss, extra",
    [("vae", ["reg_anneal=5"]), ("betaH", []), ("betaB", ["c_steps=13", "c_init=0.1", "c_fin=7.7"]),
     ("factor", []), ("btcvae", ["sampling=mss"])],
)  # fmt: skip
def test_the_step_over_fixed_buffers_is_the_eager_step(tiny_data, tmp_path, loss, extra):
    # A learning-rate schedule, clipping, annealed loss weights: what the buffers must carry.
    common = ["lr_warmup=3", "lr_schedule=cosine", "grad_clip=50", "steps=100", *extra]
    # (each trainer seeds the global generator when made: made and run one after the other)
    eager = _trainer(_cfg(loss, "nan_check=deferred", *common), tiny_data, tmp_path / "a")
    a = _steps(eager, 8)
    fixed = _trainer(_cfg(loss, "cuda_graph=true", *common), tiny_data, tmp_path / "b")
    b = _steps(fixed, 8)
    for x, y in zip(a, b, strict=True):  # bit for bit
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(y[k], x[k]), (k, x[k], y[k])
    for p, q in zip(eager.model.parameters(), fixed.model.parameters(), strict=True):
        assert torch.equal(q, p)
    if loss == "betaB":  # the capacity followed the step: 0.1 + 7.6 s / 13 (float32 arithmetic
        # would miss the float value's rounding at steps 1, 2, 5 and 7)
        assert [float(t["capacity"]) for t in b] == pytest.approx(
            [0.1 + 7.6 * s / 13 for s in range(8)], rel=1e-6
        )


def test_a_run_with_a_recorded_step_equals_the_eager_run_and_resumes(tiny_data, tmp_path):
    common = ["steps=24", "checkpoint_every=8", "lr_schedule=step", "lr_decay_every=0.05"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "train.cuda_graph: no CUDA graphs", RuntimeWarning)
        eager = train(_cfg("betaB", "nan_check=deferred", *common), tmp_path / "e",
                      data=tiny_data, progress=False)  # fmt: skip
        part = train(_cfg("betaB", "cuda_graph=true", *common[1:], "steps=20"), tmp_path / "g",
                     data=tiny_data, progress=False)  # fmt: skip
        cfg = C.apply_overrides(runs.read_config(part), ["steps=24"])
        train(cfg, part, data=tiny_data, resume=True, progress=False)
    strip = lambda log: [{k: v for k, v in r.items() if k != "img_per_s"} for r in log]  # noqa: E731
    assert strip(_log(part)) == strip(_log(eager))
    assert (part / runs.MODEL).read_bytes() == (eager / runs.MODEL).read_bytes()
    record = json.loads((part / runs.CONFIG).read_text())
    assert record["train"]["cuda_graph"] is True  # asked for; nothing recorded on the CPU
    assert record["speed"]["cuda_graph"] is False


def _poison_weights_at(monkeypatch, step: int):
    """From ``step`` on a weight is NaN, in place (a recorded step reads the same memory): every
    step is skipped until the rollback restores the checkpoint's weights."""
    real = Trainer.train_step
    seen = {"done": False}

    def train_step(self):
        if self.step == step and not seen["done"]:
            seen["done"] = True
            with torch.no_grad():
                self.model.decoder[0].weight[0, 0] = float("nan")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_a_rollback_records_the_step_again(tiny_data, tmp_path, monkeypatch, caplog):
    resets = []
    real_reset = graph.StepGraph.reset
    monkeypatch.setattr(graph.StepGraph, "reset", lambda g: resets.append(1) or real_reset(g))
    _poison_weights_at(monkeypatch, 6)
    cfg = _cfg("betaH", "cuda_graph=true", "steps=20", "checkpoint_every=5", "nan_patience=3")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "train.cuda_graph: no CUDA graphs", RuntimeWarning)
        run = train(cfg, tmp_path / "r", data=tiny_data, progress=False)
    log = _log(run)
    assert log[-1]["step"] == 20 and all(math.isfinite(r["loss"]) for r in log)
    assert "rolled back to step 5" in caplog.text
    assert len(resets) == 2  # made, then dropped by the rollback's restore
    model, _ = runs.load_run(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_flag_reaches_the_run(tmp_path, capsys):
    out = tmp_path / "r"
    common = ["train", "--dataset", "dsprites_tiny", "--steps", "3", "--device", "cpu",
              "--no-progress", "-q"]  # fmt: skip
    assert main([*common, "--cuda-graph", "--out", str(out)]) == 0
    record = json.loads((out / runs.CONFIG).read_text())
    assert record["train"]["cuda_graph"] is True and record["speed"]["cuda_graph"] is False
    assert "no CUDA graphs on cpu" in capsys.readouterr().err
    bad = main([*common, "--cuda-graph", "--set", 'nan_check="step"', "--out", str(tmp_path / "b")])
    assert bad == 2 and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------- recording, with a stand-in


class _FakeCuda:
    """Just enough of torch.cuda's graph API to follow `StepGraph`: a capture runs the body's
    Python (as a real one does, recording its kernels), a replay counts."""

    def __init__(self, fail_capture: bool = False):
        self.fail_capture, self.replays, self.captures, self.side = fail_capture, 0, 0, 0
        self.capturing = False
        self.capture_streams = []  # the stream each capture recorded on
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1

        class Stream:
            def __init__(self, device=None):
                fake.side += 1

            def wait_stream(self, other):
                pass

        @contextlib.contextmanager
        def capture(g, pool=None, stream=None, capture_error_mode="global"):
            # As CUDA does: ending a capture that an op broke fails too, with a vaguer error.
            fake.captures += 1
            fake.capture_streams.append(stream)
            fake.capturing = True
            try:
                yield
            except Exception as e:  # (``from`` keeps ``__context__``, which PyTorch's chain sets)
                raise RuntimeError("operation failed due to a previous error during capture") from e
            finally:
                fake.capturing = False
            if fake.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")

        self.api = {
            "CUDAGraph": Graph, "Stream": Stream, "graph": capture,
            "stream": lambda s: contextlib.nullcontext(), "current_stream": lambda d=None: Stream(),
            "device": lambda d: contextlib.nullcontext(), "set_stream": lambda s: None,
            "is_current_stream_capturing": lambda: fake.capturing,
        }  # fmt: skip


def _fake_graph(monkeypatch, fail: bool = False):
    fake = _FakeCuda(fail)
    for name, value in fake.api.items():
        monkeypatch.setattr(torch.cuda, name, value)
    calls = []

    def body():
        calls.append(1)
        return {"loss": torch.tensor(float(len(calls)))}

    return fake, graph.StepGraph(body, torch.device("cuda")), calls


def test_warm_up_then_one_recording_then_replays(monkeypatch):
    fake, g, calls = _fake_graph(monkeypatch)
    outs = [g() for _ in range(7)]
    # 3 eager warm-up steps, the recording (its Python runs once), then replays only
    assert len(calls) == 4 and fake.captures == 1 and fake.replays == 4 and g.captured
    assert all(o is outs[3] for o in outs[3:])  # the graph's own output tensors
    g.reset()  # a restore
    [g() for _ in range(5)]
    assert len(calls) == 8 and fake.captures == 2 and fake.replays == 6 and g.captures == 2


def test_a_failed_recording_stops_with_a_clear_error(monkeypatch):
    fake, g, calls = _fake_graph(monkeypatch, fail=True)
    [g() for _ in range(3)]
    with pytest.raises(graph.GraphRecordingError, match="not permitted when stream is capturing"):
        g()
    assert fake.captures == 1 and fake.replays == 0 and not g.captured
    assert gc.isenabled()  # switched off for the capture only


def test_recording_runs_without_the_garbage_collector_on_the_warm_up_stream(monkeypatch):
    """A collection inside a capture could free an earlier graph or CUDA tensors (not allowed
    while recording), and a new stream per recording would leave cuBLAS a workspace each: the
    collector is off while the body records, and every recording uses the warm-up stream."""
    fake = _FakeCuda()
    for name, value in fake.api.items():
        monkeypatch.setattr(torch.cuda, name, value)
    seen = []  # (capturing, gc on) at each call of the body

    def body():
        seen.append((fake.capturing, gc.isenabled()))
        return {"loss": torch.tensor(0.0)}

    g = graph.StepGraph(body, torch.device("cuda"))
    assert gc.isenabled()
    [g() for _ in range(5)]
    g.reset()
    [g() for _ in range(5)]
    assert seen == [(False, True)] * 3 + [(True, False)] + [(False, True)] * 3 + [(True, False)]
    assert gc.isenabled()
    assert len(fake.capture_streams) == 2 and fake.capture_streams[0] is g._side
    assert fake.capture_streams[1] is g._side


def test_a_recording_error_names_the_operation_not_the_capture(monkeypatch):
    """An op that cannot be recorded raises inside the capture, and ending the capture then
    fails with a vaguer error: the message names the op's own."""
    fake, g, calls = _fake_graph(monkeypatch)

    def body():
        calls.append(1)
        if len(calls) == 4:  # the recording
            raise RuntimeError("CUDA error: operation not permitted (a host sync)\nmore lines")
        return {"loss": torch.tensor(1.0)}

    g.body = body
    [g() for _ in range(3)]
    with pytest.raises(graph.GraphRecordingError) as caught:
        g()
    message = str(caught.value)
    assert "operation not permitted (a host sync)" in message and "previous error" not in message
    assert "more lines" not in message and "--no-cuda-graph" in message


def _record_on_the_cpu(monkeypatch, fail_capture: bool) -> _FakeCuda:
    """The real step, on the CPU, recorded through the stand-in API."""
    fake = _FakeCuda(fail_capture)
    for name, value in fake.api.items():
        monkeypatch.setattr(torch.cuda, name, value)
    made = graph.StepGraph.__init__

    def as_if_on_cuda(self, body, device):
        made(self, body, device)
        self.enabled = True

    monkeypatch.setattr(graph.StepGraph, "__init__", as_if_on_cuda)
    return fake


def test_a_run_whose_recording_fails_stops_and_resumes_without_it(tmp_path, capsys, monkeypatch):
    """A failing capture: one line, exit 2, the checkpoint kept; the run then resumes without
    the graph to its end."""
    fake = _record_on_the_cpu(monkeypatch, fail_capture=True)
    run = tmp_path / "r"
    common = ["--dataset", "dsprites_tiny", "--device", "cpu", "--no-progress", "-q"]
    assert main(["train", *common, "--steps", "8", "--cuda-graph", "--out", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("disvae: error: recording the training step as a CUDA graph")
    assert "--resume RUN --no-cuda-graph" in err[-1] and fake.captures == 1
    assert main(["train", "--resume", str(run), "--no-cuda-graph", "-q"]) == 0
    log = _log(run)
    assert log[-1]["step"] == 8 and all(math.isfinite(r["loss"]) for r in log)
    assert json.loads((run / runs.CONFIG).read_text())["train"]["cuda_graph"] is False


def test_a_compiled_forward_failing_in_the_recording_is_not_retried_eagerly(
    tmp_path, capsys, monkeypatch
):
    """Out of a recording, a compiled forward's error falls back to eager; inside one, the
    capture is broken, so the run stops with the recording's error and config.json still says
    how it trained (compiled)."""
    fake = _record_on_the_cpu(monkeypatch, fail_capture=False)
    calls = []

    def compiled(module, **kwargs):
        def call(x, eps=None):
            calls.append(fake.capturing)
            if fake.capturing:
                raise RuntimeError("an op that cannot be captured")
            return module(x, eps)

        return call

    monkeypatch.setattr(torch, "compile", compiled)
    run = tmp_path / "r"
    args = ["--dataset", "dsprites_tiny", "--device", "cpu", "--no-progress", "-q", "--steps", "8"]
    assert main(["train", *args, "--compile", "--cuda-graph", "--out", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "an op that cannot be captured" in err[-1] and "--no-cuda-graph" in err[-1]
    assert calls == [False, False, False, True]  # 3 warm-up steps, then the recording only
    speed = json.loads((run / runs.CONFIG).read_text())["speed"]
    assert speed["compile"] is True and "compile_error" not in speed


# ---------------------------------------------------------------------- on a GPU


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("loss", ["betaB", "factor", "btcvae"])
def test_cuda_the_recorded_step_trains_as_the_eager_one(tiny_data, tmp_path, loss):
    # a cosine schedule: the learning rate changes at every replayed step
    common = ['device="cuda"', 'amp="none"', "lr_warmup=3", "lr_schedule=cosine", "steps=20"]
    common += ["c_steps=7"] if loss == "betaB" else []
    a = _steps(Trainer(_cfg(loss, "cuda_graph=false", *common), tmp_path / "a", tiny_data), 12)
    fixed = Trainer(_cfg(loss, "cuda_graph=true", *common), tmp_path / "b", tiny_data)
    b = _steps(fixed, 12)
    assert fixed.graph.captured and fixed.graph.captures == 1
    # Same batches and schedules; the noise comes from the same generator, but a replay may
    # draw other numbers than eager calls, and the kernels may differ: equal up to that, which
    # a stale learning rate or step (β-VAE_B's capacity, γ = 1000) would far exceed.
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "recon"):
            assert math.isclose(float(y[k]), float(x[k]), rel_tol=5e-2), (k, x[k], y[k])
    assert float(b[-1]["recon"]) < float(b[0]["recon"])  # it trains


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_a_rollback_of_a_recorded_run_records_it_again(
    tiny_data, tmp_path, monkeypatch, caplog
):
    _poison_weights_at(monkeypatch, 6)  # replayed steps, not warm-up ones, meet the NaN
    made = []
    real_record = graph.StepGraph._record
    monkeypatch.setattr(graph.StepGraph, "_record", lambda g: made.append(1) or real_record(g))
    cfg = _cfg("betaH", "cuda_graph=true", 'device="cuda"', 'amp="none"', "steps=20",
               "checkpoint_every=5", "nan_patience=3")  # fmt: skip
    run = train(cfg, tmp_path / "r", data=tiny_data, progress=False)
    log = _log(run)
    assert log[-1]["step"] == 20 and all(math.isfinite(r["loss"]) for r in log)
    assert "rolled back to step 5" in caplog.text
    assert len(made) == 2  # recorded, rolled back, recorded again
