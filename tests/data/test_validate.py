"""Great Expectations validation: passes on good data, fails with the right message for each bad case."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from hsnet.cli import main
from hsnet.data.datasets import import_dataset
from hsnet.data.manifest import read_manifest, write_manifest
from hsnet.params import ValidateParams
from hsnet.data.validate import ValidationFailed, validate
from hsnet.errors import HSNetError


@pytest.fixture
def good(ferg_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    manifest = tmp_path / "m.csv"
    import_dataset("ferg", ferg_root, manifest)
    return manifest, ferg_root


def _edit(manifest, change):
    rows = read_manifest(manifest)
    change(rows)
    write_manifest(manifest, rows)


def test_good_data_passes_and_writes_the_report(good, tmp_path):
    manifest, root = good
    summary = validate(manifest, root, "ferg", tmp_path / "report", progress=False)
    assert summary["success"] and summary["images"] == 126 and not summary["failed"]
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()
    results = json.loads((tmp_path / "report" / "gx_results.json").read_text())
    assert results["manifest"]["success"] is True and len(results["manifest"]["results"]) >= 15
    assert (tmp_path / "cache" / "image-info.sqlite").is_file()


def _fails(manifest, root, tmp_path, what, example=None):
    with pytest.raises(ValidationFailed) as err:
        validate(manifest, root, "ferg", tmp_path / "report", progress=False)
    message = str(err.value)
    assert what in message, message
    if example:
        assert example in message, message
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["success"] is False
    return message


def test_corrupt_file(good, tmp_path):
    manifest, root = good
    victim = read_manifest(manifest)[5]["path"]
    (root / victim).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)  # PNG header, no pixels
    _fails(manifest, root, tmp_path, "files that do not decode as images", victim)


def test_a_few_bad_images_within_max_bad_fraction_pass_named(good, tmp_path):
    """max_bad_fraction 0.02 of 126 images: 2 broken (124/126 = 0.984 good, >= 0.98) pass, each
    named in the summary's warnings; 3 (123/126 = 0.976) fail, the message naming the setting."""
    manifest, root = good
    victims = [r["path"] for r in read_manifest(manifest)[:3]]
    for v in victims[:2]:
        (root / v).write_bytes(b"")
    summary = validate(manifest, root, "ferg", tmp_path / "report", ValidateParams(max_bad_fraction=0.02),
                       progress=False)
    (tolerated,) = [w for w in summary["warnings"] if w["column"] == "decodes"]
    assert tolerated["unexpected_count"] == 2 and all(any(v in e for e in tolerated["examples"]) for v in victims[:2])
    assert "within validate.max_bad_fraction 0.02" in tolerated["what"]
    # the manifest's 126 rows per split as listed; what goes on to crop is the 124 that decode
    assert sum(summary["splits"].values()) == 126 and sum(summary["usable"].values()) == 124
    assert summary["left_out"] == 2
    where = {r["path"]: r["split"] for r in read_manifest(manifest)}
    for split in summary["splits"]:
        broken_here = sum(where[v] == split for v in victims[:2])
        assert summary["usable"][split] == summary["splits"][split] - broken_here
    (root / victims[2]).write_bytes(b"")
    with pytest.raises(ValidationFailed, match=r"do not decode.*3 rows.*more than validate.max_bad_fraction 0.02"):
        validate(manifest, root, "ferg", tmp_path / "report", ValidateParams(max_bad_fraction=0.02), progress=False)


def test_truncated_file(good, tmp_path):
    manifest, root = good
    victim = read_manifest(manifest)[7]["path"]
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) // 2])  # header fine, pixels cut off
    _fails(manifest, root, tmp_path, "files that do not decode as images", victim)


def test_unknown_label(good, tmp_path):
    manifest, root = good
    _edit(manifest, lambda rows: rows[0].update(label=9))
    message = _fails(manifest, root, tmp_path, "unknown labels")
    assert "label and label_name disagree" in message


