"""Attack 24c: the Kubeflow UI's run form, filled in by a careless user.

A run started from the UI ("upload pipelines/hsnet_pipeline.yaml in the Kubeflow UI and start a run
per dataset", README "Kubeflow Pipelines") gets no check of pipelines.submit's: its first step,
``source-version``, is the only place that can refuse a value before fetch copies the raw data
(hours for FERG-DB), crop cuts it and train takes a GPU. README: "A run started from the UI gets the
same checks in its first step, `source-version`, before anything is fetched"; submit.load_params: "a
typo fails here, not in a pod an hour later"; components.convert.check_run: "The pipeline parameters
typed in the Kubeflow UI that no later step could work with, refused by the first step, before any
data is fetched".

Every test calls the real first step (``source_version.python_func``, the body the pod runs) with
the parameters its pipeline hands it (pipelines/hsnet_pipeline.py, pipelines/ablation_pipeline.py:
prepare_crops), one of them typed carelessly; where it is quick, it first shows, with the real code
of the later step that reads the value, that that step cannot work with it. Each fails on the current code
because the first step accepts the value, and passes once it refuses it, naming the parameter.
"""

from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest

from hsnet.errors import HSNetError


@pytest.fixture
def step(tmp_path, monkeypatch):
    """The first step as its pod runs it: a raw folder to list, no MLFLOW_TRACKING_URI of the pod's
    own (the hsnet-mlflow secret has none), and the signal handlers start_step installs put back."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "hsnet-cache"))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(b"not looked at by this step")
    yield raw
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _params() -> dict:
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS  # what the UI's params field holds by default

    return copy.deepcopy(DEFAULT_PARAMS)


def _hsnet_run(raw: Path, **typed):
    """source-version with what hsnet_pipeline passes it (prepare_crops: check_run, crop_device and
    run={mlflow_tracking_uri, checkpoint_uri, promote, deploy, canary_percent}), defaults as the UI
    shows them except where ``typed``."""
    from components.fetch import source_version

    given = dict(source=str(raw), dvc_path="", dvc_rev="", params=_params(), dataset="sample", check_run=True,
                 crop_device="cpu", mlflow_tracking_uri="http://mlflow.kubeflow.svc.cluster.local:5000",
                 checkpoint_uri="s3://hsnet-data/checkpoints", promote=False, deploy=False, canary_percent=10)
    given.update(typed)
    return source_version.python_func(**given)


def _ablation_run(raw: Path, **typed):
    """source-version with what ablation_pipeline passes it (runs, require_stem_uri, check_run,
    crop_device "cpu", mlflow_tracking_uri, checkpoint_uri)."""
    from components.fetch import source_version

    given = dict(source=str(raw), dvc_path="", dvc_rev="", params=_params(), dataset="sample",
                 runs=[{"model": {"dib": True, "fgal": True, "ktl": False}, "seed": 0}], require_stem_uri=True,
                 check_run=True, crop_device="cpu", mlflow_tracking_uri="http://mlflow.kubeflow.svc.cluster.local:5000",
                 checkpoint_uri="s3://hsnet-data/checkpoints")
    given.update(typed)
    return source_version.python_func(**given)


# --- raw_source --------------------------------------------------------------------------------------

def test_an_empty_raw_source_is_refused_not_taken_for_the_pods_working_folder(step, tmp_path, monkeypatch):
    """README: "Parameters: ... `raw_source` (an `s3://` prefix, or a DVC repository URL with
    `dvc_path` and `dvc_rev`)". A user who clears the field (its default is s3://hsnet-data/raw/sample)
    gets no refusal: hsnet.data.fetch.source_version("") takes Path("") for the current folder, so
    the first step hashes whatever the pod's working folder holds (the image's /home/hsnet), and
    fetch then copies that folder into the raw Dataset artifact, where import fails on it. Expected:
    an empty raw_source is refused by the first step, naming raw_source."""
    pod_home = tmp_path / "pod-home"
    pod_home.mkdir()
    (pod_home / ".netrc").write_text("machine example.com login me password hunter2\n")
    monkeypatch.chdir(pod_home)
    with pytest.raises(HSNetError, match="raw_source"):
        out = _hsnet_run(step, source="")
        pytest.fail(f"raw_source '' was taken for the pod's working folder {pod_home} (version {out.version})")


def test_dvc_rev_without_dvc_path_is_refused_not_silently_ignored(step):
    """README: "`raw_source` (an `s3://` prefix, or a DVC repository URL with `dvc_path` and
    `dvc_rev`)". A revision typed while `dvc_path` is left empty is never read: fetch and
    source_version use ``rev`` only with a dvc_path (hsnet.data.fetch), and the Dataset artifact's
    metadata records no revision then, so the run trains on whatever is at the prefix now while the
    user believes it pinned `dvc_rev`. Expected: the first step refuses a dvc_rev it will not use,
    naming dvc_rev (or dvc_path)."""
    with pytest.raises(HSNetError, match="dvc_rev|dvc_path"):
        _hsnet_run(step, dvc_rev="v1.0")


# --- dataset --------------------------------------------------------------------------------------

def test_a_dataset_hsnet_cannot_import_is_refused_by_the_first_step(step):
    """A user who adds a params entry under a name of their own ("rafdb-v2", a copy of rafdb's entry
    with other settings) and types it as `dataset`: the first step checks that params has the entry
    and accepts it, fetch copies the data, and import then refuses the name
    (hsnet.data.datasets.get_spec: "unknown dataset"; train: "unknown dataset: fails here").
    Expected: refused by the first step, which reads `dataset` first, naming the dataset."""
    from hsnet.data.datasets import get_spec

    with pytest.raises(HSNetError, match="unknown dataset"):
        get_spec("rafdb-v2")  # what import does with the name, after fetch
    params = _params()
    params["datasets"]["rafdb-v2"] = copy.deepcopy(params["datasets"]["rafdb"])
    with pytest.raises(HSNetError, match="rafdb-v2"):
        _hsnet_run(step, params=params, dataset="rafdb-v2")


# --- params -----------------------------------------------------------------------------------------

def test_an_input_size_hsnet_cannot_train_on_is_refused_by_the_first_step(step):
    """hsnet.params: "input_size ... # train checks HSNet's minimum"; README "The model": "images:
    (N, 3, H, W), H, W >= 75". The first step checks `params` for the dataset ("a wrong key or value
    stops the run here") but accepts input_size 64; fetch, import, validate and crop then run (crop
    cuts every image to 64 px) and train refuses it in its GPU pod (hsnet.train._train: "smaller than
    HSNet's minimum"), retried three times as train is (RETRIES). Expected: refused by the first step,
    naming input_size."""
    from hsnet.model import MIN_INPUT_SIZE

    assert 64 < MIN_INPUT_SIZE  # no training can take it
    params = _params()
    params["datasets"]["sample"]["input_size"] = 64
    with pytest.raises(HSNetError, match="input_size"):
        _hsnet_run(step, params=params)


# --- mlflow_tracking_uri, checkpoint_uri ------------------------------------------------------------

@pytest.mark.parametrize("uri", ["mlflow.kubeflow.svc.cluster.local:5000", "htp://mlflow:5000"])
def test_an_mlflow_uri_no_mlflow_store_accepts_is_refused_by_the_first_step(step, uri, tmp_path, monkeypatch):
    """README: the first step checks "a non-empty `mlflow_tracking_uri`". The Service's address typed
    without http:// (or with a typo in the scheme) is non-empty and passes; hsnet.tracking.connect
    accepts it too (check_reachable looks at http(s) URIs only), and MLflow refuses it at its first
    call, in train's GPU pod after the data steps ("unsupported URI ... Supported URI schemes are
    ..."). Expected: refused by the first step, naming mlflow_tracking_uri."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="(?i)unsupported|scheme"):  # what train's MLflow does with it
        mlflow.MlflowClient(uri).search_registered_models()
    with pytest.raises(HSNetError, match="mlflow_tracking_uri"):
        _hsnet_run(step, mlflow_tracking_uri=uri)


