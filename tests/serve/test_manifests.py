"""The serving manifests agree with the code they run.

hsnet/k8s/inferenceservice.yaml and serving/Dockerfile are deployment files, not Python: they
write the port, the image tag, the model's name and the limits' variable names a second time. Each
must equal its one home in the code (hsnet.limits.PORT, hsnet.deploy.SERVE_IMAGE, hsnet.limits.MODEL_NAME,
hsnet.limits.Limits, pipelines.DEFAULT_MLFLOW_URI); a change to either side fails here instead of
in a pod that never becomes ready."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import hsnet
from hsnet.limits import ENV_PREFIX, MODEL_NAME, PORT, Limits

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "hsnet" / "k8s" / "inferenceservice.yaml"
DOCKERFILE = ROOT / "serving" / "Dockerfile"


def _isvc() -> dict:
    return next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "InferenceService")


def _container() -> dict:
    (container,) = _isvc()["spec"]["predictor"]["containers"]
    return container


def _flag(args: list[str], name: str) -> str:
    assert name in args, f"{MANIFEST.name}: the container's args have no {name}: {args}"
    return args[args.index(name) + 1]


def test_the_model_name_clients_call_is_the_servers():
    probe = _container()["readinessProbe"]["httpGet"]["path"]
    assert probe == f"/v2/models/{MODEL_NAME}/ready", probe
    header = MANIFEST.read_text().split("apiVersion:")[0]
    assert f"/v1/models/{MODEL_NAME}:predict" in header and f"/v2/models/{MODEL_NAME}/infer" in header


def test_every_port_is_the_servers():
    c = _container()
    assert int(_flag(c["args"], "--port")) == PORT
    assert [p["containerPort"] for p in c["ports"]] == [PORT]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == PORT, probe
    text = DOCKERFILE.read_text()
    assert re.findall(r"^EXPOSE (\d+)", text, re.M) == [str(PORT)]
    entry = re.search(r"^ENTRYPOINT (\[.*\])", text, re.M).group(1)
    assert f'"--port", "{PORT}"' in entry, entry


def test_the_image_is_tagged_with_the_package_version():
    from hsnet.deploy import SERVE_IMAGE

    repo, tag = SERVE_IMAGE.rsplit(":", 1)
    assert tag == hsnet.__version__
    assert _container()["image"] == SERVE_IMAGE
    built = re.findall(rf"-t ({re.escape(repo)}:\S+)", DOCKERFILE.read_text())
    assert built == [SERVE_IMAGE], built
    readme = re.findall(rf"({re.escape(repo)}:[\w.\-]+)", (ROOT / "README.md").read_text())
    assert readme and set(readme) == {SERVE_IMAGE}, readme


def test_the_limits_it_sets_are_limits_the_server_reads():
    """A renamed limit would leave the manifest setting a variable nobody reads: the server would
    quietly run with its default."""
    env = {e["name"]: e["value"] for e in _container()["env"] if e["name"].startswith(ENV_PREFIX)}
    known = {ENV_PREFIX + name.upper() for name in Limits.names()}
    assert env and set(env) <= known, sorted(set(env) - known)
    limits = Limits.from_env(**{k[len(ENV_PREFIX):].lower(): v for k, v in env.items()})  # refuses < 1 and non-numbers
    assert limits.max_image_pixels <= limits.max_request_pixels  # one photo at the limit fits a request


def test_the_model_it_serves_and_the_registry_it_asks():
    from pipelines import DEFAULT_MLFLOW_URI

    isvc, c = _isvc(), _container()
    model = _flag(c["args"], "--model")
    assert model == isvc["metadata"]["annotations"]["hsnet.io/model-uri"]
    cmd = re.search(r"^CMD (\[.*\])", DOCKERFILE.read_text(), re.M).group(1)
    assert f'"--model", "{model}"' in cmd, cmd
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MLFLOW_TRACKING_URI"] == DEFAULT_MLFLOW_URI
    # the model cache is on the only writable mount (the root filesystem is read-only)
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(env["HSNET_CACHE_DIR"].startswith(m.rstrip("/") + "/") for m in mounts), (env["HSNET_CACHE_DIR"], mounts)


def test_threads_match_the_cores_and_the_requests_in_flight():
    """containerConcurrency requests in flight per replica, each on one of --threads workers, on as
    many cores as the container may use (the manifest's comment and hsnet serve's --threads)."""
    isvc, c = _isvc(), _container()
    threads = int(_flag(c["args"], "--threads"))
    assert threads == int(isvc["spec"]["predictor"]["containerConcurrency"])
    assert threads == int(c["resources"]["limits"]["cpu"]) == int(c["resources"]["requests"]["cpu"])
