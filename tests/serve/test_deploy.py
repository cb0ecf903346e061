"""The InferenceService: the manifest validates and is Pod Security "restricted"; hsnet promote --deploy
rolls it to the promoted version with a canary share and --rollback returns the traffic, against a
fake Kubernetes API server on loopback (the official client talks HTTP to it); --dry-run prints it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from hsnet.cli import main
from hsnet.deploy import GROUP, PLURAL, TEMPLATE, VERSION, load_template, model_of, render
from hsnet.evaluate import evaluate
from hsnet.registry import register

CORE_VERSION = "1.30.0"


def _pod(isvc: dict) -> dict:
    """The Pod KServe makes of the predictor (its containers and volumes), for core-kind validation."""
    predictor = isvc["spec"]["predictor"]
    spec = {k: predictor[k] for k in ("containers", "volumes", "securityContext", "serviceAccountName")
            if k in predictor}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": spec}


def test_manifest_validates_and_is_restricted(tmp_path):
    import kubernetes_validate

    isvc = render("models:/hsnet-rafdb/7", canary_percent=10)
    assert (isvc["apiVersion"], isvc["kind"]) == (f"{GROUP}/{VERSION}", "InferenceService")
    assert model_of(isvc) == "models:/hsnet-rafdb/7" and isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert model_of(load_template()) == "models:/hsnet-rafdb@production"  # the template itself is untouched
    # the predictor's pod spec against the Kubernetes schema (strict: no unknown fields)
    kubernetes_validate.validate(_pod(isvc), CORE_VERSION, strict=True)

    # the InferenceService's predictor: only fields KServe's PredictorSpec has (from KServe's own SDK)
    overlay = os.path.join(sys.prefix, "serve")
    probe = subprocess.run([sys.executable, "-c", "import json, kserve; print(json.dumps("
                            "sorted(kserve.V1beta1PredictorSpec.attribute_map.values())))"],
                           env={**os.environ, "PYTHONPATH": overlay}, capture_output=True, text=True)
    assert probe.returncode == 0, f"KServe's SDK (make serve-env) is needed here: {probe.stderr[-500:]}"
    allowed = set(json.loads(probe.stdout))
    assert set(isvc["spec"]["predictor"]) <= allowed, set(isvc["spec"]["predictor"]) - allowed
    assert {"canaryTrafficPercent", "containers", "minReplicas"} <= allowed

    # Pod Security Standards, "restricted" profile
    pod = _pod(isvc)["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert container["name"] == "kserve-container"
    assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0
    assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged", False)
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    assert sc["readOnlyRootFilesystem"] is True
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret", "name"}
    for volume in pod.get("volumes", []):
        assert set(volume) <= allowed_volumes, volume
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPort" not in p for p in container.get("ports", []))
    # probes on the serving port, resources set, the MLflow secret optional
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/hsnet/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {"cpu", "memory"} <= set(container["resources"]["limits"]) <= {"cpu", "memory", "nvidia.com/gpu"}
    assert {"secretRef": {"name": "hsnet-mlflow", "optional": True}} in container["envFrom"]
    # the file is what users kubectl apply: one document, the same object
    assert [d["kind"] for d in yaml.safe_load_all(TEMPLATE.read_text()) if d] == ["InferenceService"]


@pytest.fixture
def kube(tmp_path, monkeypatch):
    from fake_kube import FakeKube

    fake = FakeKube()
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    yield fake
    fake.stop()


def _objects(kube):
    return {name: obj for (ns, name), obj in kube.objects.items() if ns == "models"}


@pytest.mark.slow
def test_promote_deploy_canary_rollback_and_dry_run(local_mlflow, trained, kube, tmp_path, capsys):
    import torch

    name = "hsnet-sample"
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval1", progress=False)
    assert register(trained["checkpoint"], tmp_path / "eval1" / "metrics.json", "sample")["version"] == 1

    # --dry-run: the manifest the deploy would send, nothing promoted, nothing sent to the cluster
    # (it is read): before the first deploy, the one that creates it, with all the traffic
    capsys.readouterr()
    assert main(["promote", "--name", name, "--deploy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    manifest = yaml.safe_load(out[out.index("apiVersion:"):])  # after the line that says what it is
    assert model_of(manifest) == f"models:/{name}/1" and manifest["metadata"]["name"] == name
    assert "canaryTrafficPercent" not in manifest["spec"]["predictor"] and "created" in out.splitlines()[0]
    assert [m for m, *_ in kube.requests] == ["GET"]
    kube.requests.clear()
    from mlflow import MlflowClient

    assert "production" not in MlflowClient(local_mlflow).get_registered_model(name).aliases

    # the first promotion creates the InferenceService, all traffic to version 1
    assert main(["promote", "--name", name, "--deploy"]) == 0
    isvc = _objects(kube)[name]
    assert model_of(isvc) == f"models:/{name}/1" and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    # a read before the registry moves (no canary of another version running), the rollout's read, its create
    assert [m for m, *_ in kube.requests] == ["GET", "GET", "POST"]
    assert kube.requests[0][1] == f"/apis/{GROUP}/{VERSION}/namespaces/models/{PLURAL}/{name}"
    assert "created" in capsys.readouterr().out

    # a second version: a canary with 20% of the traffic (the rest of the spec kept)
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    for key, value in ckpt["model"].items():
        if value.is_floating_point() and "running" not in key:
            value.add_(1e-4)
    torch.save(ckpt, tmp_path / "v2.pt")
    evaluate(tmp_path / "v2.pt", trained["data"], tmp_path / "eval2", progress=False)
    assert register(tmp_path / "v2.pt", tmp_path / "eval2" / "metrics.json", "sample")["version"] == 2
    before = _objects(kube)[name]
    sent = len(kube.requests)
    assert main(["promote", "--name", name, "--force", "--deploy", "--dry-run", "--canary-percent", "20"]) == 0
    out = capsys.readouterr().out  # now it exists: a canary of the live object, its resources kept
    manifest = yaml.safe_load(out[out.index("apiVersion:"):])
    assert model_of(manifest) == f"models:/{name}/2" and manifest["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert manifest["spec"]["predictor"]["containers"][0]["resources"] == before["spec"]["predictor"]["containers"][0][
        "resources"]
    assert [m for m, *_ in kube.requests[sent:]] == ["GET"] and _objects(kube)[name] == before
    assert main(["promote", "--name", name, "--force", "--deploy", "--canary-percent", "20"]) == 0
    isvc = _objects(kube)[name]
    assert model_of(isvc) == f"models:/{name}/2" and isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert int(isvc["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert isvc["spec"]["predictor"]["containers"][0]["resources"] == before["spec"]["predictor"]["containers"][0][
        "resources"]
    assert kube.requests[-1][0] == "PUT" and "canary 20%" in capsys.readouterr().out

    # rollback during the canary: KServe's rollback, the traffic back to the last rolled-out revision
    assert main(["promote", "--name", name, "--rollback", "--deploy"]) == 0
    isvc = _objects(kube)[name]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert str(MlflowClient(local_mlflow).get_model_version_by_alias(name, "production").version) == "1"
    assert "canary-stopped" in capsys.readouterr().out

    # promote 2 again and finish its canary (100%): then a rollback rolls the model back to 1
    assert main(["promote", "--name", name, "--version", "2", "--force", "--deploy", "--canary-percent", "100"]) == 0
    isvc = _objects(kube)[name]
    assert model_of(isvc) == f"models:/{name}/2" and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert main(["promote", "--name", name, "--rollback", "--deploy"]) == 0
    isvc = _objects(kube)[name]
    assert model_of(isvc) == f"models:/{name}/1" and "canaryTrafficPercent" not in isvc["spec"]["predictor"]


def test_deploy_errors_are_named(local_mlflow, tmp_path, monkeypatch, capsys):
    from servers import free_port

    from hsnet.deploy import rollout
    from hsnet.errors import HSNetError

    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "x", "user": {}}], "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(cfg))
    with pytest.raises(HSNetError, match="InferenceService default/hsnet-x: the Kubernetes API server is unreachable"):
        rollout("models:/hsnet-x/1", name="hsnet-x")
    assert main(["promote", "--name", "hsnet-x", "--dry-run"]) == 2
    assert "--dry-run goes with --deploy" in capsys.readouterr().err


def test_the_installed_package_carries_its_template_and_license(tmp_path):
    """The Kubeflow promote step runs hsnet installed from its wheel (Dockerfile), not from a
    checkout: its first --deploy (no InferenceService yet) renders the template, so the template
    must travel inside the package; a path beside the checkout's package (site-packages/serving/...)
    is not there."""
    import shutil

    wheels, site, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    src.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for part in ("pyproject.toml", "README.md", "LICENSE", "hsnet", "components"):  # from a copy: setuptools
        copy = shutil.copytree if os.path.isdir(os.path.join(root, part)) else shutil.copy  # writes build/ there
        copy(os.path.join(root, part), src / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                        if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("hsnet-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    (license_file,) = site.glob("hsnet-*.dist-info/**/LICENSE")  # README: "the wheel carries it"
    assert "MIT License" in license_file.read_text() and "MIT" in (site.glob("hsnet-*.dist-info/METADATA").__next__()
                                                                     .read_text())
    code = ("import hsnet.deploy as d; assert d.__file__.startswith(%r), d.__file__; "
            "i = d.render('models:/hsnet-rafdb/3', name='x'); print(d.model_of(i), i['kind'])" % str(site))
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["models:/hsnet-rafdb/3", "InferenceService"]
