"""The `disvae` command: a thin shell; each subcommand calls one library function.

Nothing heavy is imported at module level, so `disvae --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from disvae import __version__
from disvae.cli_format import HelpFormatter
from disvae.config import (  # no torch behind it: --help stays fast
    AMP_MODES,
    COMPILE_MODES,
    FLAG_KEYS,
)
from disvae.errors import UserError


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_int_or_all(text: str) -> int | None:
    """A positive integer, or ``all`` (None: no limit)."""
    if text.strip().lower() == "all":
        return None
    try:
        return _positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or all, got {text}") from None


class _Parser(argparse.ArgumentParser):
    """Errors in one line (the project's rule for bad input), pointing at --help instead of
    printing the usage, which runs to 25 lines for `disvae train`; exit code 2 as argparse's.

    Options must be spelled in full: argparse's prefix matching would take ``--metric`` for
    ``--metrics`` or ``--los`` for ``--loss``, and an option added later could silently change
    what a saved command means. A misspelt option is refused by its own command's parser, with
    the nearest option named."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        flags = [a.split("=", 1)[0] for a in extras if a.startswith("-") and a != "-"]
        if flags and " " in self.prog:  # a command's parser: `disvae train`
            from disvae.errors import closest

            # (compared without the "--" every option shares, which made --frob near --lr)
            known = {o[2:]: o for a in self._actions for o in a.option_strings if o[:2] == "--"}
            near = closest(flags[0].lstrip("-"), known)
            hint = f" (did you mean {known[near]}?)" if near else ""
            self.error(f"unknown option {flags[0]}{hint}")
        if extras and " " in self.prog:  # a word too many: `disvae evaluate RUN1 RUN2`
            self.error(f"unexpected argument {extras[0]!r}")
        if extras:  # (a command's parser has refused its own): before the command, `disvae -q ..`
            self.error(f"{extras[0]} before the command; options go after the command's name "
                       f"(`disvae CMD {extras[0]}`)")  # fmt: skip
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="disvae",
        description="Train, evaluate and look at disentangling VAEs (VAE, beta-VAE_H, "
        "beta-VAE_B, FactorVAE, beta-TCVAE).",
        epilog="Run `disvae CMD --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"disvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="CMD", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_encode(sub)
    _add_data(sub)
    from disvae.cli_viz import add_plot_parser, add_report_parser

    add_plot_parser(sub)
    add_report_parser(sub)
    from disvae.cli_sweep import add_sweep_parser

    add_sweep_parser(sub)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")


def _add_train(sub: argparse._SubParsersAction) -> None:
    S = argparse.SUPPRESS  # flags left out do not override the preset/config file
    p = sub.add_parser(
        "train", help="train a model into a run directory",
        description="Train a model. Settings come from (later wins): defaults, --preset, "
        "--config, the flags below, --set key=value.",
        formatter_class=HelpFormatter, argument_default=S,
    )  # fmt: skip
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run directory to create (default: runs/LOSS_DATASET_TIME)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    g.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its newest checkpoint; only the length of training, the "
        "device, the logging, checkpoint, snapshot, validation and metrics intervals and the "
        "speed settings may change",
    )
    g.add_argument("--preset", help="a shipped config, e.g. betaB_dsprites (see --list-presets)")
    g.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything as training would (settings, data, model, --out), print the "
        "resolved config as TOML (a --config file) with the run's size, and exit; writes nothing",
    )
    g.add_argument("--config", metavar="FILE", help="a TOML or JSON config file")
    g.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        dest="overrides",
        help="override any config key, e.g. --set lr=5e-4 --set loss.beta=8",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(g)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="dataset name (default: dsprites)")
    g.add_argument("--data-path", help="where the dataset's files are (dsprites: optional)")
    g.add_argument("--val-fraction", type=float, help="held-out share of the data (default 0.1)")
    g.add_argument("--split-seed", type=int, help="seed of the train/val split (default 0)")
    g.add_argument("--subset", type=_positive_int, help="use only this many images")
    g.add_argument("--img-size", type=_positive_int, help="image side (default: the dataset's)")
    g.add_argument("--workers", type=_positive_int, help="image-decoding processes (all CPUs)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", help="architecture (default: burgess)")
    g.add_argument("--latent-dim", type=int, help="number of latent dimensions (default: 10)")
    g = p.add_argument_group("objective")
    g.add_argument("--loss", help="vae | betaH | betaB | factor | btcvae (default: betaB)")
    g.add_argument("--rec-dist", help="pixel likelihood: bernoulli | gaussian | laplace")
    g.add_argument("--rec-scale", type=float, help="sigma (gaussian) or b (laplace); default 0.1")
    g.add_argument("--beta", type=float, help="betaH: KL weight (4); btcvae: TC weight (6)")
    g.add_argument(
        "--gamma",
        type=float,
        help="betaB: capacity weight (1000); factor: TC weight "
        "(6); btcvae: dimension-wise KL weight (1)",
    )
    g.add_argument("--alpha", type=float, help="btcvae: mutual-information weight (1)")
    g.add_argument("--c-init", type=float, help="betaB: capacity at step 0, nats (0)")
    g.add_argument("--c-fin", type=float, help="betaB: final capacity, nats (25)")
    g.add_argument("--c-steps", type=int, help="betaB: steps to anneal the capacity (100000)")
    g.add_argument("--lr-disc", type=float, help="factor: discriminator learning rate (5e-5)")
    g.add_argument(
        "--sampling",
        choices=("mws", "mss"),
        help="btcvae: minibatch weighted or stratified sampling estimate of q(z) (mws)",
    )
    g.add_argument("--reg-anneal", type=int, help="steps of linear warm-up of the regulariser (0)")
    g = p.add_argument_group("optimisation")
    length = g.add_mutually_exclusive_group()  # either replaces a preset's or config's other
    length.add_argument("--steps", type=int, help="optimisation steps (default 300000)")
    length.add_argument(
        "--epochs", type=float, help="passes over the training split, instead of steps"
    )
    g.add_argument("--batch-size", type=int, help="images per step (default 64)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 5e-4)")
    g.add_argument("--seed", type=int, help="seed of weights, data order and sampling (1234)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (5000)")
    g.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept (3)")
    g.add_argument("--log-every", type=int, help="steps between log lines (100)")
    g.add_argument(
        "--snapshot-every",
        type=int,
        help="steps between frames of training.gif (default: 50 frames in all; 0: none)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        help="steps between metrics computed during "
        "training and logged with the losses (default 0: never)",
    )
    g.add_argument("--eval-metrics", help="metrics for --eval-every, comma-separated (mig)")
    g.add_argument(
        "--lr-schedule", choices=("none", "step", "cosine"),
        help="learning-rate schedule: step (x --lr-decay every --lr-decay-every epochs), "
        "cosine (to --lr-floor x lr at the last step) (none)",
    )  # fmt: skip
    g.add_argument("--lr-decay-every", type=float, help="step schedule: epochs per decay (10)")
    g.add_argument("--lr-decay", type=float, help="step schedule: factor at each decay (0.5)")
    g.add_argument("--lr-floor", type=float, help="cosine: final lr as a fraction of --lr (0)")
    g.add_argument("--lr-warmup", type=int, help="steps of linear learning-rate warm-up (0)")
    g.add_argument("--grad-clip", type=float, help="maximal global gradient norm (default off)")
    g.add_argument(
        "--val-every", type=int,
        help="steps between held-out losses (val/* in the log) and keeping the best weights "
        "in RUN/best.safetensors (default 0: never)",
    )  # fmt: skip
    g.add_argument(
        "--val-images", type=_positive_int_or_all,
        help="held-out images used by --val-every, or all (default 5000)",
    )  # fmt: skip
    g = p.add_argument_group("speed")
    g.add_argument(
        "--amp", choices=AMP_MODES,
        help="bf16 autocast of the forward pass; losses stay fp32 (auto: bf16 on CUDA and on "
        "CPUs with bf16 units, AVX512-BF16 or AMX; DISVAE_CPU_BF16=0 keeps fp32 there)",
    )  # fmt: skip
    g.add_argument(
        "--compile", action=argparse.BooleanOptionalAction,
        help="torch.compile the model (falls back to eager if compilation fails) (off)",
    )  # fmt: skip
    g.add_argument(
        "--compile-mode", choices=COMPILE_MODES, metavar="MODE",
        help="torch.compile mode, implies --compile: default | reduce-overhead (CUDA graphs of "
        "the model only; turns the recorded whole step off, which is faster on CUDA) | "
        "max-autotune (likewise) | max-autotune-no-cudagraphs (default: default)",
    )  # fmt: skip
    g.add_argument(
        "--cuda-graph", action=argparse.BooleanOptionalAction,
        help="capture the whole training step in one CUDA graph and replay it (default: on for "
        "one process on CUDA, unless --deterministic, nan_check=step or a compile mode that "
        "records CUDA graphs itself)",
    )  # fmt: skip
    g.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction,
        help="NHWC memory format (default: on CUDA and the CPU, off on MPS)",
    )  # fmt: skip
    g.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction,
        help="deterministic kernels only (cuDNN, torch.use_deterministic_algorithms), so a GPU "
        "run is reproducible bit for bit; slower on a GPU (off)",
    )  # fmt: skip
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="held-out losses or disentanglement metrics of a run",
        description="Without --metrics: the objective's terms over the whole held-out split of "
        "RUN, written to RUN/eval_losses.json. With --metrics: disentanglement metrics (see "
        "docs/metrics.md), written to RUN/metrics.json and printed as a table.",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    p.add_argument("run", help="a run directory written by `disvae train`")
    p.add_argument(
        "--metrics",
        help="comma-separated metric names or 'all': mig, mig_chen, aam, sap, dci, modularity, "
        "beta_vae, factor_vae, unsupervised",
    )
    p.add_argument(
        "--n-samples", type=_positive_int, default=10_000,
        help="training points of the metrics (MIG, SAP, DCI, modularity, β-VAE, FactorVAE, ...)",
    )  # fmt: skip
    p.add_argument("--n-test", type=_positive_int, default=5_000, help="test/evaluation points")
    p.add_argument(
        "--val-images", type=_positive_int_or_all,
        help="held-out losses of a seeded subset of N held-out images (the one training's "
        "--val-images N scores), or all (default)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw of the metrics")
    p.add_argument("--n-bins", type=_positive_int, default=20, help="bins of MIG and modularity")
    p.add_argument(
        "--dci-model",
        choices=("gbt", "sklearn", "lasso"),
        default="gbt",
        help="DCI's regressor: boosted trees (fast, default), scikit-learn's own (exact, slow), "
        "or the paper's Lasso",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--batch-size", type=_positive_int,
        help="images per forward (default: 1000; for --metrics 1000 on a GPU and 200 on the "
        "CPU)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--amp", choices=AMP_MODES, default="auto",
        help="precision of the metrics' encoding: auto is bf16 autocast on a CUDA GPU with bf16 "
        "support and on a CPU with bf16 units, fp32 elsewhere",
    )  # fmt: skip
    p.add_argument("--data-path", help="where the dataset is, if not where training found it")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)


