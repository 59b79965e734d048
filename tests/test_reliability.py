"""Faults: NaN batches and gradients, full disks, a second trainer, torn files, random input."""

from __future__ import annotations

import errno
import io
import json
import os
import string
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disvae import config as C
from disvae import runs
from disvae.errors import DataError, UserError
from disvae.training import checkpoint as ckpt
from disvae.training import train
from disvae.training.loop import NonFiniteError, Trainer

# (no training frames: snapshot_every defaults to steps // 50, a frame every step here)
FAST = ["dataset=dsprites_tiny", "batch_size=16", "log_every=5", "lr=1e-3", "snapshot_every=0"]


def _cfg(*extra: str) -> C.RunConfig:
    return C.apply_overrides(C.RunConfig(), ["loss=betaH", *FAST, *extra])


class _PoisonedBatches:
    """Wrap a dataset so that the batches of chosen calls come out as NaN."""

    def __init__(self, data, bad_calls):
        self.data, self.bad_calls, self.calls = data, bad_calls, 0
        self._batch = data.batch
        data.batch = self.batch

    def batch(self, index):
        x = self._batch(index)
        self.calls += 1
        return torch.full_like(x, float("nan")) if self.bad_calls(self.calls) else x


def _all_checkpoints_finite(run):
    found = ckpt.list_checkpoints(run / runs.CHECKPOINTS)
    assert found
    for _, path in found:
        tensors, _ = ckpt.load_state(path)
        for name, t in tensors.items():
            if name.startswith("model.") and t.is_floating_point():
                assert torch.isfinite(t).all(), (path, name)


def test_a_nan_batch_is_skipped_and_never_saved(tiny_data, tmp_path):
    _PoisonedBatches(tiny_data, lambda call: call in (3, 11))
    run = train(_cfg("steps=20", "checkpoint_every=4"), tmp_path / "r", data=tiny_data,
                progress=False)  # fmt: skip
    log = [json.loads(x) for x in (run / runs.TRAIN_LOG).read_text().splitlines()]
    assert sum(r["skipped"] for r in log) == 2
    assert all(np.isfinite(r["loss"]) for r in log)
    _all_checkpoints_finite(run)
    model, _ = runs.load_run(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nan_gradient_is_skipped(tiny_data, tmp_path):
    cfg = C.resolve(_cfg("steps=12", "checkpoint_every=3"))
    out = runs.prepare_out_dir(tmp_path / "g", overwrite=False)
    trainer = Trainer(cfg, out, tiny_data)
    weight = trainer.model.decoder[0].weight
    weight.register_hook(lambda g: torch.full_like(g, float("nan")) if trainer.step == 5 else g)
    before = {}

    def record(module, args):
        if trainer.step == 5:
            before["w"] = weight.detach().clone()

    trainer.model.register_forward_pre_hook(record)
    trainer.run(progress=False)
    assert trainer.bad_term == "gradient"
    _all_checkpoints_finite(out)


def test_persistent_nans_roll_back_then_stop_naming_step_and_term(tiny_data, tmp_path):
    poison = _PoisonedBatches(tiny_data, lambda call: call >= 12)
    cfg = _cfg("steps=60", "checkpoint_every=5", "nan_patience=3", "nan_rollbacks=2")
    message = r"'recon' was not finite .* at step \d+, after 2 "
    with pytest.raises(NonFiniteError, match=message) as e:
        train(cfg, tmp_path / "p", data=tiny_data, progress=False)
    stopped = runs.read_stopped(tmp_path / "p")  # the reason stays in the run
    assert stopped["error"] == str(e.value) and f"at step {stopped['step']}," in stopped["error"]
    _all_checkpoints_finite(tmp_path / "p")
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "p" / runs.TRAIN_LOG).read_text().split("\n")
        if x
    ]  # noqa: E501
    assert steps == sorted(set(steps))  # rollbacks left no duplicated log steps
    # Resumed with healthy data, the run finishes and the old reason is gone.
    poison.bad_calls = lambda call: False
    run = train(cfg, tmp_path / "p", data=tiny_data, resume=True, progress=False)
    assert (run / runs.MODEL).is_file() and not (run / runs.STOPPED).exists()


def test_rollback_lowers_the_learning_rate_and_recovers(tiny_data, tmp_path):
    # NaN for a burst of calls only: the rollback replays the same batches, which are fine now.
    poison = _PoisonedBatches(tiny_data, lambda call: 12 <= call < 15)
    cfg = _cfg("steps=30", "checkpoint_every=5", "nan_patience=3", "nan_lr_factor=0.5")
    run = train(cfg, tmp_path / "q", data=tiny_data, progress=False)
    assert poison.calls > 30  # batches were drawn again after the rollback
    last = json.loads((run / runs.TRAIN_LOG).read_text().splitlines()[-1])
    assert last["lr"] == pytest.approx(1e-3 * 0.5) and last["step"] == 30
    _all_checkpoints_finite(run)


