"""Attack session 13c: today's changes (io.check_creatable/output_file, the aliases in registered.json
and make pipeline's summary, mtcnn.apart, params.set_text). Each test fails on the code it was
written against and compares with an independent expectation (the kernel's own path resolution,
the documented behaviour, NMS of the photo alone as facenet-pytorch runs it, what the code did
before the change)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


# --- io.check_creatable: the nearest existing part of a path with '..' ------------------------------------

@pytest.fixture
def immutable_folder(tmp_path):
    """A folder nothing can be created in, even by root (chattr +i), holding a writable folder ``a``."""
    base = tmp_path / "base"
    (base / "a").mkdir(parents=True)
    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    if subprocess.run(["chattr", "+i", str(base)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not allowed here")
    try:
        yield base
    finally:
        subprocess.run(["chattr", "-i", str(base)], capture_output=True)


def test_check_creatable_refuses_a_dotdot_path_that_leads_into_a_folder_it_cant_write(immutable_folder):
    """check_creatable walks up the path *lexically* to the nearest part that exists, but the kernel
    resolves `a/missing/../..` to `base` (mkdir creates `missing`, then `..` leaves it): for
    BASE/a/missing/../../out.json it probes `a` (writable) and passes, while the file is written
    in BASE (not writable). The run then does all its work and fails at the write, the very thing
    output_file exists to prevent. BASE/new (the same folder, spelt without '..') is refused."""
    from hsnet.errors import HSNetError
    from hsnet.io import check_creatable, output_file, write_json

    base = immutable_folder
    with pytest.raises(HSNetError):  # the independent expectation: the same target without '..'
        output_file(base / "out.json", "--out")
    target = base / "a" / "missing" / ".." / ".." / "out.json"
    with pytest.raises(OSError):  # where the write really goes: BASE, which can't be written
        write_json(target, {})
    with pytest.raises(HSNetError, match="can't write there"):
        output_file(target, "--out")
    with pytest.raises(HSNetError, match="can't write there"):
        check_creatable(base / "a" / "missing2" / ".." / ".." / "new", "--out")


def test_check_writable_refused_with_dotdot_creates_nothing(immutable_folder):
    """check_writable = check_creatable + mkdir: for BASE/a/m/../../new the probe passes (see above),
    the mkdir creates BASE/a/m and then fails in BASE: the refused run leaves a folder behind
    (check_creatable's promise: 'nothing created for a refused run')."""
    from hsnet.errors import HSNetError
    from hsnet.io import check_writable

    base = immutable_folder
    with pytest.raises(HSNetError):
        check_writable(base / "a" / "m" / ".." / ".." / "new", "--out")
    assert not (base / "a" / "m").exists(), "a refused --out left a folder behind"


# --- hsnet register --out in a DVC experiment --------------------------------------------------------------

def test_register_out_a_folder_inside_a_dvc_experiment_is_refused_by_name(tmp_path, monkeypatch, capsys):
    """hsnet register now refuses an --out it can't write (io.output_file: 'is a folder; give a file
    name') before the registry is touched, but the branch taken inside `dvc exp run`
    (--skip-in-experiments, DVC_EXP_NAME set) writes args.out before that check: an --out that is a
    folder crashes with a raw IsADirectoryError traceback instead of `hsnet register: error: ...`
    and exit status 2 (cli.main's contract for a refused argument)."""
    from hsnet.cli import main

    folder = tmp_path / "registered"
    folder.mkdir()
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    monkeypatch.delenv("HSNET_REGISTER_EXPERIMENTS", raising=False)
    rc = main(["register", "--checkpoint", str(tmp_path / "best.pt"), "--metrics", str(tmp_path / "m.json"),
               "--dataset", "sample", "--out", str(folder), "--skip-in-experiments"])
    assert rc == 2
    assert "is a folder" in capsys.readouterr().err


# --- make pipeline's summary: the advice for a version that is not the candidate ---------------------------

@pytest.mark.parametrize("aliases", [["previous"], []])
def test_summary_does_not_advise_promoting_another_version(tmp_path, aliases):
    """registered.json now records the aliases the version holds. A checkpoint registered again after
    a newer version was promoted holds 'previous' (or, after a rollback and more registrations, no
    alias); the summary still says 'promote it: hsnet promote --name NAME', and hsnet promote
    without --version promotes the 'candidate' alias (its --version help: 'default: the candidate
    alias'), another version: following the advice doesn't promote this one. The advice must name
    the version (--version 1)."""
    from hsnet.summary import summarize

    run = tmp_path / "runs" / "sample"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps({"accuracy": 0.9, "mean_accuracy": 0.8, "images": 10}))
    (run / "registered.json").write_text(json.dumps({
        "name": "hsnet-sample", "version": 1, "model_uri": "models:/hsnet-sample/1", "run_id": "r",
        "aliases": aliases, "test_accuracy": 0.9, "test_mean_accuracy": 0.8, "evaluation_run_id": "e"}))
    lines = summarize(tmp_path / "runs").splitlines()
    promote_lines = [line for line in lines if "hsnet promote" in line]
    # (a rollback is as good for the 'previous' version: it puts that version back)
    assert all("--version 1" in line or ("previous" in aliases and "--rollback" in line)
               for line in promote_lines), promote_lines


