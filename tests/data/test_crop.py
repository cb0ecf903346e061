"""MTCNN cropping on a real photograph, mixed face/no-face batches, no-face policies, odd image modes."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from hsnet.cli import main
from hsnet.data.crop import Detector, center_crop, colliding_rows, crop, output_name
from hsnet.params import CropParams
from hsnet.data.manifest import read_manifest, write_manifest
from hsnet.errors import HSNetError
from hsnet.io import open_rgb

skimage_data = pytest.importorskip("skimage.data")

# where the astronaut's face is in skimage.data.astronaut() (512x512): about x 180-270, y 60-175
FACE_CENTRE = (224, 118)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    astronaut = Image.fromarray(skimage_data.astronaut())
    astronaut.save(root / "astronaut.jpg", quality=95)
    astronaut.transpose(Image.FLIP_LEFT_RIGHT).save(root / "astronaut_mirror.png")
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((512, 512, 3), 127, np.uint8)).save(root / "grey.png")  # no face, same size
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(root / "noise.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _manifest(path, names):
    write_manifest(path, [{"path": n, "label": 0, "label_name": "joy", "split": "train", "subject": ""}
                          for n in names])
    return path


def test_mtcnn_finds_the_face_in_a_real_photograph(photos):
    detector = Detector("cpu")
    boxes = detector([np.asarray(open_rgb(photos / "astronaut.jpg"))])[0]
    assert len(boxes) >= 1
    x1, y1, x2, y2, prob = boxes[np.argmax(boxes[:, 4])]
    assert prob > 0.95
    assert x1 < FACE_CENTRE[0] < x2 and y1 < FACE_CENTRE[1] < y2


def test_cpu_detection_holds_a_bounded_number_of_pixels_at_once(photos, monkeypatch):
    """On a CPU the detector's memory grows with the pixels of one call: images go through in
    chunks of at most crop.CPU_BATCH_PIXELS (a larger image alone), with the boxes each image
    gets alone."""
    import hsnet.data.crop as crop_mod

    detector = Detector("cpu")
    face = np.asarray(open_rgb(photos / "astronaut.jpg"))  # 512 x 512
    grey = np.asarray(open_rgb(photos / "grey.png"))
    small = face[::2, ::2]  # 256 x 256
    images = [face, grey, small, small, face, small]
    alone = [detector.batched([img])[0] for img in images]
    calls = []
    real = detector.batched
    monkeypatch.setattr(detector, "batched", lambda imgs: calls.append([i.shape[:2] for i in imgs]) or real(imgs))
    monkeypatch.setattr(crop_mod, "CPU_BATCH_PIXELS", 512 * 512 + 2 * 256 * 256)
    found = detector(images)
    # by hand: face alone would fit with grey? 2 x 512^2 > budget, so face | grey + 2 small | face + small
    assert calls == [[(512, 512)], [(512, 512), (256, 256), (256, 256)], [(512, 512), (256, 256)]]
    assert len(found[0]) >= 1 and len(found[1]) == 0
    for got, want in zip(found, alone):
        np.testing.assert_allclose(got, np.asarray(want, dtype=np.float64).reshape(-1, 5), atol=1e-3)


def test_batch_mixing_face_and_no_face_images(photos, tmp_path):
    """facenet-pytorch's MTCNN.detect crashes on such a batch; crop must not."""
    manifest = _manifest(tmp_path / "m.csv", ["astronaut.jpg", "grey.png", "astronaut_mirror.png",
                                              "noise.png", "broken.jpg"])
    report = crop(manifest, photos, tmp_path / "out", settings=CropParams(size=100), batch_size=8,
                  progress=False)
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert sorted(r["source_path"] for r in rows) == ["astronaut.jpg", "astronaut_mirror.png"]
    assert sorted(report["no_face"]) == ["grey.png", "noise.png"]
    assert [u["path"] for u in report["unreadable"]] == ["broken.jpg"]
    assert "broken.jpg" in report["unreadable"][0]["error"]
    assert all(float(r["det_prob"]) > 0.9 and r["crop"] == "mtcnn" for r in rows)
    face = Image.open(tmp_path / "out" / rows[0]["path"])
    assert face.size == (100, 100) and face.mode == "RGB"
    saved = json.loads((tmp_path / "out" / "crop_report.json").read_text())
    assert saved["images"] == 5 and saved["output_images"] == 2


