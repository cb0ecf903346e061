"""Every change of production, and every refusal, leaves a record: MLflow keeps no history of alias
moves, so "who put version 4 in production, when, and why" is answered by ``hsnet promote
--history`` (runs of experiment hsnet tagged step=promote), not by the latest tags alone."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from hsnet.cli import main
from hsnet.errors import HSNetError
from hsnet.registry import PromotionRefused, promote, promotion_history, register, rollback

pytestmark = pytest.mark.slow


def test_every_promotion_rollback_and_refusal_is_recorded_in_order(local_mlflow, evaluated, share, capsys,
                                                                    monkeypatch):
    name = "hsnet-history"
    monkeypatch.setenv("KFP_RUN_ID", "run-abc")  # as a Kubeflow step: the pipeline run that did it
    always1, m1, _ = evaluated(1)
    register(always1, m1, "sample", name=name)
    promote(name)                                     # 1: no production yet -> version 1
    always0, m0, _ = evaluated(0)
    assert share(0) > share(1)
    register(always0, m0, "sample", name=name)
    with pytest.raises(PromotionRefused):
        promote(name, min_delta=1.0)                  # 2: refused, production stays 1
    promote(name)                                     # 3: version 2 beats 1
    rollback(name)                                    # 4: back to 1
    promote(name, version=2, force=True)              # 5: forced (2 was rolled back)

    rows = promotion_history(name)
    assert [r["action"] for r in rows] == ["promote", "rollback", "promote", "promote", "promote"]  # newest first
    assert [r["outcome"] for r in rows] == ["moved", "moved", "moved", "refused", "moved"]
    assert [(r["production"], r["previous"]) for r in rows] == [(2, 1), (1, 2), (2, 1), (1, None), (1, None)]
    assert [r["forced"] for r in rows] == [True, False, False, False, False]
    assert "rolled back" in rows[0]["reason"] and "does not beat production" in rows[3]["reason"]
    assert all(r["kfp_run_id"] == "run-abc" and r["time"].endswith("Z") for r in rows)
    assert all(r["run_id"] for r in rows)

    # the records are runs in the store, readable without hsnet
    client = MlflowClient(local_mlflow)
    runs = client.search_runs([client.get_experiment_by_name("hsnet").experiment_id],
                              f"tags.step = 'promote' and tags.model = '{name}'")
    assert len(runs) == 5

    assert main(["promote", "--name", name, "--history"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and "rollback" in out[2] and "refused" in out[4] and "FORCED" in out[1], out


def test_the_history_of_another_model_or_none(local_mlflow, evaluated):
    a, ma, _ = evaluated(1)
    register(a, ma, "sample", name="hsnet-h1")
    promote("hsnet-h1")
    with pytest.raises(HSNetError, match="no registered model 'hsnet-h1x'.*hsnet-h1"):  # a misspelt name
        promotion_history("hsnet-h1x")
    assert len(promotion_history("hsnet-h1")) == 1


@pytest.mark.parametrize("name", ["it's", 'say "x"', "both'\"", "back\\slash"])
def test_a_name_with_quotes_finds_its_own_records(local_mlflow, name):
    """MLflow's search filter has no escape for a quote: each name finds its own records, not
    another's, and no filter error."""
    from hsnet import tracking

    client = MlflowClient(local_mlflow)
    experiment = client.create_experiment(tracking.EXPERIMENT)
    for model in (name, "other"):
        client.create_registered_model(model)
        client.create_run(experiment, tags={"step": "promote", "model": model, "action": "promote",
                                            "outcome": "moved", "production": "3"})
    rows = promotion_history(name)
    assert [(r["action"], r["production"]) for r in rows] == [("promote", 3)]


