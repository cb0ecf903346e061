"""The serving image (serving/Dockerfile), built by ``make image-test`` and run as
hsnet/k8s/inferenceservice.yaml runs it: the manifest's command, args and HSNET_* environment, its
user, a read-only root filesystem with a writable /tmp only, every capability dropped, no
privilege escalation; the model is a promoted version in a real MLflow registry on loopback
(artifacts proxied by the server, as on the cluster: no S3 credentials in the container).
Skipped unless HSNET_IMAGE_TEST=1."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.skipif(os.environ.get("HSNET_IMAGE_TEST") != "1",
                                reason="builds and runs the Docker images: make image-test")

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "hsnet" / "k8s" / "inferenceservice.yaml"


@pytest.fixture(scope="module")
def serve_image():
    ref = os.environ.get("HSNET_TEST_SERVE_IMAGE", "")
    if not ref:
        pytest.fail("HSNET_TEST_SERVE_IMAGE not set: run these tests with make image-test (it builds the images)")
    return ref


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([os.environ.get("DOCKER", "docker"), *args], capture_output=True, text=True, timeout=timeout)


def _request(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _container_spec() -> dict:
    isvc = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "InferenceService")
    (container,) = isvc["spec"]["predictor"]["containers"]
    return container


def test_image_runs_as_the_manifest_says_and_carries_its_identity(serve_image):
    from hsnet import __version__

    spec = _container_spec()
    inspect = json.loads(_docker("image", "inspect", serve_image).stdout)[0]["Config"]
    assert inspect["User"].split(":")[0] == str(spec["securityContext"]["runAsUser"])
    assert inspect["Labels"]["org.opencontainers.image.version"] == __version__
    commit = os.environ.get("HSNET_TEST_COMMIT", "")
    assert commit and inspect["Labels"]["org.opencontainers.image.revision"] == commit
    env = dict(e.split("=", 1) for e in inspect["Env"])
    assert not [k for k in env if "PROXY" in k.upper() or k in ("PIP_CERT", "PIP_CONFIG_FILE", "PIP_INDEX_URL")]
    history = _docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", serve_image)
    assert history.returncode == 0 and "proxy" not in history.stdout.lower()
    # what the InferenceService's command runs is on the image's PATH, and kfp, dvc and GX are not there
    out = _docker("run", "--rm", "--entrypoint", "sh", serve_image, "-c",
                  f"command -v {spec['command'][0]} && id -u && ls -A /run/secrets 2>&1; "
                  "python -c 'import kserve, hsnet.serve' && ! python -c 'import kfp' 2> /dev/null && echo lean")
    assert out.returncode == 0 and out.stdout.split("\n")[1] == "1000" and "lean" in out.stdout, out.stdout + out.stderr
    assert "pip_cert" not in out.stdout


def test_the_image_serves_a_promoted_model_as_the_cluster_runs_it(serve_image, use_mlflow_server, trained, tmp_path):
    from PIL import Image
    from skimage import data as skdata

    from hsnet.evaluate import evaluate
    from hsnet.predict import predict
    from hsnet.registry import promote, register
    from servers import free_port

    name = "hsnet-image-serve"
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    version = register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name=name)["version"]
    assert promote(name)["production"] == version

    spec = _container_spec()
    args = list(spec["args"])
    port = free_port()
    args[args.index("--model") + 1] = f"models:/{name}@production"
    args[args.index("--port") + 1] = str(port)  # host network: a free port of this machine (--host as the manifest)
    env = {e["name"]: e["value"] for e in spec["env"]}
    env["MLFLOW_TRACKING_URI"] = use_mlflow_server  # the registry on loopback, not the cluster's Service
    sc = spec["securityContext"]
    isvc = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "InferenceService")
    volumes = {v["name"]: v for v in isvc["spec"]["predictor"]["volumes"]}
    (mount,) = spec["volumeMounts"]  # the one writable place: an emptyDir with a size limit
    size = volumes[mount["name"]]["emptyDir"]["sizeLimit"]
    memory = spec["resources"]["limits"]["memory"]
    units = {"Mi": "m", "Gi": "g"}
    run = ["run", "-d", "--network", "host", "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}",
           "--read-only", "--tmpfs", f"{mount['mountPath']}:rw,size={size[:-2]}{units[size[-2:]]},mode=1777",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory", memory[:-2] + units[memory[-2:]],
           "--entrypoint", spec["command"][0]]
    for k, v in env.items():
        run += ["-e", f"{k}={v}"]
    started = _docker(*run, serve_image, *args)
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:  # the readiness probe's URL: the model downloaded from the registry and loaded
            try:
                if _request(url + spec["readinessProbe"]["httpGet"]["path"], timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            state = json.loads(_docker("inspect", cid).stdout)[0]["State"]
            assert state["Running"], "the server exited: " + _docker("logs", cid).stderr[-3000:]
            assert time.monotonic() < deadline, "not ready in 240 s: " + _docker("logs", cid).stderr[-3000:]
            time.sleep(1)
        assert _request(url + spec["livenessProbe"]["httpGet"]["path"]) == (200, {"live": True})

        import base64

        photo = tmp_path / "astronaut.jpg"
        Image.fromarray(skdata.astronaut()).save(photo, quality=95)
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (90, 120, 200)).save(buf, "PNG")
        body = {"instances": [{"b64": base64.b64encode(photo.read_bytes()).decode()},
                              {"b64": base64.b64encode(b"not an image").decode()}]}
        status, out = _request(url + "/v1/models/hsnet:predict", body)
        assert status == 200, out
        assert (out["model_version"], out["model_uri"]) == (str(version), f"models:/{name}/{version}")
        astronaut, broken = out["predictions"]
        assert broken["faces"] == [] and "error" in broken  # one bad photo is a per-photo record
        # the same faces and figures as hsnet predict on this machine, from the same checkpoint
        expected = predict([photo], trained["checkpoint"], device="cpu", progress=False)["results"][0]["faces"]
        assert len(astronaut["faces"]) == len(expected) == 1
        got, exp = astronaut["faces"][0], expected[0]
        np.testing.assert_allclose(got["box"], exp["box"], atol=0.5)
        assert got["expression"] == exp["expression"]
        np.testing.assert_allclose([got["probabilities"][c] for c in sorted(exp["probabilities"])],
                                   [exp["probabilities"][c] for c in sorted(exp["probabilities"])], atol=2e-4)
        # a limit the manifest sets is the one the server enforces
        limit = int(env["HSNET_SERVE_MAX_IMAGES"])
        status, out = _request(url + "/v1/models/hsnet:predict",
                               {"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}] * (limit + 1)})
        assert status == 413 and "max_images" in json.dumps(out), (status, out)
        # nothing but /tmp was written (the root filesystem is read-only; the model cache is there)
        assert _docker("exec", cid, "sh", "-c", f"test -d {env['HSNET_CACHE_DIR']}").returncode == 0
    finally:
        logs = _docker("logs", cid)
        stopped = _docker("stop", "-t", "30", cid)
        code = json.loads(_docker("inspect", cid).stdout)[0]["State"]["ExitCode"]
        _docker("rm", "-f", cid)
    assert stopped.returncode == 0 and code == 0, (code, logs.stderr[-3000:])  # SIGTERM: a clean shutdown
    assert "Traceback" not in logs.stdout + logs.stderr, (logs.stdout + logs.stderr)[-3000:]