def test_no_face_center_policy(photos, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["astronaut.jpg", "grey.png"])
    report = crop(manifest, photos, tmp_path / "out", settings=CropParams(size=80, no_face="center"),
                  progress=False)
    rows = {r["source_path"]: r for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert rows["grey.png"]["crop"] == "center_fallback" and rows["grey.png"]["det_prob"] == ""
    assert rows["astronaut.jpg"]["crop"] == "mtcnn"
    assert report["center_fallback"] == ["grey.png"]


def test_detector_none_resizes(photos, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["grey.png", "noise.png"])
    report = crop(manifest, photos, tmp_path / "out", settings=CropParams(detector="none", size=64),
                  progress=False)
    assert report["output_images"] == 2
    assert Image.open(tmp_path / "out" / "images" / "noise.png").size == (64, 64)


def test_incremental_rerun(photos, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["astronaut.jpg", "grey.png"])
    settings = CropParams(size=100, no_face="center")
    first = crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
    assert first["processed"] == 2 and first["reused"] == 0
    again = crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
    assert again["processed"] == 0 and again["reused"] == 2
    changed = crop(manifest, photos, tmp_path / "out", settings=CropParams(size=90, no_face="center"),
                   progress=False)
    assert changed["processed"] == 2
    assert Image.open(tmp_path / "out" / "images" / "grey.png").size == (90, 90)


def test_crops_made_by_other_code_are_cut_again(photos, tmp_path):
    """A re-crop into the same --out after an upgrade (crop_state.json written by other crop code,
    or by an hsnet that didn't record its code) reuses nothing: the detector may have changed."""
    manifest = _manifest(tmp_path / "m.csv", ["astronaut.jpg", "grey.png"])
    settings = CropParams(size=100, no_face="center")
    crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
    state = tmp_path / "out" / "crop_state.json"
    recorded = json.loads(state.read_text())
    assert recorded["code_version"].startswith("sha256:")
    for older in ({**recorded, "code_version": "sha256:0123456789abcdef"},
                  {k: v for k, v in recorded.items() if k != "code_version"}):
        state.write_text(json.dumps(older))
        again = crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
        assert again["processed"] == 2 and again["reused"] == 0
    assert crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)["reused"] == 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P", "exif"])
def test_image_modes(mode, tmp_path):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    path = tmp_path / ("img.tif" if mode == "CMYK" else "img.png")
    if mode == "exif":
        path = tmp_path / "img.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise for display
        rgb.save(path, exif=exif)
    elif mode == "I;16":
        Image.fromarray((np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20)).save(path)
    else:
        rgb.convert(mode).save(path)
    img = open_rgb(path)
    assert img.mode == "RGB"
    assert img.size == ((40, 60) if mode == "exif" else (60, 40))
    if mode == "I;16":
        assert np.asarray(img).max() == round(2399 * 20 / 65535 * 255)  # scaled to 8 bits, not clipped


def test_bad_settings(photos, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["grey.png"])
    with pytest.raises(HSNetError, match="--detector"):
        crop(manifest, photos, tmp_path / "o", settings=CropParams(detector="haar"))
    with pytest.raises(HSNetError, match="no-face policy"):
        crop(manifest, photos, tmp_path / "o", settings=CropParams(no_face="keep"))
    write_manifest(tmp_path / "empty.csv", [])
    with pytest.raises(HSNetError, match="no rows"):
        crop(tmp_path / "empty.csv", photos, tmp_path / "o")


# --- hostile and odd inputs (issue 13) ---------------------------------------------------------

