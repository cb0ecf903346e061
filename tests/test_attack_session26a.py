"""Attack, session 26a (from 25e's findings, rewritten): a preempted Kubeflow train step and its
durable checkpoints (hsnet.durable) against the MLflow run that records its epochs.

The promises: hsnet/durable.py "a preempted or killed training ... continues from its last uploaded
epoch"; Uploader.flush "the training's last epoch up now ... a retry then starts from here";
hsnet.train._fit "A retried Kubeflow pod, which starts after the last *uploaded* epoch, then trains
the lost epochs again without logging them twice"; hsnet.interrupt.install "a preempted pod's
SIGTERM then ends the step through its ``finally`` blocks: ... its MLflow run ended as killed".
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from hsnet.params import Params

pytestmark = pytest.mark.slow

PARAMS = ("datasets:\n  sample:\n    input_size: 80\n    crop: {detector: none, size: 80}\n    model: {ktl: false}\n"
          "    train: {lr: 0.001, epochs: EPOCHS, batch_size: 16, seed: 3}\n")


def _params(tmp_path: Path, epochs: int) -> Params:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.replace("EPOCHS", str(epochs)))
    return Params.resolve(path, "sample")


def _epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]["epoch"]


def _put(s3, uri: str, name: str, path: Path) -> None:
    from hsnet.s3 import split_uri

    bucket, key = split_uri(f"{uri}/{name}")
    s3.upload_file(str(path), bucket, key)


def _get(s3, uri: str, name: str, dest: Path) -> Path:
    from hsnet.s3 import split_uri

    bucket, key = split_uri(f"{uri}/{name}")
    s3.download_file(bucket, key, str(dest))
    return dest


def test_a_training_resumed_at_its_last_epoch_uploads_it(tiny_data, s3, tmp_path):
    """A pod that finished its last epoch locally, killed before the end's upload (Uploader.flush)
    and restarted on the same node (its --out kept: "that copy is used"), has nothing left to train.
    The prefix still holds epoch 1: if the step then fails after training (exporting, registering
    its figures) the retry on another node restores epoch 1 and trains epoch 2 again, and the
    prefix never holds the training's end. Expected: the end's checkpoint goes up."""
    from hsnet import durable
    from hsnet.train import train

    params, out, uri = _params(tmp_path, 2), tmp_path / "pod", "s3://hsnet/checkpoints/att26a-end/sample"
    train(tiny_data, params, out, stop_after_epochs=1, track=False, progress=False)
    _put(s3, uri, "last.pt", out / "last.pt")  # the first epoch's upload
    train(tiny_data, params, out, resume=True, track=False, progress=False)  # epoch 2, its upload killed
    assert _epoch_of(out / "last.pt") == 2
    durable.train(tiny_data, params, out, uri, min_interval_s=3600, track=False, progress=False)
    held = _epoch_of(_get(s3, uri, "last.pt", tmp_path / "prefix-last.pt"))
    assert held == 2, f"the prefix holds epoch {held} of a training that ended at epoch 2"


def test_a_retried_pod_does_not_log_an_epoch_twice(tiny_data, s3, local_mlflow, tmp_path, monkeypatch):
    """Attempt 1 uploads epoch 1 and logs it; epoch 2 is saved locally, not uploaded (the interval),
    and the pod is killed. Attempt 2 on the same node resumes from the local epoch 2, logs it to the
    run (train._logged_through: "those a kill between a checkpoint and its log left out") and is killed during
    epoch 3. Attempt 3 on another node restores the prefix's epoch 1, trains epoch 2 again and logs
    it again: the run's curves hold epoch 2 twice, of two different trainings. Expected: each epoch
    once (an epoch the prefix may lack is logged once it went up)."""
    import mlflow

    from hsnet import durable

    params, uri = _params(tmp_path, 3), "s3://hsnet/checkpoints/att26a-twice/sample"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:  # attempt 1: killed at the end's upload (after epoch 2)
        mp.setattr(durable.Uploader, "flush", killed)
        with pytest.raises(KeyboardInterrupt):
            durable.train(tiny_data, params, tmp_path / "node1", uri, min_interval_s=3600, progress=False,
                          stop_after_epochs=2)
    assert _epoch_of(tmp_path / "node1" / "last.pt") == 2
    with monkeypatch.context() as mp:  # attempt 2, same node: killed at epoch 3's upload
        mp.setattr(durable.Uploader, "__call__", killed)
        with pytest.raises(KeyboardInterrupt):
            durable.train(tiny_data, params, tmp_path / "node1", uri, min_interval_s=3600, progress=False)
    summary = durable.train(tiny_data, params, tmp_path / "node2", uri, min_interval_s=3600, progress=False)
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(summary["mlflow_run_id"], "val_accuracy")]
    assert sorted(steps) == [1, 2, 3], f"the run's val_accuracy steps: {steps}"


def test_a_terminated_training_ends_its_mlflow_run_killed(tiny_data, local_mlflow, tmp_path, monkeypatch):
    """A pod's SIGTERM (preemption, a deleted run) inside hsnet.interrupt raises Terminated through
    the training; hsnet.interrupt.install says the step's MLflow run is then "ended as killed".
    MLflow's own run context ends it FAILED, which reads as a failed training in the UI. Expected:
    KILLED (and a Ctrl-C too)."""
    import mlflow

    from hsnet import interrupt
    from hsnet.train import train

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    params = _params(tmp_path, 2)

    def terminate(out_dir, improved):
        os.kill(os.getpid(), signal.SIGTERM)
        return True

    with interrupt.interruptible(), pytest.raises(interrupt.Terminated):
        train(tiny_data, params, tmp_path / "run", progress=False, on_checkpoint=terminate)
    runs = mlflow.search_runs(experiment_names=["hsnet"], output_format="list")
    assert [r.info.status for r in runs] == ["KILLED"], [(r.info.run_name, r.info.status) for r in runs]

    shutil.rmtree(tmp_path / "run")

    def ctrl_c(out_dir, improved):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, params, tmp_path / "run", progress=False, on_checkpoint=ctrl_c)
    runs = mlflow.search_runs(experiment_names=["hsnet"], output_format="list")
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"]
