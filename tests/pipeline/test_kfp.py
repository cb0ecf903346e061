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
from kfp_ir import container_tasks

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "pipelines" / "hsnet_pipeline.yaml"
CROPS = "condition-branches-1"  # crop -> train -> evaluate -> register, on a GPU or a CPU crop branch
STEPS = ["source-version", "fetch-raw", "import-data", "validate-data", CROPS]
SLIM_EXECUTORS = ("exec-source-version", "exec-fetch-raw", "exec-import-data", "exec-validate-data")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    text = (out / "hsnet_pipeline.yaml").read_text()
    return text, list(yaml.safe_load_all(text))


def test_committed_yaml_is_up_to_date(spec):
    # byte for byte: kfp's header comment printed the params default in no fixed order, so every
    # recompile changed the committed file; compile.stable_header sorts it
    assert COMMITTED.read_text() == spec[0], "pipelines/hsnet_pipeline.yaml is stale: run python -m pipelines.compile"


def _branches(pipeline) -> dict:
    """The crop branches' tasks: {"crop-on-gpu": {display name: (task key, task)}, "crop-on-cpu": ...}."""
    out = {}
    for branch in pipeline["components"]["comp-condition-branches-1"]["dag"]["tasks"].values():
        tasks = pipeline["components"][branch["componentRef"]["name"]]["dag"]["tasks"]
        out[branch["taskInfo"]["name"]] = {t["taskInfo"]["name"]: (key, t) for key, t in tasks.items()}
    return out


def _executor(pipeline, task: dict) -> str:
    return pipeline["components"][task["componentRef"]["name"]]["executorLabel"]


def _upstream(t: dict) -> set[str]:
    deps = set(t.get("dependentTasks", []))
    for inp in t.get("inputs", {}).get("artifacts", {}).values():
        if "taskOutputArtifact" in inp:
            deps.add(inp["taskOutputArtifact"]["producerTask"])
    for inp in t.get("inputs", {}).get("parameters", {}).values():
        if "taskOutputParameter" in inp:
            deps.add(inp["taskOutputParameter"]["producerTask"])
    return deps


def test_every_component_is_a_step_of_the_pipeline(spec):
    """The step list comes from components/ (its __all__): a new component that the pipeline doesn't
    run, or a task without a component there, fails here."""
    import re

    import components

    executors = spec[1][0]["deploymentSpec"]["executors"]
    ran = {re.sub(r"-\d+$", "", name.removeprefix("exec-")) for name in executors}
    defined = {name.replace("_", "-") for name in components.__all__ if name.islower()}
    assert ran == defined


