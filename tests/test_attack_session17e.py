"""Attack session 17e: the fixes of 9b3a9f9 (attack 17d) read against what they promise.

Each test fails on the code as it stands (08d33f2) and passes once the defect it names is fixed.
No GPU, no cluster, no MLflow server: deploy plans are pure functions of the live object, the
registry is a local sqlite store filled with MLflow's client.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from isvc import image_of as _image, live_isvc as _live


# --- 1. the image a rollout replaced is not brought back when that rollout replaced the alias -------

def test_a_rollback_of_the_first_deploy_after_a_hand_applied_template_brings_the_old_image_back():
    """README ("Serving"): "A template applied by hand (``kubectl apply``) serves the alias
    ``@production`` ... the first ``--deploy`` after that pins a version", and "an earlier
    release's serving image ... becomes this release's, and a rollback of that rollout brings the
    old image back with the old version". hsnet/deploy.py ``plan_rollout`` records the replaced
    image with ``previous`` = what the InferenceService named, here ``models:/NAME@production``;
    ``plan_rollback`` restores it only when that string equals the rollback target, which
    ``rollback_production`` always gives as a version (``tracking.version_uri``:
    ``models:/NAME/7``). So the rollback of exactly the rollout the README describes keeps the
    new image: version 7, which the earlier release's server was serving through the alias, is
    now started on this release's server (the case 17d's finding 2 was about)."""
    from hsnet.deploy import SERVE_IMAGE, plan_rollback, plan_rollout

    older = SERVE_IMAGE.rsplit(":", 1)[0] + ":0.0.9"
    live = _live(older, "models:/hsnet-rafdb@production")  # kubectl apply of an earlier release's template
    out = plan_rollout(live, "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models", canary_percent=10)
    assert _image(out["object"]) == SERVE_IMAGE  # the image was replaced (17d's fix)
    # hsnet promote --rollback --deploy: registry.rollback_target is version 7 (production before 8)
    back = plan_rollback(out["object"], "models:/hsnet-rafdb/7", name="hsnet-rafdb", namespace="models")
    assert _image(back["object"]) == older or older in str(back.get("note")), (_image(back["object"]), back)


# --- 2. the not-comparable refusal's commands, with hsnet's own default store ------------------------

def _version(client, exp: str, name: str, sha: str, evaluation: str) -> str:
    """A registered version as hsnet register leaves it (registration run params, sha256 tag)."""
    import mlflow

    from hsnet import registry

    rid = client.create_run(exp, tags={"step": "register"}).info.run_id
    client.log_text(rid, "stand-in for the pyfunc model", "model/MLmodel")
    uri = f"runs:/{rid}/model"
    for k, v in {"checkpoint_sha256": sha, "evaluation_run_id": evaluation,
                 registry.MODEL_FILES_PARAM: registry._download_digest(uri)}.items():
        client.log_param(rid, k, v)
    client.set_terminated(rid, "FINISHED")
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    return client.create_model_version(name, source=uri, run_id=rid, tags={"checkpoint_sha256": sha}).version


def _evaluation(client, exp: str, sha: str, data_version: str, accuracy: float) -> str:
    import time

    import tempfile

    rid = client.create_run(exp, tags={"step": "evaluate", "dataset": "sample"}).info.run_id
    for k, v in {"checkpoint": "runs/sample/train/best.pt", "checkpoint_sha256": sha,
                 "test_data_version": data_version, "split": "test", "tta_hflip": "False"}.items():
        client.log_param(rid, k, v)
    with tempfile.TemporaryDirectory() as tmp:  # the bytes evaluated, as hsnet evaluate logs them
        (Path(tmp) / "best.pt").write_bytes(f"weights {sha}".encode())
        client.log_artifact(rid, str(Path(tmp) / "best.pt"), artifact_path="checkpoint")
    for k in ("test_accuracy", "test_mean_accuracy"):
        client.log_metric(rid, k, accuracy)
    client.set_terminated(rid, "FINISHED")
    time.sleep(0.01)
    return rid


def test_the_not_comparable_refusal_commands_run_as_written_with_hsnets_default_store(tmp_path, monkeypatch):
    """9b3a9f9 ("the not-comparable refusal's commands run as written"): the refusal says
    "evaluate production's checkpoint there (mlflow artifacts download -r RUN -a
    checkpoint/best.pt -d production-checkpoint, then hsnet evaluate --checkpoint
    production-checkpoint/best.pt ...)". Without MLFLOW_TRACKING_URI, hsnet records in its own
    local store ``mlflow/mlflow.db`` of the project (hsnet/tracking.py ``tracking_uri``; README's
    quick start runs that way), but the ``mlflow`` CLI does not know that store: it uses its own
    default (MLflow 3: ``sqlite:///mlflow.db`` in the current folder,
    mlflow/tracking/_tracking_service/utils.py ``_get_default_tracking_uri``), where the run does
    not exist. README itself writes ``MLFLOW_TRACKING_URI=sqlite:///mlflow/mlflow.db mlflow models
    serve ...`` for the same reason. The user, in the project folder where promote refused, pastes
    the command and gets "Run ... not found" (and a stray empty mlflow.db). Expected: the command
    names the store it reads (e.g. a leading ``MLFLOW_TRACKING_URI=...``) and downloads the file."""
    import re

    import mlflow

    from hsnet import tracking
    from hsnet.cli import build_parser
    from hsnet.registry import PromotionRefused, promote

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    uri = tracking.tracking_uri()  # hsnet's default store: mlflow/mlflow.db here
    assert uri.endswith("mlflow/mlflow.db"), uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(tracking.EXPERIMENT, artifact_location=(tmp_path / "mlflow" / "artifacts").as_uri())
    name, prod_sha, cand_sha = "hsnet-sample", "d" * 64, "e" * 64
    train_run = client.create_run(exp, tags={"step": "train"}).info.run_id
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "best.pt").write_bytes(b"weights")
    client.log_artifact(train_run, str(tmp_path / "ckpt" / "best.pt"), artifact_path="checkpoint")
    client.set_terminated(train_run, "FINISHED")
    v1 = _version(client, exp, name, prod_sha, _evaluation(client, exp, prod_sha, "sha256:" + "4" * 16, 0.5))
    client.set_model_version_tag(name, v1, "train_run_id", train_run)
    promote(name, version=v1)
    v2 = _version(client, exp, name, cand_sha, _evaluation(client, exp, cand_sha, "sha256:" + "5" * 16, 0.9))
    with pytest.raises(PromotionRefused) as refused:
        promote(name, version=v2)
    message = str(refused.value)
    download = re.search(r"((?:[A-Z_]+=\S+ )*mlflow artifacts download [^,]*)", message).group(1)
    evaluate = re.search(r"(hsnet evaluate [^,]*)", message).group(1)
    argv = shlex.split(download)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    while "=" in argv[0]:  # VAR=value prefixes, as a shell takes them
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    done = subprocess.run([mlflow_cli, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    parsed = build_parser().parse_args(shlex.split(evaluate.replace("<the candidate's crops>", "crops"))[1:])
    assert done.returncode == 0 and (tmp_path / parsed.checkpoint).is_file(), (
        f"{download!r} in the project folder: exit {done.returncode}: {done.stderr.strip()[-400:]}")


# --- 3. a store that is really gone: the run's own end fails too, and its error replaces hsnet's ------

def test_a_tracking_store_that_stopped_answering_ends_train_with_the_resume_message(tiny_data, local_mlflow,
                                                                                     tmp_path, monkeypatch, capsys):
    """9b3a9f9: "a tracking store lost during train's final uploads ends with the resume message"
    (hsnet/train.py ``_tracking_lost``: "an error that says what is kept and how to go on, not
    MLflow's traceback"). ``_tracking_lost`` raises TrackingUnavailable inside
    ``tracking.run``'s ``with mlflow.start_run(...)``; leaving it, MLflow's ``ActiveRun.__exit__``
    calls ``end_run("FAILED")`` -> ``MlflowClient().set_terminated`` (mlflow/tracking/fluent.py),
    a request to the same store, which is not answering either. Its MlflowException then
    replaces hsnet's error (chained "During handling of the above exception ..."), and main()
    re-raises it: the user gets MLflow's traceback, not the resume message. The 17d test only
    broke ``log_artifact``, so the store still answered ``set_terminated``. Same for a store lost
    at an epoch (``_log_epoch``). Expected: exit 2 with "hsnet train: error: ..." and --resume."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from hsnet import cli

    def down(*args, **kwargs):
        raise MlflowException("API request to http://mlflow.example:5000/api/2.0/mlflow/runs/update failed "
                              "with exception HTTPConnectionPool(host='mlflow.example', port=5000): Max retries "
                              "exceeded")

    monkeypatch.setattr(mlflow, "log_artifact", down)
    params = tmp_path / "params.yaml"
    params.write_text("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
                      "    train: {epochs: 1, batch_size: 16, seed: 3}\n")
    real = mlflow.MlflowClient.set_terminated

    def set_terminated(self, run_id, status=None, *args, **kwargs):
        if status == "FAILED":  # the store is gone by the time the failed run is ended
            down()
        return real(self, run_id, status, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "set_terminated", set_terminated)
    try:
        rc = cli.main(["train", "--data", str(tiny_data), "--dataset", "sample", "--params", str(params),
                       "--out", str(tmp_path / "run"), "--device", "cpu"])
    except MlflowException as exc:
        pytest.fail(f"MLflow's error escaped hsnet train as a traceback: {exc}")
    err = capsys.readouterr().err
    assert rc == 2 and "hsnet train: error:" in err and "--resume" in err, err


def test_a_rollback_after_an_upgrade_that_finished_an_earlier_releases_canary_brings_the_old_image_back():
    """Same promise (README: "a rollback of that rollout brings the old image back with the old
    version"), another way in: an earlier release started a canary (version 8 at 10%, version 7
    keeping 90%, both on its image), the team upgrades hsnet, and runs the README's next step
    ``--canary-percent 100``. That rollout replaces the image (17d's fix) and records
    ``"<old image> <previous>"`` with ``previous = model_of(current)``, which during a canary is
    the canary's own version 8, not version 7 that the replaced image was serving all along.
    ``--rollback --deploy`` then targets version 7 (the registry's ``previous``), the record names
    8, and version 7 is rolled out on this release's image, which it never ran on."""
    from hsnet.deploy import SERVE_IMAGE, plan_rollback, plan_rollout, set_model

    older = SERVE_IMAGE.rsplit(":", 1)[0] + ":0.0.9"
    stable = _live(older, "models:/hsnet-rafdb/7")
    canary = set_model(stable, "models:/hsnet-rafdb/8", 10)  # what the earlier release's --deploy sent
    full = plan_rollout(canary, "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models", canary_percent=100)
    assert _image(full["object"]) == SERVE_IMAGE
    back = plan_rollback(full["object"], "models:/hsnet-rafdb/7", name="hsnet-rafdb", namespace="models")
    assert _image(back["object"]) == older or older in str(back.get("note")), (_image(back["object"]), back)


@pytest.mark.parametrize("tag, replaced, noted", [
    (":v{ours}", False, False),        # this release, written with a v
    (":{ours}@sha256:" + "a" * 64, False, False),   # this release, pinned by digest (README: deploy by digest)
    ("@sha256:" + "b" * 64, False, False),           # a digest alone: can't be told, kept
    (":0.0.9@sha256:" + "c" * 64, False, True),      # an earlier release pinned by digest: the pin is kept, said
    (":0.0.9", True, True),                           # an earlier release's tag: this release's image
    (":sha-0123456789ab", False, True),               # a commit build: kept, said
])
def test_which_live_serving_images_a_rollout_replaces(tag, replaced, noted):
    """hsnet.deploy._release_image, minor findings of 17e: the same release written otherwise (v0.1.0,
    a digest pin of it) is neither replaced nor called another release; a pin is never replaced."""
    from hsnet import __version__
    from hsnet.deploy import SERVE_IMAGE, plan_rollout

    live_image = SERVE_IMAGE.rsplit(":", 1)[0] + tag.format(ours=__version__)
    plan = plan_rollout(_live(live_image), "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models",
                        canary_percent=10)
    sent = _image(plan["object"])
    assert (sent == SERVE_IMAGE) is replaced and sent in (SERVE_IMAGE, live_image)
    assert ("note" in plan) is noted, plan.get("note")
