"""Attack 22b: the Kubeflow pipelines as a cluster runs them, parameters typed in the UI.

Every test runs the real pipelines with kfp.local (SubprocessRunner, as tests/pipeline/test_kfp.py
does) or the real promote component; nothing of the code under test is replaced.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --- 1. a value typed in the UI that no step can use stops the run before the data is fetched ----

@pytest.fixture
def retries(monkeypatch):
    """kfp.local retries a task as its retryPolicy says (as Argo does on a cluster), sleeping the
    backoff (30 s, 60 s, 120 s for source-version): the waits are recorded here instead of slept.
    Only the local runner's clock is replaced, not anything of the pipeline."""
    from types import SimpleNamespace

    from kfp.local.orchestrator import task_executor

    waits = []
    monkeypatch.setattr(task_executor, "time", SimpleNamespace(sleep=waits.append))
    return waits


def _local(root):
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)


def _tiny_params():
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS

    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"]["train"].update({"epochs": 1, "batch_size": 16, "seed": 3})
    return params


SAMPLE_RUN = [{"model": {"dib": True, "fgal": True, "ktl": False}, "seed": 0}]

# (pipeline, the careless value, why no step of the run can work with it)
CASES = {
    "hsnet-empty-dataset": ("hsnet", {"dataset": ""},
                            "no params entry is named '': import refuses it, after fetch downloaded the source"),
    "hsnet-crop-device-gpu": ("hsnet", {"crop_device": "gpu"},
                              "README: crop_device is `cpu` or `cuda`; 'gpu' takes the CPU branch and hands "
                              "torch a device name it refuses (MTCNN datasets), after fetch/import/validate"),
    "hsnet-empty-mlflow-uri": ("hsnet", {"mlflow_tracking_uri": ""},
                               "no tracking server: each pod records into its own ./mlflow/mlflow.db, deleted "
                               "with the pod (train's and evaluate's runs are lost), and register then fails "
                               "after training: its pod's new store has no evaluation run"),
    "hsnet-checkpoint-uri-without-scheme": ("hsnet", {"checkpoint_uri": "hsnet-data/checkpoints"},
                                            "not an s3:// prefix: train refuses it on the cluster (where "
                                            "it has a run id), after the data steps and crop"),
    "hsnet-negative-canary": ("hsnet", {"promote": True, "deploy": True, "canary_percent": -5},
                              "set_model refuses a share outside 0..100, in the promote step after training"),
    "ablation-empty-dataset": ("ablation", {"dataset": ""},
                               "as above; and the first step's documented KTL/stem-weights and duplicate-run "
                               "checks are skipped"),
    "ablation-empty-mlflow-uri": ("ablation", {"dataset": "sample", "runs": SAMPLE_RUN, "mlflow_tracking_uri": ""},
                                  "as for hsnet: 24 trainings recorded into stores deleted with their pods; "
                                  "the report (no MLflow) still 'succeeds'"),
    "ablation-checkpoint-uri-without-scheme": ("ablation", {"dataset": "sample", "runs": SAMPLE_RUN,
                                                            "checkpoint_uri": "hsnet-data/checkpoints"},
                                               "as for hsnet, in each of the 24 train tasks"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_value_typed_in_the_ui_that_no_step_can_use_stops_the_run_before_the_data_is_fetched(
        case, tmp_path, monkeypatch, retries):
    """The project's rule for parameters: "a typo fails here, not in a pod an hour later"
    (pipelines/submit.py load_params); source_version: "The first step, so it also checks
    ``params`` for ``dataset`` ... and (with ``require_stem_uri``) that every KTL run of ``runs``
    names its stem weights"; README: "The ablation pipeline fails in its first step when a run
    has KTL on ...". A run started from the UI ("upload pipelines/hsnet_pipeline.yaml in the
    Kubeflow UI and start a run per dataset") gets no submit-side check, so the first step is
    the only early one.

    Independent expectation: a pipeline parameter value that no later step can work with (an
    empty dataset, a crop_device other than cpu/cuda, an empty MLflow URI on a cluster, a
    checkpoint URI that is not s3://, a canary share below 0) is refused before fetch copies
    the raw data (hours for FERG-DB), not by a step after it, or never.

    The data given is not the dataset's layout, so a run that does not refuse the value fails
    at import quickly (3 s): what matters is whether fetch ran first."""
    which, args, why = CASES[case]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # as in a pod: the secret has no URI
    monkeypatch.chdir(tmp_path)  # where a pod's relative ./mlflow store would go
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.txt").write_text("not the sample's layout\n")
    root = tmp_path / "kfp-root"
    _local(root)
    if which == "hsnet":
        from pipelines.hsnet_pipeline import hsnet_pipeline as pipeline

        given = {"dataset": "sample", "params": _tiny_params(), "mlflow_tracking_uri": "sqlite:///unused.db",
                 "checkpoint_uri": "", "crop_device": "cpu"}
    else:
        from pipelines.ablation_pipeline import ablation_pipeline as pipeline

        given = {"params": _tiny_params(), "mlflow_tracking_uri": "sqlite:///unused.db", "checkpoint_uri": ""}
    given.update(raw_source=str(raw), **args)
    with pytest.raises(Exception) as failed:
        pipeline(**given)
    message = ANSI.sub("", str(failed.value))
    fetched = sorted(p.parent.name for p in root.rglob("executor_output.json") if p.parent.name.startswith("fetch"))
    assert not fetched, (f"{case}: {args} was not refused before the data was fetched ({why}); the run stopped "
                         f"later: {message[-200:]}")


# --- 2. promote with a canary share outside 0..100 -------------------------------------------------

@pytest.fixture
def kube(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    try:
        from fake_kube import FakeKube
    finally:
        sys.path.remove(str(ROOT / "tests" / "serve"))
    fake = FakeKube()
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    yield fake
    fake.stop()


@pytest.mark.parametrize("canary", [-5, -100])
def test_a_canary_share_below_0_is_refused_before_production_moves(canary, kube, local_mlflow, monkeypatch):
    """hsnet.deploy.promote_and_deploy (the Kubeflow promote step with ``deploy``, and ``hsnet
    promote --deploy``): "the Kubernetes configuration is checked first (without one, refused
    before the registry moves)"; hsnet.deploy.set_model: "--canary-percent must be between 0 and
    100". The canary share is a pipeline parameter (``canary_percent``, an int typed in the UI).

    Independent expectation: a value the rollout will refuse whatever the cluster says is refused
    before the registry's production alias moves. Otherwise the registry names the new version
    production while the InferenceService keeps serving the old one, and the error's advice
    ("run the same again once the cluster answers (it rolls production out)") fails the same way
    every time. Here the cluster (a fake Kubernetes API) serves version 1; the registry's
    ``promote`` is recorded (a promotion that passes the gate), so what is checked is only
    whether it was asked to move production before the share was refused."""
    import hsnet.registry
    from components.promote import promote_model
    from hsnet.deploy import load_template, model_of, set_model

    live = set_model(load_template(), "models:/hsnet-sample/1", None)
    live["metadata"].update(namespace="models", name="hsnet-sample")
    kube._store("models", "hsnet-sample", live)

    moved = []

    def promote(name, version=None, **kwargs):
        moved.append((name, version))
        return {"name": name, "candidate": int(version), "production": int(version), "previous": 1,
                "promoted": True, "forced": False, "metric": "accuracy", "reason": "passes the gate"}

    monkeypatch.setattr(hsnet.registry, "promote", promote)
    monkeypatch.setattr(hsnet.registry, "registered_version", lambda uri: ("hsnet-sample", "2"))
    refused = None
    try:
        outcome = promote_model.python_func(model_uri="models:/hsnet-sample/2", mlflow_tracking_uri="",
                                            metric="accuracy", min_delta=0.0, deploy=True, canary_percent=canary,
                                            namespace="models")
    except Exception as exc:  # noqa: BLE001 - a failed step is a refusal too
        refused, outcome = exc, None
    served = model_of(kube.objects[("models", "hsnet-sample")])
    assert not moved, (f"canary_percent={canary}: production was moved to version 2 before the share was refused "
                       f"({type(refused).__name__ if refused else 'no error'}: {str(refused or outcome)[:300]}); "
                       f"the InferenceService still serves {served}")


# --- 3. the first step's checks are deterministic, yet retried with backoff --------------------------

@pytest.mark.parametrize("which", ["hsnet-params-typo", "ablation-ktl-without-stem-uri"])
def test_a_refusal_of_the_first_steps_checks_is_not_retried(which, tmp_path, monkeypatch, retries):
    """pipelines/hsnet_pipeline.py RETRIES: "Steps that can fail for passing reasons (S3 or MLflow
    unreachable for a moment, a preempted GPU node) ... Deterministic failures (validation) are
    not retried"; README: "validation failures are not retried"; "The ablation pipeline fails in
    its first step when a run has KTL on and model.stem_weights is still vggface2".

    source-version is that first step and checks params for the dataset (a typo: a value the
    schema refuses), duplicate runs and the ablation's stem weights: failures no retry changes.
    But source-version has RETRIES (3, 30 s doubling) and Argo retries whatever failed
    (OnFailure), so every such refusal runs four pods and reaches the user after 3.5 minutes of
    backoff (30 + 60 + 120 s), the ablation's KTL check included. kfp.local follows the same
    retryPolicy (its waits are recorded, not slept, here)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "notes.txt").write_text("anything\n")
    params = _tiny_params()
    root = tmp_path / "kfp-root"
    _local(root)
    monkeypatch.chdir(tmp_path)
    if which == "hsnet-params-typo":
        from pipelines.hsnet_pipeline import hsnet_pipeline

        params["datasets"]["sample"]["train"]["lr"] = "0.01O"  # a typo: the schema refuses it
        run = lambda: hsnet_pipeline(dataset="sample", raw_source=str(raw), params=params,  # noqa: E731
                                     mlflow_tracking_uri="sqlite:///unused.db", checkpoint_uri="")
    else:
        from pipelines.ablation_pipeline import ablation_pipeline

        params["datasets"]["sample"]["model"]["ktl"] = True  # stem_weights: vggface2 (a download)
        run = lambda: ablation_pipeline(dataset="sample", raw_source=str(raw), params=params,  # noqa: E731
                                        runs=[{"model": {"ktl": True}, "seed": 0}],
                                        mlflow_tracking_uri="sqlite:///unused.db", checkpoint_uri="")
    with pytest.raises(Exception) as failed:
        run()
    assert "'source-version'" in ANSI.sub("", str(failed.value)), failed.value  # refused by the first step
    assert retries == [], (f"{which}: the first step's refusal was retried {len(retries)} times after waits of "
                           f"{retries} s (on a cluster: {sum(retries):.0f} s and {len(retries)} more pods) "
                           "although no retry can change it")


# --- 4. the ablation's GPU groups are keyed on settings they don't read -------------------------------

def test_an_edit_to_validate_settings_does_not_retrain_the_ablations_gpu_groups(tmp_path):
    """README ("Caching follows the data"): "The steps take source-version's settings output ...
    Each step takes only the keys it reads (hsnet.params.STEP_KEYS: import `import`; validate
    `validate`; crop `input_size`, `crop`; train `input_size`, `crop`, `model`, `train`; evaluate
    `evaluate`)"; source_version: "``<step>_settings``: cut further to the keys that step reads,
    so an edit to this dataset's training re-runs train and what follows it, not the data steps".

    Kubeflow keys a task on its parameter values. The ablation's ``runs_per_gpu`` > 1 branch
    gives its train-evaluate-group tasks source-version's whole ``settings`` (the dataset's
    entry, validate and import included), so an edit to ``validate.min_size`` or
    ``validate.max_bad_fraction`` (which re-runs validate only; crop's key and artifact are
    unchanged) changes every group's cache key: all 24 trainings of Table 6 run again on the same
    crops. The one-run-per-GPU branch's train tasks (``train_settings``) are not affected.
    Checked on the compiled pipeline: the value its train-evaluate-group tasks take, from the
    real source-version step, before and after a validate-only edit."""
    import yaml

    from components.fetch import source_version
    from pipelines.compile import compile_all

    compile_all(tmp_path)
    pipeline = list(yaml.safe_load_all((tmp_path / "ablation_pipeline.yaml").read_text()))[0]
    sources = {}
    for component in pipeline["components"].values():
        for key, task in component.get("dag", {}).get("tasks", {}).items():
            if task["componentRef"]["name"] == "comp-train-evaluate-group":
                channel = task["inputs"]["parameters"]["params"]["componentInputParameter"]
                sources[key] = channel.removeprefix("pipelinechannel--source-version-")
    assert sources, "no train-evaluate-group task in the ablation pipeline"

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(b"x")
    params = _tiny_params()
    edited = copy.deepcopy(params)
    edited["datasets"]["sample"]["validate"] = {**(edited["datasets"]["sample"].get("validate") or {}),
                                                "min_size": 40}
    outputs = [source_version.python_func(source=str(raw), dvc_path="", dvc_rev="", params=p, dataset="sample",
                                          runs=SAMPLE_RUN, require_stem_uri=True) for p in (params, edited)]
    for task, output in sources.items():
        before, after = (getattr(o, output) for o in outputs)
        assert before == after, (f"{task} takes source-version's {output!r}, which changes with validate.min_size "
                                 f"({before['datasets']['sample'].get('validate')} -> "
                                 f"{after['datasets']['sample'].get('validate')}): every GPU group trains again "
                                 "on unchanged crops")


# --- 5. new stem weights uploaded to the same URI: the cached training is reused -----------------------

def _train_inputs_from_source_version(pipeline: dict) -> set[str]:
    """The source-version outputs any train task of the compiled ``pipeline`` takes (directly, or
    through the DAG channels kfp names ``pipelinechannel--source-version-OUTPUT``)."""
    found = set()
    for component in pipeline["components"].values():
        for task in component.get("dag", {}).get("tasks", {}).values():
            if not task["componentRef"]["name"].startswith("comp-train"):
                continue
            for source in task.get("inputs", {}).get("parameters", {}).values():
                channel = source.get("componentInputParameter", "")
                if channel.startswith("pipelinechannel--source-version-"):
                    found.add(channel.removeprefix("pipelinechannel--source-version-"))
                producer = source.get("taskOutputParameter", {})
                if producer.get("producerTask") == "source-version":
                    found.add(producer["outputParameterKey"])
    return found


def test_new_stem_weights_at_the_same_uri_are_not_served_from_a_cached_training(tmp_path, s3_server, monkeypatch):
    """README: "upload the weights and set datasets.<name>.model.stem_weights: s3://..." (the
    cluster's KTL stem); "Caching follows the data ... Kubeflow keys a task on its parameter
    values, the ids of its input artifacts, its command and image" (hsnet_pipeline's docstring),
    and source-version exists so that new content at the same URI is not served from the cache.

    The VGGFace2 stem weights are an input of every KTL training (the frozen stem: the model's
    first layers), but train's key holds only their URI: weights uploaded again to the same
    s3:// URI (the first upload was the wrong file, a re-export) leave every train task's inputs
    as they were, so Kubeflow serves the training made with the old weights, and register
    registers it. Checked with the real source-version step (which already lists the raw data's
    content) and the compiled pipeline's wiring: some input of the train task must change when
    the weights' content does."""
    import boto3
    import yaml

    from components.fetch import source_version
    from pipelines.compile import compile_all
    from servers import s3_env

    for name, value in s3_env(s3_server).items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    uri = "s3://hsnet/weights/22b/vggface2-stem.pt"
    compile_all(tmp_path)
    pipeline = list(yaml.safe_load_all((tmp_path / "hsnet_pipeline.yaml").read_text()))[0]
    keys = _train_inputs_from_source_version(pipeline)
    assert keys, "no train task takes source-version's outputs"

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(b"x")
    params = _tiny_params()
    params["datasets"]["sample"]["model"] = {"ktl": True, "stem_weights": uri}
    seen = []
    for content in (b"the weights first uploaded", b"the right weights, uploaded again"):
        s3.put_object(Bucket="hsnet", Key=uri.removeprefix("s3://hsnet/"), Body=content)
        out = source_version.python_func(source=str(raw), dvc_path="", dvc_rev="", params=params, dataset="sample")
        seen.append({k: getattr(out, k) for k in sorted(keys)})
    assert seen[0] != seen[1], (f"the train task's inputs from source-version ({', '.join(sorted(keys))}) are the "
                                f"same after new stem weights were uploaded to {uri}: Kubeflow serves the training "
                                "made with the old weights from its cache")
