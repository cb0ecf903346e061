"""Session 33b's attack on today's changes (runs:/ sources of logged models, import_path_kept)."""
from __future__ import annotations

import time

import pytest


def _store(tmp_path, monkeypatch, experiment: str):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return mlflow.set_experiment(experiment), mlflow.MlflowClient()


def _logged(client, experiment, run_id, folder, files: dict, status: str | None = "READY"):
    """A logged model named "model" of the run holding ``files``; finalized with ``status`` (None:
    left PENDING, as while mlflow.pyfunc.log_model uploads it)."""
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    model = client.create_logged_model(experiment.experiment_id, name="model", source_run_id=run_id)
    client.log_model_artifacts(model.model_id, str(folder))
    if status:
        client.finalize_logged_model(model.model_id, status)
    return model


def test_a_runs_model_logged_again_under_its_name_is_the_one_fetched(tmp_path, monkeypatch):
    """fetch_model caches ``runs:/RUN_ID/NAME`` by run id and NAME ("run artifacts never change"),
    but since this change the files are not the run's artifacts: they are the newest logged model
    NAME of the run (_run_model_source, as MLflow's runs:/ repository finds it), and a run can log a
    model under the same name again (a notebook's second mlflow.pyfunc.log_model(name="model"), a
    retry after a failed upload). MLflow's own download of the URI then gives the new model; hsnet
    predict/serve --model runs:/RUN_ID/model keep the first copy cached, for good. Expected: the
    files MLflow gives for the URI."""
    import mlflow

    from hsnet import model_copies

    experiment, client = _store(tmp_path, monkeypatch, "attack33b-again")
    with mlflow.start_run() as active:
        pass
    run_id = active.info.run_id
    _logged(client, experiment, run_id, tmp_path / "first", {"MLmodel": "flavors: {}\n", "which": "first"})
    uri = f"runs:/{run_id}/model"
    assert (model_copies.fetch_model(uri) / "which").read_text() == "first"

    time.sleep(0.05)  # the newer of the two by creation time (MLflow's order), not by id
    _logged(client, experiment, run_id, tmp_path / "second", {"MLmodel": "flavors: {}\n", "which": "second"})
    theirs = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "theirs"))
    assert (tmp_path / "theirs" / "model" / "which").read_text() == "second", theirs  # MLflow: the new one
    assert (model_copies.fetch_model(uri) / "which").read_text() == "second", \
        "hsnet serves the run's first logged model, cached, where MLflow gives the one logged since"


def test_a_runs_model_still_uploading_is_not_cached_as_whole(tmp_path, monkeypatch):
    """mlflow.pyfunc.log_model makes the logged model (PENDING), uploads its files, then marks it
    READY (FAILED when the upload fails). _run_model_source takes the run's logged model whatever its
    status, and fetch_model caches whatever it downloads once an MLmodel file is among it, by run
    id and NAME, for good: ``hsnet serve --model runs:/RUN_ID/model`` started while the model is
    uploading (MLmodel already there, the weights not yet) keeps that cut copy, and every later
    load, reload or pod restart on the cache volume uses it. Expected: once the model is READY,
    fetch_model's copy holds its files."""
    import mlflow

    from hsnet import model_copies

    experiment, client = _store(tmp_path, monkeypatch, "attack33b-pending")
    with mlflow.start_run() as active:
        pass
    run_id = active.info.run_id
    model = _logged(client, experiment, run_id, tmp_path / "part", {"MLmodel": "flavors: {}\n"}, status=None)
    uri = f"runs:/{run_id}/model"
    try:
        model_copies.fetch_model(uri)  # while it uploads: a refusal or a copy, either is fine
    except Exception:  # noqa: BLE001
        pass
    rest = tmp_path / "rest"
    rest.mkdir()
    (rest / "weights.pt").write_text("the weights")
    client.log_model_artifacts(model.model_id, str(rest))
    client.finalize_logged_model(model.model_id, "READY")
    local = model_copies.fetch_model(uri)
    assert (local / "weights.pt").is_file(), f"the copy of {uri} cached while it uploaded lacks its weights: " \
                                             f"{sorted(p.name for p in local.iterdir())}"


