"""Attack, session 22a: training that is stopped, resumed and restarted.

The promises attacked: "a killed training resumes where it stopped and gives the same result as
one that was never stopped", and "nothing already written is lost or half-written" (README,
"Training and evaluation"; hsnet/train.py's module docstring and :func:`hsnet.train.save_epoch`).

Each test fails on the code as it stands and passes once the defect its docstring names is fixed.
The data and settings are the suite's own (the ``tiny_data`` and ``tiny_params`` fixtures of
tests/conftest.py: two epochs of the tiny sample on the CPU, a few seconds each).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hsnet.checkpoint import load
from hsnet.errors import HSNetError
from hsnet.params import Params
from hsnet.train import train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _params(params_path, **train_overrides) -> Params:
    return Params.resolve(params_path, "sample", {"train": train_overrides} if train_overrides else None)


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    """The tensor cache in this test's folder, no MLflow, no progress bars."""
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    return dict(track=False, progress=False)


def _inode(path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def test_a_kill_between_best_pt_and_last_pt_never_leaves_a_best_pt_the_history_does_not_hold(
        tiny_data, tiny_params, tmp_path, quiet):
    """save_epoch's docstring: "``best.pt`` [...] written first: ``last.pt`` never records a best
    epoch that ``best.pt`` does not hold (stopped between the two writes, the resumed run trains
    that epoch again and writes both)"; README: a resumed run may change "how long"
    (``train.epochs``, ``max_epochs``, ``early_stopping``).

    ``hsnet train`` (a subprocess) is SIGKILLed the moment epoch 2's first checkpoint file lands:
    in the middle of the other's write (last.pt is 185 MB, fsynced, every epoch; 500 RAF-DB
    epochs take 19 minutes on an H100, 2.3 s an epoch, so a kill often lands there). The run is
    then finished where ``last.pt`` says it stands (``--resume --set train.max_epochs=N``).
    A run never stopped, with those settings, ends with ``best.pt`` holding the epoch its summary
    and history.json name. Here the kill leaves epoch 2's ``best.pt`` beside epoch 1's
    ``last.pt``; the summary then says best epoch 1, history.json ends at epoch 1, and ``best.pt``
    (what evaluate, register and the MLflow run's "checkpoint" artifact take) holds epoch 2's
    weights, an epoch no record of the run has. The same happens whenever the resumed epoch does
    not improve again: ``early_stopping`` added on resume, a GPU resume (not bit for bit,
    README), a Kubeflow retry whose S3 prefix got best.pt but not last.pt."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hsnet", "train", "--data", str(tiny_data), "--params", str(tiny_params),
           "--dataset", "sample", "--out", str(out), "--no-mlflow"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _inode(out / "last.pt") is None:  # epoch 1's checkpoints are written (best.pt, then last.pt)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.005)
        first = {name: _inode(out / name) for name in ("best.pt", "last.pt")}
        while all(_inode(out / name) == ino for name, ino in first.items()):  # until epoch 2 replaces one
            assert proc.poll() is None and time.monotonic() < deadline, "epoch 2 wrote no checkpoint"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = load(out / "last.pt")["state"]["epoch"]

    summary = train(tiny_data, _params(tiny_params, max_epochs=stopped_at), out, resume=True, **quiet)

    best, last = load(out / "best.pt"), load(out / "last.pt")
    assert summary["epochs_run"] == stopped_at
    assert best["state"]["epoch"] == summary["best_epoch"], (
        f"train_summary.json says best.pt is epoch {summary['best_epoch']}'s; best.pt holds epoch "
        f"{best['state']['epoch']}'s weights (from the attempt that was killed)")
    if summary["best_epoch"] == last["state"]["epoch"]:
        for key, tensor in last["model"].items():  # the best epoch is the last: its weights
            assert torch.equal(best["model"][key], tensor), key


def test_dvc_repro_after_a_kill_resumes_when_only_a_setting_train_does_not_read_changed(
        tiny_data, tiny_params, tmp_path, quiet):
    """dvc.yaml's train stage: "--resume auto: after a kill, `dvc repro` continues from last.pt";
    hsnet/params.py (STEP_KEYS): "What train reads is also what a resumed training must keep
    (hsnet.train)": train reads input_size, crop, model and train, and an explicit ``--resume``
    compares exactly those (``_changed_settings``).

    ``--resume auto`` (what ``dvc repro`` runs) compares the whole params mapping instead,
    evaluate's, import's and validate's settings too. A training killed after 400 of 500 epochs,
    then ``dvc repro`` after an edit of ``evaluate.tta_hflip`` (read by evaluate alone: it re-runs
    evaluate, not train, per params.py) logs "last.pt is from other data, settings or code:
    training from the start" and throws the 400 epochs away. (An edit under ``defaults:``, a
    dependency of every train stage, makes ``dvc repro`` retrain even a finished run from epoch 1
    the same way.)"""
    out = tmp_path / "run"
    train(tiny_data, _params(tiny_params), out, stop_after_epochs=1, **quiet)  # killed after epoch 1
    changed = Params.resolve(tiny_params, "sample", {"evaluate": {"tta_hflip": True}})
    assert changed.train == _params(tiny_params).train and changed.model == _params(tiny_params).model
    train(tiny_data, changed, out, resume="auto", stop_after_epochs=1, **quiet)
    assert load(out / "last.pt")["state"]["epoch"] == 2, "epoch 1 was thrown away: trained from the start again"


def test_a_last_pt_that_is_a_folder_is_refused_before_an_epoch_is_trained(tiny_data, tiny_params, tmp_path, quiet):
    """``--resume`` "continues from last.pt"; the verdict file beside it is checked the same way
    before any training (``_earlier_verdict``: "... is a folder, where training keeps a guard's
    verdict (a file): remove it").

    With ``last.pt`` a folder (a botched copy, ``mkdir -p runs/x/train/last.pt``, a volume
    mounted there) ``hsnet train --resume`` logs "no last.pt yet, starting from scratch", loads
    the data, trains a whole epoch (on a CPU, hours at 224x224) and only then fails with
    "can't write checkpoint .../last.pt (Is a directory); is the disk full? ... last.pt from the
    last finished epoch is intact, and --resume continues from last.pt": none of which is true.
    Expected: refused before training, naming last.pt as a folder, nothing written."""
    out = tmp_path / "run"
    (out / "last.pt").mkdir(parents=True)
    with pytest.raises(HSNetError, match=r"last\.pt") as err:
        train(tiny_data, _params(tiny_params), out, resume=True, stop_after_epochs=1, **quiet)
    assert "disk full" not in str(err.value), str(err.value)
    assert not (out / "best.pt").exists(), "an epoch was trained (and best.pt written) before last.pt was refused"


def test_a_hand_edited_last_pt_with_a_tensor_of_another_shape_is_refused_by_name(tiny_data, tiny_params,
                                                                                tmp_path, quiet):
    """hsnet.checkpoint: a checkpoint is read "safely (``weights_only``), or an error naming the
    file"; :func:`hsnet.checkpoint.model_from` turns weights that don't fit the model into an
    HSNetError ("the checkpoint's weights don't fit the model its metadata describes ...").

    ``--resume`` from a ``last.pt`` whose metadata matches (same data, settings, code) but one of
    whose tensors has another shape (hand-edited, or written by a build of the model with other
    layer sizes under the same settings) ends in PyTorch's raw ``RuntimeError: Error(s) in
    loading state_dict for HSNet: size mismatch ...``: a traceback from ``hsnet train`` (the CLI
    only turns HSNetError into a message) that names neither the file nor what to do. Under
    ``--resume auto`` (``dvc repro``, the Kubeflow retry) the same crash, every retry."""
    base = tmp_path / "base"
    train(tiny_data, _params(tiny_params), base, stop_after_epochs=1, **quiet)
    ckpt = load(base / "last.pt")
    key = next(k for k, v in ckpt["model"].items() if v.ndim == 4)
    ckpt["model"][key] = torch.zeros(3)
    out = tmp_path / "run"
    out.mkdir()
    torch.save(ckpt, out / "last.pt")
    with pytest.raises(HSNetError, match=r"last\.pt"):
        train(tiny_data, _params(tiny_params), out, resume=True, stop_after_epochs=1, **quiet)
    try:  # auto: refused by name as well, or trained from the start (as over a last.pt of another format)
        summary = train(tiny_data, _params(tiny_params), out, resume="auto", stop_after_epochs=1, **quiet)
    except HSNetError as exc:
        assert "last.pt" in str(exc), str(exc)
    else:
        assert summary["epochs_run"] == 1


def _make_read_only(folder) -> None:
    """chmod 0555; where that doesn't stop this process (root), the immutable attribute."""
    os.chmod(folder, 0o555)
    if os.access(folder, os.W_OK):
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                             capture_output=True).returncode:
            pytest.skip("no way to make a folder read-only for this user here")


