"""mlflow/k8s/mlflow.yaml against the Pod Security "restricted" profile's rules, and the init step
that creates the artifact bucket, run against moto's S3 server."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "mlflow" / "k8s" / "mlflow.yaml"
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted)
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _pod():
    (deployment,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def test_mlflow_pod_passes_the_restricted_profile():
    pod = _pod()
    pod_ctx = pod.get("securityContext", {})
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
    containers = pod["containers"] + pod.get("initContainers", [])
    assert len(containers) >= 2  # the server and the bucket's init step
    for c in containers:
        ctx = c.get("securityContext", {})

        def effective(key):
            return ctx.get(key, pod_ctx.get(key))

        assert ctx.get("allowPrivilegeEscalation") is False, c["name"]
        assert not ctx.get("privileged"), c["name"]
        caps = ctx.get("capabilities", {})
        assert "ALL" in caps.get("drop", []) and set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, c["name"]
        assert effective("runAsNonRoot") is True and effective("runAsUser") != 0, c["name"]
        assert (effective("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost"), c["name"]
        assert not any(p.get("hostPort") for p in c.get("ports", [])), c["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory", "ephemeral-storage"} <= set(c["resources"][kind]), (c["name"], kind)
        # the slim server image of mlflow/Dockerfile, not the 7 GB training image
        assert c["image"].startswith("ghcr.io/hsnet-pipeline/mlflow-server:"), c["image"]


def test_server_image_tag_is_the_pinned_mlflow():
    pins = dict(line.strip().split("==") for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for c in _pod()["containers"] + _pod()["initContainers"]:
        assert c["image"].rsplit(":", 1)[1] == pins["mlflow"]
    dockerfile = (ROOT / "mlflow" / "Dockerfile").read_text()
    assert f"mlflow-server:{pins['mlflow']}" in dockerfile and "USER 1000:1000" in dockerfile
    (install,) = [line for line in dockerfile.splitlines() if re.search(r"pip(\.sh)? install", line)]
    assert "mlflow" in install and "torch" not in install and "hsnet" not in install


def test_create_bucket_makes_the_artifact_bucket_once(s3_server, tmp_path):
    import boto3

    from servers import s3_env

    env = {**os.environ, **s3_env(s3_server), "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow-artifacts-test/hsnet"}
    script = [sys.executable, str(ROOT / "mlflow" / "create_bucket.py")]
    first = subprocess.run(script, env=env, capture_output=True, text=True, check=True)
    assert "created s3://mlflow-artifacts-test" in first.stdout
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    assert "mlflow-artifacts-test" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    again = subprocess.run(script, env=env, capture_output=True, text=True, check=True)
    assert "exists" in again.stdout
