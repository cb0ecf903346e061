"""Attack 21g: the fixes of attacks 21e and 21f (commit f9f2632).

Each test states the promise or the independent expectation it checks; each fails on the code it
was written against because of the defect it names, and passes once that defect is fixed.
"""

from __future__ import annotations


import numpy as np
import pytest


@pytest.fixture
def mlflow_state(monkeypatch):
    """MLflow's process-wide (fluent) state as the test found it, put back afterwards: the store,
    the active experiment and the active runs (the tests below set their own, as a notebook would)."""
    import mlflow
    from mlflow.tracking import _tracking_service, fluent

    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", _tracking_service.utils._tracking_uri)
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.setenv(name, "unset-below")  # monkeypatch puts the variable back as it was
        monkeypatch.delenv(name)
    yield mlflow
    while mlflow.active_run():
        try:
            mlflow.end_run()
        except Exception:  # noqa: BLE001 - a run the test's store no longer has: dropped from the stack
            fluent._active_run_stack.get().pop()


def test_a_resumed_training_continues_its_run_in_a_notebook_with_its_own_experiment(tmp_path, monkeypatch,
                                                                                  mlflow_state):
    """hsnet/tracking.py, run: "``continue_run``: the run of a training being resumed, continued
    when it is there with the same params (a retried pod's epochs then join its history, and it ends
    finished, not RUNNING for ever)"; f9f2632: "tracked steps leave a notebook's experiment ... alone".

    f9f2632 replaced `mlflow.set_experiment("hsnet")` by `start_run(experiment_id=...)` for a new
    run, and passes no experiment for a continued one. MLflow's start_run(run_id=...) refuses a run
    whose experiment is not the process's active one: in a notebook that called
    `mlflow.set_experiment("notebook")` (the usual first cell), `hsnet train --resume` from Python
    (train(..., resume=True) -> tracking.run(continue_run=...)) now fails with MLflow's "Cannot start
    run with ID ... because active experiment ID does not match environment run ID. Make sure
    --experiment-name or --experiment-id matches ...", about CLI flags hsnet has none of; before the
    fix set_experiment("hsnet") made them match. Fix (hsnet/tracking.py, run): continue the run
    through MlflowClient / with the fluent active experiment set to hsnet's only for the start_run
    call and put back, or pass `experiment_id` and clear the mismatch check's cause."""
    from hsnet import tracking

    mlflow = mlflow_state
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    with tracking.run("train-sample", params={"train.lr": 0.01}, tags={}, computes=False) as first:
        interrupted = first.info.run_id
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("notebook")  # the notebook's own runs go there
    with tracking.run("train-sample", params={"train.lr": 0.01}, tags={}, computes=False,
                      continue_run=interrupted) as resumed:
        continued = resumed.info.run_id
    assert continued == interrupted, "the resumed training got a new run instead of continuing its own"
    with mlflow.start_run() as mine:  # and the notebook's experiment is still its own
        assert mlflow.get_experiment(mine.info.experiment_id).name == "notebook"


def test_a_step_nested_in_the_notebooks_run_leaves_that_run_usable(tmp_path, monkeypatch, mlflow_state):
    """f9f2632: "tracked steps leave a notebook's experiment, its MLFLOW_TRACKING_URI and its own
    active run alone (nested under it)"; README (MLflow): unset, hsnet's runs go to the sqlite store
    `mlflow/mlflow.db` of the project.

    A notebook in the project folder that never set a tracking URI has its own run in MLflow's
    default store (`./mlflow.db` in MLflow 3), not hsnet's `mlflow/mlflow.db`. Since f9f2632 a step
    called inside `with mlflow.start_run():` is started nested=True instead of refused, but
    tracking.connect still calls `mlflow.set_tracking_uri(hsnet's store)` process-wide: when the step
    returns, the notebook's active run id is looked up in hsnet's store, so the notebook's next
    `mlflow.log_metric` (and the `with` block's end_run) fails with "Run with id=... not found": the
    caller's run is broken, not left alone (and hsnet's run records a parentRunId that does not
    exist in its store). Fix (hsnet/tracking.py, run/connect): put the caller's tracking URI back
    when the step's run ends (or record through MlflowClient(uri) rather than the fluent store), and
    nest only under a run of the same store."""
    from hsnet import tracking

    mlflow = mlflow_state
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    from mlflow.tracking import _tracking_service

    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", None)  # a fresh notebook: MLflow's default
    with mlflow.start_run() as mine:
        store = mlflow.get_tracking_uri()
        with tracking.run("evaluate-sample", params={"a": 1}, tags={}, computes=False):
            pass
        assert mlflow.active_run().info.run_id == mine.info.run_id
        try:
            mlflow.log_metric("accuracy", 0.5)
        except Exception as exc:  # noqa: BLE001 - MLflow's own error, shown below
            pytest.fail(f"after hsnet's nested step the notebook's run can't be logged to: {exc} "
                        f"(the process now points at {mlflow.get_tracking_uri()}, its run is in {store})")
    assert mlflow.MlflowClient(store).get_run(mine.info.run_id).data.metrics == {"accuracy": 0.5}


