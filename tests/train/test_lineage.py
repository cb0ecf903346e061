"""Which code and which runs trained a checkpoint (hsnet.train.lineage, hsnet.tracking.trained_by),
and an MLflow run's per-epoch figures against the model's own history after a kill."""
from __future__ import annotations

import pytest

from hsnet.train import lineage
from hsnet.tracking import trained_by

A, B = "a" * 40, "b" * 40


def test_a_fresh_training_is_one_entry_and_a_resume_adds_one_only_when_something_changed():
    now = {"git_commit": A, "code_version": "sha256:1", "mlflow_run_id": "r1"}
    fresh = lineage(None, 0, now)
    assert fresh == [{"from_epoch": 1, "git_commit": A, "code_version": "sha256:1", "mlflow_run_id": "r1"}]
    assert lineage({"lineage": fresh}, 5, now) == fresh  # the same commit, code and run: one entry
    later = lineage({"lineage": fresh}, 5, {**now, "git_commit": B})
    assert later == fresh + [{"from_epoch": 6, "git_commit": B, "code_version": "sha256:1", "mlflow_run_id": "r1"}]
    # resumed at epoch 3 from a checkpoint whose record goes further (an older last.pt): only what it holds
    assert lineage({"lineage": later}, 3, now) == fresh
    # a checkpoint of an hsnet before the lineage: its own fields stand for its epochs
    old = {"git_commit": A, "code_version": "sha256:0", "mlflow_run_id": None}
    assert lineage(old, 4, now) == [{"from_epoch": 1, "git_commit": A, "code_version": "sha256:0", "mlflow_run_id": None},
                                    {"from_epoch": 5, **now}]


def test_the_tags_name_every_commit_and_run_in_order_and_nothing_unrecorded():
    meta = {"mlflow_run_id": "r2", "stem_weights_sha256": "f" * 64, "lineage": [
        {"from_epoch": 1, "git_commit": A + "-dirty", "code_version": "sha256:1", "mlflow_run_id": "r1"},
        {"from_epoch": 4, "git_commit": B, "code_version": "sha256:1", "mlflow_run_id": "r1"},
        {"from_epoch": 9, "git_commit": B, "code_version": "sha256:2", "mlflow_run_id": "r2"}]}
    assert trained_by(meta) == {"train_git_commit": f"{A}-dirty, then {B}", "train_code_version": "sha256:1, then sha256:2",
                                "train_run_id": "r2", "train_run_ids": "r1, then r2", "stem_weights_sha256": "f" * 64}
    # trained with --no-mlflow, before the lineage: no run, and no "None"
    assert trained_by({"git_commit": A, "code_version": "sha256:1", "mlflow_run_id": None}) == {
        "train_git_commit": A, "train_code_version": "sha256:1"}


def test_a_kill_between_an_epochs_checkpoint_and_its_log_is_logged_by_the_resume(tiny_data, tiny_params, local_mlflow,
                                                                                  tmp_path, monkeypatch):
    """The figures go to MLflow after the local checkpoint: killed in between, last.pt holds the epoch
    and the run doesn't; the resume (same run) logs it, once."""
    import mlflow

    import hsnet.train as train_mod
    from hsnet.params import Params

    params = Params.resolve(tiny_params, "sample", {"train": {"epochs": 3}})
    real = train_mod._log_rows

    class Killed(BaseException):
        pass

    def dies_at_epoch_2(rows, active, **kwargs):
        if any(r["epoch"] == 2 for r in rows):
            raise Killed
        return real(rows, active, **kwargs)

    monkeypatch.setattr(train_mod, "_log_rows", dies_at_epoch_2)
    with pytest.raises(Killed):
        train_mod.train(tiny_data, params, tmp_path / "run", progress=False)
    monkeypatch.setattr(train_mod, "_log_rows", real)
    summary = train_mod.train(tiny_data, params, tmp_path / "run", progress=False, resume=True)
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(summary["mlflow_run_id"], "val_accuracy")]
    assert sorted(steps) == [1, 2, 3]