def test_a_model_code_folder_another_thread_loads_during_an_hsnet_load_is_kept(tmp_path):
    """import_path_kept's docstring: "what else was added meanwhile (another thread's, the user's)
    stays". It removes every model ``code/`` folder that is on sys.path at the end of the last body
    and was not at the start of the first, whoever added it: a notebook or an app that loads its
    own MLflow model (mlflow.pyfunc.load_model, code_paths=[...]) in one thread while hsnet loads
    one in another (a background hsnet predict --model, an executor) loses its model's code/
    folder from the import path when hsnet's load ends, and its model's first import from there
    (a lazy import in predict, a pickled object's module) fails with ModuleNotFoundError.
    Expected: hsnet's model's folder goes, the other load's stays."""
    import sys
    import threading

    from hsnet import model_copies

    saved = list(sys.path)
    ours, theirs = tmp_path / "hsnet-copy" / "code", tmp_path / "their-model" / "code"
    for folder in (ours, theirs):
        folder.mkdir(parents=True)
        (folder.parent / "MLmodel").write_text("flavors: {}\n")
    inside, finish = threading.Event(), threading.Event()

    def hsnet_load():  # what load_classifier's body does to the import path, in a background thread
        with model_copies.import_path_kept(ours.parent):  # the copy load_classifier loads
            sys.path = [str(ours)] + sys.path  # mlflow.utils.model_utils._add_code_to_system_path
            inside.set()
            finish.wait(10)

    loader = threading.Thread(target=hsnet_load)
    loader.start()
    try:
        assert inside.wait(10)
        sys.path = [str(theirs)] + sys.path  # the user's own mlflow.pyfunc.load_model, meanwhile
        finish.set()
        loader.join(10)
        assert str(ours) not in sys.path  # the change's point: hsnet's model's folder is taken out
        assert str(theirs) in sys.path, "the code/ folder of a model another thread loaded meanwhile was removed"
    finally:
        finish.set()
        loader.join(10)
        sys.path[:] = saved


def test_a_runs_uri_naming_a_model_the_run_lacks_says_so(tmp_path, monkeypatch):
    """The most common mistake with ``--model runs:/RUN_ID/NAME`` is a NAME the run doesn't have
    (a typo, "models"). Before this change MLflow's runs:/ repository answered "Failed to download
    artifacts from path 'modle', please ensure that the path is correct." Now the run's artifact
    store is asked directly, and its error's first line, the only one load_classifier keeps, is
    "The following failures occurred while downloading one or more artifacts from <path>:" -- the
    failure itself ("No such artifact: 'modle'") is on the next line and is dropped: the user (and
    serve's log and exit message) reads that a download failed, not why. Expected: the message says
    there is no such path in the run."""
    import re

    import mlflow

    from hsnet.errors import HSNetError
    from hsnet.predict import load_classifier

    _store(tmp_path, monkeypatch, "attack33b-typo")
    with mlflow.start_run() as active:
        mlflow.log_text("flavors: {}\n", "model/MLmodel")
    with pytest.raises(HSNetError) as caught:
        load_classifier(f"runs:/{active.info.run_id}/modle")
    said = str(caught.value)
    assert re.search(r"no such|not found|does ?n[o']t exist|path is correct|no MLmodel", said, re.IGNORECASE), said


def test_a_runs_model_whose_upload_failed_is_not_served(tmp_path, monkeypatch):
    """A run logs its model (READY), then logs it again under the same name and that upload fails
    half-way (MLflow marks the logged model FAILED; its MLmodel file was already uploaded, the
    weights not). _run_model_source takes the newest logged model of that name whatever its
    status, and fetch_model caches what it downloaded as a whole copy once MLmodel is in it: hsnet
    serves (and keeps, for good) the cut copy of a model MLflow itself marked as failed, while a
    whole one of the same name is there. Expected: not the FAILED model's files (the READY one's,
    or a refusal)."""
    import mlflow

    from hsnet import model_copies

    experiment, client = _store(tmp_path, monkeypatch, "attack33b-failed")
    with mlflow.start_run() as active:
        pass
    run_id = active.info.run_id
    _logged(client, experiment, run_id, tmp_path / "whole", {"MLmodel": "flavors: {}\n", "weights.pt": "w"})
    time.sleep(0.05)  # the newer of the two by creation time (MLflow's order), not by id
    _logged(client, experiment, run_id, tmp_path / "cut", {"MLmodel": "flavors: {}\n"}, status="FAILED")
    try:
        local = model_copies.fetch_model(f"runs:/{run_id}/model")
    except Exception:  # noqa: BLE001 - a refusal is fine
        return
    assert (local / "weights.pt").is_file(), "the cut files of the run's FAILED logged model were served"

