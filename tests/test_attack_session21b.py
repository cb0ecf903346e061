"""Attack, session 21b: the four paper datasets as their owners ship them, read by an ML engineer
who has the real downloads (and makes the usual mistakes with them).

Each test builds a tiny replica of the real layout under tmp_path (tiny generated images; the
datasets are licensed) and checks a promise of README.md / docs/security.md / the importer's own
texts. The facts about the real archives (RAF-DB basic: EmoLabel/list_patition_label.txt,
Image/aligned/*_aligned.jpg and Image/original/*.jpg shipped as two separate zips; FERG_DB_256/
<character>/<character>_<emotion>/...png) come from public loaders of them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hsnet.data.datasets import import_dataset
from hsnet.errors import HSNetError
from hsnet.params import ImportParams

FERG_CHARACTERS = ("aia", "bonnie", "jules", "malcolm", "mery", "ray")
FERG_EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
KDEF_CODES = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")
KDEF_ANGLES = ("FL", "HL", "S", "HR", "FR")


def _photo(path: Path, seed: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _rafdb(root: Path, variants=("aligned",), ntrain: int = 28, ntest: int = 14) -> Path:
    """RAF-DB basic: EmoLabel/list_patition_label.txt ('train_00001.jpg 5', labels 1-7) and the
    images in Image/aligned/train_00001_aligned.jpg and/or Image/original/train_00001.jpg."""
    lines, seed = [], 0
    for split, count in (("train", ntrain), ("test", ntest)):
        for i in range(1, count + 1):
            lines.append(f"{split}_{i:05d}.jpg {(i % 7) + 1}")
            seed += 1
            if "aligned" in variants:
                _photo(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", seed)
            if "original" in variants:
                _photo(root / "Image" / "original" / f"{split}_{i:05d}.jpg", 10_000 + seed)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def _ferg(root: Path, n: int = 3) -> Path:
    seed = 0
    for c in FERG_CHARACTERS:
        for e in FERG_EMOTIONS:
            for i in range(1, n + 1):
                seed += 1
                _photo(root / c / f"{c}_{e}" / f"{c}_{e}_{i}.png", seed, "PNG")
    return root


def _kdef(root: Path, subjects) -> Path:
    seed = 0
    for s in subjects:
        for code in KDEF_CODES:
            for angle in KDEF_ANGLES:
                seed += 1
                _photo(root / "KDEF" / s / f"{s}{code}{angle}.JPG", seed)
    return root


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_rafdb_with_only_its_original_images_unpacked_says_which_images_are_missing_and_what_to_give(tmp_path):
    """RAF-DB basic ships its faces as two archives, Image/aligned.zip and Image/original.zip;
    an engineer who unpacked only original.zip (the photos) and runs the default import (README:
    "`Image/aligned/train_00001_aligned.jpg` (`--rafdb-images original` for `Image/original/`)")
    must be told that the images the label file lists are missing under Image/aligned/ and that
    `--rafdb-images original` reads the ones that are there (the brief of every error here: name
    the file/folder and say what to do).

    Today the error says "Found 0 other file(s) (no files at all)" about a folder holding 42
    images, and never mentions --rafdb-images or a missing file: the count of listed-but-missing
    images (``scan.missing``) is dropped on the way to the message."""
    root = _rafdb(tmp_path / "basic", variants=("original",))
    with pytest.raises(HSNetError) as info:
        import_dataset("rafdb", root, tmp_path / "m.csv", ImportParams())
    msg = str(info.value)
    assert "no files at all" not in msg, f"the folder holds 42 images, the error says there are none:\n{msg}"
    assert "Image/aligned/train_00001_aligned.jpg" in msg or "Image/aligned/test_00001_aligned.jpg" in msg, (
        f"the error does not name an image the label file lists and that is missing:\n{msg}")
    assert "--rafdb-images original" in msg or "rafdb_images" in msg, (
        f"Image/original/ holds every listed image, yet the error does not say to give --rafdb-images original:\n{msg}")


@pytest.mark.parametrize("target", ["EmoLabel/list_patition_label.txt", "Image/aligned/train_00001_aligned.jpg"])
def test_import_never_writes_its_manifest_over_a_file_of_the_dataset(tmp_path, target):
    """An --out that names one of the dataset's own files (a slip of the keyboard: the label file
    the import is reading, or one of the photos) must be refused before anything is written; the
    raw data is the one thing a user cannot re-create (it is requested from the publisher). The
    project holds the same promise for its other steps (tests: crop "never overwrites its input
    manifest", "never overwrites or deletes the source photos", predict "never writes its results
    over an input photo"; the brief: nothing is written but --out).

    Today import_dataset reads RAF-DB's label file and then replaces it (or a photo) with the
    manifest CSV: the labels of 15,339 images are gone, and the next import fails on line 1."""
    root = _rafdb(tmp_path / "basic")
    victim = root / target
    before = victim.read_bytes()
    try:
        import_dataset("rafdb", root, victim, ImportParams())
    except HSNetError:
        pass
    assert victim.read_bytes() == before, f"hsnet data import --out {target} overwrote the dataset's {target}"


def test_a_photo_linked_from_outside_the_root_is_a_record_of_import_not_a_failed_dataset(tmp_path):
    """docs/security.md: names "that lead out of ROOT through a symbolic link that exists are
    refused with an error naming the name and ROOT" (the DVC cache being the one allowed place);
    validate fails the whole manifest ("paths escaping the root") on one such row. README:
    `data import` skips and counts stray files; the brief: one bad file is a per-item record.

    A FERG_DB_256 with one file linked to a picture elsewhere on the disk (say, a user's own
    cartoon they 'added' with ln -s) is imported as an ordinary row today (the import also hashes
    the outside file while looking for duplicates), and the validation of the 421-image dataset
    then fails on it: one stray link stops the dataset. The import should leave it out, listed
    (or refuse, naming it) — not write a manifest its own next step refuses."""
    root = _ferg(tmp_path / "FERG_DB_256", n=3)
    outside = tmp_path / "elsewhere" / "my_cartoon.png"
    _photo(outside, 999, "PNG")
    link = root / "aia" / "aia_anger" / "aia_anger_99.png"
    os.symlink(outside, link)
    manifest = tmp_path / "m.csv"
    try:
        summary = import_dataset("ferg", root, manifest, ImportParams())
    except HSNetError as exc:
        assert "aia_anger_99.png" in str(exc), f"the refusal does not name the link: {exc}"
        return
    paths = {r["path"] for r in _rows(manifest)}
    assert "aia/aia_anger/aia_anger_99.png" not in paths, (
        "a file leading out of --root through a symbolic link is in the manifest (validate then fails "
        f"the whole dataset on it); skipped: {summary['skipped_examples']}")
    assert summary["outside_root"] == 1 and "aia/aia_anger/aia_anger_99.png" in summary["outside_root_examples"]


def test_a_dataset_folder_that_is_a_symbolic_link_is_named_not_called_no_files_at_all(tmp_path):
    """An engineer keeps the 4,900 KDEF photos on a data disk and links them into the project
    (data/raw/kdef/KDEF -> /data/KDEF_and_AKDEF/KDEF). The importer does not descend into linked
    folders (os.walk), which docs/security.md's rule on links out of ROOT supports; but the error
    must then name the link and say what to do (copy the folder in, or give it as --root).

    Today the error says "Found 0 other file(s) (no files at all)" about a root that holds the
    KDEF folder the message itself asks for ("Expected KDEF: KDEF/<session>...")."""
    store = _kdef(tmp_path / "disk" / "KDEF_and_AKDEF", ["AF01", "AM02", "BF01"])
    root = tmp_path / "kdef"
    root.mkdir()
    os.symlink(store / "KDEF", root / "KDEF")
    try:
        summary = import_dataset("kdef", root, tmp_path / "m.csv", ImportParams())
    except HSNetError as exc:
        msg = str(exc)
        assert "no files at all" not in msg and "link" in msg, (
            f"the root's KDEF folder is a symbolic link; the error neither names it nor says so:\n{msg}")
        return
    assert summary["images"] == 3 * 35  # followed: every photo found


def test_an_image_listed_twice_in_rafdbs_label_file_is_not_lost(tmp_path):
    """README: byte-identical images are left out "of copies with one label the first is kept".
    A label file that lists one image twice (a list concatenated by hand, a line pasted twice)
    names one file, not two copies: the image must stay in the manifest once (or the import refuse,
    naming the line).

    Today both records carry the same path, the duplicate check finds the file "identical to"
    itself and drops every record of that path: the photo vanishes from the dataset, reported as
    "Image/aligned/train_00002_aligned.jpg: identical to Image/aligned/train_00002_aligned.jpg"."""
    root = _rafdb(tmp_path / "basic")
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text() + "train_00002.jpg 3\n")  # its own line says 3 too
    manifest = tmp_path / "m.csv"
    try:
        import_dataset("rafdb", root, manifest, ImportParams())
    except HSNetError as exc:
        assert "train_00002" in str(exc), f"the refusal does not name the repeated image: {exc}"
        return
    rows = [r for r in _rows(manifest) if r["path"] == "Image/aligned/train_00002_aligned.jpg"]
    assert len(rows) == 1, f"train_00002 is in the manifest {len(rows)} time(s), listed twice with one label"


def test_a_rafdb_label_file_not_in_utf8_is_an_error_naming_it_not_a_traceback(tmp_path):
    """The importer already reads RAF-DB's label file "a BOM too" (a copy re-saved on Windows);
    Windows Notepad's other "Unicode" is UTF-16, which an engineer who opened the file to look at
    (or fix) a line gets on saving. The brief and README: errors name the file and say what to do;
    the CLI reports an HSNetError as one line, anything else as a traceback.

    Today scan_rafdb's read_text raises a bare UnicodeDecodeError ("'utf-8' codec can't decode byte
    0xff in position 0"), which `hsnet data import` prints as a Python traceback naming no file."""
    root = _rafdb(tmp_path / "basic", ntrain=14, ntest=7)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_bytes(label_file.read_text().encode("utf-16"))
    try:
        import_dataset("rafdb", root, tmp_path / "m.csv", ImportParams())
    except HSNetError as exc:
        assert "list_patition_label.txt" in str(exc), f"the error does not name the label file: {exc}"
    except UnicodeError as exc:
        pytest.fail(f"a UTF-16 label file ends the import with {type(exc).__name__}: {exc}")
    else:
        pass  # read as UTF-16: fine too
