"""Attack, session 26c (from 25f's findings, rewritten): credentials typed where a URI goes, and the
messages that repeat them.

docs/security.md: "no credentials in code, params, logs or MLflow"; hsnet.tracking.mask_uri is
"the one masking rule": a password, a token sent as the user, or a secret query value is shown as
``***`` wherever a URI is printed. Each test types a credential where a user would (a pasted URL)
and looks for it in what hsnet then prints or records.
"""

from __future__ import annotations

import base64
import os

import pytest

from hsnet.errors import HSNetError

SECRET = "s3cr3t-Tok3n"


def _never_shows(text: str) -> None:
    assert SECRET not in text, f"the credential is shown: {text}"


def test_predict_refusing_a_model_uri_hides_its_credentials(monkeypatch):
    """``hsnet predict --model gs://KEY:SECRET@bucket/model``: the error repeats --model as typed."""
    from hsnet.predict import load_classifier

    from servers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for model in (f"ftp://svc:{SECRET}@127.0.0.1:{free_port()}/model", f"bogus://{SECRET}@namenode:8020/model"):
        with pytest.raises(HSNetError) as err:
            load_classifier(model)
        _never_shows(str(err.value))
        assert "***" in str(err.value), err.value  # the URI is still named, masked


def test_serve_refusing_a_model_hides_its_credentials():
    """``hsnet serve --model``'s own check (hsnet.serve.resolve), with a pasted URL."""
    pytest.importorskip("kserve")
    from hsnet.serve import resolve

    with pytest.raises(HSNetError) as err:
        resolve(f"https://alice:{SECRET}@models.example.com/hsnet.pt")
    _never_shows(str(err.value))


def test_a_registry_lookup_failure_hides_the_servers_token(monkeypatch):
    """resolve() with MLFLOW_TRACKING_URI holding ``?token=``: MLflow's failure names the URL it called."""
    pytest.importorskip("kserve")
    from servers import answering, serve_http

    from hsnet.serve import resolve

    server = serve_http(answering(500, {"Content-Type": "text/plain"}, b"upstream failed"))
    try:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}/?token={SECRET}")
        with pytest.raises(HSNetError) as err:
            resolve("models:/hsnet-sample@production")
        _never_shows(str(err.value))
    finally:
        server.shutdown()
        server.server_close()


def test_submit_to_a_host_with_credentials_never_prints_them(capsys):
    """``python -m pipelines.submit --host https://user:PASSWORD@kubeflow/pipeline``: the refusal and
    the success line both repeat --host."""
    from servers import free_port

    from pipelines.submit import main

    port = free_port()
    rc = main(["--host", f"http://admin:{SECRET}@127.0.0.1:{port}/pipeline", "--dataset", "sample"])
    err = capsys.readouterr().err
    assert rc == 2 and "127.0.0.1" in err, err
    _never_shows(err)


def test_s3_errors_hide_credentials_in_the_endpoint_and_the_error(monkeypatch):
    """hsnet.s3._hint (restore, the source-version step): the endpoint is shown whole, and botocore's
    text (a presigned URL, an endpoint with a user) as it came."""
    from hsnet.s3 import _hint

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://minio:{SECRET}@minio.minio:9000")
    exc = RuntimeError(f"Could not connect to the endpoint URL: "
                       f"\"https://b.s3.amazonaws.com/k?X-Amz-Signature={SECRET}&X-Amz-Expires=60\"")
    message = str(_hint("s3://b/k", exc))
    _never_shows(message)
    assert "minio.minio:9000" in message and "s3://b/k" in message


def _reference():
    from facenet_pytorch import InceptionResnetV1

    from hsnet.model.ktl import stem_of

    return stem_of(InceptionResnetV1(pretrained=None))


