"""Sweeps: expansion of sweep files, local and Ray execution, resume, failures, the page."""

from __future__ import annotations

import json
import math
import shutil
from importlib import resources

import pytest

from disvae import runs
from disvae.errors import UserError
from disvae.sweep import load_sweep, read_results, run_sweep
from disvae.sweep import state as S

TINY_METRICS = ("mig", "mig_chen", "aam")


def _write(tmp_path, text: str, name: str = "study.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _tiny_with_methods(methods: str) -> str:
    """The shipped tiny sweep's base and evaluation, with other methods."""
    text = (resources.files("disvae") / "sweeps" / "tiny.toml").read_text()
    return text[: text.index("[[methods]]")] + methods


# --------------------------------------------------------------------------- expansion


def test_expansion_counts_names_and_configs(tmp_path):
    path = _write(tmp_path, """
seeds = [0, 1]
[base.train]
steps = 10
[grid]
"model.latent_dim" = [5, 10]
[[methods]]
loss = "betaH"
grid = { "loss.beta" = [1, 4, 16] }
[[methods]]
name = "capacity"
loss = "betaB"
set = { "loss.gamma" = 1000 }
grid = { "loss.c_fin" = [5, 25] }
""")  # fmt: skip
    sweep = load_sweep(path)
    assert sweep.name == "study"
    assert len(sweep.runs) == (3 + 2) * 2 * 2  # (method grids) × shared grid × seeds
    names = [r.name for r in sweep.runs]
    assert len(set(names)) == len(names)
    assert names[0] == "betaH-latent_dim=5-beta=1-seed=0"
    run = next(r for r in sweep.runs if r.name == "capacity-latent_dim=10-c_fin=25-seed=1")
    cfg = run.config
    assert (cfg.loss.name, cfg.loss.gamma, cfg.loss.c_fin) == ("betaB", 1000.0, 25.0)
    assert (cfg.model.latent_dim, cfg.train.seed, cfg.train.steps) == (10, 1, 10)
    assert run.params == {"model.latent_dim": 10, "loss.c_fin": 25}


def test_shipped_sweeps_expand():
    study = load_sweep("dsprites_study")
    assert len(study.runs) == 4 * 6 * 5
    methods = {r.method for r in study.runs}
    assert methods == {"betaH", "betaB", "factor", "btcvae"}
    betab = [r for r in study.runs if r.method == "betaB"]
    assert {r.config.loss.c_fin for r in betab} == {5, 10, 25, 50, 75, 100}
    assert all(r.config.train.steps == 300_000 and r.config.train.batch_size == 64 for r in betab)
    names = [r.name for r in load_sweep("tiny").runs]
    assert names == ["betaH-beta=1-seed=0", "betaH-beta=4-seed=0",
                     "btcvae-beta=1-seed=0", "btcvae-beta=6-seed=0"]  # fmt: skip


RANDOM = """
seed = {seed}
[random]
n = 6
"train.lr" = {{ loguniform = [1e-4, 1e-2] }}
"loss.beta" = {{ choice = [1, 2, 4] }}
"model.latent_dim" = {{ int = [4, 8] }}
"data.val_fraction" = {{ uniform = [0.05, 0.2] }}
[[methods]]
loss = "betaH"
"""


def test_random_samples_are_reproducible(tmp_path):
    def values(seed):
        sweep = load_sweep(_write(tmp_path, RANDOM.format(seed=seed)))
        return [tuple(r.params.values()) for r in sweep.runs]

    a, b, c = values(3), values(3), values(4)
    assert a == b and a != c and len(a) == 6
    for lr, beta, dim, frac in a:
        assert 1e-4 <= lr <= 1e-2 and beta in (1, 2, 4) and 0.05 <= frac <= 0.2
        assert isinstance(dim, int) and 4 <= dim <= 8


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[grid]\n"loss.betta" = [1, 2]', "loss.betta"),
        ('[[methods]]\nloss = "betaH"\ngrid = { "loss.gamma" = [1] }', "loss.gamma"),
        ('[grid]\n"train.lr" = [1e-3, -1.0]', "train.lr"),
        ('[random]\nn = 2\n"train.lr" = { normal = [0, 1] }', "loguniform"),
        ("[evaluate]\nmetrics = ['mgi']", "mgi"),
        ("[base.train]\nstepz = 3", "train.stepz"),
    ],
)
def test_bad_sweep_fails_at_expansion_naming_key_and_file(tmp_path, body, needle):
    path = _write(tmp_path, body)
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_ray_missing_is_a_clear_error(monkeypatch):
    from disvae.sweep.runner import import_ray

    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'disvae\[ray\]'"):
        import_ray()


