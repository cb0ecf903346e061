"""Registration, gated promotion and rollback against a real MLflow server with artifacts on S3 (moto)."""

from __future__ import annotations

import io
import json
import threading

import boto3
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from hsnet.cli import main
from hsnet.data.datasets import FERG_CLASSES
from hsnet.errors import HSNetError
from hsnet.predict import Classifier
from hsnet.registry import PromotionRefused, promote, register, rollback

pytestmark = pytest.mark.slow


def _aliases(client, name):
    return {a: int(client.get_model_version_by_alias(name, a).version)
            for a in ("candidate", "production", "previous")
            if a in client.get_registered_model(name).aliases}


def test_register_promote_refuse_force_rollback(use_mlflow_server, trained, variant, s3_server, capsys):
    client = MlflowClient(use_mlflow_server)
    metrics = json.loads(trained["metrics"].read_text())
    name = "hsnet-sample-gate"  # the server is shared by the session: a name of its own

    first = register(trained["checkpoint"], trained["metrics"], "sample", name=name)
    assert (first["name"], first["version"], first["already_registered"]) == (name, 1, False)
    mv = client.get_model_version(name, "1")
    assert float(mv.tags["test_accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert mv.tags["test_data_version"] == metrics["data_version"]
    assert mv.tags["dataset"] == "sample" and mv.tags["model.dib"] == "True" and mv.tags["model.ktl"] == "False"
    assert mv.tags["git_commit"] and "train_run_id" in mv.tags
    assert _aliases(client, name) == {"candidate": 1}
    # the same checkpoint again: no second version
    again = register(trained["checkpoint"], trained["metrics"], "sample", name=name)
    assert again["already_registered"] and again["version"] == 1 and again["run_id"] == first["run_id"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # the artifacts went through the server to S3
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="hsnet", Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("artifacts/model.pt") for k in keys), keys[:10]
    assert any(k.endswith("MLmodel") for k in keys)

    assert promote(name)["production"] == 1  # no production yet: the candidate becomes it
    assert _aliases(client, name) == {"candidate": 1, "production": 1}

    worse, worse_metrics, _ = variant(-0.05)
    assert register(worse, worse_metrics, "sample", name=name)["version"] == 2
    with pytest.raises(PromotionRefused, match="does not beat production"):
        promote(name)
    assert _aliases(client, name)["production"] == 1
    assert main(["promote", "--name", name]) == 2  # the CLI refuses with a non-zero exit
    assert "Production is unchanged" in capsys.readouterr().err

    better, better_metrics, _ = variant(+0.05)
    assert register(better, better_metrics, "sample", name=name)["version"] == 3
    with pytest.raises(PromotionRefused):  # not by the required margin
        promote(name, min_delta=0.10)
    decision = promote(name, min_delta=0.01)
    assert decision["promoted"] and not decision["forced"]
    assert _aliases(client, name) == {"candidate": 3, "production": 3, "previous": 1}

    other, other_metrics, _ = variant(+0.2, test_data_version="sha256:someotherdata")
    assert register(other, other_metrics, "sample", name=name)["version"] == 4
    with pytest.raises(PromotionRefused, match="not comparable"):
        promote(name)
    assert main(["promote", "--name", name, "--force"]) == 0
    assert _aliases(client, name)["production"] == 4
    assert "not comparable" in client.get_model_version(name, "4").tags["promotion_forced"]

    assert rollback(name)["production"] == 3
    assert _aliases(client, name) == {"candidate": 4, "production": 3, "previous": 4}
    assert "rolled_back_at" in client.get_model_version(name, "4").tags

    # two promotions at once: production always exists and points at one of them
    errors = []

    def go(v):
        try:
            promote(name, version=v, force=True)
        except HSNetError as exc:  # losing the race is reported, not silent
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(v,)) for v in (1, 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert _aliases(client, name)["production"] in (1, 2)


def test_production_model_as_pyfunc(use_mlflow_server, trained, tmp_path):
    import mlflow

    name = "hsnet-sample-pyfunc"
    register(trained["checkpoint"], trained["metrics"], "sample", name=name)
    promote(name)
    model = mlflow.pyfunc.load_model(f"models:/{name}@production")
    assert model.metadata.signature.inputs.input_names() == ["image"]

    faces = sorted((trained["data"] / "images").rglob("*.png"))[:3]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in faces]
    encoded = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=98)
        encoded.append(buf.getvalue())
    out = model.predict(pd.DataFrame({"image": [encoded[0], arrays[1], arrays[2]]}))
    classes = list(FERG_CLASSES)
    assert list(out.columns) == ["expression", "confidence"] + [f"prob_{c}" for c in classes]
    probs = out[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert set(out["expression"]) <= set(classes)
    # the same numbers as the checkpoint itself: the preprocessing travelled with the model
    local = Classifier.from_checkpoint(trained["checkpoint"], device="cpu").probabilities(arrays[1:])
    np.testing.assert_allclose(probs[1:], local, atol=1e-5)
    with pytest.raises(Exception, match="not a readable image"):
        model.predict(pd.DataFrame({"image": [b"not an image"]}))


def test_predict_from_the_registry_downloads_each_version_once(use_mlflow_server, trained, variant, tmp_path,
                                                              monkeypatch):
    """`hsnet predict --model models:/NAME@production`: the alias is resolved, the version is
    downloaded once into the model cache and reused; promoting another version moves to it."""
    import mlflow

    from hsnet import tracking
    from hsnet.predict import load_classifier

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    downloads = []
    real_download = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                        lambda **kw: downloads.append(kw["artifact_uri"]) or real_download(**kw))
    name = "hsnet-sample-predict"
    register(trained["checkpoint"], trained["metrics"], "sample", name=name)
    promote(name)
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg", quality=95)
    for _ in range(2):
        assert main(["predict", str(tmp_path / "astronaut.jpg"), "--model", f"models:/{name}@production",
                     "--out", str(tmp_path / "out.jsonl")]) == 0
        (result,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert len(result["faces"]) == 1 and result["faces"][0]["expression"] in FERG_CLASSES
    assert downloads == [f"models:/{name}/1"]
    cached = list((tmp_path / "cache" / "models").glob("*/*"))
    assert [p.name for p in cached] == [f"{name}-v1"] and (cached[0] / "MLmodel").is_file()
    assert not list((tmp_path / "cache" / "models").glob("*/.download-*"))  # no half-downloaded copy left

    better, better_metrics, _ = variant(+0.05)
    register(better, better_metrics, "sample", name=name)
    promote(name)
    classifier = load_classifier(f"models:/{name}@production")
    assert downloads[-1] == f"models:/{name}/2"
    local = Classifier.from_checkpoint(better, device="cpu")
    x = [np.asarray(Image.open(sorted((trained["data"] / "images").rglob("*.png"))[0]).convert("RGB"))]
    np.testing.assert_allclose(classifier.probabilities(x), local.probabilities(x), atol=1e-5)

    monkeypatch.setattr(tracking, "MODEL_CACHE_KEEP", 1)
    load_classifier(f"models:/{name}/1")
    assert [p.name for p in (tmp_path / "cache" / "models").glob("*/*")] == [f"{name}-v1"]
    with pytest.raises(HSNetError, match=f"models:/{name}@nosuchalias.*alias"):
        load_classifier(f"models:/{name}@nosuchalias")


def test_register_checks_its_inputs(use_mlflow_server, trained, tmp_path):
    with pytest.raises(HSNetError, match="run hsnet evaluate first"):
        register(trained["checkpoint"], tmp_path / "missing.json", "sample")
    with pytest.raises(HSNetError, match="the checkpoint is for 'sample'"):
        register(trained["checkpoint"], trained["metrics"], "rafdb")
    with pytest.raises(HSNetError, match="no 'candidate' version"):
        promote("hsnet-nothing-here")
    with pytest.raises(HSNetError, match="no 'previous' version"):
        rollback("hsnet-nothing-here")


def test_unreachable_registry_fails_fast(trained, monkeypatch, tmp_path):
    from servers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HSNetError, match="unreachable"):
        register(trained["checkpoint"], trained["metrics"], "sample")


