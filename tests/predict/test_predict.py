"""hsnet predict: faces in real photographs, photos without a face, bad files, the CLI."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hsnet.cli import main
from hsnet.data.datasets import FERG_CLASSES
from hsnet.errors import HSNetError
from hsnet.predict import MIN_FACE_SIZE, Classifier, annotate, expand_inputs, load_classifier, predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-image's astronaut (a public-domain NASA portrait, one face) and a photo without a face."""
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(d / "astronaut.jpg", quality=95)
    yy, xx = np.mgrid[0:240, 0:320]
    sky = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(sky).save(d / "no_face.png")
    return d


@pytest.fixture(scope="module")
def trained_ckpt(trained):
    return trained["checkpoint"]


def test_faces_boxes_and_expressions(photos, trained_ckpt, tmp_path):
    out = tmp_path / "results.jsonl"
    s = predict([photos], str(trained_ckpt), out=out, annotate_dir=tmp_path / "annotated", device="cpu",
                progress=False)
    assert s["photos"] == 2 and s["faces"] == 1
    assert s["no_face"] == [str(photos / "no_face.png")] and s["unreadable"] == []
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in lines}
    face = by_name["astronaut.jpg"]["faces"][0]
    x1, y1, x2, y2 = face["box"]
    assert 150 < (x1 + x2) / 2 < 290 and 40 < (y1 + y2) / 2 < 200  # her face, not the flag or the suit
    assert face["detection_probability"] > 0.99
    assert face["expression"] in FERG_CLASSES and set(face["probabilities"]) == set(FERG_CLASSES)
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert face["confidence"] == max(face["probabilities"].values())
    assert by_name["no_face.png"]["faces"] == []
    img = Image.open(tmp_path / "annotated" / "astronaut.jpg.annotated.jpg")
    assert img.size == (512, 512)
    assert (tmp_path / "annotated" / "no_face.png.annotated.jpg").is_file()


def test_same_crop_same_probabilities_as_the_classifier(photos, trained_ckpt):
    """The face is cropped as for training and classified by the checkpoint's model."""
    from hsnet.data.crop import Detector, best_box, square_crop

    clf = Classifier.from_checkpoint(trained_ckpt, device="cpu")
    s = predict([photos / "astronaut.jpg"], str(trained_ckpt), progress=False, classifier=clf)
    img = Image.open(photos / "astronaut.jpg").convert("RGB")
    box, _ = best_box(Detector("cpu", min_face_size=MIN_FACE_SIZE)([np.asarray(img)])[0], 0.9)
    expected = clf.probabilities([square_crop(img, box, clf.input_size, clf.margin)])[0]
    got = s["results"][0]["faces"][0]["probabilities"]
    np.testing.assert_allclose([got[c] for c in clf.classes], expected, atol=2e-4)