def test_label_name_inconsistent(good, tmp_path):
    manifest, root = good
    _edit(manifest, lambda rows: rows[0].update(label_name="joy"))
    _fails(manifest, root, tmp_path, "label and label_name disagree")


def test_leakage_across_splits(good, tmp_path):
    manifest, root = good
    rows = read_manifest(manifest)
    train = next(r for r in rows if r["split"] == "train")
    test = next(r for r in rows if r["split"] == "test" and r["label"] == train["label"])
    shutil.copyfile(root / train["path"], root / test["path"])
    _fails(manifest, root, tmp_path, "identical images in more than one split (leakage)", test["path"])


def test_missing_file(good, tmp_path):
    manifest, root = good
    victim = read_manifest(manifest)[3]["path"]
    (root / victim).unlink()
    _fails(manifest, root, tmp_path, "missing files", victim)


def test_path_escaping_the_root(good, tmp_path):
    manifest, root = good
    _edit(manifest, lambda rows: rows[0].update(path="../outside.png"))
    _fails(manifest, root, tmp_path, "paths escaping the root", "../outside.png")
    _edit(manifest, lambda rows: rows[0].update(path="/etc/passwd"))
    _fails(manifest, root, tmp_path, "paths escaping the root", "/etc/passwd")


def test_empty_split(good, tmp_path):
    manifest, root = good
    _edit(manifest, lambda rows: [r.update(split="train") for r in rows if r["split"] == "val"])
    _fails(manifest, root, tmp_path, "a split is empty")


def test_class_missing_from_train(good, tmp_path):
    manifest, root = good
    _edit(manifest, lambda rows: [r.update(split="test") for r in rows
                                  if r["split"] == "train" and r["label_name"] == "fear"])
    _fails(manifest, root, tmp_path, "a class is missing from train")


def test_too_small_images(good, tmp_path):
    manifest, root = good
    with pytest.raises(ValidationFailed, match="smaller than the minimum size"):
        validate(manifest, root, "ferg", tmp_path / "report", ValidateParams(min_size=64), progress=False)