# --------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """The shipped tiny sweep (4 runs) run once on 2 local worker processes."""
    cache = tmp_path_factory.getbasetemp() / "cache"  # the conftest's per-session cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISVAE_CACHE", str(cache))
        from disvae.data import load_dataset

        load_dataset("dsprites")  # render the cache once, not in each worker at the same time
        out = tmp_path_factory.mktemp("sweep") / "tiny"
        summary = run_sweep("tiny", out, workers=2, progress=False)
    return out, summary


def _assert_complete(rows):
    assert [r["status"] for r in rows] == ["done"] * len(rows)
    for r in rows:
        assert r["loss.beta"] in (1, 4, 6) and r["seed"] == 0 and r["step"] == 4
        assert all(isinstance(r[m], float) for m in TINY_METRICS)
        assert isinstance(r["train/loss"], float) and isinstance(r["val/loss"], float)


def test_local_sweep_on_two_workers(tiny_sweep):
    out, summary = tiny_sweep
    rows = read_results(out)
    assert len(rows) == 4 and len(summary.ran) == 4
    _assert_complete(rows)
    state = S.read_state(out / S.RUNS / rows[0]["name"])
    assert state["attempts"] == 1 and state["duration_s"] > 0 and state["error"] is None


def test_resume_reruns_only_what_did_not_finish(tiny_sweep, tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(tiny_sweep[0], out)
    a, b, c, d = (out / S.RUNS / r.name for r in load_sweep("tiny").runs)
    # a: killed mid-training (a checkpoint at step 2, no final weights, state left "running")
    (a / S.RUN / runs.MODEL).unlink()
    (a / S.RUN / runs.CHECKPOINTS / "step_000000004.safetensors").unlink()
    (a / S.RUN / "metrics.json").unlink()
    S.write_state(a, status="running", duration_s=1000.0)  # (its first attempt's time)
    # b: never started; c: failed before (not retried without retry_failed); d: done
    shutil.rmtree(b / S.RUN)
    S.write_state(b, status="pending")
    S.write_state(c, status="failed", error="boom")
    d_weights = (d / S.RUN / runs.MODEL).stat().st_mtime_ns
    # d's spec as an earlier disvae wrote it: cuda_graph false, the default before "auto" (None)
    spec = json.loads((d / S.SPEC).read_text())
    spec["config"]["train"]["cuda_graph"] = False
    (d / S.SPEC).write_text(json.dumps(spec))
    summary = run_sweep("tiny", out, workers=2, progress=False)
    assert sorted(summary.ran) == sorted([a.name, b.name])
    assert S.read_state(a)["resumed_from_step"] == 2 and S.read_state(a)["attempts"] == 2
    assert 1000.0 < S.read_state(a)["duration_s"] < 1300  # both attempts' time
    assert S.read_state(b)["resumed_from_step"] is None
    assert S.read_state(c)["status"] == "failed" and S.read_state(c)["attempts"] == 1
    assert (d / S.RUN / runs.MODEL).stat().st_mtime_ns == d_weights
    rows = {r["name"]: r for r in read_results(out)}
    _assert_complete([rows[a.name], rows[b.name], rows[d.name]])
    assert rows[c.name]["status"] == "failed" and rows[c.name]["error"] == "boom"


def test_killed_sweep_resumes_only_the_runs_it_had_not_finished(tiny_sweep, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "tiny"
    cmd = [sys.executable, "-m", "disvae", "sweep", "tiny", "--out", str(out), "--workers", "1",
           "--no-progress", "-q"]  # fmt: skip
    # (DISVAE_CACHE is the conftest's per-session cache, rendered by the tiny_sweep fixture)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    slots = [out / S.RUNS / r.name for r in load_sweep("tiny").runs]
    deadline = time.monotonic() + 180
    try:
        while not any((s / S.STATE).is_file() and S.read_state(s)["status"] == "done"
                      for s in slots):  # fmt: skip
            assert proc.poll() is None and time.monotonic() < deadline, "no run finished"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, as a crash would
        proc.wait()
    done = {s.name for s in slots if S.read_state(s)["status"] == "done"}
    assert 0 < len(done) < 4
    summary = run_sweep("tiny", out, workers=2, progress=False)
    assert sorted(summary.ran) == sorted(s.name for s in slots if s.name not in done)
    assert all(S.read_state(out / S.RUNS / n)["attempts"] == 1 for n in done)
    _assert_complete(read_results(out))


def test_sigterm_to_the_sweep_alone_stops_its_runs_as_ctrl_c_does(tiny_sweep, tmp_path):
    """`kill PID` reaches the sweep only (not its workers' group): it must pass the stop on, so
    that the run checkpoints and is left pending, not trained on by an orphan."""
    import signal
    import subprocess
    import sys
    import time

    text = _tiny_with_methods("""
[[methods]]
loss = "betaH"
set = { "train.steps" = 100000, "train.checkpoint_every" = 100000, "train.log_every" = 5 }
""")  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "disvae", "sweep", str(_write(tmp_path, text)), "--out",
           str(out), "--workers", "1", "--no-progress", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    [slot] = [out / S.RUNS / "betaH-seed=0"]
    deadline = time.monotonic() + 120
    try:
        while not (slot / S.RUN / runs.TRAIN_LOG).is_file():  # training, past its first steps
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    state = S.read_state(slot)
    assert state["status"] == "pending" and state["error"].startswith("interrupted"), state
    from disvae.training.checkpoint import list_checkpoints

    newest = list_checkpoints(slot / S.RUN / runs.CHECKPOINTS)[-1][0]
    assert newest > 0  # the stop's own checkpoint (the regular ones are 100,000 steps apart)


def test_a_sweep_directory_stands_for_its_sweep_file(tiny_sweep, tmp_path, capsys):
    from disvae.cli import main

    out = tmp_path / "tiny"
    shutil.copytree(tiny_sweep[0], out)
    names = sorted(r.name for r in load_sweep("tiny").runs)
    assert main(["sweep", str(out), "--dry-run"]) == 0
    assert sorted(capsys.readouterr().out.split()) == names
    a = out / S.RUNS / names[0]
    (a / S.RUN / runs.MODEL).unlink()  # one run to finish again, in place
    S.write_state(a, status="pending")
    summary = run_sweep(str(out), progress=False)
    assert summary.ran == [names[0]] and summary.out == out.resolve()
    assert main(["sweep", str(out), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "continues in place; leave out --out" in capsys.readouterr().err


def test_failed_run_is_recorded_and_others_finish(tmp_path):
    text = _tiny_with_methods("""
[[methods]]
loss = "betaH"
[[methods]]
name = "broken"
loss = "betaH"
set = { "data.path" = "/nonexistent/dsprites.npz" }
""")  # fmt: skip
    out = tmp_path / "out"
    summary = run_sweep(_write(tmp_path, text), out, workers=2, progress=False)
    assert summary.status == {"betaH-seed=0": "done", "broken-seed=0": "failed"}
    rows = {r["name"]: r for r in read_results(out)}
    assert "/nonexistent/dsprites.npz" in rows["broken-seed=0"]["error"]
    assert "\n" not in rows["broken-seed=0"]["error"]
    assert isinstance(rows["betaH-seed=0"]["mig"], float)
    from disvae.cli import main

    assert main(["sweep", str(out), "--status"]) == 0


def test_ray_sweep(tmp_path, tiny_sweep):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'disvae[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep("tiny", tmp_path / "tiny", backend="ray", progress=False)
    finally:
        ray.shutdown()
    rows = read_results(tmp_path / "tiny")
    assert len(rows) == 4 and len(summary.ran) == 4
    _assert_complete(rows)
    for row in rows:  # each run's log in its slot, as a local worker's (docs/sweep.md)
        text = (tmp_path / "tiny" / S.RUNS / row["name"] / S.WORKER_LOG).read_text()
        assert "training " in text and " for 4 steps into " in text, text[-500:]


# --------------------------------------------------------------------------- page and CLI


def test_sweep_page_and_cli(tiny_sweep, tmp_path, capsys):
    from disvae.cli import main

    out = tiny_sweep[0]
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(TINY_METRICS) + 2  # + val recon, kl
    assert 'id="spearman"' in page and "mig_chen" in page
    assert 'src="http' not in page and "betaH-beta=4-seed=0" in page
    assert main(["sweep", str(out), "--status"]) == 0
    assert "done: 4" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "nope.toml")]) == 2


def test_spearman_matrix_known_answer():
    from disvae.sweep.page import spearman_matrix

    rows = [{"a": float(i), "b": float(i * i), "c": float(-i), "d": 1.0} for i in range(5)]
    m = spearman_matrix(rows, ["a", "b", "c", "d"])
    assert m[0][1] == pytest.approx(1.0) and m[0][2] == pytest.approx(-1.0)
    assert m[0][3] is None  # a constant metric has no rank correlation


def test_float_cells_read_back_as_floats():
    """A loss that happens to be integral (2882.0) is written "2882.0", not "2882", so the
    column keeps one type; ints stay ints, 6 significant digits, nan and inf survive."""
    from disvae.sweep.results import _cell, _parse

    cells = [2882.0, -3.0, 0.1234567, 1e21, float("nan"), float("-inf"), 7, "betaH"]
    back = [_parse(str(_cell(v))) for v in cells]
    assert [type(b) for b in back] == [float] * 6 + [int, str]
    assert back[:4] == [2882.0, -3.0, 0.123457, 1e21] and math.isnan(back[4])
    assert back[5] == -math.inf and back[6:] == [7, "betaH"]


def test_results_written_before_anything_runs(tmp_path):
    from disvae.sweep.runner import prepare

    sweep = load_sweep("tiny")
    todo = prepare(sweep, tmp_path)
    assert len(todo) == 4 and len(read_results(tmp_path)) == 4
    assert {r["status"] for r in read_results(tmp_path)} == {"pending"}
    spec = json.loads((todo[0] / S.SPEC).read_text())
    assert spec["params"] == {"loss.beta": 1} and spec["config"]["train"]["seed"] == 0


# --------------------------------------------------------------------------- bad input

BROKEN = """
[base.data]
path = "/nonexistent/dsprites.npz"
[[methods]]
loss = "betaH"
"""  # a run of it would fail at once (no data); the checks below must refuse before any


def _cli(capsys, *args: str) -> tuple[int, str]:
    """``disvae sweep ARGS``: the exit code and stderr, which must be one line, no traceback."""
    from disvae.cli import main

    capsys.readouterr()
    code = main(["sweep", *args, "--no-progress"])
    err = capsys.readouterr().err
    if code == 2:
        assert "Traceback" not in err and err.startswith("disvae: error: ") and err.count("\n") == 1
    return code, err


def _snapshot(path):
    return {p.relative_to(path): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({runs.CONFIG: "{}", runs.MODEL: "weights", "metrics.json": "{}"}, "training run"),
        ({"notes.txt": "mine", "data/x.npz": "x"}, "not empty"),
    ],
)
def test_sweep_refuses_an_out_that_is_a_run_or_other_files(tmp_path, capsys, files, needle,
                                                           dry_run):  # fmt: skip
    out = tmp_path / "out"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _snapshot(out)
    args = [str(_write(tmp_path, BROKEN)), "--out", str(out)] + ["--dry-run"] * dry_run
    code, err = _cli(capsys, *args)
    assert code == 2 and needle in err and "--out" in err
    assert _snapshot(out) == before  # nothing written, nothing touched