def _rows(names_splits):
    return [{"path": n, "label": 0, "label_name": "joy", "split": s, "subject": ""} for n, s in names_splits]


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _noise(path, seed, size=(48, 48)):
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")
    return arr


def test_tiny_images_do_not_end_an_mtcnn_run(photos, tmp_path):
    """MTCNN raises in torch.cat on an image smaller than its smallest face: one such photo ended the run."""
    root = tmp_path / "root"
    root.mkdir()
    for name in ("astronaut.jpg", "grey.png"):
        (root / name).write_bytes((photos / name).read_bytes())
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one.png")
    Image.new("RGB", (19, 19)).save(root / "nineteen.png")  # under min_face_size 20
    Image.new("RGB", (3, 600)).save(root / "thin.png")
    manifest = _manifest(tmp_path / "m.csv", ["one.png", "astronaut.jpg", "nineteen.png", "thin.png", "grey.png"])
    for batch_size in (1, 8):
        report = crop(manifest, root, tmp_path / f"out{batch_size}", settings=CropParams(size=64),
                      batch_size=batch_size, progress=False)
        assert sorted(report["no_face"]) == ["grey.png", "nineteen.png", "one.png", "thin.png"]
        assert report["output_images"] == 1 and report["faces_found"] == 1
    detector = Detector("cpu", min_face_size=40)
    boxes = detector([np.zeros((39, 39, 3), np.uint8), np.zeros((39, 39, 3), np.uint8)])
    assert [b.shape for b in boxes] == [(0, 5), (0, 5)]


def test_output_names_are_unique_per_row(tmp_path):
    """x.png (test) and x.jpg (train), x.JPG and x.jpg, x.png and 'x.png\\n' all used to become images/x.png:
    the test row then held the train image."""
    root = tmp_path / "root"
    (root / "k").mkdir(parents=True)
    names = [("x.png", "test"), ("x.jpg", "train"), ("k/AF01.JPG", "train"), ("k/AF01.jpg", "test"),
             ("y.png", "train"), ("y.png\n", "test")]
    pixels = {name: _noise(root / name, i, (40 + i, 40)) for i, (name, _) in enumerate(names)}
    write_manifest(tmp_path / "m.csv", _rows(names))
    report = crop(tmp_path / "m.csv", root, tmp_path / "out", settings=CropParams(detector="none", size=32),
                  progress=False)
    assert report["output_images"] == 6 and not report["refused"]
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert len({r["path"] for r in rows}) == 6
    for r in rows:  # each crop is its own source's image
        expected = np.asarray(center_crop(Image.fromarray(pixels[r["source_path"]]), 32))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / r["path"])), expected), r
    by_source = {r["source_path"]: r["path"] for r in rows}
    assert by_source["x.png"] == "images/x.png" and by_source["x.jpg"] == "images/x.jpg.png"
    assert by_source["y.png\n"] == "images/y.png%0A.png"
    assert [output_name(n) for n in ("a%b.png", "a%25b.png")] == ["images/a%25b.png", "images/a%2525b.png"]


def test_rows_whose_crops_would_collide_are_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for i, name in enumerate(("x.jpg", "x.jpg.png", "a.png", "A.png")):
        _noise(root / name, i)
    write_manifest(tmp_path / "m.csv", _rows([("x.jpg", "train"), ("x.jpg.png", "test"), ("a.png", "train"),
                                              ("A.png", "test"), ("a.png", "val")]))
    assert colliding_rows(["x.jpg", "x.jpg.png", "a.png", "A.png", "a.png"]) == {1: 0, 4: 2}
    assert colliding_rows(["sub/x.png", "./sub//x.png", "sub/x.PNG"]) == {1: 0}  # one file, named twice
    report = crop(tmp_path / "m.csv", root, tmp_path / "out", settings=CropParams(detector="none", size=32),
                  progress=False)
    assert report["output_images"] == 3
    assert [(r["path"], "would overwrite the crop of the row" in r["error"]) for r in report["refused"]] == [
        ("x.jpg.png", True), ("a.png", True)]