@pytest.mark.parametrize("uri", ["s3://minio-service.kubeflow:9000/hsnet-data/checkpoints",
                                 "s3://hsnet-data /checkpoints"])
def test_a_checkpoint_uri_whose_bucket_s3_refuses_is_refused_by_the_first_step(step, uri, monkeypatch):
    """README: the first step checks "an `s3://` `checkpoint_uri` or `""`". MinIO's endpoint typed
    into the URI (or a stray blank) makes a bucket name no S3 client sends: boto3 refuses it before
    any request ("Invalid bucket name"). The first step only checks the s3:// prefix and that a
    bucket is named; train then fails on it in its GPU pod, looking for checkpoints to resume from,
    after fetch, import, validate and crop, and is retried three times. Expected: refused by the
    first step, naming checkpoint_uri."""
    from botocore.exceptions import ParamValidationError

    from hsnet.s3 import client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # never reached: refused client-side
    bucket, _, prefix = uri[len("s3://"):].partition("/")  # as any reader of an s3:// URI splits it
    with pytest.raises(ParamValidationError, match="Invalid bucket name"):
        client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    with pytest.raises(HSNetError, match="checkpoint_uri"):
        _hsnet_run(step, checkpoint_uri=uri)


# --- the ablation's runs ------------------------------------------------------------------------------

