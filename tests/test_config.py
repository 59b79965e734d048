"""Config: defaults per objective, overrides, files, presets, and errors that name the key."""

import json
import typing

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
        # a model setting the architecture would ignore: refused before any data is loaded
        (["hidden=[64]"], "model.hidden is not used by arch 'burgess'"),
        (["arch=conv", "fusion=[8]"], "model.fusion is not used by arch 'conv'"),
        (["arch=stacked", "tower=burgess", "channels=[8]"],
         "model.channels is not used by arch 'stacked' with tower 'burgess'"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        C.resolve(C.apply_overrides(C.RunConfig(), overrides))


def test_model_settings_of_an_architecture_registered_elsewhere_are_left_to_it():
    cfg = C.apply_overrides(C.RunConfig(), ["arch=mine", "hidden=[64]", "tower=x"])
    assert C.resolve(cfg).model.hidden == (64,)  # (its builder checks what it reads)


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


@pytest.mark.parametrize(
    "item, message",
    [
        ("lrr=1e-3", r"unknown config key 'lrr' \(did you mean lr\?\)"),
        ("train.lrr=1e-3", r"unknown config key 'train.lrr' \(did you mean train.lr\?\)"),
        ("trian.lr=1e-3", r"'trian.lr' \(did you mean train.lr\?\)"),
        ("gama=3", r"'gama' \(did you mean gamma\?\)"),
        ("latent=3", r"'latent' \(did you mean latent_dim\?\)"),
    ],
)
def test_a_mistyped_key_names_the_near_one(item, message):
    with pytest.raises(UserError, match=message):
        C.apply_overrides(C.RunConfig(), [item])
    with pytest.raises(UserError) as e:  # nothing near: no guess
        C.apply_overrides(C.RunConfig(), ["xyzzy=1"])
    assert "did you mean" not in str(e.value)


def test_a_mistyped_file_key_section_or_preset_names_the_near_one(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlrr = 1e-3\n")
    with pytest.raises(UserError, match=r"unknown key train.lrr \(did you mean train.lr\?\)"):
        C.load_file(path)
    path.write_text("[trian]\nsteps = 20\n")
    with pytest.raises(UserError, match=r"unknown section \[trian\] \(did you mean train\?\)"):
        C.load_file(path)
    with pytest.raises(UserError, match=r"'betaH_dsprite' \(did you mean betaH_dsprites\?\)"):
        C.load_preset("betaH_dsprite")
    with pytest.raises(UserError, match=r"unknown preset '\.\./presets/betaH_dsprites'"):
        C.load_preset("../presets/betaH_dsprites")  # a name, never a path


def test_a_key_above_every_section_says_where_it_belongs(tmp_path):
    # It used to be called an unknown section [steps].
    path = tmp_path / "c.toml"
    path.write_text("steps = 20\n")
    with pytest.raises(UserError, match=r"steps = \.\.\. stands outside any section; put it "
                                        r"under \[train\]$"):  # fmt: skip
        C.load_file(path)
    path.write_text("lrr = 20\n")
    with pytest.raises(UserError, match=r"no known key \(did you mean train.lr\?\)"):
        C.load_file(path)


def test_a_json_config_of_ones_own_is_checked_like_toml(tmp_path):
    # Only a run's config.json (it has "versions") drops the non-setting keys: a misspelt
    # section in a hand-written JSON file was silently ignored (300,000 default steps).
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"trian": {"steps": 20}}))
    with pytest.raises(UserError, match=r"unknown section \[trian\] \(did you mean train\?\)"):
        C.load_file(path)
    path.write_text(json.dumps({"train": {"steps": 20}}))
    assert C.load_file(path).train.steps == 20


def test_seeds_beyond_64_bits_are_refused_with_the_limit():
    # 10**20 used to end in a traceback from torch.manual_seed ("Overflow when unpacking").
    for key in ("seed", "split_seed"):
        with pytest.raises(UserError, match=rf"{key} must be at most 2\*\*63 - 1"):
            C.resolve(C.apply_overrides(C.RunConfig(), [f"{key}={10**20}"]))
    cfg = C.resolve(C.apply_overrides(C.RunConfig(), [f"seed={C.MAX_SEED}"]))
    assert cfg.train.seed == 2**63 - 1


def test_apply_overrides_takes_one_string_as_one_override():
    assert C.apply_overrides(C.RunConfig(), "steps=10").train.steps == 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss=btcvea"], r"unknown loss 'btcvea' \(did you mean btcvae\?\); choose one of: vae"),
        (["rec_dist=gausian"], r"unknown rec_dist 'gausian' \(did you mean gaussian\?\); choose"),
        (["loss=btcvae", "sampling=msw"], r"must be mws or mss, got 'msw' \(did you mean mws\?\)"),
        (["lr_schedule=cosin"], r"got 'cosin' \(did you mean cosine\?\)$"),
        (["datset=mnist"], r"unknown config key 'datset' \(did you mean dataset\?\)"),
        (["los=btcvae"], r"unknown config key 'los' \(did you mean loss\?\)"),
    ],
)
def test_a_mistyped_name_or_choice_names_the_near_one(overrides, message):
    """As a mistyped preset did: `--loss btcvea` listed the losses but named none."""
    with pytest.raises(UserError, match=message):
        C.resolve(C.apply_overrides(C.RunConfig(), overrides))
    with pytest.raises(UserError) as e:  # nothing near: no guess
        C.resolve(C.apply_overrides(C.RunConfig(), ["loss=zzz"]))
    assert "did you mean" not in str(e.value)


