"""A guard's verdict is kept: a retry of the same training (a Kubeflow step's retry policy, the
next `dvc repro`) ends at once with it instead of training again to the same verdict; other
settings, data or code train as usual.

KFP's retry policy retries a failed step whatever failed it (no exit-code condition), so a run the
guards stopped was trained again up to 3 times, each after a backoff, each re-loading the data."""

from __future__ import annotations

import json
import time

import pytest

from test_learning import _params  # the tiny sample's params.yaml with these train settings

from hsnet.errors import HSNetError

BLOWS_UP = "lr: 30, epochs: 3"  # tests/train/test_learning.py: stops after epoch 1, loss far above ln 7


@pytest.fixture
def no_data(monkeypatch):
    """Loading the data (minutes for RAF-DB, more for FERG-DB) fails the test from now on."""
    import hsnet.train

    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded: the retry trained again")
    return lambda: monkeypatch.setattr(hsnet.train, "load_split", refuse)


def test_a_retry_of_a_stopped_training_ends_at_once_with_its_verdict(tiny_data, tmp_path, monkeypatch, no_data):
    from hsnet.train import train

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    with pytest.raises(HSNetError, match=r"after epoch 1 .*far above ln 7") as first:
        train(tiny_data, _params(tmp_path, BLOWS_UP), out, track=False, progress=False, resume="auto")
    recorded = json.loads((out / "verdict.json").read_text())
    assert recorded["epoch"] == 1 and recorded["message"] == str(first.value)

    no_data()
    started = time.monotonic()
    with pytest.raises(HSNetError, match=r"earlier attempt .* stopped at epoch 1: training is not learning: the "
                                         r"training loss after epoch 1 is .*far above ln 7.*verdict\.json"):
        train(tiny_data, _params(tmp_path, BLOWS_UP), out, track=False, progress=False, resume="auto")
    assert time.monotonic() - started < 60


def test_other_settings_or_a_fresh_start_train_again(tiny_data, tmp_path, monkeypatch):
    from hsnet.train import train

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    with pytest.raises(HSNetError, match="after epoch 1"):
        train(tiny_data, _params(tmp_path, BLOWS_UP), out, track=False, progress=False, resume="auto")
    # without --resume: a new training, judged afresh (the guard, not the record)
    with pytest.raises(HSNetError, match=r"^training is not learning: the training loss after epoch 1"):
        train(tiny_data, _params(tmp_path, BLOWS_UP), out, track=False, progress=False, resume=False)
    # the user lowered the lr (dvc repro after editing params.yaml): it trains, and the old verdict is gone
    train(tiny_data, _params(tmp_path, "lr: 0.001, epochs: 1"), out, track=False, progress=False, resume="auto")
    assert not (out / "verdict.json").exists()
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1]


def test_a_retried_kubeflow_step_on_another_node_reads_the_verdict_from_the_prefix(
        tiny_data, tmp_path, monkeypatch, s3_server, no_data):
    from servers import s3_env

    from hsnet import durable

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    prefix = "s3://hsnet/checkpoints/run-verdict/sample"
    with pytest.raises(HSNetError, match="after epoch 1"):  # before any checkpoint was written
        durable.train(tiny_data, _params(tmp_path, BLOWS_UP), tmp_path / "pod1", prefix, track=False, progress=False)
    no_data()
    with pytest.raises(HSNetError, match="earlier attempt .* stopped at epoch 1"):
        durable.train(tiny_data, _params(tmp_path, BLOWS_UP), tmp_path / "pod2", prefix, track=False, progress=False)


def test_the_failed_mlflow_run_says_why(tiny_data, tmp_path, monkeypatch, local_mlflow):
    """The run the guard stopped ends FAILED in MLflow; its tag ``verdict`` holds the guard's words."""
    import mlflow

    from hsnet.train import train

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(HSNetError, match="after epoch 1") as stopped:
        train(tiny_data, _params(tmp_path, BLOWS_UP), tmp_path / "run", progress=False, resume="auto")
    client = mlflow.MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("hsnet").experiment_id], "tags.step = 'train'")
    assert run.info.status == "FAILED" and run.data.tags["verdict"] == str(stopped.value)
