"""Durable checkpoints (hsnet.durable): the Kubeflow train step killed mid-run under kfp.local,
run again with the same run key, resumes from the S3 copy of its last epoch and ends with the
weights of an uninterrupted run (CPU, fixed seed). Real parts: kfp.local's SubprocessRunner,
moto's S3 server, the component's own subprocess killed with SIGKILL."""

import copy
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
SETTINGS = {"input_size": 80, "crop": {"detector": "none"}, "model": {"ktl": False},
            "train": {"lr": 0.001, "epochs": 3, "batch_size": 16, "seed": 3, "scheduler": {"patience": 1}}}
BASE = "s3://hsnet/checkpoints"


def _pipeline():
    from kfp import dsl
    from kfp.dsl import Dataset

    from components.train import train_model

    @dsl.pipeline(name="train-only")
    def train_only(crops_dir: str, params: dict, checkpoint_uri: str):
        crops = dsl.importer(artifact_uri=crops_dir, artifact_class=Dataset)
        train_model(dataset="sample", params=params, mlflow_tracking_uri="", crops=crops.output,
                    checkpoint_uri=checkpoint_uri, checkpoint_every_s=0.0)  # every epoch

    return train_only


def _run(tmp_path: Path, name: str, run_key: str, monkeypatch, tiny_data, params) -> Path:
    """One kfp.local run of the train step with KFP_RUN_ID=run_key; its Model folder."""
    from kfp import local

    monkeypatch.setenv("KFP_RUN_ID", run_key)
    root = tmp_path / name
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    _pipeline()(crops_dir=str(tiny_data), params=params, checkpoint_uri=BASE)
    (model,) = [p for p in root.rglob("model") if p.parent.name == "train-model"]
    return model


def _weights(path: Path) -> dict:
    from hsnet.checkpoint import load

    return load(path)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _get(uri: str, dest: Path) -> Path:
    from hsnet.s3 import client, split_uri

    bucket, key = split_uri(uri)
    client().download_file(bucket, key, str(dest))
    return dest


def test_killed_train_step_resumes_from_s3(tmp_path, monkeypatch, capfd, s3_server, local_mlflow, tiny_data):
    import psutil

    from hsnet import durable
    from hsnet.checkpoint import load
    from hsnet.params import Params
    from hsnet.s3 import list_objects
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS
    from servers import s3_env

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"] = SETTINGS
    settings = Params.from_mapping(params, "sample")
    epochs = settings.train.epochs

    # the reference: one uninterrupted run
    reference = _run(tmp_path, "reference", "run-reference", monkeypatch, tiny_data, params)
    assert sorted(p.name for p in reference.iterdir()) == ["best.pt", "history.json", "train_summary.json"]

    # the same training, its process killed (SIGKILL: no clean-up) once S3 holds a finished epoch
    prefix = durable.run_prefix(BASE, "run-killed", settings)
    failed = []

    def first_attempt():
        try:
            _run(tmp_path, "attempt-1", "run-killed", monkeypatch, tiny_data, params)
        except BaseException as exc:  # noqa: BLE001 - the killed step fails the local run
            failed.append(exc)

    thread = threading.Thread(target=first_attempt)
    thread.start()
    deadline, killed = time.monotonic() + 600, []
    while time.monotonic() < deadline and thread.is_alive() and not killed:
        if any(o["Key"].endswith("/last.pt") for o in list_objects(prefix)):
            # the step's processes (its shell and the Python under it, both with train_model in
            # their command line), listed first, then killed: SIGKILL, as a node going away would
            step_processes = []
            for child in psutil.Process().children(recursive=True):
                try:
                    if any("train_model" in part for part in child.cmdline()):
                        step_processes.append(child)
                except psutil.Error:
                    continue
            for child in step_processes:
                try:
                    child.send_signal(signal.SIGKILL)
                    killed.append(child.pid)
                except psutil.Error:
                    continue
        time.sleep(0.05)
    thread.join(600)
    assert killed and failed, "the train step was not killed mid-run"
    stopped_at = load(_get(f"{prefix}/last.pt", tmp_path / "killed-last.pt"))["state"]["epoch"]
    assert 1 <= stopped_at < epochs, f"killed after epoch {stopped_at} of {epochs}: not mid-run"

    # run again with the same run key, on a fresh pipeline root (a new pod): it resumes from S3
    capfd.readouterr()
    resumed = _run(tmp_path, "attempt-2", "run-killed", monkeypatch, tiny_data, params)
    out = capfd.readouterr()
    assert f"from epoch {stopped_at}" in out.out + out.err, "the second attempt did not resume"

    # ... and ends where the uninterrupted run ended: the same best.pt, the same last epoch's weights
    assert _same(_weights(resumed / "best.pt"), _weights(reference / "best.pt"))
    ref_last = _get(f"{durable.run_prefix(BASE, 'run-reference', settings)}/last.pt", tmp_path / "ref-last.pt")
    end_last = _get(f"{prefix}/last.pt", tmp_path / "end-last.pt")
    assert load(end_last)["state"]["epoch"] == epochs
    assert _same(_weights(end_last), _weights(ref_last))

    # ... in the killed attempt's MLflow run: one run with every epoch, finished (a new run per
    # attempt split the history and left the killed one RUNNING for ever)
    from mlflow import MlflowClient

    run_id = load(tmp_path / "killed-last.pt")["meta"]["mlflow_run_id"]
    assert load(end_last)["meta"]["mlflow_run_id"] == run_id
    client = MlflowClient(local_mlflow)
    assert client.get_run(run_id).info.status == "FINISHED"
    # (epochs after the last upload to S3 ran twice, the second time from the same state)
    assert sorted({m.step for m in client.get_metric_history(run_id, "val_accuracy")}) == list(range(1, epochs + 1))


