"""`evaluate_metrics` and `disvae evaluate --metrics` on a tiny trained run over a small dSprites
grid with factors."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from disvae import config as C
from disvae.data.base import DatasetInfo
from disvae.data.ground_truth import GridDataset
from disvae.errors import UserError
from disvae.evaluation import evaluate_metrics, metrics_during_training, resolve_metric_names

# A sub-grid of dSprites: 3 shapes, 2 scales, 2 orientations, 6 x 6 positions = 432 images.
PICK = ([0, 1, 2], [0, 5], [0, 10], [0, 6, 12, 18, 24, 31], [0, 6, 12, 18, 24, 31])


def small_grid() -> GridDataset:
    from disvae.data.dsprites import render

    sizes = tuple(len(p) for p in PICK)
    local = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)
    full = np.stack([np.array(p)[local[:, k]] for k, p in enumerate(PICK)], axis=1)
    packed = np.packbits(render(full).reshape(len(full), -1), axis=1)
    info = DatasetInfo("dsprites_grid_test", (1, 64, 64), "bernoulli")
    values = [np.array(p, dtype=float) for p in PICK]
    return GridDataset(packed, info, True, ["shape", "scale", "orientation", "x", "y"], values)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from disvae.training import train

    cfg = C.apply_overrides(
        C.RunConfig(),
        ["loss=betaH", "dataset=dsprites_tiny", "batch_size=32", "steps=30", "log_every=10",
         "checkpoint_every=100", "lr=1e-3", "snapshot_every=0"],
    )  # fmt: skip
    return train(cfg, tmp_path_factory.mktemp("m") / "r", data=small_grid(), progress=False)


KW = {"n_samples": 300, "n_test": 150, "seed": 3, "dci_model": "lasso"}


def test_all_metrics_end_to_end(run):
    data = small_grid()
    res = evaluate_metrics(run, "all", data=data, device="cpu", **KW)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(res["metrics"]))
    m = res["metrics"]
    assert set(m) == {"aam", "beta_vae", "dci", "factor_vae", "mig", "mig_chen", "modularity",
                      "sap", "unsupervised"}  # fmt: skip
    assert 0 <= m["mig"] <= 1 and set(m["dci"]) == {"disentanglement", "completeness",
                                                    "informativeness"}  # fmt: skip
    assert m["unsupervised"]["reconstruction_error"] > 0
    assert saved["step"] == 30 and "sklearn" in saved["versions"]
    assert saved["protocol"]["seed"] == 3 and saved["protocol"]["n_bins"] == 20
    # every distinct image is encoded at most once by the batch scores
    assert res["protocol"]["points_encoded"] <= 450 + len(data)
    again = evaluate_metrics(run, "mig,sap", data=small_grid(), device="cpu", **KW)
    assert again["metrics"]["mig"] == m["mig"] and again["metrics"]["sap"] == m["sap"]


def test_unknown_or_factorless_metrics_are_user_errors():
    with pytest.raises(UserError, match="unknown metric 'nope'"):
        resolve_metric_names("mig,nope", True)
    with pytest.raises(UserError, match="needs ground-truth factors"):
        resolve_metric_names(["mig"], False)
    assert resolve_metric_names("all", False) == ["unsupervised"]


def test_labelled_dataset_gets_the_metrics_on_codes(run, caplog):
    from disvae.data.ground_truth import LabeledDataset

    grid = small_grid()
    index = np.arange(len(grid))
    labelled = LabeledDataset(
        (grid.numpy_images(index) * 255).astype(np.uint8),
        grid.info, False, grid.factor_names, grid.classes_of(index).astype(float), [True] * 5,
    )  # fmt: skip
    with pytest.raises(UserError, match="full factor grid"):
        resolve_metric_names("beta_vae", "labels")
    with caplog.at_level(logging.WARNING, logger="disvae.evaluation"):
        res = evaluate_metrics(run, "all", data=labelled, device="cpu", **KW)
    assert "beta_vae" not in res["metrics"] and "factor_vae" not in res["metrics"]
    # More points than images: said, not silent (the train and test sets share images).
    said = [r.getMessage() for r in caplog.records if "with replacement" in r.getMessage()]
    n = KW["n_samples"] + KW["n_test"]
    assert n > len(labelled) and len(said) == 1 and f"from a dataset of {len(labelled)}" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="disvae.evaluation"):
        evaluate_metrics(run, "mig", data=labelled, device="cpu", n_samples=300, n_test=100)
    assert not [r for r in caplog.records if "with replacement" in r.getMessage()]
    # The labels are the grid's classes, so MIG estimates the same quantity from other draws.
    on_grid = evaluate_metrics(run, "mig", data=grid, device="cpu", **KW)["metrics"]["mig"]
    assert res["metrics"]["mig"] == pytest.approx(on_grid, abs=0.1)


def test_an_undefined_metric_is_nan_in_python_and_null_in_strict_json_metrics(run):
    """One varied factor (MNIST's label, say): DCI's disentanglement and modularity are
    undefined. `evaluate_metrics` returns NaN; metrics.json holds null, not Python's NaN token,
    which strict JSON readers (jq, JavaScript) refuse; the report's table says "undefined"."""
    from disvae.data.ground_truth import LabeledDataset
    from disvae.report.content import read_metrics
    from disvae.report.html import _metrics_rows

    grid = small_grid()
    index = np.arange(len(grid))
    labels = grid.classes_of(index)[:, :1].astype(float)  # the shape alone
    one = LabeledDataset((grid.numpy_images(index) * 255).astype(np.uint8), grid.info, False,
                         ["shape"], labels, [True])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="undefined with one varied factor"):
        res = evaluate_metrics(run, "dci,modularity", data=one, device="cpu", **KW)
    assert math.isnan(res["metrics"]["dci"]["disentanglement"])
    text = (run / "metrics.json").read_text()

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    saved = json.loads(text, parse_constant=refuse)["metrics"]
    assert saved["dci"]["disentanglement"] is None and saved["modularity"]["modularity"] is None
    assert saved["dci"]["completeness"] == res["metrics"]["dci"]["completeness"]  # defined
    rows = dict(_metrics_rows(read_metrics(run)))
    assert rows["dci.disentanglement"] == "undefined"
    assert isinstance(rows["dci.completeness"], float)


