"""Text files hsnet writes are UTF-8 whatever the machine's locale: in a non-UTF-8 locale (LANG
unset on a minimal image with Python's locale coercion off, a Latin-1 or Windows code page)
predictions.csv was written with the locale's codec, and failed on a photo name outside it.
(hsnet's JSON is ASCII: json.dumps escapes the rest.)"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np


# Python's own answer in this environment is ASCII ("ANSI_X3.4-1968"): the narrowest locale
ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LANGUAGE", "LC_CTYPE")}
    return {**env, **ASCII_LOCALE}


def test_evaluate_writes_predictions_as_utf8_in_an_ascii_locale(tmp_path):
    """predictions.csv holds crop paths, which keep the photos' names (any language)."""
    code = f"""
import numpy as np
from pathlib import Path
from types import SimpleNamespace
from hsnet.evaluate import _write_outputs
m = {{"accuracy": 1.0, "mean_accuracy": 1.0, "confusion_matrix": [[1, 0], [0, 1]],
      "confusion_matrix_normalized": [[1.0, 0.0], [0.0, 1.0]], "per_class_accuracy": {{"a": 1.0, "b": 1.0}},
      "split": "test", "tta_hflip": False, "images": 2}}
data = SimpleNamespace(paths=["images/Jos\\u00e9_\\u00fc.jpg.png", "images/b.png"])
_write_outputs(Path({str(tmp_path)!r}), m, data, [0, 1], [0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]),
               ["a", "b"], "mine", "test")
"""
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["images/José_ü.jpg.png", "images/b.png"]
    assert np.isclose(float(rows[0]["confidence"]), 0.9)
