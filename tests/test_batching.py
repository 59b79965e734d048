"""Splits are disjoint and fixed by seed; the batch stream covers epochs and restores exactly."""

import numpy as np
import torch

from disvae.data.base import ArrayDataset, DatasetInfo
from disvae.data.batching import BatchStream, split_indices


def test_split_is_disjoint_complete_and_seeded():
    train, val = split_indices(1000, 0.1, split_seed=3)
    assert len(val) == 100 and len(train) == 900
    assert len(np.intersect1d(train, val)) == 0
    assert sorted(np.concatenate([train, val])) == list(range(1000))
    again, _ = split_indices(1000, 0.1, split_seed=3)
    other, _ = split_indices(1000, 0.1, split_seed=4)
    assert (train == again).all() and not (train == other).all()
    sub_train, sub_val = split_indices(1000, 0.25, split_seed=3, subset=200)
    assert len(sub_train) + len(sub_val) == 200 and len(sub_val) == 50


def test_stream_covers_each_epoch_once_and_restores_exactly():
    idx = np.arange(100, 140)
    s = BatchStream(idx, seed=0)
    epoch = torch.cat([s.next(8) for _ in range(5)])  # 40 = one full epoch
    assert sorted(epoch.tolist()) == list(range(100, 140))
    s.next(8)  # first batch of epoch 2
    assert s.epoch == 1
    tensors, scalars = s.state()
    expected = [s.next(8) for _ in range(7)]
    t = BatchStream(idx, seed=99)
    t.load_state({k: v.clone() for k, v in tensors.items()}, dict(scalars))
    got = [t.next(8) for _ in range(7)]
    assert all((a == b).all() for a, b in zip(expected, got, strict=True))


def test_device_resident_order_gives_the_host_batches():
    """``next(n, device)`` reads a per-epoch copy of the order on the device: the same batches
    as the host path across epochs and a restore, one copy an epoch."""
    idx = np.arange(100, 137)  # 37 images, batches of 8: the tail of each epoch is dropped
    host, dev = BatchStream(idx, seed=5), BatchStream(idx, seed=5)
    cpu = torch.device("cpu")  # stands in for an accelerator: the same code path
    copies: list[torch.Tensor] = []
    for _ in range(13):  # 4 batches an epoch: a little over 3 epochs
        assert torch.equal(host.next(8), dev.next(8, device=cpu))
        if not any(c is dev._resident for c in copies):
            copies.append(dev._resident)
    assert dev.epoch == 3 and len(copies) == 4  # one copy per epoch begun
    tensors, scalars = dev.state()
    tensors = {k: v.clone() for k, v in tensors.items()}
    [dev.next(8, device=cpu) for _ in range(5)]  # on into the next epoch, then back
    dev.load_state(tensors, dict(scalars))  # the device copy of the later epoch is dropped
    assert all(torch.equal(host.next(8), dev.next(8, device=cpu)) for _ in range(6))


def test_packed_and_plain_batches_agree():
    rng = np.random.default_rng(0)
    binary = rng.integers(0, 2, size=(5, 1, 8, 16), dtype=np.uint8)
    packed = np.packbits(binary.reshape(5, -1), axis=1)
    info = DatasetInfo("t", (1, 8, 16))
    a = ArrayDataset(packed, info, packed=True).batch(torch.tensor([4, 0, 2]))
    b = ArrayDataset(binary * 255, info, packed=False).batch(torch.tensor([4, 0, 2]))
    assert a.dtype == torch.float32 and a.shape == (3, 1, 8, 16)
    assert torch.equal(a, b) and torch.equal(a, torch.from_numpy(binary[[4, 0, 2]]).float())


def test_a_view_of_a_memory_map_gives_its_own_images(tmp_path):
    """A slice or a transpose of a read-only memory map is a `np.memmap` with the offset of the
    whole map: its images are its own, not those at the start of the file."""
    file = tmp_path / "x.npy"
    np.save(file, np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2))
    whole = np.load(file, mmap_mode="r")
    info = DatasetInfo("t", (1, 2, 2))
    tail = ArrayDataset(whole[6:], info, packed=False)
    assert tail.numpy_images(np.array([0])).ravel().tolist() == [24, 25, 26, 27]
    assert tail.batch(torch.tensor([3])).flatten().mul(255).round().tolist() == [36, 37, 38, 39]
    for view in (whole, whole[::2], whole[:, :, ::-1], whole.transpose(0, 1, 3, 2)):
        data = ArrayDataset(view, info, packed=False)
        np.testing.assert_array_equal(data.numpy_images(np.arange(len(view))), view)
