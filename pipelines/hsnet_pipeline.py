"""The HSNet training pipeline for one dataset:
version -> fetch -> import -> validate -> crop -> train -> evaluate -> register.

Compile: ``python -m pipelines.compile`` (writes pipelines/hsnet_pipeline.yaml, committed, for
the Kubeflow UI's "Upload pipeline"). Submit: ``python -m pipelines.submit --host URL --dataset rafdb``.

Caching follows the data. ``source-version`` is never cached: it lists the source (S3 keys and
ETags, the DVC files' md5s, a folder's hashes) and outputs a content version, which ``fetch``
takes as an input. Unchanged data: fetch's cache key is the same, its cached output (the same
artifact) goes downstream, and import, validate, crop, train and evaluate are reused. New data at
the same URI: fetch runs, its new artifact changes every later step's key, and they all run again.
(Kubeflow keys a task on its parameter values, the ids of its input artifacts, its command and
image; see docs/performance.md.) The steps after ``source-version`` take its ``settings`` output,
this dataset's resolved settings alone, not the whole ``params``: editing another dataset's entry
re-runs nothing here, as with DVC. Each step takes only the keys it reads (``<step>_settings``,
hsnet.params.STEP_KEYS): editing this dataset's training settings re-runs train and what follows
it on the cached crops; its evaluate settings, evaluate and register only.

Kubernetes settings (kfp-kubernetes): every step gets the S3 credentials from the secret
``hsnet-s3`` (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL_S3
for MinIO) and the MLflow credentials from the optional secret ``hsnet-mlflow``
(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN), in the namespace
the run runs in (a profile namespace in multi-user Kubeflow). Every step has CPU and memory
requests and limits and size-limited scratch volumes (:data:`RESOURCES`); train asks for one
NVIDIA GPU, and crop too when ``crop_device`` is ``cuda``, tolerating the usual GPU node taint.
Train writes its checkpoints to ``checkpoint_uri`` (after the first epoch, then at most every
hsnet.durable.INTERVAL_S) and a restarted pod resumes from them; the steps that can fail for passing reasons are retried with backoff (:data:`RETRIES`).
"""

from pathlib import Path

from hsnet import params as params_file
from hsnet.deploy import CANARY_PERCENT
from hsnet.registry import GATE_METRIC, MIN_DELTA
from kfp import dsl, kubernetes

from components import (crop_faces, evaluate_model, import_data, promote_model, register_model, train_model,
                        validate_data)
from components.fetch import fetch_raw, source_version
from components.convert import RUN_ID_ENV
from pipelines import DEFAULT_CHECKPOINT_URI, DEFAULT_MLFLOW_URI, RAW_PREFIX

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = params_file.load(ROOT / params_file.PARAMS_FILE)
S3_SECRET, MLFLOW_SECRET = "hsnet-s3", "hsnet-mlflow"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "MLFLOW_S3_ENDPOINT_URL")
GPU = "nvidia.com/gpu"