def test_a_bilevel_image_array_is_read_as_training_reads_the_image():
    """hsnet/predict.py: Classifier.to_tensor takes "each face as training fed it to the model: made
    RGB as training's reader makes it"; as_rgb_array: "An (H, W, 3) uint8 array from an array-like
    image"; f9f2632 lets a boolean array through ("biuf").

    A 1-bit image (PIL mode "1": fax, scanned or thresholded faces) is read by training's reader
    (hsnet.io.to_rgb: convert("RGB")) as black and white, 0 and 255; as an array
    (np.asarray(image) is a bool array) as_rgb_array casts True to 1: the same picture is classified
    as an all-black one. Fix (hsnet/predict.py, as_rgb_array): scale a bool array to 0/255
    (`arr.astype(np.uint8) * 255`), or refuse it as f9f2632 refuses other non-pixel dtypes."""
    from PIL import Image

    from hsnet.errors import HSNetError
    from hsnet.io import to_rgb
    from hsnet.predict import as_rgb_array

    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    image = Image.fromarray(mask)  # mode "1"
    assert image.mode == "1" and np.asarray(image).dtype == bool
    try:
        got = as_rgb_array(np.asarray(image))
    except HSNetError:
        return  # refused in hsnet's words: fine too
    expected = np.asarray(to_rgb(image))
    assert np.array_equal(got, expected), \
        f"white pixels read as {got[3, 3].tolist()} from the array, {expected[3, 3].tolist()} from the image"


def test_import_refuses_an_out_that_reaches_the_root_through_a_link_and_dotdot(tmp_path):
    """hsnet/data/datasets.py, _check_apart: "Refuse an ``--out`` inside ``--root``: the raw data is
    read, never written"; f9f2632: "--out inside --root judged by the folder written into".

    The folder written into is found with `realpath(dirname(abspath(out)))`: abspath collapses
    `..` as text before any link is followed, but the kernel (which writes the manifest) follows a
    link first and then goes up from where it points. `--out elsewhere/link/../MANIFEST.csv`, with
    `link` a link to a folder of the dataset (a linked image folder, as f9f2632 itself supports for
    RAF-DB), is judged as `elsewhere/MANIFEST.csv` and accepted, and the manifest is written into
    the dataset folder. Fix: os.path.realpath(os.path.dirname(out)) without the abspath first
    (realpath resolves `..` after the links), in _check_apart."""
    from hsnet.data.datasets import import_dataset
    from hsnet.errors import HSNetError

    from hsnet.data.sample import generate

    root = tmp_path / "raw"
    generate(root, per_class=2, size=48, seed=5)
    inner = next(p for p in sorted(root.iterdir()) if p.is_dir())  # a folder of the dataset
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    (elsewhere / "link").symlink_to(inner, target_is_directory=True)
    out = elsewhere / "link" / ".." / "MANIFEST.csv"  # the kernel's: root/MANIFEST.csv
    before = sorted(p.name for p in root.iterdir())
    try:
        import_dataset("sample", root, out)
    except HSNetError:
        pass  # refused (as inside --root): nothing written
    written = sorted(p.name for p in root.iterdir())
    assert written == before, f"import wrote into --root {root}: {sorted(set(written) - set(before))}"
    with pytest.raises(HSNetError, match="inside the dataset folder"):
        import_dataset("sample", root, out)