def test_resume_auto_restarts_on_other_settings(tmp_path, tiny_data, caplog):
    """last.pt of other settings (dvc repro after a params change) is not resumed with resume="auto";
    last.pt of the same settings is."""
    import logging

    from hsnet.checkpoint import load
    from hsnet.params import Params
    from hsnet.train import train

    def settings(lr):
        return Params.from_mapping({"datasets": {"sample": {**SETTINGS, "train": {**SETTINGS["train"], "epochs": 1,
                                                                                     "lr": lr}}}}, "sample")

    out = tmp_path / "run"
    train(tiny_data, settings(0.001), out, track=False, progress=False)
    first = _weights(out / "last.pt")
    caplog.set_level(logging.INFO, logger="hsnet")
    train(tiny_data, settings(0.002), out, resume="auto", track=False, progress=False)
    assert "other data, settings or code: training from the start" in caplog.text
    assert load(out / "last.pt")["meta"]["params"]["train"]["lr"] == 0.002
    assert not _same(_weights(out / "last.pt"), first)  # trained again, with the new lr
    caplog.clear()
    train(tiny_data, settings(0.002), out, resume="auto", track=False, progress=False)
    assert "resuming" in caplog.text and "from epoch 1" in caplog.text


def test_resume_auto_restarts_a_checkpoint_of_other_code(tmp_path, tiny_data, caplog):
    """dvc repro re-runs train after a change to its code (dvc.yaml lists the code as its deps), with
    --resume auto: a last.pt written by other code (or by a version that didn't record its code) is
    not resumed, even when it is finished, else the stage's outputs would be the old code's under
    the new code's dvc.lock. last.pt of the same code still is (a Kubeflow retry after preemption)."""
    import logging

    from hsnet.checkpoint import load, save
    from hsnet.params import Params
    from hsnet.train import train

    settings = Params.from_mapping({"datasets": {"sample": {**SETTINGS, "train": {**SETTINGS["train"],
                                                                                  "epochs": 1}}}}, "sample")
    out = tmp_path / "run"
    train(tiny_data, settings, out, track=False, progress=False)
    caplog.set_level(logging.INFO, logger="hsnet")
    caplog.clear()  # the first training's lines are captured too where an earlier test left the root at INFO
    train(tiny_data, settings, out, resume="auto", track=False, progress=False)  # the same code: finished
    assert "resuming" in caplog.text and "epoch 1/1" not in caplog.text
    for other in ("sha256:0123456789abcdef", None):  # other code; a checkpoint from before code versions
        ckpt = load(out / "last.pt")
        if other is None:
            del ckpt["meta"]["code_version"]
        else:
            ckpt["meta"]["code_version"] = other
        save(out / "last.pt", ckpt)
        caplog.clear()
        train(tiny_data, settings, out, resume="auto", track=False, progress=False)
        assert "from other data, settings or code: training from the start" in caplog.text
        assert "epoch 1/1" in caplog.text  # it trained
        assert load(out / "last.pt")["meta"]["code_version"].startswith("sha256:")


