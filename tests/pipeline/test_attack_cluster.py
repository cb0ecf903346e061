"""The Kubeflow ablation as a cluster runs it: failed runs, duplicate runs and the step cache.

kfp.local (SubprocessRunner) runs the real pipeline on a tiny sample in a local folder; its cache
(enable_caching) keys a task like Kubeflow's does (parameters, input artifacts, command, image)
and, like Kubeflow's, reuses only tasks that succeeded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

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

def _ablation(tmp_path: Path, runs: list, *, runs_per_gpu: int, stem_weights: str, caching: bool = False,
              raise_on_error: bool = True) -> Path:
    from kfp import local

    from pipelines.ablation_pipeline import ablation_pipeline

    root = tmp_path / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=raise_on_error,
               enable_caching=caching, cache_root=str(tmp_path / "kfp-cache"))
    ablation_pipeline(dataset="sample", raw_source=str(tmp_path / "raw"), params=_params(stem_weights), runs=runs,
                      mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", checkpoint_uri="",
                      runs_per_gpu=runs_per_gpu)
    return root


@pytest.fixture
def sample(tmp_path, monkeypatch):
    from hsnet.data.sample import generate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    generate(tmp_path / "raw", per_class=3, size=96, seed=7)
    return tmp_path


# Two runs that train, one KTL run whose stem weights are not there (yet): the usual first try of a
# cluster whose weights upload is late or misspelt; check_stem_weights lets a path or URI through.
RUNS = [{"model": BASE, "seed": 0}, {"model": {**BASE, "ktl": True}, "seed": 0}, {"model": BASE, "seed": 1}]  # groups of 2: [base, KTL], [base]
KTL_RUN = exp_name("sample", (False, False, True), 0)


def _tables(root: Path) -> list[str]:
    return [p.read_text() for p in root.rglob("table") if p.parent.name.startswith("ablation-report")]


def test_one_failed_run_per_gpu_pod_still_gives_table6():
    """runs_per_gpu=1 (the default): 23 of 24 runs finish and one fails (a KTL run whose weights
    are not there, an out-of-memory). With runs_per_gpu=2 the same failure is a line under the
    report's missing runs (test_a_group_with_a_failed_run_is_not_reused_from_the_cache shows it);
    with one run per pod the failed train task fails its ParallelFor iteration, and a task whose
    upstream failed does not run unless it ignores upstream failures (kfp.dsl.PipelineTask.
    ignore_upstream_failure: trigger strategy ALL_UPSTREAM_TASKS_COMPLETED): the report never
    runs and the finished runs give no Table 6. (kfp.local can't show it: after a failed
    ParallelFor iteration it hangs, with or without raise_on_error.)"""
    from kfp.compiler import Compiler

    from pipelines.ablation_pipeline import ablation_pipeline

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        Compiler().compile(ablation_pipeline, f"{tmp}/a.yaml")
        import yaml

        spec = next(yaml.safe_load_all(Path(f"{tmp}/a.yaml").read_text()))
    reports = {}
    for comp, c in spec["components"].items():
        for key, t in c.get("dag", {}).get("tasks", {}).items():
            if key.startswith("ablation-report"):
                reports[comp] = t
    assert len(reports) == 2, reports
    for comp, task in reports.items():
        assert task.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED", \
            f"{comp}: the report runs only if every training of the loop succeeded"


@pytest.mark.slow
def test_a_group_with_a_failed_run_is_not_reused_from_the_cache(sample):
    """runs_per_gpu=2: a group whose KTL run failed (its stem weights not uploaded yet) succeeds with
    the failure as a record, so Kubeflow caches it. The weights uploaded and the pipeline submitted
    again (same params, same data): the cached group, failure included, is reused and the KTL run
    is never trained; the report lists the old failure again. A failed run must not be cached."""
    weights = sample / "weights.pt"
    first = _ablation(sample, RUNS, runs_per_gpu=2, stem_weights=str(weights), caching=True)
    records = {}
    for p in first.rglob("runs.json"):
        records.update(json.loads(p.read_text()))
    assert "accuracy" not in records[KTL_RUN] and "error" in records[KTL_RUN]
    groups_before = len([p for p in first.rglob("runs.json")])

    # the upload happens (any file: the point is whether the run is tried again at all)
    weights.write_bytes(b"uploaded later")
    second = _ablation(sample, RUNS, runs_per_gpu=2, stem_weights=str(weights), caching=True)
    tried = len([p for p in second.rglob("runs.json")]) - groups_before
    assert tried >= 1, ("the group whose KTL run failed came from the cache: the failed run was not "
                        "tried again after its cause was fixed")


# --- the cache key of a dataset's steps ----------------------------------------------------------

@pytest.mark.slow
def test_another_datasets_settings_do_not_retrain_this_one(sample):
    """Every step gets the whole params.yaml as its ``params`` parameter, and a parameter's value is
    part of Kubeflow's cache key: editing kdef's learning rate (or adding a dataset to
    datasets_to_run) re-runs import, validate, crop, train and evaluate of *rafdb* (and all 24
    trainings of its ablation). DVC re-runs a dataset's stages only for its own keys and
    ``defaults`` (dvc.yaml's params lists); the pipeline's cache must follow the same settings."""
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
