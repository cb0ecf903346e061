"""Session 24d attack: the input checks of commit 0b3308b (the first step of a Kubeflow run,
``pipelines.submit``, the params schema, ``hsnet.s3.split_uri``), from both sides: values that
still get through the first step and fail an hour later, and refusals that name what the user
didn't type or give advice that can't work. Nothing is mocked: each test calls the check itself."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("uri", [
    "http://",  # the host cleared in the UI form
    "http:///mlflow",  # no host, a path only
    "http://:5000",  # a port without a host
    # the MLflow UI's address copied from the browser: MLflow appends /api/2.0/... after the "#",
    # which requests drops, so every call goes to the UI page; hsnet's /health check passes (GET / is 200)
    "http://mlflow.kubeflow.svc.cluster.local:5000/#/experiments/0",
])
def test_first_step_refuses_a_tracking_uri_that_names_no_server(uri):
    """README "Kubeflow Pipelines": the first step, before anything is fetched, checks "a non-empty
    `mlflow_tracking_uri` that is a server's `http(s)://` URL"; check_run's own refusal asks for
    http(s)://HOST[:PORT]. These values have no HOST (or put MLflow's REST paths into a URL
    fragment) and pass today, so the run fetches, imports, validates and crops, and fails in train."""
    from components.convert import check_run
    from hsnet.errors import HSNetError

    with pytest.raises(HSNetError, match="mlflow_tracking_uri"):
        check_run("sample", mlflow_tracking_uri=uri)


def _submit(capsys, *extra: str) -> str:
    from pipelines.submit import main

    rc = main(["--host", "http://127.0.0.1:9", "--dataset", "sample", "--params", str(ROOT / "params.yaml"), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err  # refused before any submission (the host is never contacted)
    return err


def test_submit_names_its_own_options_in_a_source_refusal(capsys):
    """hsnet.data.fetch.check_source: ``names`` are "the source, path and revision as the caller's
    user typed them". A ``python -m pipelines.submit`` user typed --dvc-rev and --raw-source; today
    submit's refusal tells them to "give dvc_path ... or leave dvc_rev empty" and that
    "raw_source is empty", names of the UI form that its command line doesn't have."""
    err = _submit(capsys, "--raw-source", "s3://hsnet-data/raw/sample", "--dvc-rev", "v1")
    assert "--dvc-path" in err and "--dvc-rev" in err, err
    err = _submit(capsys, "--raw-source", "")
    assert "--raw-source" in err, err


def test_pipeline_empty_raw_source_advice_is_what_a_pod_can_read():
    """README "Kubeflow Pipelines": `raw_source` is "an `s3://` prefix, or a DVC repository URL with
    `dvc_path` and `dvc_rev`" (the steps run in pods: a folder of the user's machine is not there).
    The first step's refusal of an empty raw_source advises "a folder", which such a run can't read
    (source-version then fails with "not a folder here")."""
    from components.convert import check_run
    from hsnet.errors import HSNetError

    with pytest.raises(HSNetError) as exc:
        check_run("sample", raw_source="")
    assert "folder" not in str(exc.value), str(exc.value)


def test_reproduce_takes_the_stem_weights_keyword_in_any_case():
    """Commit 0b3308b: "stem_weights keyword in any case" (hsnet.params: "VGGFace2 " is the keyword
    vggface2, so training takes `-S ...stem_weights=VGGFace2` as facenet-pytorch's download).
    ``hsnet reproduce ablation --stem-weights VGGFace2`` checks the raw string instead
    (reproduce.ktl_weights_problem): it looks for a file named "VGGFace2" and skips every KTL run
    ("stem weights file VGGFace2 does not exist"), where --stem-weights vggface2 is judged by the
    weights' presence in facenet-pytorch's cache."""
    from hsnet.reproduce import ktl_weights_problem

    assert ktl_weights_problem("VGGFace2") == ktl_weights_problem("vggface2")
    assert ktl_weights_problem(" vggface2 ") == ktl_weights_problem("vggface2")


