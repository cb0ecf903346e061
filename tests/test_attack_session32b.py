"""Attack 32b: the model cache's file check against Python's bytecode cache (commits 9a4cc18,
hsnet.model_copies.no_bytecode, and 6f01244, bytecode left out of hsnet.registry's check and removed
from hsnet's copy), for the versions and caches that older hsnet left behind."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from importlib._bootstrap_external import _code_to_timestamp_pyc
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from servers import read_only

from hsnet.errors import HSNetError

pytestmark = pytest.mark.slow

NAME = "hsnet-sample"


def _register_as_before_9a4cc18(trained, metrics, monkeypatch, name: str = NAME) -> int:
    """``hsnet register`` as hsnet registered on a user's box before 9a4cc18 (PYTHONDONTWRITEBYTECODE
    unset, no model_copies.no_bytecode): MLflow's check of the input example imports mlflow_model.py from
    the folder it then uploads, so ``__pycache__/mlflow_model.cpython-3XX.pyc`` is registered too
    (and is in the version's recorded digest)."""
    from hsnet import model_copies
    from hsnet.registry import register

    with monkeypatch.context() as before:
        before.setattr(sys, "dont_write_bytecode", False)
        before.setattr(model_copies, "no_bytecode", contextlib.nullcontext)
        return register(trained["checkpoint"], metrics, "sample", name=name)["version"]


def _store_folder(client, name: str, version) -> Path:
    """Where the local store holds a version's model files (its own folder: what loads in place)."""
    model_id = client.get_model_version(name, str(version)).source.removeprefix("models:/")
    return Path(unquote(urlparse(client.get_logged_model(model_id).artifact_location).path))


def test_a_version_registered_before_9a4cc18_survives_a_notebooks_in_place_load(trained, tmp_path, monkeypatch):
    """docs/security.md (6f01244): Python's bytecode written "into a version's own folder whenever
    something loads it in place (a notebook's mlflow.pyfunc.load_model or mlflow models serve on a
    local store) ... must not make the version 'changed' for good", and "Bytecode registered with a
    version by older hsnet is checked as the other files are".

    Together they fail for every version an older hsnet registered on a user's box (9a4cc18: that
    hsnet "uploaded mlflow_model's .pyc with the model"): the recorded digest holds the registered
    ``__pycache__/mlflow_model.cpython-3XX.pyc``; a notebook's ``mlflow.pyfunc.load_model``
    (README's Python example) or README's ``mlflow models serve`` (which no longer sets
    PYTHONDONTWRITEBYTECODE) loads the version in place from hsnet's local store and Python adds ``code/hsnet/__pycache__/*.pyc`` (this test machine sets
    PYTHONDONTWRITEBYTECODE; a user's box doesn't). hsnet.registry._check_files then compares the
    recorded digest with the digest of all files (the new bytecode is in it) and with the digest of
    no bytecode at all (the registered .pyc is missing from it): neither matches, and the production
    model is refused for good as "changed after registration ... check who can write to the tracking
    server" by hsnet predict, hsnet serve, promote and rollback, and a re-registration of its
    checkpoint makes a new version. Only Python's own cache was added; the registered files,
    registered bytecode included, are all there unchanged."""
    import mlflow
    from mlflow_store import seed_store

    from hsnet.evaluate import evaluate
    from hsnet.predict import load_classifier
    from hsnet.registry import ModelChanged, check_model_files, promote

    project = tmp_path / "project"  # as make pipeline leaves it: hsnet's default store mlflow/mlflow.db
    db = seed_store(project / "mlflow" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(project)
    evaluate(trained["checkpoint"], trained["data"], project / "runs" / "eval", progress=False)
    version = _register_as_before_9a4cc18(trained, project / "runs" / "eval" / "metrics.json", monkeypatch)
    assert promote(NAME)["production"] == version
    client = mlflow.MlflowClient()
    folder = _store_folder(client, NAME, version)
    registered = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.pyc"))
    assert registered, "the scenario: bytecode registered with the version, as before 9a4cc18"
    registered_bytes = {rel: (folder / rel).read_bytes() for rel in registered}
    assert check_model_files(client, NAME, version)  # as registered: checked and fine

    # a notebook's load, as README's Python example does it (README's mlflow models serve, which no
    # longer sets PYTHONDONTWRITEBYTECODE, loads the same folder in place too)
    notebook = ('import mlflow\n'
                'mlflow.set_tracking_uri("sqlite:///mlflow/mlflow.db")\n'
                f'model = mlflow.pyfunc.load_model("models:/{NAME}@production")\n')
    env = {k: v for k, v in os.environ.items()  # a user's box: Python writes bytecode
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "MLFLOW_TRACKING_URI")}
    run = subprocess.run([sys.executable, "-c", notebook], cwd=project, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the notebook's load failed:\n{run.stderr[-3000:]}"
    added = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.pyc")
                   if p.relative_to(folder).as_posix() not in registered)
    assert added, "the scenario: Python wrote its bytecode into the version's folder"
    # the registered files themselves, registered bytecode included, are as registered
    assert {rel: (folder / rel).read_bytes() for rel in registered} == registered_bytes

    try:
        assert check_model_files(client, NAME, version)  # what promote, rollback and register check
        clf = load_classifier(f"models:/{NAME}@production", device="cpu")  # hsnet predict, hsnet serve
    except ModelChanged as exc:
        pytest.fail(f"registered with {registered}; the in-place load added {added[:3]}... "
                    f"({len(added)} files); hsnet now refuses the version: {exc}")
    assert clf.classes


def test_a_read_only_cache_holding_bytecode_older_hsnet_wrote_is_used_or_refused_by_name(
        local_mlflow, trained, tmp_path, monkeypatch):
    """README: "a read-only cache that holds the whole copy is used as it is" (a volume filled
    before: an init container, the InferenceService's read-only root filesystem); docs/security.md
    (6f01244): bytecode beside a version's files "is removed from hsnet's copy after the check, so
    Python compiles the sources that were checked".

    A copy that hsnet before 9a4cc18 loaded holds the ``__pycache__/mlflow_model.cpython-3XX.pyc``
    Python wrote there at that load (that was the bug 9a4cc18 fixed). Mounted read-only, the new
    check finds the registered files plus bytecode, and _drop_bytecode's shutil.rmtree fails with
    EROFS: the OSError comes out of check_model_files as no HSNetError of the cache's, and the user
    reads "can't load it from MLflow ... Check the name and alias (hsnet promote) and
    MLFLOW_TRACKING_URI" (before 6f01244 the same copy got "the model cache can't be written ...:
    remove the copy, or set HSNET_CACHE_DIR to a writable folder"). It must be used without running
    that bytecode (it was never checked), or refused with a message that names the cache's
    remedy (HSNET_CACHE_DIR), as tests/test_attack_session22c.py asks of a read-only cache."""
    from hsnet.evaluate import evaluate
    from hsnet.predict import load_classifier
    from hsnet.registry import register

    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    version = register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name=NAME)["version"]
    load_classifier(f"models:/{NAME}/{version}", device="cpu")  # the whole copy, in the cache
    cache = tmp_path / "cache"
    (copy,) = [p for p in (cache / "models").glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    assert (copy / "MLmodel").is_file() and not list(copy.rglob("*.pyc"))

    # what a load by hsnet before 9a4cc18 left in the copy: Python's bytecode of mlflow_model.py,
    # with a header matching the copy's source (a line prepended that says whether it ran)
    source = copy / "mlflow_model.py"
    marker = tmp_path / "unchecked-bytecode-ran"
    code = compile(f"open({str(marker)!r}, 'w').close()\n" + source.read_text(), str(source), "exec")
    st = source.stat()
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(_code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size))

    with read_only(cache):
        try:
            clf = load_classifier(f"models:/{NAME}/{version}", device="cpu")
        except HSNetError as exc:
            assert not marker.exists(), "hsnet ran bytecode it never checked"
            assert "HSNET_CACHE_DIR" in str(exc) and "Check the name and alias" not in str(exc), (
                f"a read-only cache whose copy holds old bytecode, reported as: {exc}")
        else:
            assert clf.classes
            assert not marker.exists(), "hsnet ran bytecode it never checked"


