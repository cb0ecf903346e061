"""hsnet reproduce: Table 6 as 8 DVC experiments on the tiny sample, the report in the paper's
layout, the missing-run message, KTL configurations skipped without weights, and the KFP
ablation pipeline's fan-out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hsnet import reproduce
from hsnet.reproduce import CONFIGS, TABLE6, exp_name

ROOT = Path(__file__).resolve().parents[2]
TINY = {"input_size": 80, "import": {"split_by": "class", "seed": 0}, "validate": {"min_size": 32},
        "crop": {"detector": "none", "size": 80}, "model": {"ktl": False},
        "train": {"lr": 0.001, "epochs": 1, "batch_size": 16, "seed": 3}}


def _table6(text: str, dataset: str) -> list[list[str]]:
    section = text.split(f"## Table 6: ablation on {dataset}")[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if re.match(r"\| [✓✗] \|", line)]


def _row(dataset, cfg, acc, experiment=None, ts="2026-01-01T00:00:00"):
    return {"experiment": experiment or exp_name(dataset, cfg), "rev": "x", "timestamp": ts, "dataset": dataset,
            "config": cfg, "accuracy": acc, "mean_accuracy": acc, "classes": ["a", "b"],
            "confusion_matrix": [[3, 1], [0, 4]], "images": 8}


def test_report_layout_marks_and_missing(tmp_path):
    rows = [_row("rafdb", c, TABLE6[c] / 100 - 0.01) for c in CONFIGS if c != (True, False, True)]
    rows.append(_row("rafdb", (True, True, True), 0.5, ts="2025-01-01T00:00:00"))  # older: not the one shown
    rows.append(_row("kdef", (True, True, True), 0.9, experiment="paper-kdef"))
    r = reproduce.report(tmp_path / "results.md", rows=rows)
    text = (tmp_path / "results.md").read_text()
    table = _table6(text, "rafdb")
    assert [tuple(c == "✓" for c in row[:3]) for row in table] == CONFIGS  # the paper's row order and marks
    by_cfg = {tuple(c == "✓" for c in row[:3]): row for row in table}
    assert by_cfg[(True, True, True)][3:6] == ["85.67", "86.67", "-1.00"]
    assert by_cfg[(True, False, True)][3] == "–" and by_cfg[(True, False, True)][-1] == "missing"
    assert any("ablation rafdb dib1-fgal0-ktl1: no finished run" in m for m in r["missing"])
    assert "| Table 3 | kdef | 90.00 | 93.35 | -3.35 |" in text
    assert any(m.startswith("rafd (Tables 2-5)") for m in r["missing"])
    assert Path(r["charts"]["rafdb"]).stat().st_size > 5000
    assert "| **a** | 3 | 1 |" in text  # a confusion matrix


def test_ktl_weights_problem(tmp_path, monkeypatch, stem_weights_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert "VGGFace2 stem weights are not in" in reproduce.ktl_weights_problem("vggface2")
    assert "does not exist" in reproduce.ktl_weights_problem(str(tmp_path / "none.pt"))
    assert reproduce.ktl_weights_problem(stem_weights_file) is None


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from dvcrepo import make_repo

    path = tmp_path_factory.mktemp("ablation-repo")
    env, sh = make_repo(path, TINY, per_class=2)
    return path, env, sh


@pytest.mark.slow
def test_ablation_then_report(repo, stem_weights_file, monkeypatch):
    from hsnet.cli import main

    path, env, sh = repo
    monkeypatch.chdir(path)
    for key in ("MLFLOW_TRACKING_URI", "HSNET_CACHE_DIR"):
        monkeypatch.setenv(key, env[key])
    params_before = (path / "params.yaml").read_text()
    assert main(["reproduce", "ablation", "--dataset", "sample", "--stem-weights", stem_weights_file]) == 0
    assert (path / "params.yaml").read_text() == params_before  # the workspace is left as it was
    listed = sh("dvc", "exp", "list", "--name-only").stdout.split()
    assert sorted(listed) == sorted(exp_name("sample", c) for c in CONFIGS)

    assert main(["reproduce", "report", "--out", "docs/results.md"]) == 0
    text = (path / "docs" / "results.md").read_text()
    table = _table6(text, "sample")
    assert [tuple(c == "✓" for c in row[:3]) for row in table] == CONFIGS
    for row in table:
        assert 0.0 <= float(row[3]) <= 100.0, row  # a real number from a real run in every row
    assert text.count("<details><summary>confusion matrix: sample") == 8  # read from each experiment's commit
    # each experiment trained the configuration its name says
    shown = reproduce.collect(path)
    assert {r["experiment"]: r["config"] for r in shown if r["experiment"].startswith("ablation-")} == {
        exp_name("sample", c): c for c in CONFIGS}
    assert (path / "docs" / "results-ablation-sample.png").is_file()

    sh("dvc", "exp", "remove", exp_name("sample", (False, False, False)))
    r = reproduce.report(path / "docs" / "results.md", repo=path)
    assert [m for m in r["missing"] if "ablation sample dib0-fgal0-ktl0: no finished run" in m]
    assert _table6((path / "docs" / "results.md").read_text(), "sample")[0][-1] == "missing"


@pytest.mark.slow
def test_ktl_configurations_are_skipped_without_weights(repo, tmp_path, monkeypatch):
    path, env, sh = repo
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGGFace2 file here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    r = reproduce.ablation("sample", repo=path, queue=True)
    assert sorted(r["skipped"]) == sorted(exp_name("sample", c) for c in CONFIGS if c[2])
    assert all("VGGFace2 stem weights" in why for why in r["skipped"].values())
    assert sorted(r["queued"]) == sorted(exp_name("sample", c) for c in CONFIGS if not c[2])
    status = sh("dvc", "queue", "status").stdout
    assert status.count("Queued") == 4
    sh("dvc", "queue", "remove", "--all")


def test_unknown_dataset_or_missing_data(repo):
    from hsnet.errors import HSNetError

    path, _, _ = repo
    with pytest.raises(HSNetError, match="no entry under 'datasets'"):
        reproduce.ablation("nope", repo=path)
    with pytest.raises(HSNetError, match="data/raw/rafdb is missing"):
        reproduce.ablation("rafdb", repo=path)


def test_kfp_ablation_pipeline_fans_out_to_8_gpu_trainings(tmp_path):
    from pipelines.compile import compile_all

    compile_all(tmp_path)
    pipeline, platform = yaml.safe_load_all((tmp_path / "ablation_pipeline.yaml").read_text())
    committed = list(yaml.safe_load_all((ROOT / "pipelines" / "ablation_pipeline.yaml").read_text()))
    assert committed == [pipeline, platform], "pipelines/ablation_pipeline.yaml is stale: python -m pipelines.compile"
    loops = [t for t in pipeline["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert len(loops) == 1
    items = yaml.safe_load(loops[0]["parameterIterator"]["items"]["raw"])
    assert [(i["dib"], i["fgal"], i["ktl"]) for i in items] == CONFIGS
    assert loops[0]["iteratorPolicy"]["parallelismLimit"] == 8
    body = pipeline["components"][loops[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"train-model", "evaluate-model"} <= set(body)
    train_exec = pipeline["components"][body["train-model"]["componentRef"]["name"]]["executorLabel"]
    res = pipeline["deploymentSpec"]["executors"][train_exec]["container"]["resources"]["accelerator"]
    assert res["resourceType"] == "nvidia.com/gpu" and int(res["resourceCount"]) == 1
    assert body["train-model"]["inputs"]["parameters"]["model_overrides"]["componentInputParameter"]