def test_paper_split_sizes_only_warn(rafd_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    import_dataset("rafd", rafd_root, tmp_path / "m.csv")
    summary = validate(tmp_path / "m.csv", rafd_root, "rafd", tmp_path / "report", progress=False)
    assert summary["success"] and summary["warnings"]
    assert summary["warnings"][0]["what"] == "split sizes differ from the paper's"


def test_cache_is_keyed_by_size_and_mtime(good, tmp_path):
    manifest, root = good
    validate(manifest, root, "ferg", tmp_path / "r1", progress=False)
    victim = read_manifest(manifest)[9]["path"]
    (root / victim).write_bytes(b"garbage")  # new size and mtime: must be re-inspected
    _fails(manifest, root, tmp_path, "files that do not decode as images", victim)


def test_cli_exit_code(good, tmp_path, capsys):
    manifest, root = good
    args = ["validate", "--manifest", str(manifest), "--root", str(root), "--dataset", "ferg",
            "--report", str(tmp_path / "rep")]
    assert main(args) == 0
    _edit(manifest, lambda rows: rows[0].update(label=42))
    assert main(args) == 2
    assert "unknown labels" in capsys.readouterr().err


# --- hostile and odd inputs (issue 13) ---------------------------------------------------------

def test_rows_whose_crops_would_collide_fail(good, tmp_path):
    """x.jpg and x.jpg.png (or one path twice) would get one crop: validate fails on them, with crop's
    own naming (hsnet.data.crop.output_name)."""
    manifest, root = good
    rows = read_manifest(manifest)
    victim = next(r for r in rows if r["split"] == "test")
    first, twin = victim["path"] + ".jpg", victim["path"] + ".jpg.png"  # both -> images/....jpg.png
    for i, name in enumerate((first, twin)):
        img = Image.open(root / victim["path"]).convert("RGB")
        img.putpixel((0, 0), (i, 1, 2))  # other files, so no leakage failure
        img.save(root / name, format="PNG")
        rows.append({**victim, "path": name})
    write_manifest(manifest, rows)
    message = _fails(manifest, root, tmp_path, "rows whose crops would clash (one file name, or one crop's name the other's folder)", twin)
    assert f"would overwrite the crop of the row '{first}'" in message


def test_kdef_case_variants_and_extensions_pass(good, tmp_path):
    """x.png in test and x.jpg in train (or .JPG and .jpg) are different crops now: no collision."""
    manifest, root = good
    rows = read_manifest(manifest)
    extra = []
    for i, suffix in enumerate((".jpg", ".JPG")):
        r = next(r for r in rows if r["split"] == "train" and r["label_name"] == "joy")
        stem = r["path"].rsplit(".", 1)[0]
        img = Image.open(root / r["path"]).convert("RGB")
        img.putpixel((0, 0), (i, 0, 0))
        img.save(root / (stem + suffix), format="JPEG")
        extra.append({**r, "path": stem + suffix})
    write_manifest(manifest, rows + extra)
    assert validate(manifest, root, "ferg", tmp_path / "report", progress=False)["success"]


def test_links_out_of_the_root_fail(good, tmp_path):
    manifest, root = good
    outside = tmp_path / "outside.png"
    rows = read_manifest(manifest)
    shutil.copyfile(root / rows[0]["path"], outside)
    (root / rows[0]["path"]).unlink()
    (root / rows[0]["path"]).symlink_to(outside)
    (root / rows[1]["path"]).unlink()
    (root / rows[1]["path"]).symlink_to("/dev/zero")  # read whole, it drove validate out of memory
    message = _fails(manifest, root, tmp_path, "paths escaping the root", rows[0]["path"])
    assert rows[1]["path"] in message and "symbolic link" in message


def test_special_files_are_named_failures(good, tmp_path):
    """A FIFO hung validate; a directory named .png ended in a traceback."""
    from tests.data.test_io import finishes

    manifest, root = good
    rows = read_manifest(manifest)
    for row in rows[:2]:
        (root / row["path"]).unlink()
    os.mkfifo(root / rows[0]["path"])
    (root / rows[1]["path"]).mkdir()
    with pytest.raises(ValidationFailed) as err:
        finishes(lambda: validate(manifest, root, "ferg", tmp_path / "report", progress=False), 120)
    message = str(err.value)
    assert "files that do not decode as images" in message
    assert f"{rows[0]['path']} (a FIFO, not a regular file" in message  # the row names it; the reason, why
    assert f"{rows[1]['path']} (a directory, not a regular file" in message


def test_manifest_that_is_not_utf8_exits_2_naming_it(good, tmp_path, capsys):
    manifest, root = good
    manifest.write_bytes(manifest.read_bytes() + "caf\xe9.png,0,anger,train,aia\n".encode("latin-1"))
    with pytest.raises(HSNetError, match="is not UTF-8 text"):
        validate(manifest, root, "ferg", tmp_path / "report", progress=False)
    assert main(["validate", "--manifest", str(manifest), "--root", str(root), "--dataset", "ferg",
                 "--report", str(tmp_path / "rep")]) == 2
    assert f"{manifest} is not UTF-8 text (line 128" in capsys.readouterr().err


def test_validation_page_of_a_failed_validation_shows_the_failed_expectation(rafd_root, tmp_path, monkeypatch):
    """components/validate.py copies hsnet.data.validate.validation_page(report) to the run's
    Data Docs output, "the Data Docs page of this validation, also when it failed". For every
    dataset with paper split sizes (rafd, kdef, ferg, rafdb: all the real ones) validate runs two
    suites, and validation_page (hsnet/data/validate.py:287-291, sorted(...)[-1] over the paths)
    returns validations/paper_split_sizes/.../*-split_sizes.html -- the warning-only split-size
    page -- never manifest_and_images/.../*-manifest.html, where a critical failure is. A run that
    failed on an undecodable file shows a page that does not mention it."""
    from hsnet.data.datasets import import_dataset
    from hsnet.data.manifest import read_manifest
    from hsnet.data.validate import ValidationFailed, validate, validation_page

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    root, manifest = rafd_root, tmp_path / "m.csv"
    import_dataset("rafd", root, manifest)
    victim = read_manifest(manifest)[5]["path"]
    (root / victim).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)  # PNG header, no pixels
    with pytest.raises(ValidationFailed, match="files that do not decode as images"):
        validate(manifest, root, "rafd", tmp_path / "report", progress=False)
    page = validation_page(tmp_path / "report")
    assert page is not None
    assert "decodes" in page.read_text(), (
        f"the page a failed Kubeflow validation shows ({page.relative_to(tmp_path)}) is not the one "
        "holding the failed expectation (the 'decodes' column)")


