"""hsnet reproduce: the statistics over seeds against hand computations, Table 6 as DVC
experiments (configurations x seeds) on the tiny sample, the report in the paper's layout with
mean ± sd, n, 95% intervals and the paper's orderings marked, the missing-run message, KTL
configurations skipped without weights, and the KFP ablation pipeline (compiled and run with
kfp.local)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from hsnet import reproduce
from hsnet.paper import CONFIGS, TABLE6
from hsnet.reproduce import exp_name

ROOT = Path(__file__).resolve().parents[2]
TINY = {"input_size": 80, "import": {"split_by": "class", "seed": 0}, "validate": {"min_size": 32},
        "crop": {"detector": "none", "size": 80}, "model": {"ktl": False},
        "train": {"lr": 0.001, "epochs": 1, "batch_size": 16, "seed": 3, "num_threads": 1}}
BASE, DIB, FGAL, KTL = (False, False, False), (True, False, False), (False, True, False), (False, False, True)
DIB_FGAL, ALL = (True, True, False), (True, True, True)

# Student's t, two-sided 95% (the 0.975 quantile), as printed in any statistics table
T975_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
              10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
              18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
              26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def _table(text: str, heading: str, first_cell: str = r"[✓✗]") -> list[list[str]]:
    section = text.split(heading)[1].split("\n## ")[0].split("\n### ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if re.match(rf"\| {first_cell} \|", line)]


def _table6(text: str, dataset: str) -> list[list[str]]:
    return _table(text, f"## Table 6: ablation on {dataset}")


def _orderings(text: str, dataset: str) -> dict[str, list[str]]:
    rows = _table(text, f"### The paper's orderings on {dataset}", r"[A-Za-z][^|]* > [^|]*")
    return {row[0]: row[1:] for row in rows if row[0] != "paper: A > B"}  # not the header


def _row(dataset, cfg, acc, seed=0, experiment=None, ts="2026-01-01T00:00:00"):
    return {"experiment": experiment or exp_name(dataset, cfg, seed), "rev": "x", "timestamp": ts, "seed": seed,
            "dataset": dataset, "config": cfg, "accuracy": acc, "mean_accuracy": acc, "classes": ["a", "b"],
            "confusion_matrix": [[3, 1], [0, 4]], "images": 8}


# --- statistics ----------------------------------------------------------------------------------

def test_t_quantile_matches_the_printed_table():
    for df, t in T975_TABLE.items():
        assert reproduce.t_quantile(0.975, df) == pytest.approx(t, abs=5e-4), df
    assert reproduce.t_quantile(0.975, 1e7) == pytest.approx(1.95996, abs=1e-4)  # the normal's 1.96
    assert reproduce.t_quantile(0.995, 4) == pytest.approx(4.604, abs=5e-4)  # another column: 99%, 4 df


def test_t_quantile_at_fractional_df_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1.3, 2.5, 2.941176, 3.7, 7.25, 19.9, 250.5):
        assert reproduce.t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9), df


def test_summary_by_hand():
    # 90, 92, 94: mean 92; deviations -2, 0, 2 -> sd sqrt(8 / 2) = 2; 95% half width t(2) * 2 / sqrt(3)
    s = reproduce.summarize([90.0, 92.0, 94.0])
    half = 4.302653 * 2 / math.sqrt(3)  # 4.96828
    assert s["n"] == 3 and s["mean"] == pytest.approx(92.0) and s["sd"] == pytest.approx(2.0)
    assert (s["lo"], s["hi"]) == (pytest.approx(92 - half, abs=1e-5), pytest.approx(92 + half, abs=1e-5))
    assert (round(s["lo"], 2), round(s["hi"], 2)) == (87.03, 96.97)
    # two values: 1 df, t = 12.706; sd of 80, 84 = sqrt(8) = 2.828; half = 12.706 * 2.828 / sqrt(2) = 25.41
    s = reproduce.summarize([80.0, 84.0])
    assert s["sd"] == pytest.approx(math.sqrt(8)) and s["half"] == pytest.approx(12.7062 * 2, abs=1e-3)
    one = reproduce.summarize([91.0])
    assert one["n"] == 1 and one["mean"] == 91.0 and one["sd"] is None and one["lo"] is None
    with pytest.raises(ValueError):
        reproduce.summarize([])


def test_welch_comparison_by_hand():
    # A = 90, 92, 94 (mean 92, var 4); B = 85, 86, 87 (mean 86, var 1). Difference 6, standard error
    # sqrt(4/3 + 1/3) = 1.29099, Welch's df (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 50/17 = 2.94118,
    # t_0.975(50/17) = 3.218759 (scipy.stats.t.ppf), half width 4.15540: [1.84460, 10.15540]
    r = reproduce.compare([90.0, 92.0, 94.0], [85.0, 86.0, 87.0])
    assert r["diff"] == pytest.approx(6.0) and r["df"] == pytest.approx(50 / 17)
    assert (r["lo"], r["hi"]) == (pytest.approx(1.84460, abs=1e-4), pytest.approx(10.15540, abs=1e-4))
    assert r["verdict"] == reproduce.SUPPORTED
    assert reproduce.compare([85.0, 86.0, 87.0], [90.0, 92.0, 94.0])["verdict"] == reproduce.REVERSED
    # 1 point apart with a spread of 5 points: the interval holds 0
    near = reproduce.compare([90.0, 95.0, 100.0], [89.0, 94.0, 99.0])
    assert near["verdict"] == reproduce.NOISE and near["lo"] < 0 < near["hi"]
    assert reproduce.compare([92.0], [90.0, 91.0])["verdict"] == reproduce.TOO_FEW
    # no spread at all (a machine that repeats exactly, one seed): the sign decides
    assert reproduce.compare([92.0, 92.0], [90.0, 90.0])["verdict"] == reproduce.SUPPORTED
    assert reproduce.compare([90.0, 90.0], [90.0, 90.0])["verdict"] == reproduce.NOISE


def test_paper_orderings_come_from_table6():
    pairs = reproduce.paper_orderings(CONFIGS)
    assert len(pairs) == 28  # every pair of the 8 rows: the paper's numbers are all different
    assert all(TABLE6[a] > TABLE6[b] for a, b in pairs)
    assert (FGAL, KTL) in pairs and (KTL, FGAL) not in pairs  # 85.73 > 85.26
    assert (DIB, BASE) in pairs and (ALL, DIB_FGAL) in pairs
    assert reproduce.paper_orderings([DIB_FGAL, BASE]) == [(DIB_FGAL, BASE)]


def test_runs_by_config_one_run_per_seed():
    rows = [_row("s", DIB, 0.90, seed=1, ts="2026-01-02"), _row("s", DIB, 0.80, seed=1, ts="2026-01-01"),
            _row("s", DIB, 0.70, seed=0), _row("s", BASE, 0.5, seed=None, experiment="run 0"),
            _row("s", BASE, 0.6, seed=None, experiment="run 1")]
    by_cfg = reproduce.runs_by_config(rows)
    assert [(r["seed"], r["accuracy"]) for r in by_cfg[DIB]] == [(0, 0.70), (1, 0.90)]  # the rerun replaced seed 1
    assert [r["accuracy"] for r in by_cfg[BASE]] == [0.5, 0.6]  # no seed known: each run counts


# --- the report ----------------------------------------------------------------------------------

def test_report_statistics_orderings_and_missing(tmp_path):
    accs = {BASE: [80.0, 81.0, 82.0],   # paper: every other row > baseline
            DIB: [90.0, 92.0, 94.0],    # clearly above the baseline: supported
            FGAL: [70.0, 71.0, 72.0],   # below the baseline and DIB: reversed
            DIB_FGAL: [85.0, 90.0, 95.0]}  # DIB + FGAL > DIB: -2 points within a 5-point spread
    rows = [_row("rafdb", c, a / 100, seed=s) for c, v in accs.items() for s, a in enumerate(v)]
    rows.append(_row("rafdb", DIB, 0.10, seed=2, ts="2025-01-01T00:00:00"))  # an older run of seed 2: replaced
    rows.append(_row("rafdb", KTL, 0.85, seed=0))  # one run only
    rows += [_row("kdef", ALL, a, seed=s, experiment=f"paper-kdef-seed{s}") for s, a in enumerate((0.9, 0.92))]
    r = reproduce.report(tmp_path / "results.md", rows=rows)
    text = (tmp_path / "results.md").read_text()

    table = _table6(text, "rafdb")
    assert [tuple(c == "✓" for c in row[:3]) for row in table] == list(CONFIGS)  # the paper's row order and marks
    by_cfg = {tuple(c == "✓" for c in row[:3]): row[3:] for row in table}
    # n | mean | sd | interval | paper | diff | seeds; DIB by hand: mean 92, sd 2, 92 ± 4.97
    assert by_cfg[DIB] == ["3", "92.00", "2.00", "[87.03, 96.97]", "85.10", "+6.90", "0, 1, 2"]
    assert by_cfg[BASE][:4] == ["3", "81.00", "1.00", "[78.52, 83.48]"]  # 81 ± 4.303 / sqrt(3)
    assert by_cfg[KTL] == ["1", "85.00", "–", "–", "85.26", "-0.26", "0"]
    assert by_cfg[(True, False, True)][0] == "0" and by_cfg[(True, False, True)][-1] == "missing"

    marks = _orderings(text, "rafdb")
    assert marks["DIB > baseline"][0] == "+0.56" and marks["DIB > baseline"][1] == "+11.00"
    assert marks["DIB > baseline"][-1] == "supported"
    assert marks["FGAL > baseline"][-1] == "reversed" and marks["FGAL > DIB"][-1] == "reversed"
    assert marks["DIB + FGAL > DIB"][-1] == "within noise"
    # DIB + FGAL (sd 5) against the baseline (sd 1): 9 points apart, but se = sqrt(25/3 + 1/3) = 2.944 on
    # Welch's 2.16 df (t = 4.0): [-2.81, +20.81] holds 0; against FGAL, 19 points: [+7.19, +30.81]
    assert marks["DIB + FGAL > baseline"][1:] == ["+9.00", "[-2.81, +20.81]", "within noise"]
    assert marks["DIB + FGAL > FGAL"][1:] == ["+19.00", "[+7.19, +30.81]", "supported"]
    assert marks["KTL > baseline"][-1] == "can't tell (n < 2)"
    assert marks["FGAL > KTL"][-1] == "can't tell (n < 2)"
    assert len(marks) == 10  # the 5 rows with runs: every pair the paper orders
    assert "Summary: 2 supported, 2 within noise, 2 reversed, 4 can't tell (n < 2) (of 10)." in text

    # 91 ± 12.706 * 1 = [78.29, 103.71]: no mean accuracy is above 100%, so the upper end is cut there (*)
    assert "| Table 3 | kdef | 2 | 91.00 | 1.41 | [78.29, 100.00*] | 93.35 | -2.35 |" in text
    assert any(m.startswith("rafd (Tables 2-5)") and "--seeds 3" in m for m in r["missing"])
    assert any("ablation rafdb dib1-fgal0-ktl1: no finished run" in m for m in r["missing"])
    assert any("ablation rafdb dib0-fgal0-ktl1: one run" in m for m in r["missing"])
    assert Path(r["charts"]["rafdb"]).stat().st_size > 5000
    assert "| **a** | 9 | 3 |" in text  # a confusion matrix summed over the three runs of a row


def test_only_finished_experiments_count():
    # `dvc exp show --json` (DVC 3) while one experiment runs: it shows the base commit's metrics
    # under its name, with data.rev "workspace" and an executor in state "running"
    running = {"revs": [{"name": "ablation-sample-dib1-fgal0-ktl0-seed0", "data": {"rev": "workspace"}}],
               "executor": {"state": "running", "name": "tempdir", "local": None}}
    done = {"revs": [{"name": "ablation-sample-dib0-fgal0-ktl0-seed0", "data": {"rev": "e111068"}}],
            "executor": None}
    assert reproduce.finished(done) and not reproduce.finished(running)
    for state in ("queued", "failed"):
        assert not reproduce.finished({**running, "executor": {"state": state}})


def test_seeds_must_be_positive(tmp_path):
    from hsnet.errors import HSNetError

    for bad in (0, -2):
        with pytest.raises(HSNetError, match="--seeds"):
            reproduce.ablation("sample", repo=tmp_path, seeds=bad)


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
def test_ablation_with_seeds_then_report(repo, tmp_path, monkeypatch):
    from hsnet.cli import main

    path, env, sh = repo
    monkeypatch.chdir(path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGGFace2 file: the 4 KTL rows are skipped
    for key in ("MLFLOW_TRACKING_URI", "HSNET_CACHE_DIR"):
        monkeypatch.setenv(key, env[key])
    params_before = (path / "params.yaml").read_text()
    # two experiments at a time (--concurrent 2: dvc --wait-for-lock, the MLflow store made first);
    # two rows of Table 6 (--configs) with two seeds each: the baseline and DIB, and HSNet (KTL: skipped)
    assert main(["reproduce", "ablation", "--dataset", "sample", "--seeds", "2", "--concurrent", "2",
                 "--configs", "dib1-fgal1-ktl1, dib1-fgal0-ktl0,dib0-fgal0-ktl0"]) == 0
    assert (path / "params.yaml").read_text() == params_before  # the workspace is left as it was
    listed = sh("dvc", "exp", "list", "--name-only").stdout.split()
    no_ktl = [BASE, DIB]
    assert sorted(listed) == sorted(exp_name("sample", c, s) for c in no_ktl for s in (0, 1))
    # every run's artifacts outlived the experiment copies DVC ran them in and deleted (CI stop 23)
    import mlflow

    runs = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name("hsnet").experiment_id])
    assert len(runs) == 2 * 2 * len(no_ktl)  # a train and an evaluate run per experiment
    for run in runs:
        kept = Path(run.info.artifact_uri.removeprefix("file://"))
        assert ".dvc" not in kept.parts and kept.is_dir(), run.info.artifact_uri
        assert (kept / ("metrics.json" if run.data.tags["step"] == "evaluate" else "history.json")).is_file()

    # each experiment trained the configuration and seed its name says
    shown = {r["experiment"]: r for r in reproduce.collect(path) if r["experiment"].startswith("ablation-")}
    assert {n: (r["config"], r["seed"]) for n, r in shown.items()} == {
        exp_name("sample", c, s): (c, s) for c in no_ktl for s in (0, 1)}

    assert main(["reproduce", "report", "--out", "docs/results.md"]) == 0
    text = (path / "docs" / "results.md").read_text()
    table = {tuple(c == "✓" for c in row[:3]): row[3:] for row in _table6(text, "sample")}
    for c in no_ktl:
        n, mean, sd, interval, *_, seeds = table[c]
        accs = [shown[exp_name("sample", c, s)]["accuracy"] * 100 for s in (0, 1)]
        assert (n, seeds) == ("2", "0, 1")
        assert float(mean) == pytest.approx(sum(accs) / 2, abs=0.006)  # the mean of the two real runs
        assert float(sd) == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2), abs=0.006)
    assert all(table[c][0] == "0" and table[c][-1] == "missing" for c in CONFIGS if c not in no_ktl)
    assert list(_orderings(text, "sample")) == ["DIB > baseline"]  # the one pair of the two rows Table 6 orders
    assert text.count("<details><summary>confusion matrix: sample") == 2
    assert (path / "docs" / "results-ablation-sample.png").is_file()

    sh("dvc", "exp", "remove", exp_name("sample", BASE, 1))
    r = reproduce.report(path / "docs" / "results.md", repo=path)
    assert [m for m in r["missing"] if "ablation sample dib0-fgal0-ktl0: one run" in m]
    assert _table6((path / "docs" / "results.md").read_text(), "sample")[0][3:5] == [
        "1", f"{shown[exp_name('sample', BASE, 0)]['accuracy'] * 100:.2f}"]


@pytest.mark.slow
def test_ktl_configurations_are_skipped_without_weights(repo, tmp_path, monkeypatch):
    path, env, sh = repo
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGGFace2 file here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    r = reproduce.ablation("sample", repo=path, queue=True, seeds=1)
    assert sorted(r["skipped"]) == sorted(exp_name("sample", c, 0) for c in CONFIGS if c[2])
    assert all("VGGFace2 stem weights" in why for why in r["skipped"].values())
    # queued under the configuration's name, or NAME-2 where a finished run has it (an earlier test's
    # in this repository): a queued re-run never removes a finished run
    assert sorted(re.sub(r"-\d+$", "", n) for n in r["queued"]) == sorted(
        exp_name("sample", c, 0) for c in CONFIGS if not c[2])
    finished = set(sh("dvc", "exp", "list", "--name-only").stdout.split())
    for n in r["queued"]:
        base = re.sub(r"-\d+$", "", n)
        assert n == base or base in finished, (n, finished)  # NAME-2 only beside a finished NAME
    assert sh("dvc", "queue", "status").stdout.count("Queued") == 4
    sh("dvc", "queue", "remove", "--all")


def test_configs_by_name():
    from hsnet.errors import HSNetError

    assert reproduce.parse_configs(None) == list(CONFIGS)
    for blank in ("", " ", ",", " , "):  # --configs "$ROWS" with ROWS unset: refused, not all eight started
        with pytest.raises(HSNetError, match="names no configuration.*leave --configs out for all eight"):
            reproduce.parse_configs(blank)
    # in the paper's order, whatever order they were given in; blanks and repeats ignored
    assert reproduce.parse_configs("dib1-fgal1-ktl1, dib0-fgal0-ktl0,,dib0-fgal0-ktl0") == [BASE, ALL]
    with pytest.raises(HSNetError, match=r"--configs: 'dib2-fgal0-ktl0' is not a Table 6 configuration.*dib0-fgal0-ktl0"):
        reproduce.parse_configs("dib0-fgal0-ktl0,dib2-fgal0-ktl0")


def test_unknown_dataset_or_missing_data(repo):
    from hsnet.errors import HSNetError

    path, _, _ = repo
    with pytest.raises(HSNetError, match="no entry under 'datasets'"):
        reproduce.ablation("nope", repo=path)
    with pytest.raises(HSNetError, match="data/raw/rafdb is missing"):
        reproduce.ablation("rafdb", repo=path)
    with pytest.raises(HSNetError, match="no Table 6 configuration to run"):
        reproduce.ablation("sample", repo=path, configs=[])


# --- Kubeflow -----------------------------------------------------------------------------------

def test_kfp_ablation_pipeline_fans_out_over_configurations_and_seeds(tmp_path):
    from pipelines.compile import compile_all

    compile_all(tmp_path)
    pipeline, platform = yaml.safe_load_all((tmp_path / "ablation_pipeline.yaml").read_text())
    committed = (ROOT / "pipelines" / "ablation_pipeline.yaml").read_text()  # byte for byte (compile.stable_header)
    assert committed == (tmp_path / "ablation_pipeline.yaml").read_text(), \
        "pipelines/ablation_pipeline.yaml is stale: python -m pipelines.compile"
    # two branches on runs_per_gpu: one run per GPU pod (train -> evaluate), or groups sharing a GPU
    dags = {name: c["dag"]["tasks"] for name, c in pipeline["components"].items() if "dag" in c}
    loops = {key: t for tasks in dags.values() for key, t in tasks.items() if "parameterIterator" in t}
    assert len(loops) == 2 and all(t["iteratorPolicy"]["parallelismLimit"] == 8 for t in loops.values())
    runs = pipeline["root"]["inputDefinitions"]["parameters"]["runs"]["defaultValue"]
    expected = {(dib, fgal, ktl, seed) for dib, fgal, ktl in CONFIGS for seed in (0, 1, 2)}
    assert len(runs) == 24 and {(r["model"]["dib"], r["model"]["fgal"], r["model"]["ktl"], r["seed"])
                                for r in runs} == expected
    assert pipeline["root"]["inputDefinitions"]["parameters"]["runs_per_gpu"]["defaultValue"] == 1
    # the per-run loop goes over source-version's run_items: runs with each one's seed and stem weights' version
    (per_run,) = [t for t in loops.values()
                  if t["parameterIterator"]["items"]["inputParameter"].endswith("source-version-run_items")]
    (grouped,) = [t for t in loops.values() if t["parameterIterator"]["items"]["inputParameter"].endswith("group-runs-Output")]

    def gpu(body, key):
        exe = pipeline["components"][body[key]["componentRef"]["name"]]["executorLabel"]
        res = pipeline["deploymentSpec"]["executors"][exe]["container"]["resources"]["accelerator"]
        return res["resourceType"], int(res["resourceCount"])

    body = dags[per_run["componentRef"]["name"]]
    assert {"train-model", "evaluate-model"} <= set(body) and gpu(body, "train-model") == ("nvidia.com/gpu", 1)
    params = body["train-model"]["inputs"]["parameters"]
    assert params["model_overrides"]["parameterExpressionSelector"] == 'parseJson(string_value)["model"]'
    assert params["seed"]["parameterExpressionSelector"] == 'parseJson(string_value)["seed"]'
    body = dags[grouped["componentRef"]["name"]]
    assert set(body) == {"train-evaluate-group"} and gpu(body, "train-evaluate-group") == ("nvidia.com/gpu", 1)
    # each branch reports on its own loop's evaluations
    for tasks in dags.values():
        for key, t in tasks.items():
            if key.startswith("ablation-report"):
                src = t["inputs"]["artifacts"]["evaluations"]["taskOutputArtifact"]
                assert src["producerTask"] in tasks and src["producerTask"] in loops


def _ablation_locally(tmp_path, monkeypatch, **arguments):
    """The ablation pipeline run with kfp.local on a tiny sample: 2 configurations (DIB off/on) x
    seeds 0 and 1, 1 epoch each; returns the pipeline root."""
    from kfp import local

    from hsnet.data.sample import generate
    from pipelines.ablation_pipeline import ablation_pipeline
    from pipelines.hsnet_pipeline import DEFAULT_PARAMS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    generate(tmp_path / "raw", per_class=3, size=96, seed=7)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"),
               raise_on_error=True)
    params = copy.deepcopy(DEFAULT_PARAMS)
    params["datasets"]["sample"] = copy.deepcopy(TINY)
    params["datasets"]["sample"]["train"]["max_epochs"] = 1
    runs = [{"model": {"dib": dib, "fgal": False, "ktl": False}, "seed": s} for dib in (False, True) for s in (0, 1)]
    ablation_pipeline(dataset="sample", raw_source=str(tmp_path / "raw"), params=params, runs=runs,
                      mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **arguments)
    return tmp_path / "kfp-root"


@pytest.mark.slow
def test_kfp_ablation_pipeline_runs_locally(tmp_path, monkeypatch):
    """2 configurations x 2 seeds, 1 epoch each, on a tiny sample in a local folder, with kfp.local."""
    root = _ablation_locally(tmp_path, monkeypatch)
    metas = [json.loads(p.read_text()) for p in root.rglob("executor_output.json") if p.parent.name == "train-model"]
    trained = sorted((a["metadata"]["model.dib"], a["metadata"]["train.seed"])
                     for m in metas for a in m["artifacts"]["model"]["artifacts"])
    assert trained == [(False, 0), (False, 1), (True, 0), (True, 1)]  # every configuration with every seed
    evals = [json.loads(p.read_text()) for p in root.rglob("metrics.json") if "evaluate-model" in str(p)]
    assert len(evals) == 4
    _check_report(root, evals)


def _check_report(root, evals):
    (table,) = [p for p in root.rglob("table") if p.parent.name.startswith("ablation-report")]
    text = table.read_text()
    rows = {tuple(c == "✓" for c in row[:3]): row[3:] for row in _table6(text, "sample")}
    for cfg in (BASE, DIB):
        accs = [m["accuracy"] * 100 for m in evals if (m["model"]["dib"], m["model"]["fgal"]) == cfg[:2]]
        assert len(accs) == 2
        assert rows[cfg][0] == "2" and float(rows[cfg][1]) == pytest.approx(sum(accs) / 2, abs=0.006)
    assert list(_orderings(text, "sample")) == ["DIB > baseline"]
    assert "None: every row has finished runs" not in text  # the KTL rows and FGAL's are missing


@pytest.mark.slow
def test_kfp_ablation_pipeline_with_two_runs_per_gpu(tmp_path, monkeypatch):
    """runs_per_gpu=2: the 4 runs in 2 pods, each training its 2 runs side by side, then evaluating
    them; the same Table 6 from the groups' evaluations."""
    root = _ablation_locally(tmp_path, monkeypatch, runs_per_gpu=2)
    groups = [p for p in root.rglob("runs.json") if "train-evaluate-group" in str(p)]
    assert len(groups) == 2  # two pods
    records = [json.loads(p.read_text()) for p in groups]
    assert sorted(len(r) for r in records) == [2, 2]
    for record in records:  # the two runs of a pod trained at the same time
        (a, b) = record.values()
        assert a["returncode"] == b["returncode"] == 0, (a["output"], b["output"])
        assert a["started"] < b["ended"] and b["started"] < a["ended"]
    names = sorted(n for r in records for n in r)
    assert names == sorted(exp_name("sample", (dib, False, False), s) for dib in (False, True) for s in (0, 1))
    evals = [json.loads(p.read_text()) for p in root.rglob("metrics.json") if "train-evaluate-group" in str(p)]
    assert sorted((m["model"]["dib"], m["dataset"]) for m in evals) == [(False, "sample")] * 2 + [(True, "sample")] * 2
    by_name = {p.parent.name: json.loads(p.read_text())["accuracy"]
               for p in root.rglob("metrics.json") if "train-evaluate-group" in str(p)}
    assert by_name == {n: r[n]["accuracy"] for r in records for n in r}
    _check_report(root, evals)