def test_disk_full_while_checkpointing_keeps_the_previous_one(tiny_data, tmp_path, monkeypatch):
    real = ckpt.save_state
    calls = {"n": 0}

    def full_disk(path, tensors, meta):
        calls["n"] += 1
        if calls["n"] == 3:  # step-0, step-5, then the disk is full
            path.with_suffix(".partial").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, tensors, meta)

    monkeypatch.setattr(ckpt, "save_state", full_disk)
    with pytest.raises(UserError, match="No space left on device; the previous checkpoint is"):
        train(_cfg("steps=20", "checkpoint_every=5"), tmp_path / "d", data=tiny_data,
              progress=False)  # fmt: skip
    tensors, meta, path = ckpt.load_latest(tmp_path / "d" / runs.CHECKPOINTS)
    assert meta["step"] == 5 and not (tmp_path / "d" / runs.MODEL).exists()


def test_a_second_trainer_is_refused(tiny_data, tmp_path):
    run = tmp_path / "locked"
    with runs.RunLock(run, create=True):
        with pytest.raises(UserError, match="in use by another disvae process"):
            train(_cfg("steps=2"), run, data=tiny_data, progress=False)
    train(_cfg("steps=2"), run, data=tiny_data, progress=False)  # free again
    assert (run / runs.MODEL).is_file()


def test_a_failed_start_leaves_no_directory(tiny_data, tmp_path):
    with pytest.raises(UserError):
        train(_cfg("steps=2", "batch_size=100000"), tmp_path / "new", data=tiny_data)
    assert not (tmp_path / "new").exists()


def test_a_torn_last_log_line_is_dropped_on_resume(tiny_data, tmp_path):
    run = train(_cfg("steps=10", "checkpoint_every=5"), tmp_path / "t", data=tiny_data,
                progress=False)  # fmt: skip
    with open(run / runs.TRAIN_LOG, "a") as f:
        f.write('{"step": 15, "loss": 3')  # killed mid-write
    cfg = C.apply_overrides(runs.read_config(run), ["steps=15"])
    train(cfg, run, data=tiny_data, resume=True, progress=False)
    steps = [json.loads(x)["step"] for x in (run / runs.TRAIN_LOG).read_text().splitlines()]
    assert steps == [5, 10, 15]


# ---------------------------------------------------------------------- property-based

_FAST = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=8))  # fmt: skip
_keys = st.sampled_from(
    ["name", "path", "lr", "steps", "beta", "latent_dim", "batch_size", "sampling", "rec_dist",
     "val_fraction", "epochs", "c_steps", "bogus", "reg_anneal", "nan_lr_factor"]
)  # fmt: skip
_sections = st.dictionaries(
    st.sampled_from(["data", "model", "loss", "train", "other"]),
    st.one_of(st.dictionaries(_keys, _scalars, max_size=4), _scalars),
    max_size=4,
)


@_FAST
@given(_sections)
def test_random_config_tables_give_user_errors_only(d):
    try:
        C.resolve(C.from_dict(d))
    except UserError:
        pass


@_FAST
@given(st.lists(st.text(alphabet=string.printable, max_size=20), max_size=4))
def test_random_set_overrides_give_user_errors_only(items):
    try:
        C.resolve(C.apply_overrides(C.RunConfig(), items))
    except UserError:
        pass


@_FAST
@given(st.binary(max_size=400))
def test_random_toml_files_give_user_errors_only(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    try:
        C.load_file(path)
    except UserError:
        pass


@_FAST
@given(st.binary(max_size=300), st.integers(0, 4000))
def test_random_or_truncated_checkpoints_give_checkpoint_errors_only(tmp_path, junk, cut):
    good = tmp_path / "good.safetensors"
    if not good.exists():
        ckpt.save_state(good, {"model.w": torch.arange(300.0)}, {"step": 1})
    whole = good.read_bytes()
    cut %= len(whole)  # strictly shorter than the good file
    for blob in (junk, whole[:cut], whole[:cut] + junk):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load_state(bad)


@_FAST
@given(st.binary(max_size=300))
def test_random_config_json_gives_user_errors_only(tmp_path, data):
    (tmp_path / runs.CONFIG).write_bytes(data)
    try:
        runs.read_config(tmp_path)
    except UserError:
        pass


@_FAST
@given(st.binary(max_size=400), st.integers(0, 2000))
def test_random_or_truncated_npz_give_data_errors_only(tmp_path, junk, cut):
    from disvae.data.dsprites import load_dsprites

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        arr = io.BytesIO()
        np.save(arr, np.zeros((4, 64, 64), np.uint8))
        zf.writestr("imgs.npy", arr.getvalue())
        zf.writestr("latents_classes.npy", junk)
        zf.writestr("latents_values.npy", junk)
    for blob in (junk, buf.getvalue()[:cut], buf.getvalue()):
        path = tmp_path / "d.npz"
        path.write_bytes(blob)
        with pytest.raises(DataError):
            load_dsprites(str(path))


@pytest.mark.parametrize("rank", [0, 1])
def test_non_finite_weights_stop_every_rank_before_the_checkpoint_barrier(
    tiny_data, tmp_path, rank
):
    """Every rank checks its weights itself: a rank other than 0 raises too, instead of waiting
    at the barrier for a rank 0 that stopped (no process group exists here, so reaching the
    barrier would be a different error)."""
    from disvae.training.distributed import Dist

    cfg = C.resolve(_cfg("steps=5"), "bernoulli")
    out = tmp_path / "w"
    out.mkdir()
    t = Trainer(cfg, out, tiny_data, Dist(rank=rank, world=2))
    with torch.no_grad():
        next(t.model.parameters())[0].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="weights became non-finite by step 0"):
        t.save_checkpoint()
    assert not (out / runs.CHECKPOINTS).exists()


