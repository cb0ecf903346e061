"""Property-based fuzzing of the data steps' boundaries (hypothesis), bounded for CI (< 60 s in all).

What comes from outside: the manifest (bytes, encodings, paths, labels), the image files' bytes,
object keys and names. Properties: only an HSNetError (a named refusal) or a per-item record
comes out, never another exception; nothing is written outside the output folder; a path that
is accepted lies inside its root.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from hsnet.data.crop import colliding_rows, crop, output_name
from hsnet.data.manifest import COLUMNS, ManifestError, read_manifest
from hsnet.errors import HSNetError
from hsnet.io import ImageReadError, UnsafePath, open_rgb, safe_join
from hsnet.params import CropParams

# derandomized: CI runs the same examples every time; no example database in the work tree
BOUNDED = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)
FAST = settings(max_examples=40, **BOUNDED)
SLOW = settings(max_examples=25, **BOUNDED)
CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


# --- strategies ------------------------------------------------------------------------------

# path pieces a careless user or an attacker would write, plus arbitrary text
PIECES = st.sampled_from(["a.png", "b.jpg", "B.JPG", "..", ".", "", "/", "//", "\\", "~", "C:", "x.png\n",
                          "link", "link_out", "fifo.png", "dir.png", "zero", "%", "é", "\0", "a" * 300])
NAMES = st.one_of(st.sampled_from(["a.png", "sub/a.png", "link/a.png", "b.jpg", "B.JPG", "x.png\n", "x.png"]),
                  st.lists(PIECES, min_size=1, max_size=4).map("/".join),
                  st.text(max_size=30),
                  st.just("/etc/passwd"))
LABELS = st.one_of(st.integers(-3, 10).map(str), st.text(max_size=6), st.just("1e3"), st.just(" 2 "))
ROW = st.fixed_dictionaries({"path": NAMES, "label": st.one_of(st.integers(0, 6).map(str), LABELS),
                             "label_name": st.sampled_from(CLASSES + ("", "x")),
                             "split": st.sampled_from(("train", "val", "test", "", "TRAIN")),
                             "subject": st.text(max_size=4)})
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"])
# rows that get past the manifest reader, so that crop meets their paths
CROP_ROW = ROW.map(lambda r: {**r, "label": str(len(r["label"]) % 7)})


def _png(size=(24, 24), mode="RGB", fmt="PNG", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_png(), _png((1, 1)), _png((40, 30), "L"), _png((30, 40), "RGBA"), _png((24, 24), "P", "GIF"),
         _png((24, 24), "RGB", "JPEG"), _png((20, 20), "RGB", "BMP"), _png((20, 20), "CMYK", "TIFF"),
         _png((20, 20), "RGB", "WEBP")]


@st.composite
def image_bytes(draw) -> bytes:
    """Valid images of many formats, mutated: bytes flipped, cut, repeated; or plain noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "dup", "big"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:]
        elif op == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 64))]
        elif op == "big" and len(data) > 24 and data[:4] == b"\x89PNG":
            data[16:24] = (60000).to_bytes(4, "big") * 2  # a header claiming 60000x60000 pixels
    return bytes(data)


# --- helpers ---------------------------------------------------------------------------------

def _tree(base: Path) -> dict[str, tuple]:
    """Everything under ``base``: name -> (kind, size, mtime_ns), links not followed."""
    out = {}
    for folder, dirs, files in os.walk(base):
        for name in dirs + files:
            p = Path(folder) / name
            st_ = p.lstat()
            out[str(p)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


def _world(base: Path) -> tuple[Path, Path, Path]:
    """A data root with the odd things the strategies name, a secret outside it, an output folder."""
    root, outside, out = base / "root", base / "outside", base / "out"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png(seed=9))
    for name in ("a.png", "sub/a.png", "x.png\n"):
        (root / name).write_bytes(_png(seed=len(name)))
    (root / "b.jpg").write_bytes(_png(fmt="JPEG"))
    (root / "B.JPG").write_bytes(_png(fmt="JPEG", seed=3))
    (root / "link").symlink_to(root / "sub")
    (root / "link_out").symlink_to(outside)
    (root / "zero").symlink_to("/dev/zero")
    (root / "dir.png").mkdir()
    os.mkfifo(root / "fifo.png")
    return root, outside, out


def _write_csv(path: Path, rows: list[dict], encoding: str) -> None:
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding, errors="replace"))


# --- properties ------------------------------------------------------------------------------

@FAST
@given(name=NAMES)
def test_safe_join_accepts_only_names_inside_the_root(name):
    with tempfile.TemporaryDirectory() as tmp:
        root, _, _ = _world(Path(tmp))
        try:
            path = safe_join(root, name)
        except UnsafePath as exc:
            assert repr(name) in str(exc)
            return
        assert path.resolve().is_relative_to(root.resolve())
        assert ".." not in Path(name.replace("\\", "/")).parts and not name.startswith(("/", "~"))


