"""Checkpoints from another hsnet version, or whose weights don't fit their metadata, are refused
with a message naming the file and what to do, never a traceback."""

from __future__ import annotations

import pytest
import torch

from hsnet import checkpoint
from hsnet.errors import HSNetError
from hsnet.params import Params

META = {"dataset": "sample", "classes": ["a", "b", "c"], "input_size": 80,
        "model": Params().to_dict()["model"] | {"ktl": False}, "data_version": "sha256:00", "params": {}}


def test_a_checkpoint_of_another_format_is_refused_by_name(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "meta": META, "model": {}, "state": {}}, path)
    with pytest.raises(HSNetError, match=r"old\.pt was written by an older hsnet .*format 1.*train it again"):
        checkpoint.load(path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(HSNetError, match="other.pt is not an hsnet training checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_weights_that_dont_fit_the_model_are_refused():
    ckpt = {"format": checkpoint.FORMAT, "meta": META, "model": {"classifier.weight": torch.zeros(3, 3)}, "state": {}}
    with pytest.raises(HSNetError, match="weights don't fit the model its metadata describes"):
        checkpoint.model_from(ckpt)


def test_a_damaged_or_foreign_file_is_named_with_what_to_do_never_advice_to_load_it_unsafely(tmp_path):
    """PyTorch's own message, cut at 200 characters, ended in "Re-running `torch.load` with
    `weights_only` set to `False`" (advice to run the file's code) for a file that isn't a
    checkpoint, and mid-sentence for a truncated one; neither said what to do."""
    import os

    good = tmp_path / "good.pt"
    torch.save({"format": checkpoint.FORMAT, "meta": META, "model": {"w": torch.zeros(1000, 100)}, "state": {}}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.pt").write_text("x\n")
    torch.save({"model": os.system}, tmp_path / "pickled.pt")  # a function reference: what an attack pickles
    for name, why in [("truncated.pt", "damaged or incomplete"), ("text.pt", "not a checkpoint hsnet can load"),
                      ("pickled.pt", "not a checkpoint hsnet can load")]:
        with pytest.raises(HSNetError) as err:
            checkpoint.load(tmp_path / name)
        message = str(err.value)
        assert name in message and why in message, message
        assert "weights_only` set to `False`" not in message and "False" not in message, message
        assert "hsnet train" in message, message


def test_a_checkpoint_trained_on_other_input_standardisation_is_refused():
    """train records how its inputs were standardised (meta.normalization: facenet-pytorch's
    (x - 127.5) / 128); a model trained on other inputs gives wrong predictions without an error,
    so loading it is refused by name. A checkpoint without the record (older) loads."""
    from hsnet.params import ModelParams, section

    weights = checkpoint.build_model(3, section(ModelParams, META["model"]), for_checkpoint=True).state_dict()
    ckpt = {"format": checkpoint.FORMAT, "meta": dict(META), "model": weights, "state": {}}
    checkpoint.model_from(ckpt)  # unrecorded: as before
    ckpt["meta"]["normalization"] = "x / 255"
    with pytest.raises(HSNetError, match=r"standardised as 'x / 255'.*\(x - 127\.5\) / 128"):
        checkpoint.model_from(ckpt)
