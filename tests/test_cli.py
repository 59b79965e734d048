"""The command line: help, a train/evaluate/resume round, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from disvae.cli import main

# (no training frames: at these lengths, one a step)
TINY = ["--dataset", "dsprites_tiny", "--batch-size", "16", "--no-progress", "--log-every", "5",
        "--snapshot-every", "0"]  # fmt: skip


def test_help_lists_every_flag_the_issue_names():
    out = subprocess.run([sys.executable, "-m", "disvae", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for flag in ("--loss", "--dataset", "--data-path", "--preset", "--config", "--set", "--out",
                 "--overwrite", "--resume", "--steps", "--epochs", "--batch-size", "--lr",
                 "--latent-dim", "--rec-dist", "--seed", "--device", "--checkpoint-every",
                 "--log-every", "--no-progress", "--beta", "--gamma", "--c-init", "--c-fin",
                 "--c-steps", "--alpha", "--lr-disc", "--reg-anneal", "--sampling"):  # fmt: skip
        assert flag in out, flag
    top = subprocess.run([sys.executable, "-m", "disvae", "--help"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "train" in top and "evaluate" in top


@pytest.mark.parametrize("cmd", [["train"], ["evaluate"], ["encode"], ["plot"], ["report"],
                                 ["sweep"], ["data", "info"]])  # fmt: skip
def test_help_shows_each_default_once_and_only_real_ones(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in out and "(default: False)" not in out
    # a help that names its default gets no second one: not "(default X) (default: Y)"
    assert not re.search(r"default[^()]*\)\s*\(default:", out, re.IGNORECASE), out
    if cmd == ["evaluate"]:
        assert "(default: 10000)" in out  # real defaults are still shown


def test_train_evaluate_resume_round(tmp_path, capsys):
    run = tmp_path / "b1"
    assert main(["train", "--loss", "betaB", "--steps", "10", "--out", str(run), *TINY]) == 0
    assert "finished at step 10" in capsys.readouterr().out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["loss"]["gamma"] == 1000.0 and cfg["train"]["steps"] == 10
    assert cfg["versions"]["torch"] and cfg["image_shape"] == [1, 64, 64]
    assert main(["train", "--resume", str(run), "--steps", "20", "--no-progress"]) == 0
    assert [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()] == [
        5, 10, 15, 20]  # fmt: skip
    assert re.search(r"finished at step 20 in \d+s ", capsys.readouterr().out)
    # Resuming the finished run trains nothing, and the summary does not say it just finished.
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    noop = capsys.readouterr()
    assert "already finished its 20 steps; nothing to do" in noop.err
    assert "finished at step 20 (earlier; nothing trained now)  loss=" in noop.out
    assert " in 0s" not in noop.out
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "recon" in out and "capacity" in out
    assert "schedules (β-VAE_B's capacity, warm-up) at their final values" in out
    assert json.loads((run / "eval_losses.json").read_text())["step"] == 20
    assert main(["evaluate", str(run), "--val-images", "3", "--metrics", "mig"]) == 2
    assert "the metrics take --n-samples and --n-test" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--val-images", "3"]) == 0
    assert json.loads((run / "eval_losses.json").read_text())["n_images"] == 3
    # Resuming behind the run's step is refused; resuming a finished run changes nothing.
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", "--resume", str(run), "--steps", "10", "--no-progress"]) == 2
    assert "already at step 20, past the 10 steps" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_preset_with_set_override(tmp_path):
    run = tmp_path / "p"
    argv = ["train", "--preset", "betaB_dsprites", "--set", "lr=5e-4", "--set", "steps=5",
            "--out", str(run), *TINY]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["lr"] == 5e-4 and cfg["loss"]["name"] == "betaB"


def test_list_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    assert "btcvae_dsprites" in capsys.readouterr().out.split()


def _bad_npz(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, imgs=np.zeros((3, 64, 64), np.uint8))
    return str(path)


BAD_INPUT = [
    (["--loss", "nope"], "unknown loss 'nope'"),
    (["--dataset", "mnistt"], "unknown dataset 'mnistt'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--loss", "betaH", "--beta", "-1"], "loss.beta must be non-negative"),
    (["--latent-dim", "0"], "model.latent_dim must be positive"),
    (["--set", "bogus=1"], "unknown config key 'bogus'"),
    (["--loss", "betaB", "--beta", "2"], "not used by loss 'betaB'"),
    (["--loss", "betaH", "--beta", "inf"], "command line: loss.beta must be a finite number"),
    (["--subset", "0"], "argument --subset: must be a positive integer, got 0"),  # argparse's
    (["--steps", "3", "--epochs", "1"], "not allowed with argument --steps"),
    (["--val-images", "some"], "must be a positive integer or all"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--dataset", "dsprites_tiny", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_and_malformed_dsprites_file(tmp_path, capsys):
    assert main(["train", "--dataset", "dsprites", "--data-path", str(tmp_path / "no.npz"),
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "dsprites" in err.lower() and err.count("\n") == 1
    assert main(["train", "--dataset", "dsprites", "--data-path", _bad_npz(tmp_path),
                 "--out", str(tmp_path / "r2")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("disvae: error:") and err.count("\n") == 1


def test_out_that_is_not_writable_or_not_empty(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--out", str(blocker / "run"), *TINY, "--steps", "2"]) == 2
    assert "cannot write to --out" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(full), *TINY, "--steps", "2"]) == 2
    err = capsys.readouterr().err  # (no --resume offered: there is no run to continue)
    assert "is not empty and is not a disvae run: choose another --out" in err
    assert "--resume" not in err
    assert main(["train", "--out", str(full), "--overwrite", *TINY, "--steps", "2"]) == 2
    assert "not a disvae run" in capsys.readouterr().err
    assert (full / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_run(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "5", "--loss", "vae"]) == 0
    assert main(["train", "--out", str(run), *TINY, "--steps", "5", "--loss", "vae"]) == 2
    assert f"holds a run already; pass --resume {run} to continue" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--overwrite", *TINY, "--steps", "5",
                 "--loss", "betaH"]) == 0  # fmt: skip
    assert json.loads((run / "config.json").read_text())["loss"]["name"] == "betaH"
    # Everything derived from the old model goes with it (a report must not show its metrics);
    # the user's own files stay.
    for name in ("metrics.json", "report.html", "codes.npz", "plots/kl.png", "notes.txt"):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("old")
    assert main(["train", "--out", str(run), "--overwrite", *TINY, "--steps", "5",
                 "--loss", "vae"]) == 0  # fmt: skip
    left = {p.name for p in run.iterdir()}
    assert "notes.txt" in left
    assert not left & {"metrics.json", "report.html", "codes.npz", "plots"}


@pytest.mark.parametrize("bad", [
    ["--subset", "10"],  # too few images for the batch
    ["--val-every", "2", "--val-fraction", "0"],  # no held-out split
    ["--device", "cuda:7"],  # no such device here
])  # fmt: skip
def test_overwrite_with_a_refused_setting_keeps_the_finished_run(tmp_path, capsys, bad):
    """The settings are checked against the data and the device before --overwrite removes
    anything: a refused one leaves the finished run byte for byte."""
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "3", "--loss", "vae"]) == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--overwrite", *TINY, "--steps", "3", *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert main(["evaluate", str(run)]) == 0


def test_overwrite_refuses_a_directory_of_another_tool(tmp_path, capsys):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text('{"architectures": ["BertModel"]}')
    (other / "pytorch_model.bin").write_bytes(b"weights")
    assert main(["train", "--out", str(other), "--overwrite", *TINY, "--steps", "2"]) == 2
    assert "not a disvae run" in capsys.readouterr().err
    assert (other / "config.json").read_text() == '{"architectures": ["BertModel"]}'
    assert main(["train", "--resume", str(other)]) == 2
    assert "not a disvae run" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["config.json", "pytorch_model.bin"]


def test_a_damaged_value_in_a_runs_config_stops_every_command(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "2", "--loss", "vae"]) == 0
    record = json.loads((run / "config.json").read_text())
    record["loss"]["name"] = "betaX"
    (run / "config.json").write_text(json.dumps(record))
    capsys.readouterr()
    for command in (["evaluate", str(run)], ["plot", str(run), "all"], ["report", str(run)],
                    ["train", "--resume", str(run)]):  # fmt: skip
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "unknown loss 'betaX'" in err and "config is damaged" in err, command
        assert err.count("\n") == 1
    assert not (run / "plots").exists() and not (run / "report.html").exists()
    # A damaged run is still a run: --overwrite may replace it.
    assert main(["train", "--out", str(run), "--overwrite", *TINY, "--steps", "2"]) == 0
    assert json.loads((run / "config.json").read_text())["loss"]["rec_dist"] == "bernoulli"


def test_resume_refuses_to_change_the_run(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "5", "--loss", "vae"]) == 0
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "cannot change train.lr when resuming" in capsys.readouterr().err
    # a value the run left unset is named as --set spells it
    assert main(["train", "--resume", str(run), "--set", "loss.rec_scale=2"]) == 2
    assert "cannot change loss.rec_scale when resuming" in (err := capsys.readouterr().err)
    assert "(the run has none;" in err
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "none' does not exist; pass a run directory" in capsys.readouterr().err


def test_evaluate_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a disvae run" in capsys.readouterr().err


def test_import_disvae_is_light_and_reaches_its_subpackages():
    # `import disvae` must not import torch (the CLI's --help stays fast); its subpackages are
    # attributes on first use, as the README's Python example uses them.
    code = (
        "import sys, disvae\n"
        "light = 'torch' not in sys.modules\n"
        "print(light, disvae.config.load_preset('betaH_mnist').train.epochs,\n"
        "      callable(disvae.data.load_data), callable(disvae.load_run))\n"
        "try:\n    disvae.nope\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == [
        "True 100.0 True True",
        "module 'disvae' has no attribute 'nope'",
    ]


def test_a_changed_preprocessing_is_recorded_and_warned_about(tmp_path, capsys):
    """config.json records the loader's preprocessing version; reading the run with another
    version (here: the run says 0) warns in one line, and the run is still read."""
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "2", "-q"]) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["preprocessing"] == 1
    assert main(["encode", str(run), "--split", "val", "-q"]) == 0
    assert "preprocess" not in capsys.readouterr().err  # the same version: no warning
    record["preprocessing"] = 0
    (run / "config.json").write_text(json.dumps(record))
    assert main(["encode", str(run), "--split", "val", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "as version 0 of its loader" in err[0] and "version 1" in err[0]
    assert main(["plot", str(run), "kl", "-q"]) == 0
    assert "as version 0 of its loader" in capsys.readouterr().err


def test_warnings_and_unwritable_files_are_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "4", "--checkpoint-every", "2"]) == 0
    newest = sorted((run / "checkpoints").iterdir())[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # torn: resume warns and takes the one before
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "6"]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [ln for ln in err if "Warning" in ln or "warning:" in ln]
    assert warned and all(ln.startswith("disvae: warning: ") for ln in warned), err
    import disvae.evaluation

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(run / "eval_losses.json"))

    monkeypatch.setattr(disvae.evaluation, "evaluate", denied)
    assert main(["evaluate", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "permission denied on" in lines[0] and "eval_losses.json" in lines[0]


def test_a_bad_cpu_bf16_override_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """DISVAE_CPU_BF16 takes 0 or 1; anything else used to fall back to detection in silence."""
    monkeypatch.setenv("DISVAE_CPU_BF16", "yes")
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "DISVAE_CPU_BF16='yes'" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not run.exists()  # nothing written before the settings were checked


def test_quiet_work_commands_print_nothing_and_still_write_their_files(tmp_path, capsys):
    """-q: only warnings and errors; without it each command says what it did."""
    run = tmp_path / "r"
    for argv in (
        ["train", "--out", str(run), *TINY, "--steps", "3", "--loss", "vae"],
        ["evaluate", str(run)],
        ["evaluate", str(run), "--metrics", "all", "--n-samples", "200", "--n-test", "50"],
        ["encode", str(run)],
    ):
        assert main([*argv, "-q"]) == 0, (argv, capsys.readouterr().err)
        out, err = capsys.readouterr()
        assert out == "" and err == "", (argv, out, err)
    for name in ("train_log.jsonl", "eval_losses.json", "metrics.json", "codes.npz"):
        assert (run / name).is_file(), name
    assert main(["evaluate", str(run)]) == 0  # not quiet: the losses and where they went
    assert "written to" in capsys.readouterr().out


def test_resume_without_a_usable_checkpoint_says_what_to_do(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "4", "--loss", "vae"]) == 0
    for path in (run / "checkpoints").iterdir():
        path.write_bytes(path.read_bytes()[:64])  # every one torn
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "8"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no usable checkpoint" in last and f"--out {run} --overwrite" in last


def test_a_stop_while_extending_a_finished_run_is_no_finish(tmp_path, capsys, monkeypatch):
    """--resume RUN --steps MORE on a finished run, then Ctrl-C: the old model.safetensors made
    the CLI report 'finished' with exit 0, so `train ... && evaluate ...` went on."""
    from disvae.training import loop, runtime

    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *TINY, "--steps", "10", "--loss", "vae"]) == 0
    real = loop.Trainer.train_step

    def ctrl_c_in_step_15(self):
        if self.step == 14:
            self._stop_requested = True  # what the SIGINT handler does
            runtime.last_stop_signal = 2
        return real(self)

    monkeypatch.setattr(loop.Trainer, "train_step", ctrl_c_in_step_15)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "30", "--no-progress"]) == 130
    out = capsys.readouterr().out
    assert f"run {run}: stopped at step 15" in out and f"train --resume {run}" in out
    assert "finished" not in out


def test_resume_accepts_the_runs_own_settings_and_names_the_old_value(tmp_path, capsys):
    run = tmp_path / "r"
    first = ["--out", str(run), *TINY, "--loss", "betaH", "--beta", "4", "--seed", "7"]
    assert main(["train", *first, "--steps", "5"]) == 0
    # the first command line again, with --resume and a longer run: nothing else changes
    again = ["--resume", str(run), *TINY, "--loss", "betaH", "--beta", "4.0", "--seed", "7"]
    assert main(["train", *again, "--steps", "10"]) == 0
    assert json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 10
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "15", "--seed", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot change train.seed when resuming {str(run)!r} (the run has 7;" in err


def test_default_out_does_not_collide_with_a_run_of_the_same_second(tmp_path, monkeypatch):
    from disvae import cli
    from disvae import config as C

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261129-101500")
    cfg = C.RunConfig()
    first = cli._default_out(cfg)
    assert first == f"runs/{cfg.loss.name}_dsprites_20261129-101500"
    (tmp_path / first).mkdir(parents=True)
    assert cli._default_out(cfg) == first + "-2"
    (tmp_path / (first + "-2")).mkdir()
    assert cli._default_out(cfg) == first + "-3"


def test_compile_mode_with_no_compile_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    argv = ["train", "--out", str(run), *TINY, "--steps", "2", "--compile-mode", "default"]
    assert main([*argv, "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert err == "disvae: error: --compile-mode compiles the model and --no-compile says not " \
                  "to; drop one\n"  # fmt: skip
    assert not run.exists()


def test_the_rank_that_speaks_for_a_torchrun_run(monkeypatch):
    from disvae import cli

    for value, rank in (("0", 0), ("00", 0), ("1", 1), ("x", 0)):
        monkeypatch.setenv("RANK", value)
        assert cli._rank() == rank
    monkeypatch.delenv("RANK")
    assert cli._rank() == 0


def test_dry_run_prints_a_config_file_and_the_runs_size_and_writes_nothing(tmp_path, capsys):
    from disvae import config as C
    from disvae.data import load_dataset

    run = tmp_path / "r"
    argv = ["train", "--out", str(run), *TINY, "--loss", "factor", "--epochs", "2", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert not run.exists()
    n = len(load_dataset("dsprites_tiny"))
    n_val = round(n * 0.1)  # the default held-out share
    steps = round(2 * (n - n_val) // 2 / 16)  # FactorVAE: two batches of 16 a step
    assert f"{n - n_val:,} train, {n_val:,} held out" in out
    assert f"# {steps:,} steps of batch 16 (2 batches a step): 2 epochs" in out
    assert "(VAE + discriminator)" in out and f"trains into {run}" in out
    assert "CUDA graph" not in out  # (TINY trains on the CPU; on CUDA the line says so)
    # the output is a config file: training from it is the same run
    saved = tmp_path / "saved.toml"
    saved.write_text(out)
    cfg = C.load_file(saved, C.RunConfig())
    assert cfg.loss.gamma == C.OBJECTIVE_DEFAULTS["factor"]["gamma"]  # resolved: written out
    assert cfg.loss.name == "factor" and cfg.train.batch_size == 16
    assert main(["train", "--config", str(saved), "--out", str(run), "--dry-run"]) == 0
    assert capsys.readouterr().out == out
    # what training would refuse, the dry run refuses
    assert main([*argv, "--set", "model.hidden=[8]"]) == 2
    assert "model.hidden is not used by arch 'burgess'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("")
    assert main([*argv[:-1], "--dry-run", "--out", str(tmp_path / "full")]) == 2
    assert "is not empty and is not a disvae run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--dry-run"]) == 2
    assert "--dry-run shows a new run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--los", "btcvae"], "disvae train: error: unknown option --los (did you mean "
         "--loss?); see `disvae train --help`"),
        (["train", "--los=btcvae", "--steps", "3"], "unknown option --los (did you mean --loss?)"),
        (["evaluate", "RUN", "--metric", "mig"], "disvae evaluate: error: unknown option --metric "
         "(did you mean --metrics?)"),
        (["plot", "RUN", "--row", "3"], "unknown option --row (did you mean --rows?)"),
        (["train", "--zzz", "3"], "disvae train: error: unknown option --zzz; see"),
        (["train", "--frob"], "unknown option --frob; see"),  # (was "did you mean --lr?")
        (["train", "-stpes", "3"], "unknown option -stpes (did you mean --steps?)"),
        (["evaluate", "RUN1", "RUN2"], "disvae evaluate: error: unexpected argument 'RUN2'; see "
         "`disvae evaluate --help`"),
        (["-q", "train"], "disvae: error: -q before the command; options go after the command's "
         "name (`disvae CMD -q`)"),
    ],
)  # fmt: skip
def test_options_are_spelt_in_full_and_a_misspelling_names_the_nearest(argv, message, capsys):
    """argparse's prefix matching took --los for --loss and --metric for --metrics; an option
    added later could change what such a saved command means."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_text_files_are_read_and_written_as_utf8_whatever_the_locale(tmp_path):
    """Config files, sweep files, run records, logs and the results table are UTF-8 (TOML's and
    JSON's own encoding; disvae writes its files so): opened without ``encoding`` they would be
    decoded in the locale's encoding (Latin-1, cp1252), which reads "é" in a data path wrong.
    Python's ``-X warn_default_encoding`` flags each such open; here they are errors."""
    script = r"""
import json, sys, warnings
from pathlib import Path
warnings.filterwarnings("error", category=EncodingWarning, module=r"disvae(\.|$)")
from disvae import config as C, runs
from disvae.sweep.results import read_results
from disvae.sweep.spec import load_sweep
from disvae.training.logs import append_record
d = Path(sys.argv[1])
(d / "c.toml").write_text('[data]\npath = "/data/données"\n', encoding="utf-8")
assert C.load_file(d / "c.toml").data.path == "/data/données"
(d / "s.toml").write_text('# étude\nname = "e"\n[[methods]]\nloss = "vae"\n', encoding="utf-8")
assert load_sweep(d / "s.toml").name == "e"
(d / "sweep_results.csv").write_bytes("name,method\r\nrun-é,a\r\n".encode())
assert read_results(d) == [{"name": "run-é", "method": "a"}]
run = d / "run"
run.mkdir()
(run / runs.CONFIG).write_text(json.dumps(runs.config_record(C.RunConfig())), encoding="utf-8")
assert runs.read_config(run).loss.name == C.RunConfig().loss.name
append_record(run / runs.TRAIN_LOG, {"step": 1, "loss": 1.0})
print("ok")
"""
    done = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-c", script,
                           str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