# Per step: (cpu request, cpu limit, memory request, memory limit, scratch size). Sized for RAF-DB
# (15k images; raw 0.2 GB, crops at 100 px 0.1 GB; last.pt 185 MB) with room for the larger sets.
# The scratch size bounds the emptyDir volumes mounted where the KFP launcher puts the step's
# artifacts (/s3, /minio: the pipeline root's scheme) and /tmp: the kubelet evicts a step that
# writes more instead of letting it fill the node. (KFP v2 has no ephemeral-storage *request*
# per step, kubeflow/pipelines#11137: a LimitRange in the profile namespace gives one; README.)
RESOURCES = {
    "source-version": ("100m", "1", "256Mi", "1Gi", "1Gi"),
    "fetch": ("1", "2", "1Gi", "2Gi", "8Gi"),
    "import": ("500m", "1", "1Gi", "2Gi", "8Gi"),
    "validate": ("2", "4", "2Gi", "4Gi", "8Gi"),
    "crop": ("4", "8", "8Gi", "16Gi", "12Gi"),
    "train": ("4", "8", "16Gi", "32Gi", "8Gi"),
    "train-group": ("8", "16", "32Gi", "64Gi", "16Gi"),  # the ablation's runs_per_gpu > 1: several trainings
    "group": ("100m", "500m", "256Mi", "512Mi", "1Gi"),
    "evaluate": ("2", "4", "4Gi", "8Gi", "4Gi"),
    "register": ("500m", "1", "2Gi", "4Gi", "2Gi"),
    "promote": ("250m", "1", "1Gi", "2Gi", "1Gi"),
    "report": ("250m", "1", "512Mi", "1Gi", "1Gi"),  # the ablation's Table 6
}
SCRATCH = {"artifacts-s3": "/s3", "artifacts-minio": "/minio", "tmp": "/tmp"}
# Per step: the most hours one attempt (one pod) may run before Kubernetes stops it
# (activeDeadlineSeconds), so that a hung step can't hold its node, or a GPU, for ever. Generous:
# 500 epochs of the largest set (FERG-DB, about 45k training images at 256) take about an hour on an
# H100 and ten on a GPU ten times slower; a GPU group trains up to runs_per_gpu of them at once.
TIMEOUT_HOURS = {"train": 24, "train-group": 48, "crop": 6, "validate": 4, "fetch": 4, "import": 2, "evaluate": 2,
                 "register": 1, "promote": 1, "report": 1, "group": 1, "source-version": 1}
# Steps that can fail for passing reasons (S3 or MLflow unreachable for a moment, a preempted GPU
# node): (retries, first backoff in seconds; each next wait doubles). Deterministic failures
# (validation) are not retried, nor is source-version: it checks the run's parameters (a refusal
# no retry changes, which would reach the user after 3.5 minutes of backoff), and a listing that
# failed in the first seconds costs a Retry of the run, nothing trained.
RETRIES = {"fetch": (3, 30), "train": (3, 60), "train-group": (3, 60), "evaluate": (2, 30),
           "register": (3, 30)}
BACKOFF_FACTOR = 2


def retry_window_s(name: str) -> int:
    """How long after its first attempt began a step may still be retried: every attempt at its full
    deadline (:data:`TIMEOUT_HOURS`) plus the waits between them. Argo, which runs KFP's retries,
    counts ``backoff.maxDuration`` (kfp's ``backoff_max_duration``) from the first attempt's start and
    neither retries nor lets run anything past it, so a shorter window (kfp's default is an hour)
    would end a training preempted after it, instead of resuming it from its checkpoints."""
    retries, backoff = RETRIES[name]
    waits = sum(backoff * BACKOFF_FACTOR ** i for i in range(retries))
    return (retries + 1) * TIMEOUT_HOURS[name] * 3600 + waits


def _secrets(task: dsl.PipelineTask, mlflow: bool = False) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_KEYS})
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_OPTIONAL_KEYS}, optional=True)
    if mlflow:
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_KEYS}, optional=True)
    return task


def step(task: dsl.PipelineTask, name: str, *, gpu: bool = False) -> dsl.PipelineTask:
    """Display name, resources (:data:`RESOURCES`), scratch volumes, a deadline per attempt
    (:data:`TIMEOUT_HOURS`), retries (:data:`RETRIES`) and, with ``gpu``, one NVIDIA GPU and the
    GPU nodes' taint tolerated."""
    cpu, cpu_limit, memory, memory_limit, scratch = RESOURCES[name]
    task.set_display_name(name)
    task.set_cpu_request(cpu).set_cpu_limit(cpu_limit).set_memory_request(memory).set_memory_limit(memory_limit)
    for volume, path in SCRATCH.items():
        kubernetes.empty_dir_mount(task, volume_name=volume, mount_path=path, size_limit=scratch)
    kubernetes.set_timeout(task, TIMEOUT_HOURS[name] * 3600)
    if name in RETRIES:
        retries, backoff = RETRIES[name]
        task.set_retry(num_retries=retries, backoff_duration=f"{backoff}s", backoff_factor=float(BACKOFF_FACTOR),
                       backoff_max_duration=f"{retry_window_s(name)}s")
    if gpu:
        task.set_accelerator_type(GPU).set_accelerator_limit(1)
        kubernetes.add_toleration(task, key=GPU, operator="Exists", effect="NoSchedule")
    return task


