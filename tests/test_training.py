"""End to end: every objective learns, resume is exact, evaluate covers the whole split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from disvae import config as C
from disvae import runs
from disvae.errors import UserError
from disvae.evaluation import evaluate, evaluate_metrics
from disvae.training import checkpoint as ckpt
from disvae.training import train

OBJECTIVES = ["vae", "betaH", "betaB", "factor", "btcvae"]


def _cfg(loss: str, *extra: str) -> C.RunConfig:
    return C.apply_overrides(
        C.RunConfig(),
        [f"loss={loss}", "dataset=dsprites_tiny", "batch_size=32", "log_every=25",
         "checkpoint_every=100", "lr=1e-3", "snapshot_every=0", *extra],
    )  # fmt: skip


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / runs.TRAIN_LOG).read_text().splitlines()]


@pytest.mark.parametrize("loss", OBJECTIVES)
def test_each_objective_lowers_its_loss(loss, tiny_data, tmp_path):
    # (batch 16: recon ratios 0.20-0.33 over seeds 0 and 1 on every objective, 0.18-0.25 at 32)
    extra = ["c_steps=120"] if loss == "betaB" else []
    run = train(_cfg(loss, "steps=150", "batch_size=16", *extra), tmp_path / loss,
                data=tiny_data, progress=False)  # fmt: skip
    log = _log(run)
    assert [r["step"] for r in log] == list(range(25, 151, 25))
    first, last = log[0], log[-1]
    # The first line averages steps 1-25, from untrained Bernoulli logits (~4096*log 2 = 2839
    # nats per image). Drawing the mean image alone gets to ~0.42 of that by step 50 (a plateau
    # every objective sits on until ~step 100); below 0.4 the model draws the shapes themselves.
    assert last["recon"] < 0.4 * first["recon"], (first, last)
    if loss != "betaB":  # betaB's total grows as its capacity target C rises
        assert last["loss"] < 0.6 * first["loss"], (first, last)
    assert len(last["kl_per_dim"]) == 10 and abs(sum(last["kl_per_dim"]) - last["kl"]) < 1e-3
    expected = {"factor": {"tc", "disc_loss", "disc_acc"}, "btcvae": {"mi", "tc", "dw_kl"},
                "betaB": {"capacity"}}.get(loss, set())  # fmt: skip
    assert expected <= set(last)
    assert (run / runs.MODEL).is_file() and (run / runs.CONFIG).is_file()
    assert list(run.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("loss", OBJECTIVES)
def test_resume_equals_an_uninterrupted_run(loss, tiny_data, tmp_path):
    # (training frames, off in these tests for time, on for one: they must not move training)
    snap = [f"snapshot_every={3 if loss == 'vae' else 0}"]
    snap += ["batch_size=16"] if loss == "factor" else []  # (two batches a step)
    whole = train(_cfg(loss, "steps=40", "checkpoint_every=10", "log_every=5", *snap),
                  tmp_path / "whole", data=tiny_data, progress=False)  # fmt: skip
    part = train(_cfg(loss, "steps=20", "checkpoint_every=10", "log_every=5", *snap),
                 tmp_path / "part", data=tiny_data, progress=False)  # fmt: skip
    cfg = C.apply_overrides(runs.read_config(part), ["steps=40"])
    train(cfg, part, data=tiny_data, resume=True, progress=False)
    a = (whole / runs.MODEL).read_bytes()
    b = (part / runs.MODEL).read_bytes()
    assert a == b
    strip = lambda log: [{k: v for k, v in r.items() if k != "img_per_s"} for r in log]  # noqa: E731
    assert strip(_log(whole)) == strip(_log(part))


def test_resume_from_a_mid_interval_checkpoint_drops_later_log_lines(tiny_data, tmp_path):
    run = train(_cfg("betaH", "steps=30", "checkpoint_every=12", "log_every=5"),
                tmp_path / "r", data=tiny_data, progress=False)  # fmt: skip
    # Pretend the process died after step 30's log line but the last checkpoint was step 24.
    (run / runs.MODEL).unlink()
    (run / runs.CHECKPOINTS / "step_000000030.safetensors").unlink()
    cfg = C.apply_overrides(runs.read_config(run), ["steps=30"])
    train(cfg, run, data=tiny_data, resume=True, progress=False)
    assert [r["step"] for r in _log(run)] == [5, 10, 15, 20, 25, 30]


def test_evaluate_covers_the_whole_split_whatever_the_batch(tiny_data, tmp_path):
    run = train(_cfg("betaH", "steps=20", "val_fraction=0.05"), tmp_path / "e",
                data=tiny_data, progress=False)  # fmt: skip
    a = evaluate(run, data=tiny_data, batch_size=1000, device="cpu")
    b = evaluate(run, data=tiny_data, batch_size=7, device="cpu")
    assert a["n_images"] == round(0.05 * len(tiny_data)) == b["n_images"]
    for key in ("recon", "kl", "loss"):
        assert a["losses"][key] == pytest.approx(b["losses"][key], rel=1e-5)
    # Against a direct computation over all held-out images.
    model, cfg = runs.load_run(run)
    from disvae.data.batching import split_indices
    from disvae.losses.terms import kl_normal, reconstruction_nll

    _, val = split_indices(len(tiny_data), 0.05, 0)
    x = tiny_data.batch(torch.as_tensor(val))
    with torch.no_grad():
        out = model(x)
        recon = reconstruction_nll(out.logits, x, "bernoulli", None).mean().item()
        kl = kl_normal(out.mu, out.logvar).sum(1).mean().item()
    assert a["losses"]["recon"] == pytest.approx(recon, rel=1e-4)
    assert a["losses"]["kl"] == pytest.approx(kl, rel=1e-4)
    assert json.loads((run / runs.EVAL_LOSSES).read_text())["losses"] == b["losses"]
    # A seeded subset (training's val_images), with the images counted as they are scored.
    from disvae.training.validation import val_subset

    done: list[int] = []
    c = evaluate(run, data=tiny_data, batch_size=4, device="cpu", n_images=9,
                 progress=done.append)  # fmt: skip
    assert c["n_images"] == 9 and done == [4, 4, 1]
    x = tiny_data.batch(torch.as_tensor(val_subset(val, 9, 0)))
    with torch.no_grad():
        out = model(x)
        recon = reconstruction_nll(out.logits, x, "bernoulli", None).mean().item()
    assert c["losses"]["recon"] == pytest.approx(recon, rel=1e-4)
    with pytest.raises(UserError, match="n_images must be a positive integer"):
        evaluate(run, data=tiny_data, device="cpu", n_images=0)


def test_load_run_while_training_uses_the_latest_checkpoint(tiny_data, tmp_path):
    run = train(_cfg("vae", "steps=10", "checkpoint_every=5"), tmp_path / "l",
                data=tiny_data, progress=False)  # fmt: skip
    final_model, cfg = runs.load_run(run)
    (run / runs.MODEL).unlink()
    ckpt_model, _ = runs.load_run(run)
    assert cfg.loss.name == "vae" and not final_model.training
    for p, q in zip(final_model.parameters(), ckpt_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_damaged_final_weights_name_the_resume_which_writes_them_again(tiny_data, tmp_path,
                                                                       caplog):  # fmt: skip
    run = train(_cfg("vae", "steps=10", "checkpoint_every=5"), tmp_path / "d",
                data=tiny_data, progress=False)  # fmt: skip
    good = runs.load_run(run).model.state_dict()
    data = bytearray((run / runs.MODEL).read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])  # (inside the last tensor's bytes)
    (run / runs.MODEL).write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"fails its checksum.*disvae train --resume .* writes it"):
        runs.load_run(run)
    with caplog.at_level("INFO", logger="disvae"):
        train(runs.read_config(run), run, data=tiny_data, resume=True, progress=False)
    assert "writing it again from the last checkpoint" in caplog.text
    again = runs.load_run(run).model.state_dict()
    assert all(torch.equal(again[k], good[k]) for k in good)  # the step-10 checkpoint's
    assert [r["step"] for r in _log(run)] == [10]  # no step trained twice


def test_without_a_bar_training_reports_progress_lines(tiny_data, tmp_path, caplog):
    """A batch job's log (stderr not a terminal): the log steps as lines, the first and the
    last always (between them at most one per 10 s, `logs.ProgressLines`)."""
    with caplog.at_level("INFO", logger="disvae"):
        run = train(_cfg("betaH", "steps=10", "log_every=5"), tmp_path / "p", data=tiny_data,
                    progress=False)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [x.split()[:3] for x in lines] == [["step", "5/10", "(50%)"],
                                              ["step", "10/10", "(100%)"]]  # fmt: skip
    last = _log(run)[-1]
    assert f"loss={last['loss']:.4g}" in lines[1] and "eta" in lines[0] and "eta" not in lines[1]
    with caplog.at_level("INFO", logger="disvae"):
        train(C.apply_overrides(runs.read_config(run), ["steps=15"]), run, data=tiny_data,
              resume=True, progress=False)  # fmt: skip
    assert "resumed " + str(run) + " at step 10: training betaH on to step 15" in caplog.text


def test_log_lines_are_strict_json_with_null_for_an_undefined_metric(tmp_path):
    """`--eval-every dci` on one-factor data logs an undefined (NaN) metric: the JSON line holds
    null, which jq and JavaScript read (Python's NaN token they refuse); lists too."""
    from disvae.training.logs import append_record
    from disvae.viz.curves import read_train_log

    log = tmp_path / "train_log.jsonl"
    append_record(log, {"step": 5, "loss": 1.5, "metrics/dci/disentanglement": float("nan"),
                        "kl_per_dim": [0.5, float("inf")]})  # fmt: skip

    def refuse(token):
        raise ValueError(token)

    line = json.loads(log.read_text(encoding="utf-8"), parse_constant=refuse)
    assert line == {"step": 5, "loss": 1.5, "metrics/dci/disentanglement": None,
                    "kl_per_dim": [0.5, None]}  # fmt: skip
    assert read_train_log(log) == [line]


def test_progress_lines_are_throttled_but_the_last_step_always_shows():
    from disvae.training.logs import ProgressLines

    now = [100.0]
    lines = ProgressLines(total=400, start=0, every_s=10.0, clock=lambda: now[0])
    shown = []
    for step in range(20, 401, 20):  # a log step every 2 s: 100 steps per 10 s
        now[0] += 2.0
        text = lines.line({"step": step, "loss": 1.5}, last=step == 400)
        shown += [step] if text is not None else []
    assert shown == [20, 120, 220, 320, 400]
    # 10 steps per second since the start: 200 to go at step 200 is 20 s
    lines = ProgressLines(total=400, start=100, clock=lambda: now[0])
    now[0] += 10.0
    assert lines.line({"step": 200}, last=False) == "step 200/400 (50%)  eta 0:00:20"


def test_a_run_of_data_passed_in_python_asks_for_that_data_not_a_shape_traceback(tmp_path):
    """`train(cfg, out, data=my_data)` with a cfg.data that names other images: evaluating
    or plotting the run loaded cfg.data's 64x64 images into a 32x32 model (a PyTorch shape
    error, exit 1). It says what to pass instead; with the data given again it works."""
    import numpy as np

    from disvae import viz
    from disvae.data import ArrayDataset, DatasetInfo

    rng = np.random.default_rng(0)
    images = (rng.random((96, 1, 32, 32)) < 0.3).astype(np.uint8) * 255
    mine = ArrayDataset(images, DatasetInfo("squares", (1, 32, 32)), packed=False)
    run = train(_cfg("betaH", "steps=4", "log_every=2"), tmp_path / "p", data=mine,
                progress=False)  # fmt: skip
    assert json.loads((run / runs.CONFIG).read_text())["data_passed"] is True
    for use in (lambda: evaluate(run, device="cpu"), lambda: viz.plot_run(run, ["samples"])):
        with pytest.raises(
            UserError,
            match=r"images of \[1, 64, 64\], the run's \[1, 32, 32\]; it trained on a dataset "
            r"passed in Python .*data=",
        ):
            use()
    assert evaluate(run, data=mine, device="cpu")["n_images"] == 10  # (val_fraction 0.1)


def test_a_run_of_a_same_shaped_subset_passed_in_python_warns_its_split_is_another(
    tiny_data, tmp_path, caplog
):
    """Data passed in Python with the images of the named dataset but fewer of them: scored
    on the named dataset, the held-out images are not the run's. It runs, with a warning that
    says so; with the run's data given again, or with the whole named dataset, no warning."""
    from disvae.data import ArrayDataset, DatasetInfo

    images = tiny_data.numpy_images(np.arange(len(tiny_data) // 2)) * 255
    info = DatasetInfo("dsprites_tiny", (1, 64, 64), "bernoulli")
    half = ArrayDataset(images, info, packed=False)
    runs_of = {}
    # (subset=40: the same split sizes from either dataset, but other held-out images)
    for name, data, extra in (("half", half, []), ("half_subset", half, ["subset=40"]),
                              ("whole", tiny_data, [])):  # fmt: skip
        cfg = _cfg("vae", "steps=2", *extra)
        runs_of[name] = train(cfg, tmp_path / name, data=data, progress=False)
    warned = "trained on a dataset passed in Python"
    for name in ("half", "half_subset"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert evaluate(runs_of[name], device="cpu", n_images=4)["n_images"] == 4
        assert warned in caplog.text and "not the run's: pass the run's dataset" in caplog.text
    # A run made before config.json recorded n_images: its split sizes tell (they differ here).
    config = runs_of["half"] / runs.CONFIG
    config.write_text(json.dumps({**json.loads(config.read_text()), "n_images": None}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate(runs_of["half"], device="cpu", n_images=4)
    assert warned in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate(runs_of["half"], data=half, device="cpu", n_images=4)
        evaluate(runs_of["whole"], device="cpu", n_images=4)
        evaluate_metrics(runs_of["half"], "unsupervised", device="cpu", n_samples=100, n_test=0)
    assert warned not in caplog.text  # (the metrics use no held-out split)


def test_load_run_chooses_its_weights(tiny_data, tmp_path):
    run = train(_cfg("vae", "steps=10", "checkpoint_every=5", "val_every=5", "val_images=64"),
                tmp_path / "w", data=tiny_data, progress=False)  # fmt: skip
    step5 = run / runs.CHECKPOINTS / "step_000000005.safetensors"
    assert step5.is_file()

    def weights_of(which):
        return [p.detach().clone() for p in runs.load_run(run, weights=which).model.parameters()]

    def same(a, b):
        return all(torch.equal(p, q) for p, q in zip(a, b, strict=True))

    final, latest, early = weights_of("final"), weights_of("latest"), weights_of(str(step5))
    assert same(final, latest) and not same(final, early)  # the step-10 checkpoint is final
    best_step = ckpt.load_state(run / runs.BEST)[1]["step"]
    assert same(weights_of("best"), early if best_step == 5 else final)
    with pytest.raises(UserError, match="give one of final, best, latest"):
        runs.load_run(run, weights="newest")
    (run / runs.BEST).unlink()
    with pytest.raises(UserError, match="--val-every"):
        runs.load_run(run, weights="best")


def test_training_gif_frames_every_n_steps_and_after_resume(tiny_data, tmp_path):
    from PIL import Image

    run = train(_cfg("vae", "steps=10", "checkpoint_every=5", "snapshot_every=5"),
                tmp_path / "g", data=tiny_data, progress=False)  # fmt: skip
    frames = sorted(p.name for p in (run / "training_frames").iterdir())
    assert frames == ["step_00000000.png", "step_00000005.png", "step_00000010.png"]
    with Image.open(run / "training.gif") as gif:
        assert gif.n_frames >= 2 and gif.info.get("loop") == 0
    cfg = C.apply_overrides(runs.read_config(run), ["steps=15"])
    train(cfg, run, data=tiny_data, resume=True, progress=False)
    assert len(list((run / "training_frames").iterdir())) == 4


def test_metrics_during_training_are_logged_and_leave_training_unchanged(tiny_data, tmp_path):
    base = ["steps=10", "log_every=5", "snapshot_every=0"]
    plain = train(_cfg("betaH", *base), tmp_path / "a", data=tiny_data, progress=False)
    cfg = _cfg("betaH", *base, "eval_every=5", "eval_metrics=unsupervised", "eval_samples=200")
    evald = train(cfg, tmp_path / "b", data=tiny_data, progress=False)
    log = _log(evald)
    assert [r["step"] for r in log] == [5, 10]
    assert all(any(k.startswith("metrics/unsupervised") for k in r) for r in log)
    assert (plain / runs.MODEL).read_bytes() == (evald / runs.MODEL).read_bytes()
    with pytest.raises(C.UserError, match="unknown metric 'nope'"):
        train(_cfg("betaH", *base, "eval_every=5", "eval_metrics=nope"), tmp_path / "c",
              data=tiny_data, progress=False)  # fmt: skip
    with pytest.raises(C.UserError, match="needs ground-truth factors"):
        train(_cfg("betaH", *base, "eval_every=5", "eval_metrics=mig"), tmp_path / "d",
              data=tiny_data, progress=False)  # fmt: skip


def _strip(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "img_per_s"} for r in log]


def test_a_signal_while_a_step_logs_stops_after_a_checkpointed_step(tiny_data, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    """A signal arriving after the loop had read its stop flag for the step (here: while the
    step-10 line is written) used to end the loop at once without a checkpoint: the summary
    named step 10, the resume went back to step 0."""
    from disvae.training import loop, runtime

    write_log = loop.Trainer.write_log

    def signalled_while_logging(self, *args, **kwargs):
        record = write_log(self, *args, **kwargs)
        if self.step == 10:
            self._stop_requested = True  # what the SIGINT handler does
        return record

    whole = train(_cfg("betaH", "steps=20", "log_every=5"), tmp_path / "whole",
                  data=tiny_data, progress=False)  # fmt: skip
    monkeypatch.setattr(loop.Trainer, "write_log", signalled_while_logging)
    part = train(_cfg("betaH", "steps=20", "log_every=5"), tmp_path / "part",
                 data=tiny_data, progress=False)  # fmt: skip
    monkeypatch.undo()
    assert runtime.last_stop_step == 11 and not (part / runs.MODEL).exists()
    names = sorted(p.name for p in (part / runs.CHECKPOINTS).iterdir())
    assert names == ["step_000000000.safetensors", "step_000000011.safetensors"]
    train(runs.read_config(part), part, data=tiny_data, resume=True, progress=False)
    assert (whole / runs.MODEL).read_bytes() == (part / runs.MODEL).read_bytes()
    assert _strip(_log(whole)) == _strip(_log(part))


def test_resuming_at_the_stop_step_finishes_with_the_last_log_line(tiny_data, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """--resume RUN --steps N where a Ctrl-C left RUN's checkpoint at step N, between log lines:
    the steps since the last line were never logged ('finished at step 10' for 13 steps)."""
    from disvae.training import loop

    train_step = loop.Trainer.train_step

    def signalled_in_step_13(self):
        if self.step == 12:  # the 13th step
            self._stop_requested = True
        return train_step(self)

    base = ["steps=20", "log_every=5", "snapshot_every=5"]
    monkeypatch.setattr(loop.Trainer, "train_step", signalled_in_step_13)
    run = train(_cfg("betaH", *base), tmp_path / "r", data=tiny_data, progress=False)
    monkeypatch.undo()
    assert [r["step"] for r in _log(run)] == [5, 10]
    cfg = C.apply_overrides(runs.read_config(run), ["steps=13"])
    train(cfg, run, data=tiny_data, resume=True, progress=False)
    whole = train(_cfg("betaH", *base[1:], "steps=13"), tmp_path / "whole",
                  data=tiny_data, progress=False)  # fmt: skip
    assert [r["step"] for r in _log(run)] == [5, 10, 13]
    assert _strip(_log(whole)) == _strip(_log(run))
    assert (whole / runs.MODEL).read_bytes() == (run / runs.MODEL).read_bytes()
    frames = sorted(p.name for p in (run / "training_frames").iterdir())
    assert frames[-1] == "step_00000013.png"
    # and the checkpoint there holds no unlogged steps: going on logs 15 and 20 as usual
    train(C.apply_overrides(cfg, ["steps=20"]), run, data=tiny_data, resume=True, progress=False)
    assert [r["step"] for r in _log(run)] == [5, 10, 13, 15, 20]


def test_a_subset_too_small_to_split_is_a_user_error(tiny_data, tmp_path):
    # It used to be a ValueError traceback from the split.
    with pytest.raises(UserError, match=r"1 images leave nothing to train on.*--val-fraction 0"):
        train(_cfg("vae", "steps=2", "subset=1", "batch_size=1"), tmp_path / "s",
              data=tiny_data, progress=False)  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_a_subset_larger_than_the_dataset_warns_and_uses_every_image(tiny_data, tmp_path, caplog):
    n = len(tiny_data)
    with caplog.at_level("WARNING", logger="disvae.training.loop"):
        run = train(_cfg("vae", "steps=1", f"subset={n + 5}"), tmp_path / "b", data=tiny_data,
                    progress=False)  # fmt: skip
    assert f"--subset {n + 5} is more than the dataset's {n} images" in caplog.text
    record = json.loads((run / runs.CONFIG).read_text())
    assert record["n_train"] + record["n_val"] == n


def test_the_python_api_refuses_to_resume_with_another_setting(tiny_data, tmp_path):
    """`train(cfg, RUN, resume=True)` with a changed lr used to train on with it and rewrite
    RUN/config.json: a run whose record no longer says how it was trained."""
    run = train(_cfg("betaH", "steps=5"), tmp_path / "r", data=tiny_data, progress=False)
    before = (run / runs.CONFIG).read_bytes()
    changed = C.apply_overrides(runs.read_config(run), ["steps=10", "lr=1e-4"])
    with pytest.raises(
        UserError, match=r"cannot change train.lr when resuming .* \(the run has 0.001;"
    ):
        train(changed, run, data=tiny_data, resume=True, progress=False)
    assert (run / runs.CONFIG).read_bytes() == before
    assert [r["step"] for r in _log(run)] == [5]
    # an unresolved config with the run's values (beta left to its default 4) resumes
    same = C.apply_overrides(_cfg("betaH", "steps=10"), ["beta=none"])
    train(same, run, data=tiny_data, resume=True, progress=False)
    assert [r["step"] for r in _log(run)] == [5, 10]
    # no length at all would not continue "as before" but to the default 300,000 steps
    unbounded = C.apply_overrides(runs.read_config(run), ["steps=none"])
    with pytest.raises(UserError, match=r"default 300000 steps \(the run has steps = 10\)"):
        train(unbounded, run, data=tiny_data, resume=True, progress=False)
    assert [r["step"] for r in _log(run)] == [5, 10]


def test_factor_vae_steps_train_only_their_own_network(tiny_data, tmp_path):
    """Kim & Mnih (2018), Alg. 2: the VAE's loss (with the discriminator's TC estimate) must not
    move the discriminator, and the discriminator's loss must not move the VAE."""
    from disvae.training.loop import Trainer

    trainer = Trainer(C.resolve(_cfg("factor", "steps=3")), tmp_path / "r", tiny_data)

    def state(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    def grads(module):  # (None where a step left no gradient)
        return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}

    for _ in range(2):  # the second step: Adam has moments for both networks
        disc_before, model_before = state(trainer.disc), state(trainer.model)
        seen = {}
        vae_update = trainer._vae_update

        def spy(*args, vae_update=vae_update, seen=seen):
            result = vae_update(*args)
            seen["model"], seen["disc"] = state(trainer.model), state(trainer.disc)
            seen["grads"] = grads(trainer.model)
            return result

        trainer._vae_update = spy
        assert trainer.train_step() is not None
        trainer.step += 1
        del trainer._vae_update
        assert not same(seen["model"], model_before)  # the VAE step trained the VAE
        assert same(seen["disc"], disc_before)  # ... and not the discriminator
        assert same(state(trainer.model), seen["model"])  # the discriminator's left the VAE
        # ... and its loss sent no gradient into the encoder for a later VAE step to apply
        after = grads(trainer.model)
        assert all(
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in ((after[n], seen["grads"][n]) for n in after)
        )
        assert not same(state(trainer.disc), disc_before)  # ... and trained itself
