"""Attack, session 19c: lineage and reproducibility, as an auditor holding only a production model.

Starting from a registered version, can the records say where it came from (the training, evaluation
and pipeline runs; the code, data, settings and environment), do they agree with each other and
with the artifacts, and do they survive a resume, a Kubeflow retry or cached step, a re-registration?
Each test names the promise or the expectation it checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hsnet.params import CropParams, Params

pytestmark = pytest.mark.slow

PARAMS = ("datasets:\n  sample:\n    input_size: 80\n    crop: {detector: none, size: 80}\n    model: {ktl: false}\n"
          "    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3}\n")


def _params(tmp_path: Path, text: str = PARAMS) -> Params:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return Params.resolve(path, "sample")


def _tags(run) -> dict:
    return {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}


def _mentions(run, text: str) -> bool:
    """Whether any tag or param value of ``run`` names ``text``."""
    return any(text in str(v) for v in (*run.data.tags.values(), *run.data.params.values()))


# --- a resumed training: the code of its first epochs -------------------------------------------

def test_a_resumed_training_keeps_the_commit_its_first_epochs_ran(tiny_data, local_mlflow, tmp_path, monkeypatch):
    """A training killed at commit A (or a dirty tree) and resumed at commit B continues the same
    MLflow run (hsnet.tracking.run's ``continue_run``): its epochs 1..k were computed by A's code,
    the rest by B's. The run's system tags keep both ("2, then 1": tracking.run's docstring, "a
    resumed run on another machine: keep where its first epochs ran"), but its ``git_commit`` tag is
    overwritten with B: the record says the whole model came from B (a clean commit, where A may
    have been ``-dirty``), and A is recorded nowhere. Expected: the run still names A."""
    import mlflow

    from hsnet.train import train

    params = _params(tmp_path)
    monkeypatch.setenv("HSNET_GIT_COMMIT", "a" * 40 + "-dirty")
    train(tiny_data, params, tmp_path / "run", progress=False, stop_after_epochs=1)
    monkeypatch.setenv("HSNET_GIT_COMMIT", "b" * 40)
    summary = train(tiny_data, params, tmp_path / "run", progress=False, resume=True)
    run = mlflow.MlflowClient().get_run(summary["mlflow_run_id"])
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert "a" * 40 + "-dirty" in run.data.tags["git_commit"], (
        f"the run's git_commit is {run.data.tags['git_commit']!r}: epoch 1 ran at commit aaaa…-dirty, recorded nowhere")


def test_a_training_resumed_into_a_new_mlflow_run_names_the_run_of_its_first_epochs(tiny_data, local_mlflow,
                                                                                    tmp_path, monkeypatch):
    """``--resume`` with a setting README allows to change (``train.epochs``, ``max_epochs``,
    ``early_stopping``, ``num_threads``, ``compile``, ...) makes the run's params differ, so
    tracking.run starts a *new* MLflow run (``_continuable``: "other params: a new run"). That run
    holds the metrics of the resumed epochs only and its best.pt, but nothing in it names the run that
    holds epochs 1..k (their metrics, the commit and machine they ran on): from the registry
    (version -> train_run_id -> this run) an auditor can't find where the model's first epochs were
    trained. Expected: the new run names the run it continues."""
    import mlflow

    from hsnet.train import train

    monkeypatch.setenv("HSNET_GIT_COMMIT", "c" * 40)
    first = train(tiny_data, _params(tmp_path), tmp_path / "run", progress=False, stop_after_epochs=1)
    longer = _params(tmp_path, PARAMS.replace("epochs: 2", "epochs: 3"))
    summary = train(tiny_data, longer, tmp_path / "run", progress=False, resume=True, stop_after_epochs=1)
    client = mlflow.MlflowClient()
    assert summary["mlflow_run_id"] != first["mlflow_run_id"]  # a new run, as tracking.run says
    run = client.get_run(summary["mlflow_run_id"])
    # since 25a the new run also holds the checkpoint's epochs (its curves whole), epoch 1 included
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert _mentions(run, first["mlflow_run_id"]), (
        f"run {run.info.run_id} trained on from epoch 2 of run {first['mlflow_run_id']} and names it nowhere: "
        f"{_tags(run)}")


# --- the registered version's record of the code -------------------------------------------------

def test_a_versions_git_commit_is_the_commit_that_trained_it(tiny_data, local_mlflow, tmp_path, monkeypatch,
                                                             quick_log_model):
    """README ("Registry"): register "registers a new version with tags (dataset, test accuracy ...,
    the training data's version, git commit, the model switches, the training run)": tags that
    describe the model (the version's code is that of its weights; the bundled source that serves it
    is checked by model_files_sha256). ``git_commit`` is instead the commit of the process that registers
    (tracking.git_commit() in hsnet.registry.register): a checkpoint trained at commit A and
    registered after a later commit B (dvc repro re-running only evaluate and register after an edit
    to evaluate's code; hsnet register run by hand from an updated checkout) is recorded as B's
    code, contradicting its own training run (train_run_id), whose git_commit is A."""
    import mlflow

    from hsnet.evaluate import evaluate
    from hsnet.registry import register
    from hsnet.train import train

    monkeypatch.setenv("HSNET_GIT_COMMIT", "a" * 40)
    summary = train(tiny_data, _params(tmp_path), tmp_path / "run", progress=False, stop_after_epochs=1)
    monkeypatch.setenv("HSNET_GIT_COMMIT", "b" * 40)
    evaluate(tmp_path / "run" / "best.pt", tiny_data, tmp_path / "eval", progress=False)
    version = register(tmp_path / "run" / "best.pt", tmp_path / "eval" / "metrics.json", "sample",
                       name="hsnet-sample-commit")
    client = mlflow.MlflowClient()
    mv = client.get_model_version("hsnet-sample-commit", str(version["version"]))
    train_run = client.get_run(mv.tags["train_run_id"])
    assert mv.tags["train_run_id"] == summary["mlflow_run_id"] and train_run.data.tags["git_commit"] == "a" * 40
    # the training's commit is on the version (as git_commit, or beside a register-time one)
    assert any(v == "a" * 40 for v in mv.tags.values()), (
        f"version {mv.version}: git_commit {mv.tags['git_commit']!r}, its training run's "
        f"{train_run.data.tags['git_commit']!r}; the version names the training's commit nowhere")


# --- the data version -----------------------------------------------------------------------------

def test_crops_cut_with_other_settings_get_another_data_version(tiny_data, tmp_path):
    """tracking.data_version: "the same raw data cropped the same way gives the same version ...";
    README: "the same photos cropped again ... get another data version", and the gate compares
    figures only "on the same test data (the evaluation's data version and split)". The version is
    the sha256 of manifest.csv alone, which names the source photos, their sha256 and the detection
    box but not how they were cut: crop.size, crop.margin (applied around the box) change every
    pixel and no byte of the manifest. Crops of the same photos at 64 px and at 80 px (or with
    another margin) are one "data version": the training run's data_version, the evaluation run's
    test_data_version and the version's tags can't tell which crops the model was trained and
    measured on, and two evaluations on differently cut test crops pass the gate as "the same test
    data"."""
    from hsnet.data.crop import crop
    from hsnet.tracking import data_version

    base = tiny_data.parent  # the tiny fixture's raw photos and their imported manifest
    crop(base / "manifest.csv", base / "raw", tmp_path / "crops64", settings=CropParams(detector="none", size=64),
         progress=False)
    from PIL import Image

    first = sorted((tmp_path / "crops64" / "images").rglob("*.png"))[0]
    twin = tiny_data / first.relative_to(tmp_path / "crops64")
    assert Image.open(first).size == (64, 64) and Image.open(twin).size == (80, 80)  # other pixels
    assert data_version(tmp_path / "crops64" / "manifest.csv") != data_version(tiny_data / "manifest.csv")


# --- the pipeline run -----------------------------------------------------------------------------

def test_a_kubeflow_training_records_its_pipeline_run(tiny_data, tmp_path, monkeypatch):
    """The brief's first question: "where did the model come from" includes the Kubeflow run that
    trained it. The train pod knows its run (``KFP_RUN_ID``, from the ``pipeline/runid`` label:
    components.convert.run_id, pipelines/hsnet_pipeline.py) and uses it only as the key of its
    durable checkpoints; the MLflow training run, and so the registered version, never records it.
    After a later run reuses the cached train step, or a Retry, nothing in MLflow says which
    pipeline run produced the model, its source (S3 prefix or DVC rev) or the raw data version
    source-version computed. Expected: the MLflow training run names the pipeline run."""
    import mlflow
    from kfp import dsl

    from components.train import train_model

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KFP_RUN_ID", "0f1e2d3c-kfp-run-of-this-training")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"datasets_to_run": ["sample"], "datasets": {"sample": {
        "input_size": 80, "crop": {"detector": "none", "size": 80}, "model": {"ktl": False},
        "train": {"lr": 0.001, "epochs": 1, "batch_size": 16, "seed": 3}}}}
    model = dsl.Model(uri=str(tmp_path / "model"))
    train_model.python_func(dataset="sample", params=params, mlflow_tracking_uri=uri,
                            crops=dsl.Dataset(uri=str(tiny_data)), model=model,
                            metrics=dsl.Metrics(uri=str(tmp_path / "metrics")),
                            curves=dsl.HTML(uri=str(tmp_path / "curves.html")), checkpoint_uri="")
    run = mlflow.MlflowClient(uri).get_run(model.metadata["mlflow_run_id"])
    assert _mentions(run, "0f1e2d3c-kfp-run-of-this-training"), _tags(run)


