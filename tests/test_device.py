"""TF32, one process-wide switch (hsnet.device): training turns it on (pick_device on a GPU), face
detection runs in full fp32 inside it (full_fp32), and neither undoes the other.

The expectation is PyTorch's own settings, read back through its public flags.
"""

from __future__ import annotations

import threading

import pytest
import torch

from hsnet.device import enable_tf32, full_fp32

from tf32 import NEW_API, backends, restore, saved, tf32


@pytest.fixture(autouse=True)
def _restore_settings():
    before = saved()
    yield
    restore(before)


def test_full_fp32_turns_tf32_off_inside_and_back_on_after_an_error():
    enable_tf32()
    assert tf32() == (True, True)
    with pytest.raises(ValueError):
        with full_fp32():
            assert tf32() == (False, False)
            raise ValueError("a detection that fails")
    assert tf32() == (True, True)


def test_tf32_asked_for_during_a_detection_holds_after_it_and_not_inside_it():
    """serve's reload picks the device (TF32 on) while another thread detects faces."""
    inside, go, done = [], threading.Event(), threading.Event()

    def detect():
        with full_fp32():
            go.set()
            done.wait(10)
            inside.append(tf32())

    thread = threading.Thread(target=detect)
    thread.start()
    assert go.wait(10)
    enable_tf32()  # what pick_device("cuda") does
    done.set()
    thread.join(10)
    assert not thread.is_alive()
    assert inside == [(False, False)]
    assert tf32() == (True, True)


@pytest.mark.skipif(not NEW_API, reason="PyTorch without the fp32_precision settings")
def test_settings_made_with_pytorchs_newer_api_come_back_exactly():
    """A mix that PyTorch's older flags can't even read (conv and RNN apart) is no error here."""
    backends.cudnn.conv.fp32_precision, backends.cudnn.rnn.fp32_precision = "tf32", "ieee"
    backends.cuda.matmul.fp32_precision = "tf32"
    with full_fp32():
        assert tf32() == (False, False)
    assert (backends.cudnn.conv.fp32_precision, backends.cudnn.rnn.fp32_precision,
            backends.cuda.matmul.fp32_precision) == ("tf32", "ieee", "tf32")


def test_pytorchs_older_and_newer_views_of_the_settings_stay_readable_and_agree():
    """PyTorch's compiler reads the older flags: they must not raise "mix of the legacy and new
    APIs" after hsnet's switches, and must say what the newer settings say."""
    enable_tf32()
    assert (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32) == (True, True)
    assert torch.get_float32_matmul_precision() == "high" and tf32() == (True, True)
    with full_fp32():
        assert (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32) == (False, False)
        assert torch.get_float32_matmul_precision() == "highest" and tf32() == (False, False)
    assert torch.get_float32_matmul_precision() == "high" and tf32() == (True, True)


def test_a_matmul_precision_of_the_callers_comes_back():
    torch.set_float32_matmul_precision("medium")
    with full_fp32():
        assert torch.get_float32_matmul_precision() == "highest"
    assert torch.get_float32_matmul_precision() == "medium"
