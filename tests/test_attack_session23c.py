"""Attack 23c: a real FER dataset as an ML engineer drops it in (photos as they come, names as they
come, second copies of the same photos beside the originals).

Each test states the promise or the independent expectation it checks; each failed on the code it
was written against because of the defect it names.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

RAFD_EMOTIONS = ("angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")
KDEF_CODES = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _copy_of(data: bytes, img: Image.Image, how: str) -> bytes:
    """A second copy of the photo ``img`` (encoded as ``data``) as people make them: downscaled and
    re-encoded ("resized": a thumbnail folder, a 256-px copy), or the very same JPEG with a comment
    segment added (what metadata tools and photo managers do: every pixel identical, other bytes)."""
    if how == "resized":
        return _jpeg(img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.BILINEAR), quality=80)
    comment = b"copied by a photo manager"
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def _rafd_names() -> list[str]:
    return [f"Rafd090_{s:02d}_Caucasian_{'female' if s % 2 else 'male'}_{e}_{gaze}.jpg"
            for s in range(1, 6) for e in RAFD_EMOTIONS for gaze in ("frontal", "left", "right")]


def _kdef_names() -> list[str]:
    return [f"{session}{gender}{ident:02d}/{session}{gender}{ident:02d}{code}{angle}.JPG"
            for session in "AB" for gender, ident in (("F", 1), ("F", 2), ("M", 1), ("M", 3))
            for code in KDEF_CODES for angle in ("S", "HL")]


@pytest.mark.parametrize("dataset,how", [("rafd", "resized"), ("rafd", "metadata"), ("kdef", "resized")])
def test_a_second_copy_of_a_photo_beside_the_dataset_never_puts_that_photo_in_two_splits(tmp_path, dataset, how):
    """README, "Placing the real datasets": RaFD's photos are found "at any folder depth", KDEF's as
    KDEF/AF01/AF01ANS.JPG; "Data steps": byte-identical images are left out because one photo in two
    splits is leakage (hsnet/data/datasets.py: "One photo in two splits is leakage (validate refuses
    it)"), and validate checks "no identical image (sha256) in two splits".

    Independent expectation: a RaFD or KDEF file name *is* the photo's identity (RaFD: angle, subject,
    ethnicity, gender, emotion, gaze; KDEF: session, gender, subject, emotion, angle; the importer parses
    every one of these fields). An engineer's dataset folder often also holds a second copy of the same
    photos: a downscaled folder made for an earlier experiment, or copies whose metadata a photo tool
    rewrote. Those are the same photos with other bytes. Import then validate must not let one photo
    be trained on and tested on: either the copy is left out (or the import refused) by name, or
    validation fails naming the leakage. Today both copies are imported as two photos, split apart at
    random, and validation passes (on these 240 photos, 69 of RaFD's 120 land in two splits): the test
    accuracy is measured on photos the model trained on.
    """
    from hsnet.data.datasets import import_dataset
    from hsnet.data.validate import ValidationFailed, validate
    from hsnet.errors import HSNetError
    from hsnet.params import ImportParams, ValidateParams

    rng = np.random.default_rng(0)
    names = _rafd_names() if dataset == "rafd" else _kdef_names()
    root = tmp_path / ("RaFD" if dataset == "rafd" else "KDEF_and_AKDEF")
    original = "RafDDownload-01" if dataset == "rafd" else "KDEF"
    second = "RafD_resized" if dataset == "rafd" else "KDEF_256"
    for name in names:
        img = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
        data = _jpeg(img)
        for folder, content in ((original, data), (second, _copy_of(data, img, how))):
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    # the copy is another file, not byte-identical: the duplicate check by sha256 can't see it
    assert (root / original / names[0]).read_bytes() != (root / second / names[0]).read_bytes()

    manifest = tmp_path / "manifest.csv"
    try:
        import_dataset(dataset, root, manifest, ImportParams())
    except HSNetError:
        return  # refused by name: nothing leaks
    try:
        validate(manifest, root, dataset, tmp_path / "report", ValidateParams(), use_cache=False, progress=False)
    except ValidationFailed as exc:
        assert "split" in str(exc), f"validation failed, but not for the photos in two splits: {exc}"
        return

    splits_of = defaultdict(set)
    with open(manifest, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            splits_of[row["path"].rsplit("/", 1)[-1].lower()].add(row["split"])
    leaked = sorted(name for name, where in splits_of.items() if len(where) > 1)
    assert not leaked, (f"{len(leaked)} of {len(splits_of)} {dataset} photos are in two splits (their copy in "
                        f"{second}/ in another split than the original), and validation passed: e.g. {leaked[:3]}")
