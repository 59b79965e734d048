"""Evaluate a run: the objective's terms on the held-out split, and disentanglement metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from disvae import config as C
from disvae import runs
from disvae.data import ArrayDataset
from disvae.errors import UserError
from disvae.utils import check_seed

log = logging.getLogger(__name__)


@torch.inference_mode()
def heldout_losses(
    model: torch.nn.Module,
    data: ArrayDataset,
    indices: np.ndarray,
    loss_cfg: C.LossConfig,
    step: int,
    *,
    dataset_size: int,
    discriminator: torch.nn.Module | None = None,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Mean of every loss term over *all* images at ``indices`` (not a first batch).

    The model is put in eval mode: codes are the posterior means (no sampling), as in the
    held-out losses of the disentangling-vae project. Terms that depend on the minibatch
    (β-TCVAE's q(z) estimate) are computed per batch of ``batch_size`` and averaged, weighted by
    batch length. ``step`` fixes schedule values (β-VAE_B's capacity, warm-up). ``progress``:
    called with the number of images of each batch done.
    """
    from disvae.losses import LossContext, compute_loss

    if len(indices) == 0:
        raise UserError("the held-out split is empty; train with --val-fraction > 0")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = LossContext(dataset_size=dataset_size, discriminator=discriminator)
    sums: dict[str, torch.Tensor] = {}
    index = torch.as_tensor(indices, dtype=torch.int64)
    nhwc = _is_nhwc(model)  # inputs in the layout of the weights: no reorder in every conv
    for start in range(0, len(index), batch_size):
        x = data.batch(index[start : start + batch_size]).to(device)
        x = _nhwc(x) if nhwc and x.dim() == 4 else x
        result = compute_loss(model(x), x, step, loss_cfg, ctx)
        for k, v in result.terms.items():
            sums[k] = sums.get(k, 0) + v.double() * len(x)
        if progress is not None:
            progress(len(x))
    model.train(was_training)
    return {k: (v / len(index)).tolist() for k, v in sums.items()}


def _open_run(
    run_dir: Path,
    data: ArrayDataset | None,
    device: str,
    weights: str = "final",
    held_out: bool = False,
) -> tuple:
    """(model, config, saved tensors, metadata, dataset, device) of a run to evaluate, with the
    dataset (loaded as the run's config says unless given) moved to the device. ``held_out``:
    the caller uses the run's held-out split (`runs.warn_other_split`)."""
    from disvae.data import load_data
    from disvae.utils import pick_device

    model, cfg, tensors, meta = runs.load_run_state(run_dir, weights)
    dev = pick_device(device)
    if data is None:
        data = load_data(cfg.data)
        runs.check_own_data(run_dir, data)  # (a run trained on data passed in Python)
        if held_out:
            runs.warn_other_split(run_dir, data)
    runs.check_preprocessing(run_dir, data)
    data.to(dev)
    return model, cfg, tensors, meta, data, dev


def check_moved_data(run_dir: str | Path, data: ArrayDataset | None) -> None:
    """`UserError` when ``data`` (the run's dataset loaded from another ``--data-path``) is not
    what the run trained on: other image shapes or another number of images, which would move
    the held-out split onto training images (`runs.check_same_data`). None: nothing to check."""
    if data is None:
        return
    from disvae.data.batching import split_indices

    cfg = runs.read_config(run_dir)
    train_idx, val_idx = split_indices(
        len(data), cfg.data.val_fraction, cfg.data.split_seed, cfg.data.subset
    )
    runs.check_same_data(run_dir, data.image_shape, len(train_idx), len(val_idx))


