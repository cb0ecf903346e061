"""What hsnet prints to a terminal can't be steered by the names and texts it prints: a photo named
with an escape sequence (ESC [ 2 J clears the screen; ESC ] 8 makes a link; U+202E reverses what
follows) or a newline (a forged result line) is shown escaped, as ``ls`` and git show such names."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from hsnet.cli import main
from tests.predict.test_predict import photos, trained_ckpt  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

HOSTILE = "x\x1b[2J\x1b]8;;https:evil\x07y\u202etxt.jpg"


def _no_controls(text: str) -> None:
    for bad in ("\x1b", "\x07", "\u202e", "\r"):
        assert bad not in text, (bad, text)


def test_a_photo_name_with_escapes_is_shown_escaped(photos, trained_ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(folder / HOSTILE, format="JPEG")
    (folder / "a\nb: joy (99%).jpg").write_bytes((photos / "astronaut.jpg").read_bytes())
    assert main(["predict", str(folder), "--model", str(trained_ckpt), "--out", str(tmp_path / "r.jsonl"),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    _no_controls(err)
    assert "\\x1b[2J" in err and "\\u202e" in err  # still there to read, as escapes
    lines = [line for line in err.splitlines() if line.startswith(str(folder))]
    assert len(lines) == 2, err  # the newline in the name makes no line of its own
    assert (tmp_path / "r.jsonl").read_text().count("\n") == 2  # the JSON lines keep the real names, escaped by JSON


def test_an_error_naming_a_hostile_file_is_shown_escaped(tmp_path, capsys):
    missing = tmp_path / HOSTILE
    assert main(["predict", str(missing), "--model", "missing.pt"]) == 2
    err = capsys.readouterr().err
    _no_controls(err)
    assert "\\x1b[2J" in err


def test_a_log_line_naming_a_hostile_file_is_shown_escaped(capsys):
    from hsnet import logs

    root = logging.getLogger()
    handlers = root.handlers[:]
    for h in handlers:
        root.removeHandler(h)
    try:
        logs.setup()
        logging.getLogger("hsnet.test").warning("skipped %s", HOSTILE + "\nforged: line")
        err = capsys.readouterr().err
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
    _no_controls(err)
    assert err.count("\n") == 2 and err.splitlines()[1] == "    forged: line", err  # not a log line of its own


def test_a_forged_history_record_is_shown_escaped(local_mlflow, capsys):
    """A promotion record's reason and user are tags anyone with write access to the store can set."""
    from mlflow import MlflowClient

    from hsnet import tracking

    client = MlflowClient(local_mlflow)
    experiment = client.create_experiment(tracking.EXPERIMENT)
    client.create_registered_model("hsnet-x")
    client.create_run(experiment, tags={"step": "promote", "model": "hsnet-x", "action": "promote",
                                        "outcome": "moved", "production": "3", "mlflow.user": "eve\x1b]0;owned\x07",
                                        "reason": "fine\x1b[1A\x1b[2K2026 promote moved 9"})
    assert main(["promote", "--name", "hsnet-x", "--history"]) == 0
    out = capsys.readouterr().out
    _no_controls(out)
    assert "\\x1b[1A" in out and out.count("\n") == 2
