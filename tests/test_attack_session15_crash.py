"""Attack, session 15a: crash consistency, interrupted and concurrent runs.

Each test fails on the code as it stands and passes once the defect it names is fixed; each
quotes the promise it checks.
"""

from __future__ import annotations

from crafted import manifest_rows, noise_photo

import json

import pytest
import torch
from PIL import Image

from hsnet.data.crop import crop
from hsnet.data.manifest import read_manifest, write_manifest
from hsnet.errors import HSNetError
from hsnet.params import CropParams, Params


def test_a_crop_whose_folder_is_another_rows_crop_is_a_record_not_the_end_of_the_run(tmp_path):
    """docs/security.md, crop: "a refused row (outside the root, a crop that would overwrite another
    row's or land outside `--out` through a planted link, ...) is listed under `refused` in
    crop_report.json, an unreadable one under `unreadable`; the run goes on." and crop()'s docstring:
    "a crop that would land on another row's ...: each is a record in the report, never the end of
    the run".

    A photo named ``a`` (no extension: its crop is ``images/a.png``) and a folder ``a.png/`` of photos
    (``a.png/x.jpg``: its crop is ``images/a.png/x.jpg.png``) can both exist under --root; their crops
    can't both exist under --out (``images/a.png`` a file and a folder). colliding_rows only finds
    *equal* crop names, so crop writes both and the second write raises: the whole run ends
    (HSNetError "can't write the crop ... (File exists)") and b.png, a fine photo, is never cropped."""
    root = tmp_path / "root"
    noise_photo(root / "a")
    noise_photo(root / "a.png" / "x.jpg", 1, fmt="JPEG")
    noise_photo(root / "b.png", 2)
    write_manifest(tmp_path / "m.csv", manifest_rows(["a", "a.png/x.jpg", "b.png"]))
    report = crop(tmp_path / "m.csv", root, tmp_path / "out", settings=CropParams(detector="none", size=32),
                  progress=False)
    recorded = {r["path"] for r in report["refused"] + report["unreadable"]}
    assert recorded & {"a", "a.png/x.jpg"}, report
    assert "b.png" in {r["source_path"] for r in read_manifest(tmp_path / "out" / "manifest.csv",
                                                                 required=["path"])}


def test_two_crops_into_one_out_never_leave_crops_of_other_settings_under_its_record(tmp_path, monkeypatch):
    """The training folder is held against a second writer (docs/architecture.md "Where state
    lives": "a second `hsnet train` into it is refused"); crop's folder is not, and crop's record
    promises the crops it lists are cut with the settings it names (crop(): "nothing may still say
    how the old ones were" cut; hsnet/data/crop.py's module docstring: "Incremental: a re-run only
    processes rows whose file content (sha256) or settings changed").

    Two `hsnet data crop` into one --out (a second terminal, a retried job while the first still runs)
    with other settings (size 48 against 32): the second finishes while the first is cutting, the
    first then finishes and records size 32 for every crop, but a crop the second re-cut is 48x48.
    A later re-run at 32 reuses it (same photo, same settings, file present): training reads a crop
    of other settings for ever. Either the second crop is refused while the first runs, or every
    crop the record lists is cut as it says."""
    import hsnet.data.crop as crop_mod

    root = tmp_path / "root"
    names = [f"p{i}.png" for i in range(4)]
    for i, n in enumerate(names):
        noise_photo(root / n, i, size=64)
    write_manifest(tmp_path / "m.csv", manifest_rows(names))
    out = tmp_path / "out"
    original = crop_mod._crop_one
    state = {"second": None}

    def crop_one(item, img, boxes, settings, out_dir):
        result = original(item, img, boxes, settings, out_dir)
        if state["second"] is None:  # the first crop has cut one photo: a second one starts meanwhile
            state["second"] = "running"
            try:
                crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=48), progress=False)
                state["second"] = "finished"
            except HSNetError as exc:  # refused while the first runs: what the fix may do
                state["second"] = f"refused: {exc}"
        return result

    monkeypatch.setattr(crop_mod, "_crop_one", crop_one)
    report = crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False,
                  workers=1)
    assert report["settings"]["size"] == 32
    sizes = {r["path"]: Image.open(out / r["path"]).size for r in read_manifest(out / "manifest.csv")}
    assert set(sizes.values()) == {(32, 32)}, (state["second"], sizes)


