"""Attack, session 15d: the fixes of attack 15c (registration finishing, the model cache's
completion marker, crop's stale-crop removal before cutting).

Each test fails on the code as it stands and passes once the defect it names is fixed; each
quotes the promise it checks.
"""

from __future__ import annotations

from crafted import manifest_rows, noise_photo

import threading

import pytest


def test_finishing_a_registration_older_code_left_half_done_needs_no_tag_it_never_set(
        register_killed, quick_log_model, local_mlflow, evaluated, monkeypatch):
    """hsnet.registry._unfinished: a version "registered by an hsnet from before that tag, without the
    description registering sets before the alias" is finished by the next ``hsnet register`` of
    the same file (commit 557bfce: "a version older hsnet left without its description is finished
    too"); README: register "always runs (it is idempotent)".

    _finish builds the description from tags only today's registrations are sure to carry: the
    ``evaluation_run_id`` tag came in b192f3f (2026-11-28); a version that the first registry code
    (706a9aa, 2026-11-27: description set after register_model, as today) stopped half-way has
    none. _existing_result already allows for such versions ("registered before records were
    linked"), but the finishing step before it raises KeyError('evaluation_run_id'): every
    ``hsnet register`` of that file now ends in a traceback instead of returning its version."""
    from mlflow import MlflowClient

    from hsnet.registry import register

    client = MlflowClient(local_mlflow)
    ckpt, metrics, _ = evaluated(1)
    register_killed(ckpt, metrics, "sample")  # stopped right after it made the version
    (mv,) = client.search_model_versions("name='hsnet-sample'")
    # as the 2026-11-27 code left it: neither the registration tag nor the evaluation_run_id tag
    for tag in ("registration", "evaluation_run_id"):
        client.delete_model_version_tag("hsnet-sample", mv.version, tag)
    again = register(ckpt, metrics, "sample")  # the upgraded pipeline's register of the same file
    assert str(again["version"]) == str(mv.version)
    assert "candidate" in again["aliases"], again


