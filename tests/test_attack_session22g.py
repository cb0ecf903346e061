"""Attack, session 22g: what today's changes (0854ee3..HEAD) say about themselves, held to the code.

Each test quotes the sentence it checks, fails on the code as it stands because of the defect its
docstring names, and passes once that is fixed. All are quick: no training, no MLflow server.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from hsnet import checkpoint, cli
from hsnet.train import _best_as_recorded

ROOT = Path(__file__).resolve().parents[1]


def test_a_file_name_in_an_error_cannot_forge_a_line_at_the_margin(tmp_path, capsys, monkeypatch):
    """docs/security.md, the terminal row (added today): "a name's newline is an escape too, a log
    message's further lines are indented, so every line at the margin is one hsnet wrote
    (`hsnet.logs.printable`)".

    ``hsnet.cli.main`` prints an HSNetError with ``logs.printable(str(exc), lines=True)``: every
    newline of the message is kept as it is, including one that is part of a file name the error
    quotes. A folder source holding a link whose *name* carries a newline (names come from the
    folder, not from the user) makes ``hsnet data fetch`` print a second line at the margin that
    the name wrote: here one that reads like hsnet's own success line."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.jpg").write_bytes(b"x")
    forged = "FORGED hsnet data fetch: 2 file(s) from src -> out"
    os.symlink("/etc/passwd", src / f"a\n{forged}")

    rc = cli.main(["data", "fetch", "--source", str(src), "--out", str(tmp_path / "out")])

    err = capsys.readouterr().err
    assert rc == 2 and "a link to" in err, err  # the refusal itself works
    margin = [line for line in err.splitlines() if line and not line[0].isspace()]
    assert not any(line.startswith("FORGED") for line in margin), (
        f"a file name's newline printed a line of its own at the margin: {err!r}")


def _ckpt(epoch: int, best_epoch: int, accs: list[float]) -> dict:
    history = [{"epoch": i + 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": a}
               for i, a in enumerate(accs[:epoch])]
    state = {"epoch": epoch, "best_acc": accs[best_epoch - 1], "best_epoch": best_epoch,
             "stale": epoch - best_epoch, "history": history}
    return {"format": checkpoint.FORMAT, "meta": {"dataset": "sample"},
            "model": {"w": torch.full((2,), float(epoch))}, "state": state}


def test_a_best_pt_written_from_last_pt_records_its_own_epoch_as_best(tmp_path):
    """hsnet.train._best_as_recorded (today): "Otherwise (checkpoints restored from S3 whose best.pt
    upload was cut off ...) the best epoch's weights are gone: the best becomes ``best.pt``'s epoch
    when the history has it, else ``last.pt``'s own, written to ``best.pt``; either way what the
    run reports is what it holds."

    With no usable best.pt (its upload failed every time, or it is another training's), last.pt of
    epoch 2 naming epoch 1 as best is written to best.pt *before* its state is corrected: best.pt
    then holds epoch 2's weights while its state says ``best_epoch`` 1 with epoch 1's accuracy.
    evaluate records ``checkpoint_epoch = ckpt["state"]["best_epoch"] or ...["epoch"]`` from
    best.pt (hsnet/evaluate.py), so the evaluation (and the version registered from it) names epoch
    1 for weights of epoch 2 -- while last.pt, fixed after the write, says epoch 2 is the best."""
    last = tmp_path / checkpoint.LAST
    ckpt = _ckpt(epoch=2, best_epoch=1, accs=[0.60, 0.55])
    checkpoint.save(last, ckpt)

    _best_as_recorded(last, ckpt)

    best = checkpoint.load(tmp_path / checkpoint.BEST)
    assert torch.equal(best["model"]["w"], torch.full((2,), 2.0))  # epoch 2's weights, as documented
    assert checkpoint.load(last)["state"]["best_epoch"] == 2  # last.pt says so
    assert best["state"]["best_epoch"] == best["state"]["epoch"] == 2, (
        f"best.pt holds epoch 2's weights but records best_epoch {best['state']['best_epoch']} "
        f"(best_acc {best['state']['best_acc']}): evaluate reports that epoch as the checkpoint's")
    assert best["state"]["best_acc"] == pytest.approx(0.55)


def test_group_runs_docstring_matches_where_it_now_runs():
    """pipelines/ablation_pipeline.group_runs' docstring: "Refuses an empty ``checkpoint_uri`` (it
    runs at the start, beside source-version)". Today (24fe3a6) the group step takes
    ``settings["run_items"]``, an output of source-version, so it now runs *after* source-version
    (and after its S3 HEAD of the stem weights), not beside it. Either the sentence or the wiring is
    wrong; read with the compiled pipeline it is the sentence."""
    tree = ast.parse((ROOT / "pipelines" / "ablation_pipeline.py").read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "group_runs")
    doc = " ".join((ast.get_docstring(fn) or "").split())
    import yaml

    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "ablation_pipeline.yaml").read_text(encoding="utf-8")))
    group = next(t for comp in spec["components"].values() for name, t in comp.get("dag", {}).get("tasks", {}).items()
                 if name == "group-runs")
    reads_source_version = "source-version" in str(group["inputs"]["parameters"]["runs"])
    assert not ("beside source-version" in doc and reads_source_version), (
        "group_runs is said to run beside source-version, but it takes source-version's run_items")