class _TinyNet(torch.nn.Module):
    """A stand-in for HSNet (seconds per epoch on a CPU): the training loop under test is the same."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.fc = torch.nn.Linear(4, num_classes)

    @property
    def level_weights(self):
        return {}

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture
def tiny_model(monkeypatch):
    import hsnet.checkpoint as checkpoint_mod

    monkeypatch.setattr(checkpoint_mod, "build_model", lambda num_classes, model, **kw: _TinyNet(num_classes))


def _train(data, params_path, out, overrides=None, **kw):
    from hsnet.train import train

    return train(data, Params.resolve(params_path, "sample", overrides), out, **kw)


def test_a_run_killed_after_early_stopping_resumes_to_the_same_end(tiny_data, tiny_params, tiny_model, tmp_path,
                                                                  monkeypatch):
    """README: "`--resume` continues from `last.pt`; on the CPU with a fixed seed a killed and
    resumed run ends with the same weights, bit for bit, as one that ran through (tested)"; train():
    ``resume="auto"`` is what ``dvc repro`` does "after a kill".

    A run with ``train.early_stopping`` writes its stopping epoch's last.pt, then history.json, the
    curves and its MLflow artifacts (best.pt uploaded to the tracking server: 62 MB). Killed there
    (``stop_after_epochs`` at that epoch leaves exactly that state), the resumed run does not see that
    it had stopped: _fit's loop trains one more epoch before it looks at ``state.stale``. The resumed
    run ends one epoch later than the one that ran through, with other last.pt weights (and, if that
    extra epoch improved, another best.pt)."""
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    opts = dict(track=False, progress=False, overrides={"train": {"epochs": 6, "early_stopping": 1}})
    straight = _train(tiny_data, tiny_params, tmp_path / "straight", **opts)
    stopped_at = straight["epochs_run"]
    assert stopped_at < 6, "precondition: early stopping ended the run"
    _train(tiny_data, tiny_params, tmp_path / "killed", stop_after_epochs=stopped_at, **opts)
    resumed = _train(tiny_data, tiny_params, tmp_path / "killed", resume="auto", **opts)
    assert resumed["epochs_run"] == stopped_at
    history = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert len(history) == stopped_at


def test_register_killed_before_its_alias_is_set_sets_it_when_run_again(
        register_killed, quick_log_model, local_mlflow, evaluated, monkeypatch):
    """registry.register(): "register it as a new version of ``name``, alias ``candidate``";
    "Registering the same checkpoint again returns the existing version"; README: register "always
    runs (it is idempotent)"; promote() promotes "default: the ``candidate`` alias".

    register creates the version (with its checkpoint_sha256 tag) and only then sets its description
    and the ``candidate`` alias. Killed in between (a preempted pod, Ctrl-C, a registry hiccup: the
    step is retried), the re-run finds the version by its hash and returns it as "already
    registered" without ever pointing ``candidate`` at it: ``candidate`` stays on the previous
    version (or on none), and the next `hsnet promote` gates and promotes the OLD model."""
    from mlflow import MlflowClient

    from hsnet.registry import register

    client = MlflowClient(local_mlflow)
    old = register(*evaluated(1)[:2], "sample")
    assert old["aliases"] == ["candidate"]
    new_ckpt, new_metrics, _ = evaluated(0)
    register_killed(new_ckpt, new_metrics, "sample")  # stopped right after it made the version
    again = register(new_ckpt, new_metrics, "sample")  # the retried step
    assert again["version"] != old["version"]
    assert "candidate" in again["aliases"], again
    assert str(client.get_model_version_by_alias("hsnet-sample", "candidate").version) == str(again["version"])


def test_a_checkpoint_is_on_disk_before_it_replaces_the_previous_one(tmp_path, monkeypatch):
    """README: "Every epoch writes `last.pt` atomically"; "A checkpoint that can't be written ...
    the previous one stays whole"; the durable-checkpoint docs: a preempted or killed training
    "continues from its last uploaded epoch"; docs/security.md: "Every output is written atomically
    (`hsnet.io.atomic_path`)".

    atomic_path renames the temporary file over the old one without ever flushing it to the disk
    (no fsync/fdatasync anywhere in hsnet). A process kill is survived (the page cache outlives the
    process), but a node that loses power or panics within the next seconds (the writeback window)
    can come back with the NEW name pointing at an empty or partly written file (XFS, ext4 without
    auto_da_alloc for new files, many network volumes): the old last.pt is gone (renamed over) and
    the new one is not there. `dvc repro` (--resume auto) then stops on "checkpoint last.pt is damaged
    or incomplete". The fix is the usual one: fsync the temporary file before os.replace (and the
    folder after). This test watches the write of a checkpoint for that flush."""
    import os

    from hsnet import checkpoint

    synced, order = set(), []
    real_fsync, real_fdatasync, real_replace = os.fsync, os.fdatasync, os.replace

    def path_of(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        except OSError:
            return None

    def fsync(fd):
        synced.add(path_of(fd))
        return real_fsync(fd)

    def fdatasync(fd):
        synced.add(path_of(fd))
        return real_fdatasync(fd)

    def replace(src, dst, *a, **kw):
        order.append((os.path.realpath(src), os.path.realpath(src) in synced))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "replace", replace)
    (tmp_path / "last.pt").write_bytes(b"the previous epoch's checkpoint")
    checkpoint.save(tmp_path / "last.pt", {"format": checkpoint.FORMAT, "model": {"w": torch.ones(3)}})
    assert order, "the checkpoint is written to a temporary name and renamed"
    assert all(was_synced for _, was_synced in order), f"renamed over last.pt before being flushed: {order}"


def test_a_model_cache_copy_left_half_deleted_by_a_killed_prune_is_downloaded_again(local_mlflow, monkeypatch):
    """hsnet.model_copies.fetch_model: "A local copy of the MLflow model at ``uri``, downloaded once and
    reused"; "Leftovers of a download killed half-way are removed"; docs/architecture.md: the
    models predict/serve downloaded are kept in the cache, "the MODEL_CACHE_KEEP most recently used
    versions".

    fetch_model prunes older copies with shutil.rmtree(old, ignore_errors=True). A predict or serve
    killed during that rmtree (a pod stopped as it starts), or an rmtree that fails on one file
    (ignore_errors), leaves the version's folder partly deleted: its MLmodel gone, other files still
    there. When that version is asked for again (a rollback to it, predict --model models:/NAME/3)
    fetch_model downloads it afresh and os.rename()s the download onto the leftover folder, which
    fails (ENOTEMPTY); since the leftover has no MLmodel, the OSError is raised. Every later fetch
    of that version fails the same way until someone deletes the cache folder by hand."""
    import mlflow

    from hsnet.model_copies import fetch_model

    mlflow.set_tracking_uri(local_mlflow)  # this test's store and experiment (an earlier test may have set others)
    mlflow.set_experiment("model-cache")
    with mlflow.start_run() as run:
        mlflow.log_text("flavors: {}\n", "model/MLmodel")
        mlflow.log_text("weights", "model/data/model.pt")
    uri = f"runs:/{run.info.run_id}/model"
    local = fetch_model(uri)
    assert (local / "MLmodel").is_file()
    (local / "MLmodel").unlink()  # what rmtree had removed when the process was killed
    again = fetch_model(uri)
    assert (again / "MLmodel").is_file() and (again / "data" / "model.pt").read_text() == "weights"


def test_crop_never_deletes_files_outside_out_through_a_linked_images_folder(tmp_path):
    """The promise under attack: "nothing is written outside the output folder"; docs/security.md:
    crop refuses "a crop that would ... land outside `--out` through a planted link" (per row), and
    tests/fuzz checks "nothing written outside the output folder".

    --out's ``images`` folder is a symbolic link (put there to keep the crops on a larger disk, or
    planted). crop sees that every crop would land outside --out through that link and refuses each
    row, as promised; then _write_outputs "removes stale crops": (out / "images").rglob("*.png")
    follows the link at its root and unlinks every PNG it finds in the folder it points to, subfolders
    included: files crop never wrote, outside --out, deleted."""
    import os

    root = tmp_path / "root"
    noise_photo(root / "p.png")
    elsewhere = tmp_path / "bigdisk"
    noise_photo(elsewhere / "precious.png", 1)
    noise_photo(elsewhere / "album" / "also.png", 2)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "images")
    write_manifest(tmp_path / "m.csv", manifest_rows(["p.png"]))
    try:
        report = crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False)
    except HSNetError:
        report = None  # refusing the linked folder outright is fine too
    if report is not None:
        assert [r["path"] for r in report["refused"]] == ["p.png"]
    assert (elsewhere / "precious.png").is_file() and (elsewhere / "album" / "also.png").is_file()


def test_evaluate_binds_its_figures_to_the_file_it_evaluated(tiny_data, tiny_params, tiny_model, tmp_path,
                                                              monkeypatch):
    """hsnet/evaluate.py: ``sha = sha256_file(checkpoint)  # binds the figures to this file (hsnet
    register checks it)``; registry.register(): "``metrics`` is the metrics.json ``hsnet evaluate``
    wrote for this very file (same sha256)"; promote gates on those figures.

    evaluate loads the checkpoint, then reads the file a second time to hash it. best.pt is replaced
    (atomically, by rename) whenever a training that is still running into that folder improves (a
    user checks a run mid-training; the folder lock covers trainings only). Replaced between the two
    reads, the old weights' figures are recorded under the NEW file's sha256; `hsnet register` then
    finds file and metrics "the same" and registers weights nobody evaluated, with another model's
    figures, and promote gates on them. (At its end evaluate also uploads `checkpoint` again as the
    evaluation run's artifact: a third read.)"""
    import hashlib
    import os

    from hsnet.evaluate import evaluate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    opts = dict(track=False, progress=False)
    _train(tiny_data, tiny_params, tmp_path / "a", overrides={"train": {"epochs": 1, "seed": 1}}, **opts)
    _train(tiny_data, tiny_params, tmp_path / "b", overrides={"train": {"epochs": 1, "seed": 2}}, **opts)
    best = tmp_path / "a" / "best.pt"
    evaluated_sha = hashlib.sha256(best.read_bytes()).hexdigest()
    alone = evaluate(best, tiny_data, tmp_path / "eval-a", track=False, progress=False)
    real_load = torch.load
    swapped = []

    def load_then_training_improves(*args, **kwargs):
        ckpt = real_load(*args, **kwargs)
        if not swapped:  # the running training's next best epoch lands, once
            os.replace(tmp_path / "b" / "best.pt", best)
            swapped.append(True)
        return ckpt

    monkeypatch.setattr(torch, "load", load_then_training_improves)
    metrics = evaluate(best, tiny_data, tmp_path / "eval", track=False, progress=False)
    assert swapped, "the file was replaced while evaluate read it"
    assert metrics["checkpoint_sha256"] == evaluated_sha, "figures of one file recorded under another's hash"
    assert metrics["confusion_matrix"] == alone["confusion_matrix"]  # and the figures are that file's
