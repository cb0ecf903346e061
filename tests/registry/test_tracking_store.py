"""Where runs and their artifacts are kept when a step runs in a DVC experiment's temporary copy
(``dvc exp run --temp``, ``dvc queue``, what ``hsnet reproduce`` runs): the copy,
``<repo>/.dvc/tmp/exps/...``, is deleted when the experiment ends.

Found by CI stop 23 (an evaluate step failing in one of two concurrent experiments) and
reproduced with dvc: the experiment ``hsnet`` was created by the first step that ran in such a
copy, with its artifacts in that copy, so every checkpoint, metrics.json and plot logged
afterwards (by any run, on any day) went into a folder DVC deletes, and a concurrent experiment
wrote into another's copy while DVC removed it. Without MLFLOW_TRACKING_URI the whole store was
made in the copy and lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _exp_copy(root: Path) -> Path:
    """A folder where DVC runs an experiment's stages (dvc 3: .dvc/tmp/exps/standalone/tmpXXXX)."""
    copy = root / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc123"
    copy.mkdir(parents=True)
    return copy


def test_without_a_tracking_uri_a_step_in_an_experiment_copy_records_in_the_projects_store(tmp_path, monkeypatch):
    from hsnet import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(_exp_copy(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"  # the project's, not the copy's
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"  # as before in the project


def test_artifacts_logged_in_an_experiment_copy_outlive_the_copy(tmp_path, monkeypatch):
    import mlflow

    from hsnet import tracking

    store = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    copy = _exp_copy(tmp_path / "repo")
    monkeypatch.chdir(copy)
    (copy / "metrics.json").write_text('{"accuracy": 0.5}')
    with tracking.run("evaluate-sample", params={"split": "test"}, tags={}) as active:
        mlflow.log_artifact(str(copy / "metrics.json"))
        run_id = active.info.run_id
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(tmp_path / "repo" / ".dvc" / "tmp")  # what DVC does when the experiment ends
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    local = Path(client.download_artifacts(run_id, "metrics.json", str(tmp_path)))
    assert local.read_text() == '{"accuracy": 0.5}'
    # kept beside the store they belong to
    location = client.get_experiment_by_name(tracking.EXPERIMENT).artifact_location
    assert location == (tmp_path / "elsewhere" / "artifacts").as_uri()


def test_an_experiment_made_in_a_deleted_copy_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """Stores made before the fix: the experiment's artifacts point into a DVC copy. Refused before
    the run starts (its artifacts would be lost); renamed as the message says, a new one is made."""
    import mlflow

    from hsnet import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.ensure_store(uri)
    gone = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "standalone" / "tmpold" / "mlflow" / "artifacts"
    client = mlflow.MlflowClient(uri)
    old_id = client.create_experiment(tracking.EXPERIMENT, artifact_location=gone.as_uri())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(tracking.TrackingUnavailable) as refused:
        with tracking.run("train-sample", params={}, tags={}):
            pass
    said = str(refused.value)
    assert str(gone) in said and f"mlflow experiments rename --experiment-id {old_id}" in said, said
    assert not client.search_runs([old_id]) and not (tmp_path / "repo").exists()  # nothing run, nothing written
    client.rename_experiment(old_id, "hsnet-old")  # what the message says to do
    with tracking.run("train-sample", params={}, tags={}):
        pass
    assert client.get_experiment_by_name(tracking.EXPERIMENT).artifact_location == (tmp_path / "artifacts").as_uri()


def test_a_relative_sqlite_uri_in_an_experiment_copy_means_the_projects_store(tmp_path, monkeypatch):
    """README: `mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db`; exported as
    MLFLOW_TRACKING_URI, a relative store is relative to the folder a step runs in: in a DVC copy,
    a store deleted with it."""
    from hsnet import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow/mlflow.db")
    monkeypatch.chdir(_exp_copy(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow/mlflow.db?timeout=30")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}?timeout=30"
    monkeypatch.chdir(tmp_path)  # in the project itself the URI is MLflow's, unchanged
    assert tracking.tracking_uri() == "sqlite:///mlflow/mlflow.db?timeout=30"


def _store_at_schema(tmp_path, monkeypatch, revision: str) -> str:
    """A sqlite tracking store whose recorded schema revision is ``revision`` (alembic_version)."""
    import sqlite3
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the tables at this MLflow's schema, made in another process (this one keeps the stores it opened)
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"],
                   check=True, capture_output=True)
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        con.execute("update alembic_version set version_num = ?", (revision,))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    return uri


@pytest.mark.parametrize("revision, said", [
    # a revision no MLflow here knows: the store was migrated by a later MLflow (its schema moves on
    # with each release, and MLflow migrates a store only forwards: `mlflow db upgrade`)
    ("ffffffffffff", "written by a newer MLflow than"),
    # MLflow's own first migration (mlflow/store/db_migrations/versions/451aebb31d03_add_metric_step.py)
    ("451aebb31d03", "has an older database schema (451aebb31d03)"),
])
def test_a_store_of_another_mlflow_schema_is_refused_with_what_to_do(tmp_path, monkeypatch, capsys, revision, said):
    """MLflow refuses a store whose schema isn't its own with one text for both directions
    ("Detected out-of-date database schema ... run 'mlflow db upgrade'"), which is wrong advice for
    a store a newer MLflow wrote, and hsnet printed it as a traceback (exit 1). Each step says
    which it is and what to do (exit 2, no traceback)."""
    from hsnet.cli import main

    uri = _store_at_schema(tmp_path, monkeypatch, revision)
    assert main(["promote", "--name", "hsnet-sample"]) == 2
    err = capsys.readouterr().err
    assert said in err and uri in err and "Traceback" not in err, err
    assert ("mlflow db upgrade" in err) == (revision == "451aebb31d03")


def test_training_into_a_store_of_a_newer_schema_is_not_called_a_store_that_stopped_answering(
        tiny_data, tiny_params, tmp_path, monkeypatch, capsys):
    from hsnet.cli import main

    _store_at_schema(tmp_path, monkeypatch, "ffffffffffff")
    code = main(["train", "--data", str(tiny_data), "--params", str(tiny_params), "--dataset", "sample",
                 "--out", str(tmp_path / "run"), "--max-epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "written by a newer MLflow" in err and "stopped answering" not in err, err