def test_sweep_resumes_only_into_its_own_directory(tmp_path, capsys):
    from disvae.sweep.runner import prepare

    out = tmp_path / "out"
    assert len(prepare(load_sweep("tiny"), out)) == 4
    before = _snapshot(out)
    other = _write(tmp_path, BROKEN, "other.toml")
    for extra in ([], ["--dry-run"]):
        code, err = _cli(capsys, str(other), "--out", str(out), *extra)
        assert code == 2 and "sweep 'tiny', not 'other'" in err
    assert _snapshot(out) == before
    assert _cli(capsys, "tiny", "--out", str(out), "--dry-run")[0] == 0
    assert len(prepare(load_sweep("tiny"), out)) == 4  # the same sweep resumes
    (out / S.META).unlink()  # a sweep directory made before sweep.json resumes too
    assert len(prepare(load_sweep("tiny"), out)) == 4 and (out / S.META).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(prepare(load_sweep("tiny"), empty)) == 4  # an empty directory is fine


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".", "", "two words"])
def test_sweep_name_must_be_a_plain_name(tmp_path, capsys, monkeypatch, name):
    cwd = tmp_path / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    path = _write(tmp_path, f"name = {json.dumps(name)}\n" + BROKEN)
    code, err = _cli(capsys, str(path), "--dry-run")
    assert code == 2 and "not a plain sweep name" in err and str(path) in err
    assert _cli(capsys, str(path))[0] == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c", "study.toml"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("seeds = [0, 1, 0]", "seeds has 0 twice"),
        ('[grid]\n"loss.beta" = [1, 4, 1.0]', "loss.beta has 1.0 twice"),
        ('[[methods]]\nloss = "betaH"\ngrid = { "lr" = [1e-3, 1e-3] }', "lr has 0.001 twice"),
    ],
)
def test_duplicate_seeds_or_grid_values_are_refused(tmp_path, capsys, body, needle):
    code, err = _cli(capsys, str(_write(tmp_path, body)), "--dry-run")
    assert code == 2 and needle in err