def _add_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="the posterior codes of a run's dataset, to an .npz file",
        description="Encode every image of RUN's dataset (or its train or held-out split) and "
        "write the posterior means and log-variances, the images' indices and, where the "
        "dataset has known factors, their classes, values and names, to an .npz file that "
        "numpy.load reads without pickle. See docs/evaluate.md.",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    p.add_argument("run", help="a run directory written by `disvae train`")
    p.add_argument("-o", "--out", help="the .npz file to write (default: RUN/codes.npz)")
    p.add_argument("--split", choices=("all", "train", "val"), default="all",
                   help="which images: all, or the run's training or held-out split")  # fmt: skip
    p.add_argument(
        "--weights", default="final",
        help="final | best | latest | the path of one of the run's checkpoints",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--batch-size", type=_positive_int,
                   help="images per forward (default: 1000 on a GPU, 200 on the CPU)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--amp", choices=AMP_MODES, default="auto",
        help="auto is bf16 autocast on a CUDA GPU with bf16 support and on a CPU with bf16 "
        "units, fp32 elsewhere",
    )  # fmt: skip
    p.add_argument("--data-path", help="where the dataset is, if not where training found it")
    _add_common(p)
    p.set_defaults(func=cmd_encode)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect a dataset", description="See docs/data.md.")
    dsub = p.add_subparsers(dest="data_command", metavar="DATACMD", required=True)
    q = dsub.add_parser(
        "info", help="what a dataset path holds: files, images, shape, factors, cache",
        description="Load dataset NAME from --data-path (building its cache if needed) and "
        "print what was found.",
    )  # fmt: skip
    q.add_argument("name", help="dataset name, e.g. mnist, cifar10, shapes3d, celeba, folder")
    q.add_argument("--data-path", help="where the dataset's files are")
    q.add_argument("--img-size", type=_positive_int, help="image side (default: the dataset's)")
    q.add_argument("--workers", type=_positive_int, help="image-decoding processes (all CPUs)")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_common(q)
    q.set_defaults(func=cmd_data_info)