def test_access_point_arn_is_not_told_to_move_into_the_endpoint_variable():
    """split_uri's new bucket rule explains a ':' in the bucket as "an S3-compatible store's address
    [that] goes in AWS_ENDPOINT_URL_S3". An S3 access point ARN (s3://arn:aws:s3:REGION:ACCOUNT:
    accesspoint/NAME/KEY, as the AWS CLI takes it; boto3 takes the ARN as its Bucket) is no store
    address: the advice can't work. Either take the ARN as the bucket or refuse it without that advice."""
    from hsnet.s3 import S3Error, split_uri

    uri = "s3://arn:aws:s3:us-west-2:123456789012:accesspoint/hsnet-ap/raw/rafdb"
    try:
        bucket, key = split_uri(uri)
    except S3Error as exc:
        assert "AWS_ENDPOINT_URL_S3" not in str(exc), str(exc)
    else:
        assert (bucket, key) == ("arn:aws:s3:us-west-2:123456789012:accesspoint/hsnet-ap", "raw/rafdb")


@pytest.mark.parametrize("uri, good", [("http://mlflow.kubeflow.svc.cluster.local:5000", True),
                                       ("HTTPS://mlflow.example.com/tracking/ ", True),
                                       ("http://[::1]:5000", True), ("https://user:pw@mlflow.example.com", True),
                                       ("databricks", True), ("sqlite:///mlflow.db", False),
                                       ("http://mlflow:port", False), ("sqlite:////mnt/shared/mlflow.db", True),
                                       ("postgresql+psycopg2://u:p@db.kubeflow:5432/mlflow", True),
                                       ("postgresql:///mlflow", False), ("file:///mnt/shared/mlruns", True),
                                       ("./mlruns", False), ("/mnt/shared/mlruns", True)])
def test_first_step_takes_every_server_url_and_only_those(uri, good):
    """Session 24's fix: mlflow_tracking_uri must name a store every step can reach: a server's
    http(s) URL with a host (any case of the scheme, a path prefix, an IPv6 host, credentials in
    the URL, which hsnet moves into the environment), a database with a host, an SQLite file, a
    file store or a path given absolutely (a shared volume; kfp.local's steps share the machine),
    Databricks; not a relative path (inside each pod), a database without a host, or a port that
    isn't a number. (The first version of the fix took servers only and broke kfp.local runs with
    an SQLite store: CI rehearsal 24a.)"""
    from components.convert import check_run
    from hsnet.errors import HSNetError

    if good:
        check_run("sample", mlflow_tracking_uri=uri)
    else:
        with pytest.raises(HSNetError, match="mlflow_tracking_uri"):
            check_run("sample", mlflow_tracking_uri=uri)


def test_a_bad_runs_item_is_named_as_the_ablation_names_it():
    """Attack 24d's note: a bad item of the ablation's ``runs`` was refused as "model_overrides:
    ...", a parameter the ablation pipeline doesn't have; it is named by its place in ``runs``."""
    from components.convert import group_settings
    from hsnet.errors import HSNetError
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS

    with pytest.raises(HSNetError, match=r"^runs\[1\]: model\.dib: 'x' is not true or false"):
        group_settings(DEFAULT_PARAMS, "sample", [{"model": {"dib": True}, "seed": 0}, {"model": {"dib": "x"}, "seed": 3}])


def test_submit_takes_an_empty_mlflow_uri_as_the_pipelines_default(capsys, monkeypatch):
    """pipelines.submit passes --mlflow-tracking-uri only when given a value: "" leaves the
    pipeline's default server (attack 24g). Its check must judge what is submitted, not refuse ""
    as "each step would record into a store inside its own pod". Here nothing listens at the host:
    the run gets past the checks to Kubeflow's refusal."""
    from pipelines.submit import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = main(["--host", "http://127.0.0.1:9", "--dataset", "sample", "--params", str(ROOT / "params.yaml"),
               "--mlflow-tracking-uri", ""])
    err = capsys.readouterr().err
    assert rc == 2 and "did not accept the run" in err and "is empty" not in err, err