def test_manifest_paths_outside_the_root_are_refused_by_crop_itself(tmp_path):
    """Without validate first, an absolute path overwrote its source and '..' wrote outside --out."""
    root, outside, out = tmp_path / "root", tmp_path / "outside", tmp_path / "work" / "out"
    root.mkdir()
    outside.mkdir()
    _noise(root / "ok.png", 0)
    _noise(outside / "victim.png", 1)
    (root / "link.png").symlink_to(outside / "victim.png")
    (root / "linkdir").symlink_to(outside)
    before = _snapshot(tmp_path)
    bad = [str(outside / "victim.png"), "../outside/victim.png", "../../outside/victim.png", "link.png",
           "linkdir/victim.png", ""]
    write_manifest(tmp_path / "m.csv", _rows([("ok.png", "train")] + [(b, "train") for b in bad]))
    report = crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert report["output_images"] == 1
    assert sorted(r["path"] for r in report["refused"]) == sorted(bad)
    assert all("manifest path" in r["error"] for r in report["refused"])
    after = _snapshot(tmp_path)
    written = {p for p in after if p not in before or after[p] != before[p]}
    assert written and all(out in p.parents or p == tmp_path / "m.csv" for p in written), written


def test_crops_never_land_outside_out_through_a_link(tmp_path):
    root, outside, out = tmp_path / "root", tmp_path / "outside", tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    (out / "images").mkdir(parents=True)
    outside.mkdir()
    _noise(root / "sub" / "x.png", 0)
    (out / "images" / "sub").symlink_to(outside)  # planted in the output folder
    write_manifest(tmp_path / "m.csv", _rows([("sub/x.png", "train")]))
    report = crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert report["output_images"] == 0 and "crop output" in report["refused"][0]["error"]
    assert list(outside.iterdir()) == []


def test_a_crop_that_cant_be_written_under_its_name_is_a_record(tmp_path):
    """A folder someone left where one row's crop goes (out/images/a.png holding a note: not a crop,
    so not crop's to delete): renaming the crop onto it fails (EISDIR) for that row only; the run
    goes on, a full disk would still end it."""
    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir()
    for i, n in enumerate(["a.png", "b.png"]):
        _noise(root / n, i)
    (out / "images" / "a.png").mkdir(parents=True)
    (out / "images" / "a.png" / "notes.txt").write_text("mine")
    write_manifest(tmp_path / "m.csv", _rows([("a.png", "train"), ("b.png", "train")]))
    report = crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert [r["path"] for r in report["refused"]] == ["a.png"] and "can't write the crop" in report["refused"][0]["error"]
    assert [r["source_path"] for r in read_manifest(out / "manifest.csv")] == ["b.png"]
    assert (out / "images" / "a.png" / "notes.txt").read_text() == "mine"
    # not remembered as done: once the folder is gone, the next run crops it
    (out / "images" / "a.png" / "notes.txt").unlink()
    (out / "images" / "a.png").rmdir()
    again = crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert again["refused"] == [] and again["processed"] == 1 and again["reused"] == 1


def test_a_crop_whose_name_was_an_old_crops_folder_is_cut(tmp_path):
    """Run 1 crops a.png/x.jpg (images/a.png/x.jpg.png); the manifest then has a photo `a` instead
    (its crop images/a.png): the old crop and its folder are removed first, and `a` is cut."""
    root, out = tmp_path / "root", tmp_path / "out"
    (root / "a.png").mkdir(parents=True)
    _noise(root / "a.png" / "x.jpg", 0)
    write_manifest(tmp_path / "m.csv", _rows([("a.png/x.jpg", "train")]))
    crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert (out / "images" / "a.png" / "x.jpg.png").is_file()
    _noise(root / "a", 1)
    write_manifest(tmp_path / "m.csv", _rows([("a", "train")]))
    report = crop(tmp_path / "m.csv", root, out, settings=CropParams(detector="none", size=32), progress=False)
    assert report["refused"] == [] and (out / "images" / "a.png").is_file()
    assert [r["path"] for r in read_manifest(out / "manifest.csv")] == ["images/a.png"]


