"""The MLflow model registry: register evaluated models, promote the better one, roll back.

One registered model per dataset (``hsnet-<dataset>``). Aliases, not the deprecated stages:

* ``candidate``: the newest registered version;
* ``production``: what users load (``models:/hsnet-rafdb@production``);
* ``previous``: the production version before the last promotion (``--rollback`` target).

Figures are bound to the checkpoint they measure. ``hsnet evaluate`` records the checkpoint's
sha256 and the test data version in metrics.json and, as immutable params, in its MLflow run.
``register`` refuses a metrics.json whose checkpoint hash is not the registered file's, and takes
the figures it records from that evaluation run, never from the local file (which must agree
with the run). The registration run links to the evaluation run (param ``evaluation_run_id``);
``promote`` reads both versions' figures from there, not from the version's editable tags.

Promotion is gated: the candidate's test metric must beat production's by ``min_delta``
on the same test data (the evaluation's data version and split); ``force`` overrides and is
recorded. Promotions and rollbacks of one model hold a lock (a registered model
``<name>.promotion-lock``, whose creation is atomic in the registry): of two at once, exactly
one runs, the other is refused as having lost. Aliases are moved, never deleted, so readers
always find ``production``. See docs/security.md for what this does and doesn't defend against.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path, PurePath

from . import model_copies, paper, tracking
from .data.manifest import SPLITS, TEST
from .errors import HSNetError
from .files import METRICS_FILE
from .io import sha256_file

log = logging.getLogger(__name__)

CANDIDATE, PRODUCTION, PREVIOUS = "candidate", "production", "previous"
RECORD = "registered.json"  # what the register stage writes beside a run's evaluation (dvc.yaml's --out)
ROLLED_BACK_TAG = "rolled_back_at"  # on a version rollback took out of production; promote refuses it unforced
RESTORED_TAG = "restored_at"  # on the version a rollback put back in production
METRICS = {m: f"test_{m}" for m in paper.METRICS}  # the evaluate run's MLflow metric names
GATE_METRIC = paper.METRICS[0]  # what promotion compares unless told otherwise
MIN_DELTA = 0.0  # the gain over production promotion asks for unless told otherwise
REQUIREMENTS = ("torch", "torchvision", "facenet-pytorch", "numpy", "pandas", "pillow", "pyyaml", "tqdm", "mlflow")
LOCK_SUFFIX = ".promotion-lock"
# how long a registration waits for the aliases' lock (a promotion: seconds, in general), and a
# promotion or rollback for a registration setting candidate (under a second)
FINISH_WAIT_S = 60
_DATA_VERSION = re.compile(r"^sha256:[0-9a-f]{8,64}$")


class PromotionRefused(HSNetError):
    """The candidate is not promoted; the message says why and what to do."""


class PromotionLost(PromotionRefused):
    """Another promotion or rollback of the same model was running: this one changed nothing.
    ``holder``: what holds the lock (its action, host, pid and time)."""

    holder = "unknown"


class ModelChanged(PromotionRefused):
    """A registered version's files are not those it was registered with."""


class NoEvaluation(HSNetError):
    """No trustworthy evaluation record (an MLflow evaluate run) for a checkpoint or a version."""


def default_name(dataset: str) -> str:
    return f"hsnet-{dataset}"


def _client():
    import mlflow

    tracking.connect()
    return mlflow.MlflowClient()


def _requirements() -> list[str]:
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def _input_example(size: int):
    """One drawn face, PNG-encoded: what a client sends."""
    import io

    import numpy as np
    import pandas as pd

    from .data.sample import draw_face

    buf = io.BytesIO()
    draw_face("aia", "joy", np.random.default_rng(0), size=size).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()]})


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


MODEL_FILES_PARAM = "model_files_sha256"  # registration run param: the digest of the logged model's files
# registration run param and version tag: the sha256 of the registered weights (artifacts/model.pt, what
# predict reports as the model's sha256): the checkpoint saved again without resume state, so not checkpoint_sha256
WEIGHTS_SHA256 = "weights_sha256"
# registration run param: the checkpoint's format (hsnet.checkpoint.FORMAT), which tells the gate,
# after an upgrade, that production's checkpoint is one this hsnet can neither evaluate nor serve
CHECKPOINT_FORMAT_PARAM = "checkpoint_format"
_NOT_MODEL_FILES = ("registered_model_meta",)  # written by MLflow into a models:/NAME/VERSION download


BYTECODE_DIR = "__pycache__"  # Python's bytecode caches: never registered (model_copies.no_bytecode), but written
# into a version's own folder by whoever loads it in place (a notebook's or mlflow models serve's load of a local store)


def model_files_digest(folder: str | os.PathLike, *, bytecode: bool = True) -> str:
    """One sha256 over every file of an MLflow model folder (relative path and content): the
    weights, MLmodel, the model-from-code file and hsnet's source that travels with it; with
    ``bytecode=False``, not the files in :data:`BYTECODE_DIR` folders."""
    return _digest(f for f in _model_files(folder) if bytecode or not _is_bytecode(f[0]))


