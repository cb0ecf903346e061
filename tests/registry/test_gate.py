"""The promotion gate compares like with like: the same test data, split and test-time
augmentation (README, promote: "on the same test data ... and with the same evaluate.tta_hflip"),
with real evaluations of checkpoints whose answers are known (tests/conftest.py ``evaluated``)."""

from __future__ import annotations

import shlex

import pytest
from mlflow import MlflowClient

from hsnet.evaluate import evaluate
from hsnet.params import EvaluateParams
from hsnet.registry import PromotionRefused, promote, register


def test_an_evaluation_with_test_time_flips_is_not_compared_with_one_without(
        quick_log_model, local_mlflow, evaluated, gate_data, tmp_path):
    """evaluate.tta_hflip averages each prediction with the flipped image's: another measurement
    of the same checkpoint on the same photos. A candidate measured with it is not compared with
    production measured without: refused as not comparable (``--force`` still promotes), and the
    advised command measures production with the candidate's setting; once production's
    checkpoint is evaluated so (tracked), the gate compares the two."""
    from hsnet.cli import build_parser

    prod_ckpt, prod_metrics, _ = evaluated(1)  # answers class 1: far below a class-0 answerer on gate_data
    register(prod_ckpt, prod_metrics, "sample")
    assert promote("hsnet-sample")["production"] == 1
    cand_ckpt, _, _ = evaluated(0)
    flipped = evaluate(cand_ckpt, gate_data, tmp_path / "cand-tta", settings=EvaluateParams(tta_hflip=True),
                       progress=False)
    assert flipped["tta_hflip"] is True
    assert register(cand_ckpt, tmp_path / "cand-tta" / "metrics.json", "sample")["version"] == 2
    with pytest.raises(PromotionRefused, match=r"evaluate\.tta_hflip True.*production \(version 1\) with False.*"
                                               r"not comparable") as refused:
        promote("hsnet-sample")
    command = str(refused.value).split("then hsnet evaluate ", 1)[1].split(", tracked)")[0]
    command = command.replace("<the candidate's crops>", "crops").replace("<its best.pt>", "best.pt")
    args = build_parser().parse_args(["evaluate", *shlex.split(command)])
    assert args.tta_hflip is True  # the advice measures production as the candidate was measured

    evaluate(prod_ckpt, gate_data, tmp_path / "prod-tta", settings=EvaluateParams(tta_hflip=True), progress=False)
    decision = promote("hsnet-sample")
    assert decision["promoted"] and decision["production"] == 2 and not decision["forced"], decision
    assert decision["production_value"] < decision["candidate_value"]


def test_an_altered_newer_evaluation_of_production_falls_back_to_an_older_valid_one(
        quick_log_model, local_mlflow, evaluated, other_test_data, tmp_path, caplog):
    """Production re-measured on the candidate's test data twice; the newer record was changed
    afterwards (a metric logged again: not a measurement). The gate skips it, says so, and
    compares with the older, valid evaluation, instead of refusing as if production had never
    been measured there."""
    prod_ckpt, prod_metrics, _ = evaluated(1)
    register(prod_ckpt, prod_metrics, "sample")
    assert promote("hsnet-sample")["production"] == 1
    cand_ckpt, cand_metrics, _ = evaluated(0, data=other_test_data)
    register(cand_ckpt, cand_metrics, "sample")
    evaluate(prod_ckpt, other_test_data, tmp_path / "prod-again-1", progress=False)  # valid
    newer = evaluate(prod_ckpt, other_test_data, tmp_path / "prod-again-2", progress=False)
    MlflowClient(local_mlflow).log_metric(newer["mlflow_run_id"], "test_accuracy", 0.0)  # altered afterwards
    with caplog.at_level("WARNING", logger="hsnet"):
        decision = promote("hsnet-sample")
    assert decision["promoted"] and decision["production"] == 2 and not decision["forced"], decision
    assert decision["production_evaluation_run_id"] != newer["mlflow_run_id"]
    assert newer["mlflow_run_id"] in caplog.text


@pytest.mark.parametrize("given", ["http://127.0.0.1:5000", "http://alice:s3cr3t@127.0.0.1:5000",
                                   "postgresql://mlflow:s3cr3t@db:5432/mlflow"])
def test_the_refusals_download_names_only_hsnets_own_store(monkeypatch, tmp_path, given):
    """A store the user gave in MLFLOW_TRACKING_URI is theirs in the shell they paste into (with its
    credentials; a URI hsnet prints has them masked, and a command naming it would log in with
    '***'); hsnet's own local store, used when none is given, is named: the mlflow CLI's default
    is another."""
    from hsnet import tracking
    from hsnet.registry import _how_to_measure

    fig, measured = {"evaluation_run_id": "a" * 32, "checkpoint_file": "best.pt"}, ("sha256:0123456789abcdef",
                                                                                 "test", "False")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", given)
    tracking.tracking_uri()  # what every hsnet step does first (moves an http URI's credentials out)
    advice = _how_to_measure(fig, measured)
    assert advice.startswith("mlflow artifacts download -r " + "a" * 32 + " -a checkpoint/best.pt"), advice
    assert "s3cr3t" not in advice
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "mlflow.db").touch()
    assert _how_to_measure(fig, measured).startswith(
        f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'} mlflow artifacts download")