@pytest.mark.skipif(not hasattr(os, "umask") or os.name != "posix", reason="POSIX modes")
def test_a_runs_files_get_the_mode_a_plain_write_gives_not_a_private_one(tmp_path):
    """The atomic writes go through a private temporary file (0600); what they leave must be
    readable as any file the user writes there (config.json, weights, checkpoints, metrics)."""
    from disvae.utils import atomic_write_bytes

    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    want = plain.stat().st_mode & 0o777
    if want == 0o600:
        pytest.skip("umask 077: a private file is what a plain write gives")
    run = train(_cfg("steps=3", "checkpoint_every=2"), tmp_path / "r", progress=False)
    written = [run / runs.CONFIG, run / runs.MODEL, *(run / runs.CHECKPOINTS).iterdir()]
    assert len(written) >= 3
    for path in written:
        assert path.stat().st_mode & 0o777 == want, path
    atomic_write_bytes(plain, b"again")  # over an existing file, too
    assert plain.stat().st_mode & 0o777 == want and plain.read_bytes() == b"again"


def test_weights_and_checkpoints_of_another_run_are_refused(tiny_data, tmp_path, capsys):
    """Runs A (β=4) and B (β=8) share an architecture, so B's weights load into A's model: they
    used to be encoded as A's codes, and B's checkpoint in A's directory resumed A with them."""
    from disvae.cli import main

    a = train(_cfg("steps=10", "checkpoint_every=5", "beta=4"), tmp_path / "a", data=tiny_data,
              progress=False)  # fmt: skip
    b = train(_cfg("steps=10", "checkpoint_every=5", "beta=8"), tmp_path / "b", data=tiny_data,
              progress=False)  # fmt: skip
    same = train(_cfg("steps=5", "beta=4"), tmp_path / "same", data=tiny_data, progress=False)
    fa, fb = runs.run_fingerprint(a), runs.run_fingerprint(b)
    assert fa and fb and fa != fb and runs.run_fingerprint(same) == fa  # steps may differ
    for path in (a / runs.MODEL, ckpt.checkpoint_path(a / runs.CHECKPOINTS, 5)):
        assert ckpt.load_state(path)[1]["fingerprint"] == fa
    with pytest.raises(UserError, match=r"holds the weights of another run .* other settings"):
        runs.load_run(a, weights=str(b / runs.MODEL))
    # weights of a run with the same settings are the same model's: accepted
    assert runs.load_run(a, weights=str(same / runs.MODEL)).model is not None
    capsys.readouterr()  # (what the trainings above logged)
    assert main(["encode", str(a), "--weights", str(b / runs.MODEL), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the weights of another run" in err
    assert not (a / "codes.npz").exists()
    # B's newest checkpoint copied into A, as A's newest: the resume is refused, A untouched
    foreign = ckpt.checkpoint_path(a / runs.CHECKPOINTS, 15)
    foreign.write_bytes(ckpt.checkpoint_path(b / runs.CHECKPOINTS, 10).read_bytes())
    before = (a / runs.CONFIG).read_bytes()
    resumed = C.apply_overrides(runs.read_config(a), ["steps=20"])
    with pytest.raises(UserError, match=f"{foreign.name}' holds the weights of another run"):
        train(resumed, a, data=tiny_data, resume=True, progress=False)
    assert (a / runs.CONFIG).read_bytes() == before


def test_a_run_from_before_fingerprints_resumes_and_keeps_one(tiny_data, tmp_path):
    run = train(_cfg("steps=5"), tmp_path / "r", data=tiny_data, progress=False)
    record = json.loads((run / runs.CONFIG).read_text())
    del record["fingerprint"]  # as written by disvae before fingerprints
    (run / runs.CONFIG).write_text(json.dumps(record))
    assert runs.run_fingerprint(run) is None
    runs.load_run(run)  # its weights pass: nothing to compare with
    train(C.apply_overrides(runs.read_config(run), ["steps=10"]), run, data=tiny_data,
          resume=True, progress=False)  # fmt: skip
    assert runs.run_fingerprint(run) == ckpt.load_state(run / runs.MODEL)[1]["fingerprint"]
