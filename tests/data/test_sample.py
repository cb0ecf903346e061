"""The built-in sample: deterministic to the byte, balanced, readable by the ferg importer."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
from PIL import Image

from hsnet.data.datasets import FERG_CLASSES, import_dataset
from hsnet.data.manifest import read_manifest
from hsnet.data.sample import generate


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_two_runs_give_the_same_bytes(tmp_path):
    assert generate(tmp_path / "a", per_class=2, seed=3) == 6 * 7 * 2
    generate(tmp_path / "b", per_class=2, seed=3)
    generate(tmp_path / "c", per_class=2, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_balanced_and_read_by_the_importer(tmp_path):
    generate(tmp_path / "sample", per_class=3, size=96)
    import_dataset("sample", tmp_path / "sample", tmp_path / "m.csv")
    rows = read_manifest(tmp_path / "m.csv")
    assert Counter(r["label_name"] for r in rows) == {c: 18 for c in FERG_CLASSES}
    assert Counter(r["subject"] for r in rows) == {c: 21 for c in ("aia", "bonnie", "jules", "malcolm",
                                                                   "mery", "ray")}
    img = Image.open(tmp_path / "sample" / rows[0]["path"])
    assert img.size == (96, 96) and img.mode == "RGB"


def test_images_vary_within_a_class_and_differ_between_classes(tmp_path):
    generate(tmp_path / "s", per_class=4, size=64, characters=("aia",))
    load = lambda e, i: np.asarray(Image.open(tmp_path / "s" / "aia" / f"aia_{e}" / f"aia_{e}_{i}.png"),  # noqa: E731
                                   dtype=np.float32)
    assert np.abs(load("joy", 1) - load("joy", 2)).mean() > 5  # jitter: not copies
    assert np.abs(load("joy", 1) - load("anger", 1)).mean() > 5
