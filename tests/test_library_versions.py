"""Caches keyed by the libraries that make their contents: a Pillow (or torch, facenet-pytorch)
upgrade can decode, resize or detect differently, so what an older version made is made again.

The upgrade is simulated where Python reads an installed distribution's version
(``importlib.metadata.version``), as after ``pip install -U Pillow``.
"""

from __future__ import annotations

import csv
import json
import re
from importlib import metadata

import numpy as np
import PIL
import pytest
from PIL import Image

import hsnet.tensors as tensors
from hsnet import sources


def two_photos(tmp_path):
    """Two 40 px noise photos in tmp_path/photos and their manifest (tmp_path/m.csv)."""
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "photos" / name)
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "label_name", "split", "subject"])
        w.writeheader()
        for name in ("a.png", "b.png"):
            w.writerow({"path": name, "label": 0, "label_name": "anger", "split": "train", "subject": ""})
    return manifest


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them (Pillow, pillow; facenet-pytorch, facenet_pytorch)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture
def upgrade(monkeypatch):
    """``upgrade("Pillow")``: from now on the installed Pillow reads as another version."""
    real = metadata.version

    def apply(name):
        monkeypatch.setattr(metadata, "version", lambda n: "99.0.0" if canonical(n) == canonical(name) else real(n))
    return apply


def test_library_versions_are_the_installed_distributions():
    found = sources.library_versions(("PIL", "numpy", "no_such_module_hsnet"))
    assert {canonical(k): v for k, v in found.items()} == {
        "pillow": PIL.__version__, "numpy": np.__version__, canonical("no_such_module_hsnet"): "none"}


def _dropin(site, version: str) -> None:
    """A drop-in build of Pillow installed in ``site`` (as pip installs Pillow-SIMD: its own
    distribution, the same top-level import ``PIL``)."""
    info = site / "Pillow_SIMD-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: Pillow-SIMD\nVersion: {version}\n")
    (info / "top_level.txt").write_text("PIL\n")


def test_a_drop_in_build_and_its_upgrades_are_seen(tmp_path, monkeypatch):
    """Pillow-SIMD is a distribution of its own that provides ``PIL``: a cache keyed by the
    distribution "Pillow" read it as "none" and served crops made by an older Pillow-SIMD."""
    from hsnet.data.crop import crop
    from hsnet.params import CropParams

    _dropin(tmp_path / "site", "9.0.0.post1")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert sources.library_versions(("PIL",))["Pillow-SIMD"] == "9.0.0.post1"
    manifest = two_photos(tmp_path)
    settings = CropParams(size=32, no_face="center", detector="none")
    assert crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings, progress=False)["processed"] == 2
    assert crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings, progress=False)["reused"] == 2
    _dropin(tmp_path / "site", "9.5.0")  # pip install -U Pillow-SIMD
    again = crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings, progress=False)
    assert again["processed"] == 2 and again["reused"] == 0


@pytest.mark.parametrize("library, detector", [("Pillow", "none"), ("numpy", "none"), ("Pillow", "mtcnn"),
                                               ("torch", "mtcnn"), ("facenet-pytorch", "mtcnn")])
def test_crops_made_with_another_library_version_are_cut_again(library, detector, upgrade, tmp_path):
    from hsnet.data.crop import crop
    from hsnet.params import CropParams

    manifest = two_photos(tmp_path)
    settings = CropParams(size=32, no_face="center", detector=detector)  # mtcnn: finds no face in noise
    first = crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings, progress=False)
    assert first["processed"] == 2
    assert crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings, progress=False)["reused"] == 2
    recorded = json.loads((tmp_path / "out" / "crop_state.json").read_text())["libraries"]
    assert {canonical(k): v for k, v in recorded.items()}[canonical(library)] == metadata.version(library)  # written down for whoever reads the record

    upgrade(library)
    again = crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings, progress=False)
    assert again["processed"] == 2 and again["reused"] == 0


def test_the_tensor_cache_decodes_again_after_a_pillow_upgrade(upgrade, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": i})
    decoded = []
    real_open = tensors.open_rgb
    monkeypatch.setattr(tensors, "open_rgb", lambda p: decoded.append(p.name) or real_open(p))
    tensors.load_split(rows, tmp_path, 16, cache_dir=tmp_path / "cache", progress=False)
    tensors.load_split(rows, tmp_path, 16, cache_dir=tmp_path / "cache", progress=False)
    assert len(decoded) == 3  # the second read came from the cache
    upgrade("Pillow")
    tensors.load_split(rows, tmp_path, 16, cache_dir=tmp_path / "cache", progress=False)
    assert len(decoded) == 6


def test_validate_inspects_again_after_a_pillow_upgrade(upgrade, tmp_path, monkeypatch):
    import hsnet.data.validate as validate

    paths = []
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    seen = []
    real = validate._inspect
    monkeypatch.setattr(validate, "_inspect", lambda p: seen.append(p.name) or real(p))
    cache = validate.ImageInfoCache(tmp_path / "info.sqlite")
    validate.inspect_images(paths, workers=1, cache=cache, progress=False)
    validate.inspect_images(paths, workers=1, cache=cache, progress=False)
    assert len(seen) == 3
    upgrade("Pillow")
    validate.inspect_images(paths, workers=1, cache=cache, progress=False)
    assert len(seen) == 6


@pytest.mark.skipif(not sources._READ_ITSELF, reason="Python 3.12 infers otherwise: hsnet asks the standard call")
def test_the_providers_read_are_the_standard_libraries_answer_for_every_installed_distribution():
    """``sources._provides`` reads top_level.txt and RECORD itself (``packages_distributions`` was
    0.6 s to 1.7 s per step): for every distribution installed here, the same import names as
    Python's own ``importlib.metadata.packages_distributions``."""
    expected: dict[str, list[str]] = {}
    for module, names in metadata.packages_distributions().items():
        expected[module] = sorted(names)
    read: dict[str, list[str]] = {}
    for dist in metadata.distributions():
        for module in sources._provides(dist):
            read.setdefault(module, []).append(dist.metadata["Name"])
    assert {m: sorted(n) for m, n in read.items()} == expected
    assert "torch" in read and "PIL" in read  # the ones the caches key by are among them