@pytest.mark.parametrize(
    "args",
    [
        ["--cpus-per-run", "-1"],
        ["--cpus-per-run", "0"],
        ["--cpus-per-run", "nan"],
        ["--gpus-per-run", "-1"],
        ["--backend", "ray", "--cpus-per-run", "-1"],
        ["--backend", "ray", "--gpus-per-run", "-0.5"],
    ],
)
def test_bad_resources_per_run_are_refused(tmp_path, capsys, args):
    out = tmp_path / "out"
    code, err = _cli(capsys, str(_write(tmp_path, BROKEN)), "--out", str(out), *args)
    flag = args[-2]
    assert code == 2 and f"{flag} must be a number" in err and not out.exists()
    assert _cli(capsys, str(_write(tmp_path, BROKEN)), "--dry-run", *args)[0] == 2
    from disvae.sweep.runner import check_resources

    check_resources(0.5, 0.25)  # fractions are fine


@pytest.mark.parametrize("dry_run", [True, False])
def test_out_that_is_a_file_is_refused_even_on_dry_run(tmp_path, capsys, dry_run):
    path = tmp_path / "results.csv"
    path.write_text("mine\n")
    code, err = _cli(capsys, "tiny", "--out", str(path), *["--dry-run"] * dry_run)
    assert code == 2 and "is a file" in err and path.read_text() == "mine\n"


