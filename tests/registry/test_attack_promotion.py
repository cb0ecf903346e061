"""Attacks on promotion and on what production loads, by someone who can write to the MLflow server
(its HTTP API, so its proxied artifact store too), against a real ``mlflow server``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from hsnet.errors import HSNetError
from hsnet.registry import PromotionRefused, promote, register

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _model_files(client, name, version, dst):
    """The files of a registered version as the registry serves them (a fresh download)."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))


def _replace_model_files(client, name, version, local: Path):
    """Upload ``local`` (a changed copy of the version's files) over the version's artifacts."""
    mv = client.get_model_version(name, str(version))
    if mv.source.startswith("models:/m-"):  # MLflow 3: a logged model's own artifact folder
        client.log_model_artifacts(mv.source[len("models:/"):].split("/")[0], str(local))
    else:
        run_id, _, path = mv.source[len("runs:/"):].partition("/")
        client.log_artifacts(run_id, str(local), path)


def test_model_weights_replaced_after_registration_do_not_reach_production(use_mlflow_server, evaluated,
                                                                            tmp_path):
    """Registered honestly (good figures), then the version's model.pt is replaced in the artifact
    store by a model that always answers class 1. Promotion must not put those weights in production
    on the strength of the evaluation of other weights."""
    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-swapped"
    good, good_metrics, _ = evaluated(0)
    register(good, good_metrics, "sample", name=name)
    bad, _, _ = evaluated(1)

    files = _model_files(client, name, 1, tmp_path / "dl")
    (weights,) = files.rglob("model.pt")
    slim = torch.load(weights, weights_only=True)
    slim["model"] = torch.load(bad, weights_only=True)["model"]
    torch.save(slim, weights)
    _replace_model_files(client, name, 1, files)
    again = _model_files(client, name, 1, tmp_path / "dl2")
    assert (next(again.rglob("model.pt"))).read_bytes() == weights.read_bytes()  # the store took it

    with pytest.raises(PromotionRefused, match="model.pt|changed after registration|files"):
        promote(name)
    assert "production" not in client.get_registered_model(name).aliases


def test_code_replaced_in_the_registry_is_not_run_by_hsnet_serve(use_mlflow_server, evaluated, tmp_path):
    """The registered model carries hsnet's source (code_paths) and the model-from-code file, and
    MLflow runs them when it loads the model. Someone who rewrites them in the artifact store after
    registration must not get their code run by ``hsnet serve --model models:/NAME@production``."""
    from servers import free_port

    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-code"
    good, good_metrics, _ = evaluated(0)
    register(good, good_metrics, "sample", name=name)
    assert promote(name)["production"] == 1

    marker = tmp_path / "pwned"
    files = _model_files(client, name, 1, tmp_path / "dl")
    (model_code,) = [p for p in files.rglob("mlflow_model.py") if "code" not in p.relative_to(files).parts]
    model_code.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                          + model_code.read_text())
    _replace_model_files(client, name, 1, files)

    hsnet = str(Path(sys.executable).with_name("hsnet"))
    proc = subprocess.Popen([hsnet, "serve", "--model", f"models:/{name}@production", "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # it loaded and serves: stop it, then judge
        proc.kill()
        out, err = proc.communicate()
    assert not marker.exists(), "code written into the registry's artifacts ran in hsnet serve"
    assert proc.returncode == 2 and "changed after registration" in err, err[-2000:]

    # hsnet predict loads registered models the same way (it ran the code before the check moved
    # into load_classifier, which both use)
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    done = subprocess.run([hsnet, "predict", str(tmp_path / "photo.png"), "--model", f"models:/{name}@production"],
                          capture_output=True, text=True, timeout=240)
    assert not marker.exists(), "code written into the registry's artifacts ran in hsnet predict"
    assert done.returncode == 2 and "changed after registration" in done.stderr, done.stderr[-2000:]


def test_promote_a_deleted_version_and_an_alias_of_a_deleted_version(use_mlflow_server, evaluated, capsys):
    from hsnet.cli import main

    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-deleted"
    good, good_metrics, _ = evaluated(0)
    register(good, good_metrics, "sample", name=name)
    client.delete_model_version(name, "1")
    assert main(["promote", "--name", name, "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert main(["promote", "--name", name]) == 2  # the candidate alias went with the version
    err = capsys.readouterr().err
    assert "no 'candidate' version" in err and "Traceback" not in err



def test_an_edited_hash_tag_does_not_make_register_return_another_version(use_mlflow_server, evaluated):
    """A version's tags are editable by anyone with write access: a bad version tagged with the
    good checkpoint's sha256 must not be what `hsnet register good.pt` reports as 'already
    registered' (nor keep the good checkpoint out of the registry)."""
    from hsnet.io import sha256_file

    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-tagged"
    bad, bad_metrics, _ = evaluated(1)
    register(bad, bad_metrics, "sample", name=name)
    good, good_metrics, gm = evaluated(0)
    client.set_model_version_tag(name, "1", "checkpoint_sha256", sha256_file(good))
    r = register(good, good_metrics, "sample", name=name)
    assert not r["already_registered"] and r["version"] == 2, r
    assert r["test_accuracy"] == pytest.approx(gm["accuracy"])
    assert client.get_model_version_by_alias(name, "candidate").version == "2"


def test_a_rollback_to_a_version_whose_files_were_changed_is_refused(use_mlflow_server, evaluated, tmp_path):
    """In an incident, ``hsnet promote --rollback`` puts ``previous`` back. If that version's files
    were rewritten in the artifact store, moving production to it would leave production on a model
    every checked loader refuses (or that an unchecked one runs): the rollback is refused, naming
    the version, and production stays where it was."""
    from hsnet.cli import main
    from hsnet.registry import ModelChanged, rollback

    client = MlflowClient(use_mlflow_server)
    name = "hsnet-sample-rollback"
    for k in (0, 1):
        ckpt, metrics, _ = evaluated(k)
        register(ckpt, metrics, "sample", name=name)
    assert promote(name, version=1)["production"] == 1
    assert promote(name, version=2, force=True)["production"] == 2  # same figures: forced
    assert client.get_model_version_by_alias(name, "previous").version == "1"

    files = _model_files(client, name, 1, tmp_path / "dl")
    (weights,) = files.rglob("model.pt")
    weights.write_bytes(weights.read_bytes() + b"\0")
    _replace_model_files(client, name, 1, files)

    with pytest.raises(ModelChanged, match=f"{name} version 1"):
        rollback(name)
    assert client.get_model_version_by_alias(name, "production").version == "2"
    assert client.get_model_version_by_alias(name, "previous").version == "1"
    assert main(["promote", "--name", name, "--rollback"]) == 2
    assert client.get_model_version_by_alias(name, "production").version == "2"
