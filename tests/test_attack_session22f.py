"""Attack 22f: today's fixes, part 2 (components' checks and stem version, terminal escaping, canary)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ESC = "\x1b"


def _tasks(spec: dict, dag: dict, prefix: str = ""):
    for name, task in (dag.get("tasks") or {}).items():
        yield prefix + name, task
        sub = spec["components"].get(task["componentRef"]["name"], {})
        if "dag" in sub:
            yield from _tasks(spec, sub["dag"], prefix + name + "/")


def test_ablation_trainings_without_ktl_keep_their_cache_key_when_the_stem_weights_change(tmp_path):
    """prepare_crops: every step "takes [its part of settings] ... so that its cache key changes with
    its own settings only"; convert.stem_version: "the content version of the VGGFace2 stem weights
    the KTL trainings ... read ... so new weights ... train again". A training with KTL off reads no
    stem weights (hsnet.checkpoint builds it with stem None), so new weights must not change its
    task's inputs. In the ablation's one-run-per-GPU loop every train task (12 of the 24 default runs
    have KTL off) takes source-version's single ``stem_version``, the version of *all* KTL runs'
    weights: uploading new weights retrains the KTL-off runs too (hours of GPU each)."""
    from components.convert import stem_version
    from pipelines.ablation_pipeline import ABLATION_RUNS

    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "ablation_pipeline.yaml").read_text()))
    trains = [(n, t) for n, t in _tasks(spec, spec["root"]["dag"]) if n.endswith("/train-model")]
    assert trains, "the one-run-per-GPU loop has a train-model task"
    name, task = trains[0]
    source = task["inputs"]["parameters"]["stem_version"]
    shared = source == {"componentInputParameter": "pipelinechannel--source-version-stem_version"}

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dataset = next(iter(params["datasets"]))
    params["datasets"][dataset].setdefault("model", {})["stem_weights"] = str(tmp_path / "stem.pt")
    (tmp_path / "stem.pt").write_bytes(b"old weights")
    before = stem_version(params, dataset, ABLATION_RUNS)
    (tmp_path / "stem.pt").write_bytes(b"new weights")
    after = stem_version(params, dataset, ABLATION_RUNS)
    assert any(not r["model"]["ktl"] for r in ABLATION_RUNS)
    assert not (shared and before != after), (
        f"{name}: a KTL-off run's stem_version input is source-version's version of every KTL run's "
        f"weights ({before!r} -> {after!r}), so it trains again when only the KTL runs' weights changed")


def test_a_logged_traceback_is_escaped_and_indented():
    """hsnet.logs._Printable: "Log messages as printable, a message's further lines indented ... a
    file name can't steer the terminal, and every line that starts at the margin is a log line hsnet
    wrote". docs/security.md (the terminal): control characters "are shown as escapes". A
    log.exception (hsnet.concurrent: "evaluating %s failed") prints the exception's message raw: an
    ESC sequence in a name reaches the terminal, and the traceback's lines start at the margin."""
    from hsnet import logs
    from hsnet.errors import HSNetError

    formatter = logs._Printable(logs.FORMAT)
    log = logging.getLogger("hsnet.attack22f")
    try:
        raise HSNetError(f"photo a{ESC}[2Jb.jpg unreadable")
    except HSNetError:
        record = log.makeRecord(log.name, logging.ERROR, __file__, 1, "evaluating %s failed", ("run",),
                                sys.exc_info())
    text = formatter.format(record)
    assert ESC not in text, text
    assert all(line.startswith(" ") for line in text.splitlines()[1:]), text


def test_component_log_lines_are_escaped_under_kfps_executor():
    """components.convert.start_step: "Logging as the hsnet CLI has it"; docs/security.md: log
    lines show control characters as escapes. In a pipeline pod kfp's executor_main configures the
    root logger before the component body runs, so logs.setup()'s basicConfig does nothing and its
    check (a plain Formatter with hsnet's FORMAT) finds kfp's format: the escaping formatter is never
    installed, and every step's log lines (crop's, validate's file names) go out raw."""
    code = (
        "import logging\n"
        "from kfp.dsl import executor_main\n"
        "executor_main._setup_logging()\n"
        "from components.convert import start_step\n"
        "start_step()\n"
        f"logging.getLogger('hsnet.crop').warning('cannot read %s', 'a{ESC}]8;;http://x{ESC}\\\\b.jpg')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)
    out = done.stdout + done.stderr
    assert "cannot read" in out, out
    assert ESC not in out, repr(out)


def test_reproduce_failure_lines_are_escaped(capsys):
    """README/security.md (the terminal): "photo and file names, errors ... are printed with control
    and format characters escaped". `hsnet reproduce` prints each failed run's cause, the last line of
    the child's traceback (hsnet.reproduce.why_failed), through cli._print_failures with print():
    the child's error text, with a file name's ESC sequence, reaches the terminal raw."""
    from hsnet import cli

    output = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
              f"hsnet.errors.HSNetError: photo a{ESC}[2Jb.jpg unreadable\nERROR: failed to reproduce 'train'\n")
    cli._print_failures({"ablation-rafdb-x-seed0": output})
    out = capsys.readouterr().out
    assert "unreadable" in out
    assert ESC not in out, repr(out)


@pytest.mark.parametrize("name", ["\U0001F468\u200d\U0001F469\u200d\U0001F467.jpg",  # family emoji (ZWJ)
                                  "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.jpg"])  # Persian, ZWNJ
def test_printable_keeps_joiners_that_are_part_of_a_name(name):
    """hsnet.logs.printable: escapes what lets a name steer the terminal ("clear the screen, retitle
    the window or make links; ... U+202E turns what follows around"). The brief's independent
    expectation: an emoji or a non-Latin name is shown as it is. A zero-width joiner (every family,
    profession or skin-tone emoji sequence) and the zero-width non-joiner (required in Persian
    spelling) are format characters that steer nothing, yet are printed as \\u200d / \\u200c, so
    such a photo's name is shown mangled in predict's lines and log lines."""
    from hsnet.logs import printable

    assert printable(name) == name


def test_check_canary_refuses_a_bool():
    """hsnet.deploy.check_canary: "A canary share is a percentage of the traffic: 0 to 100". True
    is not a percentage (a flag passed where the share goes, e.g. promote_and_deploy(..., True)),
    but int(True) is 1: it is accepted and set_model rolls out with canaryTrafficPercent 1."""
    from hsnet.deploy import check_canary
    from hsnet.errors import HSNetError

    with pytest.raises(HSNetError):
        check_canary(True)


def test_a_blank_mlflow_uri_that_passes_the_check_does_not_replace_the_pods_uri(monkeypatch):
    """components.convert.check_run refuses an empty ``mlflow_tracking_uri`` unless the pod has
    MLFLOW_TRACKING_URI ("each step would record into a store inside its own pod, deleted with
    it"), and counts a blank one (a space typed in the UI) as empty: with the pod's URI set, " "
    passes. But every step then runs start_step(" "), which puts " " into MLFLOW_TRACKING_URI over
    the pod's URI (it tests ``if mlflow_tracking_uri:``, not its strip()): hsnet.tracking uses " "
    as the store, a folder inside the pod, the very loss the check is there to prevent."""
    from components.convert import check_run, start_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kubeflow:5000")
    check_run("rafdb", crop_device="cpu", mlflow_tracking_uri=" ", checkpoint_uri="")  # accepted
    start_step(" ")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.kubeflow:5000"