def test_two_methods_with_one_name_are_refused(tmp_path, capsys):
    """The results and the page group runs by method name, so two methods named alike (here by
    their loss, neither has a name) would be merged; a distinct name makes the sweep valid."""
    two = '[[methods]]\nloss = "betaH"\n\n[[methods]]\nloss = "betaH"\nset = {{ lr = 1e-3 }}{}\n'
    code, err = _cli(capsys, str(_write(tmp_path, two.format(""))), "--dry-run")
    assert code == 2 and "#1 and [[methods]] #2 are both named 'betaH'" in err
    named = _write(tmp_path, two.format('\nname = "betaH_fast"'), "named.toml")
    assert _cli(capsys, str(named), "--dry-run")[0] == 0
    assert {r.method for r in load_sweep(str(named)).runs} == {"betaH", "betaH_fast"}


def test_dry_run_checks_the_default_out(tmp_path, capsys, monkeypatch):
    """Without --out a dry run checks sweeps/out/<name>, as the real run would."""
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "sweeps" / "out" / "tiny"
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("mine")
    code, err = _cli(capsys, "tiny", "--dry-run")
    assert code == 2 and "not empty" in err
    (taken / "notes.txt").unlink()
    assert _cli(capsys, "tiny", "--dry-run")[0] == 0