def test_uploads_are_throttled_and_best_goes_with_its_last(tmp_path, s3_server, monkeypatch):
    """The first epoch's checkpoints go up at once, later ones at most every min_interval_s; a best.pt
    that improved in between goes up with the next last.pt, never alone."""
    from hsnet import durable
    from hsnet.s3 import list_objects
    from servers import s3_env

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    uri = "s3://hsnet/checkpoints/throttle"
    out = tmp_path / "out"
    out.mkdir()

    def epoch(n):
        for name in ("best.pt", "last.pt"):
            (out / name).write_bytes(f"{name} {n}".encode())

    def remote():
        return {o["Key"].rsplit("/", 1)[1]: _get(f"s3://hsnet/{o['Key']}", tmp_path / "r").read_bytes().decode()
                for o in list_objects(uri)}

    clock = iter([0.0, 10.0, 20.0, 400.0, 410.0, 420.0])
    up = durable.Uploader(uri, min_interval_s=300, clock=lambda: next(clock))
    assert epoch(1) is None and up(out, True) is True  # up: the training may log epoch 1 (hsnet.train._fit)
    assert remote() == {"best.pt": "best.pt 1", "last.pt": "last.pt 1"}
    epoch(2)
    assert up(out, True) is False  # 10 s later: not yet, and not to be logged yet
    epoch(3), up(out, False)
    assert remote() == {"best.pt": "best.pt 1", "last.pt": "last.pt 1"}
    epoch(4), up(out, False)  # 400 s: due; epoch 2's improvement is still pending, so best.pt goes too
    assert remote() == {"best.pt": "best.pt 4", "last.pt": "last.pt 4"} and up.uploads == 2
    epoch(5), up(out, False)  # 410 s: not due...
    assert remote()["last.pt"] == "last.pt 4"
    assert up.flush(out) is True  # ...but the training ended: its last epoch goes up whatever the interval
    assert remote() == {"best.pt": "best.pt 4", "last.pt": "last.pt 5"} and up.uploads == 3


def test_a_step_keeps_its_checkpoints_at_the_run_s_prefix_only_when_it_has_both(caplog):
    """The Kubeflow train steps: BASE/RUN/DATASET-SETTINGS with a base and a run id; no base: kept
    in the pod, silently (asked for); a base but no run id (kfp.local, a pod without the label):
    kept in the pod, and said, since a restart then trains from the start."""
    from hsnet import durable
    from hsnet.errors import HSNetError
    from hsnet.params import Params

    settings = Params.resolve(None, "sample")
    assert durable.prefix_for_run("", "run-1", settings) is None
    assert "stay local" not in caplog.text
    assert durable.prefix_for_run(BASE, "", settings) is None
    assert "no pipeline run id" in caplog.text and "trains from the start" in caplog.text
    prefix = durable.prefix_for_run(BASE + "/", "run-1", settings)
    assert prefix.startswith("s3://hsnet/checkpoints/run-1/sample-")
    assert len(prefix.rsplit("-", 1)[1]) == 12  # the settings' hash
    with pytest.raises(HSNetError, match="run key"):
        durable.prefix_for_run(BASE, "a/b", settings)
    # the ablation's group step: one prefix per training, or none for all of them, said once
    import dataclasses

    other = dataclasses.replace(settings, train=dataclasses.replace(settings.train, seed=settings.train.seed + 1))
    caplog.clear()
    assert durable.prefixes_for_run(BASE, "", {"a": settings, "b": other}) is None
    assert caplog.text.count("no pipeline run id") == 1
    both = durable.prefixes_for_run(BASE, "run-1", {"a": settings, "b": other})
    assert both["a"] == prefix and both["b"].startswith("s3://hsnet/checkpoints/run-1/sample-") and both["b"] != prefix
    assert durable.prefixes_for_run("", "run-1", {"a": settings}) is None