def test_data_docs_are_replaced_whole_never_half_written(good, tmp_path, monkeypatch):
    """docs/security.md: every output is written atomically. Great Expectations writes its Data
    Docs pages one by one in place: a validation that fails half-way must leave the last whole
    site (its index and pages as they were), and a finished one replaces it, leaving no temporary
    folder behind."""
    import hsnet.data.validate as v

    manifest, root = good
    report = tmp_path / "report"
    validate(manifest, root, "ferg", report, progress=False)
    site = report / v.DATA_DOCS
    before = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert (site / "index.html").is_file()

    def half(dataset, spec, settings, df, counts, docs_dir):
        (docs_dir / "index.html").write_text("<html>half")  # what GX had written when it stopped
        raise RuntimeError("killed half-way")

    with monkeypatch.context() as m:
        m.setattr(v, "_run_suites", half)
        with pytest.raises(RuntimeError, match="half-way"):
            validate(manifest, root, "ferg", report, progress=False)
    assert {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    validate(manifest, root, "ferg", report, progress=False)
    assert (site / "index.html").is_file() and [p.name for p in report.iterdir() if p.name.startswith(".")] == []


_INSPECT = """
import sys
from pathlib import Path
import hsnet.data.validate as v
assert Path(v.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), v.__file__
cache = v.ImageInfoCache(Path(sys.argv[3]))
(info,) = v.inspect_images([Path(sys.argv[2])], cache=cache, progress=False)
print(info.width, info.height, info.error)
"""


def test_the_image_cache_holds_what_this_code_found_not_what_older_code_did(tmp_path):
    """The image-info cache (~/.cache/hsnet/image-info.sqlite) is shared by every run on a machine:
    after an edit to the code that inspects images (dvc repro then re-runs validate), a file seen
    before is inspected again by the new code, not answered from the old code's entry."""
    import subprocess
    import sys
    from pathlib import Path

    import hsnet

    photo = tmp_path / "face.png"
    Image.new("RGB", (30, 20)).save(photo)
    old, new = tmp_path / "old", tmp_path / "new"
    for root in (old, new):
        shutil.copytree(Path(hsnet.__file__).parent, root / "hsnet", ignore=shutil.ignore_patterns("__pycache__"))
    source = (new / "hsnet" / "data" / "validate.py").read_text()
    seen = 'return ImageInfo(True, True, img.width, img.height, digest, "", pixels_sha256(img))'
    assert seen in source
    (new / "hsnet" / "data" / "validate.py").write_text(
        source.replace(seen, seen.replace('digest, ""', 'digest, "checked by the new code"')))

    def inspect(root: Path) -> str:
        env = {**os.environ, "PYTHONPATH": str(root)}
        proc = subprocess.run([sys.executable, "-c", _INSPECT, str(root), str(photo), str(tmp_path / "cache.sqlite")],
                              env=env, cwd=root, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip()

    assert inspect(old) == "30 20"
    assert inspect(new) == "30 20 checked by the new code"
    assert inspect(old) == "30 20"  # and back
