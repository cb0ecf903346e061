"""Attack, session 15c: today's changes (the InferenceService template in the package, the serving
image, the crash-consistency fixes).

Each test fails on the code as it stands and passes once the defect it names is fixed; each
quotes the promise it checks.
"""

from __future__ import annotations

from crafted import manifest_rows, noise_photo

import pytest
import torch
from PIL import Image

from hsnet.data.manifest import read_manifest, write_manifest
from hsnet.params import CropParams


def test_finishing_a_stale_pending_registration_never_takes_candidate_from_a_newer_version(
        register_killed, quick_log_model, local_mlflow, evaluated, monkeypatch):
    """hsnet/registry.py's module docstring: "``candidate``: the newest registered version";
    promote() promotes "default: the ``candidate`` alias".

    A register killed between creating its version and setting the alias leaves the version tagged
    registration=pending; the next `hsnet register` of that file "finishes" it with _finish(), which
    sets ``candidate`` unconditionally. If a newer checkpoint was registered in between (the killed
    Kubeflow step is retried after the next pipeline run registered its model; or the workspace's
    `dvc repro`, whose register stage "runs at every `dvc repro`" (README), runs again after another
    model was registered from elsewhere), the retry moves ``candidate`` BACK from the newest version to the
    old one, and the next `hsnet promote` (no --version) gates and promotes the OLD model."""
    from mlflow import MlflowClient

    from hsnet.registry import register

    client = MlflowClient(local_mlflow)
    old_ckpt, old_metrics, _ = evaluated(1)
    register_killed(old_ckpt, old_metrics, "sample")  # stopped right after it made the version
    newer = register(*evaluated(0)[:2], "sample")  # the next run's model: the newest version
    assert newer["aliases"] == ["candidate"]
    retried = register(old_ckpt, old_metrics, "sample")  # the killed step, retried afterwards
    assert int(retried["version"]) < int(newer["version"])
    now = client.get_model_version_by_alias("hsnet-sample", "candidate").version
    assert str(now) == str(newer["version"]), (
        f"candidate moved back from the newest version {newer['version']} to version {now}")


def test_a_register_that_loses_the_race_to_a_killed_one_finishes_its_version(
        quick_log_model, local_mlflow, evaluated, monkeypatch):
    """docs/security.md: "a registration stopped after its version was made and before its
    `candidate` alias was set (the version's tag `registration` is `pending` until then) is finished
    by the next `hsnet register` of the same file"; register(): "register it as a new version of
    ``name``, alias ``candidate``"; README: register "always runs (it is idempotent)".

    Two registers of one file at once (a Kubeflow step retried while its first attempt, cut off
    from the control plane, still runs; two clones of the project registering the same model file;
    register() has a branch for exactly this race): the first makes version N and is killed before _finish; the
    second, which had found no version yet, makes N+1, sees N, deletes its own, and returns N
    through the race branch, which never looks at N's ``pending`` tag: N is left without
    ``candidate`` although a register of the file ran to its end after the killed one, and the
    second's record says the file is registered (aliases [])."""
    import mlflow
    from mlflow import MlflowClient

    from hsnet.registry import register

    client = MlflowClient(local_mlflow)
    ckpt, metrics, _ = evaluated(1)
    real_register, real_update = mlflow.register_model, MlflowClient.update_model_version
    state = {"first": None}

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # the first process dies right after its version was created

    def register_model(*args, **kwargs):
        if state["first"] is None:  # the second process is about to register: the first one registers and dies
            state["first"] = "running"
            monkeypatch.setattr(MlflowClient, "update_model_version", killed)
            try:
                register(ckpt, metrics, "sample")
            except KeyboardInterrupt:
                state["first"] = "killed"
            monkeypatch.setattr(MlflowClient, "update_model_version", real_update)
        return real_register(*args, **kwargs)

    monkeypatch.setattr(mlflow, "register_model", register_model)
    second = register(ckpt, metrics, "sample")
    assert state["first"] == "killed"
    versions = client.search_model_versions("name='hsnet-sample'")
    assert [str(v.version) for v in versions] == [str(second["version"])], "one version of the file"
    assert "candidate" in second["aliases"], second
    assert client.get_model_version("hsnet-sample", str(second["version"])).tags.get("registration") != "pending"


