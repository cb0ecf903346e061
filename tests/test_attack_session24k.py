"""Session 24k attack: ``hsnet predict``'s outputs as a user and their scripts read them.

Photos a user really has (a JPEG whose camera wrote an odd EXIF tag, a folder named in Latin-1 by
an old Windows machine, long downloaded file names) and outputs a user really asks for. Each test
runs hsnet's own ``predict`` with the real MTCNN detector; the classifier is a tiny torch module
(what it answers is not under test here: which records and files ``predict`` writes is).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from hsnet.errors import HSNetError
from hsnet.predict import Classifier, predict

# an EXIF block as a camera or an editing tool may write it: Orientation 6 (rotate), and TileOffsets
# (0x0144, a LONG tag) stored with the ASCII type. Pillow reads it; rewriting it while applying the
# orientation (ImageOps.exif_transpose) raises struct.error.
ODD_EXIF = (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02"
            b"\x01\x44\x00\x02\x00\x00\x00\x04Cam\x00"
            b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
            b"\x00\x00\x00\x00")


class _Constant(torch.nn.Module):
    def forward(self, x):  # (N, 3, S, S) -> (N, 3) logits
        return torch.zeros(x.shape[0], 3)


@pytest.fixture
def clf():
    return Classifier(_Constant(), ["anger", "joy", "neutral"], 64, device="cpu")


def _photo(path: Path, size=(64, 48), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 100, 90)).save(path, **save)
    return path


def test_a_jpeg_with_an_odd_exif_tag_is_its_own_record_not_the_end_of_the_batch(tmp_path, clf):
    """hsnet/predict.py: photos "that can't be read are reported in the output and the summary,
    never dropped silently"; README: "unreadable or oversized files get an "error", and the
    command exits 1 only if no photo could be read". One photo whose EXIF Pillow can't rewrite
    must be one record (read without its orientation, or an "error"), not a struct.error traceback
    that ends the batch and writes no results for the photos that were fine."""
    photos = tmp_path / "photos"
    good = _photo(photos / "a_good.jpg")
    odd = _photo(photos / "b_odd.jpg", exif=ODD_EXIF)
    out = tmp_path / "results.jsonl"
    s = predict([photos], "unused", out=out, classifier=clf, progress=False, workers=1)
    assert s["photos"] == 2
    records = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {str(good), str(odd)}
    assert "error" not in records[str(good)]
    assert "error" in records[str(odd)] or "size" in records[str(odd)]


def test_annotated_copies_of_same_named_photos_when_a_folder_name_is_not_utf8(tmp_path, clf):
    """README: "`--annotate DIR` writes `a/x.jpg.annotated.jpg` for `a/x.jpg` under a folder given,
    so same-named photos never overwrite each other"; annotate_targets: "Photos that would still
    share a name ... get a short hash of their full path in it". Two folders given, each with an
    x.jpg, one folder named in Latin-1 (b'caf\\xe9', as old cameras and Windows shares name them;
    Linux allows any bytes): two copies, not a UnicodeEncodeError from hashing the path as UTF-8."""
    import logging

    # predict's warnings name the folder: pytest-xdist can't carry a non-UTF-8 log line from its worker
    # (execnet: "strings must be utf-8 encodable"), so they are not made here
    logger = logging.getLogger("hsnet.predict")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        _two_copies(tmp_path, clf)
    finally:
        logger.setLevel(level)


def _two_copies(tmp_path, clf):
    latin1 = tmp_path / os.fsdecode(b"caf\xe9")
    other = tmp_path / "other"
    _photo(latin1 / "x.jpg")
    _photo(other / "x.jpg")
    ann = tmp_path / "annotated"
    s = predict([latin1, other], "unused", annotate_dir=ann, classifier=clf, progress=False, workers=1)
    assert s["photos"] == 2 and s["not_annotated"] == []
    copies = sorted(p.name for p in ann.iterdir() if not p.name.startswith("."))
    assert len(copies) == 2 and all(c.startswith("x.jpg") and c.endswith(".annotated.jpg") for c in copies)


def test_out_with_a_long_but_legal_file_name_is_written(tmp_path, clf):
    """README: `--out results.jsonl` gets one JSON line per photo, and "`--out` ... checked writable
    before the model loads". A file name of 251 bytes is legal (NAME_MAX is 255): the results must be
    written there, not lost with an OSError traceback after every photo was processed (atomic_path's
    temporary '.NAME.XXXXXXXX.tmp' is 14 bytes longer than the name asked for)."""
    photo = _photo(tmp_path / "photos" / "a.jpg")
    out = tmp_path / ("r" * 245 + ".jsonl")
    assert len(out.name.encode()) <= 255
    predict([photo], "unused", out=out, classifier=clf, progress=False, workers=1)
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [str(photo)]


def test_annotated_copy_of_a_photo_with_a_long_but_legal_name_is_written(tmp_path, clf):
    """README: "`--annotate DIR` writes `a/x.jpg.annotated.jpg` for `a/x.jpg`"; only "a copy that
    still can't be written is that photo's "annotation_error"". A 240-byte photo name gives a
    254-byte copy name, which the filesystem accepts: the copy must be written (it fails only
    because the temporary name atomic_path picks for it is 269 bytes)."""
    photo = _photo(tmp_path / "photos" / ("p" * 236 + ".jpg"))
    ann = tmp_path / "annotated"
    target = ann / (photo.name + ".annotated.jpg")
    assert len(target.name.encode()) <= 255
    s = predict([photo], "unused", annotate_dir=ann, classifier=clf, progress=False, workers=1)
    assert "annotation_error" not in s["results"][0], s["results"][0].get("annotation_error")
    assert target.is_file()


def test_out_name_too_long_is_refused_before_the_model_loads(tmp_path):
    """README: "`--out` and `--annotate` are checked writable before the model loads". An --out
    whose name can never be created (300 bytes, over NAME_MAX) must be refused naming --out
    before any work, not found out with an OSError after every photo (here: the model is never
    reached; the refusal must be about --out, not about the model)."""
    photo = _photo(tmp_path / "photos" / "a.jpg")
    with pytest.raises(HSNetError) as err:
        predict([photo], str(tmp_path / "no-such-model.pt"), out=tmp_path / ("r" * 300 + ".jsonl"),
                progress=False)
    assert "--out" in str(err.value)


def test_out_and_annotate_on_the_same_path_are_refused_before_the_model_loads(tmp_path):
    """README: "`--out` and `--annotate` are checked writable before the model loads". With
    `--out res --annotate res` (a slip of the user's), predict makes the folder res for the copies
    and, after all the photos, can't write the results file over it (IsADirectoryError traceback,
    results lost). It must be refused naming the options before any work."""
    photo = _photo(tmp_path / "photos" / "a.jpg")
    same = tmp_path / "res"
    with pytest.raises(HSNetError) as err:
        predict([photo], str(tmp_path / "no-such-model.pt"), out=same, annotate_dir=same, progress=False)
    assert "--out" in str(err.value) or "--annotate" in str(err.value)


def test_the_server_decodes_the_odd_exif_photo_as_one_refused_image(tmp_path):
    """The model server's decoding (hsnet.pyfunc.decode_opened, behind V1/V2 and the pyfunc) reads
    the same photos as predict: the odd-EXIF JPEG above is that image's refusal (InputRefused, which
    the server answers as that photo's "error"), not a struct.error that fails the whole request."""
    from hsnet.pyfunc import InputRefused, Limits, decode_opened, open_encoded

    data = _photo(tmp_path / "odd.jpg", exif=ODD_EXIF).read_bytes()
    img = open_encoded(data, 3, Limits())
    with pytest.raises(InputRefused, match=r"^image 3: can't be decoded"):
        decode_opened(img, 3)