def _model_files(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """(relative path, sha256) of each file of a model folder, in the digest's order."""
    folder = Path(folder)
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(folder).as_posix()
        if rel in _NOT_MODEL_FILES:
            continue
        if path.is_symlink():
            raise HSNetError(f"{path}: a symbolic link in the model's files")
        files.append((rel, sha256_file(path)))
    return files


def _digest(files) -> str:
    import hashlib

    digest = hashlib.sha256()
    for rel, sha in files:
        digest.update(f"{rel}\0{sha}\n".encode())
    return "sha256:" + digest.hexdigest()


def _is_bytecode(rel: str) -> bool:
    return BYTECODE_DIR in PurePath(rel).parts[:-1]


def _hash_based(pyc: Path) -> bool:
    """Whether a ``.pyc`` is hash-based (PEP 552: its header's flags not 0): valid for its source
    wherever the source is copied, and never written by Python's imports (timestamp-based ones, valid
    only for the source's modification time, which a download renews)."""
    with open(pyc, "rb") as f:
        header = f.read(8)
    return len(header) == 8 and int.from_bytes(header[4:8], "little") != 0


def holds_bytecode(folder: str | os.PathLike) -> bool:
    """Whether a model folder holds Python bytecode (:data:`BYTECODE_DIR`), which hsnet's check
    leaves out: to be ignored when it loads (:func:`hsnet.model_copies.no_bytecode`)."""
    return any(p.is_dir() for p in Path(folder).rglob(BYTECODE_DIR))


def _registered_forms(files: list[tuple[str, str]]):
    """The digests a version's files may have been recorded under, Python's bytecode aside (hsnet
    never runs bytecode found in a copy: model_copies.no_bytecode): all of them as they are; none of the
    bytecode (hsnet registers none); and, for versions older hsnet registered where Python wrote
    bytecode (its model-from-code file's, in the model's own ``__pycache__``), the other files with
    those of that folder, or with one of them (another Python loaded it in place since)."""
    source = [f for f in files if not _is_bytecode(f[0])]
    top = [f for f in files if _is_bytecode(f[0]) and PurePath(f[0]).parts[0] == BYTECODE_DIR]
    yield _digest(files)
    yield _digest(source)
    for kept in ([top] if len(top) > 1 else []) + [[one] for one in top]:
        yield _digest(sorted(source + kept, key=lambda f: PurePath(f[0])))


@contextlib.contextmanager
def _downloaded(uri: str):
    """A fresh download of ``uri``'s files into a temporary folder (removed after), under
    :func:`hsnet.tracking.download_timeout`."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="hsnet-verify-") as tmp, tracking.download_timeout():
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))


def _download_digest(uri: str) -> str:
    with _downloaded(uri) as folder:
        return model_files_digest(folder)


def check_model_files(client, name: str, version, folder: str | os.PathLike | None = None) -> bool:
    """Check that version ``version`` of ``name`` still has the files it was registered with (its
    registration run's immutable ``model_files_sha256``): those in ``folder`` (a local copy about
    to be loaded), else a fresh download. :class:`ModelChanged` if not; False, with a warning, for
    a version registered before the digest was recorded (nothing to check against).

    Bytecode Python wrote beside the files (:data:`BYTECODE_DIR`: the version loaded in place) is
    no change to them: the check is of the other files (hsnet never runs bytecode found in a copy:
    :func:`hsnet.model_copies.no_bytecode`), but hash-based bytecode, which Python's imports never
    write and other loaders would run after any download, is refused. Bytecode registered with a
    version (hsnet before ``no_bytecode``) is recognised by the digest it was recorded with."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
        recorded = client.get_run(mv.run_id).data.params.get(MODEL_FILES_PARAM)
    except MlflowException as exc:
        raise HSNetError(f"{name} version {version}: can't read its registration record ({exc.message})") from exc
    if not recorded:
        log.warning("%s version %s was registered before model files were recorded: its files can't be "
                    "checked; register its checkpoint again (a new version, whose files are recorded) and "
                    "promote that one", name, version)
        return False
    if folder is not None:
        _check_files(Path(folder), recorded, mv)
        return True
    with _downloaded(tracking.version_uri(name, version)) as fresh:
        _check_files(fresh, recorded, mv)
    return True


def _check_files(folder: Path, recorded: str, mv) -> None:
    """:func:`check_model_files` of the files in ``folder``: as registered, Python's bytecode aside."""
    files = _model_files(folder)
    if recorded in _registered_forms(files):
        planted = [rel for rel, _ in files if _is_bytecode(rel) and _hash_based(folder / rel)]
        if not planted:
            return
        raise ModelChanged(f"{mv.name} version {mv.version}: {planted[0]} is hash-based bytecode, which Python's "
                           "imports never write (a .pyc that a download keeps valid for its source, so MLflow's "
                           "loaders would run it instead of the checked file); it is not loaded or promoted. "
                           "Register the checkpoint again (hsnet register) and check who can write to the "
                           "tracking server")
    raise ModelChanged(f"{mv.name} version {mv.version}: its model files (weights, MLmodel or code) were changed "
                       f"after registration ({_digest(files)[:19]}… now, {recorded[:19]}… recorded in registration "
                       f"run {mv.run_id}); it is not loaded or promoted. Register the checkpoint again "
                       "(hsnet register) and check who can write to the tracking server")


def _figures(client, run) -> dict:
    """The figures of a finished ``hsnet evaluate`` run, from its params (immutable) and metrics
    (each logged once by evaluate: a metric logged again later is a changed record, refused)."""
    from .checkpoint import BEST

    run_id, params = run.info.run_id, run.data.params
    if run.data.tags.get("step") != "evaluate" or "checkpoint_sha256" not in params:
        raise NoEvaluation(f"MLflow run {run_id} is not an hsnet evaluate run of a known checkpoint")
    if run.info.status != "FINISHED":
        raise NoEvaluation(f"evaluation run {run_id} did not finish (status {run.info.status}); evaluate again")
    out = {"evaluation_run_id": run_id, "checkpoint_sha256": params["checkpoint_sha256"],
           "test_data_version": params.get("test_data_version"), "test_split": params.get("split"),
           "tta_hflip": params.get("tta_hflip"), "dataset": run.data.tags.get("dataset"),
           # the bytes it measured, logged in the run as checkpoint/<this name> (hsnet.evaluate)
           "checkpoint_file": PurePath(params.get("checkpoint") or BEST).name}
    for key in METRICS.values():
        history = client.get_metric_history(run_id, key)
        if len(history) != 1:
            raise NoEvaluation(f"evaluation run {run_id} has {len(history)} values of {key} (hsnet evaluate "
                               "logs one): the record was changed after the evaluation; evaluate again")
        out[key] = float(history[0].value)
    return out


def _version_figures(client, mv) -> dict:
    """A registered version's figures from its evaluation record: the registration run (the
    version's source run, fixed at registration) names the evaluate run and the checkpoint hash."""
    from mlflow.exceptions import MlflowException

    try:
        params = client.get_run(mv.run_id).data.params
        eval_id, sha = params["evaluation_run_id"], params["checkpoint_sha256"]
        figures = _figures(client, client.get_run(eval_id))
    except (MlflowException, KeyError) as exc:
        raise NoEvaluation(f"version {mv.version} of {mv.name} has no evaluation record (registered without "
                           f"one, or its runs were deleted: {type(exc).__name__} {exc}); register its "
                           "checkpoint again after hsnet evaluate") from exc
    if figures["checkpoint_sha256"] != sha:
        raise NoEvaluation(f"version {mv.version} of {mv.name}: its evaluation run {eval_id} measured another "
                           "checkpoint than the one registered")
    return {**figures, CHECKPOINT_FORMAT_PARAM: params.get(CHECKPOINT_FORMAT_PARAM)}


def _evaluation_of(client, sha: str, m: dict, metrics_path: Path, checkpoint: Path) -> dict:
    """The evaluation run behind ``metrics_path`` (its ``mlflow_run_id``, else the newest evaluate
    run of this checkpoint on the same test data), checked against the file."""
    from mlflow.exceptions import MlflowException

    where = tracking.mask_uri(tracking.tracking_uri())
    again = (f"run hsnet evaluate --checkpoint {checkpoint} with MLflow tracking to {where} (not --no-mlflow) "
             f"and register with the {METRICS_FILE} it writes")
    run_id = m.get("mlflow_run_id")
    if run_id:
        try:
            run = client.get_run(str(run_id))
        except MlflowException as exc:
            raise NoEvaluation(f"{metrics_path} names the evaluation run {run_id}, which is not in the tracking "
                               f"store {where}; {again}") from exc
    else:
        version, split = str(m.get("data_version")), str(m.get("split"))
        if not _DATA_VERSION.match(version) or split not in SPLITS:
            raise NoEvaluation(f"{metrics_path}: data_version {version!r} / split {split!r} are not an hsnet "
                               f"evaluate's; {again}")
        run = next(iter(_evaluations(client, sha, version, split)), None)
        if run is None:
            raise NoEvaluation(f"{metrics_path}: no MLflow evaluation of {checkpoint} (sha256 {sha[:16]}…) on "
                               f"{version} ({split}) in {where}; {again}")
    figures = _figures(client, run)
    if figures["checkpoint_sha256"] != sha:
        raise HSNetError(f"{metrics_path}: its evaluation run {run.info.run_id} measured the checkpoint with "
                         f"sha256 {figures['checkpoint_sha256'][:16]}…, not {checkpoint} ({sha[:16]}…); {again}")
    claimed = {"accuracy": m.get("accuracy"), "mean_accuracy": m.get("mean_accuracy"),
               "data_version": m.get("data_version"), "split": m.get("split")}
    recorded = {"accuracy": figures["test_accuracy"], "mean_accuracy": figures["test_mean_accuracy"],
                "data_version": figures["test_data_version"], "split": figures["test_split"]}
    differ = [k for k in claimed if not (claimed[k] == recorded[k] or (
        isinstance(claimed[k], (int, float)) and abs(claimed[k] - recorded[k]) <= 1e-9))]
    if differ:
        raise HSNetError(f"{metrics_path} does not match its evaluation run {run.info.run_id} in "
                         + ", ".join(f"{k} ({claimed[k]!r} in the file, {recorded[k]!r} recorded)" for k in differ)
                         + f": the file was changed after hsnet evaluate wrote it. Registration takes the "
                         f"figures of the evaluation run only; {again}")
    return figures


def _evaluations(client, sha: str, data_version: str, split: str, tta_hflip: str | None = None,
                 max_results: int = 1) -> list:
    """The finished ``hsnet evaluate`` runs of the checkpoint ``sha`` on ``data_version``
    (``split``; with ``tta_hflip`` "True"/"False": that setting only), newest first."""
    if not _DATA_VERSION.match(str(data_version)) or split not in SPLITS or \
            not re.fullmatch(r"[0-9a-f]{64}", str(sha)) or tta_hflip not in (None, "True", "False"):
        return []  # never put into a search filter what isn't an hsnet hash, split or setting
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    tta = f" and params.tta_hflip = '{tta_hflip}'" if tta_hflip is not None else ""
    return client.search_runs(
        [experiment.experiment_id],
        f"params.checkpoint_sha256 = '{sha}' and params.test_data_version = '{data_version}' and "
        f"params.split = '{split}'{tta} and tags.step = 'evaluate' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=max_results) if experiment else []


def _valid_evaluation(client, sha: str, measured: tuple) -> dict | None:
    """The figures of the newest valid evaluation of ``sha`` as ``measured`` (data version, split,
    tta_hflip): a record changed after its evaluation is skipped (with a warning), not the end."""
    for run in _evaluations(client, sha, *measured, max_results=20):
        try:
            return _figures(client, run)
        except NoEvaluation as exc:  # altered: not a measurement to compare with
            log.warning("production's evaluation run %s on %s is not used: %s", run.info.run_id, measured[0], exc)
    return None


def _measured(fig: dict) -> tuple:
    """How a version's figures were measured: (test data version, split, evaluate.tta_hflip)."""
    return fig["test_data_version"], fig["test_split"], fig["tta_hflip"]


def _not_comparable(cand, prod, p_fig: dict, c: tuple, p: tuple) -> str:
    """Why the candidate (measured as ``c``) and production (as ``p``, figures ``p_fig``) can't be
    compared, and the commands that measure production's checkpoint as the candidate was."""
    if c[:2] != p[:2]:
        differ = f"was tested on {c[0]} ({c[1]}) and production (version {prod.version}) on {p[0]} ({p[1]})"
    else:
        differ = f"was evaluated with evaluate.tta_hflip {c[2]} and production (version {prod.version}) with {p[2]}"
    from .checkpoint import FORMAT

    found = p_fig.get(CHECKPOINT_FORMAT_PARAM)
    if found is not None and str(found) != str(FORMAT):  # after an upgrade: nothing here can measure it
        return (f"version {cand.version} {differ}: the metrics are not comparable, and production's checkpoint is of "
                f"format {found}, which this hsnet (format {FORMAT}) can neither evaluate nor serve. Check version "
                f"{cand.version}'s figures and promote it with --force (and serve it with this release's image)")
    unknown = ("" if found is not None else
               f" (version {prod.version} was registered before hsnet recorded the checkpoint format: should hsnet "
               "evaluate refuse its checkpoint as written by an older hsnet, this release can neither measure nor "
               f"serve it; then check version {cand.version}'s figures and promote it with --force)")
    return (f"version {cand.version} {differ}: the metrics are not comparable. To compare them on the candidate's "
            f"data, evaluate production's checkpoint there ({_how_to_measure(p_fig, c)}, tracked) and promote "
            f"again{unknown}")


def _how_to_measure(p_fig: dict, measured: tuple) -> str:
    """The commands that evaluate production's checkpoint as the candidate was ``measured`` (data,
    split, tta_hflip): production's own evaluation run keeps the very bytes it measured
    (``checkpoint/<file>``, hsnet.evaluate; a training run's best.pt may have been replaced by a
    resumed run since), and ``hsnet evaluate`` records the run the gate then finds."""
    folder, name = "production-checkpoint", p_fig["checkpoint_file"]
    flips = f"--{'' if measured[2] == 'True' else 'no-'}tta-hflip"
    # hsnet's own local store is named (the mlflow CLI's default is another); a store the user gave
    # in MLFLOW_TRACKING_URI is theirs already, with its credentials (which a printed URI masks)
    store = tracking.tracking_uri(create=False)
    prefix = f"MLFLOW_TRACKING_URI={shlex.quote(store)} " if tracking.is_default_store(store) else ""
    return (f"{prefix}mlflow artifacts download -r {p_fig['evaluation_run_id']} -a {shlex.quote(f'checkpoint/{name}')} "
            f"-d {folder}, "
            f"then hsnet evaluate --checkpoint {shlex.quote(f'{folder}/{name}')} --data <the candidate's crops> "
            f"--split {measured[1]} --out production-evaluation {flips}")


def _registration_params(client, mv) -> dict:
    """The params of a version's registration run (immutable, unlike its tags); {} when it is gone."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_run(mv.run_id).data.params)
    except MlflowException:
        return {}


def _registered_sha(client, mv) -> str | None:
    """The checkpoint hash a version was registered with: its registration run's param (immutable),
    not its tag (editable); None when the run is gone."""
    return _registration_params(client, mv).get("checkpoint_sha256")


def held(aliases: list[str]) -> str:
    """A version's aliases as messages name them: ``alias candidate``, ``aliases candidate, production``."""
    return f"alias{'es' if len(aliases) > 1 else ''} {', '.join(aliases)}" if aliases else "no alias"


def _result(client, name: str, mv, run_id: str, already: bool, figures: dict) -> dict:
    """What :func:`register` returns (and ``hsnet register --out`` writes): the version, its
    figures, and the aliases it holds now (``candidate``, ``production`` once promoted, ...)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = sorted(client.get_model_version(name, str(mv.version)).aliases or [])
    except MlflowException as exc:
        raise HSNetError(f"{name} version {mv.version}: can't be read back from the registry ({exc.message}); "
                         "was it deleted meanwhile? Register the checkpoint again") from exc
    return {"name": name, "version": int(mv.version), "model_uri": tracking.version_uri(name, mv.version),
            "run_id": run_id, "already_registered": already, "aliases": aliases,
            "test_accuracy": figures["test_accuracy"], "test_mean_accuracy": figures["test_mean_accuracy"],
            "evaluation_run_id": figures.get("evaluation_run_id")}


EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` for its stages
REGISTER_EXPERIMENTS_ENV = "HSNET_REGISTER_EXPERIMENTS"


def experiment_not_registered() -> dict | None:
    """Inside ``dvc exp run`` the register stage registers nothing, unless
    HSNET_REGISTER_EXPERIMENTS=1: an experiment's model must not move the candidate alias that
    the workspace's runs set. The record the stage writes then (``{"registered": false,
    "experiment": NAME}``, read by :mod:`hsnet.summary`), or None outside an experiment."""
    experiment = os.environ.get(EXPERIMENT_ENV)
    if not experiment or os.environ.get(REGISTER_EXPERIMENTS_ENV, "").lower() in ("1", "true", "yes"):
        return None
    return {"registered": False, "experiment": experiment}


def record(registration: dict) -> dict:
    """What ``hsnet register --out`` writes of :func:`register`'s result: the same whether the
    version was made now or found (dvc runs the register stage at every repro)."""
    return {k: v for k, v in registration.items() if k != "already_registered"}


def _checked_metrics(checkpoint: Path, sha: str, metrics_path: Path, meta: dict, dataset: str) -> tuple[dict, str]:
    """The metrics.json ``hsnet evaluate`` wrote for ``checkpoint`` (of ``dataset``, its bytes'
    sha256 ``sha``), and ``sha``; an HSNetError saying what to do when they don't belong together."""
    if not metrics_path.is_file():
        raise HSNetError(f"--metrics {metrics_path} does not exist; run hsnet evaluate first")
    try:
        m = json.loads(metrics_path.read_text(encoding="utf-8"))
        float(m["accuracy"]), float(m["mean_accuracy"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HSNetError(f"--metrics {metrics_path} is not an hsnet evaluate {METRICS_FILE} ({exc})") from exc
    if meta["dataset"] != dataset or m.get("dataset") != dataset:
        raise HSNetError(f"--dataset {dataset}: the checkpoint is for {meta['dataset']!r} and the metrics "
                         f"for {m.get('dataset')!r}")
    claimed = m.get("checkpoint_sha256")
    if not claimed:
        raise HSNetError(f"--metrics {metrics_path} does not say which checkpoint it measured (no "
                         f"checkpoint_sha256): it was not written by hsnet evaluate. Evaluate {checkpoint} "
                         f"and register with the {METRICS_FILE} it writes")
    if claimed != sha:
        raise HSNetError(f"--metrics {metrics_path} measured the checkpoint with sha256 {str(claimed)[:16]}…, "
                         f"not --checkpoint {checkpoint} (sha256 {sha[:16]}…): these figures are not this "
                         f"model's. Evaluate {checkpoint} and register with the {METRICS_FILE} it writes")
    return m, sha


@tracking.as_found
def register(checkpoint: str | os.PathLike, metrics: str | os.PathLike, dataset: str, *,
             name: str | None = None) -> dict:
    """Log ``checkpoint`` as a pyfunc and register it as a new version of ``name``, alias ``candidate``.

    ``metrics`` is the metrics.json ``hsnet evaluate`` wrote for this very file (same sha256);
    the figures recorded are those of its MLflow evaluation run. Registering the same checkpoint
    again returns the existing version, with that version's figures.
    """
    import mlflow

    from . import checkpoint as checkpoint_mod

    checkpoint, metrics_path = Path(checkpoint), Path(metrics)
    ckpt, _, sha = checkpoint_mod.read(checkpoint)  # read once: the weights logged are the bytes hashed
    meta = ckpt["meta"]
    m, sha = _checked_metrics(checkpoint, sha, metrics_path, meta, dataset)
    name = name or default_name(dataset)
    client = _client()
    for mv in _unchanged(client, name, _versions_of(client, name, sha))[:1]:
        log.debug("%s is already registered as %s version %s", checkpoint, name, mv.version)
        if _unfinished(mv):  # a registration stopped half-way (killed, retried): finish it
            log.info("%s version %s: finishing its registration (stopped before its alias was set)", name, mv.version)
            _finish(client, name, mv.version, mv.tags)
        return _existing_result(client, name, mv)

    figures = _evaluation_of(client, sha, m, metrics_path, checkpoint)
    if figures["test_split"] != TEST:
        raise HSNetError(f"{metrics_path}: evaluated on the {figures['test_split']} split, which the model was "
                         f"trained or selected on; a version is registered with its figures on the {TEST} split "
                         f"(its test accuracy, what promotion compares): run hsnet evaluate --checkpoint "
                         f"{checkpoint} --split {TEST} and register with the {METRICS_FILE} it writes")
    if figures["dataset"] != dataset:
        raise HSNetError(f"--dataset {dataset}: the evaluation run {figures['evaluation_run_id']} is of "
                         f"{figures['dataset']!r}")
    test_acc, test_macc = figures["test_accuracy"], figures["test_mean_accuracy"]
    tags = {  # for people and the UI; promote reads the evaluation run, not these
        "dataset": dataset, "test_accuracy": f"{test_acc:.6f}", "test_mean_accuracy": f"{test_macc:.6f}",
        "test_split": str(figures["test_split"]), "test_data_version": str(figures["test_data_version"]),
        "test_tta_hflip": str(figures["tta_hflip"] == "True").lower(), "evaluation_run_id": figures["evaluation_run_id"],
        "data_version": meta["data_version"], "git_commit": tracking.git_commit(),  # the code registering it
        "checkpoint_sha256": sha, **tracking.trained_by(meta), **tracking.origin_tags(),
        **{f"model.{k}": str(v) for k, v in meta["model"].items()},
    }
    run_tags = {"step": "register", **{k: v for k, v in tags.items() if k != "checkpoint_sha256"}}
    tags[STATE_TAG] = PENDING  # until its description and alias are set: a retried register finishes it
    params = {"checkpoint": str(checkpoint), "name": name, "checkpoint_sha256": sha,  # immutable, read by promote
              "evaluation_run_id": figures["evaluation_run_id"], CHECKPOINT_FORMAT_PARAM: ckpt["format"]}
    logged = log_model(ckpt, run_name=f"register-{dataset}", params=params, tags=run_tags,
                       metrics={"test_accuracy": test_acc, "test_mean_accuracy": test_macc})
    run_id = logged["run_id"]
    tags[WEIGHTS_SHA256] = logged[WEIGHTS_SHA256]
    mv = mlflow.register_model(logged["model_uri"], name, tags=tags)
    earlier = [v for v in _versions_of(client, name, sha) if int(v.version) < int(mv.version)]
    first = next(iter(_unchanged(client, name, earlier)), mv)
    if int(first.version) < int(mv.version):  # registered at the same time by another process: one version
        log.info("%s was registered as %s version %s meanwhile: version %s removed", checkpoint, name,
                 first.version, mv.version)
        client.delete_model_version(name, mv.version)
        client.delete_run(run_id)
        if _unfinished(first):  # the other register was stopped before finishing it: this one does
            _finish(client, name, first.version, first.tags)
        return _existing_result(client, name, first)
    _finish(client, name, mv.version, tags)
    return _result(client, name, mv, run_id, False, figures)


STATE_TAG, PENDING, COMPLETE = "registration", "pending", "complete"


def _description(tags: dict) -> str:
    """A version's description, from its tags (a version older hsnet registered may lack some)."""
    def figure(key):
        try:
            return f"{float(tags[key]):.4f}"
        except (KeyError, TypeError, ValueError):
            return "?"

    where = ", ".join(f"{what} {tags[key]}" for what, key in (("test data", "test_data_version"),
                                                             ("evaluation run", "evaluation_run_id")) if tags.get(key))
    flips = (" measured with each test image's mirror image averaged in (evaluate.tta_hflip: not the served "
             "model's figures)" if tags.get("test_tta_hflip") == "true" else "")
    return (f"HSNet on {tags.get('dataset', '?')}: test accuracy {figure('test_accuracy')}, mean accuracy "
            f"{figure('test_mean_accuracy')}{flips}" + (f" ({where})" if where else "")
            + (f"; trained in run {tags['train_run_id']}" if tags.get("train_run_id") else ""))


def _unfinished(mv) -> bool:
    """Whether ``mv``'s registration stopped half-way: tagged ``pending``, or, registered by an hsnet
    from before that tag, without the description registering sets before the alias."""
    state = (mv.tags or {}).get(STATE_TAG)
    return state == PENDING or (state is None and not mv.description)


def _finish(client, name: str, version, tags: dict) -> None:
    """The last steps of registering a version (from its tags): its description, the ``candidate``
    alias unless a newer version holds it (``candidate`` is the newest registered version: a
    registration finished late never takes it back), and the tag that says they are done (set
    last, so a registration killed before it is finished by the next ``hsnet register`` of the
    same file)."""
    from mlflow.exceptions import MlflowException

    client.update_model_version(name, str(version), description=_description(tags))
    try:
        with _promotion_lock(client, name, REGISTER):  # read and set as one: no other finish between
            try:
                holder = int(client.get_model_version_by_alias(name, CANDIDATE).version)
            except MlflowException:  # no candidate yet (or its version was deleted)
                holder = None
            if holder is None or holder < int(version):
                client.set_registered_model_alias(name, CANDIDATE, str(version))
            elif holder > int(version):
                log.info("%s version %s: %s stays on version %s, registered later", name, version, CANDIDATE, holder)
    except PromotionLost as exc:
        raise HSNetError(f"{name} version {version} is registered but not finished: {CANDIDATE} could not be set, "
                         f"the aliases' lock being held for {FINISH_WAIT_S} s ({exc.holder}). Once that ends, "
                         f"register the same checkpoint again: it finishes version {version} (no new version). "
                         "If nothing else is running, the lock is stale: remove it first with hsnet promote "
                         f"--name {name} --unlock") from None
    client.set_model_version_tag(name, str(version), STATE_TAG, COMPLETE)


def _unchanged(client, name: str, versions: list) -> list:
    """``versions`` but those whose files were changed after registration (:class:`ModelChanged`):
    registering their checkpoint again makes a new version, as the refusal advises. Downloads each
    version it checks (one, in general)."""
    kept = []
    for mv in versions:
        try:
            check_model_files(client, name, mv.version)
        except ModelChanged as exc:
            log.warning("%s: not reused, this registration makes a new version", exc)
            continue
        kept.append(mv)
    return kept


def _versions_of(client, name: str, sha: str) -> list:
    """The versions of ``name`` registered from the checkpoint with this sha256 and their model
    files recorded (:data:`MODEL_FILES_PARAM`), the first registered first. A version an older
    hsnet registered without that record doesn't count: registering its checkpoint again gives a
    new version whose files are checked (what :func:`check_model_files` advises)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:  # no such registered model yet
        return []
    found = []
    for mv in versions:
        if mv.tags.get("checkpoint_sha256") != sha:
            continue
        params = _registration_params(client, mv)
        if params.get("checkpoint_sha256") == sha and params.get(MODEL_FILES_PARAM):
            found.append(mv)
    return sorted(found, key=lambda mv: int(mv.version))


def _existing_result(client, name: str, mv) -> dict:
    """What registering returns for a checkpoint already registered as ``mv``: its figures."""
    try:
        figures = _version_figures(client, mv)
    except NoEvaluation:  # registered before records were linked: what it was registered with
        figures = {k: float(mv.tags.get(k, "nan")) for k in METRICS.values()}
    return _result(client, name, mv, mv.run_id, True, figures)


@tracking.as_found
def log_model(ckpt: dict, *, run_name: str, params: dict, tags: dict, metrics: dict | None = None) -> dict:
    """Log a loaded checkpoint as an MLflow pyfunc model in a new run (weights without resume state,
    hsnet's source, signature, input example); not registered. Returns ``model_uri`` and ``run_id``."""
    import mlflow
    import torch

    from . import checkpoint as checkpoint_mod
    from .pyfunc import signature

    meta = ckpt["meta"]
    with tempfile.TemporaryDirectory(prefix="hsnet-register-") as tmp:
        slim = Path(tmp) / "model.pt"  # last.pt may be registered too: drop its optimizer state
        torch.save(checkpoint_mod.for_inference(ckpt), slim)
        weights = sha256_file(slim)
        code = Path(tmp) / "hsnet"  # the package's source travels with the model (no caches)
        shutil.copytree(Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with tracking.run(run_name, params=params, tags=tags) as active:
            if metrics:
                mlflow.log_metrics(metrics)
            # MLflow runs the model's code from the folder it logs: no __pycache__ among its files, nor
            # that temporary folder left on the import path
            with warnings.catch_warnings(), model_copies.no_bytecode(), model_copies.import_path_kept():
                # "add type hints": the signature is explicit
                warnings.filterwarnings("ignore", message=".*type hint", category=UserWarning)
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(Path(__file__).with_name("mlflow_model.py")),
                    artifacts={"checkpoint": str(slim)}, code_paths=[str(code)],
                    signature=signature(meta["classes"]), input_example=_input_example(int(meta["input_size"])),
                    pip_requirements=_requirements(),
                    # MLflow 3's LoggedModel takes MLflow's user (MLFLOW_TRACKING_USERNAME) unless told: a token
                    tags={"mlflow.user": user} if (user := tracking.run_user()) else None)
            # the files as the store holds them, bound to this run (params are immutable)
            mlflow.log_params({MODEL_FILES_PARAM: _download_digest(info.model_uri), WEIGHTS_SHA256: weights})
            return {"model_uri": info.model_uri, "run_id": active.info.run_id, WEIGHTS_SHA256: weights}


REGISTER = "register"  # the lock's action while a registration sets candidate (promote and rollback wait for it)


@contextmanager
def _promotion_lock(client, name: str, action: str):
    """Hold ``<name>.promotion-lock`` (a registered model: creating one is atomic in the registry)
    for the body, while ``action`` changes the aliases: "promote", "rollback", or :data:`REGISTER`
    (setting ``candidate``). A registration waits up to :data:`FINISH_WAIT_S` for any holder, and
    a promotion or rollback for a registration (a second or less, in general); a promotion that
    meets another promotion or rollback is refused at once with :class:`PromotionLost`, as is any
    holder once the wait is over."""
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    holder = (f"{action} on {socket.gethostname()} pid {os.getpid()} at "
              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    started, said = time.monotonic(), False
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": holder, "action": action},
                                           description=f"held while hsnet changes the aliases of {name}")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise HSNetError(f"{name}: can't take the promotion lock {lock} in "
                                 f"{tracking.mask_uri(tracking.tracking_uri())} ({tracking.mask_text(exc.message)})") from exc
            try:
                tags = client.get_registered_model(lock).tags
                other, other_action = tags.get("holder", "unknown"), tags.get("action")
            except MlflowException as read:
                if read.error_code == "RESOURCE_DOES_NOT_EXIST" and time.monotonic() - started < FINISH_WAIT_S:
                    continue  # released meanwhile: try again at once
                other, other_action = f"not readable: {tracking.mask_text(read.message)[:200]}", None
            if (action == REGISTER or other_action == REGISTER) and time.monotonic() - started < FINISH_WAIT_S:
                if not said:
                    log.info("%s: waiting for the lock %s (held by %s), up to %d s", name, lock, other, FINISH_WAIT_S)
                    said = True
                time.sleep(0.5)
                continue
            lost = PromotionLost(f"{name}: another promotion, rollback or registration is changing its aliases "
                                 f"({other}); this one lost the race and changed nothing. Check the aliases and retry. "
                                 "If nothing else is running, the lock is stale: remove it with hsnet promote "
                                 f"--name {name} --unlock")
            lost.holder = other
            raise lost from None
    try:
        yield
    finally:
        try:
            client.delete_registered_model(lock)
        except MlflowException as exc:
            log.warning("%s: could not release the promotion lock %s (%s); remove it with "
                        "hsnet promote --name %s --unlock", name, lock, exc.message, name)


@tracking.as_found
def unlock(name: str) -> bool:
    """Remove a stale promotion lock (left by a killed promotion); True if there was one, False if
    there was none. A registry that refuses or fails (no write rights, a 5xx) is an error: the
    lock may still be there."""
    from mlflow.exceptions import MlflowException

    client = _client()
    lock = name + LOCK_SUFFIX
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise HSNetError(f"{name}: the registry at {tracking.mask_uri(tracking.tracking_uri())} did not remove the "
                         f"promotion lock {lock} ({tracking.mask_text(exc.message)[:300]}); it may still be held. "
                         "Check MLFLOW_TRACKING_URI and that its credentials may write to the registry") from exc
    return True


@tracking.as_found
def registered_version(model_uri: str) -> tuple[str, str]:
    """(name, version) of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (the alias resolved
    now), checked against the registry; an HSNetError naming the URI when there is no such version."""
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith(tracking.MODELS_SCHEME):
        raise HSNetError(f"{model_uri!r} is not a registered model's URI ({tracking.version_uri('NAME', 'VERSION')} "
                         f"or {tracking.alias_uri('NAME', 'ALIAS')})")
    where = tracking.mask_uri(tracking.connect(create=False))
    try:
        return tracking.model_version(model_uri)
    except MlflowException as exc:
        raise HSNetError(f"{model_uri}: not in the registry at {where} ({exc.message[:300]})") from exc


@tracking.as_found
def promote(name: str, *, version: int | str | None = None, metric: str = GATE_METRIC, min_delta: float = MIN_DELTA,
            force: bool = False) -> dict:
    """Point ``production`` at ``version`` (default: the ``candidate`` alias) if it is better.

    Both versions' figures come from their evaluation records (see :func:`_version_figures`).
    Raises :class:`PromotionRefused` (production unchanged) when the candidate is not better,
    when the two were tested on different data, or when either has no evaluation record, unless
    ``force``; :class:`PromotionLost` when another promotion of ``name`` is running.
    """
    if metric not in METRICS:
        raise HSNetError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    client = _client()
    _require_model(client, name)
    with _change_recorded(client, name, "promote", version=version, metric=metric, min_delta=min_delta,
                          force=force) as record:
        return record(_promote_locked(client, name, version, metric, min_delta, force))


HISTORY_STEP = "promote"  # the step tag of a promotion's or rollback's record (a run of experiment hsnet)


@contextmanager
def _recorded(client, name: str, action: str, **asked):
    """A record of one promotion or rollback of ``name``, made or refused: a run of experiment hsnet
    tagged ``step=promote``, ``model``, ``action``, with what was asked as params. It starts before
    anything is checked or moved (a store that can't record refuses the change; a promotion that
    finds the lock held is recorded as refused) and ends with ``outcome`` (moved, unchanged,
    refused, error), ``production`` and ``previous`` as they stand after it, ``forced`` and
    ``reason``. MLflow keeps no history of alias moves: this is it (:func:`promotion_history`)."""
    with tracking.run(f"{action}-{name}", params={"model": name, "action": action, **asked},
                      tags={"step": HISTORY_STEP, "model": name, "action": action}, computes=False):
        closed = []

        def record(decision: dict) -> dict:
            _close_record(client, name, "moved" if decision.get("promoted") else "unchanged",
                          str(decision.get("reason", "")), bool(decision.get("forced")))
            closed.append(decision)
            return decision

        def failed(exc: BaseException) -> None:
            if not closed:  # an error after the change was recorded (a SIGTERM releasing the lock) doesn't undo it
                _close_record(client, name, "refused" if isinstance(exc, HSNetError) else "error",
                              tracking.mask_text(str(exc)) or type(exc).__name__, False)
                closed.append(exc)

        record.failed = failed
        try:
            yield record
        except BaseException as exc:
            failed(exc)
            raise


@contextmanager
def _change_recorded(client, name: str, action: str, **asked):
    """:func:`_recorded` around :func:`_promotion_lock`: a change that fails inside the lock is
    recorded before the lock is released, so the aliases its record shows are those it left, not
    those of a promotion that starts the moment it ends."""
    with _recorded(client, name, action, **asked) as record, _promotion_lock(client, name, action):
        try:
            yield record
        except BaseException as exc:
            record.failed(exc)
            raise


@contextmanager
def failures_recorded(name: str, action: str, **asked):
    """Record a change of ``name`` that fails in here, before :func:`promote` or :func:`rollback`
    (which record their own) could: the checks before a rollback, the traffic change of
    ``--rollback --deploy``, the cluster check of ``--deploy``. Nothing is recorded when it succeeds;
    a record that can't be made is logged, and the failure raised is the change's own."""
    try:
        yield
    except BaseException as exc:
        try:
            with _recorded(_client(), name, action, **asked):
                raise exc
        except BaseException as after:  # noqa: BLE001 - exc is raised below whatever happened here
            if after is not exc:
                log.warning("the failed %s of %s could not be recorded (%s: %s)", action, name,
                            type(after).__name__, tracking.mask_text(str(after))[:300])
        raise


def _close_record(client, name: str, outcome: str, reason: str, forced: bool) -> None:
    """The record's outcome, with the aliases as they stand now. A store failing here is logged, not
    raised: what was done is done (production may have moved), and the record shows no outcome."""
    import mlflow

    try:
        now = {alias: _alias_version(client, name, alias) for alias in (PRODUCTION, PREVIOUS)}
        mlflow.set_tags({"outcome": outcome, "forced": str(forced).lower(), "reason": reason[:5000],
                         **{alias: str(mv.version) if mv else "" for alias, mv in now.items()}})
    except Exception as exc:  # noqa: BLE001 - the change's own result or error is what the caller needs
        log.warning("the record of this change of %s could not be completed (%s: %s): it is %s; hsnet promote "
                    "--history shows it without an outcome", name, type(exc).__name__,
                    tracking.mask_text(str(exc))[:300], outcome)


@tracking.as_found
def promotion_history(name: str, max_results: int | None = None) -> list[dict]:
    """The promotions and rollbacks of ``name`` (newest first; all, or the newest ``max_results``), as
    :func:`_recorded` wrote them:
    time (UTC), action, outcome, production and previous after it (versions, None where there was
    none), forced, reason, the user and the Kubeflow run (``kfp_run_id``) that ran it, the record's run."""
    client = _client()
    _require_model(client, name)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    if experiment is None:
        return []
    # MLflow's filter has no escapes: the name in the quote it doesn't hold (both: matched here)
    quote = next((q for q in "'\"" if q not in name), None)
    query = f"tags.step = '{HISTORY_STEP}'" + (f" and tags.model = {quote}{name}{quote}" if quote else "")
    runs, token = [], None
    while max_results is None or len(runs) < max_results:  # page by page: the history has no end
        page = client.search_runs([experiment.experiment_id], query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs += [r for r in page if r.data.tags.get("model") == name]
        token = page.token
        if not token:
            break

    def version(value):
        return int(value) if value and value.isdigit() else None

    return [{"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.info.start_time / 1000)),
             "action": r.data.tags.get("action"), "outcome": r.data.tags.get("outcome", "unfinished"),
             "production": version(r.data.tags.get("production")), "previous": version(r.data.tags.get("previous")),
             "forced": r.data.tags.get("forced") == "true", "reason": r.data.tags.get("reason", ""),
             "user": r.data.tags.get("mlflow.user"), "kfp_run_id": r.data.tags.get("kfp_run_id"),
             "run_id": r.info.run_id} for r in runs][:max_results]


def _require_model(client, name: str) -> None:
    """``name`` is a registered model, or an error naming the models there are (a misspelt name
    would otherwise read as "no candidate version")."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # refused (credentials) or failing: said as it is
            raise HSNetError(f"the registry at {tracking.mask_uri(tracking.connect())} did not answer for {name!r}: "
                             f"{tracking.mask_text(exc.message)[:300]}; check MLFLOW_TRACKING_URI and "
                             "its credentials") from exc
    names = sorted(m.name for m in client.search_registered_models(max_results=1000)
                   if not m.name.endswith(LOCK_SUFFIX))
    raise HSNetError(f"no registered model {name!r} at {tracking.mask_uri(tracking.connect())}: "
                     f"{', '.join(names[:20]) + (' ...' if len(names) > 20 else '') if names else 'none yet'}")


def _promote_locked(client, name, version, metric, min_delta, force) -> dict:
    from mlflow.exceptions import MlflowException

    try:
        if version is None:
            cand = _alias_version(client, name, CANDIDATE)
            if cand is None:
                raise HSNetError(f"{name} has no '{CANDIDATE}' version: register one (hsnet register) "
                                 "or give --version")
        else:
            cand = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise HSNetError(f"{name} version {version}: not found in the registry at "
                         f"{tracking.mask_uri(tracking.tracking_uri())} ({tracking.mask_text(exc.message)})") from exc
    prod = _alias_version(client, name, PRODUCTION)
    key = METRICS[metric]
    decision = {"name": name, "candidate": int(cand.version), "metric": metric, "forced": False,
                "previous": int(prod.version) if prod else None}
    if prod is not None and str(prod.version) == str(cand.version):
        decision.update(promoted=False, reason=f"version {cand.version} is already production")
        return decision
    files_checked = check_model_files(client, name, cand.version)  # ModelChanged: not even with --force
    reasons = []
    try:
        c_fig = _version_figures(client, cand)
    except NoEvaluation as exc:
        c_fig, reasons = None, [str(exc)]
    if c_fig is not None and c_fig["test_split"] != TEST:  # registered by an hsnet that took any split
        reasons.append(f"version {cand.version} was registered with figures on the {c_fig['test_split']} split, which "
                       f"the model was trained or selected on, not {TEST}: evaluate its checkpoint with --split "
                       f"{TEST} and register it again")
    # production's own checkpoint, registered again with its files recorded (an old version that
    # couldn't be checked, replaced by one that can): nothing to compare
    cand_sha = _registered_sha(client, cand) if prod is not None and files_checked else None
    same = cand_sha is not None and cand_sha == _registered_sha(client, prod)
    if same:
        decision["reason"] = f"the same checkpoint as production (version {prod.version}), registered again"
    elif prod is not None and c_fig is not None:
        try:
            p_fig = _version_figures(client, prod)
        except NoEvaluation as exc:
            p_fig, reasons = None, [f"production: {exc}"]
        if p_fig is not None:
            c_val, p_val = c_fig[key], p_fig[key]
            decision.update(candidate_value=c_val, production_value=p_val)
            c_how, p_how = _measured(c_fig), _measured(p_fig)
            # e.g. the same photos cropped again by a newer hsnet (another data version), or the
            # candidate measured with test-time flips: production's checkpoint measured as the candidate was
            there = _valid_evaluation(client, p_fig["checkpoint_sha256"], c_how) if c_how != p_how else None
            if there is not None:
                p_fig, p_how, p_val = there, c_how, there[key]
                decision.update(production_value=p_val, production_evaluation_run_id=p_fig["evaluation_run_id"])
            if c_how != p_how:
                reasons.append(_not_comparable(cand, prod, p_fig, c_how, p_how))
            elif not c_val >= p_val + min_delta:
                reasons.append(f"version {cand.version} {metric} {c_val:.4f} does not beat production "
                               f"(version {prod.version}) {p_val:.4f} by at least {min_delta}")
    if cand.tags.get(ROLLED_BACK_TAG):  # the candidate alias still names a version taken out of production
        reasons.append(f"version {cand.version} was rolled back out of production at {cand.tags[ROLLED_BACK_TAG]}; "
                       "register a new version, or promote this one again with --version "
                       f"{cand.version} --force")
    if reasons and not force:
        raise PromotionRefused("; ".join(reasons) + ". Production is unchanged; use --force to promote anyway")
    if reasons:
        decision.update(forced=True, reason="; ".join(reasons))
    _move(client, name, cand.version, prod)
    client.set_model_version_tag(name, cand.version, "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                   time.gmtime()))
    _clear_rolled_back(client, name, cand)
    if decision["forced"]:
        client.set_model_version_tag(name, cand.version, "promotion_forced", decision["reason"][:5000])
    decision.update(promoted=True, production=int(cand.version))
    if "reason" not in decision:
        decision["reason"] = ("no production version yet" if prod is None else
                              f"{metric} {decision['candidate_value']:.4f} against production's "
                              f"{decision['production_value']:.4f}: at least --min-delta {min_delta} better")
    return decision


def _move(client, name: str, new_version, old) -> None:
    """``previous`` -> the old production, then ``production`` -> ``new_version`` (under the lock).

    Each alias update is one atomic write in the registry; production is overwritten, never
    removed, so a reader always finds one. A move by anything that ignores the lock is reported.
    """
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old.version)
    client.set_registered_model_alias(name, PRODUCTION, new_version)
    now = _alias_version(client, name, PRODUCTION)
    if now is None or str(now.version) != str(new_version):
        raise PromotionLost(f"{name}: something else moved production to version "
                            f"{now.version if now else None} at the same time; check and retry")


def _rollback_versions(client, name: str):
    """(previous, production) for a rollback of ``name``, after the checks a rollback makes (a
    ``previous`` that isn't production already, whose files are those it was registered with)."""
    prev, prod = _alias_version(client, name, PREVIOUS), _alias_version(client, name, PRODUCTION)
    if prev is None:
        raise HSNetError(f"{name} has no '{PREVIOUS}' version to roll back to")
    if prod is not None and str(prod.version) == str(prev.version):
        raise HSNetError(f"{name}: '{PREVIOUS}' is already production (version {prev.version})")
    check_model_files(client, name, prev.version)  # ModelChanged: production stays where it is
    return prev, prod


def _clear_rolled_back(client, name: str, mv) -> None:
    """``mv`` is production again (a second rollback, a forced promotion): what serves is not
    "rolled back"; when it was is kept as ``was_rolled_back_at``."""
    if mv.tags.get(ROLLED_BACK_TAG):
        client.set_model_version_tag(name, mv.version, "was_" + ROLLED_BACK_TAG, mv.tags[ROLLED_BACK_TAG])
        client.delete_model_version_tag(name, mv.version, ROLLED_BACK_TAG)


@tracking.as_found
def rollback_target(name: str) -> int:
    """The version :func:`rollback` would put back in production, checked as it checks it; no alias
    moves. For changing the serving first (``hsnet promote --rollback --deploy``): if that fails,
    the registry is as it was, and running it again does the same again, not a second swap."""
    client = _client()
    _require_model(client, name)
    with failures_recorded(name, "rollback", deploy=True):  # refused: recorded as rollback() records it
        return int(_rollback_versions(client, name)[0].version)


@tracking.as_found
def production_version(name: str) -> int | None:
    """The version the ``production`` alias names now (None: none)."""
    mv = _alias_version(_client(), name, PRODUCTION)
    return int(mv.version) if mv is not None else None


@tracking.as_found
def rollback(name: str, *, expect: int | str | None = None) -> dict:
    """Put the ``previous`` version back in production (and the rolled-back one becomes ``previous``),
    if its model files are those it was registered with (:func:`check_model_files`), as for a
    promotion. ``expect``: the version :func:`rollback_target` named; if ``previous`` moved since,
    nothing changes and the error says so."""
    client = _client()
    _require_model(client, name)
    with _change_recorded(client, name, "rollback", expect=expect) as record:
        prev, prod = _rollback_versions(client, name)
        if expect is not None and str(prev.version) != str(expect):
            raise HSNetError(f"{name}: '{PREVIOUS}' moved to version {prev.version} while version {expect} was being "
                             "deployed (another promotion ran meanwhile); nothing changed in the registry: check "
                             "the aliases and run it again")
        _move(client, name, prev.version, prod)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.set_model_version_tag(name, prev.version, RESTORED_TAG, now)
        _clear_rolled_back(client, name, prev)  # a second rollback brings it back
        if prod is not None:
            client.set_model_version_tag(name, prod.version, ROLLED_BACK_TAG, now)
        else:  # production's version was deleted: no version is previous now
            client.delete_registered_model_alias(name, PREVIOUS)
        return record({"name": name, "production": int(prev.version), "previous": int(prod.version) if prod else None,
                       "promoted": True, "rollback": True,
                       "reason": f"rolled back from version {prod.version if prod else '(deleted)'}"})
