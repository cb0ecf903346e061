"""The images, built and run for real (``make image-test``; skipped unless HSNET_IMAGE_TEST=1).

``make image-test`` builds the images (tests/container/build.sh, with the stand-in base where
no registry answers) and passes their references in HSNET_TEST_IMAGE / HSNET_TEST_SLIM_IMAGE (the
serving image's, HSNET_TEST_SERVE_IMAGE, to test_serve_image.py) and
the commit they were built from in HSNET_TEST_COMMIT. The whole pipeline then runs under
kfp.local's DockerRunner, every step in its own container of the image it is compiled for (as
uid 1000), against moto's S3 server and a real MLflow server on loopback (host network), to a
registered model.
"""

from __future__ import annotations

import copy
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("HSNET_IMAGE_TEST") != "1",
                                reason="builds and runs the Docker images: make image-test")

UID = 1000  # the images' user (Dockerfile: useradd --uid 1000)
# a few images, two epochs at 80x80: the pipeline's code paths in minutes on a CPU
TINY = {"input_size": 80, "import": {}, "validate": {}, "crop": {"detector": "none", "size": 80},
        "model": {"ktl": False}, "train": {"lr": 0.001, "epochs": 2, "batch_size": 16, "seed": 3}}


@pytest.fixture(scope="module")
def images():
    refs = {k: os.environ.get(f"HSNET_TEST_{k}", "") for k in ("IMAGE", "SLIM_IMAGE", "COMMIT")}
    missing = [f"HSNET_TEST_{k}" for k, v in refs.items() if not v]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set: run these tests with make image-test (it builds the images)")
    return refs


@pytest.fixture(scope="module")
def client(images):
    import docker

    c = docker.from_env()
    for ref in (images["IMAGE"], images["SLIM_IMAGE"]):
        c.images.get(ref)  # built, not pulled
    yield c
    c.close()


def _docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.environ.get("DOCKER", "docker"), *args], capture_output=True, text=True, timeout=300)


def _env(client, ref: str) -> dict:
    return dict(e.split("=", 1) for e in client.images.get(ref).attrs["Config"]["Env"])


@pytest.mark.parametrize("which", ["IMAGE", "SLIM_IMAGE"])
def test_cli_runs_as_the_non_root_user(images, client, which):
    ref = images[which]
    out = _docker("run", "--rm", ref, "hsnet", "--help")
    assert out.returncode == 0 and "usage: hsnet" in out.stdout, out.stderr
    out = _docker("run", "--rm", ref, "sh", "-c", "id -u; stat -c '%u %a' /minio /s3 /gcs \"$HOME\"")
    uid, *dirs = out.stdout.split("\n")[:5]
    assert uid == str(UID), out.stdout + out.stderr
    for line in dirs:  # the launcher's directories: owned by the user, writable by no one else
        owner, mode = line.split()
        assert owner == str(UID) and not int(mode, 8) & 0o022, line
    torch = _docker("run", "--rm", ref, "python", "-c", "import torch")
    assert (torch.returncode == 0) == (which == "IMAGE"), torch.stderr[-500:]


@pytest.mark.parametrize("which", ["IMAGE", "SLIM_IMAGE"])
def test_identity_and_nothing_of_the_build_machine_inside(images, client, which):
    from hsnet import __version__

    ref = images[which]
    attrs = client.images.get(ref).attrs
    labels = attrs["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == images["COMMIT"] == _env(client, ref)["HSNET_GIT_COMMIT"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.source"].startswith(("https://", "git@"))
    assert ref.endswith(f":sha-{images['COMMIT'][:12]}{'-dirty' if images['COMMIT'].endswith('-dirty') else ''}"
                        f"{'-slim' if which == 'SLIM_IMAGE' else ''}")
    # the index's CA bundle and any proxy were secrets / predefined build args: not in the image
    env = _env(client, ref)
    assert not [k for k in env if "PROXY" in k.upper() or k in ("PIP_CERT", "PIP_CONFIG_FILE", "PIP_INDEX_URL")]
    history = _docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", ref)
    assert history.returncode == 0 and "proxy" not in history.stdout.lower()
    added = [p for p in Path("/usr/local/share/ca-certificates").glob("**/*.crt")] if Path(
        "/usr/local/share/ca-certificates").is_dir() else []
    bundle = _docker("run", "--rm", ref, "sh", "-c",
                     "cat /etc/ssl/certs/ca-certificates.crt; ls -A /run/secrets /usr/local/share/ca-certificates 2>&1")
    for cert in added:  # this machine's own CAs (e.g. an egress proxy's) are not trusted by the image
        body = "".join(line for line in cert.read_text().splitlines() if line and not line.startswith("-----"))
        assert body[:200] not in bundle.stdout.replace("\n", ""), cert
    assert "pip_cert" not in bundle.stdout


