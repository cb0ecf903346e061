"""Training data held on the device (train.data_on_device): the same code path run with CPU
tensors gives the same batches, augmentations and losses as the host pipeline."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from hsnet.device import normalize
from hsnet.params import Params, ParamsError
from hsnet.tensors import (Batches, DeviceBatches, EpochAugment, augment, data_on_device, load_split, split_bytes,
                           to_device)
from hsnet.train import train

CPU = torch.device("cpu")


@pytest.fixture
def split(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(23):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": i % 7})
    return load_split(rows, tmp_path, 20, cache_dir=tmp_path / "cache", progress=False)


def test_device_batches_are_the_host_batches(split):
    held = to_device(split, CPU, chunk_bytes=3 * 20 * 20 * 5)  # several chunks
    assert isinstance(held.images, torch.Tensor) and np.array_equal(held.images.numpy(), np.asarray(split.images))
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(1))
    host, dev = list(Batches(split, order, 8, CPU)), list(DeviceBatches(held, order, 8, CPU))
    assert [len(y) for _, y in dev] == [8, 8, 7] and len(host) == len(dev)
    for (hx, hy), (dx, dy) in zip(host, dev):
        assert torch.equal(hx, dx) and torch.equal(hy, dy)
    # a last batch of one image is dropped (BatchNorm) on both paths
    assert len(DeviceBatches(held, order[:17], 8, CPU)) == len(Batches(split, order[:17], 8, CPU)) == 2


def test_epoch_augment_draws_what_augment_draws_batch_by_batch(split):
    x = normalize(torch.from_numpy(np.asarray(split.images)))
    sizes = [8, 8, 7]
    for aug in ({"hflip": True, "rotate_degrees": 5.0}, {"hflip": False, "rotate_degrees": 5.0},
                {"hflip": True, "rotate_degrees": 0.0}):
        per_batch, up_front = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        epoch = EpochAugment(sizes, up_front, CPU, **aug)
        start = 0
        for n in sizes:
            batch = x[start:start + n]
            start += n
            expected = augment(batch, per_batch, **aug)
            assert not torch.equal(expected, batch)  # something was flipped or rotated
            torch.testing.assert_close(epoch(batch), expected, rtol=0, atol=0)


def test_when_the_data_goes_on_the_device(split):
    assert not data_on_device([split], CPU, "auto", 0.5)  # a CPU: the host pipeline unless asked
    assert data_on_device([split], CPU, True, 0.5) and not data_on_device([split], CPU, False, 0.5)
    assert split_bytes(split) == 23 * 3 * 20 * 20 + 23 * 8
    p = Params.from_mapping(None, "sample", {"train": {"data_on_device": "auto", "data_memory_share": 0.8}})
    assert p.train.data_on_device == "auto" and p.train.data_memory_share == 0.8
    assert Params().train.data_on_device == "auto" and 0 < Params().train.data_memory_share <= 1
    with pytest.raises(ParamsError, match="train.data_memory_share"):
        Params.from_mapping(None, "sample", {"train": {"data_memory_share": 0}})
    with pytest.raises(ParamsError, match="train.data_memory_share"):
        Params.from_mapping(None, "sample", {"train": {"data_memory_share": 1.5}})
    with pytest.raises(ParamsError, match="train.data_on_device"):
        Params.from_mapping(None, "sample", {"train": {"data_on_device": "sometimes"}})


@pytest.mark.slow
def test_training_with_the_data_on_the_device_equals_the_host_path(tiny_data, tiny_params, tmp_path, monkeypatch,
                                                                   caplog):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="hsnet.train")
    runs = {}
    for setting in (False, True):
        params = Params.resolve(tiny_params, "sample", {"train": {"data_on_device": setting}})
        caplog.clear()
        train(tiny_data, params, tmp_path / str(setting), device="cpu", track=False, progress=False)
        where = "held on the device" if setting else "read from the host"
        assert any(where in r.getMessage() for r in caplog.records)
        runs[setting] = json.loads((tmp_path / str(setting) / "history.json").read_text())
    assert len(runs[True]) == len(runs[False]) == 2
    for host, dev in zip(runs[False], runs[True]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert dev[key] == pytest.approx(host[key], rel=1e-6, abs=1e-7), key
