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