def test_an_ablation_with_no_runs_is_refused_by_the_first_step(step, tmp_path):
    """ablation_pipeline: "``runs``: one item per training". An empty list (the field cleared to
    []) passes the first step (its runs checks loop over nothing); fetch, import, validate and crop
    run, no training does, and the report step writes a Table 6 whose every row is "missing": a run
    that succeeds having measured nothing. Expected: the first step refuses an empty `runs`, naming
    runs."""
    from kfp.dsl import Markdown

    from pipelines.ablation_pipeline import ablation_report

    table = Markdown(uri="unused")
    table.path = str(tmp_path / "table.md")
    ablation_report.python_func(dataset="sample", evaluations=[], table=table)  # what the run ends with
    assert "no finished run" in Path(table.path).read_text()
    with pytest.raises(HSNetError, match="runs"):
        _ablation_run(step, runs=[])


@pytest.mark.parametrize("weights", ["VGGFace2", "vggface2 ", ""])
def test_the_ablations_stem_weights_check_is_not_passed_by_another_spelling(step, weights):
    """README: "The ablation pipeline fails in its first step when a run has KTL on and
    `model.stem_weights` is still `vggface2` (a download a cluster without internet access can't
    make)"; components.convert.check_stem_weights: every KTL run "must name its VGGFace2 stem weights
    as a file or s3:// URI". The check compares with "vggface2" exactly: the paper's spelling
    "VGGFace2", a trailing blank, or an emptied field pass it, and each KTL training then fails in its
    GPU pod (hsnet.model.ktl: "stem weights file ... does not exist", Path("") being the folder ".")
    after the data steps. Expected: refused by the first step, naming stem_weights."""
    from hsnet.model.ktl import StemWeightsError, load_stem

    with pytest.raises(StemWeightsError):
        load_stem(None, weights)  # what each KTL training does with it (before touching the stem)
    params = _params()
    params["datasets"]["sample"]["model"] = {"ktl": True, "stem_weights": weights}
    with pytest.raises(HSNetError, match="stem_weights"):
        _ablation_run(step, params=params, runs=[{"model": {"dib": True, "fgal": True, "ktl": True}, "seed": 0}])


def test_a_seed_typed_as_text_reaches_the_train_step_as_an_integer(step):
    """ablation_pipeline: "``runs``: one item per training, {"model": {...}, "seed": N}"; the loop
    hands each item's ``seed`` from source-version's run_items to train_model's ``seed: int``.
    A seed typed in quotes ("1") passes the first step, whose schema reads "1" as 1
    (hsnet.params), but run_items passes the text on as it was typed, and train_model compares it
    with 0 (``seed >= 0``): TypeError in each GPU pod, after the data steps. Expected: a seed the
    first step accepts reaches the loop as the integer it accepted (or is refused there)."""
    runs = [{"model": {"dib": True, "fgal": True, "ktl": False}, "seed": "1"}]
    try:
        out = _ablation_run(step, runs=runs)
    except HSNetError as refused:
        assert "seed" in str(refused)
        return
    seed = out.run_items[0]["seed"]
    assert isinstance(seed, int) and not isinstance(seed, bool) and seed == 1, (
        f"run_items hands train_model seed={seed!r}; its `seed >= 0` fails on text")


# --- the same rules where the CLI reads them (session 24's fixes have one home each) ---------------

@pytest.mark.parametrize("argv, named", [(["--source", ""], "--source is empty"),
                                          (["--source", "s3://b/raw", "--rev", "v1"], "--rev 'v1' without --dvc-path"),
                                          (["--source", "s3://minio:9000/b/raw"], "AWS_ENDPOINT_URL_S3")])
def test_hsnet_data_fetch_refuses_a_source_it_would_take_otherwise(argv, named, tmp_path, monkeypatch):
    """hsnet.data.fetch.check_source and hsnet.s3.split_uri: `hsnet data fetch` refuses an empty
    source (the current folder would be copied), a revision without a DVC path (it would be
    ignored), and an endpoint typed as a bucket, before anything is written: --out stays absent."""
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([str(Path(sys.executable).with_name("hsnet")), "data", "fetch", *argv, "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and named in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_a_params_file_with_a_small_input_size_is_refused_naming_the_minimum(tmp_path):
    """hsnet.params: input_size is at least HSNet's smallest input, 75 (Table 1's arithmetic:
    224 -> 26 -> 12 -> 5 after the stem and SDIB-A; 75 gives SDIB-A 3x3 features, 74 gives 2x2),
    refused where any step reads params, not only by train."""
    from hsnet.params import ParamsError, Params
    from hsnet.sizes import output_size

    assert output_size(75)["sdib_a"] == 3 and output_size(74)["sdib_a"] == 2  # by hand: 75 -> 37, 35, 35, 17, 15, 7 -> 3
    assert Params.from_mapping({"datasets": {"s": {"input_size": 75}}}, "s").input_size == 75
    with pytest.raises(ParamsError, match=r"input_size: 74 is out of range; it must be >= 75"):
        Params.from_mapping({"datasets": {"s": {"input_size": 74}}}, "s")
