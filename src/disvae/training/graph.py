"""The whole training step in one CUDA graph (``train.cuda_graph``, ``--cuda-graph``).

A step of the Burgess model at batch 64 is a few hundred small kernels and little arithmetic,
so on a GPU the host launching them one by one from Python sets its pace. A CUDA graph records
the kernels of one step once and replays them with a single launch (NVIDIA, CUDA C++
Programming Guide, "CUDA Graphs"; PyTorch's `torch.cuda.graph`, "whole-network capture").
``compile_mode = "reduce-overhead"`` graphs the model's forward and backward only; this graphs
everything from the batch gather to the Adam update, the discriminator's step included.

What a replay needs to be the same step as an eager one:

- inputs in fixed buffers, refilled before each replay (`Trainer._load_graph_inputs`): the
  batch indices, the step number (the objectives' schedules: β-VAE_B's capacity, the
  regulariser's warm-up) and the learning rates (a float lr would be recorded into the Adam
  kernel as a constant; `FusedAdam` reads ``lr_tensor`` from the device instead);
- no host synchronisation inside: the deferred non-finite check (`accel.DeferredGuard`),
  whose counters are updated in place;
- state updated in place: parameters, Adam's moments and step counts, the guard's counters.
  A restore (resume, rollback) replaces the optimizer's state tensors, so the graph is recorded
  again afterwards (`StepGraph.reset`).

The random draws inside (reparameterisation noise, FactorVAE's permutations) come from the
CUDA generator, which PyTorch advances at each replay, so every replay draws fresh numbers.

Order of events: `WARMUP` eager steps on a side stream (cuDNN's autotuning, Adam's lazily made
state, cuBLAS handles, a compiled model's compilation), then the capture of the next step,
which records without running: its replay performs it. Recording and replays run with the
run's GPU as the current device (``--device cuda:1`` too). A capture that fails stops the run
with a `GraphRecordingError` naming the operation's error: a failed capture leaves CUDA's
random generator and the caching allocator in capture mode, so the process cannot safely go on
eagerly; the run resumes from its last checkpoint without ``--cuda-graph``. Off CUDA the step
runs uncaptured every time, with the same buffers (what the CPU tests exercise).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from disvae.errors import UserError

Terms = dict[str, torch.Tensor]


class GraphRecordingError(UserError):
    """The training step could not be recorded as a CUDA graph."""


class StepGraph:
    """Runs ``body`` (one training step over fixed input buffers, returning its terms), recorded
    as a CUDA graph after `WARMUP` eager calls and replayed from then on.

    The terms a replay returns are the graph's own output tensors, overwritten by the next
    replay: read them (the trainer sums them) before the next call.
    """

    WARMUP = 3

    def __init__(self, body: Callable[[], Terms], device: torch.device) -> None:
        self.body, self.device = body, device
        self.enabled = device.type == "cuda"
        self.captures = 0  # graphs recorded so far (more than one after restores)
        self._side: torch.cuda.Stream | None = None
        self.reset()

    def reset(self) -> None:
        """Drop the recorded graph: the next calls warm up and record again (after a restore
        replaced tensors the graph reads or writes)."""
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: Terms | None = None
        self._warm = 0

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self) -> Terms:
        if not self.enabled:
            return self.body()
        with torch.cuda.device(self.device):  # the graph's device, not device 0's
            if self._graph is not None:
                self._graph.replay()
                return self._out  # type: ignore[return-value]
            if self._warm < self.WARMUP:
                self._warm += 1
                return self._on_side_stream()
            return self._record()

    def _on_side_stream(self) -> Terms:
        # PyTorch's recipe: warm up on a side stream, so that what the first calls set up
        # lazily is not made on (or tied to) the stream the capture will use.
        main = torch.cuda.current_stream(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            out = self.body()
        main.wait_stream(self._side)
        return out

    def _record(self) -> Terms:
        graph = torch.cuda.CUDAGraph()
        main = torch.cuda.current_stream(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        # The garbage collector must not run inside the capture: a cycle it frees there may
        # hold an earlier graph (after a restore) or CUDA tensors, whose release is not allowed
        # while recording. PyTorch no longer collects before a capture by default
        # (torch.compiler.config.force_cudagraph_gc): we do.
        gc.collect()
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            # Recorded on the warm-up stream: a new stream per recording would leave cuBLAS a
            # new workspace each time. thread_local: another thread's CUDA call (none is
            # expected) does not break the capture.
            with torch.cuda.graph(graph, stream=self._side, capture_error_mode="thread_local"):
                out = self.body()
        except Exception as e:  # noqa: BLE001 - any failure: a clear stop
            torch.cuda.set_stream(main)  # the capture's context may not have restored it
            cause = e.__context__ or e  # the op's own error, not "failed during capture"
            what = (str(cause).strip().splitlines() or [""])[0][:200]
            raise GraphRecordingError(
                f"recording the training step as a CUDA graph failed ({type(cause).__name__}: "
                f"{what}); the last checkpoint is kept: resume it without the graph, "
                "`disvae train --resume RUN --no-cuda-graph`"
            ) from e
        finally:
            if gc_was_on:
                gc.enable()
        self._graph, self._out = graph, out
        self.captures += 1
        graph.replay()
        return out