def test_every_registry_names_the_near_name():
    from disvae.data import DATASETS
    from disvae.losses.objectives import OBJECTIVES
    from disvae.metrics import METRICS
    from disvae.models.vae import ARCHITECTURES

    for registry, typo, near in [
        (DATASETS, "dsprite", "dsprites"),
        (ARCHITECTURES, "burges", "burgess"),
        (METRICS, "migg", "mig"),
        (OBJECTIVES, "betah", "betaH"),
    ]:
        with pytest.raises(UserError, match=rf"unknown \w+ '{typo}' \(did you mean {near}\?\); "
                                            "choose one of: "):  # fmt: skip
            registry.get(typo)
        with pytest.raises(UserError) as e:
            registry.get("zzzzzz")
        assert "did you mean" not in str(e.value)


def test_metric_names_of_evaluate_and_eval_metrics_name_the_near_one():
    from disvae.evaluation import resolve_metric_names

    with pytest.raises(UserError, match=r"unknown metric 'dcii' \(did you mean dci\?\)"):
        resolve_metric_names("mig,dcii", "grid")


@pytest.mark.parametrize(
    "item, message",
    [
        # None or 0 means "all"/"off": the word is refused with the spelling that means it
        ("val_images=all", r"--set: train.val_images must be int or null, got 'all'; "
                           r"--set val_images=none means all held-out images$"),
        ("subset=all", r"--set subset=none means all images$"),
        ("workers=all", r"--set workers=none means all CPUs$"),
        ("grad_clip=off", r"--set grad_clip=none means no clipping$"),
        ("eval_every=never", r"--eval-every 0 means no metrics during training$"),
        ("val_every=off", r"--val-every 0 means no held-out losses$"),
        ("snapshot_every=off", r"--snapshot-every 0 means no training.gif$"),
        ("compile=off", r"train.compile must be bool, got 'off'; write --compile or --no-compile$"),
        ("shared_tower=yes", r"write --set shared_tower=true or --set shared_tower=false, or "
         r"--set shared_tower=none for the default \(one tower for each patch\)$"),
        ("cuda_graph=auto", r"write --cuda-graph or --no-cuda-graph, or --set cuda_graph=none "
         r"for the default \(on for one process on CUDA\)$"),
        ("lr=fast", r"train.lr must be float, got 'fast'$"),  # nothing to suggest
        # the word none for a string key: the flag, else a --set the shell leaves intact
        ("amp=none", r"train.amp must be a string; for the word none write --amp none$"),
        ("nan_check=none", r"""for the word none write --set 'nan_check="none"'$"""),
    ],
)  # fmt: skip
def test_a_word_for_all_or_off_names_its_spelling(item, message):
    """`--set val_images=all` said `must be int or null, got 'all'`, not how to say all."""
    with pytest.raises(UserError, match=message):
        C.apply_overrides(C.RunConfig(), [item])


def test_the_spelling_follows_the_source(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nval_images = "all"\n')
    with pytest.raises(UserError, match=r'; val_images = "none" means all held-out images$'):
        C.load_file(path)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"eval_every": "never"}}))
    with pytest.raises(UserError, match=r'; "eval_every": 0 means no metrics during training$'):
        C.load_file(path)


def test_special_values_are_real_keys_and_accepted():
    for key, (value, _) in C.SPECIAL_VALUES.items():
        section, _, name = key.partition(".")
        cfg = C.from_dict({section: {name: value}})
        C.check(cfg)
        assert getattr(getattr(cfg, section), name) == value


def test_typed_names_the_flag_or_a_set_the_parser_and_config_accept():
    """Messages name a setting as it is typed: `pass eval_samples 100` named no flag."""
    import shlex

    from disvae import cli

    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    options = {o for a in train._actions for o in a.option_strings}
    for key in cli.FLAG_KEYS.values():  # every flag of a key is a real option
        assert C.typed(key, 1).split()[0] in options
        section, _, name = key.partition(".")
        if "bool" in str(typing.get_type_hints(type(getattr(C.RunConfig(), section)))[name]):
            assert C.typed(key, False) in options  # --no-compile
    assert C.typed("train.eval_samples", 100) == "--set eval_samples=100"
    assert C.typed("train.lr", 1e-3) == "--lr 0.001"
    assert C.typed("train.cuda_graph", False) == "--no-cuda-graph"
    assert C.typed("data.name", None) == "--set data.name=none"  # two sections have `name`
    for key, value in [
        ("train.nan_check", "none"),
        ("train.nan_check", "deferred"),
        ("model.tower", "true"),
        ("data.subset", None),
        ("train.eval_samples", 5),
    ]:
        words = shlex.split(C.typed(key, value))
        assert words[0] == "--set"
        section, _, name = key.partition(".")
        cfg = C.apply_overrides(C.RunConfig(), words[1:])
        assert getattr(getattr(cfg, section), name) == value


def test_combination_errors_name_flags_or_set():
    with pytest.raises(UserError, match=r"; use --set nan_check=auto or drop --cuda-graph$"):
        C.check(C.apply_overrides(C.RunConfig(), ["cuda_graph=true", "nan_check=step"]))
    graph_and_compile = ["cuda_graph=true", "compile=true", "compile_mode=max-autotune"]
    message = r"use --compile-mode default or --compile-mode max-autotune-no-cudagraphs with "
    with pytest.raises(UserError, match=message + "--cuda-graph$"):
        C.check(C.apply_overrides(C.RunConfig(), graph_and_compile))