@FAST
@given(data=st.one_of(st.binary(max_size=400), st.lists(ROW, max_size=5).flatmap(
    lambda rows: ENCODINGS.map(lambda enc: (rows, enc)))))
def test_any_manifest_bytes_are_read_or_refused_by_name(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            _write_csv(path, *data)
        try:
            rows = read_manifest(path)
        except ManifestError as exc:
            assert str(path) in str(exc)
            return
        assert all(isinstance(r["label"], int) and set(r) == set(COLUMNS) for r in rows)


@SLOW
@given(rows=st.lists(CROP_ROW, min_size=1, max_size=6), encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]),
       detector=st.sampled_from(["none", "mtcnn"]))
def test_crop_on_any_manifest_writes_only_inside_out(rows, encoding, detector, mtcnn_ready):
    """Whatever the manifest says, crop ends in a report or an HSNetError, and changes nothing
    outside --out (the manifest's own folder, the data root, the secret beside it)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside, out = _world(base)
        _write_csv(base / "m.csv", rows, encoding)
        before = {k: v for k, v in _tree(base).items() if not k.startswith(str(out))}
        try:
            report = crop(base / "m.csv", root, out, settings=CropParams(detector=detector, size=16),
                          batch_size=4, workers=2, progress=False)
        except HSNetError:
            report = None
        after = {k: v for k, v in _tree(base).items() if not k.startswith(str(out))}
        assert after == before
        event("crop: refused by name" if report is None else f"crop: {report['output_images']} crop(s)")
        if report is not None:
            written = {Path(k) for k in _tree(out)}
            assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
            accounted = report["output_images"] + len(report["unreadable"]) + len(report["refused"]) \
                + len(report["no_face"])
            assert accounted == report["images"]


@SLOW
@given(data=image_bytes(), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".bmp"]))
def test_any_image_bytes_are_an_image_or_a_per_item_record(data, suffix, mtcnn_ready):
    """The readers of validate, crop and predict on the same bytes: an RGB image or a record naming
    the file; MTCNN (shared by crop and predict) never raises on what decodes."""
    from hsnet.data.validate import _inspect
    from hsnet.predict import _read

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{suffix}"
        path.write_bytes(data)
        try:
            img = open_rgb(path)
        except ImageReadError as exc:
            assert str(path) in str(exc)
            img = None
        info = _inspect(path)
        photo = _read(path)
        assert info.decodes == (img is not None) == (photo.image is not None)
        if img is None:
            # validate's reason leaves the path to its row (one text for every spelling of it)
            assert info.error and str(path) not in info.error and str(path) in photo.error
            return
        assert img.mode == "RGB" and (info.width, info.height) == img.size
        boxes = mtcnn_ready([np.asarray(img)])
        assert len(boxes) == 1 and boxes[0].shape[1] == 5


@SLOW
@given(names=st.lists(NAMES, min_size=1, max_size=8))
def test_validate_table_on_any_paths_never_raises(names):
    """validate's file-touching part (path checks, regular-file checks, decoding, crop-name
    collisions): every row gets a verdict, and rows whose crops collide are marked."""
    from hsnet.data.validate import build_table

    with tempfile.TemporaryDirectory() as tmp:
        root, _, _ = _world(Path(tmp))
        rows = [{"path": n, "label": 0, "label_name": "anger", "split": "train", "subject": ""} for n in names]
        df = build_table(rows, root, 2, None, False)
        assert len(df) == len(names)
        for i, name in enumerate(names):
            if df["path_inside_root"].iloc[i]:
                assert safe_join(root, name).resolve().is_relative_to(root.resolve())
            if not df["decodes"].iloc[i]:
                assert df["error"].iloc[i]
        clashes = colliding_rows(names)
        assert [not u for u in df["crop_name_unique"]] == [i in clashes for i in range(len(names))]
        for i, j in clashes.items():  # one crop name, or one crop's name the other's folder
            a, b = output_name(names[i]), output_name(names[j])
            assert a == b or a.startswith(b + "/") or b.startswith(a + "/"), (a, b)


@settings(max_examples=4, **BOUNDED)  # Great Expectations takes seconds a run
@given(rows=st.lists(ROW, min_size=1, max_size=4), encoding=ENCODINGS)
def test_validate_on_any_manifest_passes_or_fails_by_name(rows, encoding):
    from hsnet.data.validate import validate

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, _, _ = _world(base)
        _write_csv(base / "m.csv", rows, encoding)
        report = base / "report"
        before = _tree(base)
        with contextlib.suppress(HSNetError):
            validate(base / "m.csv", root, "ferg", report, use_cache=False, progress=False)
        assert {k: v for k, v in _tree(base).items() if not k.startswith(str(report))} == before


@pytest.fixture(scope="module")
def mtcnn_ready():
    from hsnet.data.crop import Detector

    return Detector("cpu")