def evaluate(
    run_dir: str | Path,
    *,
    data: ArrayDataset | None = None,
    batch_size: int = 1000,
    device: str = "auto",
    n_images: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Held-out losses of a run, written to ``run_dir/eval_losses.json`` and returned.

    ``n_images``: score a seeded subset of that many held-out images (the one training's
    ``val_images`` scores) instead of the whole split. ``progress``: called with the number of
    images of each batch done.
    """
    from disvae.data.batching import split_indices
    from disvae.models.discriminator import Discriminator
    from disvae.training.checkpoint import load_module_state
    from disvae.training.validation import settled_step, val_subset
    from disvae.utils import atomic_write_json

    run_dir = Path(run_dir)
    from disvae.utils import tune_allocator

    check_batch_size(batch_size)
    check_batch_size(n_images, "n_images")  # (None: all)
    tune_allocator()
    model, cfg, tensors, meta, data, dev = _open_run(run_dir, data, device, held_out=True)
    model = inference_copy(model.to(dev))
    train_idx, val_idx = split_indices(
        len(data), cfg.data.val_fraction, cfg.data.split_seed, cfg.data.subset
    )
    val_idx = val_subset(val_idx, n_images, cfg.data.split_seed)
    disc = None
    if cfg.loss.name == "factor":
        disc = Discriminator(cfg.model.latent_dim)
        load_module_state("disc", disc, tensors, str(run_dir))
        disc.to(dev).eval()
    t0 = time.perf_counter()
    # The objective with its schedules settled, as `val/loss` during training: a run stopped
    # inside a warm-up or a capacity ramp is scored by the objective it was heading for.
    losses = heldout_losses(
        model.to(dev), data, val_idx, cfg.loss, settled_step(cfg.loss, meta["step"]),
        dataset_size=len(train_idx), discriminator=disc, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    bad = [k for k, v in losses.items() if not np.all(np.isfinite(v))]
    if bad:  # a NaN would also make eval_losses.json invalid JSON for strict readers
        raise UserError(
            f"the held-out losses of {str(run_dir)!r} at step {meta['step']} are not finite "
            f"({', '.join(bad)}): its weights give NaN or infinite values on the held-out images; "
            f"{runs.EVAL_LOSSES} is left as it was"
        )
    result = {
        "step": meta["step"],
        "split": "val",
        "n_images": len(val_idx),
        "seconds": round(time.perf_counter() - t0, 2),
        "losses": losses,
    }
    _write(run_dir / runs.EVAL_LOSSES, lambda path: atomic_write_json(path, result))
    return result


def _write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(path)`` (an atomic write), an `OSError` (a full disk, a read-only directory)
    turned into a one-line `UserError`: the atomic write leaves any earlier file whole."""
    try:
        write(path)
    except OSError as e:
        raise UserError(
            f"cannot write {str(path)!r}: {e.strerror or e}; free space or make its directory "
            "writable (an earlier file there is unchanged)"
        ) from None


def check_batch_size(batch_size: Any, name: str = "batch_size") -> None:
    """`UserError` unless ``batch_size`` is None (the default) or a positive integer."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise UserError(f"{name} must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise UserError(f"{name} must be a positive integer, got {batch_size}")


def _non_finite(arrays: dict[str, np.ndarray | None]) -> tuple[list[str], int]:
    """(names of the arrays with a non-finite value, rows with one in any) of (N, ...) arrays."""
    from disvae.metrics._utils import nonfinite_rows

    names, bad = [], None
    for name, a in arrays.items():
        if a is None:
            continue
        rows = nonfinite_rows(a)
        bad = rows if bad is None else bad | rows
        if rows.any():
            names.append(name)
    return names, 0 if bad is None else int(bad.sum())


# ---------------------------------------------------------------------- disentanglement metrics

METRICS_FILE = "metrics.json"


def factor_kind(data: Any) -> str:
    """``"grid"`` (a full factor grid: every metric), ``"labels"`` (factor classes per image:
    the metrics on codes) or ``"none"`` (the unsupervised measures only)."""
    from disvae.data.ground_truth import GridDataset

    if isinstance(data, GridDataset):
        return "grid"
    return "labels" if hasattr(data, "factors_of") else "none"


def resolve_metric_names(names: Sequence[str] | str, kind: str | bool) -> list[str]:
    """Expand ``all`` and check the names against what the data offers (`factor_kind`; True
    means a grid, False no factors); `UserError` for unknown names or missing factors."""
    from disvae.metrics import METRICS

    if isinstance(kind, bool):
        kind = "grid" if kind else "none"

    def usable(spec: Any) -> bool:
        return (not spec.needs_factors or kind != "none") and (
            not spec.needs_dataset or kind == "grid"
        )

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise UserError("no metric given; choose from: all, " + ", ".join(METRICS.names()))
    if "all" in names:
        return [n for n in METRICS.names() if usable(METRICS.get(n))]
    out = []
    for n in names:
        spec = METRICS.get(n)  # UserError listing the valid names
        if spec.needs_factors and kind == "none":
            raise UserError(f"metric {n!r} needs ground-truth factors, which this dataset lacks")
        if not usable(spec):
            raise UserError(
                f"metric {n!r} draws images with chosen factor values, which needs a dataset "
                "that covers the full factor grid (dsprites, shapes3d); this one only labels "
                "its images"
            )
        out.append(n)
    return list(dict.fromkeys(out))


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` for encoding: eval mode, channels-last weights (the fast layout of
    oneDNN on the CPU, 2.7x the NCHW speed there, and of the tensor cores on CUDA). The caller's
    model, e.g. one still training, keeps its layout and its numbers."""
    import copy

    return copy.deepcopy(model).eval().to(memory_format=torch.channels_last)


def _is_nhwc(model: torch.nn.Module) -> bool:
    """Whether the model's first 4-D weight is channels-last (then so should its input be)."""
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def encode_amp(amp: str, device: torch.device) -> str:
    """What ``amp`` ("auto", "none" or "bf16") means for encoding on ``device``: "auto" as in
    training (`disvae.training.accel.auto_amp`: bf16 on a CUDA GPU with bf16 support and on a
    CPU with bf16 units)."""
    from disvae.training.accel import auto_amp

    if amp not in C.AMP_MODES:
        raise C.UserError(f"amp must be one of {', '.join(C.AMP_MODES)}, not {amp!r}")
    return auto_amp(amp, device)


def _autocast(amp: str, device: torch.device):
    """The forward's autocast context: bf16 when ``amp`` is "bf16"; outputs are cast back to
    float32 by the callers, so codes and losses leave in fp32 (rounded to bf16's 8 bits of
    mantissa: a relative 0.4%, far below the metrics' bins and regressors' resolution)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def encode_batch(batch_size: int | None, device: torch.device) -> int:
    """Images per forward when encoding: ``batch_size``, or by default 1000 on CUDA and 200 on
    the CPU (where a batch's activations stay under glibc's 32 MB mmap threshold even untuned)."""
    check_batch_size(batch_size)
    if batch_size is not None:
        return batch_size
    return 1000 if device.type == "cuda" else 200


def make_encoder(model: torch.nn.Module, batch_size: int = 1000, amp: str = "none") -> Callable:
    """``encode(images) -> (mu, logvar)`` as numpy (B, D): posterior parameters, inference mode
    (under bf16 autocast when ``amp`` is "bf16")."""
    check_batch_size(batch_size)
    device = next(model.parameters()).device

    @torch.inference_mode()
    def encode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        mus, lvs = [], []
        for s in range(0, len(x), batch_size):
            with _autocast(amp, device):
                mu, lv = model.encode(_nhwc(x[s : s + batch_size].to(device)))
            mus.append(mu.float().cpu().numpy())
            lvs.append(lv.float().cpu().numpy())
        return np.concatenate(mus), np.concatenate(lvs)

    return encode


@torch.inference_mode()
def _encode_points(
    model: torch.nn.Module,
    data: ArrayDataset,
    index: np.ndarray,
    rec: tuple[str, float | None] | None,
    bs: int,
    tick: Callable[[int], None],
    amp: str = "none",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Posterior means, log-variances (N, D) and per-image reconstruction NLL (N,) of images.

    Nothing inside the loop waits for the device: the indices go to the images' device once,
    the results stay on the model's device and come to the host in one copy at the end. (A copy
    per batch made the GPU wait for the host at every batch: 0.64 of the encoder's own speed at
    batch 1000 on an H200.) On a GPU, ``tick`` therefore counts batches queued, not finished."""
    from disvae.losses.terms import reconstruction_nll

    device = next(model.parameters()).device
    idx = torch.as_tensor(index).to(data.device)
    mus, lvs, errs = [], [], []
    for s in range(0, len(idx), bs):
        # (asynchronous only to a GPU: a copy to the host may be read before it lands)
        x = _nhwc(data.batch(idx[s : s + bs]).to(device, non_blocking=device.type == "cuda"))
        with _autocast(amp, device):
            mu, lv = model.encode(x)
            logits = model.decode(mu) if rec is not None else None
        mus.append(mu.float())
        lvs.append(lv.float())
        if logits is not None:  # the likelihood in fp32, from the (possibly bf16) logits
            errs.append(reconstruction_nll(logits.float(), x, *rec).double())
        tick(len(x))

    def host(parts: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(parts).cpu().numpy().astype(np.float64)

    return host(mus), host(lvs), host(errs) if errs else None


# Images a batch score draws per evaluation point and per image of its batch (beta_vae: pairs).
_BATCH_DRAWS = {"beta_vae": 2, "factor_vae": 1}

# The fewest (training, test) points of each metric (`--n-samples`, `--n-test`) for which its
# protocol means something (docs/metrics.md, "Minimum sample sizes"): 100 training points put 5
# on average in each of the 20 bins of the binned MIs and give the classifiers, mixtures and
# variances at least a few points per factor class; 50 test points or votes give an accuracy
# that moves in 2% steps and about 10 votes per factor for the batch scores. 0: not used.
MIN_POINTS: dict[str, tuple[int, int]] = {
    "mig": (100, 0), "mig_chen": (100, 0), "aam": (100, 0), "unsupervised": (100, 0),
    "sap": (100, 50), "dci": (100, 50), "modularity": (100, 50),
    "beta_vae": (100, 50), "factor_vae": (100, 50),
}  # fmt: skip


def check_sample_sizes(
    names: Sequence[str],
    n_samples: int,
    n_test: int,
) -> None:
    """`UserError` naming the first metric of ``names`` (resolved, no ``all``) whose protocol
    needs more training or test points than ``n_samples`` / ``n_test`` (`MIN_POINTS`)."""
    for name in names:
        need_train, need_test = MIN_POINTS.get(name, (1, 0))
        for have, need, flag, what in (
            (n_samples, need_train, "--n-samples", "training"),
            (n_test, need_test, "--n-test", "test"),
        ):
            if have < need:
                raise UserError(
                    f"metric {name!r} needs at least {need} {what} points, got {flag} {have}; "
                    f"pass {flag} {need} or more"
                )


def compute_metrics(
    model: torch.nn.Module,
    data: ArrayDataset,
    names: Sequence[str] | str,
    *,
    n_samples: int = 10_000,
    n_test: int = 5_000,
    seed: int = 0,
    n_bins: int = 20,
    dci_model: str = "gbt",
    rec: tuple[str, float | None] | None = None,
    batch_size: int | None = None,
    amp: str = "auto",
    progress: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Requested metrics of ``model`` on ``data``: ``(values, protocol)``.

    ``n_samples + n_test`` points are drawn once (uniform factors on a `GridDataset`, uniform
    images otherwise) and encoded once (posterior means, inference mode); the array metrics use
    the first ``n_samples`` as their training set (MIG, modularity's MI, mig_chen/aam's mixture)
    and the rest as the test set. β-VAE and FactorVAE scores draw their own batches through a
    `CachedEncoder`, so every distinct image is encoded at most once. ``progress(stage, n)`` is
    called with images encoded (stage "encode") and after each metric (stage = its name).
    ``batch_size`` None is 1000 images per forward on CUDA and 200 on the CPU; ``amp`` (see
    `encode_amp`) is recorded in the protocol.
    """
    from disvae.metrics import METRICS, CachedEncoder, EvalContext
    from disvae.utils import tune_allocator

    tune_allocator()
    device = next(model.parameters()).device
    amp = encode_amp(amp, device)
    batch_size = encode_batch(batch_size, device)
    check_seed(seed)
    kind = factor_kind(data)
    grid = kind == "grid"
    names = resolve_metric_names(names, kind)
    check_sample_sizes(names, n_samples, n_test)
    tick = (lambda n: progress("encode", n)) if progress else (lambda n: None)
    rng = np.random.default_rng(seed)
    n_points = n_samples + n_test
    if grid:
        classes = data.sample_factors(n_points, rng)
        index, factors = data.index_of(classes), classes
    else:
        replace = n_points > len(data)  # distinct images when there are enough
        if replace:
            log.warning(
                "the metrics ask for %d images (--n-samples %d + --n-test %d) from a dataset of "
                "%d: drawn with replacement, so the training and test sets share images; lower "
                "them for held-out scores",
                n_points, n_samples, n_test, len(data),
            )  # fmt: skip
        index = rng.choice(len(data), n_points, replace=replace)
        factors = data.factors_of(index) if kind == "labels" else None
    model = inference_copy(model)
    mu, logvar, err = _encode_points(model, data, index, rec, batch_size, tick, amp)
    bad, n_bad = _non_finite({"posterior means": mu, "log-variances": logvar,
                                 "reconstruction errors": err})  # fmt: skip
    if bad:  # the metrics would end in a ValueError's traceback (or a silent NaN)
        raise UserError(
            f"the model gives NaN or infinite {', '.join(bad)} for {n_bad} of {n_points} images "
            "drawn for the metrics: its weights are damaged or diverged, so it cannot be scored"
        )
    encode = make_encoder(model, batch_size, amp)
    cache = CachedEncoder(data, lambda x: encode(x)[0], batch_size, tick)
    draws = sum(_BATCH_DRAWS.get(n, 0) for n in names) * n_points * 64
    if grid and draws > len(data) // 2:
        # The batch scores would draw most images anyway (1.9M draws for beta_vae, 0.97M for
        # factor_vae from dSprites' 737,280): one ordered pass encodes each exactly once.
        cache.encode_all()
    params = {"seed": seed, "n_train": n_samples, "n_test": n_test, "n_bins": n_bins,
              "dci_model": dci_model, "batch_points": 64, "chen_samples": 2_000,
              "encode_amp": amp, "encode_batch": batch_size}  # fmt: skip
    ctx = EvalContext(mu, logvar, factors, data if grid else None, cache, err, params)
    values: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        values[name] = METRICS.get(name).compute(ctx)
        seconds[name] = round(time.perf_counter() - t0, 3)
        # progress on stderr, with the values (a long run's log says them as they come; the
        # CLI's table on stdout is the result, for a file or a pipe)
        log.info("%s (%.1fs)", format_metrics({name: values[name]}), seconds[name])
        if progress:
            progress(name, 0)
    protocol = dict(params, metrics=names, points_encoded=int(n_points + cache.n_encoded),
                    seconds=seconds)  # fmt: skip
    return values, protocol


def metrics_during_training(
    model: torch.nn.Module,
    dataset: ArrayDataset,
    names: Sequence[str] | str,
    rng_seed: int = 0,
    n_samples: int = 2_000,
) -> dict[str, float]:
    """Flat ``{name or name/key: float}`` metrics for the training log (e.g. every N steps).

    A cheap protocol by default (2,000 + 1,000 points); the model's train/eval mode is restored.
    Too few points for a metric (`MIN_POINTS`) is a `UserError` naming ``eval_samples``.
    """
    check_seed(rng_seed, "seed")
    resolved = check_metrics_during_training(names, dataset, n_samples)
    values, _ = compute_metrics(
        model, dataset, resolved, n_samples=n_samples, n_test=_test_points(n_samples),
        seed=rng_seed,
    )  # fmt: skip
    return flatten_metrics(values)


def _test_points(n_samples: int) -> int:
    """Test points of the protocol during training: half the training points."""
    return max(1, n_samples // 2)


def check_metrics_during_training(
    names: Sequence[str] | str, dataset: ArrayDataset, n_samples: int
) -> list[str]:
    """The resolved metric ``names`` for `metrics_during_training` on ``dataset``; `UserError`
    for unknown names, missing factors or too few points (naming ``eval_samples``). The trainer
    calls it before training starts."""
    resolved = resolve_metric_names(names, factor_kind(dataset))
    for name in resolved:
        need_train, need_test = MIN_POINTS.get(name, (1, 0))
        need = max(need_train, 2 * need_test)  # (its test points are half of them)
        if n_samples < need:
            raise UserError(
                f"metric {name!r} needs eval_samples {need} or more during training, got "
                f"{n_samples}; pass {C.typed('train.eval_samples', need)}"
            )
    return resolved


def flatten_metrics(values: dict[str, Any]) -> dict[str, float]:
    """``{"dci": {"completeness": x}}`` -> ``{"dci/completeness": x}``; lists are left out."""
    flat: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            flat.update({f"{k}/{kk}": float(vv) for kk, vv in v.items() if np.isscalar(vv)})
        elif np.isscalar(v):
            flat[k] = float(v)
    return flat


def format_metrics(values: dict[str, Any]) -> str:
    """``{"dci": {"completeness": 0.51234, ...}, "mig": 0.2}`` -> ``"dci/completeness 0.5123,
    ..., mig 0.2000"``: one log line (lists, such as per-factor scores, are left out)."""
    return ", ".join(f"{k} {v:.4f}" for k, v in flatten_metrics(values).items())


def evaluate_metrics(
    run_dir: str | Path,
    metrics: Sequence[str] | str = "all",
    *,
    n_samples: int = 10_000,
    n_test: int = 5_000,
    seed: int = 0,
    n_bins: int = 20,
    dci_model: str = "gbt",
    data: ArrayDataset | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    amp: str = "auto",
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Disentanglement metrics of a run, written to ``run_dir/metrics.json`` and returned.

    The file holds ``{"metrics": {...}, "protocol": {...}, "step": N, "versions": {...}}``;
    see `compute_metrics` for the protocol and docs/metrics.md for each metric.
    """
    from disvae.utils import atomic_write_json, strict_json, versions

    run_dir = Path(run_dir)
    check_seed(seed)  # before the run and its dataset are loaded
    check_batch_size(batch_size)
    model, cfg, _, meta, data, dev = _open_run(run_dir, data, device)
    rec = (cfg.loss.rec_dist or data.info.default_rec_dist, cfg.loss.rec_scale)
    t0 = time.perf_counter()
    values, protocol = compute_metrics(
        model.to(dev), data, metrics, n_samples=n_samples, n_test=n_test, seed=seed,
        n_bins=n_bins, dci_model=dci_model, rec=rec, batch_size=batch_size, amp=amp,
        progress=progress,
    )  # fmt: skip
    protocol["total_seconds"] = round(time.perf_counter() - t0, 2)
    protocol["dataset"] = data.name
    import sklearn

    vers = dict(versions(), sklearn=sklearn.__version__)
    result = {"metrics": values, "protocol": protocol, "step": meta["step"], "versions": vers}
    # strict JSON: an undefined value (DCI's disentanglement with one factor) is written as null
    _write(run_dir / METRICS_FILE, lambda path: atomic_write_json(path, strict_json(result)))
    return result


# ---------------------------------------------------------------------- codes of a dataset

CODES_FILE = "codes.npz"
SPLITS = ("all", "train", "val")


def encode_run(
    run_dir: str | Path,
    *,
    split: str = "all",
    weights: str = "final",
    data: ArrayDataset | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    amp: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The posterior of every image of a run's dataset (``split``: ``"all"``, or the run's own
    ``"train"`` / ``"val"`` split), as arrays for analysis outside the library:

    - ``mu``, ``logvar``: ``(N, D)`` float32, the encoder's posterior means and log-variances;
    - ``index``: ``(N,)`` int64, the images' indices in the dataset;
    - with known factors: ``factor_classes`` ``(N, K)`` int64 (as the metrics see them) and
      ``factor_values`` ``(N, K)`` float64 (the grid's values, or a label table's raw values),
      ``factor_names`` ``(K,)``;
    - ``step``: the training step of the weights (``weights``: see `disvae.load_run`).

    ``batch_size`` None is 1000 images per forward on CUDA and 200 on the CPU; ``amp`` as in
    `encode_amp`. ``progress(n)`` is called with the images encoded so far in each batch."""
    from disvae.data.batching import split_indices
    from disvae.utils import tune_allocator

    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    check_batch_size(batch_size)
    run_dir = Path(run_dir)
    tune_allocator()
    model, cfg, _, meta, data, dev = _open_run(run_dir, data, device, weights)
    amp = encode_amp(amp, dev)
    bs = encode_batch(batch_size, dev)
    if split == "all":
        index = np.arange(len(data), dtype=np.int64)
    else:
        train_idx, val_idx = split_indices(
            len(data), cfg.data.val_fraction, cfg.data.split_seed, cfg.data.subset
        )
        index = (train_idx if split == "train" else val_idx).astype(np.int64)
        if not len(index):
            raise UserError(
                f"{str(run_dir)!r} has no {split} split (its val_fraction is 0); use --split all"
            )
    tick = progress or (lambda n: None)
    mu, logvar, _ = _encode_points(inference_copy(model.to(dev)), data, index, None, bs, tick, amp)
    bad, n_bad = _non_finite({"means": mu, "log-variances": logvar})
    if bad:  # kept (the file records what the encoder gives), but never silently
        import warnings

        warnings.warn(
            f"the weights of {str(run_dir)!r} at step {meta['step']} give NaN or infinite "
            f"{' and '.join(bad)} for {n_bad} of {len(index)} images; they are in the codes as is",
            RuntimeWarning,
            stacklevel=2,
        )
    out: dict[str, Any] = {
        "mu": mu.astype(np.float32), "logvar": logvar.astype(np.float32), "index": index,
        "step": np.int64(meta["step"]),
    }  # fmt: skip
    kind = factor_kind(data)
    if kind == "grid":
        classes = data.classes_of(index)
        out.update(factor_classes=classes, factor_values=data.values_of(classes))
    elif kind == "labels":
        out.update(factor_classes=data.factors_of(index),
                   factor_values=data.factor_values_raw[index])  # fmt: skip
    if kind != "none":
        out["factor_names"] = np.array(data.factor_names, dtype=np.str_)
    return out


def check_codes_path(path: str | Path) -> Path:
    """``path`` if codes can be written there (an ``.npz`` name in an existing directory), else
    a `UserError` saying why: checked before the encoding, which may take minutes."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"codes are written as .npz: give a path ending in .npz, not {str(path)!r}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {str(path)!r}: {str(path.parent)!r} is not a directory")
    if path.is_dir():
        raise UserError(f"cannot write {str(path)!r}: it is a directory; give a file name")
    return path


def write_codes(codes: dict[str, Any], path: str | Path) -> Path:
    """Write `encode_run`'s arrays to ``path`` (``.npz``, atomically: an interrupted write
    leaves any earlier file whole). Every array is numeric or fixed-width text, so
    ``np.load(path)`` reads it without pickle."""
    import io

    from disvae.utils import atomic_write_bytes

    path = check_codes_path(path)
    buf = io.BytesIO()
    np.savez(buf, **codes)
    _write(path, lambda p: atomic_write_bytes(p, buf.getvalue()))
    return path