# --------------------------------------------------------------------------- audit: bad specs


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('seed = "abc"\n[random]\nn = 2\nlr = { uniform = [1e-4, 1e-3] }', "seed must be"),
        ("seed = -1\n[random]\nn = 2\nlr = { uniform = [1e-4, 1e-3] }", "seed must be"),
        ('imports = "os"', "imports must be a list"),  # (was imported letter by letter)
        ("imports = 5", "imports must be a list"),
        ("[evaluate]\nmetrics = 5", "metrics must be a list"),
        ('[evaluate]\nheldout = "yes"', "heldout must be true or false"),
        ("[evaluate]\nn_samples = -5", "n_samples must be an integer >= 1"),
        ('[evaluate]\nn_test = "many"', "n_test must be an integer >= 1"),
        ("[evaluate]\nbatch_size = 0", "batch_size must be an integer >= 1"),
        ('[evaluate]\ndci_model = "xyz"', "dci_model must be one of"),
        ("methods = []", "methods is empty"),
        ('[[methods]]\nname = ""\nloss = "betaH"', "name must be a non-empty string"),
        ("[random]\nn = 2\nlr = { uniform = [1e-3, 1e-4] }", "lo <= hi"),
        ("[random]\nn = 2\nlr = { loguniform = [1e-4, inf] }", "finite numbers"),
        ("[random]\nn = 2\nlatent_dim = { int = [2.5, 3.7] }", "integers with lo <= hi"),
        ("[random]\nn = 3", "no key to draw"),
        ("[random]\nn = 50000\nlr = { uniform = [1e-4, 1e-3] }", "more than the 10,000 runs"),
        ("seeds = [0, 1, 2, 3, 4]\n[grid]\nlatent_dim = [" + ", ".join(map(str, range(1, 51)))
         + "]\nlr = [" + ", ".join(f"{i}e-4" for i in range(1, 51)) + "]",
         "more than 10,000 runs"),
    ],
)  # fmt: skip
def test_malformed_sweep_values_are_one_line_errors(tmp_path, capsys, body, needle):
    """Wrong types, empty or inverted ranges and absurd sizes are refused when the file is
    expanded (exit 2, one line), not with a traceback, a run that fails later, or a hang."""
    path = _write(tmp_path, body)
    code, err = _cli(capsys, str(path), "--dry-run")
    assert code == 2 and needle in err and str(path) in err, err


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[grid]\nbeta = [1, 4]\n"loss.beta" = [2]', "'beta' and 'loss.beta' are the same key"),
        ('[grid]\n"loss.beta" = [1, 4]\n[random]\nn = 2\nbeta = { uniform = [1, 2] }',
         "loss.beta is swept by both grid and [random]"),
        ('[random]\nn = 2\nbeta = { uniform = [1, 2] }\n[[methods]]\nloss = "betaH"\n'
         'random = { n = 3, "loss.beta" = { uniform = [3, 4] } }',
         "loss.beta is swept by both [random] and random"),
        ('seeds = [0, 1]\n[grid]\n"train.seed" = [0, 1]',
         "train.seed is swept by both grid and seeds"),
        ("[random]\nn = 5\nbeta = { choice = [1, 2] }", "are the same run"),
        ('[[methods]]\nname = "a/b"\nloss = "betaH"\n[[methods]]\nname = "a_b"\nloss = "betaH"',
         "are the same run"),
    ],
)  # fmt: skip
def test_a_run_made_twice_under_two_names_is_refused(tmp_path, capsys, body, needle):
    """A key swept in two places (or spelt two ways), or a random choice drawn twice, made runs
    with one config under two names (`-2` suffix, or `seed=1-seed=0` trained with seed 0)."""
    text = body if "[[methods]]" in body else body + '\n[[methods]]\nloss = "betaH"'
    code, err = _cli(capsys, str(_write(tmp_path, text)), "--dry-run")
    assert code == 2 and needle in err, err


def test_a_method_grid_overrides_the_shared_one_however_the_key_is_spelt(tmp_path):
    text = '[grid]\nbeta = [1, 4]\n[[methods]]\nloss = "betaH"\ngrid = { "loss.beta" = [2] }'
    sweep = load_sweep(_write(tmp_path, text))
    assert [(r.name, r.config.loss.beta) for r in sweep.runs] == [("betaH-beta=2-seed=1234", 2)]


def test_long_run_names_are_shortened_to_fit_a_directory(tmp_path):
    """Run names are directory names (at most 255 bytes): a long method name with many swept
    keys made `prepare` fail with OSError "File name too long"."""
    from disvae.sweep.runner import prepare
    from disvae.sweep.spec import MAX_NAME

    keys = {"lr": "loguniform = [1e-4, 1e-3]", "beta": "uniform = [1, 10]",
            "latent_dim": "int = [4, 12]", "lr_warmup": "int = [0, 1000]",
            "lr_floor": "uniform = [0, 0.1]", "grad_clip": "uniform = [1, 100]",
            "nan_lr_factor": "uniform = [0.1, 0.9]", "reg_anneal": "int = [0, 10000]",
            "val_fraction": "uniform = [0.01, 0.1]"}  # fmt: skip
    text = f'[[methods]]\nname = "{"m" * 120}"\nloss = "betaH"\n[random]\nn = 3\n' + "".join(
        f'"{k}" = {{ {v} }}\n' for k, v in keys.items()
    )
    path = _write(tmp_path, text)
    names = [r.name for r in load_sweep(path).runs]
    assert names == [r.name for r in load_sweep(path).runs]  # the same on every expansion
    assert len(set(names)) == 3 and all(len(n) <= MAX_NAME for n in names)
    assert all(n.startswith("m" * 120 + "-lr=") for n in names)
    todo = prepare(load_sweep(path), tmp_path / "out")
    assert sorted(p.name for p in todo) == sorted(names)


