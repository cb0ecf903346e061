"""Attack, session 16c: what KServe and Kubernetes really do with ``hsnet promote --deploy``'s
calls and with the model server, as opposed to what tests/serve/fake_kube.py simulates.

Each test fails on the code as it stands and passes once the defect it names is fixed. The fake
API server is made to answer as the real one documentedly does (sources in each docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_kube

NS, NAME = "models", "hsnet-rafdb"


@pytest.fixture
def kube(tmp_path, monkeypatch):
    from fake_kube import FakeKube

    fake = FakeKube()
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
    yield fake
    fake.stop()


def _apply_template(kube) -> dict:
    """A template applied by hand (``kubectl apply -n models -f hsnet/k8s/inferenceservice.yaml``; README's
    first step until this attack), which serves the alias ``@production``."""
    from hsnet.deploy import load_template

    isvc = load_template()
    isvc["metadata"]["namespace"] = NS
    with kube.lock:
        return kube._store(NS, isvc["metadata"]["name"], isvc)


def _answer_puts_with(kube, code: int, status: dict):
    """Make the fake answer every PUT (replace) as the real API server answers a refused one."""
    base = kube.httpd.RequestHandlerClass

    class Refusing(base):
        def do_PUT(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            kube.requests.append(("PUT", self.path, None))
            self._reply(code, status)

    kube.httpd.RequestHandlerClass = Refusing


# --- 1. the first canary after `kubectl apply` is measured against the alias it moved --------------
def test_the_first_canary_is_measured_against_a_pinned_version_not_the_moved_alias(kube):
    """README ("Serving in production"): ``kubectl apply -n models -f hsnet/k8s/inferenceservice.yaml``
    the first time, then ``hsnet promote --name hsnet-rafdb --deploy --namespace models
    --canary-percent 10  # gate, then 10% to the new version``; hsnet/deploy.py: "KServe routes that
    share to the new revision and the rest to the last rolled-out one".

    The template's model container serves ``--model models:/hsnet-rafdb@production``: an alias,
    resolved by each pod when it starts (hsnet.serve.resolve). ``hsnet promote`` moves
    ``production`` to the new version *before* --deploy sets the canary, so the "last rolled-out"
    revision that keeps the other 90% (KServe's canary docs: "KServe will then automatically split
    the traffic between the last good revision and the revision that is currently being rolled
    out", https://kserve.github.io/website/docs/model-serving/predictive-inference/rollout-strategies/canary)
    runs the *new* version in every pod it starts from then on: a scale-up (maxReplicas 4), a
    restarted or rescheduled pod. And after ``--rollback --deploy`` (canaryTrafficPercent: 0, all
    traffic back to that revision) those pods keep serving the rolled-back version until they
    restart. The canary compares the new version with itself, and the rollback does not roll back.

    Expected: deploy never leaves a canary split whose other side is a revision serving an alias
    (it may pin the old version first, roll out without a canary and say so, or refuse by name)."""
    from hsnet.deploy import model_of, rollout
    from hsnet.errors import HSNetError

    _apply_template(kube)
    assert model_of(kube.history[-1]) == "models:/hsnet-rafdb@production"  # what kubectl apply created
    try:
        rollout("models:/hsnet-rafdb/8", name=NAME, namespace=NS, canary_percent=10)
    except HSNetError:
        pass  # refusing, naming the reason, is a fix too
    for before, after in zip(kube.history, kube.history[1:]):
        canary = after["spec"]["predictor"].get("canaryTrafficPercent")
        if canary is not None and int(canary) < 100:
            baseline = model_of(before)
            assert "@" not in baseline.split("models:/", 1)[-1], (
                f"a {canary}% canary of {model_of(after)} against a revision serving {baseline}: the alias "
                "promote has just moved to the canary's version, so the other share is the new version too "
                "in every pod started from now on")


# --- 2. the API server's reason is dropped, a webhook denial is called a permission problem ------
WEBHOOK_DENIED = {  # KServe's validating webhook (controller-runtime admission.Denied: code 403), as in
    # kserve/kserve pull request #1213's CI log: "admission webhook ... denied the request: ...", code 403
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": "admission webhook \"inferenceservice.kserve-webhook-server.validator\" denied the request: "
               "the InferenceService \"hsnet-rafdb\" is invalid: canaryTrafficPercent is not supported "
               "in RawDeployment mode",
    "reason": "Forbidden", "code": 403}
WEBHOOK_DOWN = {  # kserve/kserve issue #3102 (and kubeflow/katib #2224): the webhook is not reachable
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": "Internal error occurred: failed calling webhook \"inferenceservice.kserve-webhook-server.defaulter\": "
               "failed to call webhook: Post \"https://kserve-webhook-server-service.kserve.svc:443/mutate-serving-"
               "kserve-io-v1beta1-inferenceservice?timeout=10s\": no endpoints available for service "
               "\"kserve-webhook-server-service\"",
    "reason": "InternalError", "code": 500}
SCHEMA_INVALID = {  # the API server's own validation against the CRD's OpenAPI schema (StatusReasonInvalid, 422),
    # in its message format: "<Kind> \"<name>\" is invalid: <field>: Invalid value: ..."
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": "InferenceService.serving.kserve.io \"hsnet-rafdb\" is invalid: spec.predictor.canaryTrafficPercent: "
               "Invalid value: 150: spec.predictor.canaryTrafficPercent in body should be less than or equal to 100",
    "reason": "Invalid", "code": 422}


@pytest.mark.parametrize("status", [WEBHOOK_DENIED, WEBHOOK_DOWN, SCHEMA_INVALID], ids=["403-webhook", "500-webhook",
                                                                                         "422-invalid"])
def test_the_api_servers_reason_reaches_the_user(kube, status):
    """hsnet/deploy.py _explain: a refused replace is told as ``not allowed (403 Forbidden); the
    account needs get, create and update on inferenceservices.serving.kserve.io`` for every 403, and
    as ``the API server answered <code> <reason>`` otherwise, with the Status body the API server
    sent (``message``: the only place that says what is wrong) thrown away.

    A 403 is not only RBAC: KServe's validating webhook (``inferenceservice.kserve-webhook-server.
    validator``, failurePolicy fail) denies with 403 and its reason in ``message`` (kserve/kserve
    PR #1213's log: ``"message":"admission webhook \\"inferenceservice.kfserving-webhook-server.validator\\"
    denied the request: Exactly one of [...] must be specified in PredictorSpec", ... "code":403``).
    The user is sent to fix permissions they already have; a 500 from an unreachable webhook
    (kserve/kserve #3102) and a 422 from the CRD schema read "answered 500 Internal Server Error" /
    "422 Unprocessable Entity" with nothing to act on.

    Expected: the error names what the API server said (its Status message), and a webhook's
    denial is not reported as missing permissions."""
    from hsnet.deploy import rollout
    from hsnet.errors import HSNetError

    _apply_template(kube)
    _answer_puts_with(kube, status["code"], status)
    with pytest.raises(HSNetError) as err:
        rollout("models:/hsnet-rafdb/8", name=NAME, namespace=NS, canary_percent=10)
    text = str(err.value)
    key = {403: "denied the request", 500: "no endpoints available", 422: "should be less than or equal to 100"}
    assert key[status["code"]] in text, f"the API server's reason is not in the error: {text!r}"
    if "admission webhook" in status["message"]:
        assert "needs get, create and update" not in text, f"a webhook's denial reported as RBAC: {text!r}"


# --- 3. "already serves ... with all traffic" from the spec alone ---------------------------------
def test_unchanged_is_not_claimed_while_the_revision_never_got_ready(kube, capsys):
    """hsnet/deploy.py rollout/describe: when the spec already names the version and has no
    canaryTrafficPercent, deploy changes nothing and says ``InferenceService models/hsnet-rafdb:
    already serves models:/hsnet-rafdb/8 with all traffic``; README: ``--canary-percent 100  # the
    canary looked fine: all of it``.

    The spec is what was asked for, not what serves: KServe routes no traffic to a revision that
    never got ready ("If there is an unhealthy or bad revision applied, traffic will not be routed
    to that bad revision", KServe's canary rollout docs,
    https://kserve.github.io/website/docs/model-serving/predictive-inference/rollout-strategies/canary).
    Version 8's pods failing to start (a registry down at start-up, a model that doesn't load,
    the memory limit) leave status Ready False and 100% of the traffic on version 7's revision,
    while ``hsnet promote --deploy`` reports version 8 with all traffic and exits 0. The status
    is in the very object deploy GETs (``status.conditions``, ``status.components.predictor``).

    Expected: not "already serves ... with all traffic" while the InferenceService says the
    revision of that spec is not the one serving (an error, or a line saying it is not ready)."""
    from hsnet.deploy import describe, rollout, set_model
    from hsnet.errors import HSNetError

    isvc = _apply_template(kube)
    isvc = set_model(isvc, "models:/hsnet-rafdb/8", None)
    isvc["status"] = {  # KServe's status of a predictor whose latest revision failed
        "observedGeneration": 3,
        "conditions": [
            {"type": "IngressReady", "status": "True"},
            {"type": "LatestDeploymentReady", "status": "False", "reason": "RevisionFailed"},
            {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed",
             "message": "Revision \"hsnet-rafdb-predictor-00003\" failed with message: Container failed with: "
                        "hsnet: --model models:/hsnet-rafdb/8: the tracking server is unreachable."},
            {"type": "Ready", "status": "False", "reason": "RevisionFailed"}],
        "components": {"predictor": {
            "latestCreatedRevision": "hsnet-rafdb-predictor-00003",
            "latestReadyRevision": "hsnet-rafdb-predictor-00002",
            "latestRolledoutRevision": "hsnet-rafdb-predictor-00002",
            "traffic": [{"revisionName": "hsnet-rafdb-predictor-00002", "percent": 100, "latestRevision": False}]}}}
    with kube.lock:
        kube._store(NS, NAME, isvc)
    try:
        line = describe(rollout("models:/hsnet-rafdb/8", name=NAME, namespace=NS, canary_percent=None))
    except HSNetError:
        return  # refusing by name is a fix
    assert "with all traffic" not in line, (
        f"{line!r} while the InferenceService says revision 00003 (version 8) failed and 00002 has 100% of the traffic")


# --- 4. the Open Inference Protocol's model metadata says the model takes and gives nothing --------
def test_v2_model_metadata_describes_the_input_and_output():
    """hsnet/serve.py: "V2 (Open Inference Protocol): POST /v2/models/<name>/infer with one BYTES
    input ... -> one BYTES output records". The protocol's required model-metadata endpoint
    (``GET /v2/models/<name>``; KServe's dataplane.model_metadata, which builds it from the model's
    get_input_types/get_output_types) is how a generic client learns what to send: the OIP's
    ``$metadata_model_response`` holds ``inputs`` and ``outputs`` (``$metadata_tensor``: name,
    datatype, shape), and "for an inference server to be compliant with this protocol, the server
    must implement the health, metadata, and inference V2 APIs"
    (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol).

    HSNetModel keeps kserve.Model's defaults (``[]``): the server answers that the model has no
    inputs and no outputs, so a client reading the metadata (KServe's own docs point to it for the
    tensor names and datatypes) can't build a request, and nothing says the input is BYTES or
    the output is ``records``.

    Expected: the metadata names one BYTES input and the BYTES output ``records``."""
    overlay = os.path.join(sys.prefix, "serve")
    code = (
        "import asyncio, json\n"
        "from kserve.model_repository import ModelRepository\n"
        "from kserve.protocol.dataplane import DataPlane\n"
        "from hsnet.serve import HSNetModel\n"
        "m = HSNetModel('hsnet', 'models:/hsnet-rafdb@production', threads=1)\n"
        "m.ready = True\n"
        "repo = ModelRepository(); repo.update(m)\n"
        "print(json.dumps(asyncio.run(DataPlane(model_registry=repo).model_metadata('hsnet'))))\n")
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([overlay, root])})
    assert out.returncode == 0, f"KServe's SDK (make serve-env) is needed here: {out.stderr[-800:]}"
    meta = json.loads(out.stdout.strip().splitlines()[-1])
    assert [i.get("datatype") for i in meta["inputs"]] == ["BYTES"], meta
    assert [(o.get("name"), o.get("datatype")) for o in meta["outputs"]] == [("records", "BYTES")], meta


# --- 5. "run it again" after a rollback's deploy failed promotes the bad version to all traffic ------
def test_running_a_failed_rollback_again_does_not_roll_the_bad_version_out(local_mlflow, quick_log_model, evaluated,
                                                                           kube, capsys):
    """hsnet/deploy.py _explain, for a replace the API server refused with 409: ``changed by
    someone else meanwhile (409 Conflict); run it again`` (docs/security.md: "a concurrent change is
    a conflict (exit 2), never silently overwritten"); README: ``hsnet promote --name hsnet-rafdb
    --rollback --deploy --namespace models  # traffic back to the previous version``.

    ``hsnet promote --rollback --deploy`` moves the registry first (production <- previous, and the
    rolled-back version becomes ``previous``), then changes the InferenceService. When that second
    step fails (a 409 from anyone's concurrent edit, an API server or webhook that is down, a
    missing permission), running the command again as told rolls the *registry* back once more:
    production returns to the bad version, and deploy's rollback, now asked for the version the
    canary already serves, removes ``canaryTrafficPercent``, which makes KServe give the bad version
    100% of the traffic ("promote it by removing the canaryTrafficPercent field", KServe canary docs).
    The rollback the user asked for twice ends as a full rollout of what they rolled back.

    Expected: after the retry, production is the good version again and the InferenceService does
    not send all traffic to the bad one."""
    from mlflow import MlflowClient

    from hsnet.cli import main
    from hsnet.deploy import model_of
    from hsnet.registry import register

    name = "hsnet-sample"
    good = register(*evaluated(1)[:2], "sample")["version"]
    assert main(["promote", "--name", name, "--deploy", "--force"]) == 0  # the InferenceService: good, all traffic
    bad = register(*evaluated(0)[:2], "sample")["version"]
    assert main(["promote", "--name", name, "--deploy", "--force"]) == 0  # a canary of bad, 10%
    isvc = kube.objects[(NS, name)]
    assert model_of(isvc) == f"models:/{name}/{bad}" and isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10

    base = kube.httpd.RequestHandlerClass
    _answer_puts_with(kube, 409, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "reason": "Conflict", "code": 409,
                                  "message": f"Operation cannot be fulfilled on inferenceservices.serving.kserve.io "
                                             f"\"{name}\": the object has been modified; please apply your changes "
                                             "to the latest version and try again"})
    capsys.readouterr()
    assert main(["promote", "--name", name, "--rollback", "--deploy"]) == 2
    assert "run it again" in capsys.readouterr().err
    kube.httpd.RequestHandlerClass = base  # the concurrent edit is over: run it again, as told

    main(["promote", "--name", name, "--rollback", "--deploy"])
    production = MlflowClient(local_mlflow).get_model_version_by_alias(name, "production").version
    isvc = kube.objects[(NS, name)]
    canary = isvc["spec"]["predictor"].get("canaryTrafficPercent")
    all_to_bad = model_of(isvc) == f"models:/{name}/{bad}" and (canary is None or int(canary) >= 100)
    assert str(production) == str(good) and not all_to_bad, (
        f"after rolling back twice: production is version {production}, the InferenceService serves "
        f"{model_of(isvc)} with canaryTrafficPercent {canary} (KServe: all traffic to version {bad})")