# --- a Kubeflow retry (a preempted train pod) ------------------------------------------------------

def test_a_retried_training_pod_does_not_log_its_lost_epochs_twice(tiny_data, local_mlflow, tmp_path, monkeypatch):
    """A Kubeflow train pod logs every epoch to MLflow (before its checkpoint) but uploads its
    checkpoints only after the first epoch and then at most every 5 minutes (hsnet.durable.Uploader;
    on a GPU an epoch of RAF-DB takes seconds: up to ~100 epochs between uploads). Preempted, the
    retried pod restores the last *uploaded* last.pt into a fresh folder, continues the same MLflow run
    (README: a retry "continues its MLflow run") and trains again the epochs after it: those epochs are
    logged a second time, with other values on a GPU. The run's per-epoch history then holds two
    values for those steps, one from a trajectory the model no longer descends from, and disagrees
    with the model's own history (best.pt/history.json); nothing marks which is which. Here: epoch 1
    uploaded, epoch 2 trained, the pod killed before its upload (the interval not over); the retry
    trains epoch 2 again. (Session 19: the hook, as hsnet.durable.Uploader, says True when it
    uploaded; the kill is an exception no code of hsnet's catches, as a SIGKILL runs none.)"""
    import mlflow

    from hsnet.checkpoint import load
    from hsnet.train import train

    params = _params(tmp_path, PARAMS.replace("epochs: 2", "epochs: 3"))
    uploaded = tmp_path / "s3-prefix"

    class Preempted(BaseException):
        pass

    def upload_first_epoch_only(out_dir, improved):  # hsnet.durable.Uploader with an interval longer than epoch 2
        if uploaded.exists():
            raise Preempted  # the pod is gone after epoch 2's local checkpoint, before any upload
        shutil.copytree(out_dir, uploaded, ignore=shutil.ignore_patterns(".*", "*.tmp"))
        return True

    with pytest.raises(Preempted):
        train(tiny_data, params, tmp_path / "pod1", progress=False, resume="auto", on_checkpoint=upload_first_epoch_only)
    first = load(uploaded / "last.pt")["meta"]
    pod2 = tmp_path / "pod2"  # a new pod: an empty folder, the prefix's checkpoints restored into it
    summary = train(tiny_data, params, pod2, progress=False, stop_after_epochs=1, resume="auto",
                    on_start=lambda folder: [shutil.copy2(uploaded / n, folder / n) for n in ("best.pt", "last.pt")])
    assert summary["mlflow_run_id"] == first["mlflow_run_id"]  # the same run, continued
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "val_accuracy")]
    history = json.loads((pod2 / "history.json").read_text())
    assert sorted(steps) == [row["epoch"] for row in history] == [1, 2], (
        f"the run's val_accuracy was logged at steps {sorted(steps)}; the model's history has epochs "
        f"{[row['epoch'] for row in history]}")