_SERVE_PROBE = r"""
import builtins, hashlib, io, os, sys
import torch
from hsnet.serve import HSNetModel

path, newer = sys.argv[1], sys.argv[2]
old_sha = "sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()[:12]
new_sha = "sha256:" + hashlib.sha256(open(newer, "rb").read()).hexdigest()[:12]
old_w, new_w = (torch.load(p, weights_only=True)["model"] for p in (path, newer))
opened = []

def watch(name):  # the training still running replaces the file after the server first read it
    if os.path.abspath(os.fspath(name)) == os.path.abspath(path):
        opened.append(1)
        if len(opened) == 2 and os.path.exists(newer):
            os.replace(newer, path)

def wrap(real):
    def opener(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            watch(file)
        return real(file, *args, **kwargs)
    return opener

os.open, builtins.open, io.open = wrap(os.open), wrap(builtins.open), wrap(io.open)
loaded = HSNetModel("hsnet", path, device="cpu")._load()
weights = loaded.classifier.model.state_dict()

def same(w):
    return all(torch.equal(weights[k].cpu(), w[k]) for k in w if k in weights)

print("REPORTED", loaded.model_version)
print("LOADED_SHA", old_sha if same(old_w) else new_sha if same(new_w) else "neither")
print("OPENS", len(opened))
"""


