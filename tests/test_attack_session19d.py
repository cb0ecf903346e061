"""Attack, session 19d: an epoch's metrics reach MLflow once its checkpoint is durable (82ad0c7).

hsnet.train._fit's docstring: "An epoch's metrics go to the MLflow run once its checkpoint is where a
resume starts from ... and all of them when the training ends. A retried Kubeflow pod, which starts
after the last *uploaded* epoch, then trains the lost epochs again without logging them twice".
Each test names the promise or the expectation it checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hsnet.params import Params

pytestmark = pytest.mark.slow

PARAMS = ("datasets:\n  sample:\n    input_size: 80\n    crop: {detector: none, size: 80}\n    model: {ktl: false}\n"
          "    train: {lr: 0.001, epochs: 3, batch_size: 16, seed: 3}\n")


def _params(tmp_path: Path, epochs: int = 3) -> Params:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.replace("epochs: 3", f"epochs: {epochs}"))
    return Params.resolve(path, "sample")


class _Prefix:
    """hsnet.durable.Uploader on a folder for a prefix: uploads after the first epoch and then not
    again within the interval (longer than these epochs); ``flush_fails``: the end's upload fails
    (hsnet.durable.Uploader._upload returns False on a BotoCoreError/ClientError and goes on)."""

    def __init__(self, folder: Path, flush_fails: bool = False):
        self.folder, self.flush_fails, self.uploads = folder, flush_fails, 0

    def _upload(self, out_dir: Path) -> bool:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        shutil.copytree(out_dir, self.folder, ignore=shutil.ignore_patterns(".*", "*.tmp"))
        self.uploads += 1
        return True

    def __call__(self, out_dir, improved) -> bool:
        return self._upload(Path(out_dir)) if self.uploads == 0 else False  # the interval is not over

    def flush(self, out_dir) -> bool:
        return False if self.flush_fails else self._upload(Path(out_dir))


def test_a_failed_final_upload_does_not_log_the_retried_epochs_twice(tiny_data, local_mlflow, tmp_path):
    """durable.Uploader.flush's docstring: the end's upload is there because "the step may still fail
    after it, e.g. exporting the model, and a retry then starts from here". When that upload fails
    (an S3 hiccup: Uploader logs it and returns False), _fit logs the pending epochs anyway
    (hsnet/train.py: `on_checkpoint.flush(out_dir)` then `_log_rows(pending, active)` whatever it
    returned). The pod then fails after training (export_model, the Model artifact's upload, a
    preemption), Kubeflow retries it, the retry restores the last *uploaded* last.pt (epoch 1),
    continues the same MLflow run (_logged_through finds step 2 logged, adds nothing) and trains epoch 2
    again: it is logged a second time, from another trajectory -- what 82ad0c7 set out to
    prevent ("without logging them twice")."""
    import mlflow

    from hsnet.checkpoint import load
    from hsnet.train import train

    from hsnet.errors import HSNetError

    params = _params(tmp_path, epochs=2)
    prefix = tmp_path / "s3-prefix"
    try:  # a fix may well fail the step here (its model is not durable): a retry follows either way
        train(tiny_data, params, tmp_path / "pod1", progress=False, resume="auto",
              on_checkpoint=_Prefix(prefix, flush_fails=True))
    except HSNetError:
        pass
    # ... and the step fails after training (export, artifact upload, preemption): Kubeflow retries it
    first = load(prefix / "last.pt")
    assert first["state"]["epoch"] == 1  # the last upload that went through
    pod2 = tmp_path / "pod2"
    summary = train(tiny_data, params, pod2, progress=False, resume="auto",
                    on_start=lambda folder: [shutil.copy2(prefix / n, folder / n) for n in ("best.pt", "last.pt")],
                    on_checkpoint=_Prefix(prefix))
    assert summary["mlflow_run_id"] == first["meta"]["mlflow_run_id"]  # the same run, continued
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(summary["mlflow_run_id"], "val_accuracy")]
    history = json.loads((pod2 / "history.json").read_text())
    assert sorted(steps) == [row["epoch"] for row in history] == [1, 2], (
        f"the run's val_accuracy was logged at steps {sorted(steps)}; the model's history has epochs "
        f"{[row['epoch'] for row in history]}")
    # the retry trained epoch 2 again: the run keeps the first attempt's figures for it, and says so
    assert mlflow.MlflowClient().get_run(summary["mlflow_run_id"]).data.tags["epochs_logged_by_earlier_attempt"] == "2-2"


def test_a_run_stopped_by_a_guard_shows_the_epochs_the_guard_judged(tiny_data, local_mlflow, tmp_path,
                                                                    monkeypatch):
    """hsnet.guards stops a hopeless run mid-loop (HSNetError, e.g. "the validation accuracy stayed at
    chance ... (epochs 1-3)"); the user opens the MLflow run to see those curves. With durable
    checkpoints (every Kubeflow train step and the ablation group's `hsnet train --checkpoint-uri`),
    the epochs after the last upload are only `pending` in _fit, and the guard's exception drops them:
    they are in last.pt (locally) but never in MLflow, and a retry re-trains to the same guard and
    drops them again. The end of a training flushes and logs the pending epochs (early stopping,
    stop_after_epochs); a guard's stop is an end too. Here: epoch 1 uploaded, epoch 2 checkpointed
    locally, the guard stops the run at epoch 3: the run must show epoch 2 (it shows only epoch 1)."""
    import mlflow

    from hsnet import guards
    from hsnet.checkpoint import load
    from hsnet.errors import HSNetError
    from hsnet.train import train

    real = guards.check_epoch

    def check_epoch(row, history, *args, **kwargs):
        real(row, history, *args, **kwargs)
        if row["epoch"] == 3:  # what a run at chance for chance_window epochs raises
            raise HSNetError(f"training is not learning: the validation accuracy stayed at chance for 3 epochs "
                             f"(epochs 1-{row['epoch']})")

    monkeypatch.setattr(guards, "check_epoch", check_epoch)
    out = tmp_path / "pod1"
    with pytest.raises(HSNetError, match="not learning"):
        train(tiny_data, _params(tmp_path), out, progress=False, resume="auto",
              on_checkpoint=_Prefix(tmp_path / "s3-prefix"))
    last = load(out / "last.pt")
    run_id = last["meta"]["mlflow_run_id"]
    steps = sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy"))
    trained = [row["epoch"] for row in last["state"]["history"]]
    assert trained == [1, 2]
    assert steps == trained, f"the stopped run shows val_accuracy at steps {steps}; it trained epochs {trained}"


def test_a_version_registered_by_kubeflow_names_its_pipeline_run():
    """82ad0c7: "every run tags its Kubeflow run (kfp_run_id)" (hsnet.tracking.origin_tags: "What
    started a run, where the environment says"); register() puts origin_tags() on the registered
    version too, for an auditor holding only the production model. The environment says it only in
    pods that get KFP_RUN_ID from the pod label (pipelines/hsnet_pipeline.py with_run_id), and only
    the train task does: the evaluate run, the register run and the registered version of every
    Kubeflow run carry no kfp_run_id (their pods have no KFP_RUN_ID; a Kubeflow pod's label
    pipeline/runid is the only place the id is, as with_run_id says)."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parent))
    from kfp_ir import container_tasks

    root = Path(__file__).resolve().parents[1]
    pipeline, platform = yaml.safe_load_all((root / "pipelines" / "hsnet_pipeline.yaml").read_text())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    missing = []
    for key, task in container_tasks(pipeline):
        if task["taskInfo"]["name"] not in ("evaluate", "register"):
            continue
        executor = pipeline["components"][task["componentRef"]["name"]]["executorLabel"]
        env = k8s.get(executor, {}).get("fieldPathAsEnv", [])
        if not any(e.get("name") == "KFP_RUN_ID" for e in env):
            missing.append(key)
    assert not missing, f"these steps record MLflow runs (and register a version) without KFP_RUN_ID: {missing}"


def test_a_rolled_back_version_promoted_again_on_purpose_is_not_marked_rolled_back(local_mlflow, evaluated,
                                                                                   quick_log_model):
    """README: `promote` refuses a version tagged ``rolled_back_at`` "(`--version N --force` puts it
    back on purpose)"; 82ad0c7 moved a returning version's ``rolled_back_at`` to ``was_rolled_back_at``
    on a second rollback because "what serves is not 'rolled back'" (hsnet/registry.py rollback).
    The other way back into production, the forced promotion the README names, leaves the tag: the
    version serving in production says it was rolled back out of production, and a later
    `promote --version N` of it is refused as rolled back again."""
    import mlflow

    from hsnet.registry import ROLLED_BACK_TAG, promote, register, rollback

    name = "hsnet-sample-forced-back"
    for _ in range(2):
        ckpt, metrics, _m = evaluated(0)
        register(ckpt, metrics, "sample", name=name)
        promote(name)  # v1 alone, then v2 (a tie passes at --min-delta 0)
    client = mlflow.MlflowClient()
    rollback(name)  # v1 back; v2 tagged rolled_back_at
    assert promote(name, version=2, force=True)["production"] == 2  # v2 back on purpose
    prod = client.get_model_version_by_alias(name, "production")
    assert str(prod.version) == "2"
    assert ROLLED_BACK_TAG not in prod.tags, (
        f"production (version 2) carries {ROLLED_BACK_TAG}={prod.tags[ROLLED_BACK_TAG]!r}: {prod.tags}")


def test_a_training_whose_end_upload_failed_shows_all_its_epochs(tiny_data, local_mlflow, tmp_path, caplog):
    """The leftover of sessions 26-30: the end's upload fails (an S3 hiccup after the last epoch),
    the step goes on and succeeds, and nothing retries it. The MLflow run ended FINISHED with
    val_accuracy at step 1 only, though the model (history.json) trained epochs 1 and 2: the run a
    user compares and registers from lacked its last epochs for good. The expectation: the run
    shows every epoch the model trained, [1, 2], and the log says the end's checkpoint is not
    durable."""
    import logging

    import mlflow

    from hsnet.train import train

    with caplog.at_level(logging.WARNING, logger="hsnet.train"):
        summary = train(tiny_data, _params(tmp_path, epochs=2), tmp_path / "pod1", progress=False, resume="auto",
                        on_checkpoint=_Prefix(tmp_path / "s3-prefix", flush_fails=True))
    run = mlflow.MlflowClient().get_run(summary["mlflow_run_id"])
    steps = sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy"))
    history = json.loads((tmp_path / "pod1" / "history.json").read_text())
    assert run.info.status == "FINISHED"
    assert steps == [row["epoch"] for row in history] == [1, 2], f"the finished run shows steps {steps}"
    assert "did not go up" in caplog.text
