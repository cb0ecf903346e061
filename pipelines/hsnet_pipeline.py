"""The HSNet training pipeline for one dataset: fetch -> import -> validate -> crop -> train -> evaluate -> register.

Compile: ``python -m pipelines.compile`` (writes pipelines/hsnet_pipeline.yaml, committed, for
the Kubeflow UI's "Upload pipeline"). Submit: ``python -m pipelines.submit --host URL --dataset rafdb``.

Kubernetes settings (kfp-kubernetes): every step gets the S3 credentials from the secret
``hsnet-s3`` (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL_S3
for MinIO) and the MLflow credentials from the optional secret ``hsnet-mlflow``
(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN); the train
step asks for one NVIDIA GPU and tolerates the usual GPU node taint.
"""

from pathlib import Path

import yaml
from kfp import dsl, kubernetes

from components import crop_faces, evaluate_model, fetch_raw, import_data, register_model, train_model, validate_data

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
S3_SECRET, MLFLOW_SECRET = "hsnet-s3", "hsnet-mlflow"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "MLFLOW_S3_ENDPOINT_URL")
GPU = "nvidia.com/gpu"


def _secrets(task: dsl.PipelineTask, mlflow: bool = False) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_KEYS})
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_OPTIONAL_KEYS}, optional=True)
    if mlflow:
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_KEYS}, optional=True)
    return task


def prepare_crops(dataset, raw_source, dvc_path, dvc_rev, params, crop_device) -> dsl.PipelineTask:
    """fetch -> import -> validate -> crop (only after validation passed); returns the crop task."""
    fetch = _secrets(fetch_raw(source=raw_source, dvc_path=dvc_path, dvc_rev=dvc_rev)).set_display_name("fetch")
    imported = import_data(dataset=dataset, params=params, raw=fetch.outputs["raw"]).set_display_name("import")
    validated = validate_data(dataset=dataset, params=params, raw=fetch.outputs["raw"],
                              manifest=imported.outputs["manifest"]).set_display_name("validate")
    cropped = crop_faces(dataset=dataset, params=params, device=crop_device, raw=fetch.outputs["raw"],
                         manifest=imported.outputs["manifest"]).set_display_name("crop").after(validated)
    return cropped.set_cpu_request("2").set_memory_request("4G")


def train_and_evaluate(dataset, params, mlflow_tracking_uri, crops, model_overrides=None, seed=None):
    """train on one GPU (tolerating its taint) -> evaluate; returns both tasks."""
    extra = {} if model_overrides is None else {"model_overrides": model_overrides}
    if seed is not None:
        extra["seed"] = seed
    trained = _secrets(train_model(dataset=dataset, params=params, mlflow_tracking_uri=mlflow_tracking_uri,
                                   crops=crops, **extra), mlflow=True).set_display_name("train")
    trained.set_accelerator_type(GPU).set_accelerator_limit(1).set_cpu_request("4").set_memory_request("16G")
    kubernetes.add_toleration(trained, key=GPU, operator="Exists", effect="NoSchedule")
    evaluated = _secrets(evaluate_model(mlflow_tracking_uri=mlflow_tracking_uri, crops=crops,
                                        model=trained.outputs["model"]), mlflow=True).set_display_name("evaluate")
    return trained, evaluated


@dsl.pipeline(name="hsnet", description="HSNet facial expression recognition: raw data to a registered model")
def hsnet_pipeline(
    dataset: str = "sample",
    raw_source: str = "s3://hsnet-data/raw/sample",
    dvc_path: str = "",
    dvc_rev: str = "",
    params: dict = DEFAULT_PARAMS,
    mlflow_tracking_uri: str = "http://mlflow.kubeflow.svc.cluster.local:5000",
    crop_device: str = "cpu",
):
    """``raw_source``: an s3:// prefix, or (with ``dvc_path``) a DVC repository URL read at ``dvc_rev``.
    ``params``: the whole params.yaml (defaults to the repository's at compile time)."""
    cropped = prepare_crops(dataset, raw_source, dvc_path, dvc_rev, params, crop_device)
    trained, evaluated = train_and_evaluate(dataset, params, mlflow_tracking_uri, cropped.outputs["crops"])
    registered = _secrets(register_model(dataset=dataset, mlflow_tracking_uri=mlflow_tracking_uri,
                                         model=trained.outputs["model"], report=evaluated.outputs["report"]),
                          mlflow=True).set_display_name("register")
    registered.set_caching_options(False)  # registering is idempotent; let it report the version every run
