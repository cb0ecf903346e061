"""Registration, gated promotion and rollback against a real MLflow server with artifacts on S3 (moto)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from hsnet.cli import main
from hsnet.data.datasets import FERG_CLASSES
from hsnet.errors import HSNetError
from hsnet.predict import Classifier
from hsnet.registry import LOCK_SUFFIX, PromotionLost, PromotionRefused, promote, register, rollback

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _aliases(client, name):
    return {a: int(client.get_model_version_by_alias(name, a).version)
            for a in ("candidate", "production", "previous")
            if a in client.get_registered_model(name).aliases}


def test_register_promote_refuse_force_rollback(use_mlflow_server, evaluated, other_test_data, share,
                                                s3_server, capsys):
    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-gate"  # the server is shared by the session: a name of its own

    broken, broken_metrics, bm = evaluated(1)
    first = register(broken, broken_metrics, "sample", name=name)
    assert (first["name"], first["version"], first["already_registered"]) == (name, 1, False)
    mv = client.get_model_version(name, "1")
    assert float(mv.tags["test_accuracy"]) == pytest.approx(share(1), abs=1e-6)
    assert mv.tags["test_data_version"] == bm["data_version"] and mv.tags["test_split"] == "test"
    assert mv.tags["evaluation_run_id"] == bm["mlflow_run_id"]
    assert mv.tags["dataset"] == "sample" and mv.tags["model.dib"] == "True" and mv.tags["model.ktl"] == "False"
    # the commit that registered it and the one that trained it; no training run (trained untracked), no "None"
    assert mv.tags["git_commit"] and mv.tags["train_git_commit"] and "train_run_id" not in mv.tags
    assert _aliases(client, name) == {"candidate": 1}
    # the same checkpoint again: no second version
    again = register(broken, broken_metrics, "sample", name=name)
    assert again["already_registered"] and again["version"] == 1 and again["run_id"] == first["run_id"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # the artifacts went through the server to S3
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="hsnet", Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("artifacts/model.pt") for k in keys), keys[:10]
    assert any(k.endswith("MLmodel") for k in keys)

    assert promote(name)["production"] == 1  # no production yet: the candidate becomes it
    assert _aliases(client, name) == {"candidate": 1, "production": 1}

    good, good_metrics, gm = evaluated(0)
    assert gm["accuracy"] == pytest.approx(share(0)) and share(0) > share(1) + 0.1
    assert register(good, good_metrics, "sample", name=name)["version"] == 2
    with pytest.raises(PromotionRefused, match="does not beat production"):  # not by the required margin
        promote(name, min_delta=1.0)
    decision = promote(name, min_delta=0.1)
    assert decision["promoted"] and not decision["forced"]
    assert decision["candidate_value"] == pytest.approx(gm["accuracy"])
    assert decision["production_value"] == pytest.approx(bm["accuracy"])
    assert _aliases(client, name) == {"candidate": 2, "production": 2, "previous": 1}

    worse, worse_metrics, _ = evaluated(1)
    assert register(worse, worse_metrics, "sample", name=name)["version"] == 3
    with pytest.raises(PromotionRefused, match="does not beat production"):
        promote(name)
    assert _aliases(client, name)["production"] == 2
    assert main(["promote", "--name", name]) == 2  # the CLI refuses with a non-zero exit
    assert "Production is unchanged" in capsys.readouterr().err

    other, other_metrics, om = evaluated(0, data=other_test_data)
    assert om["data_version"] != gm["data_version"]
    assert register(other, other_metrics, "sample", name=name)["version"] == 4
    with pytest.raises(PromotionRefused, match="not comparable"):
        promote(name)
    assert main(["promote", "--name", name, "--force"]) == 0
    assert _aliases(client, name)["production"] == 4
    assert "not comparable" in client.get_model_version(name, "4").tags["promotion_forced"]

    assert rollback(name)["production"] == 2
    assert _aliases(client, name) == {"candidate": 4, "production": 2, "previous": 4}
    assert "rolled_back_at" in client.get_model_version(name, "4").tags

    # two promotions at once in one process: one runs, the other is refused as having lost
    errors = []

    def go(v):
        try:
            promote(name, version=v, force=True)
        except PromotionLost as exc:  # losing the race is reported, not silent
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(v,)) for v in (1, 3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert _aliases(client, name)["production"] in (1, 3)
    assert len(errors) <= 1


def _forge(path, out, **changes):
    m = json.loads(path.read_text())
    m.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del m[key]
    out.write_text(json.dumps(m))
    return out


def test_forged_metrics_never_reach_production(use_mlflow_server, evaluated, share, tmp_path, capsys):
    """Issue 13.3: a 14%-like checkpoint with a hand-written 99% metrics.json must not become
    production, however the file is forged."""
    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-forged"
    good, good_metrics, gm = evaluated(0)
    register(good, good_metrics, "sample", name=name)
    assert promote(name)["production"] == 1
    bad, bad_metrics, bm = evaluated(1)
    assert bm["accuracy"] == pytest.approx(share(1)) and bm["accuracy"] < 0.2

    # written by hand: no checkpoint hash
    by_hand = tmp_path / "by-hand.json"
    by_hand.write_text(json.dumps({"dataset": "sample", "accuracy": 0.99, "mean_accuracy": 0.99,
                                   "split": "test", "data_version": gm["data_version"]}))
    with pytest.raises(HSNetError, match="does not say which checkpoint it measured"):
        register(bad, by_hand, "sample", name=name)
    # the good model's real metrics.json, for the bad checkpoint: both files are named
    with pytest.raises(HSNetError, match=rf"{good_metrics}.*measured the checkpoint with sha256 "
                                         rf"{gm['checkpoint_sha256'][:16]}.*not --checkpoint {bad} "):
        register(bad, good_metrics, "sample", name=name)
    # the bad model's own metrics.json with the figures edited
    edited = _forge(bad_metrics, tmp_path / "edited.json", accuracy=0.99, mean_accuracy=0.99)
    with pytest.raises(HSNetError, match=r"does not match its evaluation run.*accuracy \(0\.99 in the file"):
        register(bad, edited, "sample", name=name)
    # ... and without the run id: the evaluation is found by the checkpoint's hash
    unlinked = _forge(bad_metrics, tmp_path / "unlinked.json", accuracy=0.99, mlflow_run_id=None)
    with pytest.raises(HSNetError, match="does not match its evaluation run"):
        register(bad, unlinked, "sample", name=name)
    # the hash copied in, but never evaluated in this tracking store
    never = tmp_path / "never.pt"
    shutil.copyfile(bad, never)
    with open(never, "ab") as f:
        f.write(b"\0")  # another file (torch's zip reader ignores trailing bytes)
    from hsnet.io import sha256_file

    unevaluated = _forge(bad_metrics, tmp_path / "unevaluated.json", checkpoint_sha256=sha256_file(never),
                         mlflow_run_id=None)
    with pytest.raises(HSNetError, match="no MLflow evaluation of"):
        register(never, unevaluated, "sample", name=name)
    assert main(["register", "--checkpoint", str(bad), "--metrics", str(edited), "--dataset", "sample",
                 "--name", name]) == 2
    assert "the file was changed after hsnet evaluate wrote it" in capsys.readouterr().err
    assert len(client.search_model_versions(f"name='{name}'")) == 1  # nothing forged was registered

    # registered honestly, then its version's tags edited to 99%: promote reads the evaluation run
    assert register(bad, bad_metrics, "sample", name=name)["version"] == 2
    for tag in ("test_accuracy", "test_mean_accuracy"):
        client.set_model_version_tag(name, "2", tag, "0.990000")
    with pytest.raises(PromotionRefused, match=rf"does not beat production \(version 1\) {gm['accuracy']:.4f}"):
        promote(name)
    # ... or a second, better figure logged into its evaluation run afterwards
    client.log_metric(bm["mlflow_run_id"], "test_accuracy", 0.99)
    with pytest.raises(PromotionRefused, match="the record was changed after the evaluation"):
        promote(name)
    assert _aliases(client, name)["production"] == 1


def test_already_registered_reports_the_registered_figures(use_mlflow_server, evaluated, other_test_data,
                                                           tmp_path, capsys):
    """Issue 13.10: registering a checkpoint again reports what its version was registered with,
    not the figures of the metrics file given this time."""
    from hsnet.evaluate import evaluate

    name = "hsnet-sample-again"
    bad, bad_metrics, bm = evaluated(1)
    register(bad, bad_metrics, "sample", name=name)
    # evaluated again on other data (one test image fewer): other, true figures for the same file
    again_metrics = evaluate(bad, other_test_data, tmp_path / "again", progress=False)
    assert again_metrics["accuracy"] != pytest.approx(bm["accuracy"])
    again = register(bad, tmp_path / "again" / "metrics.json", "sample", name=name)
    assert again["already_registered"] and again["version"] == 1
    assert (again["test_accuracy"], again["test_mean_accuracy"]) == pytest.approx(
        (bm["accuracy"], bm["mean_accuracy"]))
    assert main(["register", "--checkpoint", str(bad), "--metrics", str(tmp_path / "again" / "metrics.json"),
                 "--dataset", "sample", "--name", name]) == 0
    out = capsys.readouterr().out
    assert f"already registered as {name} version 1" in out and f"test accuracy {bm['accuracy']:.4f}" in out


_RACER = """
import sys, time
from pathlib import Path
from hsnet.cli import main
barrier = Path(sys.argv[1])
while not barrier.exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[2:]))
"""


def test_concurrent_promotions_from_two_processes(use_mlflow_server, evaluated, tmp_path):
    """Issue 13.10: two `hsnet promote` processes at once: exactly one moves production and says so
    (once), the other says it lost (or, if it ran after, that there is nothing to do)."""
    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-race"
    broken, broken_metrics, _ = evaluated(1)
    register(broken, broken_metrics, "sample", name=name)
    assert promote(name)["production"] == 1
    good, good_metrics, _ = evaluated(0)
    register(good, good_metrics, "sample", name=name)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(2):
        barrier = tmp_path / f"go{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(barrier), "promote", "--name", name]
                                  + (["--version", "1", "--force"] if round_ else []),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        time.sleep(8)  # both have imported hsnet and wait at the barrier
        barrier.touch()
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        won = [r for r in results if r[0] == 0 and "production -> version" in r[1]]
        assert len(won) == 1, results
        rc, out, err = won[0]
        assert (out + err).count("production -> version") == 1  # printed once
        (lost,) = [r for r in results if r is not won[0]]
        assert (lost[0] == 2 and "lost the race and changed nothing" in lost[2]) or (
            lost[0] == 0 and "nothing to do" in lost[1]), lost
        assert "Traceback" not in lost[2]
        assert _aliases(client, name)["production"] == (1 if round_ else 2)
    assert name + LOCK_SUFFIX not in {m.name for m in client.search_registered_models()}  # released


def test_a_stale_lock_is_reported_and_can_be_removed(use_mlflow_server, evaluated, capsys):
    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-stale"
    good, good_metrics, _ = evaluated(0)
    register(good, good_metrics, "sample", name=name)
    client.create_registered_model(name + LOCK_SUFFIX, tags={"holder": "host pid 1 at 2020-01-01T00:00:00Z"})
    assert main(["promote", "--name", name]) == 2
    err = capsys.readouterr().err
    assert "host pid 1 at 2020-01-01" in err and f"hsnet promote --name {name} --unlock" in err
    assert main(["promote", "--name", name, "--unlock"]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["promote", "--name", name]) == 0
    assert _aliases(client, name) == {"candidate": 1, "production": 1}


def test_production_model_as_pyfunc(use_mlflow_server, trained, evaluated, tmp_path):
    import mlflow

    name = "hsnet-sample-pyfunc"
    register(*evaluated("trained")[:2], "sample", name=name)
    promote(name)
    model = mlflow.pyfunc.load_model(f"models:/{name}@production")
    assert model.metadata.signature.inputs.input_names() == ["image"]

    faces = sorted((trained["data"] / "images").rglob("*.png"))[:3]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in faces]
    encoded = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=98)
        encoded.append(buf.getvalue())
    out = model.predict(pd.DataFrame({"image": [encoded[0], arrays[1], arrays[2]]}))
    classes = list(FERG_CLASSES)
    assert list(out.columns) == ["expression", "confidence"] + [f"prob_{c}" for c in classes]
    probs = out[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert set(out["expression"]) <= set(classes)
    # the same numbers as the checkpoint itself: the preprocessing travelled with the model
    local = Classifier.from_checkpoint(trained["checkpoint"], device="cpu").probabilities(arrays[1:])
    np.testing.assert_allclose(probs[1:], local, atol=1e-5)
    with pytest.raises(Exception, match="not a readable image"):
        model.predict(pd.DataFrame({"image": [b"not an image"]}))


def test_predict_from_the_registry_downloads_each_version_once(use_mlflow_server, trained, evaluated, tmp_path,
                                                              monkeypatch):
    """`hsnet predict --model models:/NAME@production`: the alias is resolved, the version is
    downloaded once into the model cache and reused; promoting another version moves to it."""
    import mlflow

    from hsnet import model_copies
    from hsnet.predict import load_classifier

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    # as on a user's box (PYTHONDONTWRITEBYTECODE unset): loading the model imports its code from the
    # cached copy, and Python's __pycache__ written there would make the next predict download it again
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    downloads = []
    real_download = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts",
                        lambda **kw: downloads.append(kw["artifact_uri"]) or real_download(**kw))
    name = "hsnet-sample-predict"
    register(*evaluated(1)[:2], "sample", name=name)
    promote(name)
    downloads.clear()  # register and promote download the model to check its files: not the cache's
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg", quality=95)
    for _ in range(2):
        assert main(["predict", str(tmp_path / "astronaut.jpg"), "--model", f"models:/{name}@production",
                     "--out", str(tmp_path / "out.jsonl")]) == 0
        (result,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert len(result["faces"]) == 1 and result["faces"][0]["expression"] in FERG_CLASSES
    assert downloads == [f"models:/{name}/1"]
    cached = [p for p in (tmp_path / "cache" / "models").glob("*/*") if not p.name.startswith(".")]  # not markers
    # one folder, named by the version and what it is (its run, source and time: a number can be reused)
    assert len(cached) == 1 and re.fullmatch(rf"{name}-v1-[0-9a-f]{{8}}", cached[0].name) \
        and (cached[0] / "MLmodel").is_file()
    assert not list((tmp_path / "cache" / "models").glob("*/.download-*"))  # no half-downloaded copy left
    assert not list(cached[0].rglob("*.pyc"))  # the copy is as registered: nothing written into it

    better, better_metrics, _ = evaluated("trained")
    register(better, better_metrics, "sample", name=name)
    promote(name, force=True)  # whether or not it is better: this test is about the model cache
    classifier = load_classifier(f"models:/{name}@production")
    assert downloads[-1] == f"models:/{name}/2"
    local = Classifier.from_checkpoint(better, device="cpu")
    x = [np.asarray(Image.open(sorted((trained["data"] / "images").rglob("*.png"))[0]).convert("RGB"))]
    np.testing.assert_allclose(classifier.probabilities(x), local.probabilities(x), atol=1e-5)

    monkeypatch.setattr(model_copies, "MODEL_CACHE_KEEP", 1)
    load_classifier(f"models:/{name}/1")
    assert [p.name for p in (tmp_path / "cache" / "models").glob("*/*") if not p.name.startswith(".")] == [
        cached[0].name]
    with pytest.raises(HSNetError, match=f"models:/{name}@nosuchalias.*alias"):
        load_classifier(f"models:/{name}@nosuchalias")


def test_register_checks_its_inputs(use_mlflow_server, trained, tmp_path):
    with pytest.raises(HSNetError, match="run hsnet evaluate first"):
        register(trained["checkpoint"], tmp_path / "missing.json", "sample")
    with pytest.raises(HSNetError, match="the checkpoint is for 'sample'"):
        register(trained["checkpoint"], trained["metrics"], "rafdb")
    # evaluated without MLflow (--no-mlflow): no record to take the figures from
    with pytest.raises(HSNetError, match=r"no MLflow evaluation of .*not --no-mlflow"):
        register(trained["checkpoint"], trained["metrics"], "sample")
    with pytest.raises(HSNetError, match="no registered model 'hsnet-nothing-here'"):
        promote("hsnet-nothing-here")
    MlflowClient().create_registered_model("hsnet-no-versions")  # there, but nothing registered under it
    with pytest.raises(HSNetError, match="no 'candidate' version"):
        promote("hsnet-no-versions")
    with pytest.raises(HSNetError, match="no 'previous' version"):
        rollback("hsnet-no-versions")


def test_unreachable_registry_fails_fast(trained, monkeypatch, tmp_path):
    from servers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HSNetError, match="unreachable"):
        register(trained["checkpoint"], trained["metrics"], "sample")


def test_mlflow_models_serve(use_mlflow_server, trained, evaluated, tmp_path):
    """`mlflow models serve -m models:/NAME@production --env-manager local` answers REST requests."""
    import base64
    import urllib.request

    from servers import Server, free_port, models_serve_env

    name = "hsnet-sample-serve"
    register(*evaluated("trained")[:2], "sample", name=name)
    promote(name)
    port = free_port()
    env = models_serve_env()
    server = Server(["mlflow", "models", "serve", "-m", f"models:/{name}@production", "--env-manager", "local",
                     "-h", "127.0.0.1", "-p", str(port), "-w", "1"], f"http://127.0.0.1:{port}", "/ping", env,
                    tmp_path / "serve.log")
    try:
        face = sorted((trained["data"] / "images").rglob("*.png"))[0]
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(face.read_bytes()).decode()]]}}
        req = urllib.request.Request(server.url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            rows = json.loads(resp.read())["predictions"]
    finally:
        server.stop()
    expected = Classifier.from_checkpoint(trained["checkpoint"], device="cpu").probabilities(
        [np.asarray(Image.open(face).convert("RGB"))])[0]
    assert len(rows) == 1 and rows[0]["expression"] == FERG_CLASSES[int(expected.argmax())]
    np.testing.assert_allclose([rows[0][f"prob_{c}"] for c in FERG_CLASSES], expected, atol=1e-5)


def test_local_sqlite_registry_without_a_server(local_mlflow, evaluated):
    """The default store (sqlite under mlflow/, no server) returns versions as ints: same behaviour."""
    client = MlflowClient(local_mlflow)
    assert register(*evaluated(1)[:2], "sample")["version"] == 1
    assert promote("hsnet-sample")["production"] == 1
    assert promote("hsnet-sample")["promoted"] is False  # already production: nothing to do
    register(*evaluated(0)[:2], "sample")
    assert promote("hsnet-sample")["production"] == 2
    assert rollback("hsnet-sample")["production"] == 1
    assert _aliases(client, "hsnet-sample") == {"candidate": 2, "production": 1, "previous": 2}

    # a misspelt name: said so, with the models there are; no lock model left behind for it
    for step in (promote, rollback):
        with pytest.raises(HSNetError, match=r"no registered model 'hsnet-smaple' .*: hsnet-sample\b"):
            step("hsnet-smaple")
    assert [m.name for m in client.search_registered_models()] == ["hsnet-sample"]


def test_make_pipelines_summary_says_which_aliases_the_registered_version_holds(local_mlflow, evaluated, tmp_path):
    """The end of `make pipeline` (hsnet.summary) after a promotion and a second run: the version
    is production, and the summary says so instead of "(alias candidate)" and "promote it"; after
    a newer candidate, the older checkpoint registered again holds production alone."""
    import json

    from hsnet.summary import summarize

    def summary_after_register(ckpt, metrics):
        run = tmp_path / "runs" / "sample"
        (run / "eval").mkdir(parents=True, exist_ok=True)
        (run / "eval" / "metrics.json").write_text(Path(metrics).read_text())
        (run / "registered.json").write_text(json.dumps(register(ckpt, metrics, "sample")))
        return summarize(tmp_path / "runs").splitlines()

    first = evaluated(1)[:2]
    lines = summary_after_register(*first)
    assert "  registered: hsnet-sample version 1 (alias candidate), models:/hsnet-sample/1" in lines
    assert any(line.startswith("  promote it: hsnet promote --name hsnet-sample") for line in lines)

    promote("hsnet-sample")
    lines = summary_after_register(*first)  # make pipeline again: register finds version 1
    assert "  registered: hsnet-sample version 1 (aliases candidate, production), models:/hsnet-sample/1" in lines
    assert not any("promote it" in line for line in lines)
    assert "  in production: hsnet predict PHOTO --model models:/hsnet-sample@production" in lines

    register(*evaluated(0)[:2], "sample")  # version 2 is the candidate now
    lines = summary_after_register(*first)
    assert "  registered: hsnet-sample version 1 (alias production), models:/hsnet-sample/1" in lines


def _fake_mlflow(tmp_path) -> Path:
    """An `mlflow` entry point as pip writes one (a script run by the environment's Python) that
    prints the arguments it was given instead of starting a server."""
    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('ARGS:', *sys.argv[1:])\n")
    fake.chmod(0o755)
    return fake


def test_server_script_starts_no_job_runner(mlflow_server):
    """mlflow/server.sh turns MLflow's job execution off (GenAI jobs hsnet doesn't run): the server
    is its web workers only, not 8 more processes (a job runner and its huey consumers) per start."""
    import psutil

    processes = psutil.Process(mlflow_server.proc.pid).children(recursive=True)
    commands = [" ".join(p.cmdline()) for p in processes]
    assert any("uvicorn" in c for c in commands), commands  # the web server is there to be seen
    assert not [c for c in commands if "huey" in c or "jobs._job_runner" in c], commands


def test_server_script_never_prints_the_database_password(tmp_path):
    """mlflow/server.sh with a Postgres URI: the arguments reach `mlflow server`, the password not the log."""
    fake = _fake_mlflow(tmp_path)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
           "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:s3cr3t-pw@db:5432/mlflow?sslmode=require",
           "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow", "MLFLOW_ALLOWED_HOSTS": "mlflow.example.com"}
    proc = subprocess.run(["bash", str(ROOT / "mlflow" / "server.sh")], env=env, capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    assert "s3cr3t-pw" not in proc.stderr
    assert "store postgresql://mlflow:***@db:5432/mlflow?sslmode=require, artifacts s3://bucket/mlflow" in proc.stderr
    args = proc.stdout
    assert "--backend-store-uri postgresql://mlflow:s3cr3t-pw@db:5432/mlflow?sslmode=require" in args
    assert "--artifacts-destination s3://bucket/mlflow" in args and "--serve-artifacts" in args
    assert "--allowed-hosts localhost,localhost:*,127.0.0.1,127.0.0.1:*,mlflow.example.com,mlflow.example.com:*" in args


def test_server_script_without_hsnet_beside_mlflow_still_hides_the_password(tmp_path):
    """The slim server image (mlflow/Dockerfile) has mlflow but not hsnet: the start-up line then
    leaves the user, password and query out."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import hsnet"], cwd=tmp_path,
                                        capture_output=True).returncode == 0:
        pytest.skip("needs a python3 without hsnet")
    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir()
    fake.write_text(f"#!{python}\nimport sys\nprint('ARGS:', *sys.argv[1:])\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
           "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:s3cr3t-pw@db:5432/mlflow?password=s3cr3t-pw",
           "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/mlflow"}
    proc = subprocess.run(["bash", str(ROOT / "mlflow" / "server.sh")], env=env, capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    assert "s3cr3t-pw" not in proc.stderr and "store postgresql://db:5432/mlflow, artifacts" in proc.stderr


def test_server_script_without_mlflow_says_it_is_missing(tmp_path):
    """Issue 13.10: no mlflow on PATH. From the repository root, with the current folder on PATH,
    bash used to find the mlflow/ folder and say "Is a directory"."""
    env = {**os.environ, "PATH": f"/usr/bin{os.pathsep}/bin{os.pathsep}"}  # the empty entry: the current folder
    env.pop("MLFLOW_ARTIFACTS_DESTINATION", None)
    proc = subprocess.run(["bash", "mlflow/server.sh"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 127
    assert "the mlflow command is missing" in proc.stderr and "Is a directory" not in proc.stderr, proc.stderr
    assert "pip install" in proc.stderr


@pytest.mark.parametrize("uri, shown", [
    ("http://alice:s3cr3t@mlflow.example.com:5000", "http://alice:***@mlflow.example.com:5000"),
    ("https://alice:p%40ss/w0rd@host/prefix", "https://alice:***@host/prefix"),
    ("postgresql://mlflow:pw@db:5432/mlflow?sslmode=require&password=x",
     "postgresql://mlflow:***@db:5432/mlflow?sslmode=require&password=***"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////home/u/mlflow.db", "sqlite:////home/u/mlflow.db"),
    ("models:/hsnet-rafdb@production", "models:/hsnet-rafdb@production"),
    # a token given as the user alone (GitHub-style https://TOKEN@host), and a presigned S3 URL
    ("https://ghp_abc123@mlflow.example.com/", "https://***@mlflow.example.com/"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA1%2F2&X-Amz-Signature=ab12",
     "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***"),
    # an '@' left unencoded in the password or the token: the authority's user part runs to its
    # LAST '@' (RFC 3986 3.2.1; urllib.parse.urlsplit(...).hostname is "host" in each)
    ("http://alice:p@ss@host:5000/x", "http://alice:***@host:5000/x"),
    ("https://alice:a@b@c@host/", "https://alice:***@host/"),
    ("https://tok@en@host/", "https://***@host/"),
    # ... but an '@' in the path is not part of it
    ("http://alice:pw@host/runs/a@b", "http://alice:***@host/runs/a@b"),
    ("http://tok@host:5000/p", "http://***@host:5000/p"),
    # a port, then an '@' in the path: nothing to mask (the host is kept)
    ("http://host:5000/runs/a@b", "http://host:5000/runs/a@b"),
    # a token as the user with a placeholder or empty password (GitHub's TOKEN:x-oauth-basic@,
    # TOKEN:@): the user is the secret
    ("https://ghp_abc123:x-oauth-basic@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://ghp_abc123:@github.com/o/r.git", "https://***@github.com/o/r.git"),
    ("https://ghp_abc123:X-OAuth-Basic@github.com/", "https://***@github.com/"),
    # a secret in the fragment (OAuth's implicit flow: #access_token=...), not only in the query
    ("https://app.example/cb#access_token=ya29.abc&state=1", "https://app.example/cb#access_token=***&state=1"),
    ("https://app.example/cb#state=1&id_token=eyJ.x.y", "https://app.example/cb#state=1&id_token=***"),
    # an MLflow UI link's fragment with no secret in it is kept
    ("http://mlflow:5000/#/experiments/1/runs/ab12", "http://mlflow:5000/#/experiments/1/runs/ab12"),
])
def test_mask_uri(uri, shown):
    from hsnet.tracking import mask_uri

    assert mask_uri(uri) == shown


def test_unreachable_server_with_credentials_never_shows_the_password(trained, monkeypatch):
    from servers import free_port

    from hsnet import tracking

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)  # restored after the test: tracking_uri() moves them here
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cr3t-pw@127.0.0.1:{port}")
    with pytest.raises(HSNetError, match=rf"server http://127\.0\.0\.1:{port} .*unreachable") as err:
        register(trained["checkpoint"], trained["metrics"], "sample")
    assert "s3cr3t-pw" not in str(err.value)
    assert os.environ["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{port}"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s3cr3t-pw")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:p%40ss@example.invalid/mlflow")
    assert tracking.tracking_uri() == "https://example.invalid/mlflow"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("bob", "p@ss")


class _BasicAuthProxy:
    """An HTTP proxy in front of the MLflow server that demands HTTP basic auth, as a reverse proxy
    (nginx, an ingress) in front of a shared server does; counts what it let through and refused."""

    def __init__(self, upstream: str, user: str, password: str):
        import base64
        import http.client
        import http.server
        import urllib.parse

        up = urllib.parse.urlsplit(upstream)
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        seen = self.seen = {"ok": 0, "refused": 0}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                        if size == 0:
                            return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def handle_one(self):
                body = self._body()
                if self.headers.get("Authorization") != expected:
                    seen["refused"] += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                seen["ok"] += 1
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
                skip = {"authorization", "host", "connection", "transfer-encoding", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_tracking_uri_with_user_and_password(use_mlflow_server, trained, tmp_path):
    """Issue 13.10: MLFLOW_TRACKING_URI=http://user:password@host:port works for evaluate, register
    and promote (the server sees the credentials on every request) and no output shows the password."""
    proxy = _BasicAuthProxy(use_mlflow_server, "alice", "s3cr3t-pw")
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "MLFLOW_TRACKING_URI": f"http://alice:s3cr3t-pw@127.0.0.1:{proxy.port}"}
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            env.pop(key, None)
        name = "hsnet-sample-auth"
        steps = [["evaluate", "--checkpoint", str(trained["checkpoint"]), "--data", str(trained["data"]),
                  "--out", str(tmp_path / "eval")],
                 ["register", "--checkpoint", str(trained["checkpoint"]), "--metrics",
                  str(tmp_path / "eval" / "metrics.json"), "--dataset", "sample", "--name", name],
                 ["promote", "--name", name]]
        outputs = []
        for step in steps:
            proc = subprocess.run([sys.executable, "-m", "hsnet", "-v", *step], env=env, capture_output=True,
                                  text=True, cwd=tmp_path, timeout=600)
            outputs.append(proc.stdout + proc.stderr)
            assert proc.returncode == 0, outputs[-1][-3000:]
        assert "production -> version 1" in outputs[-1]
        assert proxy.seen["ok"] > 10 and proxy.seen["refused"] == 0, proxy.seen
        # the wrong password: refused by the server, reported without it
        env["MLFLOW_TRACKING_URI"] = f"http://alice:wr0ng-pw@127.0.0.1:{proxy.port}"
        proc = subprocess.run([sys.executable, "-m", "hsnet", "promote", "--name", name], env=env,
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode != 0 and proxy.seen["refused"] > 0
    finally:
        proxy.stop()
    for out in outputs:
        assert "s3cr3t-pw" not in out and "wr0ng-pw" not in out, out[-3000:]
    assert "Traceback" not in outputs[-1], outputs[-1][-3000:]


def test_a_version_registered_without_a_files_record_is_warned_about_once(local_mlflow, caplog):
    """A version registered before hsnet recorded its files' digest (or by another tool) has nothing
    to be checked against: the check says so itself, once, whoever asked (promote, predict, serve)."""
    import logging

    from hsnet.registry import check_model_files

    # the client of this test's store by name: MLflow's global URI may hold an earlier test's
    client = MlflowClient(local_mlflow, registry_uri=local_mlflow)
    run = client.create_run(client.create_experiment("legacy"))  # a registration run with no model_files_sha256
    client.create_registered_model("hsnet-legacy")
    client.create_model_version("hsnet-legacy", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    with caplog.at_level(logging.WARNING, logger="hsnet"):
        assert check_model_files(client, "hsnet-legacy", 1) is False
    said = [r.getMessage() for r in caplog.records if "before model files were recorded" in r.getMessage()]
    assert said == ["hsnet-legacy version 1 was registered before model files were recorded: its files can't "
                    "be checked; register its checkpoint again (a new version, whose files are recorded) and "
                    "promote that one"]
