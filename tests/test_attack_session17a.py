"""Attack, session 17a: upgrades and version skew (what older hsnet left, read by this one).

Each test fails on the code as it stands and passes once the defect it names is fixed; each
quotes the promise it checks.
"""

from __future__ import annotations

import logging

import pytest


def test_registering_again_gives_a_version_registered_before_file_digests_a_digest(
        quick_log_model, local_mlflow, evaluated, monkeypatch, caplog):
    """docs/security.md ("What the model files are checked against"): "A version registered before
    the digest was recorded gets a warning (register its checkpoint again to have it checked)";
    registry.check_model_files logs "register its checkpoint again to have them checked".

    The digest (``model_files_sha256``) came in fdbb6a9 (2026-11-29); the registration code before
    it (b192f3f .. fdbb6a9^) already recorded ``checkpoint_sha256`` as the version's tag and its
    registration run's param. ``register`` finds a checkpoint "already registered" by exactly
    those two (``_versions_of``) and returns that version unchanged: following the advice gives
    back the same unchecked version, which promote, serve and predict go on warning about and
    loading unchecked. The advice can't be followed."""
    from mlflow import MlflowClient

    import hsnet.registry as registry

    client = MlflowClient(local_mlflow)
    ckpt, metrics, _ = evaluated(0)
    # registered by an hsnet from before the digest: the same records, without model_files_sha256
    with monkeypatch.context() as old:
        old.setattr(registry, "MODEL_FILES_PARAM", "not_recorded_by_old_hsnet")
        first = registry.register(ckpt, metrics, "sample")
    assert registry.check_model_files(client, "hsnet-sample", first["version"]) is False  # unchecked, warned
    again = registry.register(ckpt, metrics, "sample")  # the advice, followed with this hsnet
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hsnet"):
        checked = registry.check_model_files(client, "hsnet-sample", again["version"])
    assert checked is True, (f"register of the same checkpoint returned version {again['version']} "
                             f"(already_registered={again['already_registered']}), still without a files "
                             f"record: {[r.getMessage() for r in caplog.records]}")


def test_a_checkpoint_of_a_newer_format_is_not_answered_with_train_it_again(trained, tmp_path):
    """checkpoint.read's refusal of another format: "was written by another hsnet version ...; train
    it again with this version". Right for a format-1 file read by this code; wrong the other way
    round, which is how version skew meets it: the training image is upgraded first (README: the
    images are built per release), writes FORMAT + 1, ``hsnet promote`` moves production (it never
    opens the weights), and the InferenceService's older serving image (``hsnet serve``, which
    reads the checkpoint with its own hsnet, not the one that travels with the model) refuses to
    start, telling the operator to retrain with the old release. What fixes it is a serving image
    that reads the newer format: the message must say the file is newer than this hsnet, not ask
    for a retraining with it."""
    import torch

    from hsnet import checkpoint
    from hsnet.errors import HSNetError

    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    ckpt["format"] = checkpoint.FORMAT + 1  # what the next release's training writes
    newer = tmp_path / "best.pt"
    torch.save(ckpt, newer)
    with pytest.raises(HSNetError) as refused:
        checkpoint.read(newer)
    said = str(refused.value)
    assert "train it again with this version" not in said, said
    assert "newer" in said, said


