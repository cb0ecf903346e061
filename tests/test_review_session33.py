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
