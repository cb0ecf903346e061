"""MLflow tracking: where runs go, what every run records, and a fast failure when the server is down.

The tracking URI is ``MLFLOW_TRACKING_URI``, or a local sqlite store under ``mlflow/``
(no server needed). Credentials (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``,
``AWS_*``) are read by MLflow from the environment and never logged. A URI with
``user:password@`` in it works too: the credentials are moved into those variables and the
URI is used without them. Every URI hsnet prints goes through :func:`mask_uri`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import re
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import HSNetError

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlflow") / "mlflow.db"  # under the project folder
ARTIFACTS = "artifacts"  # the artifacts of a local store: the folder beside it (mlflow/artifacts)
EXPERIMENT = "hsnet"
# where DVC runs an experiment's stages (dvc exp run --temp, dvc queue, hsnet reproduce): a copy of
# the project, <project>/.dvc/tmp/exps/..., deleted when the experiment ends
DVC_EXPERIMENT_COPIES = (".dvc", "tmp", "exps")


class TrackingUnavailable(HSNetError):
    pass


class ServerUnavailable(TrackingUnavailable):
    """The tracking server doesn't answer, or answers 5xx: unlike no store at all, this may pass."""


_SCHEME_CHARS = "[A-Za-z][A-Za-z0-9+.-]*://"  # a URI's scheme and its "://" (RFC 3986 3.1)
_SCHEME = SCHEME = re.compile("^" + _SCHEME_CHARS)  # a text that starts as a URI (not a path)
# a password with a '/', '?' or '#' left unencoded ends the authority early (urllib reads it no
# better): its user:password@ runs to the next '@', unless a port precedes it (host:5000/a@b); an
# IPv6 host ([::1]:5000) is no user
_SPLIT_PASSWORD = re.compile(r"^(?P<user>[^@/:?#\[\]]*):(?P<password>(?!\d{1,5}[/?#])[^@]*)@")
# query values that are secrets: passwords, tokens, keys, and presigned URLs' signatures and
# credentials (S3's X-Amz-Signature / X-Amz-Credential, GCS's X-Goog-Signature, Azure's sig)
_SECRET_QUERY = re.compile(r"(?i)([?&#][^=&#]*(?:password|passwd|pwd|secret|token|key|sig|credential)[^=&#]*=)[^&#]*")
# passwords that say "the user is the token" (GitHub's TOKEN:x-oauth-basic@, or none: TOKEN:@)
_PLACEHOLDER_PASSWORDS = ("", "x-oauth-basic")


def mask_uri(uri: str) -> str:
    """``uri`` as it may be printed or logged: a password in it (``scheme://user:PASSWORD@host``), a
    user part alone (``scheme://TOKEN@host``: a token sent as the user), or a secret query value
    (``password=``, ``token=``, ``X-Amz-Signature=``..., in the query or the fragment) replaced by
    ``***``; a user with a placeholder password or none (``TOKEN:x-oauth-basic@``, ``TOKEN:@``) is the
    token, and is masked whole. The one masking rule."""
    uri = str(uri)
    scheme = _SCHEME.match(uri)
    if scheme:
        head, rest = uri[:scheme.end()], uri[scheme.end():]
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in authority:  # the user part runs to the authority's last '@' (RFC 3986 3.2.1), as urllib reads it
            userinfo = authority.rpartition("@")[0]
            user, has_password, password = userinfo.partition(":")
            shown = f"{user}:***" if has_password and password.lower() not in _PLACEHOLDER_PASSWORDS else "***"
            uri = head + shown + rest[len(userinfo):]
        else:
            uri = head + _SPLIT_PASSWORD.sub(lambda m: f"{m['user']}:***@", rest, count=1)
    return _SECRET_QUERY.sub(r"\1***", uri)


# a URI in a text: its scheme, a user part up to its last '@' (it may hold a quote: "'" is one of
# RFC 3986's sub-delims; never a blank, '"', '<', '>' or '`'), then up to a blank, a quote, or
# where the next URI's scheme begins. A scheme starts where no scheme character precedes (so a
# long run of letters is scanned once, not from each of its positions)
_SCHEME_IN_TEXT = r"(?<![A-Za-z0-9+.-])" + _SCHEME_CHARS
_NEXT_SCHEME = rf"(?!{_SCHEME_IN_TEXT})"
_URI_IN_TEXT = re.compile(rf"{_SCHEME_IN_TEXT}(?:(?:{_NEXT_SCHEME}[^\s@\"<>`])*@)*(?:{_NEXT_SCHEME}[^\s'\"<>`])+")


def mask_text(text: str) -> str:
    """``text`` (an error, a tool's output) with every URI in it through :func:`mask_uri`."""
    return _URI_IN_TEXT.sub(lambda m: mask_uri(m.group(0)), str(text))


