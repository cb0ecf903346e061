"""The command line as a new user meets it: help that says what each verb does and what its
defaults are, and logs without progress-bar debris when the output is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsnet.cli import build_parser

HSNET = str(Path(sys.executable).with_name("hsnet"))


def _verbs(parser):
    for action in parser._actions:
        if action.choices and hasattr(action, "_name_parser_map"):
            for name, sub in action._name_parser_map.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _verbs(sub))


def test_every_verb_says_what_it_does_and_its_defaults():
    parser = build_parser()
    assert "``" not in parser.format_help()  # no reStructuredText markup in the top-level help
    verbs = dict(_verbs(parser))
    assert {"train", "evaluate", "crop", "validate", "predict", "serve", "promote", "data import"} <= set(verbs)
    for name, sub in verbs.items():
        assert sub.description, f"hsnet {name} has no description"
    assert "rafdb, rafd, kdef, ferg, sample" in verbs["train"].format_help()
    assert "threshold (default: 0.9)" in " ".join(verbs["predict"].format_help().split())
    assert "{accuracy,mean_accuracy}" in verbs["promote"].format_help()


@pytest.mark.slow
def test_no_progress_bars_in_a_log(tmp_path):
    """Bars are for terminals: through a pipe (a CI log, a file) crop writes no carriage returns."""
    env = {**os.environ, "HSNET_CACHE_DIR": str(tmp_path / "cache")}
    run = lambda *a: subprocess.run([HSNET, *a], env=env, capture_output=True, text=True, check=True)  # noqa: E731
    run("data", "sample", "--out", str(tmp_path / "raw"), "--per-class", "1", "--size", "80")
    run("data", "import", "--dataset", "sample", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "m.csv"))
    out = run("crop", "--manifest", str(tmp_path / "m.csv"), "--root", str(tmp_path / "raw"), "--out",
              str(tmp_path / "crops"), "--detector", "none", "--size", "80")
    assert "cropped" in out.stdout
    assert "\r" not in out.stderr and "img/s" not in out.stderr, out.stderr[-500:]


def test_train_without_crops_says_which_step_makes_them(tmp_path, capsys):
    from hsnet.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["train", "--data", str(tmp_path / "nope"), "--dataset", "sample", "--params",
                 str(root / "params.yaml"), "--out", str(tmp_path / "run"), "--no-mlflow"]) == 2
    assert "output folder of 'hsnet crop'" in capsys.readouterr().err


def test_crop_runs_where_hsnet_device_says_when_no_device_is_given(tiny_sample, tmp_path, capsys, monkeypatch):
    """README: `HSNET_DEVICE=cuda dvc repro` puts every step on the GPU; dvc.yaml's crop stage gives
    no --device. A machine without a GPU shows where crop went: it refuses cuda by name; without
    HSNET_DEVICE it crops on the CPU; an explicit --device wins over the variable."""
    import torch

    from hsnet.cli import main
    from hsnet.data.datasets import import_dataset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import_dataset("sample", tiny_sample, tmp_path / "manifest.csv")
    args = ["crop", "--manifest", str(tmp_path / "manifest.csv"), "--root", str(tiny_sample), "--detector", "mtcnn",
            "--no-face", "center", "--size", "48"]
    monkeypatch.setenv("HSNET_DEVICE", "cuda")
    assert main(args + ["--out", str(tmp_path / "gpu")]) == 2
    assert "--device cuda: no CUDA GPU is visible" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    monkeypatch.delenv("HSNET_DEVICE")
    assert main(args + ["--out", str(tmp_path / "default")]) == 0


def test_a_crop_without_a_detector_does_not_load_torch(tiny_sample, tmp_path):
    """``hsnet data crop --detector none`` (a dataset already aligned, as the sample and FERG-DB)
    needs no network: it loaded torch (2 s to 3 s per run, each dvc repro) only to read --device."""
    from hsnet.data.datasets import import_dataset

    import_dataset("sample", tiny_sample, tmp_path / "manifest.csv")
    code = ("import sys; from hsnet.cli import main; "
            "rc = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "crop", "--manifest", str(tmp_path / "manifest.csv"),
                           "--root", str(tiny_sample), "--out", str(tmp_path / "out"), "--detector", "none",
                           "--no-face", "center", "--size", "48"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
    assert len(list((tmp_path / "out").rglob("*.png"))) + len(list((tmp_path / "out").rglob("*.jpg"))) == 42


@pytest.mark.parametrize("verb", [
    ["data", "sample", "--per-class", "1", "--size", "48"],
    ["evaluate", "--checkpoint", "{tmp}/missing.pt", "--data", "{tmp}/missing", "--no-mlflow"],
    ["register", "--checkpoint", "{tmp}/missing.pt", "--metrics", "{tmp}/missing.json", "--dataset", "sample"],
])
def test_an_out_that_cant_be_written_is_refused_by_name_before_any_work(tmp_path, capsys, monkeypatch, verb):
    """docs/security.md: an unwritable --out is refused before any work (attack session 13b: these
    three read everything, or registered the model, then died with a traceback). The refusal comes
    first: before the missing checkpoint is noticed, and before any MLflow store is opened."""
    from hsnet.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the output's folder should be\n")
    out = blocker / ("registered.json" if verb[0] == "register" else "out")
    assert main([a.format(tmp=tmp_path) for a in verb] + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err or f"--out {blocker}" in err, err
    assert "missing" not in err and not (tmp_path / "mlflow.db").exists()
