"""Local copies of MLflow models, and how their code is loaded.

:func:`fetch_model` keeps a copy of each ``models:/`` version and ``runs:/`` model in hsnet's
cache (``<cache>/models/<tracking server>/``), downloaded once, used only once whole, and shared by
processes (a lock, a marker made last). :func:`no_bytecode` and :func:`import_path_kept` hold
Python's settings around MLflow's load or log of a model's code: no bytecode written into a copy
(or run from it), and no model ``code/`` folder left on ``sys.path``.

Used by ``hsnet predict``, ``hsnet serve`` and registration only: training and evaluation don't
load registered models, so a change here re-runs no training (dvc.yaml's deps).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import HSNetError
from .io import CACHE_ENV, atomic_path, cache_root, remove_stale_temporaries, safe_join, temp_dir
from .tracking import (MODELS_SCHEME, download_timeout, mask_text, mask_uri, may_pass, version_record,
                       version_uri)

log = logging.getLogger(__name__)

# --- the cache: one copy per version or logged model, whole or not used ------------------------------

MODEL_CACHE_KEEP = 5  # model copies kept per tracking server, the most recently used


class ModelUploading(HSNetError):
    """A run's logged model is still being uploaded (PENDING): it may be READY soon."""


def fetch_model(uri: str) -> Path | None:
    """A local copy of the MLflow model at ``uri``, downloaded once and reused.

    ``models:/NAME@ALIAS`` is resolved to its version first; model versions never change, so
    ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH`` are cached under
    ``<cache>/models/<tracking server>/``, of which the :data:`MODEL_CACHE_KEEP` most recently
    used are kept. A version is cached by what it is (its run, source and creation time), not
    only its number: a registered model deleted and registered again starts again at version 1.
    ``runs:/RUN_ID/NAME`` is the run's newest whole logged model NAME (:func:`_run_model_source`),
    cached by its id (a run may log NAME again); where the server fails that lookup, the copy the
    URI gave last stands in (:func:`_last_run_copy`).
    A copy is used only once whole (a marker beside it, made last); leftovers of a download or a
    deletion killed half-way are removed after :data:`~hsnet.io.STALE_TMP_SECONDS`.
    Other URIs (a local folder, ``s3://``): ``None``, MLflow loads them as they are.
    Errors are MLflow's (no such model or alias); the caller names the URI.
    """
    import mlflow

    root = cache_root() / "models" / hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:12]
    if uri.startswith(MODELS_SCHEME):
        mv = version_record(uri)
        name, version = mv.name, str(mv.version)
        which = hashlib.sha256(repr((mv.run_id, mv.source, mv.creation_timestamp)).encode()).hexdigest()[:8]
        source, key = version_uri(name, version), f"{name}-v{version}-{which}"
    elif uri.startswith("runs:/"):
        from mlflow.exceptions import MlflowException

        try:
            source, which = _run_model_source(uri)
        except MlflowException as exc:  # the server failing: the copy this URI gave last time, if any
            kept = _last_run_copy(root, uri) if may_pass(exc) else None
            if kept is None:
                raise
            log.warning("%s: the tracking server failed the run's lookup (%s): using the copy cached before, %s",
                        uri, mask_text(str(exc).splitlines()[0] if str(exc) else "")[:300], kept)
            return kept
        # a run may log a model of the same name again: each is its own copy
        key = "run-" + uri[len("runs:/"):].strip("/") + (f"-{which}" if which else "")
    else:
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    if folder != key:  # 'a b' and 'a_b' are different models: never one cache folder
        folder += "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    local = safe_join(root, folder, what=f"model cache folder for {uri}")
    try:
        whole = _complete(local)
    except OSError as exc:  # another user's cache, kept private (umask 077): the cache, not the registry
        raise HSNetError(f"can't read the model cache {root} for {uri} ({exc.strerror}): set {CACHE_ENV} to a "
                         "folder this user can read and write") from exc
    if not whole:
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = temp_dir(".download-", dir=root)  # the copy: readable by whoever may read the cache
        except OSError as exc:
            raise HSNetError(f"can't download {uri} into the model cache {root} ({exc.strerror}): set "
                             f"{CACHE_ENV} to a writable folder") from exc
        try:
            with download_timeout():
                got = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))
            if not (got / "MLmodel").is_file():
                raise HSNetError(f"{uri} is not an MLflow model (no MLmodel file in {mask_uri(source)})")
            with _cache_lock(root):  # put in place by one process at a time; downloads run side by side
                if not _complete(local):  # else another process's copy is in place: ours is dropped
                    if local.exists():
                        _remove_copy(local)  # a copy cut short: killed before its marker, or left by older code
                    os.rename(got, local)
                    _marker(local).write_text(uuid.uuid4().hex, encoding="ascii")  # last: a copy without it is never used
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s (%s) to %s", uri, mask_uri(source), local)
    if not os.access(root, os.W_OK):  # a read-only cache holding the whole copy (a volume filled before)
        log.debug("%s: the model cache %s is read-only: its copy used as it is", uri, root)
        return local
    with _cache_lock(root):
        os.utime(local)
        if uri.startswith("runs:/"):  # what a failing server's lookup falls back on
            _note_run_copy(root, uri, local)
        for leftover in (".download-*", REMOVING + "*"):
            remove_stale_temporaries(root, leftover)
        copies = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in copies[MODEL_CACHE_KEEP:]:
            if old != local:
                _remove_copy(old)
    return local