def test_a_fetch_never_deletes_the_copy_another_fetch_just_put_in_place(local_mlflow, monkeypatch):
    """hsnet.model_copies.fetch_model: "A local copy of the MLflow model at ``uri``, downloaded once and
    reused"; its rename's comment: "another process cached it meanwhile" (two processes fetching
    one version, e.g. two replicas of ``hsnet serve`` starting together, are meant to be safe).

    Since the completion marker (557bfce), a process's copy is unmarked between its rename into
    place and its ``_marker(local).touch()``. A second process whose download ends in that window
    takes the copy for one "cut short" and removes it (``_remove_copy``) under the first, which then
    fails on ``os.utime(local)`` with FileNotFoundError (or, a moment later, returns a path that is
    gone). Before the marker, the second process saw MLmodel and left the copy alone. Two threads
    stand in for the two processes; the interleaving is forced with events."""
    import os
    from pathlib import Path

    import mlflow

    from hsnet.model_copies import fetch_model

    mlflow.set_tracking_uri(local_mlflow)
    mlflow.set_experiment("model-cache-15d")
    with mlflow.start_run() as run:
        mlflow.log_text("flavors: {}\n", "model/MLmodel")
        mlflow.log_text("weights", "model/data/model.pt")
    uri = f"runs:/{run.info.run_id}/model"
    a_renamed, b_removed, a_done = threading.Event(), threading.Event(), threading.Event()
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        into_place = ".download-" in str(src) and not Path(dst).name.startswith(".")
        who = threading.current_thread().name
        if into_place and who == "fetch-B":  # B's copy goes in only once A has gone on
            b_removed.set()
            a_done.wait(5)
        real_rename(src, dst, *args, **kwargs)
        if into_place and who == "fetch-A":  # A's copy is in place, not yet marked
            a_renamed.set()
            b_removed.wait(5)

    monkeypatch.setattr(os, "rename", rename)
    results = {}

    def fetch(who):
        try:
            if who == "fetch-B":
                a_renamed.wait(5)
            results[who] = fetch_model(uri)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[who] = exc
        finally:
            if who == "fetch-A":
                a_done.set()
                b_removed.set()

    threads = [threading.Thread(target=fetch, args=(w,), name=w) for w in ("fetch-A", "fetch-B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for who in ("fetch-A", "fetch-B"):
        got = results.get(who)
        assert isinstance(got, Path) and (got / "data" / "model.pt").is_file(), (who, got)


def test_a_crop_stopped_half_way_leaves_every_crop_its_records_list(tmp_path, monkeypatch):
    """docs/security.md: "Crops are flushed together, once, before the records that list them";
    crop.py keeps the last run's records while a run with the same settings works ("all written
    last"), so a run stopped half-way (Ctrl-C, a full disk, the detector running out of memory)
    leaves the records of the last finished run and the crops they list.

    a999ea1 moved the removal of stale crops from the end of the run (after the new records are
    written) to before any cutting: the crops of rows that left the manifest are deleted while
    manifest.csv still lists them. Stopped half-way, the --out folder is a manifest naming files
    that are gone: ``hsnet train --data out`` fails on them (or DVC keeps an output that lies),
    where before the change the old set was whole."""
    import hsnet.data.crop as crop_mod
    from hsnet.data.crop import crop
    from hsnet.data.manifest import read_manifest, write_manifest
    from hsnet.params import CropParams

    root = tmp_path / "root"
    for i, n in enumerate(["p0.png", "p1.png", "p2.png", "p3.png"]):
        noise_photo(root / n, i, size=48)
    out, settings = tmp_path / "out", CropParams(detector="none", size=32)
    write_manifest(tmp_path / "m.csv", manifest_rows(["p0.png", "p1.png", "p2.png"]))
    crop(tmp_path / "m.csv", root, out, settings=settings, progress=False)
    write_manifest(tmp_path / "m.csv", manifest_rows(["p0.png", "p2.png", "p3.png"]))  # p1 leaves, p3 comes
    real = crop_mod._crop_one

    def stopped(item, *args, **kwargs):
        if item.row["path"] == "p3.png":
            raise KeyboardInterrupt  # the run is stopped while it cuts the new photo
        return real(item, *args, **kwargs)

    monkeypatch.setattr(crop_mod, "_crop_one", stopped)
    with pytest.raises(KeyboardInterrupt):
        crop(tmp_path / "m.csv", root, out, settings=settings, progress=False)
    listed = [r["path"] for r in read_manifest(out / "manifest.csv", required=["path"])]
    assert listed, "the last finished run's records are kept"
    missing = [p for p in listed if not (out / p).is_file()]
    assert not missing, f"manifest.csv lists crops that are gone: {missing}"


def test_a_crop_cut_short_after_its_png_header_is_cut_again_not_reused(tmp_path):
    """docs/security.md: "a re-run cuts again a crop whose PNG header is missing or not of the
    settings' size"; crop's docstring: "Incremental: a re-run only processes rows whose file
    content (sha256) or settings changed", i.e. a reused crop is a whole one.

    _png_size reads the first 24 bytes only: a crop cut short after its header (a power cut that
    kept the file's first block, a copy interrupted half-way) passes the reuse check, is listed in
    the output manifest and handed to training as a PNG that does not decode."""
    from PIL import Image

    from hsnet.data.crop import crop
    from hsnet.data.manifest import read_manifest, write_manifest
    from hsnet.params import CropParams

    root = tmp_path / "root"
    names = [f"p{i}.png" for i in range(2)]
    for i, n in enumerate(names):
        noise_photo(root / n, i, size=48)
    write_manifest(tmp_path / "m.csv", manifest_rows(names))
    out, settings = tmp_path / "out", CropParams(detector="none", size=32)
    crop(tmp_path / "m.csv", root, out, settings=settings, progress=False)
    cut = out / "images" / "p1.png"
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) // 2])  # the header whole, half the image data lost
    crop(tmp_path / "m.csv", root, out, settings=settings, progress=False)  # the re-run
    listed = {r["source_path"]: r["path"] for r in read_manifest(out / "manifest.csv", required=["path"])}
    with Image.open(out / listed["p1.png"]) as img:
        img.load()  # raises on the truncated file
        assert img.size == (32, 32)