def test_steps_order_gpu_secrets_parameters(spec):
    pipeline, platform = spec[1]
    tasks = pipeline["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(STEPS)
    assert _upstream(tasks["source-version"]) == set()
    assert _upstream(tasks["fetch-raw"]) == {"source-version"}
    # the steps take source-version's settings (this dataset's part of params), not the whole params:
    # a parameter's value is in their cache key (tests/pipeline/test_attack_cluster.py runs it)
    assert _upstream(tasks["import-data"]) == {"fetch-raw", "source-version"}
    assert _upstream(tasks["validate-data"]) == {"fetch-raw", "import-data", "source-version"}
    for name, key in (("import-data", "import_settings"), ("validate-data", "validate_settings")):
        assert tasks[name]["inputs"]["parameters"]["params"] == {
            "taskOutputParameter": {"outputParameterKey": key, "producerTask": "source-version"}}
    assert "validate-data" in _upstream(tasks[CROPS])  # a failed validation stops the run before cropping

    # crop_device picks the branch: cuda -> crop on a GPU, anything else -> on the CPU; each
    # branch trains, evaluates and registers what its crop made
    conditions = {b["taskInfo"]["name"]: b["triggerPolicy"]["condition"]
                  for b in pipeline["components"]["comp-condition-branches-1"]["dag"]["tasks"].values()}
    assert conditions["crop-on-gpu"] == "inputs.parameter_values['pipelinechannel--crop_device'] == 'cuda'"
    assert conditions["crop-on-cpu"].startswith("!(") and "== 'cuda'" in conditions["crop-on-cpu"]
    branches = _branches(pipeline)
    for branch in branches.values():
        assert sorted(branch) == ["crop", "evaluate", "promote-if-asked", "register", "train"]
        key = {name: k for name, (k, _) in branch.items()}
        assert _upstream(branch["train"][1]) == {key["crop"]}
        assert _upstream(branch["evaluate"][1]) == {key["crop"], key["train"]}
        assert _upstream(branch["register"][1]) == {key["train"], key["evaluate"]}
        assert branch["crop"][1]["inputs"]["parameters"]["params"] == {
            "componentInputParameter": "pipelinechannel--source-version-crop_settings"}
        for task, key in (("train", "train_settings"), ("evaluate", "evaluate_settings")):
            assert branch[task][1]["inputs"]["parameters"]["params"] == {
                "componentInputParameter": f"pipelinechannel--source-version-{key}"}

    executors = pipeline["deploymentSpec"]["executors"]
    assert {n: e["container"]["image"] for n, e in executors.items()} == {
        n: SLIM_IMAGE if n in SLIM_EXECUTORS else IMAGE for n in executors}
    gpu_executors = {n for n, e in executors.items() if "accelerator" in e["container"].get("resources", {})}
    assert gpu_executors == {_executor(pipeline, branches["crop-on-gpu"]["crop"][1])} | \
        {_executor(pipeline, b["train"][1]) for b in branches.values()}
    for name in gpu_executors:
        acc = executors[name]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] in ("1", 1)

    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in gpu_executors:
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s[name]["tolerations"]
    needs_s3 = ["exec-source-version", "exec-fetch-raw"] + [_executor(pipeline, b[s][1]) for b in branches.values()
                                                            for s in ("train", "evaluate", "register")]
    for name in needs_s3:
        envs = {e["envVar"] for s in k8s[name]["secretAsEnv"] for e in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs, name
    for b in branches.values():
        assert any(s["secretName"] == "hsnet-mlflow" for s in k8s[_executor(pipeline, b["register"][1])]["secretAsEnv"])

    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert {"dataset", "raw_source", "dvc_path", "dvc_rev", "params", "mlflow_tracking_uri", "crop_device",
            "checkpoint_uri"} <= set(params)
    assert params["params"]["defaultValue"] == yaml.safe_load((ROOT / "params.yaml").read_text())
    # no credentials in the spec
    assert "testing" not in spec[0] and "SECRET_ACCESS_KEY:" not in spec[0]


def test_caching_follows_the_data(spec):
    """source-version is never cached and feeds fetch's cache key; every data/training step is
    cacheable (so their keys follow fetch's artifact); register always runs."""
    pipeline, _ = spec[1]
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["source-version"]["cachingOptions"] == {}  # enableCache false is written as {}
    assert tasks["fetch-raw"]["inputs"]["parameters"]["version"] == {
        "taskOutputParameter": {"outputParameterKey": "version", "producerTask": "source-version"}}
    for _, task in container_tasks(pipeline):
        name = task["taskInfo"]["name"]
        if name == "promote-if-asked":  # the condition around promote: no step of its own
            continue
        expected = {} if name in ("source-version", "register", "promote") else {"enableCache": True}
        assert task["cachingOptions"] == expected, name
        # the run id reaches train as an environment variable (the pod's label), not as an input:
        # an input would be part of the cache key and make every run retrain
        assert "KFP_RUN_ID" not in str(task.get("inputs")), name


def test_resources_retries_and_run_id(spec):
    from pipelines.hsnet_pipeline import RESOURCES, RETRIES

    pipeline, platform = spec[1]
    executors = pipeline["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for key, task in container_tasks(pipeline):
        name, executor = task["taskInfo"]["name"], _executor(pipeline, task)
        cpu, cpu_limit, memory, memory_limit, scratch = RESOURCES[name]
        r = executors[executor]["container"]["resources"]
        assert (r["resourceCpuRequest"], r["resourceCpuLimit"], r["resourceMemoryRequest"],
                r["resourceMemoryLimit"]) == (cpu, cpu_limit, memory, memory_limit), key
        mounts = {m["mountPath"]: m["sizeLimit"] for m in k8s[executor]["emptyDirMounts"]}
        assert mounts == {"/s3": scratch, "/minio": scratch, "/tmp": scratch}, key
        if name in RETRIES:
            policy = task["retryPolicy"]
            assert policy["maxRetryCount"] == RETRIES[name][0], key
            # Argo counts the window from the first attempt's start and retries nothing after it: it
            # must hold every attempt at its full deadline, and the waits between them
            attempts, deadline = policy["maxRetryCount"] + 1, int(k8s[executor]["activeDeadlineSeconds"])
            assert int(policy["backoffMaxDuration"].rstrip("s")) >= attempts * deadline, key
            if name == "train":  # by hand: 4 attempts of 24 h, waits of 60, 120 and 240 s
                assert policy["backoffMaxDuration"] == "346020s" and policy["backoffDuration"] == "60s", policy
        else:
            assert "retryPolicy" not in task, f"{key} is retried but its failures are not transient"
        if name in ("train", "evaluate", "register", "promote"):  # the steps that write MLflow runs
            assert {"fieldPath": "metadata.labels['pipeline/runid']", "name": "KFP_RUN_ID"} in \
                k8s[executor]["fieldPathAsEnv"]
        # every pod has a deadline, so a hung step can't hold its node (or a GPU) for ever; train's
        # leaves room for 500 epochs of FERG-DB on a GPU ten times slower than an H100 (~10 h)
        deadline = int(k8s[executor]["activeDeadlineSeconds"])
        assert deadline > 0 and (name != "train" or deadline >= 10 * 3600), key


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
    # the Model passed to evaluate and register: best.pt and the run's summary, not the resume state
    (model,) = [p for p in (kfp_local / "kfp-root").rglob("model") if p.parent.name.startswith("train-model")]
    assert sorted(p.name for p in model.iterdir()) == ["best.pt", "history.json", "train_summary.json"]
    metrics = [p for p in (kfp_local / "kfp-root").rglob("metrics.json") if "evaluate-model" in str(p)]
    assert metrics, "the evaluate step wrote no metrics.json"
    import json

    m = json.loads(metrics[0].read_text())
    assert m["images"] > 0 and float(tags["test_accuracy"]) == pytest.approx(m["accuracy"], abs=1e-6)
    # the confusion matrix went to KFP as ClassificationMetrics, the Data Docs page as HTML
    (evaluate_out,) = [p for p in (kfp_local / "kfp-root").rglob("executor_output.json")
                       if p.parent.name.startswith("evaluate-model")]
    cm = json.loads(evaluate_out.read_text())["artifacts"]["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == m["classes"]
    assert [r["row"] for r in cm["rows"]] == m["confusion_matrix"]
    (docs,) = [p for p in (kfp_local / "kfp-root").rglob("data_docs") if p.parent.name == "validate-data"]
    assert "<html" in docs.read_text().lower()
    # validate's per-split figures are the images crop went on to cut (no face detector here: all)
    (checked,) = [p for p in (kfp_local / "kfp-root").rglob("summary") if p.parent.name == "validate-data"]
    checked = json.loads(checked.read_text())
    (crop_out,) = [p for p in (kfp_local / "kfp-root").rglob("executor_output.json")
                   if p.parent.name.startswith("crop-faces")]
    crops = json.loads(crop_out.read_text())["artifacts"]["crops"]["artifacts"][0]["metadata"]
    assert checked["left_out"] == 0
    assert sum(checked[f"{s}_images"] for s in ("train", "val", "test")) == crops["images"] > 0
    # ... and the training curves as an HTML page with the PNG inside
    import base64
    import re

    (curves,) = [p for p in (kfp_local / "kfp-root").rglob("curves") if p.parent.name.startswith("train-model")]
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


@pytest.mark.slow
def test_cache_follows_the_data(tmp_path, use_mlflow_server, s3_server):
    """kfp.local with caching on (file-backed, keyed like Kubeflow's on inputs, artifact identity,
    command and image): the same data at the same URI reuses fetch..evaluate; one changed image
    at that URI re-runs all of them."""
    import io
    import os

    import boto3
    from kfp import local
    from PIL import Image, ImageOps

    from hsnet.data.sample import generate
    from hsnet.s3 import upload_dir
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS, hsnet_pipeline

    generate(tmp_path / "sample", per_class=3, size=96, seed=8)
    upload_dir(tmp_path / "sample", "s3://hsnet/raw/cached")
    root = tmp_path / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=True, cache_root=str(tmp_path / "kfp-cache"))
    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"] = {**TINY, "train": {**TINY["train"], "epochs": 1}}

    def run() -> set[str]:
        """The tasks that ran (a cache hit writes nothing under the run's folder)."""
        before = set(os.listdir(root)) if root.exists() else set()
        hsnet_pipeline(dataset="sample", raw_source="s3://hsnet/raw/cached", params=params,
                       mlflow_tracking_uri=use_mlflow_server, checkpoint_uri="")
        (new,) = set(os.listdir(root)) - before
        return {p.name.removesuffix("-2") for p in (root / new).iterdir() if p.is_dir()}  # -2: the CPU branch

    everything = {"source-version", "fetch-raw", "import-data", "validate-data", "crop-faces", "train-model",
                  "evaluate-model", "register-model"}
    assert run() == everything
    assert run() == {"source-version", "register-model"}  # the same data: reused
    # new data at the same URI (one image replaced by its mirror image, as `aws s3 sync` would)
    victim = sorted((tmp_path / "sample").rglob("*.png"))[0]
    buf = io.BytesIO()
    ImageOps.mirror(Image.open(victim)).save(buf, format="PNG")
    key = f"raw/cached/{victim.relative_to(tmp_path / 'sample').as_posix()}"
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"]).put_object(Bucket="hsnet", Key=key,
                                                                                  Body=buf.getvalue())
    assert run() == everything


def test_source_version_follows_content(tmp_path, s3_server, monkeypatch):
    """The content version: the same for the same files, another for one changed byte; S3 and a
    folder alike (no download for S3: a listing)."""
    from hsnet.data.fetch import source_version
    from hsnet.data.sample import generate
    from hsnet.s3 import upload_dir
    from servers import s3_env

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    generate(tmp_path / "a", per_class=1, size=48, seed=1)
    upload_dir(tmp_path / "a", "s3://hsnet/raw/version-a")
    upload_dir(tmp_path / "a", "s3://hsnet/raw/version-b")
    s3_a, folder_a = source_version("s3://hsnet/raw/version-a"), source_version(str(tmp_path / "a"))
    assert s3_a.startswith("s3:") and folder_a.startswith("folder:")
    assert source_version("s3://hsnet/raw/version-b") == s3_a  # same content, another prefix
    victim = sorted((tmp_path / "a").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    upload_dir(tmp_path / "a", "s3://hsnet/raw/version-b")
    assert source_version("s3://hsnet/raw/version-b") != s3_a
    assert source_version(str(tmp_path / "a")) != folder_a


def test_submit_reports_an_unreachable_host_and_unknown_dataset(capsys):
    from pipelines.submit import main
    from servers import free_port

    assert main(["--host", f"http://127.0.0.1:{free_port()}", "--dataset", "sample"]) == 2
    err = capsys.readouterr().err
    assert "did not accept the run" in err and "Check --host" in err
    assert main(["--host", "http://127.0.0.1:1", "--dataset", "nope"]) == 2
    assert "--dataset nope: no entry under 'datasets'" in capsys.readouterr().err


def test_submit_pairs_sources_with_datasets_and_checks_params(tmp_path, capsys, monkeypatch):
    """One --raw-source per --dataset (a count mismatch is refused), params checked for every
    dataset before anything is submitted, --no-cache and --namespace passed to Kubeflow."""
    from pipelines.submit import main

    good = yaml.safe_load((ROOT / "params.yaml").read_text())
    good["datasets"]["kdef"] = {"input_size": 96}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(good))
    with pytest.raises(SystemExit):
        main(["--host", "http://127.0.0.1:1", "--dataset", "sample", "--dataset", "kdef",
              "--raw-source", "s3://b/raw/sample", "--params", str(path)])
    assert "2 --dataset but 1 --raw-source" in capsys.readouterr().err

    bad = copy.deepcopy(good)
    bad["datasets"]["kdef"]["train"] = {"lr": "fast"}
    path.write_text(yaml.safe_dump(bad))
    assert main(["--host", "http://127.0.0.1:1", "--dataset", "sample", "--dataset", "kdef",
                 "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert "datasets.kdef.train.lr" in err and "did not accept" not in err  # refused before any submission

    # what reaches Kubeflow's client: a stand-in for the remote API, recording the calls, whose
    # arguments must fit the real client's method
    import inspect

    import kfp

    real = inspect.signature(kfp.Client.create_run_from_pipeline_package)
    calls = []

    class Client:
        def __init__(self, host, existing_token=None):
            self.host = host

        def create_run_from_pipeline_package(self, *args, **kwargs):
            call = real.bind(self, *args, **kwargs).arguments
            calls.append((call["arguments"]["dataset"], call["arguments"]["raw_source"], call["enable_caching"],
                          call.get("namespace")))
            return type("Run", (), {"run_id": f"id-{len(calls)}"})()

    monkeypatch.setattr(kfp, "Client", Client)
    path.write_text(yaml.safe_dump(good))
    assert main(["--host", "http://kfp", "--dataset", "sample", "--raw-source", "s3://b/s", "--dataset", "kdef",
                 "--raw-source", "s3://b/k", "--params", str(path), "--no-cache"]) == 0
    assert calls == [("sample", "s3://b/s", False, None), ("kdef", "s3://b/k", False, None)]
    calls.clear()
    # a multi-user Kubeflow refuses an experiment with no namespace (kubeflow/pipelines#5907)
    assert main(["--host", "http://kfp", "--dataset", "kdef", "--params", str(path),
                 "--namespace", "kubeflow-user-example-com"]) == 0
    assert calls == [("kdef", "s3://hsnet-data/raw/kdef", None, "kubeflow-user-example-com")]


def test_native_size_crops_train_on_the_same_tensors(tmp_path):
    """RAF-DB's crops are stored at its images' own 100 px (params.yaml) and upscaled to input_size
    224 when training loads them: the same tensors as crops stored upscaled, from a third of the bytes."""
    import numpy as np

    from hsnet.data.crop import crop
    from hsnet.data.datasets import import_dataset
    from hsnet.data.manifest import read_manifest
    from hsnet.data.sample import generate
    from hsnet.params import CropParams, Params
    from hsnet.tensors import load_split

    rafdb = Params.from_mapping(yaml.safe_load((ROOT / "params.yaml").read_text()), "rafdb")
    assert (rafdb.crop.detector, rafdb.crop.size, rafdb.input_size) == ("none", 100, 224)
    generate(tmp_path / "raw", per_class=2, size=100, seed=4)
    import_dataset("sample", tmp_path / "raw", tmp_path / "manifest.csv")
    splits, stored = [], {}
    for size in (224, 100):
        out = tmp_path / f"crops{size}"
        crop(tmp_path / "manifest.csv", tmp_path / "raw", out, settings=CropParams(detector="none", size=size),
             progress=False)
        rows = read_manifest(out / "manifest.csv")
        stored[size] = sum((out / r["path"]).stat().st_size for r in rows)
        splits.append(load_split(rows, out, 224, progress=False, cache_dir=tmp_path / f"cache{size}"))
    assert splits[0].images.shape == splits[1].images.shape == (len(splits[0].labels), 3, 224, 224)
    assert np.array_equal(np.asarray(splits[0].images), np.asarray(splits[1].images))
    assert stored[100] < stored[224] / 2


def test_ablation_without_stem_weights_uri_fails_first():
    """KTL runs need stem_weights as a file or s3:// URI (no download on the cluster): the check the
    ablation pipeline's first step makes, naming the runs; runs without KTL pass."""
    from components.convert import check_stem_weights
    from hsnet.errors import HSNetError
    from pipelines.ablation_pipeline import ABLATION_RUNS
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS

    params = copy.deepcopy(DEFAULT_PARAMS)
    with pytest.raises(HSNetError, match=r"rafdb: KTL is on .* in 12 run\(s\).*stem_weights to their s3:// URI"):
        check_stem_weights(params, "rafdb", ABLATION_RUNS)
    check_stem_weights(params, "rafdb", [r for r in ABLATION_RUNS if not r["model"]["ktl"]])
    params["datasets"]["rafdb"]["model"] = {"stem_weights": "s3://weights/irv1-vggface2.pt"}
    check_stem_weights(params, "rafdb", ABLATION_RUNS)
    # and the first step is where it runs: source-version gets the runs and the flag
    (src,) = [t for t in _compiled_ablation()["root"]["dag"]["tasks"].values()
              if t["taskInfo"]["name"] == "source-version"]
    assert src["inputs"]["parameters"]["require_stem_uri"]["runtimeValue"]["constant"] is True
    assert src["inputs"]["parameters"]["runs"] == {"componentInputParameter": "runs"}


def _compiled_ablation() -> dict:
    return next(yaml.safe_load_all((ROOT / "pipelines" / "ablation_pipeline.yaml").read_text()))


def test_promotion_is_an_optional_step_off_by_default(spec):
    """promote (and deploy) run only when asked: a condition on the `promote` parameter, default false,
    after register in each crop branch, fed the registered version's URI."""
    pipeline = spec[1][0]
    assert pipeline["root"]["inputDefinitions"]["parameters"]["promote"]["defaultValue"] is False
    assert pipeline["root"]["inputDefinitions"]["parameters"]["deploy"]["defaultValue"] is False
    conditions = [task for comp in pipeline["components"].values() for task in comp.get("dag", {}).get("tasks", {}).values()
                  if task["taskInfo"]["name"] == "promote-if-asked"]
    assert len(conditions) == 2  # the GPU and the CPU crop branch
    for task in conditions:
        assert task["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--promote'] == true"
    promotes = [task for comp in pipeline["components"].values() for task in comp.get("dag", {}).get("tasks", {}).values()
                if task["componentRef"]["name"].startswith("comp-promote-model")]
    assert len(promotes) == 2
    for task in promotes:
        uri = task["inputs"]["parameters"]["model_uri"]  # register's output, passed into the condition
        assert uri["componentInputParameter"] in ("pipelinechannel--register-model-Output",
                                                  "pipelinechannel--register-model-2-Output")


def test_the_promote_step_gates_as_hsnet_promote_does_by_default(spec):
    """The Kubeflow promote step compares what `hsnet promote` compares by default (test accuracy, no
    required gain, a 10% canary): the pipeline passes them, the component has no defaults of its own
    (a literal there was a second home that could drift)."""
    from hsnet.cli import build_parser

    cli = build_parser().parse_args(["promote", "--name", "hsnet-x"])
    assert (cli.metric, cli.min_delta, cli.canary_percent) == ("accuracy", 0.0, 10)
    pipeline = spec[1][0]
    promotes = [task for comp in pipeline["components"].values() for task in comp.get("dag", {}).get("tasks", {}).values()
                if task["componentRef"]["name"].startswith("comp-promote-model")]
    for task in promotes:
        given = task["inputs"]["parameters"]
        assert given["metric"]["runtimeValue"]["constant"] == cli.metric
        assert given["min_delta"]["runtimeValue"]["constant"] == cli.min_delta
        assert given["canary_percent"]["componentInputParameter"] == "pipelinechannel--canary_percent"
        inputs = pipeline["components"][task["componentRef"]["name"]]["inputDefinitions"]["parameters"]
        assert not any("defaultValue" in inputs[k] for k in ("metric", "min_delta", "canary_percent", "deploy"))
    assert pipeline["root"]["inputDefinitions"]["parameters"]["canary_percent"]["defaultValue"] == cli.canary_percent
