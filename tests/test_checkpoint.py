"""Checkpoints: exact round trips, corruption detected, fallback to the previous one, no pickle."""

import pickle
import random

import numpy as np
import pytest
import torch

from disvae.training import checkpoint as ckpt


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def _step(model, opt, x):
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_model_and_optimizer_round_trip_gives_identical_next_steps(tmp_path):
    model, opt = _model_and_opt()
    tensors = ckpt.module_state("m", model)
    t, meta = ckpt.optimizer_state("o", opt)
    ckpt.save_state(tmp_path / "a.safetensors", tensors | t, {"opt": meta, "step": 3})
    x = torch.randn(16, 4)
    expected = _step(model, opt, x)

    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1.0)
    loaded, meta2 = ckpt.load_state(tmp_path / "a.safetensors")
    ckpt.load_module_state("m", model2, loaded, "a")
    ckpt.load_optimizer_state("o", opt2, loaded, meta2["opt"])
    assert meta2["step"] == 3 and opt2.param_groups[0]["lr"] == 1e-2
    got = _step(model2, opt2, x)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    tensors, meta = ckpt.rng_state()
    ckpt.save_state(tmp_path / "r.safetensors", tensors, {"rng": meta})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    loaded, m = ckpt.load_state(tmp_path / "r.safetensors")
    ckpt.set_rng_state(loaded, m["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_bit_flip_and_truncation_are_detected_and_latest_falls_back(tmp_path):
    model, _ = _model_and_opt()
    for step in (10, 20, 30):
        ckpt.save_state(ckpt.checkpoint_path(tmp_path, step), ckpt.module_state("m", model),
                        {"step": step})  # fmt: skip
    newest = ckpt.checkpoint_path(tmp_path, 30)
    data = bytearray(newest.read_bytes())
    data[-5] ^= 0x01  # a flipped bit in the weights
    newest.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load_state(newest)
    middle = ckpt.checkpoint_path(tmp_path, 20)
    middle.write_bytes(middle.read_bytes()[:100])  # torn write
    with pytest.raises(ckpt.CheckpointError, match="torn write or corrupt"):
        ckpt.load_state(middle)
    with pytest.warns(UserWarning, match="falling back"):
        _, meta, path = ckpt.load_latest(tmp_path)
    assert meta["step"] == 10 and path.name == "step_000000010.safetensors"


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_state(ckpt.checkpoint_path(tmp_path, step), {"x": torch.zeros(1)}, {})
    ckpt.prune(tmp_path, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]


def test_a_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = ckpt.checkpoint_path(tmp_path, 5)
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_state(path)
    assert not marker.exists()


def test_architecture_mismatch_is_a_clear_error(tmp_path):
    model, _ = _model_and_opt()
    ckpt.save_state(tmp_path / "a.safetensors", ckpt.module_state("m", model), {})
    loaded, _ = ckpt.load_state(tmp_path / "a.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.ReLU(), torch.nn.Linear(9, 2))
    with pytest.raises(ckpt.CheckpointError, match="different architecture"):
        ckpt.load_module_state("m", other, loaded, "a")
