"""Attack 21h: hsnet.tracking.run / _run_in / connect after commits f9f2632 and c417f43.

Each test states the promise or the independent expectation it checks; each fails on the code it
was written against because of the defect it names, and passes once that defect is fixed.
"""

from __future__ import annotations

import os

import pytest

from tests.test_attack_session21g import mlflow_state  # noqa: F401 - the fixture, used by name below


def _project(path):
    """A folder hsnet takes for a project (its store is then ``path/mlflow/mlflow.db``)."""
    (path / ".dvc").mkdir()
    (path / "dvc.yaml").write_text("stages: {}\n")
    return path


def _fresh_notebook(monkeypatch):
    """A notebook that set no store of its own: its runs go to MLflow's default (``./mlflow.db`` in
    MLflow 3), not hsnet's ``mlflow/mlflow.db``. (`mlflow.set_tracking_uri` would also set
    MLFLOW_TRACKING_URI, which hsnet then takes for its own store.)"""
    from mlflow.tracking import _tracking_service

    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", None)


def test_a_resumed_training_inside_a_notebooks_run_in_another_store_continues(tmp_path, monkeypatch,
                                                                              mlflow_state):  # noqa: F811
    """README (Development): "called inside your own `mlflow.start_run()`, its runs are nested under
    yours"; tracking.run: "``continue_run``: the run of a training being resumed, continued when it
    is there with the same params"; c417f43: "drops the dangling parent tag" of a step nested under
    a notebook's run in another store.

    _run_in deletes the tag `mlflow.parentRunId` of hsnet's run whenever the caller's run is not in
    hsnet's store. A continued run (`start_run(run_id=previous)`) never gets that tag (MLflow sets it
    only on a run it creates), and MLflow's store refuses to delete a tag that isn't there ("No tag
    with name: mlflow.parentRunId"): a training resumed from a notebook, inside the notebook's own
    run (its own store: MLflow's default ./mlflow.db, or a server), fails at its start, where a new
    one would have run. Fix (hsnet/tracking.py, _run_in): delete the tag only when the run has it
    (`"mlflow.parentRunId" in active.data.tags`, or only for a run it created: `not previous`)."""
    from hsnet import tracking

    mlflow = mlflow_state
    monkeypatch.chdir(_project(tmp_path))
    with tracking.run("train-sample", params={"train.lr": 0.01}, tags={}, computes=False) as first:
        interrupted = first.info.run_id  # the training killed after some epochs (its run FINISHED here)
    _fresh_notebook(monkeypatch)
    with mlflow.start_run():  # the notebook's own run, in MLflow's default store
        with tracking.run("train-sample", params={"train.lr": 0.01}, tags={}, computes=False,
                          continue_run=interrupted) as resumed:
            continued = resumed.info.run_id
    assert continued == interrupted


def test_promote_inside_a_notebooks_run_leaves_that_run_usable(tmp_path, monkeypatch, mlflow_state):  # noqa: F811
    """README (Development): "A step leaves the process as it found it ...; called inside your own
    `mlflow.start_run()`, its runs are nested under yours" (hsnet.registry's steps among them);
    c417f43: "a step nested under a notebook's run in another store points MLflow back at that store
    afterwards".

    tracking.run takes the caller's store from `mlflow.get_tracking_uri()` when it starts, and points
    MLflow back there only when that differs from hsnet's. registry.promote (and rollback, register,
    failures_recorded) call `_client()` -> tracking.connect() first, which already pointed MLflow at
    hsnet's store process-wide: tracking.run then sees hsnet's store as the caller's, and leaves
    MLflow there. The notebook's own run is then looked up in hsnet's store: its next
    `mlflow.log_metric` fails with "Run with id=... not found" (and so does its `with` block's end).
    Fix (hsnet/registry.py, _client, and every connect() of a step): keep and put back the caller's
    tracking URI (e.g. tracking.connect as a context manager, or an MlflowClient(uri) without
    mlflow.set_tracking_uri), so that tracking.run finds the caller's store."""
    from hsnet import registry, tracking
    from hsnet.errors import HSNetError

    mlflow = mlflow_state
    monkeypatch.chdir(_project(tmp_path))
    hsnet_store = tracking.connect()
    mlflow.MlflowClient(hsnet_store).create_registered_model("hsnet-sample")  # no candidate yet
    _fresh_notebook(monkeypatch)
    notebook_store = mlflow.get_tracking_uri()  # MLflow's default, ./mlflow.db
    with mlflow.start_run() as mine:
        with pytest.raises(HSNetError):  # refused (no candidate): recorded in promote's history
            registry.promote("hsnet-sample")
        after = mlflow.get_tracking_uri()
        if after == notebook_store:
            mlflow.log_metric("accuracy", 0.5)
        else:  # MLflow's "Run with id=... not found" at the next log and at this block's end
            mlflow.set_tracking_uri(notebook_store)  # (so that the notebook's run still ends here)
    assert after == notebook_store, f"after promote MLflow points at {after}, the notebook's run is in {notebook_store}"
    assert mlflow.MlflowClient(notebook_store).get_run(mine.info.run_id).data.metrics == {"accuracy": 0.5}


