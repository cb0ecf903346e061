"""Session 33's review: leftovers of earlier sessions, each written as a failing test first."""
from __future__ import annotations

import sys

import pytest


@pytest.mark.slow
def test_loading_versions_leaves_the_import_path_as_it_was(trained, tmp_path, monkeypatch):
    """MLflow's loader puts each loaded copy's ``code/`` folder in front of ``sys.path`` and never
    takes it out: ``hsnet serve`` reloading at every promotion grew the import path by one
    folder a load, each a cached copy that may since have been removed, and searched first by
    every later import; registering left a temporary folder there. Registering and loading two models, and one of them again, leaves sys.path as it was."""
    from hsnet.evaluate import evaluate
    from hsnet.predict import load_classifier
    from hsnet.registry import register

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    before = list(sys.path)  # registering logs the model, and MLflow loads it from a temporary folder
    for name in ("hsnet-path-a", "hsnet-path-b"):  # one checkpoint is one version: two names
        assert register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample",
                        name=name)["version"] == 1
        assert sys.path == before, [p for p in sys.path if p not in before]
    for name in ("hsnet-path-a", "hsnet-path-b", "hsnet-path-a"):
        clf = load_classifier(f"models:/{name}/1", device="cpu")
        assert clf.classes
        assert sys.path == before, [p for p in sys.path if p not in before]


def test_a_missing_runs_model_is_named_with_what_to_check(tmp_path, monkeypatch):
    """``--model runs:/RUN_ID/model`` of a run the store doesn't have: the message named "the name
    and alias (hsnet promote)", which a runs:/ URI has neither of; now the run id and its path."""
    from hsnet import tracking
    from hsnet.errors import HSNetError
    from hsnet.predict import load_classifier

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_store(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(HSNetError) as caught:
        load_classifier("runs:/" + "0" * 32 + "/model", device="cpu")
    said = str(caught.value)
    assert "0" * 32 in said and "Check the run id and the model's path in it" in said, said
    assert "alias" not in said, said


def test_a_cpu_limit_no_kernel_writes_is_no_limit_not_an_error(tmp_path):
    """usable_cores sizes every thread pool: a cpu.max holding a number too large for a float (no
    kernel writes one; a fake /sys in a test or a sandbox may) is no limit, not an OverflowError."""
    from hsnet.io import cgroup_cpu_limit, usable_cores

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(f"30 25 0:27 / {tmp_path} rw - cgroup2 cgroup2 rw\n")
    (proc / "cgroup").write_text("0::/\n")
    (tmp_path / "cpu.max").write_text("9" * 400 + " 100000\n")
    assert cgroup_cpu_limit(proc) is None
    assert usable_cores(proc) >= 1