@pytest.fixture(scope="module")
def raw_on_s3(s3_server, tmp_path_factory):
    from hsnet.data.sample import generate
    from hsnet.s3 import upload_dir
    from servers import s3_env

    base = tmp_path_factory.mktemp("raw")
    generate(base / "sample", per_class=3, size=96, seed=7)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3_env(s3_server).items():
            mp.setenv(k, v)
        upload_dir(base / "sample", "s3://hsnet/raw/image-test")
    return "s3://hsnet/raw/image-test"


@pytest.fixture
def pipeline_root(tmp_path):
    """The local pipeline root, writable by the images' user and nobody else: owned by uid 1000
    when this runs as root (CI), else the containers run as this user (see docker_runner)."""
    root = tmp_path / "kfp-root"
    root.mkdir(mode=0o755)
    if os.getuid() == 0:
        os.chown(root, UID, UID)
    return root


def test_pipeline_in_containers_to_a_registered_model(images, client, mlflow_server, s3_server, raw_on_s3,
                                                      pipeline_root):
    from kfp import local
    from mlflow import MlflowClient

    from pipelines.compile import with_images
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS, hsnet_pipeline
    from servers import s3_env

    run_args = {"network_mode": "host",  # moto and MLflow listen on this machine's loopback
                "environment": s3_env(s3_server)}  # the S3 endpoint and its (fake) credentials
    if os.getuid() not in (0, UID):
        run_args["user"] = f"{os.getuid()}:{os.getgid()}"
    local.init(runner=local.DockerRunner(**run_args), pipeline_root=str(pipeline_root), raise_on_error=True)
    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"] = TINY
    pipeline = with_images(hsnet_pipeline, images["IMAGE"], images["SLIM_IMAGE"])

    since = int(time.time()) - 1
    t0 = time.monotonic()
    pipeline(dataset="sample", raw_source=raw_on_s3, params=params, mlflow_tracking_uri=mlflow_server.url)
    print(f"\npipeline in containers: {time.monotonic() - t0:.0f} s")

    # every step ran in a container of the image it is compiled for, and none is left behind
    events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "start"})
    started = sorted(e["from"] for e in events)
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    ran = [d.name for d in pipeline_root.glob("*/*") if (d / "executor_output.json").is_file()]
    assert {"fetch-raw", "validate-data", "register-model"} <= {n.rsplit("-", 1)[0] if n[-1].isdigit() else n
                                                               for n in ran}, ran
    assert started == sorted(executors[f"exec-{n}"]["container"]["image"] for n in ran), (started, ran)
    assert {images["IMAGE"], images["SLIM_IMAGE"]} == set(started)
    assert not client.containers.list(all=True, filters={"ancestor": images["IMAGE"]})
    assert not client.containers.list(all=True, filters={"ancestor": images["SLIM_IMAGE"]})

    # registered, recording the commit the image was built from
    mlflow = MlflowClient(mlflow_server.url)
    (version,) = mlflow.search_model_versions("name='hsnet-sample'")
    assert mlflow.get_model_version_by_alias("hsnet-sample", "candidate").version == version.version
    assert version.tags["git_commit"] == images["COMMIT"]
    assert mlflow.get_run(version.tags["train_run_id"]).data.tags["git_commit"] == images["COMMIT"]
    assert 0.0 <= float(version.tags["test_accuracy"]) <= 1.0

    # written by the non-root user, opened to no one else
    written = [p for p in pipeline_root.rglob("*")]
    assert any(p.name == "best.pt" for p in written)
    expected_owner = UID if os.getuid() == 0 else os.getuid()
    for p in [pipeline_root, *written]:
        st = p.lstat()
        assert st.st_uid == expected_owner, f"{p} is owned by uid {st.st_uid}"
        assert not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) or not st.st_mode & 0o002, \
            f"{p} is world-writable"
