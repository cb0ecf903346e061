"""What only Kubeflow needs between its parameters and the hsnet steps.

Component bodies run in the project's image, where ``components`` is installed beside ``hsnet``
(pyproject's package list), so they import these helpers at run time.
"""

from __future__ import annotations

import os

# The pipeline run's id, from the train pod's label (pipelines/hsnet_pipeline.py sets it with the
# Downward API): the key of its durable checkpoints, and tagged on the MLflow training run. Not a
# component input: inputs are part of Kubeflow's cache key, and a run id there would make every run
# retrain.
from hsnet.tracking import PIPELINE_RUN_ENV as RUN_ID_ENV


def run_id() -> str:
    """This pipeline run's id ("" outside a Kubeflow cluster)."""
    return os.environ.get(RUN_ID_ENV, "")


def checkpoint_interval(seconds: float) -> float | None:
    """A step's ``checkpoint_every_s`` as hsnet takes it: a parameter can't be None, so a negative
    one means hsnet's default (None, hsnet.durable.INTERVAL_S)."""
    return None if seconds < 0 else seconds


def restore_ints(value):
    """Kubeflow's parameter transport (protobuf Struct) turns every int into a float: 500 -> 500.0."""
    if isinstance(value, dict):
        return {k: restore_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_ints(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def params_for(params: dict, dataset: str, overrides: dict | None = None, overrides_name: str = "model_overrides"):
    """The typed, checked settings of ``dataset`` from the pipeline's ``params`` parameter (a whole
    params.yaml as a mapping), with ``overrides`` (named ``overrides_name`` in errors: the
    parameter they came from)."""
    from hsnet.params import Params

    return Params.from_mapping(restore_ints(params), dataset, restore_ints(overrides or {}),
                               source="the pipeline's params", overrides_name=overrides_name)


def start_step(mlflow_tracking_uri: str = "") -> None:
    """Logging as the hsnet CLI has it, SIGTERM (a preempted or deleted pod) as the CLI takes it
    (hsnet.interrupt: the step ends through its ``finally`` blocks, no temporary file left, its
    MLflow run ended as killed, not left running), and the MLflow server the step records to."""
    from hsnet import interrupt, logs

    logs.setup()
    interrupt.install()
    if mlflow_tracking_uri.strip():  # blank: the pod's own MLFLOW_TRACKING_URI (source-version checked one is set)
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri.strip()


def group_settings(params: dict, dataset: str, runs: list) -> dict:
    """The ablation's ``runs`` items ({"model": {...}, "seed": N}; seed -1 or absent: params')
    as typed settings, by experiment name (as ``hsnet reproduce`` names them)."""
    from hsnet.errors import HSNetError
    from hsnet.paper import SWITCHES
    from hsnet.reproduce import exp_name

    settings = {}
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or set(run) - {"model", "seed", "stem_version"}:  # (run_items' version)
            raise HSNetError(f"runs item {run!r}: expected {{'model': {{'dib': ..., 'fgal': ..., 'ktl': ...}}, "
                             "'seed': N}")
        p = params_for(params, dataset, _run_overrides(run), f"runs[{i}]")
        name = exp_name(dataset, tuple(getattr(p.model, k) for k in SWITCHES), p.train.seed)
        if name in settings:
            raise HSNetError(f"runs: {name} is given twice (a seed of -1 or none is params' train.seed, "
                             f"{p.train.seed}): one training per configuration and seed; give the repeat "
                             "another seed")
        settings[name] = p
    return settings


def _run_overrides(run: dict) -> dict:
    """A ``runs`` item's overrides of params: its model switches, and its seed unless -1 or none
    (params' seed; the schema checks and converts a given one: "1" and 1.0 are 1)."""
    overrides = {"model": run.get("model") or {}}
    if restore_ints(run.get("seed", -1)) not in (-1, "-1"):
        overrides["train"] = {"seed": run["seed"]}
    return overrides


def check_stem_weights(params: dict, dataset: str, runs: list | None = None) -> None:
    """Every training of ``runs`` (model overrides, as the ablation's ``runs`` items) with KTL on
    must name its VGGFace2 stem weights as a file or s3:// URI: a cluster without internet access
    can't download them, and a run that finds out in its train step has already spent the data
    steps (the ablation: 24 trainings). Raises HSNetError naming the runs; nothing to do without KTL."""
    from hsnet.errors import HSNetError
    from hsnet.params import VGGFACE2

    bad = []
    for i, run in enumerate(runs or [{}]):
        settings = params_for(params, dataset, {"model": (run or {}).get("model") or {}})
        if settings.model.ktl and settings.model.stem_weights == VGGFACE2:
            bad.append(f"run {i} ({', '.join(f'{k}={v}' for k, v in ((run or {}).get('model') or {}).items()) or 'params'})")
    if bad:
        raise HSNetError(f"{dataset}: KTL is on but model.stem_weights is {VGGFACE2!r} (a download) in "
                         f"{len(bad)} run(s): {'; '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}. Upload the "
                         "VGGFace2 InceptionResnetV1 weights and set datasets."
                         f"{dataset}.model.stem_weights to their s3:// URI in params")


CROP_DEVICES = ("cpu", "cuda")  # the hsnet pipeline's crop_device: cuda gives crop a GPU, cpu none
SOURCE_PARAMETERS = ("raw_source", "dvc_path", "dvc_rev")  # the pipelines' names of fetch's source


# the database stores MLflow takes as a tracking URI (SQLAlchemy's dialects, "+driver" allowed)
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _reachable_store(uri: str) -> bool:
    """Whether every step can record to ``uri``, wherever it runs: a tracking server's URL
    (hsnet.tracking.is_server) with a host and no fragment or query (MLflow appends its API's path
    to the URI: the MLflow UI's address, ``http://HOST:5000/#/experiments/0``, or ``...?token=...``
    would send every call to a page; a token goes in MLFLOW_TRACKING_TOKEN or the URL's user
    info); a database with a host, or an SQLite file, a ``file:`` store or a path given absolutely
    (a volume every step mounts; kfp.local's steps share the machine's); Databricks. Not a host
    and port without a scheme (MLflow refuses it at its first call, in train) nor a relative path
    (inside each pod, deleted with it)."""
    import urllib.parse

    from hsnet.tracking import is_server

    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text == "databricks" or text.startswith("/")
    scheme = scheme.lower().split("+", 1)[0]
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that isn't a number
    except ValueError:  # a port that isn't a number, an unclosed [IPv6]
        return False
    if is_server(text):
        return bool(parts.hostname) and not any(c in text for c in "#?")
    if scheme == "sqlite":
        return rest.startswith("//")  # sqlite:////abs/mlflow.db (sqlite:///mlflow.db is relative)
    if scheme == "file":
        return rest.startswith("/")  # file:///abs/mlruns
    if scheme in DATABASE_SCHEMES:
        return bool(parts.hostname)
    return scheme == "databricks"


def check_run(dataset: str, *, crop_device: str | None = None, mlflow_tracking_uri: str | None = None,
              checkpoint_uri: str | None = None, promote: bool = False, deploy: bool = False,
              canary_percent: int | None = None, raw_source: str | None = None, dvc_path: str = "",
              dvc_rev: str = "", names: dict[str, str] | None = None) -> None:
    """The pipeline parameters typed in the Kubeflow UI that no later step could work with, refused
    by the first step, before any data is fetched (a run started from the UI gets no check of
    pipelines.submit's): an empty or unknown dataset, an empty source or a revision without a DVC
    path (hsnet.data.fetch.check_source), a crop device other than :data:`CROP_DEVICES`, no MLflow
    server (each pod would record into a store deleted with it) or a URI not every step can reach
    (:func:`_reachable_store`), a checkpoint prefix that isn't s3:// or names no valid bucket,
    ``deploy`` without ``promote``, a canary share outside 0..100. None: not a parameter of this
    pipeline. ``names``: a parameter's name as the caller's user typed it, where not the pipeline's
    (pipelines.submit's options)."""
    from hsnet.data.datasets import get_spec
    from hsnet.data.fetch import check_source
    from hsnet.deploy import check_canary
    from hsnet.errors import HSNetError
    from hsnet.s3 import S3Error, split_uri
    from hsnet.tracking import SERVER_SCHEMES, mask_uri

    def n(parameter: str) -> str:
        return (names or {}).get(parameter, parameter)

    problems = []
    if not dataset.strip():
        problems.append(f"{n('dataset')} is empty: name the params entry to run (datasets.<name>)")
    else:
        try:
            get_spec(dataset)
        except HSNetError as exc:
            problems.append(f"{n('dataset')}: {exc} (a params entry needs one of these names: import reads its layout)")
    if raw_source is not None:
        try:
            check_source(raw_source, dvc_path, dvc_rev, names=tuple(n(p) for p in SOURCE_PARAMETERS), folders=False)
        except HSNetError as exc:
            problems.append(str(exc))
    if crop_device is not None and crop_device not in CROP_DEVICES:
        problems.append(f"{n('crop_device')} {crop_device!r}: give {' or '.join(CROP_DEVICES)}")
    if mlflow_tracking_uri is not None and not mlflow_tracking_uri.strip() and not os.environ.get("MLFLOW_TRACKING_URI"):
        problems.append(f"{n('mlflow_tracking_uri')} is empty: each step would record into a store inside its own pod, "
                        "deleted with it (train's and evaluate's runs lost, register finding no evaluation); give "
                        "the tracking server's URL")
    elif mlflow_tracking_uri and mlflow_tracking_uri.strip() and not _reachable_store(mlflow_tracking_uri):
        problems.append(f"{n('mlflow_tracking_uri')} {mask_uri(mlflow_tracking_uri.strip())!r} is not a tracking "
                        "store every step can reach: give the tracking server's "
                        f"{' or '.join(s + '://HOST[:PORT][/PATH]' for s in SERVER_SCHEMES)} without '?' or '#' "
                        "(MLflow appends its API's path; a token goes in MLFLOW_TRACKING_TOKEN), as the pipeline's "
                        "default is, a database's URI, or an absolute path on a volume every step mounts")
    if checkpoint_uri:
        try:
            split_uri(checkpoint_uri)
        except S3Error as exc:
            problems.append(f"{n('checkpoint_uri')}: {exc} (an s3:// prefix, or empty to keep checkpoints in the pod)")
    if deploy and not promote:
        problems.append("deploy is on and promote off: deploy rolls out what promote moves to production; turn "
                        "promote on too, or deploy off")
    if deploy:
        try:
            check_canary(canary_percent)
        except HSNetError as exc:
            problems.append(str(exc))
    if problems:
        raise HSNetError("this run's parameters can't work; nothing was fetched: " + "; ".join(problems))


def stem_versions(params: dict, dataset: str, runs: list | None = None) -> list[str]:
    """Per training of ``runs`` (or params' one), the content version of the VGGFace2 stem weights
    it reads: the object's ETag and size (s3://) or the file's sha256; "" with KTL off (no stem
    weights read). A train step's input, so new weights uploaded to the same URI train the KTL runs
    again instead of the cache serving trainings made with the old ones (Kubeflow keys a task on
    its parameter values), and the others not."""
    from hsnet.io import sha256_file
    from hsnet.s3 import _hint, client, errors, split_uri

    known: dict[str, str] = {}

    def version(source: str) -> str:
        if source.startswith("s3://"):
            bucket, key = split_uri(source)
            try:
                head = client().head_object(Bucket=bucket, Key=key)
            except errors() as exc:
                raise _hint(source, exc) from exc
            return f"{source} {head['ETag']} {head['ContentLength']}"
        if os.path.isfile(source):
            return f"{source} sha256:{sha256_file(source)}"
        return source  # facenet-pytorch's published file (VGGFACE2), or a path train will refuse by name

    out = []
    for run in runs or [{}]:
        settings = params_for(params, dataset, {"model": (run or {}).get("model") or {}})
        source = str(settings.model.stem_weights)
        if settings.model.ktl and source not in known:
            known[source] = version(source)
        out.append(known[source] if settings.model.ktl else "")
    return out


def stem_version(params: dict, dataset: str, runs: list | None = None) -> str:
    """:func:`stem_versions` of every training of ``runs`` (or params'), together."""
    return "; ".join(sorted({v for v in stem_versions(params, dataset, runs) if v}))


def check_stem_version(params: dict, dataset: str, model_overrides: dict, expected: str) -> None:
    """Refuse a training whose stem weights are no longer the ones source-version read
    (``expected``, this task's ``stem_version``: its cache key): a training with weights uploaded
    meanwhile would be cached under the old weights' key and served to a later run that has them.
    "" (no version given: KTL off, or a caller outside the pipelines) checks nothing."""
    from hsnet.errors import HSNetError

    if not expected:
        return
    now = stem_version(params, dataset, [{"model": model_overrides or {}}])
    if now != expected:
        raise HSNetError(f"the KTL stem weights changed since this run started: source-version read "
                         f"{expected!r}, they are now {now or 'not read (KTL off)'!r}. Start a new run, "
                         "so that its trainings are keyed on the weights they read")


def run_items(params: dict, dataset: str, runs: list) -> list[dict]:
    """The ablation's ``runs`` as its loops take them: each item with its ``seed`` as the schema
    read it (an integer; -1: params') and ``stem_version`` (:func:`stem_versions`: its own, "" with
    KTL off)."""
    items = []
    for run, version in zip(runs, stem_versions(params, dataset, runs)):
        overrides = _run_overrides(run or {})
        seed = params_for(params, dataset, overrides).train.seed if "train" in overrides else -1
        items.append({"model": overrides["model"], "seed": seed, "stem_version": version})
    return items


def write_metrics_file(*artifacts) -> None:
    """Metrics/ClassificationMetrics artifacts keep their figures in metadata and write no file;
    put them in the artifact's file too (JSON), so every output exists as a file: kfp.local's
    cache treats an output without a file as missing and runs the step again, and a download of
    the artifact from the store then holds the figures."""
    import json
    from pathlib import Path

    for artifact in artifacts:
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(json.dumps(dict(artifact.metadata), indent=2, sort_keys=True, default=str))
