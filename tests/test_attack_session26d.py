"""Attack, session 26d: durable checkpoints (hsnet.durable, hsnet.train._fit/_settle) against the
MLflow run that records their epochs, and credentials in what hsnet records or prints.

Each test's docstring quotes the promise it holds the code to. Real parts: moto's S3 (s3_server),
a local sqlite MLflow store (local_mlflow), real trainings on the tiny sample. S3's failures are
made by the world changing under the training (a bucket deleted, an S3 that refuses the
checkpoint files), never by replacing the code under test.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from hsnet.params import Params

PARAMS = ("datasets:\n  sample:\n    input_size: 80\n    crop: {detector: none, size: 80}\n    model: {ktl: false}\n"
          "    train: {lr: LR, epochs: EPOCHS, batch_size: 16, seed: 3}\n")


def _params(tmp_path: Path, epochs: int, lr: float = 0.001, name: str = "params.yaml") -> Params:
    path = tmp_path / name
    path.write_text(PARAMS.replace("EPOCHS", str(epochs)).replace("LR", str(lr)))
    return Params.resolve(path, "sample")


def _epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]["epoch"]


def _steps(run_id: str) -> list[int]:
    import mlflow

    return sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy"))


class _RefusesCheckpoints:
    """The real S3 client, on an S3 that does not take the checkpoint files (*.pt: 185 MB in a real
    run) while small objects (the guard's verdict.json) still go up: a network that drops the long
    uploads, a quota. Everything else is the real client's."""

    def __init__(self, real):
        self._real = real

    def upload_file(self, filename, bucket, key, *args, **kwargs):
        if str(filename).endswith(".pt"):
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=f"http://s3.invalid/{bucket}/{key}")
        return self._real.upload_file(filename, bucket, key, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def refusing_s3(s3, monkeypatch):
    """Each durable.Uploader talks, once its checkpoints are restored, to an S3 that refuses *.pt."""
    from hsnet import durable

    real_start = durable.Uploader.start

    def start(self, out_dir):
        real_start(self, out_dir)
        self.s3 = _RefusesCheckpoints(self.s3)

    monkeypatch.setattr(durable.Uploader, "start", start)
    return s3


@pytest.mark.slow  # real trainings / a server start: tens of seconds on a loaded machine
def test_an_upload_that_s3_refuses_does_not_end_the_training(tiny_data, s3, tmp_path, monkeypatch):
    """hsnet.durable.Uploader: "A failed upload is logged and training goes on (the next epoch tries
    again): an S3 hiccup should not end a day of training that the upload was meant to protect."
    Uploader._upload catches BotoCoreError and ClientError, but boto3's upload_file turns every
    ClientError S3 answers (NoSuchBucket, AccessDenied, SlowDown, InternalError) into
    boto3.exceptions.S3UploadFailedError, which is neither: the training ends with it. Here the
    prefix's bucket is deleted after the checkpoints were restored (a lifecycle rule, an operator,
    revoked write access read the same way). Expected: training reaches its end."""
    from hsnet import durable

    bucket = f"att26d-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    real_start = durable.Uploader.start

    def start(self, out_dir):  # the real restore; then the bucket goes away
        real_start(self, out_dir)
        s3.delete_bucket(Bucket=bucket)

    monkeypatch.setattr(durable.Uploader, "start", start)
    summary = durable.train(tiny_data, _params(tmp_path, 1), tmp_path / "pod", f"s3://{bucket}/ck/sample",
                            min_interval_s=0, track=False, progress=False)
    assert _epoch_of(tmp_path / "pod" / "last.pt") == 1
    assert summary is not None


@pytest.mark.slow  # real trainings / a server start: tens of seconds on a loaded machine
def test_a_guard_verdict_kept_while_the_checkpoint_upload_failed_loses_no_epoch(tiny_data, refusing_s3,
                                                                                local_mlflow, tmp_path,
                                                                                monkeypatch):
    """hsnet.train._settle: "if that upload failed they are not logged, since a retry trains them
    again and logs them then (history.json has them)". On a guard's verdict (hsnet.guards.NotLearning)
    the verdict goes up first (_keep_verdict: "a Kubeflow retry of the step ... ends with it at
    once"), so when the checkpoint's upload fails the retry trains nothing and logs nothing: the
    epochs the guard judged are in no MLflow run, ever. Here: epoch 1 trained (its upload failed),
    the guard stops the run at epoch 2, the retry on another node ends with the verdict at once.
    Expected: epoch 1 is in the run (the verdict makes a retry end at once: no second logging)."""
    import mlflow

    from hsnet import durable, guards

    real = guards.check_epoch

    def check_epoch(row, history, *args, **kwargs):  # the guard's judgment: this run is not learning
        real(row, history, *args, **kwargs)
        if row["epoch"] == 2:
            raise guards.NotLearning(f"training is not learning (epochs 1-{row['epoch']})", row["epoch"])

    monkeypatch.setattr(guards, "check_epoch", check_epoch)
    uri, params = f"s3://hsnet/checkpoints/att26d-verdict-{uuid.uuid4().hex[:6]}/s", _params(tmp_path, 3)
    with pytest.raises(guards.NotLearning):
        durable.train(tiny_data, params, tmp_path / "node1", uri, min_interval_s=3600, progress=False)
    with pytest.raises(guards.NotLearning, match="earlier attempt"):  # the retry: the verdict at once
        durable.train(tiny_data, params, tmp_path / "node2", uri, min_interval_s=3600, progress=False)
    runs = mlflow.search_runs(experiment_names=["hsnet"], output_format="list")
    logged = sorted(step for r in runs for step in _steps(r.info.run_id))
    assert logged == [1], f"runs {[(r.info.status, _steps(r.info.run_id)) for r in runs]}: epoch 1 is in none"


@pytest.mark.slow  # real trainings / a server start: tens of seconds on a loaded machine
def test_a_local_last_pt_of_other_settings_does_not_hide_the_prefixs_checkpoint(tiny_data, s3, tmp_path):
    """hsnet/durable.py: "a preempted or killed training ... continues from its last uploaded
    epoch"; "when it already holds a last.pt (the same machine, restarted) that copy is used". A
    --out whose last.pt is of OTHER settings (an earlier configuration trained there) is not this
    training's copy: resume="auto" refuses it and trains from scratch, but restore() skipped the
    prefix because a last.pt was there, so the uploaded epochs are thrown away (and the prefix is
    overwritten with epoch 1 at the next upload). Expected: the training continues from the
    prefix's epoch."""
    from hsnet import durable
    from hsnet.train import train

    uri = f"s3://hsnet/checkpoints/att26d-other-{uuid.uuid4().hex[:6]}/s"
    mine, other = _params(tmp_path, 3), _params(tmp_path, 3, lr=0.002, name="other.yaml")
    durable.train(tiny_data, mine, tmp_path / "node1", uri, min_interval_s=0, track=False, progress=False,
                  stop_after_epochs=1)  # epoch 1 uploaded, then preempted
    train(tiny_data, other, tmp_path / "node2", track=False, progress=False, stop_after_epochs=1)  # other settings
    durable.train(tiny_data, mine, tmp_path / "node2", uri, min_interval_s=0, track=False, progress=False,
                  stop_after_epochs=1)
    assert _epoch_of(tmp_path / "node2" / "last.pt") == 2, "trained from scratch: the prefix's epoch 1 is lost"


# --- credentials: what hsnet records in MLflow and repeats in its messages

SECRET = "s3cr3t-Tok3n"


def _never_shows(text: str) -> None:
    assert SECRET not in text, f"the credential is shown: {text}"


@pytest.mark.slow  # real trainings / a server start: tens of seconds on a loaded machine
def test_a_token_sent_as_the_user_is_not_the_logged_models_user(trained, use_mlflow_server, monkeypatch):
    """docs/security.md: "MLflow records MLFLOW_TRACKING_USERNAME as each run's mlflow.user; where
    that is a token (TOKEN:x-oauth-basic@), hsnet's runs record the system's user instead" and "Run
    params and tags never hold credentials". hsnet.tracking.run_user fixes the run's tag, but
    registry.log_model's mlflow.pyfunc.log_model makes an MLflow 3 LoggedModel whose tags MLflow
    resolves itself (DefaultRunContext: MLFLOW_TRACKING_USERNAME first): every registered model's
    LoggedModel carries ``mlflow.user = TOKEN``, shown in the UI's Models tab to anyone who can read
    the experiment. Expected: the token in no tag of what registration records."""
    import mlflow

    from hsnet import checkpoint, registry

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    host = use_mlflow_server.split("://", 1)[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{SECRET}:x-oauth-basic@{host}")
    logged = registry.log_model(checkpoint.load(trained["checkpoint"]), run_name="att26d-token", params={"a": 1},
                                tags={"step": "register"})
    client = mlflow.MlflowClient(tracking_uri=use_mlflow_server)
    run = client.get_run(logged["run_id"])
    _never_shows(repr((run.info.user_id, run.data.tags, run.data.params)))  # holds today
    model = client.get_logged_model(logged["model_uri"].split("/")[-1])
    _never_shows(repr(model.tags))


@pytest.mark.slow  # real trainings / a server start: tens of seconds on a loaded machine
def test_every_allowed_host_entry_is_accepted_at_any_port(tmp_path):
    """mlflow/server.sh: MLFLOW_ALLOWED_HOSTS "Host names to accept besides localhost (each at any
    port)". The script adds ``NAME:*`` only to an entry with neither ':' nor '*': an IPv6 literal
    (``[fd00::1]``, a pod's or node's address) and a wildcard (``*.example.org``, MLflow's own
    pattern syntax) are accepted only without a port, and every client sends one
    (``Host: [fd00::1]:5000``): 403. (A fix must escape '[' for MLflow's fnmatch, as MLflow's own
    defaults do.) Expected: each entry at any port, and nothing else (evil.example.com)."""
    import urllib.parse

    from servers import host_status, start_mlflow

    server = start_mlflow(tmp_path, str(tmp_path / "artifacts"),
                          {"MLFLOW_ALLOWED_HOSTS": "[fd00::1], *.example.org"})
    try:
        port = urllib.parse.urlsplit(server.url).port
        seen = {host: host_status(server.url, host) for host in (
            "[fd00::1]", f"[fd00::1]:{port}", "a.example.org", f"a.example.org:{port}", "evil.example.com",
            f"evil.example.com:{port}", "f:5000")}
    finally:
        server.stop()
    assert seen == {"[fd00::1]": 200, f"[fd00::1]:{port}": 200, "a.example.org": 200, f"a.example.org:{port}": 200,
                    "evil.example.com": 403, f"evil.example.com:{port}": 403, "f:5000": 403}, seen


CREDENTIALED = f"s3://AKIAEXAMPLE:{SECRET}@hsnet/checkpoints/att26d"


def _submit(capsys) -> str:
    from pipelines.submit import main

    code = main(["--host", "http://127.0.0.1:9/pipeline", "--dataset", "rafdb", "--mlflow-tracking-uri",
                 "http://mlflow.kubeflow:5000", "--checkpoint-uri", CREDENTIALED])
    out = capsys.readouterr()
    assert code != 0
    return out.out + out.err


def _fetch(capsys) -> str:
    from hsnet.data.fetch import source_version

    with pytest.raises(Exception) as err:
        source_version(CREDENTIALED)
    return str(err.value)


def _durable(capsys) -> str:
    from hsnet import durable

    with pytest.raises(Exception) as err:
        durable.run_prefix(CREDENTIALED, "run-1", None)
    return str(err.value)


@pytest.mark.parametrize("where", [_submit, _fetch, _durable], ids=["submit-checkpoint-uri", "fetch-raw-source",
                                                                     "durable-prefix"])
def test_an_s3_uri_with_credentials_is_refused_without_repeating_them(where, capsys):
    """docs/security.md: "Every URI hsnet prints goes through one rule, hsnet.tracking.mask_uri ...
    as do the errors that repeat what was typed ... an ``s3://KEY:SECRET@bucket/`` is refused: S3
    credentials come from the environment only". hsnet.s3.split_uri refuses it with the URI and
    its "bucket" ``'KEY:SECRET@hsnet'`` repeated whole: ``pipelines.submit --checkpoint-uri`` prints
    the secret, and fetch's masking (mask_text, URIs only) leaves the bucket's copy of it in the
    error of a pipeline's raw_source. Expected: the secret in no message."""
    _never_shows(where(capsys))


def test_a_failed_checkpoint_upload_does_not_log_the_endpoints_credentials(tmp_path, monkeypatch, caplog):
    """docs/security.md: errors "that repeat what was typed or what a library answered" are masked,
    "S3 failures (the endpoint and botocore's text)" named (hsnet.s3._hint masks both). The
    durable Uploader's own warning ("checkpoint upload to s3://... failed (%s: %s)") logs
    botocore's text as is, which names the endpoint URL: an AWS_ENDPOINT_URL_S3 typed with its
    MinIO user and password (``http://minio:SECRET@minio:9000``) is logged every epoch the upload
    fails, in every pod's log. Expected: masked, as _hint masks it."""
    import logging

    from hsnet import durable
    from servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://minio:{SECRET}@127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    uploader = durable.Uploader("s3://hsnet/checkpoints/att26d-endpoint", min_interval_s=0)
    with caplog.at_level(logging.WARNING, logger="hsnet.durable"):
        assert uploader(tmp_path, improved=False) is False  # failed, logged, training goes on
    assert caplog.records
    _never_shows(caplog.text)
