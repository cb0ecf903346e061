"""Attack 24a: upgrading a working install. Artifacts an older hsnet made (its MLflow store,
registered versions, checkpoints) used by this hsnet after a ``git pull``.

The promise under attack (the brief, and hsnet.checkpoint.OtherFormat / hsnet.registry's gate):
an upgrade either carries on correctly or stops with a clear error naming the file and what to
do, and what it says to do can be done.

The older artifacts are built by hand from what the older code wrote (``git show
686b8fb:hsnet/checkpoint.py``: the same checkpoint keys with ``"format": 1``; ``hsnet evaluate``'s
run: params checkpoint, checkpoint_sha256, split, test_data_version, tta_hflip, metrics
test_accuracy / test_mean_accuracy, the checkpoint logged as ``checkpoint/best.pt``; the
registration run's params evaluation_run_id and checkpoint_sha256), so the test runs this hsnet
only.
"""

from __future__ import annotations

import hashlib
import re

import pytest
import torch


def _tiny_crops(base):
    """Sample photos cut as this hsnet cuts them (detector none, 80 px): the candidate's data."""
    from hsnet.data.crop import crop
    from hsnet.data.datasets import import_dataset
    from hsnet.data.sample import generate
    from hsnet.params import CropParams

    generate(base / "raw", per_class=4, size=96, seed=5)
    import_dataset("sample", base / "raw", base / "manifest.csv")
    crop(base / "manifest.csv", base / "raw", base / "crops", settings=CropParams(detector="none", size=80),
         progress=False)
    return base / "crops"