def _make_writable(folder) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    os.chmod(folder, 0o755)


def test_a_read_only_output_folder_is_refused_before_an_epoch_is_trained(tiny_data, tiny_params, tmp_path, quiet,
                                                                       caplog):
    """hsnet.io.check_writable / check_creatable: "prove a file can be written there, before any
    work is done" (what crop, fetch, validate, predict and evaluate do with their --out).

    ``hsnet train --out`` into a folder it can't write (a runs folder of another user on a shared
    GPU box, a read-only volume in a pod) loads the data, trains epoch 1 and only then fails,
    with "can't write checkpoint .../best.pt (Permission denied); is the disk full? ... best.pt
    from the last finished epoch is intact, and --resume continues from last.pt": there is no
    last.pt, and the disk is not full. Expected: refused before any epoch, naming the folder."""
    out = tmp_path / "run"
    out.mkdir()
    _make_read_only(out)
    try:
        with caplog.at_level(logging.INFO, logger="hsnet"):
            with pytest.raises(HSNetError) as err:
                train(tiny_data, _params(tiny_params), out, stop_after_epochs=1, **quiet)
    finally:
        _make_writable(out)
    trained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/")]
    assert not trained, f"refused only after training an epoch ({trained[0][:60]}...): {err.value}"
    assert str(out) in str(err.value) and "disk full" not in str(err.value), str(err.value)
