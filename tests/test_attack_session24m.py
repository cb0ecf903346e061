"""Attack 24m: this afternoon's fixes (io's long names and DECODE_ERRORS, predict's --out/--annotate)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hsnet.errors import HSNetError
from hsnet.io import TMP_SUFFIX, open_rgb, output_file
from hsnet.predict import Classifier, predict

ROOT = Path(__file__).resolve().parents[1]


def _killed_write(path: Path) -> None:
    """An atomic write of ``path`` killed in the middle (os._exit: no cleanup runs), as a killed
    ``hsnet predict --out`` leaves it; its temporary is then made two hours old."""
    code = ("import os, sys\n"
            "from hsnet.io import atomic_path\n"
            "with atomic_path(os.fsdecode(sys.argv[1].encode('utf-8', 'surrogateescape'))) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os._exit(9)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rc = subprocess.run([sys.executable, "-c", code, str(path)], env=env, timeout=60).returncode
    assert rc == 9
    left = [p for p in path.parent.iterdir() if p.name.endswith(TMP_SUFFIX)]
    assert len(left) == 1, left  # the killed write's temporary
    old = time.time() - 7200
    os.utime(left[0], (old, old))


def test_output_file_removes_a_killed_writes_temporary_of_a_long_name(tmp_path):
    """hsnet/io.py output_file: "the temporaries a killed write of it left (an hour old) are
    removed"; atomic_path: "A killed process leaves .NAME.*.tmp: clean_stale_tmp removes old ones".
    Since 10934cc atomic_path cuts a name of more than 241 bytes in its temporary's name
    (_tmp_stem), but output_file still looks for '.<whole name>.*.tmp', so a killed write of a legal
    250-byte --out leaves its temporary (as large as the results written so far) for ever."""
    out = tmp_path / ("r" * 244 + ".jsonl")  # 250 bytes: legal, accepted by output_file
    _killed_write(out)
    output_file(out, "--out")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX))
    assert left == [], f"the killed write's temporary of {len(out.name)}-byte name was not removed: {left}"


def test_output_file_removes_a_killed_writes_temporary_when_the_name_has_brackets(tmp_path):
    """The same promise of output_file ("the temporaries a killed write of it left (an hour old)
    are removed") for an ordinary name with brackets, 'results[1].jsonl': clean_stale_tmp takes
    the name as a glob pattern, where '[1]' means the character '1', so the temporary
    '.results[1].jsonl.XXXXXXXX.tmp' is never matched and never removed."""
    out = tmp_path / "results[1].jsonl"
    _killed_write(out)
    output_file(out, "--out")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX))
    assert left == [], f"the killed write's temporary was not removed: {left}"


def _tiff_with_associated_alpha(path: Path) -> Path:
    """A grayscale TIFF with an alpha channel stored premultiplied (ExtraSamples = 1, 'associated
    alpha', TIFF 6.0 section 18): gray 100, alpha 200. Pillow opens it as mode 'La'."""
    a = np.zeros((8, 8, 2), np.uint8)
    a[..., 0], a[..., 1] = 100, 200
    buf = io.BytesIO()
    Image.fromarray(a, "LA").save(buf, "TIFF")  # ExtraSamples = 2 (unassociated)
    b = bytearray(buf.getvalue())
    assert b[:2] == b"II"
    ifd = struct.unpack_from("<I", b, 4)[0]
    for i in range(struct.unpack_from("<H", b, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", b, entry)[0] == 338:  # ExtraSamples
            struct.pack_into("<H", b, entry + 8, 1)  # associated (premultiplied) alpha
            break
    else:
        raise AssertionError("no ExtraSamples tag written")
    path.write_bytes(bytes(b))
    with Image.open(path) as img:
        img.load()  # Pillow itself decodes it
        assert img.mode == "La" and img.getpixel((0, 0)) == (100, 200)
    return path


def test_open_rgb_reads_a_grayscale_tiff_with_premultiplied_alpha(tmp_path):
    """hsnet/io.py open_rgb: "Decode an image fully as 8-bit RGB, whatever it was stored as.
    Handles ... RGBA/LA (composited on white) ...". A TIFF whose gray+alpha is stored premultiplied
    (a legal TIFF; Pillow decodes it, as mode 'La') is reported by open_rgb (so by validate, crop,
    predict and the server alike) as "not a readable image (ValueError: conversion from La to L not
    supported)": the failure is hsnet's own to_rgb (it composites LA and PA but sends La to
    convert('RGB')), which DECODE_ERRORS now files as a bad photo. Expected: gray 100 premultiplied
    by alpha 200, on white: 100 + 55 = 155."""
    path = _tiff_with_associated_alpha(tmp_path / "gray_alpha.tif")
    rgb = open_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    assert all(abs(c - 155) <= 2 for c in rgb.getpixel((0, 0))), rgb.getpixel((0, 0))


class _Constant(torch.nn.Module):
    def forward(self, x):  # (N, 3, S, S) -> (N, 3) logits
        return torch.zeros(x.shape[0], 3)


def test_annotate_folder_inside_the_out_file_does_not_lose_the_results(tmp_path):
    """hsnet/predict.py: "an unwritable output is refused before any work"; 10934cc: "--out ...
    equal to --annotate refused before loading ... the results file and the folder of annotated
    copies need two names". With `--out results.jsonl --annotate results.jsonl/ann` the check
    passes, check_writable makes the folder results.jsonl/ann (so results.jsonl becomes a folder),
    every photo is processed, and only then is the results file's rename refused
    (IsADirectoryError): all results lost, after the whole run. Expected: refused by name before
    any work (an HSNetError, results.jsonl not turned into a folder), or the results written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (120, 100, 90)).save(photos / "a.jpg")
    out = tmp_path / "results.jsonl"
    clf = Classifier(_Constant(), ["anger", "joy", "neutral"], 64, device="cpu")
    try:
        predict([photos], "unused", out=out, annotate_dir=out / "ann", classifier=clf, progress=False, workers=1)
    except HSNetError:
        assert not out.is_dir(), "refused, but --out was turned into a folder by the check of --annotate"
    except OSError as exc:
        pytest.fail(f"every photo was processed, then the results were lost: {type(exc).__name__}: {exc}")
    else:
        lines = out.read_text().splitlines()
        assert [json.loads(line)["path"] for line in lines] == [str(photos / "a.jpg")]