def test_resume_auto_trains_from_the_start_over_a_last_pt_of_an_older_checkpoint_format(tiny_data, tmp_path):
    """README ("Training keeps last.pt between runs ..."): "a ``last.pt`` of other data, settings or
    code (``hsnet``'s sources, hashed) is not resumed, so a code change trains again from the
    start"; dvc.yaml's train stage runs ``hsnet train ... --resume auto`` and keeps ``last.pt``
    between runs (``persist: true``, ``cache: false``); ``hsnet train --help``: "'auto': only if it is
    of the same data and settings, from the start".

    ``git pull`` over a change of the checkpoint format (FORMAT 1 -> 2 came in f2e1649, "the model
    changed") and ``dvc repro``: the train stage re-runs (hsnet/model changed) with the old code's
    ``last.pt`` still in runs/NAME/train. train.resume_from reads it with checkpoint.load, which
    refuses another format before the ``auto`` check can set the file aside: the stage fails with
    "was written by another hsnet version ...; train it again with this version", which is what
    the user is doing; only deleting last.pt by hand gets the pipeline going again."""
    import torch

    from hsnet.params import Params
    from hsnet.train import train

    params = tmp_path / "params.yaml"
    params.write_text("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
                      "    train: {lr: 0.001, epochs: 1, batch_size: 16, seed: 3}\n")
    out = tmp_path / "run"
    train(tiny_data, Params.resolve(params, "sample"), out, track=False, progress=False)
    old = torch.load(out / "last.pt", weights_only=True)
    old["format"] = 1  # as the hsnet before f2e1649 wrote it (its model's weights differ too)
    old["meta"]["code_version"] = "sha256:0123456789abcdef"  # other code
    torch.save(old, out / "last.pt")
    summary = train(tiny_data, Params.resolve(params, "sample"), out, resume="auto", track=False, progress=False)
    assert summary["epochs_run"] == 1
    assert torch.load(out / "last.pt", weights_only=True)["format"] != 1


