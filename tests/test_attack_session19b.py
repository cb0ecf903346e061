"""Attack, session 19b: the code a step runs (hsnet.sources), the gate's defaults, durable
checkpoints, and the served model's input against training's.

Each test states the promise or the independent expectation it checks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "hsnet"

_LOAD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import hsnet.tensors as t
    assert Path(t.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), t.__file__
    rows = [{"path": f"images/{i}.png", "label": i % 2} for i in range(4)]
    split = t.load_split(rows, Path(sys.argv[2]), 32, cache_dir=Path(sys.argv[3]), progress=False)
    np.save(sys.argv[4], np.asarray(split.images))
""")


def _load_with(package_root: Path, crops: Path, cache: Path, out: Path) -> np.ndarray:
    """load_split of the four crops at 32 px, run by the hsnet package under ``package_root``."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_root), "HOME": str(package_root),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(package_root), str(crops), str(cache), str(out)],
                          env=env, cwd=package_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def test_an_edit_to_the_decoding_training_runs_is_not_served_from_the_tensor_cache(tmp_path):
    """README: a last.pt of other code "is not resumed, so a change to code training runs trains again
    from the start"; "Editing any module a stage runs re-runs it". hsnet/tensors.py is in
    hsnet.train's closure and a dep of the train stage (the resize that turns a stored crop into the
    model's input lives there). After an edit to it (here: the resize filter) dvc repro re-runs
    training and code_version sends it back to epoch 0 -- yet load_split's cache is keyed by the
    file list, input size and file stamps only, so the re-run trains (and evaluate scores) on the
    tensors the *old* code decoded. The independent expectation: the edited code's load gives what
    the edited code decodes (what it gives into an empty cache)."""
    crops = tmp_path / "crops"
    (crops / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (45, 45, 3), dtype=np.uint8)).save(crops / "images" / f"{i}.png")
    old, new = tmp_path / "old", tmp_path / "new"
    for root in (old, new):
        shutil.copytree(PACKAGE, root / "hsnet", ignore=shutil.ignore_patterns("__pycache__"))
    source = (new / "hsnet" / "tensors.py").read_text()
    assert "img = img.resize((size, size), Image.BILINEAR)" in source
    (new / "hsnet" / "tensors.py").write_text(source.replace("img = img.resize((size, size), Image.BILINEAR)",
                                                             "img = img.resize((size, size), Image.NEAREST)"))
    from hsnet import sources
    assert sources.code_version("hsnet.train", old / "hsnet") != sources.code_version("hsnet.train", new / "hsnet")

    cache = tmp_path / "cache"
    before = _load_with(old, crops, cache, tmp_path / "old.npy")
    fresh = _load_with(new, crops, tmp_path / "empty-cache", tmp_path / "fresh.npy")
    assert not np.array_equal(before, fresh)  # the edit changes what training is fed
    after = _load_with(new, crops, cache, tmp_path / "after.npy")
    assert np.array_equal(after, fresh), "the edited decoding's run was fed the old code's cached tensors"


def test_a_16_bit_array_reaches_the_model_as_the_same_image_sent_as_png():
    """as_rgb_array: 'An (H, W, 3) uint8 array from an array-like image (H, W), (H, W, 3) or (H, W, 4)
    ... as training's reader does'. Training's reader (hsnet.io.open_rgb -> to_rgb) scales a 16-bit
    greyscale image to 8 bits (x / 65535 * 255); the pyfunc decodes the same PNG sent as bytes the
    same way. Sent as the array that PNG holds (np.asarray(Image.open(png)): uint16), the face is
    clipped at 255 instead -- every pixel above 255 of 65535 turns white -- and is classified as a
    blank face, silently. The independent expectation: the same image gives the same input, or the
    array is refused (as an (H, W, 2) one is)."""
    from hsnet.errors import HSNetError
    from hsnet.limits import Limits
    from hsnet.pyfunc import decode_all
    import io

    grey16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    as_png = Image.open(io.BytesIO(buf.getvalue()))
    array = np.asarray(as_png)
    assert array.dtype == np.uint16 and array.max() > 255  # what a client holding that PNG sends
    (from_png,) = decode_all([buf.getvalue()], Limits.from_env())
    try:
        (from_array,) = decode_all([array], Limits.from_env())
    except HSNetError:
        return  # refused, not misread: fine
    diff = np.abs(np.asarray(from_array, np.int16) - np.asarray(from_png, np.int16))
    assert diff.max() <= 1, (f"a 16-bit face sent as an array is {diff.mean():.0f} grey levels (mean) away from "
                             "the same face sent as PNG bytes")


def test_a_sourceless_install_trains_or_says_why(tmp_path):
    """hsnet.sources.code_version: 'The same in a checkout and in the image built from it, wherever it
    lies ... bytecode doesn't count'; the brief asks whether a .pyc-only install (python -m compileall
    -b and the sources dropped, as slim images and some packagers ship) still gets a version. Before
    session 19 tracking.code_version hashed whatever *.py there were; now the closure looks for
    hsnet/train.py, finds only train.pyc, and raises a bare ValueError('no module hsnet.train under
    ...') at the start of every training (and every crop, through crop_state.json): hsnet runs from
    that install, but can't train or crop. The expectation: a version (of the bytecode, or a
    marker that resumes nothing), or an HSNetError that says what to do -- not a ValueError."""
    import compileall

    from hsnet import sources
    from hsnet.errors import HSNetError

    pkg = tmp_path / "site" / "hsnet"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(str(pkg), legacy=True, quiet=1)
    for f in pkg.rglob("*.py"):
        f.unlink()
    assert (pkg / "train.pyc").is_file()
    for module in ("hsnet.train", "hsnet.data.crop"):
        try:
            version = sources.code_version(module, pkg)
        except HSNetError:
            continue
        assert isinstance(version, str) and version