def prepare_crops(dataset, raw_source, dvc_path, dvc_rev, params, crop_device, runs=None, then=None, run=None):
    """source-version -> fetch -> import -> validate -> crop (only after validation passed), then
    ``then(crops, settings)`` (the steps that use the crops). ``crop_device``: a fixed string (one
    crop task; returns (crops, settings)) or a pipeline parameter: a GPU branch for ``cuda`` and a
    CPU branch otherwise, each with its own crop task and ``then`` after it (returns None; no
    ``dsl.OneOf`` joining the branches, which kfp.local can't run). ``runs`` (the ablation's):
    checked by source-version, which fails when a KTL run has no stem_weights URI
    (components.convert.check_stem_weights) before any data is fetched.
    ``settings``: source-version's outputs: ``settings``, ``dataset``'s part of params, and
    ``<step>_settings``, the keys of it each step reads (hsnet.params.STEP_KEYS). Every step after
    source-version takes one of them instead of the whole ``params``, so that its cache key changes
    with its own settings only (as dvc.yaml's params lists). ``run``: the pipeline's other parameters
    (mlflow_tracking_uri, checkpoint_uri; promote, deploy, canary_percent), checked with
    ``crop_device`` by source-version before anything is fetched (components.convert.check_run)."""
    checks = {"runs": runs, "require_stem_uri": True} if runs is not None else {}
    checks.update(check_run=True, crop_device=crop_device, **(run or {}))
    version = step(_secrets(source_version(source=raw_source, dvc_path=dvc_path, dvc_rev=dvc_rev, params=params,
                                           dataset=dataset, **checks)), "source-version")
    version.set_caching_options(False)  # listing the source is the point: never reuse an old answer
    settings = version.outputs  # "settings" (the dataset's part of params) and "<step>_settings"
    fetch = step(_secrets(fetch_raw(source=raw_source, dvc_path=dvc_path, dvc_rev=dvc_rev,
                                    version=version.outputs["version"])), "fetch")
    imported = step(import_data(dataset=dataset, params=version.outputs["import_settings"],
                                raw=fetch.outputs["raw"]), "import")
    validated = step(validate_data(dataset=dataset, params=version.outputs["validate_settings"],
                                   raw=fetch.outputs["raw"], manifest=imported.outputs["manifest"]), "validate")

    def crop(device, gpu):
        crops = step(crop_faces(dataset=dataset, params=version.outputs["crop_settings"], device=device,
                                raw=fetch.outputs["raw"],
                                manifest=imported.outputs["manifest"]), "crop", gpu=gpu).after(validated)
        if then is not None:
            then(crops.outputs["crops"], settings)
        return crops.outputs["crops"], settings

    if isinstance(crop_device, str):
        return crop(crop_device, crop_device == "cuda")
    if then is None:
        raise ValueError("a crop_device parameter needs then=: the steps after crop go in each branch")
    with dsl.If(crop_device == "cuda", name="crop-on-gpu"):
        crop(crop_device, True)
    with dsl.Else(name="crop-on-cpu"):
        crop(crop_device, False)
    return None


def with_run_id(task):
    """The pipeline run's id in the task's environment (RUN_ID_ENV), from its pod's label: the key
    of train's durable checkpoints, and the ``kfp_run_id`` tag of every MLflow run and registered
    version (hsnet.tracking.origin_tags). Not an input, so not in Kubeflow's cache key."""
    kubernetes.use_field_path_as_env(task, RUN_ID_ENV, "metadata.labels['pipeline/runid']")
    return task


