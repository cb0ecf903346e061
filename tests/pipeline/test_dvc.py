"""`dvc repro` of the real dvc.yaml in a temporary git repository, and data.dvc pushed to and
pulled from an S3 remote on moto's server. Real dvc and git commands, no mocks."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY = {"input_size": 80, "import": {"split_by": "class", "seed": 0}, "validate": {"min_size": 32},
        "crop": {"detector": "none", "size": 80}, "model": {"ktl": False},
        "train": {"lr": 0.001, "epochs": 2, "batch_size": 16, "seed": 3}}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, s3_server):
    from dvcrepo import make_repo
    from servers import s3_env

    path = tmp_path_factory.mktemp("repo")
    _, sh = make_repo(path, TINY, extra_env=s3_env(s3_server))
    return path, sh


def test_repro_then_nothing_to_do(repo):
    path, sh = repo
    first = sh("dvc", "repro")
    for stage in ("import", "validate", "crop", "train", "evaluate", "register"):
        assert f"Running stage '{stage}@sample'" in first.stdout, stage
    metrics = json.loads((path / "runs/sample/eval/metrics.json").read_text())
    assert metrics["dataset"] == "sample" and metrics["images"] > 0
    registered = json.loads((path / "runs/sample/registered.json").read_text())
    assert registered["name"] == "hsnet-sample" and registered["version"] == 1
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert {"import@sample", "train@sample", "register@sample"} <= set(lock["stages"])

    second = sh("dvc", "repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout

    shown = json.loads(sh("dvc", "metrics", "show", "--json").stdout)
    data = next(iter(shown.values()))["data"]["runs/sample/eval/metrics.json"]["data"]
    assert data["accuracy"] == pytest.approx(metrics["accuracy"])
    plots = sh("dvc", "plots", "show", "--json").stdout
    for name in ("runs/sample/eval/predictions.csv", "runs/sample/eval/confusion_matrix.png",
                 "runs/sample/train/history.json"):
        assert name in plots, name
    assert '"confusion"' in plots or "rect" in plots  # DVC's confusion-matrix template

    # a changed training setting re-runs training and what follows, not the data stages
    sh("dvc", "exp", "run", "-S", "datasets.sample.train.lr=0.002", "--name", "lr-0.002")
    exps = sh("dvc", "exp", "show", "--json").stdout
    assert "lr-0.002" in exps


def test_push_and_pull_data_on_s3(repo, s3_server):
    path, sh = repo
    sh("dvc", "remote", "add", "-d", "storage", "s3://hsnet/dvc-store")
    sh("dvc", "remote", "modify", "storage", "endpointurl", s3_server.url)
    before = _digest(path / "data" / "raw")
    sh("dvc", "push", "data.dvc")
    shutil.rmtree(path / "data" / "raw")
    shutil.rmtree(path / ".dvc" / "cache")
    sh("dvc", "pull", "data.dvc")
    assert _digest(path / "data" / "raw") == before

    # what the Kubeflow pipeline's fetch step does with a DVC repository: dvc get at a revision
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "remote")
    out = path.parent / "fetched"
    sh(sys.executable, "-m", "hsnet", "data", "fetch", "--source", str(path), "--dvc-path", "data/raw/sample",
       "--rev", "main", "--out", str(out))
    assert _digest(out) == _digest(path / "data" / "raw" / "sample")