# --------------------------------------------------------------------------- audit: results


def test_results_and_page_survive_damaged_run_files(tmp_path):
    """A metrics.json (or eval_losses.json, train log, state) that is valid JSON of the wrong
    shape crashed `write_results` with AttributeError, and with it the whole sweep (results
    are rewritten as each run ends); such a run now only lacks those values."""
    from disvae.sweep import build_sweep_report
    from disvae.sweep.results import write_results
    from disvae.sweep.runner import prepare

    slots = prepare(load_sweep("tiny"), tmp_path)
    good = {"metrics": {"mig": 0.25, "dci": {"disentanglement": 0.5}}}
    damaged = [
        {"metrics.json": "[]", runs.EVAL_LOSSES: '{"losses": 5}'},
        {"metrics.json": '{"metrics": [1, 2]}', runs.TRAIN_LOG: '{"step": 2}\n[1, 2]\n'},
        {"metrics.json": "null", runs.TRAIN_LOG: "7\n"},
        {"metrics.json": json.dumps(good), runs.TRAIN_LOG: '{"step": 4, "loss": 3.5}\n'},
    ]
    for slot, files in zip(slots, damaged, strict=True):
        (slot / S.RUN).mkdir()
        for name, text in files.items():
            (slot / S.RUN / name).write_text(text)
        S.write_state(slot, status="done")
    (slots[2] / S.STATE).write_text("[]")  # a state that is no object: pending
    write_results(tmp_path)
    rows = read_results(tmp_path)
    assert [r["status"] for r in rows] == ["done", "done", "pending", "done"]
    assert [r["mig"] for r in rows] == [None, None, None, 0.25]
    assert rows[3]["dci/disentanglement"] == 0.5 and rows[3]["train/loss"] == 3.5
    assert [r["step"] for r in rows] == [None, None, None, 4]
    assert "mig" in build_sweep_report(tmp_path).read_text()


def test_done_run_with_a_damaged_metrics_file_is_evaluated_again(tiny_sweep, tmp_path):
    """A finished run whose metrics.json is missing or corrupt stayed `done` with empty metric
    cells on every resume; it is now evaluated again (not trained again)."""
    out = tmp_path / "tiny"
    shutil.copytree(tiny_sweep[0], out)
    slot = out / S.RUNS / "betaH-beta=4-seed=0"
    (slot / S.RUN / "metrics.json").write_text('{"metrics": {"mig": 0.1')  # cut short
    weights = (slot / S.RUN / runs.MODEL).stat().st_mtime_ns
    summary = run_sweep("tiny", out, progress=False)
    assert summary.ran == [slot.name]
    state = S.read_state(slot)
    assert state["status"] == "done" and state["attempts"] == 2
    assert (slot / S.RUN / runs.MODEL).stat().st_mtime_ns == weights  # not retrained
    _assert_complete(read_results(out))


def test_list_valued_swept_key_on_the_page(tmp_path):
    """A grid over a list-valued key (``model.hidden = [[64], [128]]``) crashed the page
    (`set` of unhashable lists)."""
    from disvae.sweep import build_sweep_report
    from disvae.sweep.runner import prepare

    text = _tiny_with_methods(
        '[[methods]]\nloss = "betaH"\nset = { "model.arch" = "conv" }\n'
        'grid = { "model.hidden" = [[64], [128]] }\n'
    )
    slots = prepare(load_sweep(_write(tmp_path, text)), tmp_path / "out")
    for i, slot in enumerate(slots):
        (slot / S.RUN).mkdir()
        (slot / S.RUN / "metrics.json").write_text(json.dumps({"metrics": {"mig": 0.1 * i}}))
        S.write_state(slot, status="done")
    page = build_sweep_report(tmp_path / "out").read_text()
    assert page.count("data:image/png;base64,") == 1 and "[128]" in page


# --------------------------------------------------------------------------- audit: workers


def test_worker_that_dies_before_its_run_starts_fails_it(tmp_path, capsys, monkeypatch):
    """A worker that could not start its run (it died at import, say) left the run `pending`:
    the sweep said "0 failed" and exited 0 with nothing trained."""
    import sys

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\"\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    out = tmp_path / "out"
    code, _ = _cli(capsys, str(_write(tmp_path, BROKEN)), "--out", str(out), "-q")
    assert code == 1
    state = S.read_state(out / S.RUNS / "betaH-seed=1234")
    assert state["status"] == "failed"
    assert state["error"].startswith("worker process died: exit status 1")
    assert "No module named 'torch'" in state["error"]


