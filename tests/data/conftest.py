"""Fixtures: tiny copies of each dataset in its publisher's real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, seed: int, size=(48, 48), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)


@pytest.fixture
def rafd_root(tmp_path) -> Path:
    root = tmp_path / "RaFD"
    emotions = ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
    seed = 0
    for ethnicity, subjects in (("Caucasian", ["01", "02"]), ("Moroccan", ["03"]), ("Kid", ["04", "05"])):
        for subject in subjects:
            for emotion in emotions:
                for gaze in ("frontal", "left"):
                    seed += 1
                    write_image(root / f"Rafd090_{subject}_{ethnicity}_{'female' if seed % 2 else 'male'}_"
                                f"{emotion}_{gaze}.jpg", seed, fmt="JPEG")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "readme.txt").write_text("RaFD")
    return root


@pytest.fixture
def kdef_root(tmp_path) -> Path:
    root = tmp_path / "KDEF_and_AKDEF"
    seed = 0
    for session in "AB":
        for gender, ident in (("F", "01"), ("F", "02"), ("M", "01"), ("M", "03"), ("M", "04")):
            folder = root / "KDEF" / f"{session}{gender}{ident}"
            for code in ("AF", "AN", "DI", "HA", "NE", "SA", "SU"):
                for angle in ("S", "HL"):
                    seed += 1
                    name = f"{session}{gender}{ident}{code}{angle}.JPG"
                    if seed % 5 == 0:
                        name = name.lower()  # some copies have lower-case names
                    write_image(folder / name, seed, fmt="JPEG")
    (root / "KDEF" / "AF01" / "Thumbs.db").write_bytes(b"x")
    return root


@pytest.fixture
def ferg_root(tmp_path) -> Path:
    root = tmp_path / "FERG_DB_256"
    seed = 0
    for character in ("aia", "bonnie", "jules", "malcolm", "mery", "ray"):
        for emotion in ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"):
            for n in range(1, 4):
                seed += 1
                write_image(root / character / f"{character}_{emotion}" / f"{character}_{emotion}_{n}.png", seed)
    (root / "aia" / "._aia_anger_1.png").write_bytes(b"appledouble")
    return root


@pytest.fixture
def rafdb_root(tmp_path) -> Path:
    root = tmp_path / "RAF-DB" / "basic"
    lines = []
    seed = 0
    for split, count in (("train", 70), ("test", 21)):
        for i in range(1, count + 1):
            label = (i % 7) + 1
            name = f"{split}_{i:05d}.jpg"
            lines.append(f"{name} {label}")
            seed += 1
            write_image(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", seed, fmt="JPEG")
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root