# ---------------------------------------------------------------------- commands


def cmd_data_info(args: argparse.Namespace) -> int:
    import json

    from disvae.data import describe

    info = describe(args.name, args.data_path, args.img_size, args.workers)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    files = info["files"]
    shown = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
    c, h, w = info["image_shape"]
    continuous = set(info["continuous_factors"])
    factors = (
        ", ".join(
            f"{k} ({v} bins of a continuous value)" if k in continuous else f"{k} ({v})"
            for k, v in info["factors"].items()
        )
        or "none"
    )
    lines = [
        f"dataset:    {info['name']} from {info['path'] or 'the built-in source'}",
        f"files:      {shown or 'none (built in)'}",
        f"images:     {info['n_images']} of {c}x{h}x{w} (channels x height x width)",
        f"likelihood: {info['default_rec_dist']} (default)",
        f"factors:    {factors}" + (" on a full grid" if info["grid"] else ""),
        f"cache:      {info['cache_file'] or 'in memory'}",
    ]
    if info["patches"]:
        lines.insert(4, f"patches:    {', '.join(info['patches'])} ({c // len(info['patches'])} "
                        "channels each)")  # fmt: skip
    print("\n".join(lines))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from disvae import config as C

    if getattr(args, "list_presets", False):
        for name in C.preset_names():
            print(name)
        return 0
    flags = {FLAG_KEYS[k]: v for k, v in vars(args).items() if k in FLAG_KEYS}
    if "train.compile_mode" in flags:  # --compile-mode implies --compile
        if flags.get("train.compile") is False:
            raise UserError(
                "--compile-mode compiles the model and --no-compile says not to; drop one"
            )
        flags.setdefault("train.compile", True)
    flag_sets = [f"{k}={_toml(v)}" for k, v in flags.items()]  # (as --set would give them)
    overrides = getattr(args, "overrides", None) or []
    if hasattr(args, "resume") and getattr(args, "dry_run", False):
        raise UserError(
            f"--dry-run shows a new run; a resumed run's settings are in {args.resume}/config.json"
        )
    if hasattr(args, "resume"):
        cfg, out = _resume_config(args, flag_sets + list(overrides))
    else:
        cfg = C.RunConfig()
        if hasattr(args, "preset"):
            cfg = C.load_preset(args.preset, cfg)
        if hasattr(args, "config"):
            cfg = C.load_file(args.config, cfg)
        cfg = C.apply_overrides(cfg, flag_sets, source="command line")
        cfg = C.apply_overrides(cfg, overrides)
        out = Path(getattr(args, "out", None) or _default_out(cfg))
    if getattr(args, "dry_run", False):
        return _dry_run(cfg, out, getattr(args, "overwrite", False))
    from disvae import runs
    from disvae.training import runtime, train

    runtime.last_stop_signal = runtime.last_stop_step = None
    t0 = time.perf_counter()
    run = train(
        cfg,
        out,
        resume=hasattr(args, "resume"),
        overwrite=getattr(args, "overwrite", False),
        progress=False if _quiet(args) or getattr(args, "no_progress", False) else None,
    )
    main_rank = _rank() == 0  # under torchrun, rank 0 speaks for the run
    # A stop before the last step is no finish, even where a model.safetensors is there: that
    # of the run this one extends (--resume RUN --steps MORE), older than the checkpoints.
    finished = (run / runs.MODEL).is_file() and runtime.last_stop_step is None
    # -q keeps the summary of a run that stopped unfinished (where it stopped, how to go on)
    if main_rank and (not _quiet(args) or not finished):
        _print_summary(run, time.perf_counter() - t0, finished)
    stopped_by = runtime.last_stop_signal
    if stopped_by is None or (main_rank and finished):
        return 0
    # Stopped by Ctrl-C or SIGTERM after its checkpoint: not a success, so that
    # `disvae train ... && disvae evaluate ...` does not go on with an unfinished run.
    return 128 + stopped_by