def test_record_exit_leaves_interrupted_runs_pending(tmp_path):
    from disvae.sweep.runner import _record_exit

    for rc, interrupted, status in [(130, False, "pending"), (-2, True, "pending"),
                                    (3, False, "pending"), (1, False, "failed")]:  # fmt: skip
        S.write_state(tmp_path, status="pending")
        _record_exit(tmp_path, rc, interrupted)
        assert S.read_state(tmp_path)["status"] == status, rc
    S.write_state(tmp_path, status="done")
    _record_exit(tmp_path, -9)
    assert S.read_state(tmp_path)["status"] == "done"


def test_a_stop_reaches_a_worker_started_while_the_sweep_stops(tmp_path, monkeypatch):
    """A worker thread past its stop check but not yet in `live` when Ctrl-C/SIGTERM arrived
    was never told to stop: its run trained on to the end while the sweep waited."""
    import subprocess
    import threading
    import time

    from disvae.sweep import runner

    slots = [tmp_path / "a", tmp_path / "b"]
    for slot in slots:
        slot.mkdir()
    b_starting = threading.Event()
    signalled = []

    class FakeWorker:
        def __init__(self, cmd, **kw):
            self.name = cmd[-1].rsplit("/", 1)[-1]
            self.ended = threading.Event()
            if self.name == "a":
                self.ended.set()  # a finishes at once
            else:  # b is starting (past its stop check) when the sweep is stopped
                b_starting.set()
                time.sleep(0.5)

        def wait(self):
            self.ended.wait(10)
            return 0 if self.name == "a" else 130

        def send_signal(self, sig):
            signalled.append(self.name)
            self.ended.set()

    def finished(slot):
        # (waiting here makes the order certain: b's thread may not have begun when a ends,
        # and a b that never passed its stop check is rightly never started nor signalled)
        assert b_starting.wait(10)
        raise KeyboardInterrupt  # Ctrl-C while the sweep records a

    monkeypatch.setattr(subprocess, "Popen", FakeWorker)
    with pytest.raises(KeyboardInterrupt):
        runner._run_local(slots, 2, finished)
    assert signalled == ["b"]


# --------------------------------------------------------------------------- audit: Ray


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        (None, "cannot start a local Ray: ConnectionError: no room"),
        ("auto", "cannot join the Ray cluster at --address auto: ConnectionError: no room"),
        ("127.0.0.1:1", "nothing answers there"),  # refused at once, not after Ray's retries
    ],
)
def test_ray_that_cannot_start_is_a_one_line_error(tmp_path, capsys, monkeypatch, address,
                                                    needle):  # fmt: skip
    import sys
    import types

    calls = []

    def init(**kw):
        calls.append(kw)
        raise ConnectionError("no room\nmore lines")

    fake = types.SimpleNamespace(
        remote=lambda **kw: lambda f: f, is_initialized=lambda: False, init=init
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    args = [str(_write(tmp_path, BROKEN)), "--backend", "ray", "--out", str(tmp_path / "o"), "-q"]
    code, err = _cli(capsys, *args, *(["--address", address] if address else []))
    assert code == 2 and needle in err, err
    assert len(calls) == (0 if address == "127.0.0.1:1" else 1)


def test_the_documented_sweep_file_expands_without_duplicates(tmp_path):
    """docs/sweep.md's example drew `choice = [50000, 100000]` twice per point: half its
    "annealed" runs were another run's copy under a `-2` name."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "sweep.md").read_text()
    text = doc.split("## The sweep file")[1].split("```toml")[1].split("```")[0]
    sweep = load_sweep(_write(tmp_path, text, "beta_study.toml"))
    assert len(sweep.runs) == 3 * 2 * 8 * (3 + 3 * 2)  # seeds × latent_dim × n × methods
    assert not any(r.name.endswith("-2") for r in sweep.runs)


def test_a_model_setting_the_architecture_ignores_fails_when_expanded(tmp_path):
    """It used to pass expansion and fail every run seconds into its training."""
    text = _tiny_with_methods('[[methods]]\nloss = "betaH"\nset = { "model.hidden" = [64] }\n')
    with pytest.raises(UserError, match=r"model.hidden is not used by arch 'burgess'"):
        load_sweep(_write(tmp_path, text))
