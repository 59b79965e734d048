"""Checkpoints: safetensors tensors + JSON metadata, written atomically, verified on load.

No pickle anywhere: a checkpoint is a safetensors file whose tensors hold weights, optimizer
moments and RNG states, and whose string metadata holds a JSON document (step, optimizer
hyperparameters, Python/NumPy RNG state, data order), a SHA-256 over the tensors and one over
the metadata. Loading a file therefore cannot run code, and a torn or corrupted file is
detected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from disvae.errors import UserError
from disvae.training.adam import Optimizer
from disvae.utils import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "disvae-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.safetensors$")


class CheckpointError(UserError):
    """A checkpoint that is missing, torn, corrupt, or not a disvae checkpoint."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (in sorted name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and JSON-able ``meta`` to ``path`` atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # One metadata key: safetensors writes several in no fixed order, and identical state must
    # give identical bytes.
    header = {"format": FORMAT, "version": VERSION, "sha256": tensor_digest(tensors), "meta": meta}
    header["meta_sha256"] = _meta_digest(json.loads(json.dumps(meta)))  # (as it will load)
    atomic_write_bytes(path, st_save(tensors, metadata={"disvae": json.dumps(header)}))


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a file written by `save_state`. Raises `CheckpointError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror}") from None
    try:
        tensors = st_load(data)
        header = json.loads(_read_metadata(data).get("disvae", "{}"))
    except (SafetensorError, ValueError, json.JSONDecodeError):
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file (torn write or corrupt)"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a disvae checkpoint")
    if not isinstance(header.get("version"), int) or "meta" not in header:
        raise CheckpointError(f"{str(path)!r} has a damaged header (corrupt)")
    if header["version"] > VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {header['version']}, newer than this disvae "
            f"reads ({VERSION}); upgrade disvae"
        )
    if tensor_digest(tensors) != header.get("sha256"):
        raise CheckpointError(f"{str(path)!r} fails its checksum (corrupt)")
    # (checkpoints written before the metadata had a checksum have none)
    if "meta_sha256" in header and header["meta_sha256"] != _meta_digest(header["meta"]):
        raise CheckpointError(f"{str(path)!r} fails the checksum of its metadata (corrupt)")
    return tensors, header["meta"]


def _meta_digest(meta: Any) -> str:
    """SHA-256 of the JSON text of ``meta`` (step, RNG states, data order, ...)."""
    return hashlib.sha256(json.dumps(meta).encode()).hexdigest()


def _read_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__", {})


# --------------------------------------------------------------------------- pieces of state


def module_state(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module_state(
    prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str
) -> None:
    """Load ``prefix.*`` tensors into ``module``; a mismatch is a `CheckpointError`."""
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    own = module.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    extra = [k for k in state if k not in own]
    if bad or extra:
        raise CheckpointError(
            f"{source} holds a different architecture ({len(bad)} missing or mis-shaped, "
            f"{len(extra)} unexpected tensors in {prefix!r}) than the run's config.json "
            "describes (model.arch, latent_dim, ...): the weights are not this run's"
        )
    module.load_state_dict(state)


def optimizer_state(prefix: str, opt: Optimizer) -> tuple[dict, dict]:
    """(tensors, JSON) of an optimizer's state_dict."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(prefix: str, opt: Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            idx, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # Saved moments are contiguous; give each the memory layout of its parameter (channels-last
    # convolutions), as the uninterrupted run has them: a fused Adam pairs the elements of its
    # tensors by memory, so mixed layouts would not even compute the same update.
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if (
                    torch.is_tensor(value)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Global RNG states of torch (CPU and CUDA), NumPy and Python."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, py_state, py_gauss = random.getstate()
    return tensors, {
        "numpy": [kind, pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state(
        (kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss)
    )
    version, py_state, py_gauss = meta["python"]
    random.setstate((version, tuple(py_state), py_gauss))


# --------------------------------------------------------------------------- the directory


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:09d}.safetensors"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load_latest(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path] | None:
    """The newest checkpoint that loads and verifies; older ones stand in for broken ones."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            tensors, meta = load_state(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=2)
            continue
        return tensors, meta, path
    return None


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)
