"""best.pt holds the epoch the run reports as its best, however the run was stopped and where its
checkpoints were restored from (hsnet.train.save_epoch, _best_as_recorded; hsnet.durable)."""

from __future__ import annotations

import pytest
import torch

from hsnet.checkpoint import load
from hsnet.params import Params
from hsnet.train import train

pytestmark = pytest.mark.slow


def _run(tiny_data, tiny_params, out, epochs, **kw):
    params = Params.resolve(tiny_params, "sample", {"train": {"epochs": epochs, "scheduler": {"patience": 10}}})
    return train(tiny_data, params, out, track=False, progress=False, **kw)


def _epoch(path):
    return load(path)["state"]["epoch"]


@pytest.mark.parametrize("case", ["best.pt of an earlier epoch", "no best.pt"])
def test_a_best_epoch_whose_weights_are_gone_is_not_reported(tiny_data, tiny_params, tmp_path, monkeypatch, case):
    """S3 holds last.pt of epoch 3 naming epoch 2 its best, and best.pt of epoch 1 (the upload of
    epoch 2's best.pt was cut off, last.pt's of epoch 3 went up): epoch 2's weights exist nowhere.
    The resumed run must not report epoch 2 as the best of a best.pt that holds epoch 1: the best
    is then an epoch whose weights it holds (best.pt's epoch 1 if its history has it; without a
    best.pt, last.pt's epoch, written to best.pt), and the summary names the epoch best.pt holds."""
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    _run(tiny_data, tiny_params, out, 1)
    first_best = (out / "best.pt").read_bytes()
    _run(tiny_data, tiny_params, out, 3, resume=True)
    last = torch.load(out / "last.pt", weights_only=True)
    last["state"].update(best_epoch=2, best_acc=last["state"]["history"][1]["val_accuracy"] + 1.0)  # an unbeatable 2
    torch.save(last, out / "last.pt")
    if case == "no best.pt":
        (out / "best.pt").unlink()
        expected = 3
    else:
        (out / "best.pt").write_bytes(first_best)
        expected = 1

    summary = _run(tiny_data, tiny_params, out, 3, resume=True)  # nothing left to train: only the repair
    assert summary["best_epoch"] == expected == _epoch(out / "best.pt")
    assert load(out / "last.pt")["state"]["best_epoch"] == expected


def test_a_stop_between_the_two_writes_is_repaired_exactly(tiny_data, tiny_params, tmp_path, monkeypatch):
    """last.pt is written before best.pt: stopped between them, last.pt names its own epoch as the
    best and holds its weights; the resumed run writes best.pt from it (bit for bit those weights)."""
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    _run(tiny_data, tiny_params, out, 1)
    first_best = (out / "best.pt").read_bytes()
    _run(tiny_data, tiny_params, out, 2, resume=True)
    last = torch.load(out / "last.pt", weights_only=True)
    last["state"].update(best_epoch=2, best_acc=max(r["val_accuracy"] for r in last["state"]["history"]), stale=0)
    torch.save(last, out / "last.pt")  # epoch 2 the best, as if it had improved
    (out / "best.pt").write_bytes(first_best)  # ... and the stop came before its best.pt

    summary = _run(tiny_data, tiny_params, out, 2, resume=True)
    best = load(out / "best.pt")
    assert summary["best_epoch"] == 2 == best["state"]["epoch"]
    assert all(torch.equal(best["model"][k], v) for k, v in last["model"].items())