def train_and_evaluate(dataset, settings, mlflow_tracking_uri, crops, model_overrides=None, seed=None,
                       checkpoint_uri=None, stem_version=None):
    """train on one GPU (tolerating its taint; durable checkpoints to ``checkpoint_uri``) ->
    evaluate, each with its own part of ``settings`` (prepare_crops'); ``stem_version``: the run's
    own (the ablation's run_items), else params' (settings["stem_version"]); returns both tasks."""
    extra = {} if model_overrides is None else {"model_overrides": model_overrides}
    if seed is not None:
        extra["seed"] = seed
    if checkpoint_uri is not None:
        extra["checkpoint_uri"] = checkpoint_uri
    trained = step(_secrets(train_model(dataset=dataset, params=settings["train_settings"],
                                        mlflow_tracking_uri=mlflow_tracking_uri,
                                        stem_version=settings["stem_version"] if stem_version is None else stem_version,
                                        crops=crops, **extra), mlflow=True), "train", gpu=True)
    with_run_id(trained)
    evaluated = step(_secrets(evaluate_model(mlflow_tracking_uri=mlflow_tracking_uri, crops=crops,
                                             model=trained.outputs["model"], dataset=dataset,
                                             params=settings["evaluate_settings"]), mlflow=True), "evaluate")
    with_run_id(evaluated)
    return trained, evaluated


@dsl.pipeline(name="hsnet", description="HSNet facial expression recognition: raw data to a registered model")
def hsnet_pipeline(
    dataset: str = "sample",
    raw_source: str = RAW_PREFIX + "sample",
    dvc_path: str = "",
    dvc_rev: str = "",
    params: dict = DEFAULT_PARAMS,
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_URI,
    crop_device: str = "cpu",
    checkpoint_uri: str = DEFAULT_CHECKPOINT_URI,
    promote: bool = False,
    deploy: bool = False,
    canary_percent: int = CANARY_PERCENT,
):
    """``raw_source``: an s3:// prefix, or (with ``dvc_path``) a DVC repository URL read at ``dvc_rev``.
    ``params``: the whole params.yaml (defaults to the repository's at compile time).
    ``crop_device``: cpu, or cuda (the crop step then gets a GPU).
    ``checkpoint_uri``: s3:// prefix for train's durable checkpoints ("" to keep them in the pod).
    ``promote`` (off by default): then move production to the new version if it passes the gate, and
    with ``deploy`` roll the KServe InferenceService to it with ``canary_percent`` of the traffic."""

    def train_evaluate_register(crops, settings):
        trained, evaluated = train_and_evaluate(dataset, settings, mlflow_tracking_uri, crops,
                                                checkpoint_uri=checkpoint_uri)
        registered = step(_secrets(register_model(dataset=dataset, mlflow_tracking_uri=mlflow_tracking_uri,
                                                  model=trained.outputs["model"],
                                                  report=evaluated.outputs["report"]), mlflow=True), "register")
        registered.set_caching_options(False)  # registering is idempotent; let it report the version every run
        with_run_id(registered)
        with dsl.If(promote == True, name="promote-if-asked"):  # noqa: E712 - a pipeline condition, not Python
            promoted = step(_secrets(promote_model(model_uri=registered.output, mlflow_tracking_uri=mlflow_tracking_uri,
                                                   metric=GATE_METRIC, min_delta=MIN_DELTA, deploy=deploy,
                                                   canary_percent=canary_percent), mlflow=True),
                            "promote")
            promoted.set_caching_options(False)  # the registry's state decides, not the inputs
            with_run_id(promoted)  # its record in the promotion history names the pipeline run

    prepare_crops(dataset, raw_source, dvc_path, dvc_rev, params, crop_device, then=train_evaluate_register,
                  run={"mlflow_tracking_uri": mlflow_tracking_uri, "checkpoint_uri": checkpoint_uri,
                       "promote": promote, "deploy": deploy, "canary_percent": canary_percent})