def test_mlflow_models_serve(use_mlflow_server, trained, tmp_path):
    """`mlflow models serve -m models:/NAME@production --env-manager local` answers REST requests."""
    import base64
    import os
    import sys
    import urllib.request
    from pathlib import Path

    from servers import Server, free_port

    name = "hsnet-sample-serve"
    register(trained["checkpoint"], trained["metrics"], "sample", name=name)
    promote(name)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = Server(["mlflow", "models", "serve", "-m", f"models:/{name}@production", "--env-manager", "local",
                     "-h", "127.0.0.1", "-p", str(port), "-w", "1"], f"http://127.0.0.1:{port}", "/ping", env,
                    tmp_path / "serve.log")
    try:
        face = sorted((trained["data"] / "images").rglob("*.png"))[0]
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(face.read_bytes()).decode()]]}}
        req = urllib.request.Request(server.url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            rows = json.loads(resp.read())["predictions"]
    finally:
        server.stop()
    expected = Classifier.from_checkpoint(trained["checkpoint"], device="cpu").probabilities(
        [np.asarray(Image.open(face).convert("RGB"))])[0]
    assert len(rows) == 1 and rows[0]["expression"] == FERG_CLASSES[int(expected.argmax())]
    np.testing.assert_allclose([rows[0][f"prob_{c}"] for c in FERG_CLASSES], expected, atol=1e-5)


def test_local_sqlite_registry_without_a_server(local_mlflow, trained, variant):
    """The default store (sqlite under mlflow/, no server) returns versions as ints: same behaviour."""
    client = MlflowClient(local_mlflow)
    assert register(trained["checkpoint"], trained["metrics"], "sample")["version"] == 1
    assert promote("hsnet-sample")["production"] == 1
    assert promote("hsnet-sample")["promoted"] is False  # already production: nothing to do
    better, better_metrics, _ = variant(+0.05)
    register(better, better_metrics, "sample")
    assert promote("hsnet-sample")["production"] == 2
    assert rollback("hsnet-sample")["production"] == 1
    assert _aliases(client, "hsnet-sample") == {"candidate": 2, "production": 1, "previous": 2}


def test_server_script_never_prints_the_database_password(tmp_path):
    """mlflow/server.sh with a Postgres URI: the arguments reach `mlflow server`, the password not the log."""
    import os
    import subprocess
    from pathlib import Path

    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "ARGS: $*"\n')
    fake.chmod(0o755)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:s3cr3t-pw@db:5432/mlflow",
           "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow", "MLFLOW_ALLOWED_HOSTS": "mlflow.example.com"}
    proc = subprocess.run(["bash", str(root / "mlflow" / "server.sh")], env=env, capture_output=True, text=True,
                          check=True)
    assert "s3cr3t-pw" not in proc.stderr and "postgresql://mlflow:***@db:5432/mlflow" in proc.stderr
    args = proc.stdout
    assert "--backend-store-uri postgresql://mlflow:s3cr3t-pw@db:5432/mlflow" in args
    assert "--artifacts-destination s3://bucket/mlflow" in args and "--serve-artifacts" in args
    assert "--allowed-hosts localhost,localhost:5000,127.0.0.1,127.0.0.1:5000,mlflow.example.com" in args
