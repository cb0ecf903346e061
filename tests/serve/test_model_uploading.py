"""``hsnet serve --model runs:/RUN_ID/model`` started while that model is still uploading.

mlflow.pyfunc.log_model makes the logged model PENDING, uploads its files, then marks it READY
(FAILED when the upload fails). A server started in that window (a pipeline that deploys as soon as
training reports its run) should wait as it waits for a registry that is starting, not end at once;
a model whose upload failed can't change, and ends the start at once, naming it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

HSNET = str(Path(sys.executable).with_name("hsnet"))


@pytest.fixture
def unfinished(trained, tmp_path, monkeypatch):
    """(tracking URI, client, runs:/ URI, logged model): a real hsnet model (registered, then its
    files logged again by a new run as a logged model left PENDING, as while log_model uploads)."""
    import mlflow

    from hsnet.evaluate import evaluate
    from hsnet.registry import register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name="hsnet-u")
    files = Path(mlflow.artifacts.download_artifacts("models:/hsnet-u/1", dst_path=str(tmp_path / "files")))
    client = mlflow.MlflowClient()
    experiment = mlflow.set_experiment("uploading")
    with mlflow.start_run() as active:
        pass
    model = client.create_logged_model(experiment.experiment_id, name="model", source_run_id=active.info.run_id)
    client.log_model_artifacts(model.model_id, str(files))
    return uri, client, f"runs:/{active.info.run_id}/model", model


def _start(uri: str, model: str, tmp_path: Path):
    from servers import Server, free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri, "HSNET_CACHE_DIR": str(tmp_path / "cache"),
           "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return Server([HSNET, "serve", "--model", model, "--port", str(port), "--host", "127.0.0.1", "--threads", "1"],
                  f"http://127.0.0.1:{port}", "/v2/models/hsnet/ready", env, tmp_path / "serve.log")


@pytest.mark.slow
def test_a_model_still_uploading_is_waited_for_at_start(unfinished, tmp_path):
    """The server logs that it tries again, and is ready once the model is READY."""
    uri, client, model_uri, model = unfinished
    log = tmp_path / "serve.log"
    said = []

    def finish_when_it_waits():
        deadline = time.monotonic() + 80
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if "trying again" in text:
                said.append(text)
                client.finalize_logged_model(model.model_id, "READY")
                return
            time.sleep(0.2)

    waiter = threading.Thread(target=finish_when_it_waits, daemon=True)
    waiter.start()
    server = _start(uri, model_uri, tmp_path)  # raises with the log if the server ends or is never ready
    try:
        waiter.join(5)
        assert said and "PENDING" in said[0], f"no retry naming the upload in the log: {log.read_text()[-2000:]}"
        assert "tracking server (registry) may be starting" not in said[0], said[0][-1500:]
    finally:
        server.stop()


@pytest.mark.slow
def test_a_model_whose_upload_failed_ends_the_start_at_once(unfinished, tmp_path):
    uri, client, model_uri, model = unfinished
    client.finalize_logged_model(model.model_id, "FAILED")
    start = time.monotonic()
    with pytest.raises(RuntimeError) as ended:
        _start(uri, model_uri, tmp_path).stop()
    assert "FAILED" in str(ended.value) and "trying again" not in str(ended.value), str(ended.value)[-2000:]
    assert time.monotonic() - start < 60, "waited for a model whose upload failed, which can't change"
