"""Importers: each dataset's real layout -> one manifest; deterministic, subject-disjoint splits."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from hsnet.cli import main
from hsnet.params import ImportParams
from hsnet.data.datasets import DATASETS, import_dataset
from hsnet.data.manifest import read_manifest
from hsnet.errors import HSNetError


def _rows(path):
    return read_manifest(path)


def test_rafd(rafd_root, tmp_path):
    out = tmp_path / "rafd.csv"
    summary = import_dataset("rafd", rafd_root, out, ImportParams(seed=1))
    rows = _rows(out)
    assert len(rows) == 5 * 8 * 2 and summary["skipped"] == 2  # .DS_Store, readme.txt
    assert {r["label_name"] for r in rows} == set(DATASETS["rafd"].classes)
    assert all(DATASETS["rafd"].classes[r["label"]] == r["label_name"] for r in rows)
    assert any(r["subject"].startswith("kid") for r in rows)  # the Kid ethnicity is read
    per_class = Counter((r["label_name"], r["split"]) for r in rows)
    # the paper's 644/160/201 of 1005 per class, on 10 images per class: 6/2/2
    assert per_class[("angry", "train")] == 6 and per_class[("angry", "test")] == 2


def test_kdef_case_insensitive_and_subjects(kdef_root, tmp_path):
    out = tmp_path / "kdef.csv"
    summary = import_dataset("kdef", kdef_root, out)
    rows = _rows(out)
    assert len(rows) == 2 * 5 * 7 * 2 and summary["skipped"] == 1  # Thumbs.db
    assert any(r["path"].endswith(".jpg") for r in rows) and any(r["path"].endswith(".JPG") for r in rows)
    assert {r["subject"] for r in rows} == {"F01", "F02", "M01", "M03", "M04"}  # sessions A+B merged
    # per class 20 images: test 20% (4), val 20% of the rest (0.16 of all: 3), train 13
    assert Counter(r["split"] for r in rows) == {"train": 91, "val": 21, "test": 28}


def test_ferg_and_stray_appledouble(ferg_root, tmp_path):
    out = tmp_path / "ferg.csv"
    summary = import_dataset("ferg", ferg_root, out)
    assert summary["images"] == 6 * 7 * 3 and summary["skipped"] == 1
    rows = _rows(out)
    assert {r["subject"] for r in rows} == {"aia", "bonnie", "jules", "malcolm", "mery", "ray"}
    assert all(s > 0 for s in Counter(r["split"] for r in rows).values())


def test_rafdb_misspelled_label_file_and_official_test(rafdb_root, tmp_path):
    out = tmp_path / "rafdb.csv"
    import_dataset("rafdb", rafdb_root, out)
    rows = _rows(out)
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 21 and all(r["path"].startswith("Image/aligned/test_") for r in test)
    assert Counter(r["split"] for r in rows if r["path"].startswith("Image/aligned/train_")) == \
        {"train": 63, "val": 7}
    first = next(r for r in rows if r["path"] == "Image/aligned/train_00001_aligned.jpg")
    assert first["label"] == 1 and first["label_name"] == "fear"  # RAF-DB label 2 = Fear


def test_rafdb_unknown_label_names_the_line(rafdb_root, tmp_path):
    label_file = rafdb_root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text().replace("train_00003.jpg 4", "train_00003.jpg 9"))
    with pytest.raises(HSNetError, match=r"line 3: unknown label 9"):
        import_dataset("rafdb", rafdb_root, tmp_path / "m.csv")


@pytest.mark.parametrize("dataset", ["rafd", "kdef", "ferg"])
def test_splits_are_deterministic_and_seeded(dataset, request, tmp_path):
    root = request.getfixturevalue(f"{dataset}_root")
    a, b, c = (tmp_path / f"{n}.csv" for n in "abc")
    import_dataset(dataset, root, a, ImportParams(seed=7))
    import_dataset(dataset, root, b, ImportParams(seed=7))
    import_dataset(dataset, root, c, ImportParams(seed=8))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("dataset", ["rafd", "kdef", "ferg"])
def test_split_by_subject_is_disjoint(dataset, request, tmp_path):
    root = request.getfixturevalue(f"{dataset}_root")
    out = tmp_path / "m.csv"
    import_dataset(dataset, root, out, ImportParams(split_by="subject"))
    subjects = {s: {r["subject"] for r in _rows(out) if r["split"] == s} for s in ("train", "val", "test")}
    assert all(subjects.values())
    assert not (subjects["train"] & subjects["val"]) and not (subjects["train"] & subjects["test"])
    assert not (subjects["val"] & subjects["test"])


def test_split_by_subject_refused_where_subjects_are_unknown(rafdb_root, tmp_path):
    with pytest.raises(HSNetError, match="does not identify subjects"):
        import_dataset("rafdb", rafdb_root, tmp_path / "m.csv", ImportParams(split_by="subject"))


def test_wrong_layout_says_what_was_expected(ferg_root, tmp_path):
    with pytest.raises(HSNetError, match=r"does not look like kdef.*Expected KDEF: KDEF/"):
        import_dataset("kdef", ferg_root, tmp_path / "m.csv")
    with pytest.raises(HSNetError, match="RAF-DB.*list_patition_label.txt is missing"):
        import_dataset("rafdb", ferg_root, tmp_path / "m.csv")
    with pytest.raises(HSNetError, match="not a directory"):
        import_dataset("ferg", tmp_path / "nowhere", tmp_path / "m.csv")
    with pytest.raises(HSNetError, match="unknown dataset 'affectnet'"):
        import_dataset("affectnet", ferg_root, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_cli_import(ferg_root, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["data", "import", "--dataset", "ferg", "--root", str(ferg_root), "--out", str(out)]) == 0
    assert "126 images of ferg" in capsys.readouterr().out
    with open(out) as f:
        assert next(csv.reader(f)) == ["path", "label", "label_name", "split", "subject"]
    assert main(["data", "import", "--dataset", "rafd", "--root", str(ferg_root), "--out", str(out)]) == 2
    assert "does not look like rafd" in capsys.readouterr().err


def test_archives_as_unpacked_bom_and_macos_folders(rafdb_root, ferg_root, rafd_root, tmp_path):
    """What unpacking the real archives gives: RAF-DB's files under basic/ and FERG-DB's under
    FERG_DB_256/ (--root one level too high gets the folder to give), a label file saved with a
    byte-order mark, and macOS's __MACOSX/ and .AppleDouble/ folders of resource forks that carry
    the images' own names (never images)."""
    import shutil

    unpacked = tmp_path / "rafdb-download"
    shutil.copytree(rafdb_root, unpacked / "basic")
    with pytest.raises(HSNetError, match=rf"give --root {unpacked / 'basic'}"):
        import_dataset("rafdb", unpacked, tmp_path / "m.csv")
    ferg_unpacked = tmp_path / "ferg-download"
    shutil.copytree(ferg_root, ferg_unpacked / "FERG_DB_256")
    with pytest.raises(HSNetError, match=rf"give --root {ferg_unpacked / 'FERG_DB_256'}"):
        import_dataset("ferg", ferg_unpacked, tmp_path / "m.csv")

    label_file = unpacked / "basic" / "EmoLabel" / "list_patition_label.txt"
    label_file.write_bytes(b"\xef\xbb\xbf" + label_file.read_bytes())
    before = import_dataset("rafdb", rafdb_root, tmp_path / "a.csv")
    assert import_dataset("rafdb", unpacked / "basic", tmp_path / "b.csv")["images"] == before["images"] == 91

    for folder in ("__MACOSX/aia/aia_joy", "aia/aia_joy/.AppleDouble"):
        (ferg_unpacked / "FERG_DB_256" / folder).mkdir(parents=True, exist_ok=True)
        (ferg_unpacked / "FERG_DB_256" / folder / "aia_joy_1.png").write_bytes(b"\0\5\26\7resource fork")
    summary = import_dataset("ferg", ferg_unpacked / "FERG_DB_256", tmp_path / "f.csv")
    assert summary["images"] == 6 * 7 * 3 and summary["skipped"] == 1 + 2  # the fixture's stray ._ file too
    # RaFD's (and KDEF's) names are matched at any depth: a fork with a photo's name is not a photo
    photos = import_dataset("rafd", rafd_root, tmp_path / "r.csv")["images"]
    photo = next(rafd_root.rglob("Rafd*.jpg"))
    for folder in ("__MACOSX", ".AppleDouble"):
        (rafd_root / folder).mkdir()
        (rafd_root / folder / photo.name).write_bytes(b"\0\5\26\7resource fork")
    assert import_dataset("rafd", rafd_root, tmp_path / "r.csv")["images"] == photos