def test_a_crop_whose_name_is_another_crops_folder_is_refused_by_name():
    """``a`` (crop images/a.png) and ``a.png/x.jpg`` (crop images/a.png/x.jpg.png): both can't exist."""
    assert colliding_rows(["a", "a.png/x.jpg", "b.png"]) == {1: 0}
    assert colliding_rows(["a.png/x.jpg", "a", "a.png/y.jpg"]) == {1: 0}
    assert colliding_rows(["d/x.png", "d.png", "d/y.png"]) == {}  # images/d/ and images/d.png: no clash


def test_special_files_are_listed_not_opened(tmp_path):
    """A FIFO named .png hung crop; a directory named dir.png or a file whose open fails ended in a traceback."""
    from tests.data.test_io import finishes

    root = tmp_path / "root"
    root.mkdir()
    _noise(root / "ok.png", 0)
    os.mkfifo(root / "fifo.png")
    (root / "dir.png").mkdir()
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "zero.png").symlink_to("/dev/zero")
    names = ["ok.png", "fifo.png", "dir.png", "loop.png", "zero.png", "missing.png"]
    write_manifest(tmp_path / "m.csv", _rows([(n, "train") for n in names]))
    report = finishes(lambda: crop(tmp_path / "m.csv", root, tmp_path / "out",
                                   settings=CropParams(detector="none", size=32), progress=False), 60)
    assert report["output_images"] == 1
    errors = {r["path"]: r["error"] for r in report["unreadable"] + report["refused"]}
    assert "a FIFO, not a regular file" in errors["fifo.png"]
    assert "a directory, not a regular file" in errors["dir.png"]
    assert "can't be resolved" in errors["loop.png"]  # a link loop: its open would raise
    assert "outside" in errors["zero.png"]  # a link out of the root: refused before it is opened
    assert "file not found" in errors["missing.png"]


def test_unwritable_out_is_refused_before_any_work(photos, tmp_path):
    (tmp_path / "a-file").write_text("x")
    manifest = _manifest(tmp_path / "m.csv", ["grey.png"])
    with pytest.raises(HSNetError, match="--out .*a-file/out: can't write there"):
        crop(manifest, photos, tmp_path / "a-file" / "out", settings=CropParams(size=64), progress=False)
    assert main(["crop", "--manifest", str(manifest), "--root", str(photos), "--out",
                 str(tmp_path / "a-file" / "out"), "--detector", "none"]) == 2


def test_stale_temporary_files_cleaned_and_modes_follow_the_umask(photos, tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    old_tmp, fresh_tmp = out / "images" / ".grey.png.k1x9.tmp", out / ".manifest.csv.zz.tmp"
    for p in (old_tmp, fresh_tmp):
        p.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    manifest = _manifest(tmp_path / "m.csv", ["grey.png"])
    old_umask = os.umask(0o022)
    try:
        crop(manifest, photos, out, settings=CropParams(detector="none", size=32), progress=False)
    finally:
        os.umask(old_umask)
    # crop holds --out (hsnet.io.only_writer): no other crop can be writing there, so what a killed
    # one left goes, fresh or not (a re-run's output is then the same as an uninterrupted run's)
    assert not old_tmp.exists() and not fresh_tmp.exists()
    for name in ("manifest.csv", "crop_report.json", "crop_state.json", "images/grey.png"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_a_broken_crop_state_is_ignored(photos, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["grey.png"])
    settings = CropParams(detector="none", size=32)
    crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
    state = tmp_path / "out" / "crop_state.json"
    forged = json.loads(state.read_text())
    forged["entries"]["grey.png"]["row"]["path"] = "../../elsewhere.png"  # reuse must not trust it
    state.write_text(json.dumps(forged))
    again = crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
    assert again["processed"] == 1 and read_manifest(tmp_path / "out" / "manifest.csv")[0]["path"] == "images/grey.png"
    state.write_text("{not json")
    assert crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)["processed"] == 1
