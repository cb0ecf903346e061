"""Session 33a's attack on today's changes (cgroup CPU limits, import_path_kept, runs:/ sources)."""
from __future__ import annotations

import sys
import threading

import pytest


def test_an_import_path_entry_another_thread_adds_during_a_model_load_is_kept(tmp_path):
    """import_path_kept takes out of sys.path everything that is not in its snapshot of the first
    body's start, not only what the body (MLflow's loader) added: an entry that the user (a
    notebook cell, another library's import) adds in another thread while a model loads in the
    background (hsnet serve's reload, a notebook's executor) disappears when the load ends, and the
    user's next ``import`` of a module there fails. Expected: MLflow's code/ folder goes, the
    user's entry stays."""
    from hsnet import model_copies

    saved = list(sys.path)
    code, users = str(tmp_path / "model-copy" / "code"), str(tmp_path / "notebook-lib")
    inside, finish = threading.Event(), threading.Event()

    def load():  # what mlflow.pyfunc.load_model does to the import path, in a background thread
        with model_copies.import_path_kept():
            sys.path = [code] + sys.path  # mlflow.utils.model_utils._add_code_to_system_path
            inside.set()
            finish.wait(10)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert inside.wait(10)
        sys.path.append(users)  # the user's own entry, added while the model loads
        finish.set()
        loader.join(10)
        assert code not in sys.path  # the change's point: MLflow's folder is taken out
        assert users in sys.path, "the user's sys.path entry, added during the load in another thread, was removed"
    finally:
        finish.set()
        loader.join(10)
        sys.path[:] = saved


def test_a_cached_runs_model_is_used_while_the_tracking_servers_api_fails(tmp_path, monkeypatch):
    """fetch_model caches ``runs:/RUN_ID/PATH`` copies because run artifacts never change, and
    before this change a cached copy was used without asking the tracking server anything more
    (load_classifier's connect() only checks /health, which MLflow answers without its database).
    fetch_model now resolves the URI (_run_model_source: get_run, then every page of the
    experiment's logged models named NAME, and every hsnet run logs one named "model") before it
    looks in the cache: a copy already cached is refused while the server's database fails or the
    user's token has expired (hsnet predict --model runs:/..., a serve pod restarted on its cache
    volume), and each load of a cached copy costs those requests. Expected: the cached copy."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from hsnet import model_copies

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    mlflow.set_experiment("attack33a")
    with mlflow.start_run() as active:
        mlflow.log_text("flavors: {}\n", "model/MLmodel")  # a run's own model files (MLflow 2's layout)
    uri = f"runs:/{active.info.run_id}/model"
    first = model_copies.fetch_model(uri)
    assert (first / "MLmodel").is_file()

    def down(*args, **kwargs):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 503 != 200. "
                              "Response body: 'database unavailable'")  # /health still answers 200

    monkeypatch.setattr(mlflow.MlflowClient, "get_run", down)
    monkeypatch.setattr(mlflow.MlflowClient, "search_logged_models", down)
    try:
        again = model_copies.fetch_model(uri)
    except MlflowException as exc:
        pytest.fail(f"the cached copy {first} of {uri} was refused while the tracking server's API fails: {exc}")
    assert again == first


def test_a_cgroup2_mount_with_an_empty_source_field_is_read(tmp_path):
    """mountinfo prints a mount's source as given: ``mount -t cgroup2 "" /sys/fs/cgroup`` (mount(2)
    takes an empty source) leaves two spaces after the type ("- cgroup2  rw,nsdelegate"), the
    case util-linux, runc and snapd fixed in their parsers. _cgroup_mounts splits on runs of
    whitespace, finds two fields after the separator, and skips the mount: the container's CPU
    limit (0.25 core) is not seen and every core is counted. Expected: 0.25."""
    from hsnet.io import cgroup_cpu_limit

    mnt = tmp_path / "cg"
    mnt.mkdir()
    (mnt / "cpu.max").write_text("25000 100000\n")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(f"30 25 0:27 / {mnt} rw,nosuid shared:5 - cgroup2  rw,nsdelegate\n")
    (proc / "cgroup").write_text("0::/\n")
    assert cgroup_cpu_limit(proc) == 0.25


def test_a_path_inside_a_runs_logged_model_is_found_as_mlflow_finds_it(tmp_path, monkeypatch):
    """_run_model_source says it resolves ``runs:/RUN_ID/NAME[/PATH]`` as MLflow's runs:/
    repository does; for a logged model it returns ``models:/<model_id>/PATH``. MLflow reads that
    as the registered model <model_id> at version or stage PATH (split_models_uri and
    _parse_model_uri: two parts are NAME/VERSION), not as PATH inside the logged model, so the
    download asks the registry for a registered model that doesn't exist. MLflow's own runs:/
    repository downloads PATH from the logged model's repository. Expected: what MLflow finds."""
    import mlflow

    from hsnet import model_copies

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    experiment = mlflow.set_experiment("attack33a-path")
    client = mlflow.MlflowClient()
    with mlflow.start_run() as active:
        pass
    files = tmp_path / "files"
    (files / "inner").mkdir(parents=True)
    (files / "inner" / "MLmodel").write_text("flavors: {}\n")  # an MLflow model inside the logged model's files
    logged = client.create_logged_model(experiment.experiment_id, name="model", source_run_id=active.info.run_id)
    client.log_model_artifacts(logged.model_id, str(files))
    client.finalize_logged_model(logged.model_id, "READY")
    uri = f"runs:/{active.info.run_id}/model/inner"

    theirs = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "theirs"))
    assert (tmp_path / "theirs" / "model" / "inner" / "MLmodel").is_file(), theirs  # MLflow's own runs:/ finds it
    local = model_copies.fetch_model(uri)
    assert (local / "MLmodel").is_file()


def test_a_runs_downloads_log_line_masks_the_artifact_stores_credentials(tmp_path, monkeypatch, caplog):
    """docs/security.md: "Every URI hsnet prints goes through one rule, hsnet.tracking.mask_uri".
    fetch_model logs ``downloaded URI (SOURCE) to ...`` at INFO and raises "URI is not an MLflow
    model (no MLmodel file in SOURCE)"; SOURCE was the runs:/ URI itself and is now the run's
    artifact URI, unmasked. Artifact roots can hold a password (MLflow's FTP/SFTP stores read
    ``ftp://user:PASSWORD@host/path``); here a file:// root with one, which MLflow's local store
    downloads from as it is. Expected: the password never appears in hsnet's log."""
    import logging

    import mlflow

    from hsnet import model_copies

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts").mkdir()
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(
        "attack33a-creds", artifact_location=f"file://hsnet:s3cret-pw@localhost{tmp_path / 'artifacts'}")
    with mlflow.start_run(experiment_id=experiment) as active:
        mlflow.log_text("flavors: {}\n", "model/MLmodel")
    assert "s3cret-pw@" in active.info.artifact_uri
    with caplog.at_level(logging.INFO, logger="hsnet"):
        local = model_copies.fetch_model(f"runs:/{active.info.run_id}/model")
    assert (local / "MLmodel").is_file()
    assert "downloaded" in caplog.text
    assert "s3cret-pw" not in caplog.text, caplog.text
