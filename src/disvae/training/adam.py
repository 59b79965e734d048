"""Adam as one fused kernel call per step, without `torch.optim` (the trainer's optimizer).

The update is Adam's (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization",
Algorithm 1; L2 weight decay added to the gradient as in `torch.optim.Adam`)::

    g_t = grad + wd * theta
    m_t = b1 * m + (1 - b1) * g_t              v_t = b2 * v + (1 - b2) * g_t ** 2
    theta -= lr * (m_t / (1 - b1 ** t)) / (sqrt(v_t / (1 - b2 ** t)) + eps)

computed by the ATen kernel ``_fused_adam_`` (CPU and CUDA), the one that
``torch.optim.Adam(fused=True)`` calls, so the two give bit-identical parameters.

Why not ``torch.optim.Adam`` itself: every `torch.optim.Optimizer` imports ``torch._dynamo``
on its first call (its constructor, ``step``, ``zero_grad`` and ``state_dict`` are wrapped to
keep the compiler out), even when nothing is compiled. On 2 CPU cores that import takes about
3 s, more than half of the time from the command to the first training step. This class has
the part of the `torch.optim.Optimizer` interface the trainer uses (``param_groups``,
``state``, ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``) and the same
``state_dict`` layout, so checkpoints load into either.

``found_inf``: a device scalar (1.0: skip) set before ``step`` makes the update a no-op on the
device, step count included, without a host sync (the mechanism of `torch.amp.GradScaler`; the
deferred non-finite check uses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# The keys of a `torch.optim.Adam` param group, with the values this class implements (only
# lr, betas, eps and weight_decay may be set): a state_dict of either loads into the other.
_FIXED = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


# A group may hold, beside its float "lr", a 0-d tensor on the parameters' device under this key,
# which the caller fills with the same value: the kernel then reads the learning rate from the
# device, so a step recorded in a CUDA graph (`disvae.training.graph`) follows a schedule. The
# float stays the group's lr for `state_dict`; the tensor is never saved.
LR_TENSOR = "lr_tensor"


def _lr_of(group: dict[str, Any], device: torch.device) -> float | torch.Tensor:
    lr = group.get(LR_TENSOR)
    if lr is None:
        return float(group["lr"])
    if lr.device != device or lr.dim() != 0:
        raise ValueError(
            f"{LR_TENSOR} must be a 0-d tensor on {device}, got {lr.device} {lr.shape}"
        )
    return lr


class FusedAdam:
    """Adam (Kingma & Ba 2015, Alg. 1) with the state and state_dict of ``torch.optim.Adam``."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.defaults: dict[str, Any] = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            **_FIXED,
        }
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self.found_inf: torch.Tensor | None = None
        groups = list(params)
        if not groups:
            raise ValueError("FusedAdam got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={self.defaults[k]}" for k in ("lr", "betas", "eps", "weight_decay"))
        return f"FusedAdam({shown}, {len(self.param_groups)} group(s))"

    def add_param_group(self, group: dict[str, Any]) -> None:
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.is_leaf:
                raise TypeError("FusedAdam optimizes leaf tensors only")
            if not p.is_floating_point():
                raise TypeError(f"FusedAdam needs floating-point parameters, got {p.dtype}")
            if id(p) in seen:
                raise ValueError("a parameter appears in more than one group")
            seen.add(id(p))
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        _check_hyper(full)
        full["params"] = params
        self.param_groups.append(full)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_() if p.grad.grad_fn is not None else p.grad.requires_grad_(False)
                    p.grad.zero_()

    def _state_of(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state.get(p)
        if not st:  # lazily, as torch.optim.Adam: a step count on the device and zero moments
            st = self.state[p] = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        return st

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        for group in self.param_groups:
            # The kernel takes lists of one device and dtype.
            buckets: dict[tuple, tuple[list, ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FusedAdam does not support sparse gradients")
                st = self._state_of(p)
                lists = buckets.setdefault((p.device, p.dtype), ([], [], [], [], []))
                tensors = (p, p.grad, st["exp_avg"], st["exp_avg_sq"], st["step"])
                for dst, t in zip(lists, tensors, strict=True):
                    dst.append(t)
            beta1, beta2 = group["betas"]
            for (device, _), (ps, grads, m, v, steps) in buckets.items():
                found = self.found_inf
                if found is not None:
                    found = found.to(device=device, dtype=torch.float32, non_blocking=True)
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(
                    ps, grads, m, v, [], steps,
                    lr=_lr_of(group, device), beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], eps=group["eps"],
                    amsgrad=False, maximize=False, grad_scale=None, found_inf=found,
                )  # fmt: skip
                if found is not None:  # a skipped update does not count as a step
                    torch._foreach_sub_(steps, [found] * len(steps))

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [...]}``, parameters numbered in group
        order, as `torch.optim.Optimizer.state_dict` writes it (tensors by reference)."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k not in ("params", LR_TENSOR)}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: dict(st) for p, st in self.state.items() if st}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this class or of ``torch.optim.Adam`` (without amsgrad)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"])
            for s, g in zip(saved_groups, self.param_groups, strict=True)
        ):
            raise ValueError("loaded optimizer state does not match this model's parameter groups")
        params = {}
        for saved, own in zip(saved_groups, self.param_groups, strict=True):
            if saved.get("amsgrad") or saved.get("maximize"):
                raise ValueError("FusedAdam loads plain Adam state (no amsgrad, no maximize)")
            hyper = {k: saved[k] for k in ("lr", "betas", "eps", "weight_decay") if k in saved}
            hyper["betas"] = tuple(hyper.get("betas", own["betas"]))
            _check_hyper({**own, **hyper})
            own.update(hyper)
            params.update(zip(saved["params"], own["params"], strict=True))
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for idx, saved_st in state_dict["state"].items():
            p = params.get(int(idx))
            if p is None:
                raise ValueError(f"loaded optimizer state names parameter {idx}, which has none")
            st = {}
            for key in ("step", "exp_avg", "exp_avg_sq"):
                value = saved_st.get(key)
                if value is None:
                    raise ValueError(f"loaded optimizer state of parameter {idx} lacks {key!r}")
                value = torch.as_tensor(value)
                if key == "step":
                    st[key] = torch.tensor(float(value), dtype=torch.float32, device=p.device)
                    continue
                if value.shape != p.shape:
                    raise ValueError(
                        f"loaded optimizer state {key!r} of parameter {idx} has shape "
                        f"{tuple(value.shape)}, the parameter {tuple(p.shape)}"
                    )
                # An owned copy in the parameter's memory layout (channels-last convolutions):
                # the kernel pairs elements by memory, and a saved moment is contiguous.
                st[key] = torch.empty_like(p).copy_(value)
            state[p] = st
        self.state = state


# What the trainer's optimizer variables hold: `FusedAdam`, or ``torch.optim.Adam`` on devices
# without the fused kernel.
Optimizer = FusedAdam | torch.optim.Optimizer


def _check_hyper(group: dict[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    if not (group["lr"] >= 0 and group["eps"] >= 0 and group["weight_decay"] >= 0):
        raise ValueError(
            f"Adam needs lr, eps and weight_decay >= 0 (got {group['lr']}, {group['eps']}, "
            f"{group['weight_decay']})"
        )
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"Adam needs betas in [0, 1) (got {group['betas']})")