def test_batch_scores_encode_each_image_once_when_they_need_most_of_them(run):
    data = small_grid()
    res = evaluate_metrics(run, "factor_vae", data=data, device="cpu", **KW)
    # 450 points * 64 draws >> 432 images: one ordered pass over the dataset, nothing twice.
    assert res["protocol"]["points_encoded"] == 450 + len(data)


def test_factorless_dataset_gets_the_unsupervised_measures(run, tiny_data):
    res = evaluate_metrics(run, "all", data=tiny_data, device="cpu", n_samples=200, n_test=50)
    assert set(res["metrics"]) == {"unsupervised"}


def test_metrics_during_training_is_flat_and_deterministic(run):
    from disvae import runs

    model, _ = runs.load_run(run)
    a = metrics_during_training(model, small_grid(), ["mig", "modularity"], 1, 200)
    assert set(a) == {"mig", "modularity/modularity", "modularity/explicitness"}
    assert a == metrics_during_training(model, small_grid(), ["mig", "modularity"], 1, 200)


def test_cli(run, capsys, monkeypatch):
    from disvae import cli

    monkeypatch.setattr("disvae.data.load_data", lambda data_cfg: small_grid())
    argv = ["evaluate", str(run), "--metrics", "mig,dci", "--n-samples", "200", "--n-test", "100",
            "--dci-model", "lasso", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    said = capsys.readouterr()
    out = said.out
    assert "dci/disentanglement" in out and "mig" in out
    # stdout holds the result table alone (for a file or a pipe); progress lines go to stderr
    mig = json.loads((run / "metrics.json").read_text())["metrics"]["mig"]
    assert said.out.count(f"{mig:.4f}") == 1 and f"mig {mig:.4f} (" in said.err
    # The CLI leaves the batch to the device's default (200 on the CPU) and records it.
    protocol = json.loads((run / "metrics.json").read_text())["protocol"]
    assert (protocol["encode_batch"], protocol["encode_amp"]) == (200, "none")
    assert cli.main([*argv, "--batch-size", "50", "--amp", "bf16"]) == 0
    protocol = json.loads((run / "metrics.json").read_text())["protocol"]
    assert (protocol["encode_batch"], protocol["encode_amp"]) == (50, "bf16")
    assert cli.main(["evaluate", str(run), "--metrics", "bogus", "--device", "cpu"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_bf16_encoding_is_close_to_fp32_and_recorded(run):
    """The CUDA default (bf16 autocast of the encoding) runs on the CPU too: its codes round to
    bf16's 8-bit mantissa (0.4% relative), so MIG moves by a bin boundary at most, and the
    reconstruction error (fp32 likelihood of bf16 logits) stays within 1%."""
    import torch

    from disvae.evaluation import _encode_points, encode_amp, inference_copy

    assert encode_amp("auto", torch.device("cpu")) == "none"
    assert encode_amp("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(UserError, match="amp must be"):
        encode_amp("fp8", torch.device("cpu"))
    ref = evaluate_metrics(run, "mig,unsupervised", data=small_grid(), device="cpu", **KW)
    bf = evaluate_metrics(run, "mig,unsupervised", data=small_grid(), device="cpu", amp="bf16",
                          **KW)  # fmt: skip
    assert ref["protocol"]["encode_amp"] == "none" and bf["protocol"]["encode_amp"] == "bf16"
    assert ref["protocol"]["encode_batch"] == 200  # the CPU default
    assert abs(bf["metrics"]["mig"] - ref["metrics"]["mig"]) < 0.05
    r, b = (x["metrics"]["unsupervised"]["reconstruction_error"] for x in (ref, bf))
    assert abs(b - r) <= 0.01 * r
    # The codes themselves: bf16 differs from fp32, by about bf16's rounding and no more.
    from disvae.evaluation import _open_run

    model = inference_copy(_open_run(run, small_grid(), "cpu")[0])
    index = np.arange(64)
    mu32, _, _ = _encode_points(model, small_grid(), index, None, 64, lambda n: None, "none")
    mu16, _, _ = _encode_points(model, small_grid(), index, None, 64, lambda n: None, "bf16")
    err = np.abs(mu16 - mu32).max() / np.abs(mu32).max()
    assert 1e-5 < err < 3e-2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--metrics", "mig", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),
        (["--metrics", "mig_chen", "--n-samples", "1", "--n-test", "1"],
         "metric 'mig_chen' needs at least 100 training points, got --n-samples 1; "
         "pass --n-samples 100 or more"),
        (["--metrics", "aam", "--n-samples", "1", "--n-test", "1"], "metric 'aam' needs at least"),
        (["--metrics", "beta_vae", "--n-samples", "100", "--n-test", "1"],
         "metric 'beta_vae' needs at least 50 test points, got --n-test 1; pass --n-test 50"),
        (["--metrics", "dci", "--n-samples", "2", "--n-test", "100"],
         "metric 'dci' needs at least 100 training points"),
        (["--metrics", "all", "--n-samples", "99"], "needs at least 100 training points"),
    ],
)  # fmt: skip
def test_bad_seed_or_too_few_points_is_one_line_and_leaves_metrics_json(
    run, capsys, monkeypatch, flags, message
):
    from disvae import cli

    monkeypatch.setattr("disvae.data.load_data", lambda data_cfg: small_grid())
    (run / "metrics.json").write_text("{}")
    assert cli.main(["evaluate", str(run), *flags, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (run / "metrics.json").read_text() == "{}"


def test_minimum_points_cover_every_metric_and_training_names_eval_samples(run):
    from disvae import runs
    from disvae.evaluation import MIN_POINTS
    from disvae.metrics import METRICS

    assert set(MIN_POINTS) == set(METRICS.names())
    model, _ = runs.load_run(run)
    need = r"needs eval_samples 100 or more during training, got 20; pass --set eval_samples=100$"
    with pytest.raises(UserError, match=need):
        metrics_during_training(model, small_grid(), ["mig"], 1, 20)
    with pytest.raises(UserError, match="seed must be a non-negative integer"):
        metrics_during_training(model, small_grid(), ["mig"], -1, 200)


# ---------------------------------------------------------------------- disvae encode


def test_encode_run_gives_each_images_posterior_and_factors(run, tmp_path):
    import torch

    from disvae import runs
    from disvae.data.batching import split_indices
    from disvae.evaluation import encode_run, write_codes

    grid = small_grid()
    codes = encode_run(run, data=grid, device="cpu", batch_size=100)  # 5 batches, one short
    assert codes["mu"].shape == codes["logvar"].shape == (432, 10)
    assert codes["mu"].dtype == np.float32 and int(codes["step"]) == 30
    assert (codes["index"] == np.arange(432)).all()
    # The grid's last factor varies fastest: image 0 is every factor's first class, image 431
    # every last one, image 1 the second y position (PICK[4][1] = 6).
    assert codes["factor_classes"][[0, 1, 431]].tolist() == [[0] * 5, [0, 0, 0, 0, 1],
                                                             [2, 1, 1, 5, 5]]  # fmt: skip
    assert codes["factor_values"][[1, 431]].tolist() == [[0, 0, 0, 0, 6], [2, 5, 10, 31, 31]]
    assert codes["factor_names"].tolist() == ["shape", "scale", "orientation", "x", "y"]
    # The same numbers as the model's own encoder on those images (NCHW, one batch).
    model, _ = runs.load_run(run)
    with torch.no_grad():
        mu, logvar = model.encode(grid.batch(torch.arange(432)))
    np.testing.assert_allclose(codes["mu"], mu.numpy(), atol=1e-4)
    np.testing.assert_allclose(codes["logvar"], logvar.numpy(), atol=1e-4)
    # The run's own splits, and a file numpy reads back without pickle.
    cfg = runs.read_config(run)
    train_idx, val_idx = split_indices(432, cfg.data.val_fraction, cfg.data.split_seed)
    val = encode_run(run, split="val", data=grid, device="cpu")
    assert (val["index"] == val_idx).all() and len(val_idx) > 0
    np.testing.assert_array_equal(val["mu"], codes["mu"][val_idx])
    assert (encode_run(run, split="train", data=grid, device="cpu")["index"] == train_idx).all()
    path = write_codes(val, tmp_path / "val.npz")
    with np.load(path, allow_pickle=False) as back:
        assert set(back.files) == set(val) and (back["factor_names"] == val["factor_names"]).all()
        np.testing.assert_array_equal(back["mu"], val["mu"])


def test_encode_of_labels_and_of_factorless_data(run, tiny_data):
    from disvae.data.ground_truth import LabeledDataset
    from disvae.evaluation import encode_run

    grid = small_grid()
    index = np.arange(len(grid))
    raw = grid.values_of(grid.classes_of(index)) + 0.25  # raw label values, not classes
    labelled = LabeledDataset((grid.numpy_images(index) * 255).astype(np.uint8), grid.info,
                              False, grid.factor_names, raw, [True] * 5)  # fmt: skip
    codes = encode_run(run, data=labelled, device="cpu")
    np.testing.assert_array_equal(codes["factor_values"], raw)
    np.testing.assert_array_equal(codes["factor_classes"], grid.classes_of(index))
    plain = encode_run(run, split="val", data=tiny_data, device="cpu")
    assert not {"factor_classes", "factor_values", "factor_names"} & set(plain)


def test_encode_cli_and_its_one_line_errors(run, capsys, tmp_path):
    from disvae import cli

    before = {p.name for p in run.iterdir()}
    (tmp_path / "dir.npz").mkdir()
    assert cli.main(["encode", str(run), "--split", "val", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(val)" in out and "at step 30" in out and "written to" in out
    with np.load(run / "codes.npz", allow_pickle=False) as codes:
        assert codes["mu"].shape[1] == 10 and len(codes["index"]) == len(codes["mu"]) > 0
    assert {p.name for p in run.iterdir()} - before == {"codes.npz"}
    for argv, message in [
        (["-o", str(tmp_path / "codes.txt")], "ending in .npz"),
        (["-o", str(tmp_path / "no" / "codes.npz")], "is not a directory"),
        (["--weights", "best"], "best.safetensors"),
        (["--split", "test"], "invalid choice"),
        (["-o", str(tmp_path / "dir.npz")], "it is a directory"),
    ]:
        assert cli.main(["encode", str(run), "--device", "cpu", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], (argv, err)
    assert not (tmp_path / "codes.txt").exists()
    assert cli.main(["encode", str(tmp_path / "nothing")]) == 2
    assert "nothing' does not exist" in capsys.readouterr().err


def test_metrics_are_logged_as_name_value_pairs_not_python_dicts(run, caplog):
    from disvae.evaluation import format_metrics

    values = {"dci": {"completeness": 0.51234, "per_factor": [0.1, 0.2]}, "mig": 0.2}
    assert format_metrics(values) == "dci/completeness 0.5123, mig 0.2000"
    with caplog.at_level(logging.INFO, logger="disvae.evaluation"):
        res = evaluate_metrics(run, "modularity", data=small_grid(), device="cpu", **KW)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("modularity/")]
    m = res["metrics"]["modularity"]
    assert said == [
        f"modularity/modularity {m['modularity']:.4f}, modularity/explicitness "
        f"{m['explicitness']:.4f} ({res['protocol']['seconds']['modularity']:.1f}s)"
    ]


def _nan_copy(run, tmp_path):
    """A copy of ``run`` whose final weights are well-formed but give NaN codes (one NaN bias
    in the encoder, checksummed like the trainer's own files)."""
    import shutil
    from pathlib import Path

    import torch

    from disvae.training.checkpoint import load_state, save_state

    bad = tmp_path / "nan_run"
    shutil.copytree(run, bad)
    tensors, meta = load_state(Path(bad / "model.safetensors"))
    name = next(k for k in tensors if k.startswith("model.encoder") and k.endswith("bias"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_state(bad / "model.safetensors", tensors, meta)
    return bad


def test_non_finite_codes_are_one_line_errors_that_keep_the_files(
    run, tmp_path, capsys, monkeypatch
):
    """A model that gives NaN used to write NaN into eval_losses.json (invalid JSON, exit 0)
    and end `--metrics` in a ValueError's traceback."""
    from disvae import cli

    bad = _nan_copy(run, tmp_path)
    monkeypatch.setattr("disvae.data.load_data", lambda data_cfg: small_grid())
    (bad / "eval_losses.json").write_text("{}")
    (bad / "metrics.json").write_text("{}")
    assert cli.main(["evaluate", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "held-out losses" in err and "are not finite (loss" in err
    argv = ["evaluate", str(bad), "--metrics", "mig,sap", "--n-samples", "100", "--n-test",
            "50", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite posterior means" in err
    assert "for 150 of 150 images" in err
    assert (bad / "eval_losses.json").read_text() == "{}"
    assert (bad / "metrics.json").read_text() == "{}"
    # encode keeps what the encoder gives (the file is valid), but says so
    with pytest.warns(RuntimeWarning, match="give NaN or infinite means and log-variances"):
        from disvae.evaluation import encode_run

        codes = encode_run(bad, split="val", data=small_grid(), device="cpu")
    assert np.isnan(codes["mu"]).all()


def test_a_failed_write_is_one_line_and_leaves_the_earlier_file(run, tmp_path, capsys, monkeypatch):
    """A full disk while writing eval_losses.json, metrics.json or codes.npz: a one-line error
    (exit 2), not a traceback, and the earlier file whole."""
    import errno
    import os

    from disvae import cli

    monkeypatch.setattr("disvae.data.load_data", lambda data_cfg: small_grid())
    out = tmp_path / "codes.npz"
    files = {"eval_losses.json": run / "eval_losses.json", "metrics.json": run / "metrics.json",
             "codes.npz": out}  # fmt: skip
    for path in files.values():
        path.write_bytes(b"earlier")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    for argv, name in [
        (["evaluate", str(run)], "eval_losses.json"),
        (["evaluate", str(run), "--metrics", "mig", "--n-samples", "100"], "metrics.json"),
        (["encode", str(run), "--split", "val", "-o", str(out)], "codes.npz"),
    ]:
        assert cli.main([*argv, "--device", "cpu", "-q"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cannot write {str(files[name])!r}: No space" in err
    assert all(p.read_bytes() == b"earlier" for p in files.values())
    assert not [p for p in (*run.iterdir(), *tmp_path.iterdir()) if p.name.endswith(".tmp")]


def test_moved_data_must_hold_the_runs_images(run, tiny_data, capsys, monkeypatch):
    """`--data-path` to a dataset of another size would move the held-out split onto training
    images; it is refused, as `train --resume` refuses it."""
    from disvae import cli
    from disvae.evaluation import check_moved_data

    check_moved_data(run, small_grid())  # the run's own images: fine
    with pytest.raises(UserError, match="is not what it trained on"):
        check_moved_data(run, tiny_data)
    monkeypatch.setattr("disvae.runs.data_at", lambda run_dir, path: tiny_data)
    for argv in (["evaluate", str(run)], ["encode", str(run), "-o", "/nonexistent.npz"]):
        assert cli.main([*argv, "--data-path", "elsewhere", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "point --data-path at the same dataset" in err


def test_api_batch_size_and_a_file_for_a_run_are_user_errors(run, capsys):
    import disvae
    from disvae import cli
    from disvae.evaluation import encode_run

    for call in (
        lambda: disvae.evaluate(run, batch_size=0, data=small_grid()),
        lambda: encode_run(run, batch_size=-3, data=small_grid()),
        lambda: evaluate_metrics(run, "mig", batch_size=2.5, data=small_grid()),
    ):
        with pytest.raises(UserError, match="batch_size must be a positive integer"):
            call()
    assert cli.main(["evaluate", str(run / "config.json")]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err
