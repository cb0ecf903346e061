"""Hostile and odd inputs at the data boundary (crop, predict, io, tensors): each test is a defect
found by attacking the boundary, or a behaviour the attack checked and the project promises.

Expectations are independent of the code under test: the input manifest itself, files written by
PIL here, facenet-pytorch's own MTCNN."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hsnet.data.crop import crop
from hsnet.data.manifest import read_manifest, write_manifest
from hsnet.params import CropParams


def _rows(names, split="train", label=0, label_name="anger"):
    return [{"path": n, "label": label, "label_name": label_name, "split": split, "subject": "s1"}
            for n in names]


def _photos(root, n=4, size=(64, 48)):
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    return names


def test_a_rerun_after_relabelling_or_resplitting_writes_the_new_labels_and_splits(tmp_path):
    """crop's incremental re-run reused the whole output row of an unchanged file, so a manifest
    whose labels or splits changed (a label fix, another split seed) got the OLD label and split:
    wrong training labels and test photos leaking into training."""
    root = tmp_path / "raw"
    root.mkdir()
    names = _photos(root)
    settings = CropParams(detector="none", size=32)
    write_manifest(tmp_path / "m.csv", _rows(names, split="train", label=0, label_name="anger"))
    crop(tmp_path / "m.csv", root, tmp_path / "out", settings=settings, progress=False)
    write_manifest(tmp_path / "m.csv", _rows(names, split="test", label=3, label_name="joy"))
    crop(tmp_path / "m.csv", root, tmp_path / "out", settings=settings, progress=False)
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [(r["split"], r["label"], r["label_name"]) for r in rows] == [("test", 3, "joy")] * len(names)


@pytest.mark.parametrize("layout", ["root_inside_out", "same_folder"])
def test_crop_never_overwrites_or_deletes_the_source_photos(tmp_path, layout):
    """--root D/images --out D wrote each .png photo's crop over the photo itself (images/<rel>);
    --root D --out D deleted the photos under D/images as 'stale crops'. Both lose the data set:
    crop refuses folders that overlap, before it writes anything."""
    from hsnet.errors import HSNetError

    data = tmp_path / "D"
    (data / "images").mkdir(parents=True)
    names = _photos(data / "images")
    root, rel = (data / "images", names) if layout == "root_inside_out" else (data, [f"images/{n}" for n in names])
    write_manifest(tmp_path / "m.csv", _rows(rel))
    before = {n: (data / "images" / n).read_bytes() for n in names}
    with pytest.raises(HSNetError, match="--out"):
        crop(tmp_path / "m.csv", root, data, settings=CropParams(detector="none", size=32), progress=False)
    assert {n: (data / "images" / n).read_bytes() for n in names if (data / "images" / n).exists()} == before


def test_crop_holds_a_bounded_amount_of_decoded_pixels(tmp_path):
    """crop decoded CHUNK (256) photos before cropping any, whatever their size: 256 photos of
    64 Mpx (under the per-image limit; a few KB each as PNG) are 49 GB of RGB, and 12 Mpx phone
    photos 9 GB (twice that with the detector's copies): a small folder killed the machine. Here
    48 photos of 6.25 Mpx (900 MB decoded) with a 128 MB budget must not all be held at once."""
    import subprocess
    import sys
    import textwrap

    root = tmp_path / "raw"
    root.mkdir()
    names = []
    for i in range(48):
        names.append(f"big{i}.png")
        Image.new("RGB", (2500, 2500), (i, 100, 200)).save(root / names[-1])
    write_manifest(tmp_path / "m.csv", _rows(names))
    code = textwrap.dedent(f"""
        import resource, sys
        import hsnet.data.crop as c
        from hsnet.params import CropParams
        c.DECODED_BYTES = 128 << 20
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = c.crop({str(tmp_path / 'm.csv')!r}, {str(root)!r}, {str(tmp_path / 'out')!r},
                   settings=CropParams(detector="none", size=32), progress=False, workers=4)
        assert r["output_images"] == 48, r
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mib = int(done.stdout.split()[-1])
    assert grown_mib < 450, f"peak memory grew by {grown_mib} MiB for 900 MB of photos, budget 128 MB"


def test_a_crop_that_fails_to_decode_leaves_no_partial_tensor_file(tmp_path):
    """load_split left its (N, 3, S, S) temporary file in the cache when one crop failed to decode
    (a file damaged after crop): each failed run of a 30k-photo split left another, pruned only a
    day later."""
    from hsnet.errors import HSNetError
    from hsnet.tensors import load_split

    root = tmp_path / "crops"
    root.mkdir()
    names = _photos(root, n=6, size=(32, 32))
    (root / names[3]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cache = tmp_path / "cache"
    with pytest.raises(HSNetError, match=names[3]):
        load_split(_rows(names), root, 32, cache_dir=cache, progress=False)
    assert [p.name for p in cache.iterdir()] == []


def test_annotated_copies_in_an_input_folder_are_not_photos(tmp_path):
    """`hsnet predict photos --annotate photos` (or --annotate photos/annotated) and then again: the
    second run took the annotated copies for photos (4 photos, 4 faces for 2 photos with a face each)
    and annotated them again (x.jpg.annotated.jpg.annotated.jpg), one more generation per run."""
    from hsnet.predict import ANNOTATED, expand_inputs

    (tmp_path / "annotated").mkdir()
    for name in ("a.jpg", "b.png", "a.jpg" + ANNOTATED, "annotated/b.png" + ANNOTATED):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="JPEG")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.jpg", "b.png"]
    assert [p.name for p in expand_inputs([tmp_path / ("a.jpg" + ANNOTATED)])] == ["a.jpg" + ANNOTATED]


@pytest.mark.parametrize("margin", [64, 300])
def test_a_margin_as_large_as_the_crop_is_refused_before_any_work(tmp_path, margin):
    """--margin is in output pixels (facenet-pytorch's meaning): the box grows by
    margin / (size - margin), so margin >= size made crop cut squares of (1 + margin) face widths:
    a 100 px face with --size 64 --margin 300 is a 30,100 px square (2.7 GB), padded with black,
    per photo and thread. Refused by name instead."""
    from hsnet.errors import HSNetError

    root = tmp_path / "raw"
    root.mkdir()
    write_manifest(tmp_path / "m.csv", _rows(_photos(root, n=1)))
    with pytest.raises(HSNetError, match="--margin"):
        crop(tmp_path / "m.csv", root, tmp_path / "out", settings=CropParams(size=64, margin=margin),
             progress=False)
    assert not (tmp_path / "out").exists()


def test_predict_crops_faces_as_training_did_when_the_crop_size_is_not_the_input_size():
    """Training's faces: `hsnet crop` cuts the box plus margin / (crop.size - margin) at crop.size,
    then the tensor cache resizes to input_size. predict cut with input_size in that formula, so
    with a margin and crop.size != input_size (e.g. crop 160 with margin 40, input 80) the model saw
    a tighter face than it was trained on. Expected: the training pipeline's crop, by hand."""
    from skimage import data

    from hsnet.checkpoint import build_model
    from hsnet.data.crop import Detector, square_crop
    from hsnet.params import ModelParams
    from hsnet.predict import Classifier, classify_faces

    import torch

    torch.manual_seed(0)
    clf = Classifier(build_model(7, ModelParams(ktl=False)), [f"c{i}" for i in range(7)], 80, device="cpu",
                     crop={"detector": "mtcnn", "size": 160, "margin": 40})
    photo = Image.fromarray(data.astronaut())
    detector = Detector("cpu", min_face_size=40)
    box = detector([np.asarray(photo)])[0][0]
    trained_on = square_crop(photo, box, 160, 40)  # what `hsnet crop` wrote; the cache resizes it
    from hsnet.device import forward

    x = torch.from_numpy(np.asarray(trained_on.resize((80, 80), Image.BILINEAR))).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = forward(clf.model, x, clf.setup).softmax(1)[0].numpy()
    face = classify_faces([photo], clf, detector)[0][0]
    got = np.array([face["probabilities"][c] for c in clf.classes])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_photo_the_detector_fails_on_is_a_record_and_the_others_are_cropped(tmp_path):
    """A photo MTCNN can't process (here: a 63 Mpx photo, legal under the pixel limit, whose
    summed-area table alone is 1.5 GB, on a process with 1.2 GB to spare; on a GPU, CUDA's out of
    memory) ended the whole crop run with PyTorch's allocator error, losing the other photos' work.
    It must be a per-item record naming the file, and the other photos cropped."""
    import subprocess
    import sys
    import textwrap

    from skimage import data

    root = tmp_path / "raw"
    root.mkdir()
    Image.fromarray(data.astronaut()).save(root / "a.png")
    Image.new("RGB", (8000, 7900), (90, 120, 150)).save(root / "big.png")
    Image.fromarray(data.astronaut()[:, ::-1]).save(root / "c.png")
    write_manifest(tmp_path / "m.csv", _rows(["a.png", "big.png", "c.png"]))
    code = textwrap.dedent(f"""
        import json, resource
        import hsnet.data.crop as c
        from hsnet.params import CropParams
        import facenet_pytorch, torch, torchvision
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1200 << 20),) * 2)
        r = c.crop({str(tmp_path / 'm.csv')!r}, {str(root)!r}, {str(tmp_path / 'out')!r},
                   settings=CropParams(size=64), progress=False, workers=2)
        print(json.dumps(r))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    import json

    report = json.loads(done.stdout.splitlines()[-1])
    assert report["output_images"] == 2
    assert [u["path"] for u in report["unreadable"]] == ["big.png"]
    assert "big.png" in report["unreadable"][0]["error"] and "8000x7900" in report["unreadable"][0]["error"]


def test_fetch_refuses_an_out_folder_inside_the_source(tmp_path):
    """`hsnet data fetch --source D --out D/copy` copied D into D/copy while D/copy filled up: the
    'fetched' data set held a nested partial copy of itself (copy/a/f.png): duplicate photos."""
    from hsnet.data.fetch import fetch
    from hsnet.errors import HSNetError

    (tmp_path / "src" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "a" / "f.png")
    with pytest.raises(HSNetError, match="--out"):
        fetch(str(tmp_path / "src"), tmp_path / "src" / "copy", progress=False)
    assert sorted(p.relative_to(tmp_path / "src").as_posix() for p in (tmp_path / "src").rglob("*")) == [
        "a", "a/f.png"]


def test_a_sample_drawn_into_a_folder_of_another_draw_is_refused(tmp_path):
    """`hsnet data sample --out D --per-class 1` on a D drawn with --per-class 2 said '42 sample
    images' and left 84 (another --seed: a mixture of two draws), which import then read whole.
    Drawing the same sample again is fine; a folder with other files is refused by name."""
    from hsnet.data.sample import generate
    from hsnet.errors import HSNetError

    assert generate(tmp_path / "d", per_class=2, size=48) == 84
    assert generate(tmp_path / "d", per_class=2, size=48) == 84  # the same draw again
    with pytest.raises(HSNetError, match="--out"):
        generate(tmp_path / "d", per_class=1, size=48)
    assert len(list((tmp_path / "d").rglob("*.png"))) == 84


@pytest.mark.parametrize("size", [0, -5])
def test_a_min_face_size_below_one_pixel_is_refused_by_name(size):
    """`hsnet predict --min-face-size 0` ended in ZeroDivisionError; -5 reported every photo as
    'without a face' (an empty image pyramid): a wrong result, not an error."""
    from hsnet.data.crop import Detector
    from hsnet.errors import HSNetError

    with pytest.raises(HSNetError, match="min-face-size"):
        Detector("cpu", min_face_size=size)


@pytest.mark.parametrize("min_prob", [90, 2.0, -0.5, float("nan")])
def test_a_min_prob_outside_zero_to_one_is_refused_by_name(tmp_path, min_prob):
    """`hsnet predict --min-prob 90` (meaning 90 %) or nan reported every face as absent: 'N photos
    without a face', a wrong result instead of an error. Refused before the model is loaded."""
    from hsnet.errors import HSNetError
    from hsnet.predict import predict

    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    with pytest.raises(HSNetError, match="min-prob"):
        predict([tmp_path / "x.png"], tmp_path / "no-such-model.pt", min_prob=min_prob, progress=False)


def test_crop_never_overwrites_its_input_manifest(tmp_path):
    """`hsnet data import --out W/manifest.csv` then `hsnet crop --manifest W/manifest.csv --out W`
    replaced the import's manifest by the crops' one; the next crop read the crops' paths under
    --root, found none, and deleted every crop as stale. Refused before anything is written."""
    from hsnet.errors import HSNetError

    root = tmp_path / "raw"
    root.mkdir()
    work = tmp_path / "W"
    work.mkdir()
    write_manifest(work / "manifest.csv", _rows(_photos(root)))
    before = (work / "manifest.csv").read_bytes()
    with pytest.raises(HSNetError, match="--out"):
        crop(work / "manifest.csv", root, work, settings=CropParams(detector="none", size=32), progress=False)
    assert (work / "manifest.csv").read_bytes() == before


def test_predict_never_writes_its_results_over_an_input_photo(tmp_path):
    """`hsnet predict photo.jpg --out photo.jpg` (a slip of the shell) replaced the photo by its
    JSON lines. Refused before the model is loaded."""
    from hsnet.errors import HSNetError
    from hsnet.predict import predict

    Image.new("RGB", (64, 64)).save(tmp_path / "x.jpg")
    before = (tmp_path / "x.jpg").read_bytes()
    with pytest.raises(HSNetError, match="--out"):
        predict([tmp_path], tmp_path / "no-such-model.pt", out=tmp_path / "x.jpg", progress=False)
    assert (tmp_path / "x.jpg").read_bytes() == before
