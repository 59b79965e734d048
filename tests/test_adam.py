"""`FusedAdam`: Kingma & Ba's update worked out by hand, bit-identity with
``torch.optim.Adam(fused=True)``, state_dicts that load either way, the device-side skip, and
the start-up it buys (no ``torch._dynamo`` import on the way to the first step)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from disvae.training.adam import FusedAdam

# The CUDA kernel too, where a GPU is present (benchmarks/gpu_check.sh runs this file there).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _net(seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 3),
    )
    return net.to(device, memory_format=torch.channels_last)  # as the trainer's models


def _grads(net: torch.nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(5, 1, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    x = x.to(next(net.parameters()).device)
    net.zero_grad(set_to_none=True)
    (net(x) ** 2).mean().backward()


def _lockstep(steps: range, *pairs: tuple[torch.nn.Module, object]) -> None:
    """The same gradients for each (net, optimizer) pair, then its step, for each step. They
    are computed once, on the first net, and copied: only the optimizers are compared (on a
    GPU two backward passes of a convolution need not agree to the bit)."""
    for step in steps:
        first = pairs[0][0]
        _grads(first, step)
        grads = [p.grad.clone() for p in first.parameters()]
        for net, opt in pairs:
            for p, g in zip(net.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_update_matches_kingma_and_ba_worked_by_hand() -> None:
    # Algorithm 1 of Kingma & Ba (2015) in float64, with L2 decay added to the gradient.
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.01
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = FusedAdam([theta], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expect, m, v = [1.0, -2.0], [0.0, 0.0], [0.0, 0.0]
    for t, grad in enumerate(([0.5, 3.0], [-1.0, 2.0], [0.25, -4.0]), start=1):
        theta.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        for i in range(2):
            g = grad[i] + wd * expect[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            expect[i] -= lr * m_hat / (v_hat**0.5 + eps)
        assert theta.detach().tolist() == pytest.approx(expect, rel=1e-12, abs=1e-12)
        if t == 1:
            # The first step moves each coordinate by lr against its gradient's sign (m_hat /
            # sqrt(v_hat) = g / |g|): Adam's step size does not depend on the gradient's scale.
            assert theta.detach().tolist() == pytest.approx([1.0 - lr, -2.0 - lr], rel=1e-7)
    assert opt.state[theta]["step"].item() == 3.0


@pytest.mark.parametrize("device", DEVICES)
def test_bit_identical_to_torch_fused_adam_over_several_steps(device) -> None:
    ours_net, ref_net = _net(device=device), _net(device=device)
    groups = lambda net: [  # noqa: E731 - two groups with their own hyperparameters
        {"params": list(net[0].parameters()), "weight_decay": 1e-3},
        {"params": list(net[3].parameters()), "lr": 3e-3, "betas": (0.5, 0.9)},
    ]
    ours = FusedAdam(groups(ours_net), lr=1e-2)
    ref = torch.optim.Adam(groups(ref_net), lr=1e-2, fused=True)
    _lockstep(range(6), (ours_net, ours), (ref_net, ref))
    assert _same(ours_net, ref_net)
    for a, b in zip(_params(ours_net), _params(_net(device=device)), strict=True):
        assert not torch.equal(a, b)  # it did move
    sd_ours, sd_ref = ours.state_dict(), ref.state_dict()
    assert sd_ours["param_groups"] == sd_ref["param_groups"]
    for idx, st in sd_ref["state"].items():
        assert set(sd_ours["state"][idx]) == set(st)
        for key, value in st.items():
            assert torch.equal(sd_ours["state"][idx][key], value), (idx, key)


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_state_dict_loads_either_way_and_continues_identically(direction) -> None:
    first, second = _net(), _net()
    if direction == "torch->ours":
        make_a = lambda ps: torch.optim.Adam(ps, lr=1e-2)  # noqa: E731 - pre-2026-11-27 checkpoints
        make_b = lambda ps: FusedAdam(ps, lr=1e-2)  # noqa: E731
    else:
        make_a = lambda ps: FusedAdam(ps, lr=1e-2)  # noqa: E731
        make_b = lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True)  # noqa: E731
    a = make_a(first.parameters())
    _lockstep(range(3), (first, a))
    second.load_state_dict(first.state_dict())
    b = make_b(second.parameters())
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as from a checkpoint file
    if direction == "torch->ours":  # the same kernel from here on: compare with fused torch
        a = torch.optim.Adam(first.parameters(), lr=1e-2, fused=True)
        a.load_state_dict(copy.deepcopy(b.state_dict()))
    _lockstep(range(3, 6), (first, a), (second, b))
    assert _same(first, second)
    assert b.state_dict()["state"][0]["step"].item() == 6.0


@pytest.mark.parametrize("device", DEVICES)
def test_found_inf_skips_the_update_and_the_step_count_on_the_device(device) -> None:
    net = _net(device=device)
    opt = FusedAdam(net.parameters(), lr=1e-2)
    _grads(net, 0)
    opt.step()
    before = _params(net)
    moments = [st["exp_avg"].clone() for st in opt.state.values()]
    _grads(net, 1)
    opt.found_inf = torch.tensor(1.0, device=device)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(_params(net), before, strict=True))
    now = [st["exp_avg"] for st in opt.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(now, moments, strict=True))
    assert all(st["step"].item() == 1.0 for st in opt.state.values())
    opt.found_inf = torch.tensor(0.0, device=device)
    opt.step()
    assert not any(torch.equal(a, b) for a, b in zip(_params(net), before, strict=True))
    assert all(st["step"].item() == 2.0 for st in opt.state.values())


def test_zero_grad_and_parameters_without_gradients() -> None:
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-2)
    _grads(net, 0)
    net[3].bias.grad = None  # no gradient: not updated, no state
    bias = net[3].bias.detach().clone()
    opt.step()
    assert torch.equal(net[3].bias, bias) and net[3].bias not in opt.state
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_bad_hyperparameters_and_foreign_state_are_refused() -> None:
    net = _net()
    with pytest.raises(ValueError, match="betas in"):
        FusedAdam(net.parameters(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr, eps and weight_decay"):
        FusedAdam(net.parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="empty"):
        FusedAdam([])
    with pytest.raises(TypeError, match="floating-point"):
        FusedAdam([torch.zeros(3, dtype=torch.int64)])
    opt = FusedAdam(net.parameters())
    other = FusedAdam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="does not match"):
        opt.load_state_dict(other.state_dict())
    ams = torch.optim.Adam(net.parameters(), amsgrad=True)
    with pytest.raises(ValueError, match="no amsgrad"):
        opt.load_state_dict(ams.state_dict())
    _grads(net, 0)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(7)
    with pytest.raises(ValueError, match="has shape"):
        FusedAdam(net.parameters()).load_state_dict(sd)


def test_first_training_step_does_not_import_the_compiler(tmp_path) -> None:
    # torch.optim's optimizers import torch._dynamo on first use (about 3 s on 2 cores); the
    # trainer's path to its first step must not, or start-up loses what FusedAdam bought.
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import conftest  # registers dsprites_tiny\n"
        "from disvae.cli import main\n"
        f"rc = main(['train', '--dataset', 'dsprites_tiny', '--steps', '2', '--no-progress',"
        f" '--out', {str(tmp_path / 'run')!r}])\n"
        "print('rc', rc, 'dynamo imported:', 'torch._dynamo' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "rc 0 dynamo imported: False" in res.stdout, res.stdout + res.stderr[-2000:]
