"""The Kubeflow ablation as a cluster runs it: failed runs, duplicate runs and the step cache.

kfp.local (SubprocessRunner) runs the real pipeline on a tiny sample in a local folder; its cache
(enable_caching) keys a task like Kubeflow's does (parameters, input artifacts, command, image)
and, like Kubeflow's, reuses only tasks that succeeded.
"""

from __future__ import annotations

import copy
import json

import pytest

from hsnet.errors import HSNetError
from hsnet.reproduce import exp_name

TINY = {"input_size": 80, "import": {"split_by": "class", "seed": 0}, "validate": {"min_size": 32},
        "crop": {"detector": "none", "size": 80}, "model": {"ktl": False},
        "train": {"lr": 0.001, "epochs": 1, "max_epochs": 1, "batch_size": 16, "seed": 3, "num_threads": 1}}
BASE = {"dib": False, "fgal": False, "ktl": False}


def _params(stem_weights: str | None = None) -> dict:
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS

    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"] = copy.deepcopy(TINY)
    if stem_weights:
        params["datasets"]["sample"]["model"]["stem_weights"] = stem_weights
    return params


# --- duplicate runs ------------------------------------------------------------------------------

@pytest.mark.parametrize("runs", [
    [{"model": BASE, "seed": 0}, {"model": BASE, "seed": 0}],      # the same item twice
    [{"model": BASE, "seed": 3}, {"model": BASE}],                 # seed absent = params' seed (3)
    [{"model": BASE, "seed": 3}, {"model": BASE, "seed": -1}],     # seed -1 = params' seed (3)
])
def test_duplicate_runs_are_refused_by_the_first_step(tmp_path, runs):
    """Two items of ``runs`` with the same configuration and seed are one training twice: with
    runs_per_gpu=1 (or in two groups) both pods write the same S3 checkpoint prefix at once (and a
    preempted one resumes from the other's last.pt), and the report counts the twin as a second
    seed (n=2, sd ~0: a falsely narrow interval; `hsnet reproduce report` keeps one run per
    configuration and seed). A group refuses it (components.convert.group_settings); the first step
    must refuse it for every runs_per_gpu, before any data is fetched."""
    from components.fetch import source_version
    from hsnet import durable
    from hsnet.data.sample import generate
    from components.convert import params_for

    generate(tmp_path / "raw", per_class=1, size=32, seed=1)
    params = _params()
    # the consequence: the two trainings share one durable checkpoint prefix
    a, b = (params_for(params, "sample", {"model": r["model"], "train": {"seed": r["seed"]}
                                          if r.get("seed", -1) != -1 else {}}) for r in runs)
    assert durable.run_prefix("s3://b/ck", "run-1", a) == durable.run_prefix("s3://b/ck", "run-1", b)
    with pytest.raises(HSNetError, match="given twice"):
        source_version.python_func(source=str(tmp_path / "raw"), dvc_path="", dvc_rev="", params=params,
                                   dataset="sample", runs=runs, require_stem_uri=True)


# --- one failed run in the ablation --------------------------------------------------------------

@pytest.fixture
def sample(tmp_path, monkeypatch):
    from hsnet.data.sample import generate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    generate(tmp_path / "raw", per_class=3, size=96, seed=7)
    return tmp_path


# A run that trains and a KTL run whose stem weights are not there (yet): the usual first try of a
# cluster whose weights upload is late or misspelt; check_stem_weights lets a path or URI through.
RUNS = [{"model": BASE, "seed": 0}, {"model": {**BASE, "ktl": True}, "seed": 0}]
KTL_RUN = exp_name("sample", (False, False, True), 0)