# --- the stem weights -------------------------------------------------------------------------------

def test_a_ktl_training_records_which_stem_weights_it_loaded(tiny_data, local_mlflow, tmp_path, stem_weights_file):
    """With KTL the frozen stem comes from ``model.stem_weights``: a file path or an s3:// URI (what
    the cluster needs: README "VGGFace2 stem weights"; components.convert.check_stem_weights). The
    training records only that name (param ``model.stem_weights``): a file replaced at the same
    path or key (another conversion of the VGGFace2 weights, a fine-tuned stem) gives another
    model under the same record, and retraining "with the same settings" silently loads other
    weights. Every other input is recorded by content (the data by its manifest's sha256, the
    checkpoint by its sha256, the model files by a digest); the stem's file is not. Expected: the
    run records the sha256 of the weights it loaded."""
    import hashlib

    import mlflow

    from hsnet.train import train

    text = PARAMS.replace("model: {ktl: false}", f"model: {{ktl: true, stem_weights: '{stem_weights_file}'}}")
    summary = train(tiny_data, _params(tmp_path, text), tmp_path / "run", progress=False, stop_after_epochs=1)
    run = mlflow.MlflowClient().get_run(summary["mlflow_run_id"])
    digest = hashlib.sha256(Path(stem_weights_file).read_bytes()).hexdigest()
    assert _mentions(run, digest[:16]), {k: v for k, v in run.data.params.items() if k.startswith("model.")}


