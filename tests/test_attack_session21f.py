"""Attack 21f: hsnet as a Python library, called from a notebook (one long-lived process).

README: "each step is a function in `hsnet/` with typed inputs and explicit file outputs". A
notebook calls them one after the other, between its own torch and MLflow code, in one process:
what a step changes in that process (torch's threads, MLflow's active experiment and store) stays
changed for every later cell. Each test states the promise or the independent expectation it
checks; each failed on the code it was written against because of the defect it names.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture
def mlflow_state():
    """MLflow's process-wide (fluent) state as the test found it, put back afterwards: the tests
    below set their own, as a notebook would."""
    import mlflow
    from mlflow.tracking import _tracking_service

    uri = mlflow.get_tracking_uri() if _tracking_service.utils.is_tracking_uri_set() else None
    yield mlflow
    while mlflow.active_run():
        mlflow.end_run()
    if uri:
        mlflow.set_tracking_uri(uri)
    elif hasattr(_tracking_service.utils, "_tracking_uri"):
        _tracking_service.utils._tracking_uri = None  # no store of a deleted tmp folder for later tests


def test_train_leaves_torch_thread_count_as_it_found_it(tiny_data, tmp_path):
    """params.py: `num_threads: int | None  # CPU threads; None: torch's`; README (training):
    `num_threads` is one of the settings of "how fast" a run trains.

    Independent expectation: a library function that runs with its own thread count (a setting of
    the run) gives the process its own back when it returns; hsnet.data.crop does exactly that
    around MTCNN (`old = torch.get_num_threads() ... finally: torch.set_num_threads(old)`). train()
    calls torch.set_num_threads(train.num_threads) and never restores it: after one quick
    `num_threads: 1` training in a notebook, every later torch computation of the notebook runs on
    one core, and a second train() with `num_threads: null` ("torch's") runs on that one core too
    (and its MLflow tag system.cpu_threads says 1). Fix: restore the previous count in train()
    (hsnet/train.py, _train / train) when it returns or raises."""
    from hsnet.params import Params
    from hsnet.train import train

    params = Params.resolve(None, "sample", {"input_size": 80, "model": {"ktl": False},
                                             "train": {"epochs": 1, "batch_size": 16, "num_threads": 1}})
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # the notebook's own choice (not 1, whatever the machine has)
    try:
        train(tiny_data, params, tmp_path / "run", track=False, progress=False)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert after == 3, f"train(num_threads=1) left torch at {after} thread(s) for the rest of the process (was 3)"


def test_a_tracked_step_leaves_the_notebooks_active_experiment_alone(trained, tmp_path, monkeypatch, mlflow_state):
    """README: "every train and evaluate run is recorded in experiment `hsnet`" (hsnet's runs).

    Independent expectation: a library call that records its own run in its own experiment does
    not change which experiment the caller's next `mlflow.start_run()` goes to. tracking.run calls
    `mlflow.set_experiment("hsnet")` (process-wide) and leaves it set: after one tracked
    `evaluate()` in a notebook whose runs go to experiment "notebook", the notebook's own next runs
    land in experiment "hsnet", mixed with the pipeline's (where `hsnet promote --history` and
    the registry look). Fix: start hsnet's run with an explicit experiment_id
    (`mlflow.start_run(experiment_id=...)`) instead of set_experiment, or put the caller's active
    experiment back when tracking.run ends (hsnet/tracking.py, run)."""
    from hsnet.evaluate import evaluate

    mlflow = mlflow_state
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mine = mlflow.set_experiment("notebook").experiment_id
    metrics = evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", track=True, progress=False)
    assert mlflow.get_run(metrics["mlflow_run_id"]).info.experiment_id != mine  # hsnet's run: in 'hsnet'
    with mlflow.start_run() as run:
        landed = mlflow.get_experiment(run.info.experiment_id).name
    assert landed == "notebook", f"after hsnet's evaluate() the notebook's own run went to experiment {landed!r}"


def test_the_local_store_follows_the_folder_after_a_first_tracked_step(trained, tmp_path, monkeypatch, mlflow_state):
    """README (MLflow): "`MLFLOW_TRACKING_URI` chooses the server; unset, runs go to the sqlite store
    `mlflow/mlflow.db` of the project ... also from a folder inside the project (the nearest one
    above with `dvc.yaml` and `.dvc/`) ...; outside a DVC project, the current folder's"
    (tracking.tracking_uri reads the variable, else project_root() of the current folder, at each call).

    A notebook with MLFLOW_TRACKING_URI unset that works in project A, then `os.chdir`s to project B
    (or a scratch folder) and runs a step there: the second step's run belongs in B's store. It goes
    to A's: tracking.connect calls `mlflow.set_tracking_uri(A's store)`, which in MLflow 3 also
    writes MLFLOW_TRACKING_URI into os.environ, so from the first tracked step on the variable is
    "set" (by hsnet itself), every later step of the process (and every `!hsnet ...` subprocess the
    notebook starts) records in A's store, and B's `hsnet register` / `promote`, which look in B's
    store, don't find B's evaluation. Fix: don't leave the variable behind (restore os.environ
    after set_tracking_uri, or use MlflowClient(uri) instead of the fluent set_tracking_uri) in
    hsnet/tracking.py, connect."""
    import os

    from hsnet.evaluate import evaluate

    mlflow = mlflow_state
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset-below")  # monkeypatch puts the variable back as it was
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("a", "b"):  # two DVC projects
        (tmp_path / name / ".dvc").mkdir(parents=True)
        (tmp_path / name / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path / "a")
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "a" / "eval", track=True, progress=False)
    assert (tmp_path / "a" / "mlflow" / "mlflow.db").is_file()
    left = os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path / "b")
    metrics = evaluate(trained["checkpoint"], trained["data"], tmp_path / "b" / "eval", track=True, progress=False)
    assert (tmp_path / "b" / "mlflow" / "mlflow.db").is_file(), \
        f"the step run in project b recorded in a's store (MLFLOW_TRACKING_URI left set to {left})"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}")
    assert client.get_run(metrics["mlflow_run_id"]).info.run_id == metrics["mlflow_run_id"]


def test_a_tracked_step_runs_inside_the_notebooks_own_mlflow_run(trained, tmp_path, monkeypatch, mlflow_state):
    """README: "MLflow: every train and evaluate run is recorded in experiment `hsnet`"; the steps
    are library functions (README, "each step is a function in `hsnet/`").

    Independent expectation: a library step that records its own MLflow run can be called while the
    caller has a run open (the usual notebook pattern: `with mlflow.start_run(): ... hsnet steps
    ...` around a sweep), recording its run as it always does and leaving the caller's run active.
    Today tracking.run calls the fluent `mlflow.start_run()` without `nested=`, so evaluate() (and
    train(), register()) fails with MLflow's bare `Exception: Run ... is already active. To start a
    new run, first end the current run with mlflow.end_run()`, an error about MLflow's API, not
    about anything the user gave hsnet. Fix: create hsnet's run through MlflowClient (its own run,
    not the fluent stack), or start it `nested=True` when a run is active (hsnet/tracking.py, run)."""
    from hsnet.evaluate import evaluate

    mlflow = mlflow_state
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("notebook")
    with mlflow.start_run() as mine:
        metrics = evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", track=True, progress=False)
        assert mlflow.active_run() is not None and mlflow.active_run().info.run_id == mine.info.run_id
    theirs = mlflow.get_run(metrics["mlflow_run_id"])
    assert theirs.info.run_id != mine.info.run_id
    assert mlflow.get_experiment(theirs.info.experiment_id).name == "hsnet"
    assert theirs.data.params["checkpoint_sha256"] == metrics["checkpoint_sha256"]


def test_params_resolve_takes_numpy_numbers_from_code():
    """hsnet/params.py: `Params.resolve` takes "overrides (a nested mapping, e.g. from --set)" and
    "returns the merged settings as objects that the steps take as arguments"; a wrong type "is
    refused with its dotted name and what is allowed". params.set_text already handles "numpy
    numbers and arrays" for the overrides it hands on.

    Independent expectation: numpy's scalars are numbers (np.int64 is a numbers.Integral,
    np.float32 a numbers.Real, np.bool_ a truth value). A notebook's sweep over
    `np.arange(16, 65, 16)` batch sizes or `np.linspace` learning rates passes them as they come, and
    is refused today with a message that contradicts itself: "train.batch_size: np.int64(16) is not
    an integer", "train.lr: np.float32(0.5) is not a number". Fix: in params._value, take
    numbers.Integral (operator.index) / numbers.Real / np.bool_ and convert them to plain int,
    float, bool, so that to_dict() stays JSON and YAML."""
    from hsnet.params import Params

    p = Params.resolve(None, "sample", {"input_size": np.int64(80), "model": {"dib": np.bool_(False)},
                                        "train": {"batch_size": np.int64(16), "lr": np.float32(0.5),
                                                  "betas": [np.float64(0.9), np.float32(0.5)]}})
    assert (p.input_size, p.train.batch_size, p.train.lr, p.train.betas, p.model.dib) == (80, 16, 0.5, (0.9, 0.5), False)
    assert [type(v) for v in (p.input_size, p.train.batch_size, p.train.lr, p.model.dib)] == [int, int, float, bool]
    json.dumps(p.to_dict())


def test_params_resolve_treats_both_spellings_of_a_number_in_text_alike():
    """hsnet/params.py, _value: a number given as text is taken when it is written with an exponent
    ("YAML 1.1 reads 1e-3 (no dot) as a string"); Params.resolve refuses "a wrong type ... with its
    dotted name".

    Independent expectation: one number is one number however it is written. From code (a notebook's
    overrides, a value read from a form or an environment variable as text), `{"train": {"lr":
    "1e-2"}}` is taken as 0.01, and `{"train": {"lr": "0.01"}}`, the same value in the same type, is
    refused ("'0.01' is not a number"): whether a sweep runs depends on how its numbers were
    printed. Either take every numeric text for a float setting, or only the YAML-1.1 case (from a
    file), not text given in code (hsnet/params.py, _value)."""
    from hsnet.params import Params, ParamsError

    def outcome(text):
        try:
            return Params.resolve(None, "sample", {"train": {"lr": text}}).train.lr
        except ParamsError:
            return "refused"

    assert outcome("0.01") == outcome("1e-2"), \
        f"lr '0.01' -> {outcome('0.01')!r}, lr '1e-2' -> {outcome('1e-2')!r}: the same number, two answers"


def test_classifier_refuses_a_photo_path_as_hsnet_does(trained):
    """hsnet/predict.py: Classifier "classifies face images"; `as_rgb_array` turns "an array-like
    image (H, W), (H, W, 3) or (H, W, 4)" into RGB and refuses anything else with HSNetError ("an
    image array must be (H, W, 3) RGB uint8"), which the pyfunc turns into its 400 (InputRefused).

    Independent expectation: the natural notebook mistake, the photo's path where its pixels are
    expected (`clf.probabilities(["face.png"])`), is refused by hsnet in its own words. Today numpy
    fails inside as_rgb_array with `UFuncTypeError: ufunc 'clip' did not contain a loop with
    signature matching types (dtype('<U..'), ...)`, nothing a user can act on (and the pyfunc's
    array path, `_array`, catches only HSNetError, so a list of text cells escapes as a server
    error). Fix: in as_rgb_array, refuse a non-numeric dtype (kind not in "biuf") with HSNetError,
    or open a str/PathLike as a file (hsnet/predict.py)."""
    from hsnet.errors import HSNetError
    from hsnet.predict import load_classifier

    clf = load_classifier(trained["checkpoint"], device="cpu")
    face = next(iter(sorted((trained["data"] / "images").rglob("*.png"))))
    try:
        probs = clf.probabilities([str(face)])
    except HSNetError:
        return  # refused in hsnet's words
    assert probs.shape == (1, len(clf.classes))  # or read as the file it names
