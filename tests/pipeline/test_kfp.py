"""The Kubeflow pipeline: compiled spec (steps, order, GPU, secrets, parameters) and a real local run.

The local run uses kfp.local's SubprocessRunner (use_venv=False): every component runs in a
subprocess of this Python, reading its raw data from moto's S3 server and registering the
model in a real MLflow server.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from components import IMAGE, SLIM_IMAGE
from pipelines.compile import compile_all

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "pipelines" / "hsnet_pipeline.yaml"
STEPS = ["fetch-raw", "import-data", "validate-data", "crop-faces", "train-model", "evaluate-model",
         "register-model"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    text = (out / "hsnet_pipeline.yaml").read_text()
    return text, list(yaml.safe_load_all(text))


def test_committed_yaml_is_up_to_date(spec):
    # compared as data: kfp's header comment prints the params default in no fixed order
    committed = list(yaml.safe_load_all(COMMITTED.read_text()))
    assert committed == spec[1], "pipelines/hsnet_pipeline.yaml is stale: run python -m pipelines.compile"


def test_steps_order_gpu_secrets_parameters(spec):
    pipeline, platform = spec[1]
    tasks = pipeline["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(STEPS)

    def upstream(name):
        t = tasks[name]
        deps = set(t.get("dependentTasks", []))
        for inp in t.get("inputs", {}).get("artifacts", {}).values():
            deps.add(inp["taskOutputArtifact"]["producerTask"])
        return deps

    assert upstream("import-data") == {"fetch-raw"}
    assert upstream("validate-data") == {"fetch-raw", "import-data"}
    assert "validate-data" in upstream("crop-faces")  # a failed validation stops the run before cropping
    assert upstream("train-model") == {"crop-faces"}
    assert upstream("evaluate-model") == {"crop-faces", "train-model"}
    assert upstream("register-model") == {"train-model", "evaluate-model"}

    executors = pipeline["deploymentSpec"]["executors"]
    assert {n: e["container"]["image"] for n, e in executors.items()} == {
        n: SLIM_IMAGE if n in ("exec-fetch-raw", "exec-import-data", "exec-validate-data") else IMAGE for n in executors}
    train = executors["exec-train-model"]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu" and train["accelerator"]["resourceCount"] in ("1", 1)
    assert all("accelerator" not in e["container"].get("resources", {})
               for name, e in executors.items() if name != "exec-train-model")

    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tolerations = k8s["exec-train-model"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    for name in ("exec-fetch-raw", "exec-train-model", "exec-evaluate-model", "exec-register-model"):
        envs = {e["envVar"] for s in k8s[name]["secretAsEnv"] for e in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs
    assert any(s["secretName"] == "hsnet-mlflow" for s in k8s["exec-register-model"]["secretAsEnv"])

    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert {"dataset", "raw_source", "dvc_path", "dvc_rev", "params", "mlflow_tracking_uri"} <= set(params)
    assert params["params"]["defaultValue"] == yaml.safe_load((ROOT / "params.yaml").read_text())
    # no credentials in the spec
    assert "testing" not in spec[0] and "SECRET_ACCESS_KEY:" not in spec[0]


TINY = {"input_size": 80, "import": {}, "validate": {}, "crop": {"detector": "none", "size": 80},
        "model": {"ktl": False}, "train": {"lr": 0.001, "epochs": 2, "batch_size": 16, "seed": 3}}


@pytest.fixture
def kfp_local(tmp_path):
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"),
               raise_on_error=True)
    return tmp_path


@pytest.fixture(scope="module")
def raw_on_s3(s3_server, tmp_path_factory):
    """A tiny sample uploaded to s3://hsnet/raw/sample, and a broken copy at s3://hsnet/raw/broken."""
    import os

    from hsnet.data.sample import generate
    from hsnet.s3 import upload_dir
    from servers import s3_env

    base = tmp_path_factory.mktemp("raw")
    generate(base / "sample", per_class=3, size=96, seed=7)
    saved = dict(os.environ)
    os.environ.update(s3_env(s3_server))
    try:
        upload_dir(base / "sample", "s3://hsnet/raw/sample")
        victim = next((base / "sample").rglob("*.png"))
        victim.write_bytes(b"this is not a png")  # corrupt one image
        upload_dir(base / "sample", "s3://hsnet/raw/broken")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return "s3://hsnet/raw"


@pytest.mark.slow
def test_local_run_end_to_end(kfp_local, use_mlflow_server, raw_on_s3, monkeypatch):
    from mlflow import MlflowClient

    from pipelines.hsnet_pipeline import DEFAULT_PARAMS, hsnet_pipeline

    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"] = TINY
    hsnet_pipeline(dataset="sample", raw_source=f"{raw_on_s3}/sample", params=params,
                         mlflow_tracking_uri=use_mlflow_server)
    client = MlflowClient(use_mlflow_server)
    versions = client.search_model_versions("name='hsnet-sample'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("hsnet-sample", "candidate").version == versions[0].version
    tags = versions[0].tags
    assert tags["dataset"] == "sample" and 0.0 <= float(tags["test_accuracy"]) <= 1.0
    metrics = [p for p in (kfp_local / "kfp-root").rglob("metrics.json") if "evaluate-model" in str(p)]
    assert metrics, "the evaluate step wrote no metrics.json"
    import json

    m = json.loads(metrics[0].read_text())
    assert m["images"] > 0 and float(tags["test_accuracy"]) == pytest.approx(m["accuracy"], abs=1e-6)
    # the confusion matrix went to KFP as ClassificationMetrics, the Data Docs page as HTML
    (evaluate_out,) = [p for p in (kfp_local / "kfp-root").rglob("executor_output.json")
                       if p.parent.name == "evaluate-model"]
    cm = json.loads(evaluate_out.read_text())["artifacts"]["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == m["classes"]
    assert [r["row"] for r in cm["rows"]] == m["confusion_matrix"]
    (docs,) = [p for p in (kfp_local / "kfp-root").rglob("data_docs") if p.parent.name == "validate-data"]
    assert "<html" in docs.read_text().lower()
    # ... and the training curves as an HTML page with the PNG inside
    import base64
    import re

    (curves,) = [p for p in (kfp_local / "kfp-root").rglob("curves") if p.parent.name == "train-model"]
    png = re.search(r'src="data:image/png;base64,([^"]+)"', curves.read_text()).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_broken_dataset_stops_at_validation(kfp_local, use_mlflow_server, raw_on_s3):
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS, hsnet_pipeline

    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"] = TINY
    with pytest.raises(RuntimeError, match="validate-data"):
        hsnet_pipeline(dataset="sample", raw_source=f"{raw_on_s3}/broken", params=params,
                       mlflow_tracking_uri=use_mlflow_server)
    root = kfp_local / "kfp-root"
    assert list(root.rglob("manifest*")) or list(root.rglob("import-data*"))
    assert not list(root.rglob("*crop-faces*")), "cropping ran after a failed validation"
    assert not list(root.rglob("*train-model*"))


def test_submit_reports_an_unreachable_host_and_unknown_dataset(capsys):
    from pipelines.submit import main
    from servers import free_port

    assert main(["--host", f"http://127.0.0.1:{free_port()}", "--dataset", "sample"]) == 2
    err = capsys.readouterr().err
    assert "did not accept the run" in err and "Check --host" in err
    assert main(["--host", "http://127.0.0.1:1", "--dataset", "nope"]) == 2
    assert "--dataset nope: no entry under 'datasets'" in capsys.readouterr().err