# --- the code's commit under dvc repro -------------------------------------------------------------

def test_a_dvc_lock_written_by_dvc_repro_does_not_mark_the_code_dirty(tmp_path):
    """hsnet.tracking.git_commit: "The commit of the hsnet source that runs ... ``-dirty`` when it has
    uncommitted changes", recorded as every run's ``git_commit``: the auditor's one sign that the
    code was not the commit's. It looks at the whole checkout (``git status --porcelain``), and
    ``dvc repro`` itself rewrites the tracked dvc.lock after every stage it runs (and the
    uncached metrics under runs/): from a clean commit, every train and evaluate run after a re-run
    stage says ``<commit>-dirty`` although not a byte of code differs. The flag then says nothing:
    a run at an edited hsnet/train.py and one at a clean tree read the same."""
    import os
    import subprocess
    import sys

    repo = tmp_path / "project"
    shutil.copytree(Path(__file__).resolve().parents[1] / "hsnet", repo / "hsnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b", "PYTHONPATH": str(repo)}
    env.pop("HSNET_GIT_COMMIT", None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "c"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    # what dvc repro leaves after its crop stage ran, before train starts
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages:\n  crop@sample:\n    cmd: hsnet crop ...\n")

    def commit() -> str:
        return subprocess.run([sys.executable, "-c", "from hsnet.tracking import git_commit; print(git_commit())"],
                              cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert commit() == head, f"{commit()!r}: only dvc.lock differs from {head}, the hsnet source is the commit's"


# --- dvc exp run ----------------------------------------------------------------------------------

def test_a_version_registered_from_a_dvc_experiment_names_the_experiment(trained, local_mlflow, tmp_path, monkeypatch,
                                                                         quick_log_model):
    """``HSNET_REGISTER_EXPERIMENTS=1 dvc exp run -S ...`` registers the experiment's model (README,
    "DVC"). DVC sets ``DVC_EXP_NAME`` and ``DVC_EXP_BASELINE_REV`` for the stages it runs
    (https://dvc.org/doc/user-guide/env; hsnet.registry reads the first). The experiment's params.yaml,
    dvc.lock (the data's md5s) and outputs live only in its Git ref (refs/exps/..., ``dvc exp show``),
    and the checkout the stages ran in differs from any commit (``-S`` rewrote params.yaml): the
    version's ``git_commit`` is ``<baseline>-dirty``, a state no commit holds. Nothing in the version,
    its registration run, its evaluation run names the experiment: the auditor can't get back to
    the one record that can reproduce it. Expected: the experiment is named there."""
    import mlflow

    from hsnet.evaluate import evaluate
    from hsnet.registry import register

    monkeypatch.setenv("DVC_EXP_NAME", "lr-0002-exp")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    monkeypatch.setenv("HSNET_REGISTER_EXPERIMENTS", "1")
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    version = register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name="hsnet-sample-exp")
    client = mlflow.MlflowClient()
    mv = client.get_model_version("hsnet-sample-exp", str(version["version"]))
    records = {"version": mv.tags, "registration run": client.get_run(mv.run_id).data.tags,
               "evaluation run": client.get_run(mv.tags["evaluation_run_id"]).data.tags}
    assert any("lr-0002-exp" in str(v) for tags in records.values() for v in tags.values()), records["version"]


# --- a rollback and the version's record -----------------------------------------------------------

def test_the_production_version_after_two_rollbacks_is_not_marked_rolled_back(local_mlflow, evaluated,
                                                                            quick_log_model):
    """README: ``--rollback`` "swaps them back"; "the version it took out of production is tagged
    ``rolled_back_at``, and a plain ``promote`` refuses it". A second rollback (putting back the
    version the first one took out: the first was a mistake, or the incident was elsewhere) swaps
    them again, but the version it returns to production keeps ``rolled_back_at``: the version
    answering in production says it was rolled back out of production, its ``promoted_at`` still
    names its first promotion, and nothing records when it came back. ``promote --version N`` of
    it is refused as "rolled back" although it is what serves. Expected: production's own version
    carries no stale ``rolled_back_at``."""
    import mlflow

    from hsnet.registry import ROLLED_BACK_TAG, promote, register, rollback

    name = "hsnet-sample-rollback"
    for _ in range(2):
        ckpt, metrics, _m = evaluated(0)
        register(ckpt, metrics, "sample", name=name)
        promote(name)  # v1 alone, then v2 (a tie passes at --min-delta 0)
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, "production").version) == "2"
    rollback(name)  # v1 back; v2 tagged rolled_back_at
    assert rollback(name)["production"] == 2  # and v2 back again
    prod = client.get_model_version_by_alias(name, "production")
    assert str(prod.version) == "2"
    assert ROLLED_BACK_TAG not in prod.tags, (
        f"production (version 2) carries {ROLLED_BACK_TAG}={prod.tags[ROLLED_BACK_TAG]!r}: {prod.tags}")