def test_two_loads_of_a_copy_with_bytecode_beside_it_both_succeed(local_mlflow, trained, tmp_path):
    """6f01244: bytecode beside a version's files (the version loaded in place by a notebook or
    README's ``mlflow models serve``, then downloaded into hsnet's cache with it) "is removed from
    hsnet's copy after the check". Two hsnet processes that load the version at once (two
    ``hsnet predict`` runs started together, ``hsnet serve`` and ``hsnet predict`` on one box: the
    model cache is shared, ~/.cache/hsnet) check the same copy and both remove its ``__pycache__``
    folders, and one of the loads fails ("can't load it from MLflow ... Check the name and
    alias"): the digest of a bytecode file the other has just removed, or shutil.rmtree of a folder
    it removed, raises FileNotFoundError in whichever comes second (_drop_bytecode runs outside the
    cache's lock). The copy's files are as registered: both must load it. Here the two checks run
    in two threads (what _checked_copy calls), twelve times over."""
    import py_compile
    import threading

    import mlflow

    from hsnet.evaluate import evaluate
    from hsnet.predict import load_classifier
    from hsnet.registry import check_model_files, register

    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    version = register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name=NAME)["version"]
    load_classifier(f"models:/{NAME}/{version}", device="cpu")  # the whole copy, in the cache
    (copy,) = [p for p in (tmp_path / "cache" / "models").glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    client = mlflow.MlflowClient()
    sources = sorted(copy.rglob("*.py"))

    failures = []
    for _ in range(12):
        for source in sources:  # what an in-place load has Python write beside them
            py_compile.compile(str(source), doraise=True)
        assert list(copy.rglob("__pycache__"))
        barrier, errors = threading.Barrier(2), []

        def load():
            barrier.wait()
            try:
                check_model_files(client, NAME, version, copy)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failures += errors
        # (the fix removes nothing from the copy: Python never reads bytecode there while hsnet loads)
    assert not failures, f"{len(failures)} of 24 concurrent checks of the same copy failed: {failures[:2]}"
