"""Ctrl-C (SIGINT) and SIGTERM during training: a clear message, exit code 130, last.pt whole (issue 13.10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsnet.checkpoint import load

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_sigint_during_training(tiny_data, tiny_params, tmp_path, sig, code, said):
    """Ctrl-C, and SIGTERM (a pod's preemption, `timeout`): it used to end the process on the spot."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hsnet", "train", "--data", str(tiny_data), "--params", str(tiny_params),
           "--dataset", "sample", "--out", str(out), "--no-mlflow", "--set", "train.epochs=30"]
    # SIGINT as a terminal's foreground job has it, however the test runner was started (a
    # background job's children inherit SIGINT ignored, and then keep ignoring it, as they should)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (out / "last.pt").exists():  # the first epoch is done
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch finished in 300 s"
            time.sleep(0.2)
        time.sleep(1.0)  # into the next epoch
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert f"hsnet train: {said}, stopped before finishing; {out}/last.pt holds the last finished epoch: " \
           "add --resume to continue" in stderr
    ckpt = load(out / "last.pt")  # whole
    assert 1 <= ckpt["state"]["epoch"] < 30
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint left
    if sig != signal.SIGINT:
        return  # what --resume does with a whole last.pt is checked once (CI time)
    # and it continues from there
    resumed = subprocess.run(cmd[:-2] + ["--set", f"train.epochs={ckpt['state']['epoch'] + 1}", "--resume"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load(out / "last.pt")["state"]["epoch"] == ckpt["state"]["epoch"] + 1


def test_an_interrupt_swallowed_on_its_way_still_stops_training(tiny_data, tiny_params, tmp_path):
    """Where SIGINT's KeyboardInterrupt is raised inside a finalizer or callback (a ``__del__``, a gc
    or weakref callback), Python prints "Exception ignored" and carries on: the Ctrl-C would be lost
    and training run to its end. The handler also leaves a flag that the training loop reads at
    every batch."""
    from hsnet import interrupt
    from hsnet.params import Params
    from hsnet.train import train

    def swallowed(*_):  # SIGINT's handler, run where its exception gets swallowed, after epoch 1
        try:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass

    params = Params.resolve(tiny_params, "sample", {"train": {"epochs": 3}})
    runner = signal.signal(signal.SIGINT, signal.default_int_handler)  # a foreground process's
    try:
        with interrupt.interruptible(), pytest.raises(KeyboardInterrupt):
            train(tiny_data, params, tmp_path / "run", device="cpu", track=False, progress=False,
                  on_checkpoint=swallowed)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, runner)
    assert load(tmp_path / "run" / "last.pt")["state"]["epoch"] == 1


def test_a_process_started_with_sigint_ignored_keeps_ignoring_it():
    """``nohup hsnet train ... &``: Ctrl-C at the terminal is not for it."""
    from hsnet import interrupt

    runner = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.interruptible():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            interrupt.check()  # nothing arrived
    finally:
        signal.signal(signal.SIGINT, runner)
