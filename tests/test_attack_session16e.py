"""Attack session 16e: what the fixes of attack 16d (57fc24c, fa2b2d9) broke, got wrong or left out.

Each test fails on the code as committed (57fc24c) and passes once the defect it names is fixed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from crafted import ferg_tree
from hsnet.data.datasets import import_dataset
from hsnet.data.manifest import read_manifest
from hsnet.errors import HSNetError
from hsnet.params import CropParams, ImportParams, ValidateParams

REPO = Path(__file__).resolve().parents[1]




def _imported(tmp_path: Path, per_class: int = 6) -> tuple[Path, Path, list[dict]]:
    root = ferg_tree(tmp_path / "FERG_DB_256", per_class)
    manifest = tmp_path / "ferg.csv"
    import_dataset("ferg", root, manifest, ImportParams())
    return root, manifest, read_manifest(manifest)


# --- 1. a tolerated file that doesn't decode is still a critical "leakage" failure ---------------

def test_two_truncated_files_in_two_splits_are_tolerated_not_leakage(tmp_path, monkeypatch):
    """README: "every file decodes fully (a share --max-bad-fraction ... may not: each is named in
    the report's warnings and crop leaves it out as unreadable ...)", and 57fc24c's rule "an
    undecodable file is one failure, not two" (min_side is None for it). The sha256 of a file that
    doesn't decode is still put in ``sha256_splits``: two files emptied after import (an interrupted
    copy or download truncates to 0 bytes; every empty file has the same sha256), one in train and
    one in test, are each a tolerated "does not decode" warning *and* a critical "identical images
    in more than one split (leakage)" failure, although crop leaves both out and no image is shared
    by what is trained and tested on. Expected: validate passes with the two named in its warnings."""
    from hsnet.data.crop import crop
    from hsnet.data.validate import validate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    root, manifest, rows = _imported(tmp_path)
    emptied = [next(r["path"] for r in rows if r["split"] == s) for s in ("train", "test")]
    for p in emptied:
        (root / p).write_bytes(b"")
    out = tmp_path / "crops"
    report = crop(manifest, root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert sorted(u["path"] for u in report["unreadable"]) == sorted(emptied)  # crop leaves both out
    summary = validate(manifest, root, "ferg", tmp_path / "report", ValidateParams(max_bad_fraction=0.01),
                       progress=False)  # 2 of 252 < 1%
    warned = " ".join(e for w in summary["warnings"] for e in w["examples"])
    assert all(p in warned for p in emptied), summary["warnings"]


# --- 2. "every split non-empty" counts the rows crop leaves out -------------------------------------

def test_every_split_holds_after_the_tolerated_images_are_left_out(tmp_path, monkeypatch):
    """57fc24c made 'every class in train' count decodable images only ("what training will have:
    a file that doesn't decode (tolerated or not) is left out by crop"), but README's "every split
    non-empty" still counts manifest rows. With every test image broken and max_bad_fraction above
    the test split's share, validate passes and crop writes a manifest with no test split at all,
    which evaluate then has nothing to measure on. Expected: ValidationFailed (a split is empty)."""
    from hsnet.data.crop import crop
    from hsnet.data.validate import ValidationFailed, validate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    root, manifest, rows = _imported(tmp_path)
    test_rows = [r for r in rows if r["split"] == "test"]
    for i, r in enumerate(test_rows):
        (root / r["path"]).write_bytes(b"not an image %d" % i)  # each its own bytes: no "leakage"
    share = len(test_rows) / len(rows)
    out = tmp_path / "crops"
    crop(manifest, root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert not [r for r in read_manifest(out / "manifest.csv") if r["split"] == "test"]  # what training gets
    with pytest.raises(ValidationFailed):
        validate(manifest, root, "ferg", tmp_path / "report", ValidateParams(max_bad_fraction=share + 0.02),
                 progress=False)


# --- 3. the verdict file depends on the image cache's history --------------------------------------

def test_the_verdict_does_not_depend_on_how_an_earlier_run_spelled_the_root(tmp_path, monkeypatch):
    """dvc.yaml: summary.json is "the verdict: the same for the same input (no times in it), what
    crop depends on, so a re-run validation of unchanged data doesn't re-crop". Since 57fc24c a
    tolerated file's error text is in the verdict (the warning's examples). The image cache is keyed
    by the file's absolute path but stores the error text with the path as the run that filled it
    spelled it (``{path}: not a readable image``): after one ``hsnet validate --root /abs/...`` by
    hand (or the Kubeflow component's absolute paths), dvc.yaml's ``--root data/raw/ferg`` writes a
    verdict naming the absolute path, which a run with an empty cache (a fresh machine, dvc exp in
    a temporary copy) does not: the same input, two verdicts, a re-crop."""
    from hsnet.data.validate import validate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root, manifest, rows = _imported(tmp_path)
    (root / rows[3]["path"]).write_bytes(b"not an image")
    settings = ValidateParams(max_bad_fraction=0.01)
    validate(manifest, root.resolve(), "ferg", tmp_path / "by-hand", settings, progress=False)  # fills the cache
    report = Path("validation")
    validate(Path("ferg.csv"), Path("FERG_DB_256"), "ferg", report, settings, progress=False)
    cached = json.loads((report / "summary.json").read_text())
    validate(Path("ferg.csv"), Path("FERG_DB_256"), "ferg", report, settings, use_cache=False, progress=False)
    fresh = json.loads((report / "summary.json").read_text())
    assert cached == fresh, (f"the same command and files; with the cache: {cached['warnings']}; "
                             f"without: {fresh['warnings']}")


# --- 4. the rollback's registry step refused by MLflow itself ---------------------------------------

def test_a_rollback_whose_alias_write_mlflow_refuses_says_the_traffic_moved(local_mlflow, monkeypatch, capsys,
                                                                              tmp_path):
    """57fc24c: "a rollback whose registry step is refused after the traffic moved says so and
    what restores production" (hsnet.deploy.rollback_production). It catches HSNetError only. The
    registry step's alias writes (registry._move: MlflowClient.set_registered_model_alias) raise
    MLflow's own MlflowException when the server refuses them: MLflow's auth gives a user with READ
    on the model a 403 PERMISSION_DENIED for an alias update, and a server gone away after the
    retries is an MlflowException too. Then ``hsnet promote --rollback --deploy`` ends in a raw
    traceback (main catches HSNetError only) and never says that the InferenceService was already
    changed. Expected: exit 2 and the message about the InferenceService."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    import hsnet.deploy as deploy
    import hsnet.registry as registry
    from hsnet.cli import main

    name = "hsnet-sample"
    client = MlflowClient(local_mlflow)
    client.create_registered_model(name)
    for _ in range(2):
        (tmp_path / "m").mkdir(exist_ok=True)
        client.create_model_version(name, str(tmp_path / "m"))
    client.set_registered_model_alias(name, "previous", "1")
    client.set_registered_model_alias(name, "production", "2")
    monkeypatch.setattr(registry, "check_model_files", lambda *a, **k: None)  # not what is tested here
    moved = []

    def rollback(model_uri, *, name, namespace=None):  # the traffic change, done (a real one: tests/serve)
        moved.append(model_uri)
        return {"action": "rolled-back", "name": name, "namespace": namespace or "models", "model": model_uri,
                "previous": f"models:/{name}/2"}

    monkeypatch.setattr(deploy, "rollback", rollback)

    def refused(self, *a, **k):  # what an MLflow server with auth answers a READ-only user
        raise MlflowException("Permission denied", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refused)
    capsys.readouterr()
    try:
        rc = main(["promote", "--name", name, "--rollback", "--deploy"])
    except MlflowException as exc:
        pytest.fail(f"the traffic moved to {moved}, then a raw MlflowException ({exc}) that doesn't say so")
    err = capsys.readouterr().err
    assert rc == 2 and moved and "already changed" in err, err


# --- 5. dvc_cache_of as DVC reads its config -----------------------------------------------------

def _cache_dir_as_dvc_reads_it(config: Path) -> str:
    from dvc.config import Config

    return Config.load_file(str(config))["cache"]["dir"]


def test_dvc_cache_dir_keys_are_read_case_insensitively_as_dvc_does(tmp_path):
    """hsnet.io._dvc_cache_dir promises "cache.dir of one DVC config file as DVC reads it". DVC
    (dvc/config.py, Config.load_file) reads ``ConfigObj(fobj)`` and then ``_lower_keys(conf_obj.dict())``:
    section and option names are case-insensitive. hsnet looks up ``["cache"]["dir"]`` as written,
    so ``[CACHE] DIR = ...`` (which DVC uses) is not seen: every link of a ``cache.type symlink``
    checkout into that cache is then refused as a path escaping the root."""
    from hsnet.io import _dvc_cache_dir

    config = tmp_path / "config"
    config.write_text("[CACHE]\n    DIR = ../shared-cache\n    TYPE = symlink\n")
    assert _dvc_cache_dir(config) == _cache_dir_as_dvc_reads_it(config) == "../shared-cache"


@pytest.mark.parametrize("config", [
    "[cache]\n    dir = '../team cache #2'\n    type = symlink\n",  # a quoted '#' is no comment
    "[cache]\ndir = ../shared-cache\n    type = symlink\n",  # an indented next key is no continuation
])
def test_dvc_cache_dir_without_configobj_follows_the_same_rules(tmp_path, monkeypatch, config):
    """hsnet/io.py _dvc_cache_dir: without configobj ("hsnet without dvc") it applies "the same
    rules with the standard library". It doesn't: configparser ends a quoted value at `` #``
    (configobj keeps a quoted '#'), and reads an indented line after ``dir = ...`` as part of
    dir's value (configobj reads a key). DVC's own reader is the oracle."""
    from hsnet.io import _dvc_cache_dir

    path = tmp_path / "config"
    path.write_text(config)
    dvc_says = _cache_dir_as_dvc_reads_it(path)
    assert _dvc_cache_dir(path) == dvc_says  # with configobj: as DVC
    monkeypatch.setitem(sys.modules, "configobj", None)  # import configobj -> ImportError
    assert _dvc_cache_dir(path) == dvc_says


# --- 6. the rollback error's advice names another InferenceService -------------------------------

def test_the_advice_after_a_refused_registry_step_names_the_same_inferenceservice(monkeypatch):
    """57fc24c: when the registry step of ``hsnet promote --rollback --deploy`` is refused after the
    traffic moved, the error says "what restores production": run `hsnet promote --name NAME
    --deploy`. README's own rollback line is ``hsnet promote --name hsnet-rafdb --rollback --deploy
    --namespace models``, and --isvc picks an InferenceService not named like the model; the advice
    drops both (rollback_production knows them). Run as told, it acts on the kube context's default
    namespace and the model's name: deploy.rollout *creates* an InferenceService there from the
    template when none exists ("created from the template, with all traffic, when it doesn't
    exist"), and leaves the one whose traffic moved as it was. Oracle: hsnet's own CLI parser reads
    the advised command with the same --namespace and --isvc."""
    import re
    import shlex

    import hsnet.deploy as deploy
    import hsnet.registry as registry
    from hsnet.cli import build_parser

    monkeypatch.setattr(registry, "rollback_target", lambda name: 7)
    monkeypatch.setattr(deploy, "rollback", lambda uri, *, name, namespace=None: {
        "action": "rolled-back", "name": name, "namespace": namespace, "model": uri, "previous": "models:/m/8"})

    def refused(name, *, expect=None):
        raise HSNetError(f"{name}: 'previous' moved to version 9 while version {expect} was being deployed "
                         "(another promotion ran meanwhile); nothing changed in the registry")

    monkeypatch.setattr(registry, "rollback", refused)
    with pytest.raises(HSNetError) as info:
        deploy.rollback_production("hsnet-rafdb", isvc="fer-prod", namespace="models")
    said = str(info.value)
    advised = re.search(r"`(hsnet [^`]*)`", said)
    assert advised, said
    args = build_parser().parse_args(shlex.split(advised[1])[1:])
    assert (args.namespace, args.isvc or args.name) == ("models", "fer-prod"), (
        f"the traffic of models/fer-prod moved; the advice {advised[1]!r} acts on "
        f"{args.namespace or '<the context namespace>'}/{args.isvc or args.name}")