def test_a_report_of_no_experiments_does_not_replace_a_report(tmp_path):
    """In a fresh clone DVC's experiments are not there (git clone doesn't fetch refs/exps), so the
    README's `hsnet reproduce report --out docs/results.md` replaced the committed results with an
    all-"missing" table. With no finished experiment an existing report is kept, and the error says
    why and what to do; where there is no report yet, the to-do table is written."""
    from hsnet.errors import HSNetError

    out = tmp_path / "results.md"
    out.write_text("the committed results\n")
    with pytest.raises(HSNetError, match=r"no finished run for any table.*results\.md is kept.*dvc exp pull .*--all-commits"):
        reproduce.report(out, rows=[])
    assert out.read_text() == "the committed results\n"
    todo = reproduce.report(tmp_path / "new.md", rows=[])
    assert (tmp_path / "new.md").is_file() and todo["missing"]


@pytest.mark.slow
def test_sigterm_stops_the_experiment_and_its_training(repo, tmp_path):
    """SIGTERM to `hsnet reproduce ablation` while an experiment trains: dvc's stage process and the
    training under it stop too, and hsnet says so (exit 143). It raised inside subprocess.run, which
    SIGKILLed dvc alone and left its `hsnet train` running as an orphan (review finding)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    path, env, _ = repo
    proc = subprocess.Popen([sys.executable, "-m", "hsnet", "reproduce", "ablation", "--dataset", "sample",
                             "--seeds", "1"], cwd=path, env={**env, "TORCH_HOME": str(tmp_path / "torch")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.monotonic() + 300, {}
        while time.monotonic() < deadline and proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    seen[child.pid] = child
                    if any(part == "train" for part in child.cmdline()) and "--resume" in child.cmdline():
                        deadline = 0  # an experiment's training is running
                except psutil.Error:
                    continue
            time.sleep(0.2)
        assert proc.poll() is None and deadline == 0, "no training started in 300 s"
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM)" in stderr
    def running(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:  # gone, or a zombie
            return False

    alive = {p.pid: " ".join(p.cmdline()[:6]) for p in seen.values() if running(p)}
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"left running: {alive}"
    assert os.path.exists(path / "params.yaml")


def test_a_failed_experiment_says_why_not_only_that_dvc_failed(capsys, monkeypatch):
    """CI stop 23: "ablation-...-seed0: ERROR: failed to reproduce 'evaluate@sample': ... exited with 1"
    was all a failed experiment said; the cause, printed by the step above dvc's line, was lost."""
    from hsnet import cli

    dvc_line = ("ERROR: failed to reproduce 'evaluate@sample': failed to run: hsnet evaluate --checkpoint "
                "runs/sample/train/best.pt --data data/processed/sample --out runs/sample/eval, exited with 1")
    outputs = {  # what dvc exp run printed, as run_jobs keeps it
        "a-step-error": "Running stage 'evaluate@sample':\n> hsnet evaluate ...\n"
                        "hsnet evaluate: error: runs/sample/train/best.pt: not an HSNet checkpoint\n" + dvc_line,
        "a-traceback": "Running stage 'evaluate@sample':\nTraceback (most recent call last):\n"
                       '  File "x.py", line 3, in <module>\n    f()\n'
                       "sqlite3.OperationalError: database is locked\n\n" + dvc_line,
        "only-dvc": dvc_line,
    }
    monkeypatch.setattr(reproduce, "ablation", lambda *a, **k: {"dataset": "sample", "ran": [], "queued": [],
                                                                 "skipped": {}, "failed": outputs})
    assert cli.main(["reproduce", "ablation", "--dataset", "sample"]) == 1
    printed = capsys.readouterr().out
    assert "hsnet evaluate: error: runs/sample/train/best.pt: not an HSNet checkpoint" in printed
    assert "sqlite3.OperationalError: database is locked" in printed
    assert printed.count("exited with 1") == 3  # dvc's own line still there, once per experiment
    assert "Traceback" not in printed and "line 3" not in printed  # the cause, not the whole output