def test_a_checkpoint_resumed_after_a_code_change_keeps_the_code_version_of_its_first_epochs(tiny_data, tmp_path,
                                                                                             monkeypatch):
    """``hsnet train --resume`` after an edit to the code training runs continues "as asked" with a
    warning (hsnet.train.resume_from): epochs 1..k were trained by the old code, the rest by the new.
    last.pt/best.pt's ``code_version`` (hsnet.sources: "A version of the code ``module`` runs") then
    names only the new code, and the registered model's weights (model.pt carries the same meta)
    claim to be the new code's alone: the old code_version is recorded nowhere. Expected: the
    checkpoint still names the code of its first epochs."""
    import hsnet.sources as sources
    from hsnet.train import train

    real = sources.code_version
    params = _params(tmp_path)
    train(tiny_data, params, tmp_path / "run", track=False, progress=False, stop_after_epochs=1)
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["meta"]["code_version"]
    assert first == real("hsnet.train")
    monkeypatch.setattr(sources, "code_version", lambda module, root=None: "sha256:0123456789abcdef")  # an edit
    train(tiny_data, params, tmp_path / "run", track=False, progress=False, resume=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # epochs 1 (old code) and 2 (new)
    assert last["state"]["epoch"] == 2
    assert first in json.dumps(last["meta"], default=str), (
        f"last.pt's code_version is {last['meta']['code_version']!r}; epoch 1 ran with {first!r}, recorded nowhere "
        "(best.pt, written at epoch 2 here, the same)")