# a tracking server's answer to a search for logged models where it has none to search (MLflow 2's
# servers: no such endpoint), not a failure
_NO_LOGGED_MODELS = ("ENDPOINT_NOT_FOUND", "RESOURCE_DOES_NOT_EXIST", "NOT_IMPLEMENTED", "FEATURE_DISABLED")


def _run_index(root: Path, uri: str) -> Path:
    """The file in the model cache naming the copy ``uri`` (a runs:/ URI) gave last."""
    return root / (".run-" + hashlib.sha256(uri.encode()).hexdigest()[:16])


def _note_run_copy(root: Path, uri: str, local: Path) -> None:
    """Name ``local`` in ``uri``'s index (:func:`_run_index`), where it doesn't yet: a cached copy
    is loaded without writing anything (a full disk), and an index that can't be written is no
    reason to refuse a copy that is there."""
    index = _run_index(root, uri)
    try:
        if index.is_file() and index.read_text(encoding="utf-8").strip() == local.name:
            return
        with atomic_path(index, durable=False) as tmp:
            tmp.write_text(local.name, encoding="utf-8")
    except (OSError, ValueError) as exc:
        log.debug("%s: can't name its copy in %s (%s)", uri, index, exc)


def _last_run_copy(root: Path, uri: str) -> Path | None:
    try:
        name = _run_index(root, uri).read_text(encoding="utf-8").strip()
        local = safe_join(root, name, what=f"model cache folder for {uri}")
        return local if name and _complete(local) else None
    except (OSError, ValueError, HSNetError):
        return None