def test_a_record_does_not_load_torch(local_mlflow, tmp_path):
    """The Kubeflow promote pod is small (pipelines/hsnet_pipeline.py: 1-2 GiB): its record computes
    nothing, so it doesn't import torch (for a run's system tags: 230 MB -> 840 MB measured)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from mlflow import MlflowClient\n"
            "from hsnet.registry import rollback, promotion_history\n"
            "MlflowClient().create_registered_model('hsnet-small')\n"
            "try:\n    rollback('hsnet-small')\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
            "assert [r['outcome'] for r in promotion_history('hsnet-small')] == ['refused']\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["HSNetError", "False"], out.stdout


def test_history_with_an_action_flag_is_refused_by_name(local_mlflow, capsys):
    """`--history --rollback` listed the history and exited 0, leaving the rollback undone unsaid."""
    from mlflow import MlflowClient

    MlflowClient(local_mlflow).create_registered_model("hsnet-flags")
    assert main(["promote", "--name", "hsnet-flags", "--history", "--rollback"]) == 2
    assert "--history only lists; it doesn't go with --rollback" in capsys.readouterr().err
    assert promotion_history("hsnet-flags") == []  # nothing was done, so nothing recorded


def test_a_failure_that_cannot_be_recorded_is_still_the_error_shown(local_mlflow, monkeypatch):
    """registry.failures_recorded: when the record itself can't be made (the store refuses a new
    run), the change's own failure is what the user sees, not the store's."""
    from contextlib import contextmanager

    from mlflow import MlflowClient

    from hsnet import deploy, tracking

    MlflowClient(local_mlflow).create_registered_model("hsnet-norecord")

    @contextmanager
    def no_store(*args, **kwargs):
        raise tracking.TrackingUnavailable("the store refuses new runs")
        yield
    monkeypatch.setattr(tracking, "run", no_store)
    with pytest.raises(HSNetError, match="no 'previous'"):
        deploy.rollback_production("hsnet-norecord")  # refused by rollback_target's checks


def test_a_failed_change_is_recorded_while_the_lock_is_held(local_mlflow, evaluated, share, monkeypatch):
    """The record's production/previous are "as they stand after it" (registry._recorded): for a
    refusal or an error inside the lock too, they are read before the lock is released, so a
    promotion that starts the moment this one ends can't put its own versions in this record."""
    from hsnet import registry

    name = "hsnet-history-lock"
    always1, m1, _ = evaluated(1)
    register(always1, m1, "sample", name=name)
    promote(name)
    always0, m0, _ = evaluated(0)
    assert share(0) > share(1)
    register(always0, m0, "sample", name=name)

    held = []
    close = registry._close_record

    def closing(client, model, outcome, *args):
        try:
            client.get_registered_model(model + registry.LOCK_SUFFIX)
            held.append((outcome, True))
        except Exception:  # noqa: BLE001 - no lock model: released
            held.append((outcome, False))
        return close(client, model, outcome, *args)

    monkeypatch.setattr(registry, "_close_record", closing)
    with pytest.raises(PromotionRefused):
        promote(name, min_delta=1.0)      # refused inside the lock
    promote(name)                         # moved inside the lock
    with pytest.raises(HSNetError, match="while version 9 was being"):
        rollback(name, expect=9)          # refused inside the lock
    assert held == [("refused", True), ("moved", True), ("refused", True)], held


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_version_is_registered_with_test_figures_only(local_mlflow, trained, gate_data, tmp_path, split, capsys):
    """A registered version's figures are its "test accuracy" (the version's description and tags,
    ``hsnet register``'s line, the promotion gate). An evaluation on the training or validation
    split measures images the model was trained or selected on: registered, its training accuracy
    would be shown as test accuracy, and a first promotion (no production to compare with) would
    put it in production on that figure. Register refuses it, naming the split and what to run."""
    from hsnet.evaluate import evaluate

    evaluate(trained["checkpoint"], gate_data, tmp_path / "ev", split=split, progress=False)
    with pytest.raises(HSNetError, match=f"{split} split.*--split test"):
        register(trained["checkpoint"], tmp_path / "ev" / "metrics.json", "sample", name="hsnet-split")
    assert main(["register", "--checkpoint", str(trained["checkpoint"]), "--metrics", str(tmp_path / "ev" / "metrics.json"),
                 "--dataset", "sample", "--name", "hsnet-split"]) == 2
    assert MlflowClient(local_mlflow).search_model_versions("name = 'hsnet-split'") == []
