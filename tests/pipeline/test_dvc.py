"""`dvc repro` of the real dvc.yaml in a temporary git repository, and data.dvc pushed to and
pulled from an S3 remote on moto's server. Real dvc and git commands, no mocks."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

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
    env, sh = make_repo(path, TINY, extra_env=s3_env(s3_server))
    return path, sh, env


def _ran(proc) -> list[str]:
    """The stages a dvc repro ran, in order."""
    return re.findall(r"Running stage '([^']+)'", proc.stdout)


@pytest.mark.slow
def test_repro_then_nothing_to_do(repo):
    path, sh, env = repo
    first = sh("dvc", "repro")
    for stage in ("import", "validate", "crop", "train", "evaluate", "register"):
        assert f"Running stage '{stage}@sample'" in first.stdout, stage
    metrics = json.loads((path / "runs/sample/eval/metrics.json").read_text())
    assert metrics["dataset"] == "sample" and metrics["images"] > 0
    registered = json.loads((path / "runs/sample/registered.json").read_text())
    assert registered["name"] == "hsnet-sample" and registered["version"] == 1
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert {"import@sample", "train@sample", "register@sample"} <= set(lock["stages"])

    # nothing to do but register (always run: the registry is outside DVC), which finds the version
    lock_text, registered_text = (path / "dvc.lock").read_text(), (path / "runs/sample/registered.json").read_text()
    second = sh("dvc", "repro")
    assert _ran(second) == ["register@sample"], second.stdout
    assert (path / "runs/sample/registered.json").read_text() == registered_text
    assert (path / "dvc.lock").read_text() == lock_text

    shown = json.loads(sh("dvc", "metrics", "show", "--json").stdout)
    data = next(iter(shown.values()))["data"]["runs/sample/eval/metrics.json"]["data"]
    assert data["accuracy"] == pytest.approx(metrics["accuracy"])
    plots = sh("dvc", "plots", "show", "--json").stdout
    for name in ("runs/sample/eval/predictions.csv", "runs/sample/eval/confusion_matrix.png",
                 "runs/sample/train/history.json"):
        assert name in plots, name
    assert '"confusion"' in plots or "rect" in plots  # DVC's confusion-matrix template

    # validation re-run on unchanged data: its verdict is byte-identical, so nothing after it re-runs
    summary = (path / "data/interim/sample/validation/summary.json").read_bytes()
    sh("dvc", "repro", "-f", "-s", "validate@sample")
    assert (path / "data/interim/sample/validation/summary.json").read_bytes() == summary
    third = sh("dvc", "repro")
    assert _ran(third) == ["register@sample"], third.stdout

    # last.pt: kept between runs (persist) and never in DVC's cache; a forced re-run of train
    # resumes from it (the same data and settings: nothing left to train) to the same best.pt
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]["train@sample"]["outs"]
    md5 = {o["path"]: o["md5"] for o in lock}
    assert not list((path / ".dvc" / "cache").rglob(md5["runs/sample/train/last.pt"][2:])), "last.pt is cached"
    assert list((path / ".dvc" / "cache").rglob(md5["runs/sample/train/best.pt"][2:])), "best.pt is not cached"
    forced = sh("dvc", "repro", "-f", "-s", "train@sample")
    assert f"from epoch {TINY['train']['epochs']}" in forced.stderr + forced.stdout
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]["train@sample"]["outs"]
    assert {o["path"]: o["md5"] for o in lock}["runs/sample/train/best.pt"] == md5["runs/sample/train/best.pt"]

    # a changed training setting re-runs training and what follows, not the data stages; the
    # experiment registers nothing: the candidate alias stays on the workspace's version
    from mlflow import MlflowClient

    registry = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = sh("dvc", "exp", "run", "-S", "datasets.sample.train.lr=0.002", "--name", "lr-0.002")
    assert "Running stage 'train@sample'" in exp.stdout and "Running stage 'crop@sample'" not in exp.stdout
    exps = sh("dvc", "exp", "show", "--json").stdout
    assert "lr-0.002" in exps
    assert json.loads((path / "runs/sample/registered.json").read_text()) == {"registered": False,
                                                                               "experiment": "lr-0.002"}
    assert [str(v.version) for v in registry.search_model_versions("name='hsnet-sample'")] == ["1"]
    assert str(registry.get_model_version_by_alias("hsnet-sample", "candidate").version) == "1"
    # ... unless asked. In a temporary copy (--temp, as dvc queue and hsnet reproduce run them) import
    # and validate come from DVC's run cache: validation is not run again for every experiment (a
    # stage with an uncached output never is restored: treeverse/dvc#8738); crop, whose output is
    # persisted (its reuse of unchanged photos; the run cache ignores a param named size), runs again
    env["HSNET_REGISTER_EXPERIMENTS"] = "1"
    try:
        temp = sh("dvc", "exp", "run", "--temp", "-S", "datasets.sample.train.lr=0.003", "--name", "lr-0.003")
    finally:
        del env["HSNET_REGISTER_EXPERIMENTS"]
    assert "Running stage 'train@sample'" in temp.stdout, temp.stdout
    for stage in ("import", "validate"):
        assert f"Running stage '{stage}@sample'" not in temp.stdout, (stage, temp.stdout)
    assert str(registry.get_model_version_by_alias("hsnet-sample", "candidate").version) == "2"


@pytest.mark.slow
def test_push_and_pull_data_on_s3(repo, s3_server):
    path, sh, _ = repo
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


# Modules whose changes never change a stage's result: the package markers, error classes, S3 transport.
# modules that can stop a stage or name its errors but not change what it writes
# hsnet/sources.py names the code a checkpoint or a crop record was made with, not what they hold.
NOT_RESULTS = {"hsnet/__init__.py", "hsnet/data/__init__.py", "hsnet/errors.py", "hsnet/interrupt.py", "hsnet/s3.py",
               "hsnet/sources.py"}
ENTRY = {"import": "hsnet.data.datasets", "validate": "hsnet.data.validate", "crop": "hsnet.data.crop",
         "train": "hsnet.train", "evaluate": "hsnet.evaluate", "register": "hsnet.registry"}


def test_stage_deps_cover_the_code_they_run():
    """Every hsnet module a stage's code imports (transitively) is one of its deps, so editing it
    (hsnet/params.py's paper defaults, say) re-runs the stage."""
    from hsnet import sources

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, entry in ENTRY.items():
        seen = set(sources.closure(entry, ROOT / "hsnet"))
        deps = [d for d in stages[stage]["do"]["deps"] if d.startswith("hsnet")]
        missing = sorted(f for f in seen - NOT_RESULTS if not any(f == d or f.startswith(d.rstrip("/") + "/")
                                                                   for d in deps))
        assert not missing, f"dvc.yaml stage {stage}: add {missing} to its deps"


def test_stage_params_are_the_keys_the_kubeflow_steps_take():
    """dvc.yaml's params of import, validate, crop and train name the keys hsnet.params.STEP_KEYS
    gives the Kubeflow steps (and ``defaults``, whole: a params file without one of its sections
    still runs): both re-run a step for the same edits of a dataset's entry. evaluate's cover its
    keys (the whole entry: a params file without an evaluate section still runs)."""
    from hsnet.params import STEP_KEYS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert sorted(STEP_KEYS) == ["crop", "evaluate", "import", "train", "validate"]
    for stage, keys in STEP_KEYS.items():
        listed = stages[stage]["do"]["params"]
        if stage == "evaluate":
            assert listed == ["defaults", "datasets.${item}"]
        else:
            assert listed == ["defaults"] + [f"datasets.${{item}}.{k}" for k in keys]