def test_deploy_does_not_roll_a_version_onto_an_older_releases_serving_image_unsaid(tmp_path, monkeypatch):
    """hsnet.deploy: ``SERVE_IMAGE = ...hsnet-serve:{__version__}  # serving/Dockerfile, the
    template's image``: each release's hsnet names its own serving image, which reads the
    checkpoints that release's training writes (checkpoint.FORMAT; hsnet serve loads a registered
    version with the hsnet installed in the image, not the copy that travels with the model).
    README: "The first ``--deploy`` creates the InferenceService from the template"; every later
    one (rollout: ``set_model(current, ...)``) changes only the model container's ``--model`` and
    the canary share of the live object, so the image the FIRST release put there serves every
    version ever after. After an upgrade (release N+1's pipeline trains, registers and runs
    ``promote --deploy``), the new version goes to release N's server, silently: when the
    checkpoint format changed, its canary pods refuse the model ("train it again with this
    version") and the rollout fails on the cluster; otherwise the server's fixes never reach
    production. Expected: the rollout brings the image of this release, or at least says that
    the live InferenceService runs another release's serving image."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "serve"))
    from fake_kube import FakeKube

    from hsnet.deploy import CONTAINER, SERVE_IMAGE, load_template, rollout, set_model
    from hsnet.errors import HSNetError

    older = SERVE_IMAGE.rsplit(":", 1)[0] + ":0.0.9"  # what the previous release's first --deploy created
    kube = FakeKube()
    try:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig", namespace="models")))
        isvc = set_model(load_template(), "models:/hsnet-rafdb/7", None)
        isvc["metadata"].update(namespace="models", name="hsnet-rafdb")
        (container,) = [c for c in isvc["spec"]["predictor"]["containers"] if c["name"] == CONTAINER]
        container["image"] = older
        with kube.lock:
            kube._store("models", "hsnet-rafdb", isvc)
        try:
            result = rollout("models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models", canary_percent=10)
        except HSNetError as exc:  # a refusal that names the image is a fix too
            assert older in str(exc), exc
            return
        live = kube.objects[("models", "hsnet-rafdb")]
        (container,) = [c for c in live["spec"]["predictor"]["containers"] if c["name"] == CONTAINER]
        assert container["image"] == SERVE_IMAGE or older in str(result.get("note", "")), (container["image"], result)
    finally:
        kube.stop()


def test_the_gate_compares_on_new_test_data_once_production_is_evaluated_there(
        quick_log_model, local_mlflow, evaluated, other_test_data, tmp_path):
    """README (promote): production moves "only if its test metric beats production's by
    --min-delta **on the same test data** (the evaluation's data version and split)"; the data
    version is the sha256 of the crops' manifest (hsnet.tracking.data_version).

    An upgrade changes that hash for the same photos: crop's manifest gained ``source_sha256``
    (3a9c631), import drops byte-identical copies (f981890). Cropped again by the new release,
    the same test images have another data version, so every candidate is refused against the
    production a former release evaluated ("the metrics are not comparable") and the message's
    only way out is ``--force``, i.e. no gate. Evaluating production's checkpoint on the new crops
    (hsnet evaluate, tracked: an immutable evaluate run of that checkpoint on that data version,
    exactly what register looks evaluations up by) changes nothing: promote reads the one run
    linked at registration. Expected: with an evaluation of production's checkpoint on the
    candidate's test data in the store, the gate compares the two there."""
    from hsnet.evaluate import evaluate
    from hsnet.registry import promote, register

    prod_ckpt, prod_metrics, _ = evaluated(1)  # last release's production, on its crops' data version
    register(prod_ckpt, prod_metrics, "sample")
    assert promote("hsnet-sample")["production"] == 1
    cand_ckpt, cand_metrics, _ = evaluated(0, data=other_test_data)  # this release, the crops cut again
    assert register(cand_ckpt, cand_metrics, "sample")["version"] == 2
    from hsnet.registry import PromotionRefused

    with pytest.raises(PromotionRefused, match=r"not comparable\. To compare them on the candidate's data, evaluate "
                                               r"production's checkpoint there"):
        promote("hsnet-sample")  # the refusal says how to make them comparable, not only --force
    evaluate(prod_ckpt, other_test_data, tmp_path / "prod-on-new-data", progress=False)  # production, re-measured
    decision = promote("hsnet-sample")
    assert decision["promoted"] and decision["production"] == 2, decision


def test_the_checked_version_of_productions_own_checkpoint_is_promoted_without_a_gate(
        quick_log_model, local_mlflow, evaluated, monkeypatch):
    """The rest of the advice ("register its checkpoint again ... and promote that one"): the new
    version holds production's own checkpoint (same registered sha256, same evaluation), so the
    gate has nothing to compare; it is promoted even with a --min-delta that a tie can't meet, and
    production's files are checked from then on."""
    from mlflow import MlflowClient

    import hsnet.registry as registry

    client = MlflowClient(local_mlflow)
    ckpt, metrics, _ = evaluated(0)
    with monkeypatch.context() as old:
        old.setattr(registry, "MODEL_FILES_PARAM", "not_recorded_by_old_hsnet")
        first = registry.register(ckpt, metrics, "sample")
    assert registry.promote("hsnet-sample")["production"] == first["version"]
    again = registry.register(ckpt, metrics, "sample")
    assert again["version"] != first["version"] and not again["already_registered"]
    decision = registry.promote("hsnet-sample", min_delta=0.05)
    assert decision["promoted"] and decision["production"] == again["version"] and not decision["forced"]
    assert "same checkpoint as production" in decision["reason"]
    assert registry.check_model_files(client, "hsnet-sample", decision["production"]) is True


def test_a_serving_image_of_another_repository_is_kept_and_named():
    """A team that mirrors the serving image (an air-gapped cluster: registry.corp/...) keeps it: a
    rollout must not swap in ghcr.io's, which its nodes can't pull; it says which image serves."""
    from isvc import image_of, live_isvc

    from hsnet.deploy import SERVE_IMAGE, plan_rollout

    live = live_isvc("registry.corp/ml/hsnet-serve:0.1.0")
    plan = plan_rollout(live, "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models", canary_percent=10)
    assert image_of(plan["object"]) == "registry.corp/ml/hsnet-serve:0.1.0"
    assert "registry.corp/ml/hsnet-serve:0.1.0" in plan["note"] and SERVE_IMAGE in plan["note"]
    # this release's own image: nothing to say
    plan = plan_rollout(live_isvc(SERVE_IMAGE), "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models",
                        canary_percent=10)
    assert "note" not in plan and plan["canary"] == 10