def _without_userinfo(uri: str) -> str:
    """An http(s) URI without its ``user:password@`` part (the same URI otherwise)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in SERVER_SCHEMES or "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _move_credentials(uri: str) -> str:
    """``http(s)://user:password@host/...`` -> ``http(s)://host/...`` with the user and password in
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (where MLflow reads them), and the variable
    ``MLFLOW_TRACKING_URI`` rewritten without them, so no later message or child process sees them."""
    clean = _without_userinfo(uri)
    if clean == uri:
        return uri
    userinfo = urllib.parse.urlsplit(uri).netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    if password:  # a user and password, or a token with its placeholder password (TOKEN:x-oauth-basic): basic auth
        os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(user)
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(password)
    else:  # TOKEN@ or TOKEN:@ (mask_uri's token sent as the user): MLflow sends basic auth only with a password
        os.environ["MLFLOW_TRACKING_TOKEN"] = urllib.parse.unquote(user)
    os.environ["MLFLOW_TRACKING_URI"] = clean
    log.debug("MLFLOW_TRACKING_URI carried credentials: moved to MLflow's credential variables")
    return clean


def run_user() -> str | None:
    """The ``mlflow.user`` of hsnet's runs when MLflow's own choice (MLFLOW_TRACKING_USERNAME) is a
    token sent as the user (a placeholder password: ``TOKEN:x-oauth-basic``): the system's user, as
    MLflow records without credentials. None: MLflow's choice stands."""
    if (os.environ.get("MLFLOW_TRACKING_PASSWORD") or "").lower() not in _PLACEHOLDER_PASSWORDS \
            or not os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return None
    import getpass

    try:
        return getpass.getuser()
    except (ImportError, KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        return "unknown"


def _as_mlflow_reads(uri: str | None) -> str | None:
    """MLFLOW_TRACKING_URI as typed (``SQLITE:///...``, a blank pasted at its end) in the one spelling
    MLflow, SQLAlchemy and hsnet's own store rules all read alike: no blanks around it, the scheme
    in lower case (RFC 3986 3.1: a scheme is read in any case; SQLAlchemy refuses ``SQLITE``, and a
    blank kept at the end names another store file). The variable is rewritten with it, for MLflow
    and the child processes."""
    if uri is None:
        return None
    clean = uri.strip()
    scheme, sep, rest = clean.partition("://")
    if sep and _SCHEME.match(clean):
        clean = f"{scheme.lower()}://{rest}"
    if clean != uri:
        os.environ["MLFLOW_TRACKING_URI"] = clean
        log.debug("MLFLOW_TRACKING_URI read as %s", mask_uri(clean))
    return clean


def is_default_store(uri: str) -> bool:
    """Whether ``uri`` is hsnet's own local store (``mlflow/mlflow.db`` of the project: used when
    MLFLOW_TRACKING_URI is not set), which the ``mlflow`` CLI doesn't know by itself."""
    return uri == _sqlite(project_root() / DEFAULT_STORE)


def tracking_uri(create: bool = True) -> str:
    """MLFLOW_TRACKING_URI (its credentials moved out), else the local store ``mlflow/mlflow.db``
    of the project (:func:`project_root`): created for steps that record, refused by name for those that only
    read (``create=False``: a registry lookup), which would otherwise make an empty store wherever
    they run and then not find the model."""
    uri = _as_mlflow_reads(os.environ.get("MLFLOW_TRACKING_URI"))
    if uri:
        return _out_of_experiment_copy(_move_credentials(uri))
    store = project_root() / DEFAULT_STORE
    if not create and not store.is_file():
        raise TrackingUnavailable(f"MLFLOW_TRACKING_URI is not set and there is no local store {DEFAULT_STORE} in "
                                  f"{store.parent.parent} (the store hsnet's steps write, relative to the folder they "
                                  "run in): run this from the project folder, or set MLFLOW_TRACKING_URI "
                                  "(e.g. sqlite:////path/to/project/mlflow/mlflow.db or http://host:5000)")
    store.parent.mkdir(parents=True, exist_ok=True)
    return _sqlite(store)


def _sqlite(path: Path) -> str:
    """The tracking URI of the sqlite store at ``path``."""
    return f"sqlite:///{path}"


def _experiment_copy_project(path: Path) -> Path | None:
    """The project a DVC experiment's temporary copy was made from, when ``path`` is in one."""
    parts = path.parts
    for i in range(len(parts) - len(DVC_EXPERIMENT_COPIES) + 1):
        if parts[i:i + len(DVC_EXPERIMENT_COPIES)] == DVC_EXPERIMENT_COPIES:
            return Path(*parts[:i])
    return None


def _out_of_experiment_copy(uri: str) -> str:
    """A relative sqlite URI names a store in the folder a step runs in; in a DVC experiment's copy,
    a store deleted with the copy: the project's, at the same relative path, instead."""
    db = _sqlite_file(uri)
    project = _experiment_copy_project(Path.cwd().resolve()) if db and not os.path.isabs(db) else None
    if project is None:
        return uri
    query = uri.partition("?")[2]
    moved = f"sqlite:///{project / db}" + (f"?{query}" if query else "")
    log.info("MLFLOW_TRACKING_URI %s is relative, and this step runs in a DVC experiment's temporary copy: "
             "recording in the project's %s", mask_uri(uri), mask_uri(moved))
    return moved


def project_root() -> Path:
    """The folder the local store belongs to: the DVC project the current folder is in (the nearest
    folder at or above it with ``dvc.yaml`` and ``.dvc/``: a command run from ``runs/sample`` records
    in the project's store, not a second one there), else the current folder; in a DVC
    experiment's temporary copy (deleted when the experiment ends, and with it anything recorded
    there), the project it was copied from, so that the runs of ``dvc exp run --temp`` and
    ``dvc queue`` are kept."""
    cwd = Path.cwd().resolve()
    copied_from = _experiment_copy_project(cwd)
    if copied_from is not None:
        return copied_from
    return next((f for f in (cwd, *cwd.parents) if (f / "dvc.yaml").is_file() and (f / ".dvc").is_dir()), cwd)


def _sqlite_file(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and ``:memory:``)."""
    uri = (uri or "").strip()
    if uri[:len("sqlite:///")].lower() != "sqlite:///":
        return None
    path = urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0])  # as SQLAlchemy reads it
    return None if not path or path == ":memory:" else path


SERVER_SCHEMES = ("http", "https")  # a tracking server's URI (MLflow reads the scheme in any case)


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server's (http(s)://, ``HTTP://`` too), not a local store's."""
    scheme, sep, _ = uri.strip().partition("://")
    return bool(sep) and scheme.lower() in SERVER_SCHEMES


def artifact_location(uri: str) -> str | None:
    """Where experiment ``hsnet`` keeps its runs' artifacts when hsnet creates it: beside a SQLite
    store (``<its folder>/artifacts``), the server's choice behind a tracking server, else the
    project's ``mlflow/artifacts``. Never relative to the folder a step runs in, which may be a DVC
    experiment's copy."""
    if is_server(uri):
        return None
    db = _sqlite_file(uri)
    folder = Path(db).resolve().parent if db else project_root() / DEFAULT_STORE.parent
    return (folder / ARTIFACTS).as_uri()


def is_tracking_error(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow's (a store that stopped answering: MlflowException once its
    retries are spent), without importing MLflow where nothing tracked."""
    import sys

    exceptions = sys.modules.get("mlflow.exceptions")
    return exceptions is not None and isinstance(exc, exceptions.MlflowException)


_SCHEMA = re.compile(r"database schema \(found version (?P<found>\w+), but expected (?P<expected>\w+)\)")


def schema_message(exc: BaseException) -> str | None:
    """MLflow's refusal of a store whose database schema isn't its own (``Detected out-of-date
    database schema``, said of an older store and of a newer one alike), as what to do: an older
    store is upgraded with ``mlflow db upgrade``; one a later MLflow wrote needs that MLflow here.
    None for any other error."""
    match = _SCHEMA.search(str(exc)) if is_tracking_error(exc) else None
    if match is None:
        return None
    import mlflow
    from mlflow.store import db_migrations

    versions = Path(db_migrations.__file__).parent / "versions"
    older = any(p.name.startswith(match["found"] + "_") for p in versions.glob("*.py"))
    try:  # the store the step opened: hsnet's (MLflow's own global may name another, set earlier in the process)
        store = mask_uri(tracking_uri(create=False))
    except HSNetError:
        store = mask_uri(mlflow.get_tracking_uri())
    if older:
        return (f"the MLflow store {store} has an older database schema ({match['found']}) than MLflow "
                f"{mlflow.__version__} here uses ({match['expected']}): back the store up, then run "
                f"mlflow db upgrade '{store}' (with its real credentials) and run this again")
    return (f"the MLflow store {store} was written by a newer MLflow than {mlflow.__version__} here (its database "
            f"schema {match['found']} is unknown to this one): run this with the MLflow that wrote it (upgrade "
            "hsnet and mlflow here, or use the image of that release), or set MLFLOW_TRACKING_URI to another "
            "store; a store can't be downgraded")


def _auth_headers() -> dict:
    """The credentials MLflow would send, for our own health check: user and password first, else
    the token (mlflow/utils/rest_utils.py's order)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        import base64

        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training time is spent, when an HTTP tracking server is not answering."""
    if not is_server(uri):
        return
    shown = mask_uri(uri)
    import requests

    try:  # requests, as MLflow sends it: REQUESTS_CA_BUNDLE, a CA folder, and no credentials on a redirect elsewhere
        resp = requests.get(uri.rstrip("/") + "/health", headers=_auth_headers(), timeout=timeout,
                            verify=_verify(), cert=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None)
    except (requests.RequestException, OSError, ValueError) as exc:
        raise ServerUnavailable(
            f"MLflow tracking server {shown} (MLFLOW_TRACKING_URI) is unreachable "
            f"({mask_text(str(exc))}). Start it (mlflow/server.sh), fix MLFLOW_TRACKING_URI, or unset it "
            f"to track in the local store {DEFAULT_STORE}") from exc
    if resp.status_code >= 500:  # below: up (e.g. 401/404 behind a proxy): MLflow reports auth errors itself
        raise ServerUnavailable(f"MLflow tracking server {shown} answered HTTP {resp.status_code}")


def _verify():
    """TLS verification as MLflow sets it: off with ``MLFLOW_TRACKING_INSECURE_TLS`` true (or 1),
    else ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (a CA bundle or a folder of them), else requests'
    default (``REQUESTS_CA_BUNDLE``, then the bundled CAs)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").strip().lower() in ("true", "1"):
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def ensure_store(uri: str | None) -> None:
    """Create or upgrade a SQLite MLflow store under an exclusive lock (``<file>.lock`` beside it).

    Processes that find the store missing or old all run MLflow's table migrations, and all but
    one fail ("duplicate column name", "table _alembic_tmp_experiments already exists"): trainings
    side by side (``--concurrent``, a GPU group), parallel kfp.local steps, ``dvc queue`` workers.
    A new store is built beside its name and renamed into place: MLflow's ~70 migrations are not
    one transaction, so a step killed while creating it leaves no half-made store, only a
    temporary file the next one replaces. Other URIs (a tracking server) need nothing."""
    path = _sqlite_file(uri)
    if not path:
        return
    import fcntl

    import mlflow

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock = open(f"{path}.lock", "a")
    except OSError as exc:
        real = os.path.realpath(path)
        if os.path.isfile(real) and os.path.getsize(real) > 0:
            return  # a store this process can only read (a read-only mount, another user's): MLflow reads it
        raise HSNetError(f"can't create the MLflow store {path} ({exc.strerror or exc}): point MLFLOW_TRACKING_URI "
                         "at a store in a folder this user can write") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        real = os.path.realpath(path)  # a link to a store on a volume: the store is made there
        if not os.path.exists(real) or os.path.getsize(real) == 0:
            for leftover in Path(real).parent.glob(Path(real).name + ".creating-*"):  # killed creations'
                leftover.unlink(missing_ok=True)
            building = f"{real}.creating-{uuid.uuid4().hex[:12]}"  # a new name each time: MLflow keeps an engine per URI
            mlflow.MlflowClient("sqlite:///" + urllib.parse.quote(building)).search_experiments(max_results=1)
            os.replace(building, real)
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - an older hsnet's creation cut short, a damaged file
            if schema_message(exc) is not None:  # another MLflow's store: the step says what to do
                raise
            raise HSNetError(f"the MLflow store {path} can't be opened ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300]}): it may be half-made by a step killed while "
                             "creating it (before hsnet built stores beside their name). Move it aside to start a "
                             "new store, or point MLFLOW_TRACKING_URI at another") from exc


def connect(create: bool = True) -> str:
    """Point MLflow at the tracking URI after checking it answers; returns the URI. ``create``:
    see :func:`tracking_uri` (False where the caller only reads the registry)."""
    import mlflow

    uri = tracking_uri(create)
    check_reachable(uri)
    ensure_store(uri)
    given = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # MLflow 3 also writes it into the environment: the next step in this process (a notebook after
    # os.chdir to another project) would take it for the user's setting and miss its own folder's store
    _set_env("MLFLOW_TRACKING_URI", given)
    # MLflow draws a bar per artifact download (~40 for one model): noise in every log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return uri


MODELS_SCHEME = "models:/"  # MLflow's registry URIs: models:/NAME/VERSION, models:/NAME@ALIAS


def version_uri(name: str, version) -> str:
    """The URI of one registered version: ``models:/NAME/VERSION``."""
    return f"{MODELS_SCHEME}{name}/{version}"


def alias_uri(name: str, alias: str) -> str:
    """The URI of the version an alias points to when it is loaded: ``models:/NAME@ALIAS``."""
    return f"{MODELS_SCHEME}{name}@{alias}"


def version_record(uri: str):
    """MLflow's record of the version ``models:/NAME@ALIAS`` (the alias resolved now) or
    ``models:/NAME/VERSION`` names. Errors are MLflow's; the caller names the URI."""
    import mlflow

    rest = uri[len(MODELS_SCHEME):].strip("/")
    client = mlflow.MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = rest.rpartition("/")
    return client.get_model_version(name, version)


# while the model server loads (tracking.fail_fast): a registry that fails or doesn't answer within
# REGISTRY_TIMEOUT_S reaches hsnet at once, to be logged and maybe tried again. A lookup answers in
# well under a second; a download keeps MLflow's own timeout (120 s), since MLflow's artifact proxy
# sends its first byte only once it has the whole file from the artifact store.
REGISTRY_TIMEOUT_S = 10
_RETRIES_ENV, _TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"
_FAST: dict[str, str] = {}  # what fail_fast set, while it holds


@contextmanager
def fail_fast():
    """MLflow's HTTP retries off and its timeout :data:`REGISTRY_TIMEOUT_S` (each unless the user
    set it) for lookups; :func:`hsnet.model_copies.fetch_model`'s downloads keep MLflow's timeout."""
    ours = {_RETRIES_ENV: "0", _TIMEOUT_ENV: str(REGISTRY_TIMEOUT_S)}
    set_here = {key: value for key, value in ours.items() if key not in os.environ}
    os.environ.update(set_here)
    _FAST.update(set_here)
    try:
        yield
    finally:
        for key in set_here:
            os.environ.pop(key, None)
            _FAST.pop(key, None)


@contextmanager
def download_timeout():
    """MLflow's own timeout for a download, where :func:`fail_fast` shortened it."""
    ours = _FAST.get(_TIMEOUT_ENV)
    if ours is None or os.environ.get(_TIMEOUT_ENV) != ours:
        yield
        return
    os.environ.pop(_TIMEOUT_ENV)
    try:
        yield
    finally:
        os.environ[_TIMEOUT_ENV] = ours


def model_version(uri: str) -> tuple[str, str]:
    """(registered name, version) of ``models:/NAME@ALIAS`` (the alias resolved now) or
    ``models:/NAME/VERSION`` (checked to exist). Errors are MLflow's; the caller names the URI."""
    mv = version_record(uri)
    return mv.name, str(mv.version)


# what MLflow's errors say when the tracking server is unreachable or failing (5xx, 429, a dropped
# connection, a timeout), not answering: a failure that may pass (a refusal or "no such run" won't)
PASSING = re.compile(r"\b(429|50[0-4])\b|Max retries exceeded|Connection ?(Error|refused|reset|aborted|broken)"
                     r"|IncompleteRead|ChunkedEncodingError|timed? ?out", re.IGNORECASE)
# MLflow's error codes for a model, version, alias or run the server doesn't have (an unknown alias
# is INVALID_PARAMETER_VALUE)
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def may_pass(exc) -> bool:
    """Whether an MLflow error is the tracking server failing (:data:`PASSING`), not its answer."""
    return getattr(exc, "error_code", None) not in MISSING and bool(PASSING.search(str(exc)))


def git_commit() -> str:
    """The commit of the hsnet source that runs: ``HSNET_GIT_COMMIT`` (set by the image's build,
    which has no checkout), else the git checkout this package lives in (never the working
    directory's repository), ``-dirty`` when the package's own files have uncommitted changes (not
    the checkout's other files: ``dvc repro`` rewrites dvc.lock and runs/ as it goes); else
    ``unknown``. A checkout git refuses as another user's ("dubious ownership": a shared checkout,
    a container's uid over a host user's files): its commit read from its files, ``-unchecked``
    (git would run that user's configuration to compare the files: never done for them)."""
    if os.environ.get("HSNET_GIT_COMMIT"):
        return os.environ["HSNET_GIT_COMMIT"]
    here = str(Path(__file__).resolve().parent)
    try:
        c_locale = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_MESSAGES")} | {"LC_ALL": "C"}
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             env=c_locale)  # its refusal read in English
        commit = out.stdout.strip() if out.returncode == 0 else ""
        if commit:
            dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no", "--", "."],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return commit + ("-dirty" if dirty else "")
        if "dubious ownership" in out.stderr:
            commit = _head_commit(Path(here))
            if commit:
                log.warning("git refuses the checkout of %s as another user's: its commit %s is read from its "
                            "files, uncommitted changes not checked (-unchecked); `git config --global --add "
                            "safe.directory PATH` (PATH: the checkout) lets git check them", here, commit[:12])
                return commit + "-unchecked"
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # a commit id (SHA-1, or SHA-256 repositories)
_REF = re.compile(r"refs/[A-Za-z0-9._/-]+")


def _git_file(path: Path, limit: int = 4096) -> str | None:
    """A checkout's small file as text: a regular file (never a FIFO or a device a link points
    to), at most ``limit`` bytes read; None otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8")
    finally:
        os.close(fd)


def _head_commit(here: Path) -> str | None:
    """The commit HEAD names in the git checkout holding ``here``, read from its files only (HEAD,
    the ref's file or packed-refs: nothing run, no configuration read); None where not found."""
    for folder in (here, *here.parents):
        dotgit = folder / ".git"
        try:
            if dotgit.is_file():  # a worktree or submodule: "gitdir: PATH"
                text = (_git_file(dotgit) or "").strip()
                if not text.startswith("gitdir:"):
                    return None
                gitdir = folder / text[len("gitdir:"):].strip()
            elif dotgit.is_dir():
                gitdir = dotgit
            else:
                continue
            common = gitdir / (_git_file(gitdir / "commondir") or "").strip() \
                if (gitdir / "commondir").is_file() else gitdir
            head = (_git_file(gitdir / "HEAD") or "").strip()
            if not head.startswith("ref:"):
                return head if _SHA.fullmatch(head) else None
            ref = head[len("ref:"):].strip()
            if not _REF.fullmatch(ref) or ".." in ref.split("/"):
                return None
            for base in (gitdir, common):
                if (base / ref).is_file():
                    sha = (_git_file(base / ref) or "").strip()
                    return sha if _SHA.fullmatch(sha) else None
            if (common / "packed-refs").is_file():
                for line in (_git_file(common / "packed-refs", 64 << 20) or "").splitlines():
                    sha, _, name = line.partition(" ")
                    if name == ref and _SHA.fullmatch(sha):
                        return sha
            return None
        except (OSError, UnicodeDecodeError, ValueError):  # unreadable, not text, a NUL in a path
            return None
    return None


def data_version(manifest: Path) -> str:
    """A version of the data a run used: the sha256 of its manifest (paths, labels, splits).

    Crop manifests embed the source paths, the sources' sha256, the detection boxes and the crops'
    pixels' sha256, so the same raw data cropped the same way gives the same version on any
    machine, and a photo replaced under its name, or cut at another size or margin, another.
    """
    return "sha256:" + hashlib.sha256(Path(manifest).read_bytes()).hexdigest()[:16]


def _cpu_model() -> str:
    """The processor's model name (Linux's /proc/cpuinfo; the platform's word elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model", "hardware")):
                    return line.split(":", 1)[1].strip()[:250]
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def system_tags(device=None) -> dict:
    """What a run's numbers depend on besides its settings and data: the device it computed on
    (``device``, a GPU by its name; the CPU when None) and on the CPU the processor's model, the
    kernels PyTorch picked for it (ATen's AVX512, AVX2, DEFAULT; oneDNN's cap, for the
    convolutions) and the thread count, which change the floating-point sums (docs/results.md,
    "Reproducibility")."""
    import torch

    tags = {"system.python": platform.python_version(), "system.torch": torch.__version__,
            "system.platform": platform.platform(), "system.device": "cpu", "system.cpu": _cpu_model(),
            "system.cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            # the convolutions' kernels are oneDNN's, which picks its own instruction set for the
            # processor (system.cpu) unless capped: the cap, or "off" when PyTorch doesn't use it
            "system.onednn": (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "uncapped")
            if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "off",
            "system.cpu_threads": str(torch.get_num_threads())}
    if device is not None and torch.device(device).type == "cuda":
        tags["system.device"] = torch.cuda.get_device_name(torch.device(device))
        tags["system.cuda"] = str(torch.version.cuda)
    return tags


@contextmanager
def run(run_name: str, *, params: dict, tags: dict, enabled: bool = True, continue_run: str | None = None,
        device=None, computes: bool = True):
    """An MLflow run in experiment ``hsnet`` (created with its artifacts at :func:`artifact_location`),
    tagged with :func:`system_tags` of ``device`` (where its numbers are computed).
    ``continue_run``: the run of a training being resumed, continued when it is there with the same
    params (a retried pod's epochs then join its history, and it ends finished, not RUNNING for
    ever); a new run otherwise. ``computes`` False: a run that computes no numbers (a promotion's
    record) gets no :func:`system_tags` (which import torch: 600 MB more in a small pod)."""
    if not enabled:
        yield None
        return
    import mlflow

    caller = mlflow.active_run()  # a notebook's own run: hsnet's is nested under it
    with _scope():  # MLflow as the caller had it afterwards (inside a step: at the step's end, as_found)
        uri = connect()
        with _run_in(uri, caller, run_name, params=params, tags=tags, continue_run=continue_run, device=device,
                     computes=computes) as active:
            yield active


@contextmanager
def _run_in(uri: str, caller, run_name: str, *, params: dict, tags: dict, continue_run, device, computes):
    """:func:`run`'s run, in the store ``uri`` (MLflow pointed at it): in experiment hsnet, whatever
    experiment the process has active; nested under ``caller`` (a run already active in this thread),
    its parent tag dropped when the caller's run is in another store."""
    import mlflow
    from mlflow.tracking import fluent

    client = mlflow.MlflowClient()
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            client.create_experiment(EXPERIMENT, artifact_location=artifact_location(uri))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a dead store
        raise TrackingUnavailable(f"MLflow tracking store {mask_uri(uri)} is not usable: "
                                  f"{mask_text(str(exc))}") from exc
    if experiment is not None:
        _check_artifact_location(experiment, uri)
    else:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if is_server(uri):  # the server chose its location: a path on its own disk is refused as found ones are
            _check_artifact_location(experiment, uri, made=True)
    flat = {k: ("null" if v is None else v) for k, v in params.items()}
    previous = _continuable(client, continue_run, experiment, flat)
    system = {**(system_tags(device) if computes else {}), **origin_tags()}
    if previous:  # a resumed run on another machine or code: keep where its first epochs ran ("2, then 1")
        before = client.get_run(previous).data.tags
        system = {k: _then(before.get(k), v) for k, v in system.items()}
        tags = {k: _then(before.get(k), v) if k in CODE_TAGS else v for k, v in tags.items()}
    # the experiment named for this run only (set_experiment changed a notebook's own for good); inside a
    # notebook's own run, as a child of it (MLflow allows one active run per thread)
    where = {} if previous else {"experiment_id": experiment.experiment_id}
    held = fluent._active_experiment_id  # MLflow refuses to continue a run outside the active experiment:
    if previous:  # none for that call, the caller's put back after it
        fluent._active_experiment_id = None
    job_run = os.environ.pop("MLFLOW_RUN_ID", None)  # a job's run (Databricks, AzureML): start_run would log into it
    user = run_user()
    try:
        started = mlflow.start_run(run_id=previous, run_name=None if previous else run_name,
                                   nested=caller is not None, tags={"mlflow.user": user} if user else None, **where)
    finally:
        fluent._active_experiment_id = held
        if job_run is not None:
            _set_env("MLFLOW_RUN_ID", job_run)
    with started as active:
        if caller is not None and "mlflow.parentRunId" in client.get_run(active.info.run_id).data.tags \
                and not _holds_run(client, caller.info.run_id):
            client.delete_tag(active.info.run_id, "mlflow.parentRunId")  # a parent this store doesn't have
        mlflow.set_tags({**system, **tags})
        if not previous:
            mlflow.log_params(flat)
        try:
            yield active
        except KeyboardInterrupt:  # Ctrl-C, or a pod's SIGTERM (hsnet.interrupt.Terminated): not a failure
            _end_killed()
            raise


def _end_killed() -> None:
    """End the active run KILLED (MLflow's own context would end it FAILED); a store that fails
    to answer leaves that to MLflow's context, the interrupt being the error to raise."""
    import mlflow

    try:
        mlflow.end_run("KILLED")
    except Exception as exc:  # noqa: BLE001 - the interrupt is what ends the process, not the store
        log.warning("the MLflow run could not be ended as killed (%s: %s)", type(exc).__name__,
                    mask_text(str(exc))[:300])


# MLflow's process-wide settings a step may change, put back by as_found
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")
_as_found = threading.local()


def as_found(step):
    """Decorate a step that uses MLflow: when it returns or raises, MLflow's process-wide state is as
    the caller had it: the tracking URI (:func:`connect` points MLflow at hsnet's store; a notebook's
    own runs and store stay its own), the active experiment, ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_RUN_ID``. Only the outermost step puts it back (a step that calls another keeps hsnet's
    store to its end). MLflow not imported before the step: put back to MLflow's defaults."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        with _scope():
            return step(*args, **kwargs)
    return wrapper


@contextmanager
def _scope():
    """The body of :func:`as_found` (also :func:`run`'s, for a caller that isn't a step)."""
    if getattr(_as_found, "inside", False):
        yield
        return
    saved = _mlflow_settings()
    _as_found.inside = True
    try:
        yield
    finally:
        _as_found.inside = False
        _put_back(saved)


def _mlflow_settings() -> tuple:
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    fluent = sys.modules.get("mlflow.tracking.fluent")
    return (getattr(utils, "_tracking_uri", None), getattr(fluent, "_active_experiment_id", None),
            {name: os.environ.get(name) for name in _MLFLOW_ENV})


def _put_back(saved: tuple) -> None:
    uri, experiment, env = saved
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and utils._tracking_uri != uri:
        utils.set_tracking_uri(uri)  # None: MLflow's default again
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = experiment
    for name, value in env.items():
        if name == "MLFLOW_TRACKING_URI" and value is not None:
            value = _without_userinfo(value)  # its credentials stay where _move_credentials put them
        _set_env(name, value)


def _set_env(name: str, value: str | None) -> None:
    """``os.environ[name]`` set to ``value``, or removed for None."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _holds_run(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]|^\\\\")  # D:\x, D:/x, \\server\share


def _check_artifact_location(experiment, uri: str, *, made: bool = False) -> None:
    """Refuse an experiment whose artifacts would be lost or land outside the project: one kept in
    a DVC experiment's temporary copy (made there by an hsnet before 2026-11-29; DVC deletes the
    copy), or in a folder that no longer exists (the project or its store was moved or renamed:
    MLflow records absolute paths, and would re-create the old ones); behind a tracking server, a
    ``file:`` location or plain path this machine lacks (the experiment made server-less on another
    machine, or a server whose artifact root is a path on its own disk)."""
    location = experiment.artifact_location or ""
    if location.startswith("file:"):
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    elif location and is_server(uri) and len(urllib.parse.urlsplit(location).scheme) <= 1:
        # a plain path (a server started with --default-artifact-root /srv/mlruns, the old way; a
        # letter is a Windows drive): the client writes there too. Checked behind a server only: a
        # local store's own mlruns/N, a plain path, is made lazily and refusing it refused good stores
        path = Path(location)
    else:
        return
    if not (_sqlite_file(uri) or is_server(uri)):
        return
    if is_server(uri):  # MLflow's client writes a local location's artifacts itself, to its own disk
        foreign = os.name != "nt" and bool(_WINDOWS_PATH.match(location))  # on Linux, one odd name in "."
        if path.parent.is_dir() and not foreign:
            return  # the machine that made it (the server beside make pipeline's store): its own folder
        if made:
            raise TrackingUnavailable(
                f"the tracking server {mask_uri(uri)} gave the new MLflow experiment {experiment.name!r} (id "
                f"{experiment.experiment_id}) the artifact location {location}, a path on its own disk, which this "
                f"machine lacks: MLflow's client would write the run's artifacts (the model) there on this machine's "
                f"disk, where neither the server nor anyone else reads them. Start the server {_UPLOAD_THROUGH}; then "
                f"rename this experiment ({_rename_command(experiment, uri)})")
        where = ("a path on the disk of the machine that made the experiment (a server-less run, e.g. make "
                 "pipeline, whose store this server now serves, or a server started with a path as its "
                 "--default-artifact-root), which this machine lacks: MLflow would write there on this machine's "
                 "disk, where neither the server nor anyone else reads them")
    elif _experiment_copy_project(path) is not None:
        where = "inside a DVC experiment's temporary copy, which DVC deletes"
    elif not path.parent.is_dir():
        where = ("in a folder that no longer exists (the project or its store was moved or renamed; MLflow "
                 "records absolute paths and would create the old ones again)")
    else:
        return
    raise TrackingUnavailable(
        f"MLflow experiment {experiment.name!r} (id {experiment.experiment_id}) in {mask_uri(uri)} keeps its runs' "
        f"artifacts at {path}, {where}: what this run logs would be lost or written outside the project. Rename "
        f"it ({_rename_command(experiment, uri)}); hsnet then makes a new {experiment.name!r} "
        f"with its artifacts {'stored by the server' if is_server(uri) else 'beside the store'}"
        f"{_SERVER_ROOT if is_server(uri) else ''}. The old runs keep the paths they recorded")


# how a tracking server stores the artifacts itself (mlflow/server.sh starts it so)
_UPLOAD_THROUGH = ("with --serve-artifacts --artifacts-destination (as mlflow/server.sh does), so that clients upload "
                   "through it")
# a server whose own default is a path makes the new experiment's a path again
_SERVER_ROOT = (" (a server started with a path as its --default-artifact-root gives the new one a path again: start "
                f"it {_UPLOAD_THROUGH})")


def _rename_command(experiment, uri: str) -> str:
    """The command that moves ``experiment`` out of hsnet's way (hsnet then makes a new one)."""
    return (f"MLFLOW_TRACKING_URI={mask_uri(uri)} mlflow experiments rename --experiment-id "
            f"{experiment.experiment_id} --new-name {experiment.name}-old")


PIPELINE_RUN_ENV = "KFP_RUN_ID"  # a Kubeflow step's pipeline run id (set from its pod's label: pipelines/)


def origin_tags() -> dict:
    """What started a run, where the environment says: the Kubeflow pipeline run (``kfp_run_id``) and
    the DVC experiment (``dvc_experiment``, ``dvc_baseline_rev``: DVC sets them for ``dvc exp run``;
    the experiment's params and dvc.lock are in its Git ref)."""
    names = {"kfp_run_id": PIPELINE_RUN_ENV, "dvc_experiment": "DVC_EXP_NAME", "dvc_baseline_rev": "DVC_EXP_BASELINE_REV"}
    return {tag: os.environ[env] for tag, env in names.items() if os.environ.get(env)}


def trained_by(meta: dict) -> dict:
    """The tags naming the code and runs that trained a checkpoint (its ``meta``): ``train_git_commit``
    and ``train_code_version`` ("A, then B" for a training resumed at other code, from
    ``meta["lineage"]``), ``train_run_id`` (the run of its last epochs; ``train_run_ids`` when they are
    several), ``stem_weights_sha256`` (KTL's stem file). Absent what the checkpoint doesn't record
    (trained with --no-mlflow: no run)."""
    segments = meta.get("lineage") or [{k: meta.get(k) for k in ("git_commit", "code_version", "mlflow_run_id")}]

    def joined(key: str) -> str | None:
        values = []
        for s in segments:
            if s.get(key) and (not values or values[-1] != s[key]):
                values.append(str(s[key]))
        return ", then ".join(values) or None

    tags = {"train_git_commit": joined("git_commit"), "train_code_version": joined("code_version"),
            "train_run_id": meta.get("mlflow_run_id"), "train_run_ids": joined("mlflow_run_id"),
            "stem_weights_sha256": meta.get("stem_weights_sha256")}
    if tags["train_run_ids"] == tags["train_run_id"]:
        del tags["train_run_ids"]
    return {k: str(v) for k, v in tags.items() if v}


CODE_TAGS = ("git_commit", "code_version")  # a continued run keeps its earlier values too, as system tags


def _then(before: str | None, now: str) -> str:
    """A system tag of a continued run: ``now``, after what it was if that differs ("2, then 1")."""
    if before is None or before == now:
        return now
    return before if before.endswith(f", then {now}") else f"{before}, then {now}"


def _continuable(client, run_id: str | None, experiment, params: dict) -> str | None:
    """``run_id`` if that run is in ``experiment``, not deleted, with these params; else None."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        old = client.get_run(run_id)
    except MlflowException:
        log.warning("MLflow run %s of the resumed training is not on this tracking server: a new run", run_id)
        return None
    now = {k: str(v) for k, v in params.items()}
    if old.info.lifecycle_stage != "active":
        why = "was deleted"
    elif old.info.experiment_id != experiment.experiment_id:
        why = f"is in another experiment ({old.info.experiment_id})"
    elif old.data.params != now:
        changed = sorted(k for k in old.data.params.keys() | now.keys() if old.data.params.get(k) != now.get(k))
        why = (f"was recorded with other params ({', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}: "
               "other settings, or an older hsnet's names)")
    else:
        return run_id
    log.warning("MLflow run %s of the resumed training %s: a new run, tagged resumed_from_run, with the "
                "checkpoint's epochs", run_id, why)
    return None