def _resume_config(args, changes: list[str]):
    from disvae import config as C
    from disvae import runs

    run = Path(args.resume)
    if hasattr(args, "out") and Path(args.out).resolve() != run.resolve():
        raise UserError("--resume continues a run in place; leave out --out (or give the same)")
    for bad in ("preset", "config", "overwrite"):
        if hasattr(args, bad):
            raise UserError(f"--{bad} cannot be combined with --resume")
    saved = runs.read_config(run)
    cfg = C.apply_overrides(saved, changes)
    C.check_resumable(saved, cfg, str(run))  # (before minutes of loading the data)
    return cfg, run


def _toml(value: object) -> str:
    """A flag's value as a TOML value for `apply_overrides` (inf and nan as TOML spells them,
    so that the config's check names them; None as the bare word none)."""
    from disvae import config as C

    return "none" if value is None else C.toml_value(value)


def _dry_run(cfg, out: Path, overwrite: bool) -> int:
    """`train --dry-run`: the resolved config as TOML, then the run's size as TOML comments
    (so that the output, saved, is a --config file)."""
    from disvae import config as C
    from disvae.training import plan

    p = plan(cfg, out, overwrite=overwrite)
    c = p["config"]
    shape = "x".join(map(str, p["image_shape"]))
    per_step = " (2 batches a step)" if c.loss.name == "factor" else ""
    params = " + ".join(f"{n:,}" for n in p["parameters"])
    print(C.dumps_toml(c).rstrip())
    print(
        f"\n# dataset {c.data.name}: {p['n_images']:,} images of {shape}; {p['n_train']:,} "
        f"train, {p['n_val']:,} held out\n"
        f"# {p['total_steps']:,} steps of batch {c.train.batch_size}{per_step}: "
        f"{p['epochs']:.3g} epochs\n"
        f"# model {c.model.arch}: {params} parameters"
        f"{' (VAE + discriminator)' if len(p['parameters']) > 1 else ''}; {p['device']}, "
        f"{p['precision']}{', the step recorded as one CUDA graph' if p['cuda_graph'] else ''}\n"
        f"# dry run: nothing written; without --dry-run it trains into {out}"
    )
    return 0