def test_a_step_leaves_a_notebooks_own_store_and_experiment_as_it_found_them(tmp_path, monkeypatch,
                                                                             mlflow_state):  # noqa: F811
    """README (Development): "A step leaves the process as it found it: torch's thread count,
    MLflow's active experiment and `MLFLOW_TRACKING_URI`"; f9f2632: "tracked steps leave a
    notebook's experiment ... alone".

    A notebook in the project folder that keeps its runs in MLflow's default store (./mlflow.db; it
    set no MLFLOW_TRACKING_URI) in its own experiment, and calls a step (train, evaluate:
    tracking.run) outside a run of its own:
    tracking.connect points MLflow at hsnet's store process-wide and c417f43 points it back only when
    the notebook had a run active. The notebook's active experiment id is then read in hsnet's
    store, where the same id names experiment hsnet (sqlite numbers experiments 1, 2, ... in each
    store): the notebook's next `mlflow.start_run()` lands among hsnet's training and evaluation
    runs, in hsnet's store. Fix (hsnet/tracking.py, run; registry's connect()): put back the
    tracking URI the process had, whether or not a run was active."""
    from hsnet import tracking

    mlflow = mlflow_state
    monkeypatch.chdir(_project(tmp_path))
    _fresh_notebook(monkeypatch)
    notebook_store = mlflow.get_tracking_uri()  # MLflow's default, ./mlflow.db
    mlflow.set_experiment("notebook")
    with tracking.run("evaluate-sample", params={"a": 1}, tags={}, computes=False):
        pass
    with mlflow.start_run() as mine:
        pass
    where = mlflow.MlflowClient(mlflow.get_tracking_uri()).get_experiment(mine.info.experiment_id).name
    assert mlflow.get_tracking_uri() == notebook_store and where == "notebook", \
        f"the notebook's next run went to experiment {where!r} of {mlflow.get_tracking_uri()}"


def test_a_step_in_a_job_with_mlflow_run_id_makes_its_own_run_in_experiment_hsnet(tmp_path, monkeypatch,
                                                                                 mlflow_state):  # noqa: F811
    """tracking.run: "An MLflow run in experiment ``hsnet``"; README (Development): "A step leaves
    the process as it found it"; the brief's question: does hsnet's run land in someone else's run?

    Job platforms (Databricks jobs, AzureML, SageMaker) start a run for the job and hand it to the
    job's process as `MLFLOW_RUN_ID`, with `MLFLOW_TRACKING_URI` pointing at the same server.
    MLflow's start_run(run_id=None) takes that variable for the run to continue, and ignores the
    `experiment_id` hsnet passes: hsnet train inside such a job writes its params, tags and
    metrics into the job's run, in the job's experiment (where registry and promote, which look in
    experiment hsnet, don't find it; a second step's params clash with the first's), and MLflow
    deletes `MLFLOW_RUN_ID` from the environment on the way, so the job's own later
    `mlflow.start_run()` no longer continues its run. Fix (hsnet/tracking.py, _run_in): take
    MLFLOW_RUN_ID out of the environment around start_run (and put it back), starting hsnet's run
    nested under it, or give start_run hsnet's run explicitly."""
    from hsnet import tracking

    mlflow = mlflow_state
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'server.db'}"
    job_client = mlflow.MlflowClient(store)
    job_experiment = job_client.create_experiment("job")
    job_run = job_client.create_run(job_experiment).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_RUN_ID", job_run)
    with tracking.run("train-sample", params={"train.lr": 0.01}, tags={"step": "train"}, computes=False) as active:
        ours = active.info.run_id
    hsnet_experiment = job_client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    assert ours != job_run, "hsnet's training was recorded in the job's own run"
    assert job_client.get_run(ours).info.experiment_id == hsnet_experiment
    assert os.environ.get("MLFLOW_RUN_ID") == job_run, "the step removed MLFLOW_RUN_ID from the job's environment"