def test_bad_inputs_are_reported(photos, trained_ckpt, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    s = predict([photos / "astronaut.jpg", tmp_path / "broken.jpg", tmp_path / "notes.txt"], str(trained_ckpt),
                device="cpu", progress=False)
    assert s["faces"] == 1 and len(s["unreadable"]) == 2
    errors = {r["path"]: r.get("error", "") for r in s["results"]}
    assert "not a readable image" in errors[str(tmp_path / "broken.jpg")]
    with pytest.raises(HSNetError, match="no such file"):
        expand_inputs([tmp_path / "nope.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(HSNetError, match="no image files"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(HSNetError, match="no such checkpoint file, and not an MLflow model URI"):
        load_classifier(tmp_path / "missing.pt")
    with pytest.raises(HSNetError, match="not an hsnet training checkpoint"):
        torch_save_garbage = tmp_path / "garbage.pt"
        import torch

        torch.save({"hello": 1}, torch_save_garbage)
        load_classifier(torch_save_garbage)


def test_huge_image_is_refused_by_name(trained_ckpt, tmp_path, monkeypatch):
    import hsnet.io

    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(hsnet.io, "MAX_IMAGE_PIXELS", 100_000)
    monkeypatch.setattr(hsnet.io.open_rgb, "__defaults__", (100_000,))
    s = predict([tmp_path / "big.png"], str(trained_ckpt), device="cpu", progress=False)
    assert "over the limit" in s["results"][0]["error"]


def test_cli(photos, trained_ckpt, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["predict", str(photos), "--model", str(trained_ckpt), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "astronaut.jpg:" in err and "no_face.png: no face found" in err and "2 photo(s), 1 face(s)" in err
    assert len(out.read_text().splitlines()) == 2
    (tmp_path / "x.jpg").write_bytes(b"junk")
    assert main(["predict", str(tmp_path / "x.jpg"), "--model", str(trained_ckpt)]) == 1  # nothing readable
    assert main(["predict", str(tmp_path / "missing.jpg"), "--model", str(trained_ckpt)]) == 2


def test_annotate_draws_the_box():
    img = Image.new("RGB", (200, 200), (0, 0, 0))
    out = np.asarray(annotate(img, [{"box": [50, 60, 150, 170], "expression": "joy", "confidence": 0.9}]))
    assert out[100, 50].tolist() == [255, 40, 40] and out[100, 100].tolist() == [0, 0, 0]


# --- hostile and odd inputs (issue 13) ---------------------------------------------------------

def test_tiny_photos_are_records_not_the_end_of_the_run(photos, trained_ckpt, tmp_path):
    """A 39x39 or 1x1 photo made MTCNN raise in torch.cat: exit 1 and no output file."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "astronaut.jpg").write_bytes((photos / "astronaut.jpg").read_bytes())
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one.png")
    Image.new("RGB", (39, 39), (9, 9, 9)).save(folder / "tiny.png")
    Image.new("RGB", (39, 39), (99, 9, 9)).save(folder / "tiny2.png")  # same size: one MTCNN batch on a GPU
    out = tmp_path / "r.jsonl"
    assert main(["predict", str(folder), "--model", str(trained_ckpt), "--out", str(out), "--device", "cpu"]) == 0
    lines = {json.loads(x)["path"].rsplit("/", 1)[-1]: json.loads(x) for x in out.read_text().splitlines()}
    assert len(lines["astronaut.jpg"]["faces"]) == 1
    for name, size in (("one.png", [1, 1]), ("tiny.png", [39, 39]), ("tiny2.png", [39, 39])):
        assert lines[name]["faces"] == [] and lines[name]["size"] == size and "error" not in lines[name]


def test_annotate_keeps_same_named_photos_apart(photos, trained_ckpt, tmp_path):
    """x.jpg in two folders (or x.png beside x.jpg) all became x.annotated.jpg: the last one won."""
    src = tmp_path / "in"
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
    Image.open(photos / "astronaut.jpg").save(src / "a" / "x.jpg", quality=95)
    Image.open(photos / "no_face.png").convert("RGB").save(src / "b" / "x.jpg", quality=95)
    Image.new("RGB", (64, 48), (0, 0, 255)).save(src / "a" / "x.png")
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (80, 60), (0, 255, 0)).save(other / "x.png")
    ann = tmp_path / "annotated"
    s = predict([src, other / "x.png", src / "a" / "x.png"], str(trained_ckpt), annotate_dir=ann, device="cpu",
                progress=False)
    assert s["photos"] == 5
    made = sorted(p.relative_to(ann).as_posix() for p in ann.rglob("*") if p.is_file())
    sizes = {name: Image.open(ann / name).size for name in made}
    assert sizes["a/x.jpg.annotated.jpg"] == (512, 512) and sizes["b/x.jpg.annotated.jpg"] == (320, 240)
    assert sizes["a/x.png.annotated.jpg"] == (64, 48)  # found in the folder first, then given again
    hashed = [n for n in made if n.startswith("x.png.")]  # other/x.png vs a/x.png, both given as 'x.png'
    assert [sizes[n] for n in hashed] == [(80, 60)] and len(made) == 4


def test_unwritable_outputs_are_refused_before_any_work(photos, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    # the model doesn't exist either: the output is checked first, before the model is loaded
    with pytest.raises(HSNetError, match="--out .*a-file: can't write there"):
        predict([photos], str(tmp_path / "missing.pt"), out=tmp_path / "a-file" / "r.jsonl", progress=False)
    with pytest.raises(HSNetError, match="--annotate .*a-file/ann: can't write there"):
        predict([photos], str(tmp_path / "missing.pt"), annotate_dir=tmp_path / "a-file" / "ann", progress=False)
    with pytest.raises(HSNetError, match="--out .* is a folder"):
        predict([photos], str(tmp_path / "missing.pt"), out=tmp_path, progress=False)
    assert main(["predict", str(photos), "--model", "missing.pt", "--out", str(tmp_path / "a-file" / "r")]) == 2
    assert "can't write there" in capsys.readouterr().err


def test_an_annotation_that_cant_be_written_is_a_record_of_its_photo(photos, trained_ckpt, tmp_path, capsys):
    """A folder already at one photo's annotation name: that photo's record says so, its faces are
    still predicted, the other photo's annotation and every result line are written (it ended in a
    traceback, with no results file)."""
    ann, out = tmp_path / "ann", tmp_path / "r.jsonl"
    (ann / "astronaut.jpg.annotated.jpg").mkdir(parents=True)
    assert main(["predict", str(photos), "--model", str(trained_ckpt), "--device", "cpu", "--out", str(out),
                 "--annotate", str(ann)]) == 0
    by_name = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(by_name["astronaut.jpg"]["faces"]) == 1
    assert "astronaut.jpg.annotated.jpg" in by_name["astronaut.jpg"]["annotation_error"]
    assert "annotation_error" not in by_name["no_face.png"]
    assert (ann / "no_face.png.annotated.jpg").is_file() and (ann / "astronaut.jpg.annotated.jpg").is_dir()
    assert not list(ann.glob(".*.tmp"))  # no temporary copy left behind
    assert "1 annotation(s) not written" in capsys.readouterr().err


def test_stale_temporary_output_is_cleaned_and_modes_follow_the_umask(photos, trained_ckpt, tmp_path):
    import os
    import time

    out = tmp_path / "r.jsonl"
    stale, fresh, foreign = tmp_path / ".r.jsonl.abc.tmp", tmp_path / ".r.jsonl.def.tmp", tmp_path / ".notes.x.tmp"
    for p in (stale, fresh, foreign):
        p.write_text("partial")
    for p in (stale, foreign):
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    old = os.umask(0o022)
    try:
        predict([photos / "no_face.png"], str(trained_ckpt), out=out, annotate_dir=tmp_path / "ann", device="cpu",
                progress=False)
    finally:
        os.umask(old)
    assert not stale.exists() and fresh.exists() and foreign.exists()  # only old copies of our own output
    assert out.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ann" / "no_face.png.annotated.jpg").stat().st_mode & 0o777 == 0o644


def test_model_cache_keeps_names_that_sanitise_alike_apart(local_mlflow, tmp_path):
    """'hsnet sample' and 'hsnet_sample' shared one cache folder: one model was served as the other."""
    import mlflow

    from hsnet import model_copies, tracking

    tracking.connect()
    mlflow.set_experiment("model-cache")  # not the experiment an earlier test left active (another store)
    for name, body in (("hsnet sample", "one"), ("hsnet_sample", "two")):
        d = tmp_path / body
        d.mkdir()
        (d / "MLmodel").write_text(f"# {body}\n")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(d), "model")
        mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    a, b = model_copies.fetch_model("models:/hsnet sample/1"), model_copies.fetch_model("models:/hsnet_sample/1")
    assert a != b and a.parent == b.parent
    assert (a / "MLmodel").read_text() == "# one\n" and (b / "MLmodel").read_text() == "# two\n"


def test_a_registry_model_outside_the_project_folder_names_the_store_and_makes_none(tmp_path, monkeypatch):
    """`cd /tmp && hsnet predict x.jpg --model models:/hsnet-sample@production` created
    /tmp/mlflow/mlflow.db (an empty store) and then said the model was not found there."""
    from hsnet.predict import load_classifier
    from hsnet.tracking import TrackingUnavailable

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingUnavailable, match=rf"MLFLOW_TRACKING_URI is not set .*mlflow/mlflow\.db in {tmp_path}"):
        load_classifier("models:/hsnet-sample@production")
    assert list(tmp_path.iterdir()) == []


def test_predict_holds_a_bounded_amount_of_decoded_pixels(trained_ckpt, tmp_path):
    """predict decoded its chunk of 32 photos before detecting in any, whatever their size: 32
    photos of 64 Mpx (under the per-image limit, a few KB each as PNG) are 6 GB of RGB. Here 32
    photos of 6.25 Mpx (600 MB decoded) with a 64 MB budget must not all be held at once, and
    every photo still gets its record, in order."""
    import subprocess
    import sys
    import textwrap

    from PIL import Image

    for i in range(32):
        Image.new("RGB", (2500, 2500), (i, 100, 200)).save(tmp_path / f"big{i:02d}.png")
    code = textwrap.dedent(f"""
        import resource
        import hsnet.data.crop as c
        from hsnet.predict import predict
        c.DECODED_BYTES = 64 << 20
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = predict([{str(tmp_path)!r}], {str(trained_ckpt)!r}, device="cpu", progress=False, workers=2,
                    min_face_size=600)  # a short MTCNN pyramid: the decoded photos are what is measured
        assert [p["path"].rsplit("/", 1)[1] for p in r["results"]] == [f"big{{i:02d}}.png" for i in range(32)], r
        assert all(p["size"] == [2500, 2500] for p in r["results"])
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mib = int(done.stdout.split()[-1])
    assert grown_mib < 400, f"peak memory grew by {grown_mib} MiB for 600 MB of photos, budget 64 MB"


def test_a_fifo_named_like_a_photo_in_a_folder_is_a_record_not_silence(photos, trained_ckpt, tmp_path):
    """`hsnet predict DIR`: a FIFO (or a broken link) named like a photo was skipped without a word
    (only regular files were listed), where the same name given alone is a per-photo error. Listed
    now, it gets its own record naming why, and the other photos are answered."""
    import os
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(photos / "astronaut.jpg", folder / "a.jpg")
    os.mkfifo(folder / "b.jpg")
    (folder / "c.jpg").symlink_to(tmp_path / "gone.jpg")
    assert [p.name for p in expand_inputs([folder])] == ["a.jpg", "b.jpg", "c.jpg"]
    s = predict([folder], str(trained_ckpt), device="cpu", progress=False)
    errors = {Path(r["path"]).name: r.get("error", "") for r in s["results"]}
    assert s["faces"] == 1 and "FIFO" in errors["b.jpg"] and errors["c.jpg"], errors


def test_discarding_a_damaged_copy_keeps_a_copy_another_process_has_put_in_its_place(tmp_path):
    """hsnet.model_copies.discard_copy: two processes that both found the same cached copy damaged
    each discard it; the second, taking the cache lock after the first has put a new copy in
    place, must keep that new copy (the first may be loading it), and remove only the copy it
    checked. By hand: the copy it checked is identified before the check; the new one is another
    folder (renamed into place, a new inode)."""
    from hsnet import model_copies

    root = tmp_path / "models" / "store"
    local = root / "hsnet-v1-abc"

    def put_in_place():  # as fetch_model does: a downloaded folder renamed into place, then its marker
        got = Path(tempfile.mkdtemp(dir=root))
        (got / "MLmodel").write_text("flavors: {}\n")
        os.rename(got, local)
        model_copies._marker(local).write_text(uuid.uuid4().hex)

    root.mkdir(parents=True)
    put_in_place()
    checked = model_copies.copy_identity(local)  # both processes checked this copy
    model_copies.discard_copy(local, checked)  # the first process: removed
    assert not local.exists() and not model_copies._complete(local)
    put_in_place()  # the first process's new download
    model_copies.discard_copy(local, checked)  # the second process, late
    assert model_copies._complete(local), "the second discard removed the copy the first had just put in place"
    model_copies.discard_copy(local, model_copies.copy_identity(local))
    assert not local.exists()