def _run_model_source(uri: str) -> tuple[str, str]:
    """Where the files of ``runs:/RUN_ID/NAME[/PATH]`` are, and which model they are: the newest
    model NAME the run logged that is whole (READY), found as MLflow's runs:/ repository finds it,
    with its id; else the run's own artifacts at NAME/PATH (a model logged by MLflow 2), and "".
    MLflow's repository catches every error of both lookups and says only "please ensure that
    the path is correct" (RESOURCE_DOES_NOT_EXIST): a dropped connection looked like a model that
    doesn't exist, and was never tried again. Here the store's own errors come through. Unlike
    MLflow, a logged model still uploading (PENDING) or cut short (FAILED) is not taken, and the
    run's artifacts are not laid under a logged model's files (hsnet's runs have none there)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if uri.startswith("runs://"):  # a profile's server (runs://PROFILE@databricks/...): MLflow's own lookup
        return uri, ""
    run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)  # no such run: RESOURCE_DOES_NOT_EXIST, said as MLflow says it
    name, _, rest = path.partition("/")
    unfinished = []  # (model id, status) of the run's models NAME that are not whole, newest first
    if name and "'" not in name:  # a quote can't be said in MLflow's filter: none of its models has one
        token = None
        while True:
            try:
                page = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                   filter_string=f"name = '{name}'", page_token=token)
            except MlflowException as exc:
                if exc.error_code not in _NO_LOGGED_MODELS:
                    raise  # the server failing or refusing: said as it is
                break  # a tracking server older than logged models (MLflow 2): the run's artifacts
            for model in (m for m in page if m.source_run_id == run_id):
                if str(model.status) in ("PENDING", "FAILED"):
                    unfinished.append((model.model_id, str(model.status)))
                    continue
                return model.artifact_location.rstrip("/") + (f"/{rest}" if rest else ""), model.model_id
            token = page.token
            if not token:
                break
    if unfinished:
        model_id, status = unfinished[0]
        if status == "PENDING":
            raise ModelUploading(f"{uri}: the run's model {name!r} ({model_id}) is still being uploaded (PENDING): "
                                 "try again once it is READY")
        raise HSNetError(f"{uri}: the run's model {name!r} ({model_id}) failed to upload (FAILED): log it again")
    return run.info.artifact_uri.rstrip("/") + (f"/{path}" if path else ""), ""


@contextmanager
def _cache_lock(root: Path):
    """The model cache of one tracking server, held while copies are put in place or removed (an
    flock on ``root/.lock``, released when the process ends, killed or not)."""
    import fcntl

    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


REMOVING = ".removing-"  # a cached copy being deleted: renamed first, so no half-deleted copy keeps its name


def _marker(copy: Path) -> Path:
    """The file beside a cached copy that says it is whole: made after the copy is in place,
    removed before it is deleted (hidden, and not in the copy, whose files are checked against
    the registry's)."""
    return copy.with_name(".complete-" + hashlib.sha256(copy.name.encode()).hexdigest()[:16])


def _complete(copy: Path) -> bool:
    return _marker(copy).is_file() and (copy / "MLmodel").is_file()


def copy_identity(local: Path) -> str:
    """What :func:`discard_copy` compares: the token in the copy's marker, new with each copy put in
    place (an inode can be reused at once by the next folder), and the folder's inode."""
    try:
        return f"{_marker(local).read_text(encoding='ascii', errors='replace')} {local.stat().st_ino}"
    except FileNotFoundError:  # not (or no longer) a whole copy
        return ""


def discard_copy(local: Path, seen: str) -> None:
    """Remove a cached model copy (:func:`fetch_model`'s), so that the next fetch downloads it again;
    only the copy that was checked (``seen``: its :func:`copy_identity`): when another process has
    already put a new copy in its place, that one is kept."""
    with _cache_lock(local.parent):
        if seen and copy_identity(local) == seen:
            _remove_copy(local)


def _remove_copy(path: Path) -> None:
    """Delete a cached model copy: its marker first, then the copy renamed to a hidden name at once
    (atomic) and removed; a process killed meanwhile leaves only the hidden name, cleaned up later."""
    _marker(path).unlink(missing_ok=True)
    aside = path.with_name(f"{REMOVING}{hashlib.sha256(path.name.encode()).hexdigest()[:16]}-{os.getpid()}-"
                           f"{time.monotonic_ns()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # removed by another process
        return
    shutil.rmtree(aside, ignore_errors=True)


# --- a model's code: Python's settings around MLflow's load or log of it ---------------------------

# held while no_bytecode and import_path_kept change or restore sys (its bytecode settings, its path)
_SYS_LOCK = threading.Lock()
# no_bytecode's bodies running now (those ignoring bytecode found), and Python's settings before the first
_bytecode: dict = {"bodies": 0, "ignoring": 0, "before": (False, None), "empty": None}


@contextmanager
def no_bytecode(*, ignore_found: bool = False):
    """Python writes no bytecode (``__pycache__``) for the body: MLflow imports a model's code from
    its folder when the model is logged (the files registered: only the source, whichever Python
    registers) and when it is loaded (a cached copy, checked at each load). With ``ignore_found``
    it reads none either: a ``.pyc`` beside a checked source (planted, or written by an in-place
    load of the version) is never run instead of it. Bytecode is then looked for in an empty folder
    (``sys.pycache_prefix``), so each module imported for the first time in the body is compiled
    from its source (a model load: about 3 s more on 2 cores). The settings are put back when the
    last such body ends (threads may overlap)."""
    with _SYS_LOCK:
        empty = tempfile.mkdtemp(prefix="hsnet-no-bytecode-") if ignore_found and not _bytecode["ignoring"] \
            else None  # first: a failure here changes nothing
        if not _bytecode["bodies"]:
            _bytecode["before"] = (sys.dont_write_bytecode, sys.pycache_prefix)
        _bytecode["bodies"] += 1
        sys.dont_write_bytecode = True
        if ignore_found:
            if empty is not None:
                _bytecode["empty"] = empty
            _bytecode["ignoring"] += 1
            sys.pycache_prefix = _bytecode["empty"]
    try:
        yield
    finally:
        with _SYS_LOCK:
            _bytecode["bodies"] -= 1
            if ignore_found:
                _bytecode["ignoring"] -= 1
                if not _bytecode["ignoring"]:
                    sys.pycache_prefix = _bytecode["before"][1]
                    shutil.rmtree(_bytecode["empty"], ignore_errors=True)
            if not _bytecode["bodies"]:
                sys.dont_write_bytecode = _bytecode["before"][0]


# import_path_kept's bodies running now, sys.path's entries before the first, and the models' folders
_import_path: dict = {"bodies": 0, "before": frozenset(), "models": set()}


@contextmanager
def import_path_kept(model: str | os.PathLike | None = None):
    """The ``code/`` folder MLflow adds to ``sys.path`` when it loads the model in folder ``model``
    (a cached copy) or logs one (a temporary folder, gone after) is taken out when the body ends:
    MLflow leaves it in front of the import path for good, so ``hsnet serve``, reloading at each
    promotion, searched one more folder, perhaps since removed, at every later import. hsnet is
    imported before any model loads, so its own modules never come from a model's copy. Taken
    out when the last of overlapping bodies (serve's threads) ends: ``model``'s ``code/`` and the
    ``code/`` folders of models whose folder is gone, added meanwhile; another thread's model that
    is still there, and any other entry, stay."""
    with _SYS_LOCK:
        if not _import_path["bodies"]:
            _import_path["before"], _import_path["models"] = frozenset(sys.path), set()
        _import_path["bodies"] += 1
        if model is not None:
            _import_path["models"].add(os.path.abspath(os.path.join(model, "code")))
    try:
        yield
    finally:
        with _SYS_LOCK:
            _import_path["bodies"] -= 1
            if not _import_path["bodies"]:
                before, ours = _import_path["before"], _import_path["models"]
                added = {entry for entry in sys.path if entry not in before and isinstance(entry, str)
                         and (os.path.abspath(entry) in ours or _gone_model_code(entry))}
                if added:
                    sys.path[:] = [entry for entry in sys.path if entry not in added]


def _gone_model_code(entry: str) -> bool:
    """Whether a ``sys.path`` entry is the ``code/`` folder of a model whose folder is gone (MLflow's
    temporary one, when it logs a model): it can't give any import, to anyone."""
    folder = Path(entry)
    return folder.name == "code" and not folder.parent.exists()