def _quiet(args: argparse.Namespace) -> bool:
    """-q/--quiet: a command that does work (train, evaluate, encode, sweep, plot, report) shows
    no progress bar and prints nothing on stdout, only warnings and errors on stderr; what it
    wrote is in its files. A query (--list-presets, data info, sweep --status or --dry-run)
    still prints its answer, and a training stopped before its end still says where and how
    to continue."""
    return bool(getattr(args, "quiet", False))


def _default_out(cfg) -> str:
    """runs/<loss>_<data>_<date-time>, with -2, -3, ... after a name already taken (two runs
    started in the same second). Under torchrun rank 0's name is the run's: only rank 0 writes
    a new run, and the other ranks' names (a second later, or -2) go unused."""
    base = f"runs/{cfg.loss.name}_{cfg.data.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while Path(out).exists():
        n += 1
        out = f"{base}-{n}"
    return out


def _print_summary(run: Path, seconds: float, done: bool) -> None:
    import json

    from disvae import runs
    from disvae.training import runtime

    lines = (
        (run / runs.TRAIN_LOG).read_text(encoding="utf-8").splitlines()
        if (run / runs.TRAIN_LOG).exists()
        else []
    )
    last = json.loads(lines[-1]) if lines else {}
    terms = "  ".join(f"{k}={last[k]:.4g}" for k in ("loss", "recon", "kl") if k in last)
    step = last.get("step", 0)
    stopped_at = runtime.last_stop_step
    if not done and stopped_at is not None and stopped_at != step:
        # stopped with a checkpoint at a step past the last log line (no line of its own)
        terms = f"(logged at step {step}: {terms})" if terms else ""
        step = stopped_at
    state = "finished" if done else "stopped"
    # A resume of a finished run trained nothing: no "in 0s" as if it had just finished.
    took = " (earlier; nothing trained now)" if runtime.last_was_noop else f" in {seconds:.0f}s"
    print(f"run {run}: {state} at step {step}{took}  {terms}")
    if done:
        print(f"held-out losses: disvae evaluate {run}")
    else:
        print(f"continue with: disvae train --resume {run}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from disvae import runs
    from disvae.evaluation import check_moved_data, evaluate, evaluate_metrics

    data = runs.data_at(args.run, args.data_path or None)
    check_moved_data(args.run, data)  # a moved dataset must hold the same images
    say = (lambda *a: None) if _quiet(args) else print
    if args.metrics is not None and args.val_images is not None:
        raise UserError("--val-images chooses the images of the held-out losses; the metrics "
                        "take --n-samples and --n-test")  # fmt: skip
    if args.metrics is not None:
        bar = None
        if not (args.no_progress or _quiet(args)) and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(desc="encode", unit="img", leave=False)

        def progress(stage: str, n: int) -> None:
            if bar is not None:
                bar.set_description(stage)
                bar.update(n)

        try:
            result = evaluate_metrics(
                args.run, args.metrics, n_samples=args.n_samples, n_test=args.n_test,
                seed=args.seed, n_bins=args.n_bins, dci_model=args.dci_model, data=data,
                batch_size=args.batch_size, device=args.device, amp=args.amp,
                progress=progress,
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
        say(_metrics_table(result))
        say(f"written to {Path(args.run) / 'metrics.json'}")
        return 0
    bar = None
    if not (args.no_progress or _quiet(args)) and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="held-out losses", unit="img", leave=False)
    try:
        result = evaluate(
            args.run, data=data, batch_size=args.batch_size or 1000, device=args.device,
            n_images=args.val_images, progress=bar.update if bar is not None else None,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    say(
        f"held-out losses of {args.run} at step {result['step']} "
        f"({result['n_images']} images, {result['seconds']}s):"
    )
    from disvae.cli_format import format_table

    rows = [
        (k, " ".join(f"{x:.3f}" for x in v) if isinstance(v, list) else f"{v:.4f}")
        for k, v in result["losses"].items()
    ]
    for line in format_table(rows, "<<"):  # (a per-dimension list starts where a value does)
        say(line)
    # (the numbers a user compares these with first, and which they differ from by design)
    say("note: codes at the posterior means and schedules (β-VAE_B's capacity, warm-up) at "
        "their final values, unlike the training log (docs/evaluate.md)")  # fmt: skip
    say(f"written to {Path(args.run) / 'eval_losses.json'}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from disvae import runs
    from disvae.evaluation import (
        CODES_FILE,
        check_codes_path,
        check_moved_data,
        encode_run,
        write_codes,
    )

    runs.read_config(args.run)  # a run at all? (its one-line error first)
    out = check_codes_path(args.out or Path(args.run) / CODES_FILE)  # before minutes of encoding
    data = runs.data_at(args.run, args.data_path or None)
    check_moved_data(args.run, data)  # a moved dataset must hold the same images
    bar = None
    if not (args.no_progress or _quiet(args)) and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="encode", unit="img", leave=False)
    t0 = time.perf_counter()
    try:
        codes = encode_run(
            args.run, split=args.split, weights=args.weights,
            data=data, batch_size=args.batch_size, device=args.device, amp=args.amp,
            progress=bar.update if bar is not None else None,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    write_codes(codes, out)
    n, d = codes["mu"].shape
    factors = ", ".join(codes["factor_names"]) if "factor_names" in codes else "none"
    if not _quiet(args):
        print(
            f"encoded {n} images ({args.split}) of {args.run} at step {int(codes['step'])} in "
            f"{time.perf_counter() - t0:.1f}s: {d} latents; factors: {factors}\nwritten to {out}"
        )
    return 0


def _metrics_table(result: dict) -> str:
    """The metrics of `evaluate_metrics` as an aligned two-column table with timings."""
    from disvae.cli_format import format_table
    from disvae.evaluation import flatten_metrics

    p = result["protocol"]
    lines = [
        f"metrics at step {result['step']} ({p['n_train']} + {p['n_test']} points, seed "
        f"{p['seed']}, {p['points_encoded']} images encoded, {p['total_seconds']}s):"
    ]
    rows = [
        (k, f"{v:.4f}", f"({p['seconds'].get(k.split('/')[0], 0.0):.1f}s)")
        for k, v in flatten_metrics(result["metrics"]).items()
    ]
    return "\n".join(lines + format_table(rows, "<>>"))


# ---------------------------------------------------------------------- entry point


def _rank() -> int:
    """This process's rank under torchrun (0 alone; a RANK that is no integer counts as 0 here:
    training refuses it with its own message)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _setup_logging(quiet: bool, debug: bool) -> None:
    """Send disvae's own log records to stderr (the library itself configures no handler)."""
    logger = logging.getLogger("disvae")
    for h in [h for h in logger.handlers if getattr(h, "_disvae_cli", False)]:
        logger.removeHandler(h)  # main() may run more than once in a process
    handler = logging.StreamHandler(sys.stderr)
    handler._disvae_cli = True  # type: ignore[attr-defined]
    fmt = "%(levelname)s %(name)s: %(message)s" if debug else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    logger.addHandler(handler)
    # Under torchrun rank 0 speaks for the run: the others' progress lines would repeat it.
    quiet = quiet or _rank() != 0
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if debug else logging.INFO)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"disvae: warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a flag it rejects (2): the same code
        return e.code if isinstance(e.code, int) else 2
    debug = getattr(args, "debug", False)
    _setup_logging(quiet=getattr(args, "quiet", False), debug=debug)
    try:
        with warnings.catch_warnings():
            if not debug:  # one line each, without Python's source-line echo
                warnings.showwarning = _show_warning
            return args.func(args)
    except UserError as e:
        if debug:
            raise
        print(f"disvae: error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        if debug:
            raise
        where = f" on {e.filename!r}" if e.filename else ""
        print(f"disvae: error: permission denied{where}; make it writable (or readable) "
              "for this user, or choose another directory", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM where a command turns it into one
        print("disvae: interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))
