"""Attack 16a: what a real Kubeflow Pipelines v2 cluster (KFP backend 2.x, Argo Workflows, the v2
driver/launcher) does with the committed pipeline YAML, as opposed to kfp.local, which ignores
retry policies and Kubernetes platform settings altogether.

Each test reads the committed, compiled YAML (tests/pipeline/test_kfp.py checks it is what the
installed kfp compiles) and checks it against the documented behaviour of the real system.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kfp_ir import container_tasks

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = [ROOT / "pipelines" / "hsnet_pipeline.yaml", ROOT / "pipelines" / "ablation_pipeline.yaml"]


def _docs(path: Path) -> tuple[dict, dict]:
    pipeline, platform = list(yaml.safe_load_all(path.read_text()))
    return pipeline, platform


def _seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", str(duration))
    assert m, f"unexpected duration {duration!r} in the compiled retry policy"
    return int(m.group(1))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_retries_outlive_the_attempt_they_retry(path):
    """README "Preemption": "a restarted pod resumes from there ... fetch, source-version, train,
    evaluate and register are retried with exponential backoff", a pod "terminated due to imminent
    node shutdown" is retried. The KFP backend turns ``set_retry``'s ``backoff_max_duration`` into
    Argo's ``retryStrategy.backoff.maxDuration`` (kubeflow/pipelines
    backend/src/v2/compiler/argocompiler/container.go, getTaskRetryStrategyFromInput), and Argo
    measures maxDuration from the *first attempt's start*, not per wait: in
    workflow/controller/operator.go (processNodeRetries) ``maxDurationDeadline =
    firstChildNode.StartedAt.Add(maxDuration)``; past it the node fails with "Max duration limit
    exceeded" and is not retried, and a retry that does start gets that deadline as its execution
    deadline (argo Backoff.maxDuration: "the maximum amount of time allowed for a workflow in the
    backoff strategy"; kfp's own set_retry doc: "Maximum duration during which the task will be
    retried").

    So train, with RETRIES "train": (3, "60s", "10m") and a 24 h deadline per attempt, is retried only
    if it fails in its first 10 minutes (and the retry is killed at minute 10): a GPU node preempted
    an hour into training ends the run, never resuming from the durable checkpoints that exist for
    exactly that case. Same for fetch/evaluate/register after 5 minutes. kfp.local ignores retry
    policies, so no local test shows it. Expectation: every retried task's maxDuration covers all
    its attempts at their full deadline (activeDeadlineSeconds)."""
    pipeline, platform = _docs(path)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    bad = []
    for key, task in container_tasks(pipeline):
        policy = task.get("retryPolicy")
        if not policy:
            continue
        executor = pipeline["components"][task["componentRef"]["name"]]["executorLabel"]
        deadline = int(k8s[executor]["activeDeadlineSeconds"])
        attempts = int(policy["maxRetryCount"]) + 1
        window = _seconds(policy["backoffMaxDuration"])
        if window < attempts * deadline:
            bad.append(f"{key}: retries allowed only within {window} s of its first attempt's start, "
                       f"but one attempt may run {deadline} s ({attempts} attempts)")
    assert not bad, "; ".join(bad)


def _stated_minimum_backend() -> list[tuple[int, ...]]:
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"(?:Kubeflow Pipelines|KFP backend)\*{0,2}\s+(\d+)\.(\d+)(?:\.(\d+))?\s+or newer", text)
    return [tuple(int(x or 0) for x in m) for m in found]


def test_stated_minimum_backend_can_read_the_compiled_platform_spec():
    """README ("Backend version": "these features need Kubeflow Pipelines 2.3 or newer"; "The
    container": "needs KFP backend 2.3.0 or newer") promises the committed YAML runs on a 2.3
    backend. But the installed kfp-kubernetes (2.17) writes every ``use_secret_as_env`` as a
    SecretAsEnv with ``optional`` (false when not asked for) and ``secretNameParameter``, and the
    v2 driver unmarshals the platform spec strictly: on Kubeflow 1.9.1's KFP (2.3.0) every step
    with a secret fails in its driver with "failed to unmarshal Kubernetes config, error: unknown
    field "optional" in kfp_kubernetes.SecretAsEnv" (kubeflow/pipelines#12495; the same for
    ``secretNameParameter`` on Kubeflow 1.9, #11935). In this pipeline that is every step from
    source-version on: a 2.3 cluster, as README says is enough, runs nothing. The field reached the
    backend with the 2.15 release line (the SDK that writes it is 2.15, #12495; kfp releases SDK and
    backend together). kfp.local never reads the platform spec, so no local run shows it.
    Expectation: the minimum README states is one whose driver knows every field the YAML uses."""
    uses_optional = False
    for path in PIPELINES:
        _, platform = _docs(path)
        for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
            if any("optional" in s for s in executor.get("secretAsEnv", [])):
                uses_optional = True
    assert uses_optional, "the premise changed: no SecretAsEnv carries 'optional' any more"
    stated = _stated_minimum_backend()
    assert stated, "README no longer states a minimum KFP backend"
    too_old = [".".join(map(str, v)) for v in stated if v < (2, 15)]
    assert not too_old, (f"README states KFP backend {', '.join(too_old)} as enough, but its driver rejects the "
                         "compiled platform spec (SecretAsEnv.optional / secretNameParameter: "
                         "kubeflow/pipelines#12495, #11935)")


def test_ablation_fan_in_needs_a_backend_that_collects_artifacts():
    """The ablation's report takes ``dsl.Collected(...)`` of an artifact output of a ParallelFor
    (pipelines/ablation_pipeline.py: ``evaluations=dsl.Collected(evaluated.outputs["report"])`` and
    the groups' ``evaluations``; in the IR an ``isArtifactList`` input fed by ``artifactSelectors``).
    The open-source backend supports fanning in artifacts only since KFP 2.14.0 (CHANGELOG 2.14.0,
    "backend/sdk: enable dsl.Collected for parameters & artifacts (#11725)"; before it, a run of such
    a pipeline is refused at creation, kubeflow/pipelines#10035, and kfp's own note on #3412: "KFP OSS
    BE does not yet support this"). README promises Kubeflow Pipelines 2.3 is enough ("Backend
    version"; "The container": "needs KFP backend 2.3.0 or newer") and sells the ablation pipeline
    for clusters ("an hour on 8 with the Kubeflow ablation pipeline"): on 2.3-2.5 Table 6 is never
    written. kfp.local collects artifacts itself, so the local test of the ablation passes."""
    text = (ROOT / "pipelines" / "ablation_pipeline.yaml").read_text()
    assert "isArtifactList: true" in text and "artifactSelectors" in text, "premise: the report fans in artifacts"
    stated = _stated_minimum_backend()
    assert stated, "README no longer states a minimum KFP backend"
    too_old = [".".join(map(str, v)) for v in stated if v < (2, 14)]
    assert not too_old, (f"README states KFP backend {', '.join(too_old)} as enough, but the ablation pipeline's "
                         "dsl.Collected of artifacts needs 2.14 (kubeflow/pipelines#11725)")


def test_submit_can_name_the_profile_namespace(monkeypatch, capsys):
    """README "Namespaces and secrets": "Multi-user Kubeflow runs each run in the submitting user's
    profile namespace (e.g. kubeflow-user-example-com)", and the documented way to start runs is
    ``python -m pipelines.submit --host ... --dataset rafdb``. kfp's
    ``Client.create_run_from_pipeline_package(..., namespace=None)`` creates/looks up the experiment
    in ``namespace or client.get_user_namespace()`` (kfp/client/client.py create_experiment), which
    is "" unless a kfp context file says otherwise; a multi-user API server then refuses the
    experiment ("Invalid resource references for experiment. Expect one namespace type with owner
    relationship. Got []", kubeflow/pipelines#5907). submit offers no way to name the namespace, so
    on the multi-user Kubeflow README describes every submission fails. Expectation: a --namespace
    option that reaches kfp."""
    import kfp

    from pipelines import submit

    calls = []

    class FakeClient:
        def __init__(self, *args, **kwargs):
            pass

        def create_run_from_pipeline_package(self, *args, **kwargs):
            calls.append(kwargs)
            return type("Run", (), {"run_id": "r-1"})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    try:
        rc = submit.main(["--host", "http://kfp.invalid", "--dataset", "rafdb", "--namespace",
                          "kubeflow-user-example-com", "--params", str(ROOT / "params.yaml")])
    except SystemExit as exc:  # argparse: unrecognized arguments
        pytest.fail(f"pipelines.submit has no --namespace (exit {exc.code}): {capsys.readouterr().err.strip()}")
    assert rc == 0, capsys.readouterr().err
    assert calls and calls[0].get("namespace") == "kubeflow-user-example-com", calls


def _producers(pipeline: dict) -> set[str]:
    """Keys of the tasks whose outputs another task reads (task output parameters or artifacts),
    in every DAG of the pipeline."""
    used = set()
    for component in pipeline["components"].values():
        for task in component.get("dag", {}).get("tasks", {}).values():
            inputs = task.get("inputs", {})
            for spec in list(inputs.get("parameters", {}).values()) + list(inputs.get("artifacts", {}).values()):
                for key in ("taskOutputParameter", "taskOutputArtifact"):
                    if key in spec:
                        used.add(spec[key]["producerTask"])
    for spec in pipeline["root"]["dag"]["tasks"].values():
        inputs = spec.get("inputs", {})
        for s in list(inputs.get("parameters", {}).values()) + list(inputs.get("artifacts", {}).values()):
            for key in ("taskOutputParameter", "taskOutputArtifact"):
                if key in s:
                    used.add(s[key]["producerTask"])
    return used


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_display_names_do_not_break_input_resolution_on_the_stated_backend(path):
    """pipelines/hsnet_pipeline.py ``step()`` calls ``task.set_display_name(name)`` on every task,
    with names that differ from the task keys the IR wires outputs by (fetch-raw shown as "fetch",
    import-data as "import", train-model as "train", ...). Before KFP 2.14 the v2 backend recorded a
    task's execution in MLMD under its *display* name while consumers look their producer up by task
    key, so the first consumer fails: "failed to resolve inputs ... cannot find producer task
    "fetch-raw"" (kubeflow/pipelines#11173 on Kubeflow 1.9; #12456 on Kubeflow 1.10.2 / KFP 2.5.0:
    "If line hello_task.set_display_name(...) is commented, then pipeline does run successfully";
    fixed by #11938, CHANGELOG 2.14.0 "input resolution with set_display_name"). README says 2.3 is
    enough: there the pipeline stops at import. kfp.local resolves by task key and never shows it.
    Expectation: either no consumed task is renamed, or README's minimum backend is 2.14 or newer."""
    pipeline, _ = _docs(path)
    renamed = []
    for component in [pipeline["root"]] + list(pipeline["components"].values()):
        for key, task in component.get("dag", {}).get("tasks", {}).items():
            if key in _producers(pipeline) and task["taskInfo"]["name"] != key:
                renamed.append(f"{key} (shown as {task['taskInfo']['name']!r})")
    if not renamed:
        return
    stated = _stated_minimum_backend()
    too_old = [".".join(map(str, v)) for v in stated if v < (2, 14)]
    assert stated and not too_old, (f"{path.name}: tasks read by others are renamed ({', '.join(sorted(set(renamed)))}) "
                                    f"and README states KFP backend {', '.join(too_old)} as enough: before 2.14 the "
                                    "driver can't find the producer (kubeflow/pipelines#11173, #12456)")