def _format1_checkpoint(path, classes):
    """A best.pt as hsnet before checkpoint format 2 (commit f2e1649) wrote it: the same keys,
    ``format`` 1 (the architecture then differed; this hsnet refuses it by its format alone)."""
    from hsnet import checkpoint
    from hsnet.params import ModelParams

    model = checkpoint.build_model(len(classes), ModelParams(ktl=False), for_checkpoint=True)
    meta = {"dataset": "sample", "classes": list(classes), "input_size": 80,
            "model": {"dib": True, "fgal": True, "ktl": False, "stem_weights": "vggface2"},
            "data_version": "sha256:78dc1f8c0ea4d443", "params": {}, "code_version": "sha256:0ld0ld0ld0ld0ld0"}
    state = {"epoch": 2, "best_epoch": 2, "best_acc": 0.5, "stale": 0, "history": []}
    torch.save({"format": 1, "meta": meta, "model": model.state_dict(), "state": state}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registered(client, name, version_alias, sha, data_version, accuracy, checkpoint_file=None, fmt=None):
    """One version as an hsnet register made it: an evaluate run with its figures (and the
    checkpoint it measured), a registration run naming it, the version, an alias."""
    import mlflow

    from hsnet import tracking

    exp = client.get_experiment_by_name(tracking.EXPERIMENT) or client.get_experiment(
        client.create_experiment(tracking.EXPERIMENT))
    ev = client.create_run(exp.experiment_id, tags={"step": "evaluate", "dataset": "sample"},
                           run_name="evaluate-sample")
    for k, v in {"checkpoint": "runs/sample/train/best.pt", "checkpoint_sha256": sha, "split": "test",
                 "test_data_version": data_version, "tta_hflip": "False"}.items():
        client.log_param(ev.info.run_id, k, v)
    client.log_metric(ev.info.run_id, "test_accuracy", accuracy)
    client.log_metric(ev.info.run_id, "test_mean_accuracy", accuracy)
    if checkpoint_file is not None:
        client.log_artifact(ev.info.run_id, str(checkpoint_file), artifact_path="checkpoint")
    client.set_terminated(ev.info.run_id, "FINISHED")
    reg = client.create_run(exp.experiment_id, tags={"step": "register"}, run_name="register-sample")
    client.log_param(reg.info.run_id, "evaluation_run_id", ev.info.run_id)
    client.log_param(reg.info.run_id, "checkpoint_sha256", sha)
    if fmt is not None:  # what hsnet register records since session 24
        client.log_param(reg.info.run_id, "checkpoint_format", fmt)
    client.set_terminated(reg.info.run_id, "FINISHED")
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    mv = client.create_model_version(name, f"runs:/{reg.info.run_id}/model", run_id=reg.info.run_id,
                                     tags={"checkpoint_sha256": sha, "registration": "complete"},
                                     description="HSNet on sample")
    client.set_registered_model_alias(name, version_alias, mv.version)
    return mv


def test_promotion_after_upgrade_advises_an_evaluation_this_hsnet_refuses(tmp_path, monkeypatch):
    """Production was registered by an hsnet of checkpoint format 1; after the upgrade the same
    photos are cropped again (the manifest now carries pixels_sha256, so another data version),
    a new model is trained, registered and promoted. The gate refuses (the figures were measured
    on other data) and says what to do: "evaluate production's checkpoint there (mlflow
    artifacts download -r ... -a checkpoint/best.pt ..., then hsnet evaluate --checkpoint
    production-checkpoint/best.pt --data <the candidate's crops> ...) and promote again".

    Independent expectation (the brief's promise: a clear error naming what to do): the advice
    can be followed. This hsnet's evaluate refuses a format-1 checkpoint ("was written by an older
    hsnet ... train it again with this version"), so the advised step is a dead end, and the
    refusal never says that production's model is one this hsnet can't load or serve at all.
    Either the advised evaluation works, or the refusal says that production's checkpoint is of
    an older format (and what to do instead: e.g. promote with --force)."""
    import mlflow

    from hsnet import registry, tracking
    from hsnet.data.datasets import get_spec
    from hsnet.errors import HSNetError
    from hsnet.evaluate import evaluate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    crops = _tiny_crops(tmp_path)
    client = mlflow.MlflowClient()
    old_best = tmp_path / "old" / "best.pt"
    old_best.parent.mkdir()
    old_sha = _format1_checkpoint(old_best, get_spec("sample").classes)
    _registered(client, "hsnet-sample", "production", old_sha, "sha256:78dc1f8c0ea4d443", 0.9,
                checkpoint_file=old_best)
    _registered(client, "hsnet-sample", "candidate", "b" * 64, tracking.data_version(crops / "manifest.csv"), 0.95)

    with pytest.raises(registry.PromotionRefused) as refused:
        registry.promote("hsnet-sample")
    message = str(refused.value)
    if re.search(r"format|older hsnet|can't (be )?(load|evaluat|read)", message, re.I):
        return  # the refusal names the real obstacle
    found = re.search(r"-r (\S+) -a (\S+)", message)
    assert found, f"the refusal names no way to measure production on the candidate's data: {message}"
    local = mlflow.artifacts.download_artifacts(run_id=found.group(1), artifact_path=found.group(2).strip("'"),
                                                dst_path=str(tmp_path / "production-checkpoint"))
    try:
        evaluate(local, crops, tmp_path / "production-evaluation", progress=False)
    except HSNetError as exc:
        pytest.fail(f"the gate's advice can't be followed: {exc}\n(the refusal: {message})")


def test_a_production_of_a_recorded_older_format_is_named_by_the_gate(tmp_path, monkeypatch):
    """Session 24's fix, for versions registered since: register records the checkpoint's format
    (a param of the registration run); when production's is not this hsnet's (format 1 here, this
    hsnet reads 2: hsnet.checkpoint.FORMAT), the gate says production can be neither evaluated nor
    served by this release and names the way out (--force), instead of advising an evaluation that
    would be refused."""
    import mlflow

    from hsnet import registry, tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    crops = _tiny_crops(tmp_path)
    client = mlflow.MlflowClient()
    _registered(client, "hsnet-sample", "production", "a" * 64, "sha256:78dc1f8c0ea4d443", 0.9, fmt="1")
    _registered(client, "hsnet-sample", "candidate", "b" * 64, tracking.data_version(crops / "manifest.csv"), 0.95,
                fmt="2")
    with pytest.raises(registry.PromotionRefused) as refused:
        registry.promote("hsnet-sample")
    message = str(refused.value)
    assert "format 1" in message and "neither evaluate nor serve" in message and "--force" in message, message
    assert "mlflow artifacts download" not in message, message  # no advice that can't be followed
    assert str(client.get_model_version_by_alias("hsnet-sample", "production").version) == "1"  # unchanged