@pytest.mark.slow
def test_a_group_with_a_failed_run_fails_so_that_it_is_not_cached(tiny_data, tmp_path, monkeypatch):
    """runs_per_gpu=2: a group whose KTL run failed (its stem weights not uploaded yet) ended as a
    success with the failure as a record, so Kubeflow cached it: after the upload, the pipeline
    submitted again reused the cached group and the KTL run was never trained again (the report
    listed the old failure). Kubeflow caches only tasks that succeeded, so the group must fail when
    a run of it failed, naming the run and what to do; its finished runs resume from their
    checkpoints on a retry. (kfp.local can't run this through the pipeline: after a failed
    ParallelFor iteration it hangs, so the component runs here as Kubeflow's launcher calls it.)"""
    from kfp import dsl

    from components.train_group import train_evaluate_group

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    crops, sample = tiny_data, tmp_path
    params = _params(stem_weights=str(sample / "weights.pt"))  # not there (yet)
    models, evaluations = dsl.Model(uri=str(sample / "models")), dsl.Artifact(uri=str(sample / "evaluations"))
    with pytest.raises(HSNetError, match=rf"1 of 2 runs of this group failed: {KTL_RUN}.*Retry"):
        train_evaluate_group.python_func(dataset="sample", params=params,
                                         mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                         crops=dsl.Dataset(uri=str(crops)), runs=RUNS, models=models,
                                         evaluations=evaluations, checkpoint_uri="")
    records = json.loads((sample / "evaluations" / "runs.json").read_text())
    assert "accuracy" in records[exp_name("sample", (False, False, False), 0)] and "error" in records[KTL_RUN]


# --- the cache key of a dataset's steps ----------------------------------------------------------

@pytest.mark.slow
def test_another_datasets_settings_do_not_retrain_this_one(sample):
    """Every step gets the whole params.yaml as its ``params`` parameter, and a parameter's value is
    part of Kubeflow's cache key: editing kdef's learning rate (or adding a dataset to
    datasets_to_run) re-runs import, validate, crop, train and evaluate of *rafdb* (and all 24
    trainings of its ablation); editing rafdb's own learning rate re-ran its import, validate
    and crop. DVC re-runs a dataset's stages only for their own keys and ``defaults`` (dvc.yaml's
    params lists); the pipeline's cache must follow the same settings."""
    import os

    from kfp import local

    from pipelines.hsnet_pipeline import hsnet_pipeline

    root = sample / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=True, cache_root=str(sample / "kfp-cache"))

    def run(params) -> set[str]:
        before = set(os.listdir(root)) if root.exists() else set()
        hsnet_pipeline(dataset="sample", raw_source=str(sample / "raw"), params=params,
                       mlflow_tracking_uri=f"sqlite:///{sample / 'mlflow.db'}", checkpoint_uri="")
        (new,) = set(os.listdir(root)) - before
        return {p.name.removesuffix("-2") for p in (root / new).iterdir() if p.is_dir()}

    params = _params()
    run(params)
    other = copy.deepcopy(params)
    other["datasets"]["kdef"]["train"]["lr"] = 0.5 * other["datasets"]["kdef"]["train"].get("lr", 1e-3)
    other["datasets_to_run"] = sorted(set(other["datasets_to_run"]) | {"kdef", "sample"})
    assert run(other) == {"source-version", "register-model"}, \
        "kdef's settings changed and the sample's import..evaluate ran again"
    # the sample's own training settings: train and what follows it, not import, validate and crop
    # (each takes only its own keys, as dvc.yaml's params lists)
    mine = copy.deepcopy(other)
    mine["datasets"]["sample"]["train"]["lr"] = 0.5 * TINY["train"]["lr"]
    assert run(mine) == {"source-version", "train-model", "evaluate-model", "register-model"}, \
        "the sample's train.lr changed and its import, validate or crop ran again"
    # its evaluate settings: evaluate (and register), not train
    flipped = copy.deepcopy(mine)
    flipped["datasets"]["sample"]["evaluate"] = {"tta_hflip": True}
    assert run(flipped) == {"source-version", "evaluate-model", "register-model"}, \
        "the sample's evaluate.tta_hflip changed and it trained again"


def test_groups_need_checkpoints():
    """A group with a failed run fails (so that it isn't cached) and Kubeflow retries it (RETRIES):
    without checkpoint_uri each retry would train the group's finished runs again from scratch
    (review of 76bc660). The step that makes the groups, at the pipeline's start, refuses it."""
    from pipelines.ablation_pipeline import group_runs

    runs = [{"model": BASE, "seed": 0}, {"model": BASE, "seed": 1}]
    with pytest.raises(HSNetError, match="runs_per_gpu > 1 needs checkpoint_uri"):
        group_runs.python_func(runs=runs, runs_per_gpu=2, checkpoint_uri="")
    assert group_runs.python_func(runs=runs, runs_per_gpu=2, checkpoint_uri="s3://b/ck") == [runs]

