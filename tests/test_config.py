"""Config: defaults per objective, overrides, files, presets, and errors that name the key."""

import json

import pytest

from disvae import config as C
from disvae.errors import UserError


def test_objective_defaults_fill_only_used_keys():
    cfg = C.resolve(C.RunConfig(loss=C.LossConfig(name="betaB")))
    assert (cfg.loss.gamma, cfg.loss.c_init, cfg.loss.c_fin, cfg.loss.c_steps) == (
        1000.0, 0.0, 25.0, 100_000)  # fmt: skip
    assert cfg.loss.beta is None and cfg.loss.alpha is None
    tc = C.resolve(C.apply_overrides(C.RunConfig(), ["loss=btcvae", "beta=8"]))
    assert (tc.loss.alpha, tc.loss.beta, tc.loss.gamma, tc.loss.sampling) == (1.0, 8.0, 1.0, "mws")


def test_rec_dist_defaults_to_dataset_and_scale_to_likelihood():
    cfg = C.resolve(C.RunConfig(), default_rec_dist="gaussian")
    assert cfg.loss.rec_dist == "gaussian" and cfg.loss.rec_scale == 0.1
    assert C.resolve(C.RunConfig()).loss.rec_scale is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss=nope"], "unknown loss 'nope'"),
        (["loss=betaH", "beta=-1"], "loss.beta must be non-negative"),
        (["latent_dim=0"], "model.latent_dim must be positive"),
        (["loss=betaB", "beta=3"], "loss.beta is not used by loss 'betaB'"),
        (["rec_dist=poisson"], "unknown rec_dist"),
        (["loss=btcvae", "sampling=abc"], "loss.sampling must be mws or mss"),
        (["val_fraction=1.5"], "data.val_fraction"),
        (["loss=betaH", "beta=inf"], "--set: loss.beta must be a finite number, got inf"),
        (["lr=nan"], "train.lr must be a finite number"),
        (["split_seed=-1"], "data.split_seed must be non-negative"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        C.resolve(C.apply_overrides(C.RunConfig(), overrides))


def test_steps_and_epochs_a_later_source_replaces_the_other(tmp_path):
    # betaH_mnist gives epochs = 100; --steps (or --set steps) after it must win, not clash.
    preset = C.load_preset("betaH_mnist")
    assert preset.train.epochs == 100.0 and preset.train.steps is None
    cfg = C.resolve(C.apply_overrides(preset, ["steps=20"]))
    assert (cfg.train.steps, cfg.train.epochs) == (20, None)
    cfg = C.apply_overrides(cfg, ["epochs=0.5"])
    assert (cfg.train.steps, cfg.train.epochs) == (None, 0.5)
    # Clearing one leaves the other alone; one source that gives both is refused.
    assert C.apply_overrides(preset, ["steps=none"]).train.epochs == 100.0
    both = tmp_path / "both.toml"
    both.write_text("[train]\nsteps = 10\nepochs = 2.0\n")
    with pytest.raises(UserError, match="both.toml: give train.steps or train.epochs, not both"):
        C.resolve(C.load_file(both))  # (the file is named: it is the one to fix)


def test_set_parses_toml_values_and_resolves_short_keys():
    cfg = C.apply_overrides(C.RunConfig(), ["lr=5e-4", "train.batch_size=32", "data.path=/x y"])
    assert cfg.train.lr == 5e-4 and cfg.train.batch_size == 32 and cfg.data.path == "/x y"
    assert C.apply_overrides(cfg, ["data.path=none"]).data.path is None


@pytest.mark.parametrize(
    "item, message",
    [
        ("nokey=1", "unknown config key 'nokey'"),
        ("lr", "expected key=value"),
        ("batch_size=1.5", "train.batch_size must be int"),
        ("batch_size=true", "train.batch_size must be int"),
        ("lr=fast", "train.lr must be float"),
        ("train.nope=1", "unknown config key"),
    ],
)
def test_bad_overrides(item, message):
    with pytest.raises(UserError, match=message):
        C.apply_overrides(C.RunConfig(), [item])


def test_toml_file_round_trip_and_unknown_keys(tmp_path):
    cfg = C.apply_overrides(C.RunConfig(), ["loss=factor", "gamma=35", "steps=100"])
    path = tmp_path / "c.toml"
    path.write_text(C.dumps_toml(cfg))
    assert C.load_file(path) == cfg
    path.write_text("[train]\nlearning_rate = 1e-3\n")
    with pytest.raises(UserError, match="unknown key train.learning_rate"):
        C.load_file(path)
    path.write_text("[optim]\nlr = 1e-3\n")
    with pytest.raises(UserError, match=r"unknown section \[optim\]"):
        C.load_file(path)
    path.write_text("[train\nlr = ")
    with pytest.raises(UserError, match="not valid toml"):
        C.load_file(path)
    with pytest.raises(UserError, match="not found"):
        C.load_file(tmp_path / "missing.toml")


def test_json_config_ignores_provenance(tmp_path):
    record = C.to_dict(C.RunConfig()) | {"versions": {"torch": "x"}, "git_commit": None}
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert C.load_file(tmp_path / "config.json") == C.RunConfig()


def test_every_shipped_preset_resolves():
    names = C.preset_names()
    for loss in ("vae", "betaH", "betaB", "factor", "btcvae"):
        assert f"{loss}_dsprites" in names
    for name in names:
        cfg = C.resolve(C.load_preset(name))
        assert cfg.loss.name in C.OBJECTIVE_DEFAULTS
    with pytest.raises(UserError, match="unknown preset 'zzz'; choose one of"):
        C.load_preset("zzz")


def test_total_steps_from_epochs():
    t = C.TrainConfig(epochs=2.0, batch_size=10)
    assert C.total_steps(t, 1000) == 200
    assert C.total_steps(C.TrainConfig(steps=7), 1000) == 7
    assert C.total_steps(C.TrainConfig(), 1000) == C.DEFAULT_STEPS


def test_config_file_that_is_a_directory_or_not_a_table(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object of sections"):
        C.load_file(listed)
    with pytest.raises(UserError, match="is a directory"):
        C.load_file(tmp_path)