def test_stem_weights_from_a_url_are_refused_without_showing_it():
    """params ``model.stem_weights: https://user:PASSWORD@host/stem.pt`` (a pasted download link):
    read as a local path, and the 'file does not exist' error prints it, password included."""
    from hsnet.model.ktl import StemWeightsError, read_stem_state_dict

    reference = _reference()
    for source in (f"https://user:{SECRET}@weights.example.com/stem.pt", f"gs://{SECRET}@bucket/stem.pt"):
        with pytest.raises(StemWeightsError) as err:
            read_stem_state_dict(source, reference)
        _never_shows(str(err.value))
        assert "s3://" in str(err.value), err.value  # says what it does read


def test_stem_weights_s3_failure_hides_credentials(s3_server, monkeypatch):
    from servers import s3_env

    from hsnet.model.ktl import StemWeightsError, read_stem_state_dict

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StemWeightsError) as err:
        read_stem_state_dict(f"s3://AKIAEXAMPLE:{SECRET}@hsnet/stem.pt", _reference())
    _never_shows(str(err.value))


@pytest.mark.parametrize("userinfo, header", [
    (SECRET, f"Bearer {SECRET}"),
    (f"{SECRET}:", f"Bearer {SECRET}"),
    (f"{SECRET}:x-oauth-basic", "Basic " + base64.b64encode(f"{SECRET}:x-oauth-basic".encode()).decode()),
])
def test_a_token_sent_as_the_user_authenticates_and_is_not_recorded_as_the_user(userinfo, header, monkeypatch,
                                                                               mlflow_server):
    """``MLFLOW_TRACKING_URI=https://TOKEN@host`` (mask_uri: "a user part alone ... a token sent as
    the user"): _move_credentials puts TOKEN in MLFLOW_TRACKING_USERNAME with no password, so MLflow
    sends no credentials at all (it sends basic auth only with both), and records TOKEN as every run's
    ``mlflow.user`` (MLflow's default user is MLFLOW_TRACKING_USERNAME): the token in MLflow, shown to
    everyone who can read the experiment. Expected: the token sent (Bearer, or basic with the
    placeholder password as typed), and the run's user not the token."""
    import mlflow

    from servers import answering, serve_http

    from hsnet import tracking

    seen: list = []

    class Recording(answering(200, {"Content-Type": "application/json"}, b'{"experiments": []}', seen=seen)):
        def do_POST(self):  # MLflow 3 searches by POST
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    fake = serve_http(Recording)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{userinfo}@127.0.0.1:{fake.server_port}")
        tracking.connect(create=False)
        mlflow.MlflowClient().search_experiments()
    finally:
        fake.shutdown()
        fake.server_close()
    assert seen and seen[-1] == header, seen

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    host = mlflow_server.url.split("://", 1)[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{userinfo}@{host}")
    with tracking.run("att26c-user", params={"a": 1}, tags={}, computes=False) as active:
        run_id = active.info.run_id
    run = mlflow.MlflowClient(tracking_uri=mlflow_server.url).get_run(run_id)
    _never_shows(repr((run.info.user_id, run.data.tags, run.data.params)))
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.url


def test_a_training_terminated_before_its_first_epoch_does_not_point_at_a_checkpoint(tmp_path, monkeypatch,
                                                                                    capsys):
    """(25e's wording) ``hsnet train`` stopped by SIGTERM or Ctrl-C says "RUN/last.pt holds the last
    finished epoch: add --resume" also when no epoch finished and there is no last.pt: the user
    looks for a file that isn't there. Expected: the hint only where the file is; else that the
    next run starts from the beginning."""
    import hsnet.train
    from hsnet import cli, interrupt

    def terminated(*args, **kwargs):
        raise interrupt.Terminated

    monkeypatch.setattr(hsnet.train, "train", terminated)
    (tmp_path / "params.yaml").write_text("datasets:\n  sample: {}\n")
    argv = ["train", "--dataset", "sample", "--data", str(tmp_path / "crops"), "--out", str(tmp_path / "run"),
            "--params", str(tmp_path / "params.yaml"), "--no-mlflow"]
    assert cli.main(argv) == 143
    err = capsys.readouterr().err
    assert "holds the last finished epoch" not in err and "from the beginning" in err, err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"a checkpoint")
    assert cli.main(argv) == 143
    assert "last.pt holds the last finished epoch" in capsys.readouterr().err
