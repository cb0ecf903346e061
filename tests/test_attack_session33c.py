"""Session 33c's attack on the 33b fixes (runs:/ fallback index, PENDING models, import_path_kept(model))."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def _store(tmp_path, monkeypatch, experiment: str):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return mlflow.set_experiment(experiment), mlflow.MlflowClient()


def _cached_run_model(tmp_path, monkeypatch, experiment: str):
    """A run with its own model files (MLflow 2's layout, as 33a's test), fetched once: (uri, copy)."""
    import mlflow

    from hsnet import model_copies

    _store(tmp_path, monkeypatch, experiment)
    with mlflow.start_run() as active:
        mlflow.log_text("flavors: {}\n", "model/MLmodel")
    uri = f"runs:/{active.info.run_id}/model"
    first = model_copies.fetch_model(uri)
    assert (first / "MLmodel").is_file()
    return uri, first


def test_a_cached_runs_model_still_loads_when_the_cache_disk_is_full(tmp_path, monkeypatch):
    """Since 71ced2d every fetch of a runs:/ model writes the index file ``.run-<hash>`` (a new
    temporary file, its text, a rename), also when the copy was cached long ago and the index
    already names it. Before, a cached copy was only touched (os.utime: no data written). A cache
    volume that has filled up (the serve pod's model cache, a laptop's disk) now makes the load of
    an already cached runs:/ model fail: load_classifier says "can't load it from MLflow at ...
    (OSError: [Errno 28] No space left on device ...). Check the run id ... and
    MLFLOW_TRACKING_URI", and hsnet serve (HSNetError over an OSError: _may_pass False) ends.
    A full disk is simulated with RLIMIT_FSIZE 0 in a child process (every write of file data
    fails, as on a full filesystem; creating, renaming and touching files still work).
    Expected: the cached copy, as before the change (only a fetch that must download needs space)."""
    uri, first = _cached_run_model(tmp_path, monkeypatch, "attack33c-full")
    child = textwrap.dedent("""
        import resource, signal, sys
        from hsnet import model_copies
        model_copies._run_model_source(sys.argv[1])  # the store opened (and MLflow imported) before the disk fills
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            print("GOT", model_copies.fetch_model(sys.argv[1]))
        except BaseException as exc:
            print("FAILED", type(exc).__name__, exc)
    """)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", child, uri], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    said = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-1500:]
    assert said == f"GOT {first}", f"the cached copy of {uri} was not given on a full cache disk: {said}"


def _refusal(status: int, body: bytes):
    """The exception MLflow's REST client raises for an HTTP answer (mlflow.utils.rest_utils)."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.utils.rest_utils import verify_rest_response

    response = requests.Response()
    response.status_code, response._content, response.encoding = status, body, "utf-8"
    with pytest.raises(MlflowException) as caught:
        verify_rest_response(response, "/api/2.0/mlflow/runs/get")
    return caught.value


@pytest.mark.parametrize("status,body", [(401, b'{"message": "Unauthorized"}'),
                                         (403, b'{"message": "Forbidden"}')])
def test_a_runs_lookup_refused_by_an_auth_gateway_is_not_answered_with_the_cached_copy(
        status, body, tmp_path, monkeypatch):
    """docs/security.md: the ``.run-<hash>`` copy is "used only when the tracking server fails the
    lookup (not when it answers that the run is missing, or refuses)", and it recommends running
    the server "behind authentication (a reverse proxy ...)". fetch_model tells a refusal by the
    MLflow error code alone (_ANSWERED: PERMISSION_DENIED, UNAUTHENTICATED). MLflow gives those
    codes only for a 401/403 whose body is not JSON; an API gateway or auth proxy that answers
    JSON without an ``error_code`` (AWS API Gateway's and Kong's ``{"message": "Unauthorized"}``,
    ``{"message": "Forbidden"}``) becomes RestException INTERNAL_ERROR ("INTERNAL_ERROR:
    Unauthorized"): revoked or expired credentials are then taken for a failing server and the
    stale cached copy is served, with a warning that the server "failed the run's lookup".
    Expected: the refusal is raised, as for MLflow's own basic-auth app."""
    import mlflow

    from hsnet import model_copies

    uri, first = _cached_run_model(tmp_path, monkeypatch, f"attack33c-refused-{status}")
    refused = _refusal(status, body)

    def refuse(*args, **kwargs):
        raise refused

    monkeypatch.setattr(mlflow.MlflowClient, "get_run", refuse)
    monkeypatch.setattr(mlflow.MlflowClient, "search_logged_models", refuse)
    try:
        got = model_copies.fetch_model(uri)
    except Exception:  # noqa: BLE001 - the refusal, said: expected
        return
    pytest.fail(f"HTTP {status} {body!r} (MLflow: {refused.error_code}: {refused}) was answered with the "
                f"cached copy {got}")


def test_loading_a_file_uri_model_leaves_no_code_folder_on_the_import_path(tmp_path, monkeypatch):
    """Before 71ced2d import_path_kept took out every model ``code/`` folder (MLmodel beside it)
    that MLflow added during the load. Now it takes out only the folder it is given and those whose
    model folder is gone, and load_classifier gives it ``local`` (a cached copy) or ``text`` "if
    Path(text).is_dir()" -- but a text reaches that line only when it holds "://" or is a models:/
    or runs:/ URI, so a ``file:///...`` model (the URI load_classifier accepts for a local model
    folder) is never a dir by that test: None is passed and MLflow's ``<model>/code`` stays in front
    of sys.path for good, one more per load (a notebook or script calling load_classifier in a loop
    grows the import path, as d7725a4 described for serve). Expected: sys.path as before the load."""
    from hsnet.predict import load_classifier

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "attack33c_loader.py").write_text("def _load_pyfunc(path):\n    return object()\n")
    (model / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: attack33c_loader\n"
                                   "    code: code\n")
    saved = list(sys.path)
    try:
        try:
            load_classifier(model.as_uri())
        except Exception:  # noqa: BLE001 - not an hsnet model: only the import path matters here
            pass
        left = [entry for entry in sys.path if entry not in saved]
        assert str(model / "code") not in sys.path, f"entries left on sys.path by the load: {left}"
    finally:
        sys.path[:] = saved
        sys.modules.pop("attack33c_loader", None)