def test_serve_reports_the_version_of_the_checkpoint_bytes_it_loaded(trained, tmp_path):
    """hsnet/serve.py: resolve() "the version reported is the one loaded"; Loaded.model_version is
    "sha256:<12 hex> of a checkpoint file", returned with every prediction as ``model_version``.
    Today's change made evaluate and register read a checkpoint once, "so its hash, its weights and
    any copy of it are of one file, even if it is replaced meanwhile (``best.pt`` of a training still
    running)" (checkpoint.read).

    `hsnet serve --model runs/x/best.pt` still hashes the file (resolve: sha256_file) and then loads
    it again (load_classifier -> checkpoint.load): a best.pt replaced in between (the training still
    running writes a better epoch) is served with the weights of the new file under the hash of the
    old one, and every response names a version that is not the model answering."""
    import os
    import shutil
    import subprocess
    import sys

    from hsnet.deploy import overlay_dir

    overlay = overlay_dir()
    if not (overlay / "kserve").is_dir():
        pytest.skip(f"needs KServe's SDK (make serve-env: {overlay})")
    best = tmp_path / "best.pt"
    shutil.copyfile(trained["checkpoint"], best)
    ckpt = torch.load(best, weights_only=True)
    for value in ckpt["model"].values():
        if value.is_floating_point():
            value.add_(0.5)  # the next epoch's weights
    torch.save(ckpt, tmp_path / "next.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(overlay), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", _SERVE_PROBE, str(best), str(tmp_path / "next.pt")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    assert out["REPORTED"] == out["LOADED_SHA"], (
        f"serves the weights of {out['LOADED_SHA']} and reports version {out['REPORTED']} "
        f"(the file was opened {out['OPENS']} times)")


def test_a_copy_half_deleted_by_older_code_with_its_mlmodel_left_is_downloaded_again(local_mlflow):
    """hsnet.model_copies.fetch_model: "A local copy of the MLflow model at ``uri``, downloaded once and
    reused"; today's fix there: "what a copy removed by older code (not renamed first) may have left"
    is removed and downloaded again (commit: "a half-deleted model-cache copy no longer breaks that
    version").

    Older code pruned copies with shutil.rmtree(old, ignore_errors=True); killed half-way, it leaves
    whatever scandir had not reached yet. The fix only recognises a leftover by its missing MLmodel:
    where rmtree had removed the weights but not yet MLmodel, the copy is a cache hit for ever. For
    a registered version, load_classifier then refuses it with ModelChanged ("its model files ...
    were changed after registration ... check who can write to the tracking server") every time, a
    security alarm for a cache leftover, until someone deletes the cache by hand."""
    import shutil

    import mlflow

    from hsnet.model_copies import fetch_model

    mlflow.set_tracking_uri(local_mlflow)
    mlflow.set_experiment("model-cache-15c")
    with mlflow.start_run() as run:
        mlflow.log_text("flavors: {}\n", "model/MLmodel")
        mlflow.log_text("weights", "model/data/model.pt")
    uri = f"runs:/{run.info.run_id}/model"
    local = fetch_model(uri)
    assert (local / "data" / "model.pt").read_text() == "weights"
    # the copy as older code left it: made by its download (no marker of today's code), then half
    # deleted by its rmtree, killed before it reached MLmodel
    mlmodel = (local / "MLmodel").read_bytes()
    shutil.rmtree(local)
    local.mkdir()
    (local / "MLmodel").write_bytes(mlmodel)
    for marker in local.parent.glob(".complete-*"):  # older code made no marker beside its copies
        marker.unlink()
    again = fetch_model(uri)
    assert (again / "data" / "model.pt").is_file(), sorted(p.name for p in again.rglob("*"))


def test_a_crop_lost_to_a_power_cut_is_cut_again_not_reused(tmp_path):
    """docs/security.md: outputs are "flushed to the disk before [their] rename (checkpoints, records,
    reports: a power loss leaves the old file or the new one, whole; crops, annotated copies and S3
    downloads, which a re-run writes again, only survive a killed process)"; crop's module docstring:
    "Incremental: a re-run only processes rows whose file content (sha256) or settings changed".

    Crops are renamed into place without a flush (durable=False), and crop_state.json, which says
    which crops are done, is now flushed after them. A machine that loses power within the
    writeback window comes back with the state file whole and crops that are names without their
    data (zero bytes: new files on ext4/XFS with delayed allocation). The re-run does NOT write them
    again: _reusable only asks whether the crop file exists, so every lost crop is reused, listed in
    the output manifest, and handed to training as a file that is not a PNG. (The state file must
    not be on the disk before the crops it lists, or reuse must check the crop.)"""
    from hsnet.data.crop import crop

    root = tmp_path / "root"
    names = [f"p{i}.png" for i in range(3)]
    for i, n in enumerate(names):
        noise_photo(root / n, i, size=48)
    write_manifest(tmp_path / "m.csv", manifest_rows(names))
    out, settings = tmp_path / "out", CropParams(detector="none", size=32)
    crop(tmp_path / "m.csv", root, out, settings=settings, progress=False)
    lost = out / "images" / "p1.png"
    lost.write_bytes(b"")  # what the power cut left of a crop renamed into place before its data reached the disk
    crop(tmp_path / "m.csv", root, out, settings=settings, progress=False)  # the re-run
    listed = {r["source_path"]: r["path"] for r in read_manifest(out / "manifest.csv", required=["path"])}
    with Image.open(out / listed["p1.png"]) as img:  # raises on the zero-byte file
        assert img.size == (32, 32)


def test_a_registration_older_code_left_half_done_is_finished_too(
        register_killed, quick_log_model, local_mlflow, evaluated, monkeypatch):
    """docs/security.md: "a registration stopped after its version was made and before its
    `candidate` alias was set ... is finished by the next `hsnet register` of the same file";
    README: register "points the alias `candidate` at it" and "always runs (it is idempotent)".

    Only a version tagged registration=pending is finished, and only today's code sets that tag. A
    register that older code (the release before this one) stopped half-way, the very failure
    today's fix is about, left a version with no tag, no description and no alias: after the
    upgrade the next register of that file still returns it as "already registered" without ever
    setting ``candidate`` (promote then gates the previous candidate). Such a version is told
    apart without the tag: older code set the description and the alias together, so a version of
    it with no description was stopped before both."""
    from mlflow import MlflowClient

    from hsnet.registry import register

    client = MlflowClient(local_mlflow)
    ckpt, metrics, _ = evaluated(1)
    register_killed(ckpt, metrics, "sample")  # stopped right after it made the version
    (mv,) = client.search_model_versions("name='hsnet-sample'")
    client.delete_model_version_tag("hsnet-sample", mv.version, "registration")  # as older code left it: no such tag
    again = register(ckpt, metrics, "sample")  # the upgraded pipeline's register of the same file
    assert str(again["version"]) == str(mv.version)
    assert "candidate" in again["aliases"], again
