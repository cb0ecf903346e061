"""Shared fixtures. Tests are split like the package: tests/model, tests/data, tests/pipeline ..."""

from __future__ import annotations

import http.server
import itertools
import os
import shutil
import ssl

import pytest
import torch

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_configure(config):
    """Each pytest process (make test runs 2: pytest-xdist) and every process it starts (dvc's and
    kfp.local's steps, servers) gets its share of the cores, as hsnet.concurrent shares them between
    runs. Torch's default, a thread per core in every process, had 4 or more threads on 2 cores
    spinning for each other: tests/pipeline/test_dvc.py + test_durable.py in 2 processes took 488
    and 453 s so, 369 and 388 s with a thread each (docs/performance.md, "The test suite").
    Set here, in the first process, before pytest-xdist starts the others: they inherit it. An
    OMP_NUM_THREADS given from outside is kept."""
    if "OMP_NUM_THREADS" not in os.environ:
        processes = getattr(config.option, "numprocesses", None)
        processes = processes if isinstance(processes, int) and processes > 0 else 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // processes))
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items):
    """Files with slow tests first (each file's tests in their order): make test's pytest processes
    (pytest-xdist, whole files each) take files in this order, so the long ones start at once and
    the many quick files fill in at the end, instead of one long file starting last."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(autouse=True, scope="session")
def _private_dirs(tmp_path_factory):
    """The run's caches (tensor files, image checks, models) and temporary files (ours, MLflow's
    model downloads, kfp.local's, the servers'), subprocesses included, live in its tmp folder,
    which pytest deletes when the run passes: never in ~/.cache/hsnet, nothing left in /tmp.
    Tests that need an empty cache set their own."""
    import tempfile

    mp = pytest.MonkeyPatch()
    mp.setenv("HSNET_CACHE_DIR", str(tmp_path_factory.mktemp("hsnet-cache")))
    tmp = str(tmp_path_factory.mktemp("tmp"))
    mp.setenv("TMPDIR", tmp)
    mp.setattr(tempfile, "tempdir", tmp)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _mlflow_as_new():
    """Each test starts with MLflow's process-wide state as a new process has it (no tracking URI
    set in-process, no active experiment or run): hsnet's steps put back what they found
    (hsnet.tracking.as_found), and what an earlier test in this worker left is not what a user has."""
    import sys

    yield
    fluent = sys.modules.get("mlflow.tracking.fluent")
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if fluent is not None:
        while fluent.active_run() is not None:
            try:
                fluent.end_run()
            except Exception:  # noqa: BLE001 - a run its store no longer has: off the stack anyway
                fluent._active_run_stack.get().pop()
        fluent._active_experiment_id = None
    if utils is not None:
        utils._tracking_uri = None


@pytest.fixture(scope="session")
def irv1_state_dict():
    """A whole InceptionResnetV1 state dict (with logits.*), as facenet-pytorch's VGGFace2 file has.

    Random weights: the real file cannot be downloaded here; the loading path is the same.
    """
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(1234)
    model = InceptionResnetV1(classify=True, num_classes=8631)
    with torch.no_grad():  # non-trivial BN statistics, so that "loaded" can't pass by accident
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


@pytest.fixture(scope="session")
def stem_weights_file(irv1_state_dict, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights") / "irv1-vggface2-like.pt"
    torch.save(irv1_state_dict, path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A few dozen sample images per split, cropped (resized) to 80x80: the trainer's input."""
    from hsnet.data.crop import crop
    from hsnet.params import CropParams
    from hsnet.data.datasets import import_dataset
    from hsnet.data.sample import generate

    base = tmp_path_factory.mktemp("tiny")
    generate(base / "raw", per_class=4, size=96, seed=5)
    import_dataset("sample", base / "raw", base / "manifest.csv")
    crop(base / "manifest.csv", base / "raw", base / "crops", settings=CropParams(detector="none", size=80),
         progress=False)
    return base / "crops"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a loopback port (a subprocess), with the bucket ``hsnet``."""
    from servers import make_bucket, start_s3

    server = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        make_bucket(server, "hsnet")
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """A boto3 client of moto's S3, hsnet pointed at it (and its tensor cache in this test's folder)."""
    from hsnet.s3 import client
    from servers import s3_env

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    return client()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    """A real ``mlflow server`` (mlflow/server.sh): sqlite backend, artifacts in s3://hsnet/mlflow on moto."""
    from servers import s3_env, start_mlflow

    server = start_mlflow(tmp_path_factory.mktemp("mlflow-server"), "s3://hsnet/mlflow", s3_env(s3_server))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def use_mlflow_server(mlflow_server, s3_server, monkeypatch, tmp_path):
    """Point hsnet (and boto3) at the test servers for one test."""
    from servers import s3_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return mlflow_server.url


@pytest.fixture
def tiny_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("""
datasets:
  sample:
    input_size: 80
    model: {ktl: false}
    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3, scheduler: {patience: 1}}
""")
    return path


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    """An empty sqlite MLflow store, tmp_path/mlflow.db, as hsnet's steps find it (copied from a
    migrated one: tests/mlflow_store.py), and tmp_path as the working folder."""
    from mlflow_store import seed_store

    uri = f"sqlite:///{seed_store(tmp_path / 'mlflow.db')}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the artifacts go beside the store: tmp_path/artifacts
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    return uri


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """A checkpoint trained for two epochs on the tiny sample, and its real evaluation."""
    from hsnet.evaluate import evaluate
    from hsnet.params import Params
    from hsnet.train import train

    base = tmp_path_factory.mktemp("trained")
    params = base / "params.yaml"
    params.write_text("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
                      "    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3}\n")
    train(tiny_data, Params.resolve(params, "sample"), base / "run", track=False, progress=False)
    evaluate(base / "run" / "best.pt", tiny_data, base / "eval", track=False, progress=False)
    return {"checkpoint": base / "run" / "best.pt", "metrics": base / "eval" / "metrics.json",
            "data": tiny_data, "base": base}


