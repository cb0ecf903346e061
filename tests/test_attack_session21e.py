"""Attack, session 21e: the fixes of attacks 21a-21d, read as claims and checked where they reach.

Each test builds what it needs under tmp_path (tiny generated images), states the promise or the
independent expectation it checks, failed on the code it was written against because of the
defect it names, and passes once that defect is fixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hsnet.data import datasets as D
from hsnet.data.datasets import import_dataset
from hsnet.errors import HSNetError
from hsnet.params import ImportParams


def _photo(path: Path, seed: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _rafdb(root: Path, ntrain: int = 28, ntest: int = 14) -> Path:
    """RAF-DB basic: EmoLabel/list_patition_label.txt ('train_00001.jpg 5', labels 1-7) and the
    images in Image/aligned/train_00001_aligned.jpg."""
    lines, seed = [], 0
    for split, count in (("train", ntrain), ("test", ntest)):
        for i in range(1, count + 1):
            seed += 1
            lines.append(f"{split}_{i:05d}.jpg {(i % 7) + 1}")
            _photo(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", seed)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _dvc_symlink_checkout(data: Path, project: Path, rel: str) -> Path:
    """``data`` checked out as DVC does with ``cache.type symlink``: each file's content in
    .dvc/cache/files/md5/XX/<30 hex> (DVC 3) and the workspace file a symbolic link to it."""
    (project / ".dvc").mkdir(parents=True, exist_ok=True)
    (project / ".dvc" / "config").write_text("[cache]\n    type = symlink\n", encoding="utf-8")
    root = project / rel
    for dirpath, _, files in os.walk(data):
        for name in files:
            src = Path(dirpath, name)
            md5 = hashlib.md5(src.read_bytes()).hexdigest()
            cached = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, cached)
            link = root / src.relative_to(data)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(cached, link)
    return root


# --- 1. _check_apart: an --out that names a dataset file of a DVC symlink checkout -------------------
def test_import_never_replaces_a_dataset_file_of_a_dvc_symlink_checkout(tmp_path):
    """Attack 21b's fix: import "refuses an --out inside --root (it replaced RAF-DB's label file)";
    _check_apart: "the raw data is read, never written (a manifest there would replace a file of
    the dataset, or change what data.dvc records)". hsnet.io.dvc_cache_of: "With ``cache.type
    symlink`` every tracked file of a checkout is a link into [the cache] ... the project's own
    data", which import and validate accept.

    _check_apart compares the folders holding os.path.realpath(out): for an --out that is an
    existing file of such a checkout, that is the DVC cache, not --root, so the slip 21b fixed
    (--out data/raw/rafdb/EmoLabel/list_patition_label.txt) goes through again: the atomic write
    makes its temporary in EmoLabel/ and renames it over the link, so the dataset's label file is
    now the manifest (and data.dvc no longer matches the workspace).

    Expected: refused before anything is written, as for a plain checkout; the link and the
    cached label file untouched. (Fix: compare the folder the file is written in, ``Path(out)
    .parent`` resolved, not the link's target.)"""
    project = tmp_path / "project"
    root = _dvc_symlink_checkout(_rafdb(tmp_path / "download"), project, "data/raw/rafdb")
    assert import_dataset("rafdb", root, project / "data/interim/rafdb/manifest.csv")["images"] == 42
    victim = root / "EmoLabel" / "list_patition_label.txt"
    target, before = os.readlink(victim), victim.read_bytes()
    with pytest.raises(HSNetError, match="inside"):
        import_dataset("rafdb", root, victim, ImportParams())
    assert victim.is_symlink() and os.readlink(victim) == target, (
        "hsnet data import --out <the label file> replaced the dataset's label file (a DVC link) with its manifest")
    assert victim.read_bytes() == before


# --- 2. validate._as_text: an escaped label_pair against an unescaped value set ------------------------
@pytest.fixture
def ampersand_dataset():
    """A dataset added as the module docstring of hsnet.data.datasets says ("A new dataset is one
    function decorated with :func:`dataset`"): FERG's files, with one class named 'happy & joyful'."""
    classes = tuple("happy & joyful" if c == "joy" else c for c in D.FERG_CLASSES)

    def scan(root, options):
        found = D.scan_ferg(root, options)
        found.records = [D.Record(r.path, "happy & joyful" if r.label_name == "joy" else r.label_name, r.subject)
                         for r in found.records]
        return found

    D.dataset("ferg_ampersand", classes, fractions=(0.1, 0.1), layout=D.FERG_LAYOUT)(scan)
    yield "ferg_ampersand"
    D.DATASETS.pop("ferg_ampersand", None)


def test_validate_answers_as_before_for_a_class_named_with_an_ampersand(tmp_path, monkeypatch, ampersand_dataset):
    """Attack 21d's fix, hsnet.data.validate._as_text: "``html.escape`` keeps distinct texts
    distinct, so every check gives the same answer."

    Not for a check against a fixed value set: the ``label_pair`` column ("3:happy & joyful") is
    escaped ("3:happy &amp; joyful") while its expected set, built from the dataset's classes, is
    not, so every image of a class whose name holds &, <, >, ' or " fails "label and label_name
    disagree" and the valid dataset is refused. (Before the fix it passed.)

    Expected: the manifest import wrote for this dataset validates. (Fix: escape the value sets
    too, or give GX the escaped frame only for the pages, or compare label_pair outside GX.)"""
    from hsnet.data.validate import ValidationFailed, validate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    root = tmp_path / "raw"
    seed = 0
    for c in D.FERG_CHARACTERS:
        for e in D.FERG_CLASSES:
            for i in range(1, 5):
                seed += 1
                _photo(root / c / f"{c}_{e}" / f"{c}_{e}_{i}.png", seed, "PNG")
    manifest = tmp_path / "manifest.csv"
    assert import_dataset(ampersand_dataset, root, manifest)["images"] == 6 * 7 * 4
    try:
        validate(manifest, root, ampersand_dataset, tmp_path / "report", progress=False)
    except ValidationFailed as exc:
        pytest.fail(f"a valid manifest is refused because its class name holds '&':\n{exc}")


# --- 3. _walk's "name/" entries: a linked folder RAF-DB's scan does read ------------------------------
def test_a_rafdb_image_folder_linked_inside_the_root_is_not_reported_as_unread(tmp_path, caplog):
    """Attack 21b's fix: _walk yields "each folder that is a symbolic link as "name/": not
    followed ... but named among the stray entries"; import_dataset then warns "not read: <it>;
    ... is a symbolic link to a folder, which import doesn't follow ...: give its target ... or
    copy the files in", and the CLI counts it among the "skipped ... stray file(s)".

    RAF-DB's scan doesn't walk for its images: it opens each one its label file lists, through any
    link. With Image/aligned a link to a folder inside --root (Image/aligned -> aligned_v2, a
    re-extracted copy kept beside the old one), all 42 images are imported (the link leads
    nowhere outside the root), yet the import warns that Image/aligned was "not read", tells the
    user to copy the files in, and counts the folder as a skipped stray file.

    Expected: a folder whose images were imported is neither a stray entry nor called unread.
    (Fix: in scan_rafdb leave the "name/" entry of the variant's own folder out of ``skipped``.)"""
    root = _rafdb(tmp_path / "basic")
    os.rename(root / "Image" / "aligned", root / "Image" / "aligned_v2")
    os.symlink("aligned_v2", root / "Image" / "aligned")
    with caplog.at_level(logging.WARNING, logger="hsnet.data.datasets"):
        summary = import_dataset("rafdb", root, tmp_path / "manifest.csv", ImportParams())
    assert summary["images"] == 42  # every listed image, read through the link
    unread = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert not unread, f"the import says a folder it read all 42 images from was not read: {unread[0]}"
    assert summary["skipped"] == 0, (
        f"the folder whose images were imported is counted as a skipped stray file: {summary['skipped_examples']}")