# --- registry._result: the alias read -----------------------------------------------------------------------

def test_register_with_the_version_gone_at_the_alias_read_is_an_hsnet_error(monkeypatch):
    """register() (and the already-registered path) now reads the version's aliases with
    client.get_model_version. A version deleted between the search that found it and that read
    (another process, `mlflow` UI) raises MLflow's RESOURCE_DOES_NOT_EXIST out of `hsnet register`
    as a traceback; the registry's other reads turn MlflowException into an HSNetError naming the
    version (promote: 'NAME version N: not found in the registry')."""
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from hsnet import registry
    from hsnet.errors import HSNetError

    class Client:
        def get_model_version(self, name, version):
            raise MlflowException(f"Model Version (name={name}, version={version}) not found",
                                  error_code=RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(registry, "_version_figures", lambda client, mv: {
        "test_accuracy": 0.9, "test_mean_accuracy": 0.8, "evaluation_run_id": "e"})
    mv = SimpleNamespace(version="3", run_id="r", tags={}, aliases=[])
    try:
        registry._existing_result(Client(), "hsnet-sample", mv)
    except HSNetError:
        pass  # refused by name: fine
    except MlflowException as exc:
        pytest.fail(f"a raw MlflowException escaped: {exc.message}")


# --- the batched MTCNN's NMS: float32 precision of the coordinate trick -----------------------------------------------------------

def test_a_photos_nms_does_not_depend_on_its_place_in_the_batch():
    """apart() (the first fix of the cross-photo NMS, replaced by nms_per_image) shifted image i's
    boxes by i * D in float32: for image 7 of a batch of 4000-px photos the
    coordinates are ~30000, where float32's step is 1/512 px, so box coordinates are rounded and
    the IoU of two boxes of that photo changes (0.7000103 -> 0.6999956): a pair the photo alone
    suppresses (IoU > 0.7, as detect_face/facenet-pytorch on that photo, and as apart for image 0)
    is kept at position 7, so a photo's faces still depend on the other photos of its batch (the
    module's docstring: that is what apart() prevents)."""
    import torch
    from torchvision.ops import box_iou, nms

    from hsnet.data.mtcnn import nms_per_image

    a = [1988.769775390625, 2804.665283203125, 2065.31298828125, 2881.20849609375]
    b = [2002.27685546875, 2804.665283203125, 2078.820068359375, 2881.20849609375]
    pair = torch.tensor([a, b])
    assert box_iou(pair[:1].double(), pair[1:].double()).item() > 0.7  # exact: b overlaps a too much
    scores = torch.tensor([0.9, 0.8])
    alone = nms(pair, scores, 0.7).tolist()
    assert alone == [0]  # the photo alone (facenet-pytorch per photo): b suppressed

    boxes = torch.tensor([[0.0, 0.0, 3999.0, 3999.0], a, b])  # image 0's box (D ~ 4000 for the trick)
    inds = torch.tensor([0, 7, 7])
    for method in ("Union", "Min"):
        kept = nms_per_image(boxes, torch.tensor([0.5, 0.9, 0.8]), inds, 0.7, method).tolist()
        assert sorted(i - 1 for i in kept if i > 0) == alone, method


# --- params.set_text: the values train_jobs hands on ----------------------------------------------------------

def test_train_jobs_takes_numpy_numbers_as_it_did(tmp_path):
    """train_jobs wrote each --set value with str() before today (np.float64(0.001) -> 'train.lr=0.001');
    now set_text passes it to yaml.safe_dump, which raises RepresenterError for numpy scalars, so a
    sweep built with numpy (np.logspace learning rates, np.arange seeds) no longer starts. Expected:
    the same --set values as for the Python numbers, read back by parse_set as those numbers."""
    import numpy as np

    from hsnet.concurrent import train_jobs
    from hsnet.params import parse_set

    runs = {"lr": {"train.lr": np.float64(0.001), "train.seed": np.int64(3), "model.dib": np.bool_(True)}}
    (job,) = train_jobs(tmp_path / "data", tmp_path / "params.yaml", "sample", runs, tmp_path / "out", track=False)
    sets = [job.argv[i + 1] for i, a in enumerate(job.argv) if a == "--set"]
    assert parse_set(sets) == {"train": {"lr": 0.001, "seed": 3}, "model": {"dib": True}}