# --- registry figures: real evaluations of checkpoints whose answers are known without training
# (tests/registry and the attack tests of registration)
@pytest.fixture
def gate_data(trained, tmp_path):
    """The tiny sample's crops with every class-0 image in the test split, so that class 0 is most
    of the test images: a model that always answers class 0 scores far more than one that always
    answers class 1 (``share``): figures far apart, known without training."""
    from hsnet.data.manifest import read_manifest, write_manifest

    out = tmp_path / "gate-crops"
    shutil.copytree(trained["data"], out)
    rows = read_manifest(out / "manifest.csv")
    for r in rows:
        if r["label"] == 0:
            r["split"] = "test"
    write_manifest(out / "manifest.csv", rows)
    return out


@pytest.fixture
def share(gate_data):
    """``share(k)``: the accuracy of a model that always answers class ``k`` on ``gate_data``,
    counted from its manifest."""
    from hsnet.data.manifest import read_manifest

    test = [r for r in read_manifest(gate_data / "manifest.csv") if r["split"] == "test"]
    return lambda k: sum(r["label"] == k for r in test) / len(test)


@pytest.fixture
def evaluated(trained, gate_data, tmp_path):
    """A checkpoint and its real ``hsnet evaluate`` (on ``gate_data`` unless ``data`` is given),
    tracked in the current store (the MLflow server or the local sqlite one): what ``register`` needs.

    ``evaluated(k)``: the trained weights with every classifier's weights zeroed and its bias set
    to answer class ``k`` whatever the image; the other weights are perturbed by 1e-4 (seeded per
    call), so every call gives another file with the same figures.
    ``evaluated("trained")``: the trained checkpoint itself.
    """
    from hsnet.evaluate import evaluate

    counter = itertools.count(1)

    def make(predicts, data=None):
        n = next(counter)
        out = tmp_path / f"eval{n}"
        data = data or gate_data
        if predicts == "trained":
            return trained["checkpoint"], out / "metrics.json", evaluate(trained["checkpoint"], data, out,
                                                                         progress=False)
        ckpt = torch.load(trained["checkpoint"], weights_only=True)
        gen = torch.Generator().manual_seed(n)
        for key, value in ckpt["model"].items():
            if not value.is_floating_point() or "running" in key:
                continue
            if "classifier.weight" in key:
                value.zero_()
            elif "classifier.bias" in key:
                value.zero_()
                value[predicts] = 10.0
            else:
                value.add_(torch.randn(value.shape, generator=gen) * 1e-4)
        path = tmp_path / f"class{predicts}-{n}.pt"
        torch.save(ckpt, path)
        return path, out / "metrics.json", evaluate(path, data, out, progress=False)

    return make


@pytest.fixture
def other_test_data(gate_data, tmp_path):
    """``gate_data`` with one test image (not of class 0) fewer: another test data version."""
    from hsnet.data.manifest import read_manifest, write_manifest

    other = tmp_path / "other-crops"
    shutil.copytree(gate_data, other)
    rows = read_manifest(other / "manifest.csv")
    drop = max(i for i, r in enumerate(rows) if r["split"] == "test" and r["label"] != 0)
    write_manifest(other / "manifest.csv", rows[:drop] + rows[drop + 1:])
    return other


@pytest.fixture
def quick_log_model(monkeypatch):
    """hsnet.registry.log_model without the pyfunc packaging (seconds, not 10 s), for tests of the
    registry's own steps, which are the same."""
    import hsnet.registry as registry_mod

    def log_model(ckpt, *, run_name, params, tags, metrics=None):
        import mlflow

        from hsnet import tracking

        with tracking.run(run_name, params=params, tags=tags) as active:
            mlflow.log_text("stand-in for the pyfunc model", "model/MLmodel")
            uri = f"runs:/{active.info.run_id}/model"
            # the record of its files, as the real one keeps it (read at call time: a test may rename it)
            mlflow.log_param(registry_mod.MODEL_FILES_PARAM, registry_mod._download_digest(uri))
            weights = "0" * 64  # no weights file in the stand-in
            mlflow.log_param(registry_mod.WEIGHTS_SHA256, weights)
            return {"model_uri": uri, "run_id": active.info.run_id, registry_mod.WEIGHTS_SHA256: weights}

    monkeypatch.setattr(registry_mod, "log_model", log_model)


@pytest.fixture
def register_killed():
    """``register_killed(checkpoint, metrics, dataset)``: ``hsnet register`` stopped right after it
    made the version, before anything else (what a preempted pod or Ctrl-C leaves)."""
    from mlflow import MlflowClient

    from hsnet.registry import register

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    def run(*args, **kwargs):
        with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
            mp.setattr(MlflowClient, "update_model_version", killed)
            register(*args, **kwargs)

    return run


# --- an HTTPS tracking server stand-in (a private CA), for the health check's TLS -----------------

@pytest.fixture
def https_tracking_server(tmp_path):
    """An HTTPS server on loopback with a self-signed certificate that answers MLflow's ``/health``
    with 200 OK (what ``mlflow server`` answers), as a tracking server behind a private CA does."""
    from servers import serve_http, self_signed

    cert, key = self_signed(tmp_path)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path.rstrip("/").endswith("/health") else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = serve_http(Health, ctx)
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory):
    """The built-in sample at its smallest: 42 photos (6 characters x 7 expressions), 48 px."""
    from hsnet.data.sample import generate

    root = tmp_path_factory.mktemp("raw") / "sample"
    generate(root, per_class=1, size=48, seed=0)
    return root
