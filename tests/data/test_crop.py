"""MTCNN cropping on a real photograph, mixed face/no-face batches, no-face policies, odd image modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hsnet.data.crop import CropSettings, Detector, crop
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


def test_batch_mixing_face_and_no_face_images(photos, tmp_path):
    """facenet-pytorch's MTCNN.detect crashes on such a batch; crop must not."""
    manifest = _manifest(tmp_path / "m.csv", ["astronaut.jpg", "grey.png", "astronaut_mirror.png",
                                              "noise.png", "broken.jpg"])
    report = crop(manifest, photos, tmp_path / "out", settings=CropSettings(size=100), batch_size=8,
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
    report = crop(manifest, photos, tmp_path / "out", settings=CropSettings(size=80, no_face="center"),
                  progress=False)
    rows = {r["source_path"]: r for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert rows["grey.png"]["crop"] == "center_fallback" and rows["grey.png"]["det_prob"] == ""
    assert rows["astronaut.jpg"]["crop"] == "mtcnn"
    assert report["center_fallback"] == ["grey.png"]


def test_detector_none_resizes(photos, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["grey.png", "noise.png"])
    report = crop(manifest, photos, tmp_path / "out", settings=CropSettings(detector="none", size=64),
                  progress=False)
    assert report["output_images"] == 2
    assert Image.open(tmp_path / "out" / "images" / "noise.png").size == (64, 64)


def test_incremental_rerun(photos, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["astronaut.jpg", "grey.png"])
    settings = CropSettings(size=100, no_face="center")
    first = crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
    assert first["processed"] == 2 and first["reused"] == 0
    again = crop(manifest, photos, tmp_path / "out", settings=settings, progress=False)
    assert again["processed"] == 0 and again["reused"] == 2
    changed = crop(manifest, photos, tmp_path / "out", settings=CropSettings(size=90, no_face="center"),
                   progress=False)
    assert changed["processed"] == 2
    assert Image.open(tmp_path / "out" / "images" / "grey.png").size == (90, 90)


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
        crop(manifest, photos, tmp_path / "o", settings=CropSettings(detector="haar"))
    with pytest.raises(HSNetError, match="no-face policy"):
        crop(manifest, photos, tmp_path / "o", settings=CropSettings(no_face="keep"))
    write_manifest(tmp_path / "empty.csv", [])
    with pytest.raises(HSNetError, match="no rows"):
        crop(tmp_path / "empty.csv", photos, tmp_path / "o")
