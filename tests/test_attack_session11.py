"""Session 11 attack: state that lives in the wrong place or outlives/undercuts its owner
(model download cache, tensor cache, stores relative to the current folder, DVC experiment copies,
two verbs on the same outputs). Each test is a reproduction that fails on the code it was written
against (2026-11-29, after 11ccbbc)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hsnet.errors import HSNetError

ROOT = Path(__file__).resolve().parents[1]


def _answers(trained, k: int, out: Path) -> tuple[Path, Path]:
    """The trained checkpoint changed to answer class ``k`` whatever the image, evaluated with MLflow
    tracking in the current store (what register needs): (checkpoint, metrics.json)."""
    from hsnet.evaluate import evaluate

    from crafted import answering_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    path = answering_checkpoint(trained["checkpoint"], k, out / f"class{k}.pt")
    evaluate(path, trained["data"], out / "eval", progress=False)
    return path, out / "eval" / "metrics.json"


def test_a_version_number_reused_after_the_model_was_deleted_loads_the_new_model(local_mlflow, trained, tmp_path):
    """The model cache is keyed by (tracking URI, name, version); a registered model deleted (MLflow UI,
    `mlflow` client) and registered again starts again at version 1, with other weights. The cached copy
    of the old version 1 outlives it: `hsnet predict --model models:/NAME/1` must load the new one."""
    from mlflow import MlflowClient

    from hsnet.predict import Classifier, load_classifier
    from hsnet.registry import register

    name = "hsnet-att11-reused"
    old_ckpt, old_metrics = _answers(trained, 1, tmp_path / "old")
    assert register(old_ckpt, old_metrics, "sample", name=name)["version"] == 1
    load_classifier(f"models:/{name}/1")  # cached
    MlflowClient().delete_registered_model(name)
    new_ckpt, new_metrics = _answers(trained, 2, tmp_path / "new")
    assert register(new_ckpt, new_metrics, "sample", name=name)["version"] == 1
    x = [np.asarray(Image.open(sorted((trained["data"] / "images").rglob("*.png"))[0]).convert("RGB"))]
    got = load_classifier(f"models:/{name}/1").probabilities(x)  # today: ModelChanged ("changed after registration")
    want = Classifier.from_checkpoint(new_ckpt, device="cpu").probabilities(x)
    np.testing.assert_allclose(got, want, atol=1e-5)



TINY = {"input_size": 80, "import": {"split_by": "class", "seed": 0}, "validate": {"min_size": 32},
        "crop": {"detector": "none", "size": 80}, "model": {"ktl": False},
        "train": {"lr": 0.001, "epochs": 1, "batch_size": 16, "seed": 3}}


@pytest.mark.slow
def test_an_experiment_kept_in_the_workspace_gets_registered_by_the_next_repro(tmp_path):
    """README: `dvc exp run -S ...` registers nothing (register writes {"registered": false} and
    DVC records that file in dvc.lock). A user who keeps the experiment (it ran in the workspace:
    commit it; or `dvc exp apply` a --temp one) and runs `dvc repro` to ship it finds the pipeline
    "up to date": the experiment's no-op marker stands as the register stage's result and the
    workspace's best.pt is never registered (`hsnet promote` then works on an older candidate, or
    on none). Only `dvc repro -f -s register@NAME`, documented nowhere, registers it."""
    import hashlib

    from mlflow import MlflowClient

    sys.path.insert(0, str(ROOT / "tests"))
    from dvcrepo import make_repo

    path = tmp_path / "repo"
    path.mkdir()
    env, sh = make_repo(path, TINY, per_class=2)
    sh("dvc", "exp", "run", "-S", "datasets.sample.train.lr=0.002", "--name", "lr2")
    sh("git", "add", "-A")  # keep the experiment: it is the workspace now
    sh("git", "commit", "-qm", "lr 0.002")
    again = sh("dvc", "repro")
    registered = json.loads((path / "runs/sample/registered.json").read_text())
    best = hashlib.sha256((path / "runs/sample/train/best.pt").read_bytes()).hexdigest()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    shas = {v.version: v.tags.get("checkpoint_sha256") for v in client.search_model_versions("name='hsnet-sample'")} \
        if client.search_registered_models("name='hsnet-sample'") else {}
    assert best in shas.values(), (f"the kept experiment's best.pt {best[:12]} is in no version {shas}; "
                                   f"registered.json {registered}; dvc repro said: {again.stdout[-300:]}")


def test_a_crop_stopped_half_way_leaves_no_crops_of_its_settings_to_a_rerun_of_the_old_ones(tmp_path):
    """`hsnet crop` with other settings (here --size 96 over a finished --size 80 run) stopped half-way
    (Ctrl-C, a kill, a full disk: here a write that fails at the last photo) has replaced part of
    the crops, while crop_state.json still says they are the finished run's. Crop again with the old
    settings (the user goes back) and every crop it replaced is "unchanged" and reused: the output
    folder mixes two settings' crops under a manifest and report that name one."""
    from hsnet.data.crop import crop
    from hsnet.data.datasets import import_dataset
    from hsnet.data.manifest import read_manifest
    from hsnet.data.sample import generate
    from hsnet.params import CropParams

    generate(tmp_path / "raw", per_class=2, size=120, seed=7)
    import_dataset("sample", tmp_path / "raw", tmp_path / "manifest.csv")
    out = tmp_path / "crops"
    small, large = CropParams(detector="none", size=80), CropParams(detector="none", size=96)
    crop(tmp_path / "manifest.csv", tmp_path / "raw", out, settings=small, progress=False)
    rows = read_manifest(out / "manifest.csv")
    real_save, saved = Image.Image.save, []

    def disk_full_at_the_last(self, fp, *args, **kwargs):  # the run below stops at its last photo
        if len(saved) == len(rows) - 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(HSNetError, match="can't write the crop"):
        mp.setattr(Image.Image, "save", disk_full_at_the_last)
        crop(tmp_path / "manifest.csv", tmp_path / "raw", out, settings=large, progress=False, workers=1)
    report = crop(tmp_path / "manifest.csv", tmp_path / "raw", out, settings=small, progress=False)
    sizes = {}
    for r in read_manifest(out / "manifest.csv"):
        with Image.open(out / r["path"]) as im:
            sizes.setdefault(im.size, []).append(r["path"])
    assert set(sizes) == {(80, 80)}, (f"crops of another size under settings {report['settings']}: "
                                      f"{ {k: len(v) for k, v in sizes.items()} } ({report['reused']} reused)")


def test_what_a_killed_model_download_left_is_removed_by_later_runs(local_mlflow, trained, tmp_path):
    """`hsnet predict --model models:/...` downloads into <cache>/models/<server>/.download-XXXX and
    renames it when complete; killed during the download (SIGKILL, an OOM kill, a pod evicted) its
    `finally` never runs and the partial copy stays. The cache keeps "the five most recently used
    versions", but its pruning skips dot-folders, so every such leftover stays for ever (a model is
    ~62 MB of weights plus code). The tensor cache drops its killed decodes' files after a day
    (hsnet.tensors.prune_cache); the model cache never does."""
    import time

    from hsnet.predict import load_classifier
    from hsnet.registry import register

    name = "hsnet-att11-leftover"
    ckpt, metrics = _answers(trained, 1, tmp_path / "m")
    register(ckpt, metrics, "sample", name=name)
    load_classifier(f"models:/{name}/1")
    (server,) = (tmp_path / "cache" / "models").iterdir()
    leftover = server / ".download-killed1"  # what tempfile.mkdtemp(prefix=".download-") made, half filled
    (leftover / "model" / "data").mkdir(parents=True)
    (leftover / "model" / "data" / "model.pt").write_bytes(b"\0" * (1 << 20))
    old = time.time() - 3 * 86_400
    for p in [leftover, *leftover.rglob("*")]:
        os.utime(p, (old, old))
    load_classifier(f"models:/{name}/1")  # later runs, days after the kill
    load_classifier(f"models:/{name}/1")
    assert not leftover.exists(), f"{leftover} left by a killed download three days ago is still in the cache"


STAND_IN_STAGE = '''import json, pathlib, sys, yaml
item = sys.argv[1]
p = yaml.safe_load(open("params.yaml"))["datasets"][item]
accuracy = 0.2 if "epochs" in (p.get("train") or {}) else 0.9  # a short run scores less
out = pathlib.Path("runs", item, "eval")
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"dataset": item, "accuracy": accuracy, "mean_accuracy": accuracy,
                                               "model": p.get("model") or {}}))
'''


def _stand_in_repo(tmp_path, monkeypatch, datasets=("sample",)):
    """A git + DVC repository with the project's params.yaml and an evaluate stage that writes a
    metrics.json (accuracy 0.9, or 0.2 when train.epochs is set): what hsnet.reproduce runs and
    reads (dvc exp run/remove/show) is real, training is not. Returns (repo, sh)."""
    import shutil

    import yaml

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def sh(*cmd):
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True,
                              env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return proc

    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "stage.py").write_text(STAND_IN_STAGE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {"foreach": "${datasets_to_run}", "do": {
        "cmd": "python stage.py ${item}", "deps": ["stage.py"],
        "params": ["datasets.${item}.model", "datasets.${item}.train"],
        "metrics": [{"runs/${item}/eval/metrics.json": {"cache": False}}]}}}}))
    for name in datasets:
        (repo / "data" / "raw" / name).mkdir(parents=True)
        (repo / "data" / "raw" / name / "placeholder.png").write_bytes(b"x")
    sh("git", "init", "-q", "-b", "main")
    sh("dvc", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "repo")
    return repo, sh


@pytest.mark.slow
def test_rerunning_the_ablation_keeps_the_finished_runs_until_their_replacements_finish(tmp_path, monkeypatch):
    """`hsnet reproduce ablation` runs `dvc exp remove NAME` before it runs (or queues) NAME again. A
    re-run that fails (a code change broke training, a missing file), is stopped, or is queued and
    never started has already deleted the finished experiment: days of Table 6 runs gone, and
    `hsnet reproduce report` then says "missing". Real DVC and reproduce.ablation/collect on a
    stand-in evaluate stage (the experiments' bookkeeping is what is tested, not training).
    `hsnet reproduce datasets` (paper-* experiments) does the same."""
    from hsnet import reproduce

    repo, sh = _stand_in_repo(tmp_path, monkeypatch)
    rows = [(False, False, False), (True, False, False)]  # two of Table 6's rows (--configs): 2 runs a round
    first = reproduce.ablation("sample", repo=repo, seeds=1, configs=rows)
    assert len(first["ran"]) == 2 and not first["failed"], first
    before = sorted(r["experiment"] for r in reproduce.collect(repo) if str(r["experiment"]).startswith("ablation-"))
    assert len(before) == 2, before

    (repo / "stage.py").write_text("raise SystemExit('training broke')\n")  # a code change that breaks the runs
    sh("git", "commit", "-qam", "a change that breaks training")
    second = reproduce.ablation("sample", repo=repo, seeds=1, configs=rows)
    assert len(second["failed"]) == 2, second
    after = sorted(r["experiment"] for r in reproduce.collect(repo) if str(r["experiment"]).startswith("ablation-"))
    assert after == before, f"finished ablation runs deleted by a re-run that failed: {before} -> {after}"

    # a re-run that finishes replaces them, under the same names (one run per configuration and seed)
    (repo / "stage.py").write_text(STAND_IN_STAGE.replace("0.2 if", "0.3 if"))  # the sample sets train.epochs
    sh("git", "commit", "-qam", "training fixed")
    third = reproduce.ablation("sample", repo=repo, seeds=1, configs=rows)
    assert sorted(third["ran"]) == before and not third["failed"], third
    rows = [r for r in reproduce.collect(repo) if str(r["experiment"]).startswith("ablation-")]
    assert sorted(r["experiment"] for r in rows) == before and {r["accuracy"] for r in rows} == {0.3}


@pytest.mark.slow
def test_a_quick_check_experiment_is_not_reported_as_the_papers_setting(tmp_path, monkeypatch):
    """`hsnet reproduce report` fills Tables 2-5 ("the paper's setting") with every experiment whose
    DIB/FGAL/KTL switches are on, keeping per seed the latest: a 5-epoch check of RAF-DB run after
    `hsnet reproduce datasets` (`dvc exp run -S +datasets.rafdb.train.epochs=5`, train.seed 0 as
    every run without -S) replaces paper-rafdb-seed0 in Table 5 and docs/results.md reports the
    short run's accuracy as the paper setting's."""
    from hsnet import reproduce
    from hsnet.model.ktl import vggface2_cache_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    vggface2_cache_path().parent.mkdir(parents=True)
    vggface2_cache_path().write_bytes(b"stand-in: the stage does not read it")
    repo, sh = _stand_in_repo(tmp_path, monkeypatch, datasets=("rafdb",))
    done = reproduce.datasets(["rafdb"], repo=repo, seeds=1)
    assert done["ran"] == ["paper-rafdb-seed0"], done
    sh("dvc", "exp", "run", "--temp", "evaluate@rafdb", "-S", "datasets_to_run=[rafdb]",
       "-S", "+datasets.rafdb.train.epochs=5", "--name", "rafdb-quick-check")
    reproduce.report(tmp_path / "results.md", repo=repo)
    (row,) = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| Table 5 |")]
    assert "| 90.00 |" in row, f"Table 5 (RAF-DB, the paper's setting) reports another run: {row}"


def test_a_moved_project_keeps_recording_its_artifacts_inside_itself(tmp_path, monkeypatch):
    """The local store's experiment `hsnet` records its artifact folder as an absolute file:// URI
    (<project>/mlflow/artifacts, 11ccbbc). Move or rename the project (mv ~/hsnet ~/work/hsnet, a CI
    workspace copied elsewhere) and every later run, found through the moved store, writes its
    artifacts to the OLD path, re-creating folders outside the project (or failing where that path
    can't be written), without a word; the old runs' artifacts (registered models) are not found."""
    import shutil

    import mlflow
    from mlflow import MlflowClient

    from hsnet import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    old, new = tmp_path / "old" / "project", tmp_path / "new" / "project"
    old.mkdir(parents=True)
    monkeypatch.chdir(old)
    with tracking.run("before", params={"a": 1}, tags={}):
        mlflow.log_text("one", "note.txt")
    mlflow.set_tracking_uri(None)
    new.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    shutil.move(str(old), str(new))
    shutil.rmtree(tmp_path / "old")
    monkeypatch.chdir(new)
    # refused before anything is written (MLflow can't move an experiment's recorded location) ...
    with pytest.raises(tracking.TrackingUnavailable, match="mlflow experiments rename"):
        with tracking.run("after", params={"a": 2}, tags={}):
            mlflow.log_text("two", "note.txt")
    mlflow.set_tracking_uri(None)
    assert not (tmp_path / "old").exists()
    # ... and once the old experiment is renamed as the message says, the runs record inside the project
    client = MlflowClient(f"sqlite:///{new / 'mlflow' / 'mlflow.db'}")
    client.rename_experiment(client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id, "hsnet-old")
    with tracking.run("after", params={"a": 2}, tags={}) as active:
        mlflow.log_text("two", "note.txt")
        run_id = active.info.run_id
    mlflow.set_tracking_uri(None)
    uri = client.get_run(run_id).info.artifact_uri
    assert not (tmp_path / "old").exists() and uri.startswith(new.as_uri()), \
        f"the moved project's run keeps its artifacts at {uri}, outside {new}"


def test_a_photo_replaced_under_its_name_is_new_data_for_training(tmp_path):
    """The data version (MLflow's data_version/test_data_version, train --resume auto, promote's "same
    test data" gate) is the sha256 of the crops' manifest, which holds names, labels, splits and
    boxes but nothing of the pixels. With the paper's RAF-DB and FERG settings (detector none) a
    photo replaced under the same name (a corrected or re-exported image) changes the crops but not
    the version: `dvc repro` re-crops, then train --resume auto "resumes" the finished last.pt of the
    old pixels, and best.pt stays the model of the old data."""
    import hashlib

    from hsnet import tracking
    from hsnet.data.crop import crop
    from hsnet.data.datasets import import_dataset
    from hsnet.data.manifest import read_manifest
    from hsnet.data.sample import generate
    from hsnet.params import CropParams, Params
    from hsnet.train import train

    raw, crops, run = tmp_path / "raw", tmp_path / "crops", tmp_path / "run"
    generate(raw, per_class=2, size=96, seed=5)
    import_dataset("sample", raw, tmp_path / "manifest.csv")
    settings = CropParams(detector="none", size=80)
    crop(tmp_path / "manifest.csv", raw, crops, settings=settings, progress=False)
    params = tmp_path / "params.yaml"
    params.write_text("datasets:\n  sample:\n    input_size: 80\n    crop: {detector: none, size: 80}\n"
                      "    model: {ktl: false}\n    train: {lr: 0.001, epochs: 1, batch_size: 16, seed: 3}\n")
    p = Params.resolve(params, "sample")
    train(crops, p, run, track=False, progress=False)
    before = tracking.data_version(crops / "manifest.csv"), hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()

    train_rows = [r for r in read_manifest(tmp_path / "manifest.csv") if r["split"] == "train"]
    for r in train_rows[: len(train_rows) // 2]:  # half the training photos corrected in place
        photo = raw / r["path"]
        with Image.open(photo) as im:
            im.convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(photo)
    assert crop(tmp_path / "manifest.csv", raw, crops, settings=settings, progress=False)["processed"] > 0
    train(crops, p, run, resume="auto", track=False, progress=False)  # what dvc repro's train stage runs
    after = tracking.data_version(crops / "manifest.csv"), hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    assert after[0] != before[0] and after[1] != before[1], \
        f"new pixels, same data version {after[0]}; best.pt {'unchanged' if after[1] == before[1] else 'retrained'}"


def test_make_pipelines_summary_after_an_experiment_in_the_workspace(trained, tmp_path):
    """`dvc exp run -S ...` (in the workspace, README) leaves runs/<dataset>/registered.json as
    {"registered": false, "experiment": ...} (the register stage's --skip-in-experiments). The next
    `make pipeline` (dvc repro: up to date) ends with `python -m hsnet.summary runs`, which reads
    registered.json's name/version/model_uri: a KeyError traceback, and make fails."""
    import shutil

    runs = tmp_path / "runs" / "sample"
    (runs / "eval").mkdir(parents=True)
    shutil.copy(trained["metrics"], runs / "eval" / "metrics.json")
    env = {**os.environ, "DVC_EXP_NAME": "lr-0.002"}
    env.pop("HSNET_REGISTER_EXPERIMENTS", None)
    reg = subprocess.run([sys.executable, "-m", "hsnet", "register", "--checkpoint", str(trained["checkpoint"]),
                          "--metrics", str(runs / "eval" / "metrics.json"), "--dataset", "sample",
                          "--out", str(runs / "registered.json"), "--skip-in-experiments"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert reg.returncode == 0 and json.loads((runs / "registered.json").read_text())["registered"] is False, reg.stderr
    summary = subprocess.run([sys.executable, "-m", "hsnet.summary", "runs"], cwd=tmp_path, capture_output=True,
                             text=True, env={k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"})
    assert summary.returncode == 0, summary.stderr[-800:]
    assert "sample: test accuracy" in summary.stdout


def test_best_pt_is_the_best_epoch_after_a_stop_between_the_two_checkpoint_writes(tiny_data, tmp_path):
    """Each improving epoch writes last.pt, then best.pt (hsnet.train.save_epoch). Stopped between the
    two (a kill, or a full disk while writing best.pt: "training stops and the previous one stays
    whole"), last.pt already records the new best epoch while best.pt still holds an older one; the
    resumed run never writes best.pt again unless a later epoch beats the recorded best, so it ends
    with best.pt = an older epoch's weights under a summary naming another. (hsnet.durable uploads
    best.pt first for exactly this reason; the local writes are in the other order.)"""
    import shutil

    from hsnet.params import Params
    from hsnet.train import train

    params = tmp_path / "params.yaml"
    params.write_text("datasets:\n  sample:\n    input_size: 80\n    crop: {detector: none, size: 80}\n"
                      "    model: {ktl: false}\n    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3}\n")
    p, run = Params.resolve(params, "sample"), tmp_path / "run"
    train(tiny_data, p, run, track=False, progress=False, stop_after_epochs=1)
    shutil.copy(run / "best.pt", tmp_path / "best-epoch1.pt")
    (run / "best.pt").unlink()
    (run / "best.pt").mkdir()  # epoch 2's best.pt can't be written (as on a full disk); last.pt can
    (run / "best.pt" / "x").write_text("x")
    with pytest.raises(HSNetError, match="best.pt"):  # epoch 2 improved: its best.pt write failed
        train(tiny_data, p, run, resume=True, track=False, progress=False)
    shutil.rmtree(run / "best.pt")
    shutil.copy(tmp_path / "best-epoch1.pt", run / "best.pt")  # the previous one, whole
    summary = train(tiny_data, p, run, resume=True, track=False, progress=False)  # space freed: resume
    best = torch.load(run / "best.pt", weights_only=True)
    epoch_in_best = len(best["state"]["history"]) if "state" in best else best["meta"].get("epoch")
    assert epoch_in_best == summary["best_epoch"], \
        f"best.pt holds epoch {epoch_in_best}'s weights, the run says its best epoch is {summary['best_epoch']}"


def test_two_registrations_of_one_checkpoint_at_once_make_one_version(local_mlflow, trained, tmp_path):
    """README: "Registering the same checkpoint again returns the existing version." register looks
    for a version with the checkpoint's sha256, then logs the model (seconds) and registers it: two
    registrations at once (two Kubeflow runs whose train and evaluate steps were cached, parallel
    `dvc queue` workers with HSNET_REGISTER_EXPERIMENTS=1) both find none and make two versions of
    one file; the second moves `candidate` and promote then compares the model with itself."""
    from mlflow import MlflowClient

    ckpt, metrics = _answers(trained, 1, tmp_path / "m")
    name = "hsnet-att11-twice"
    cmd = [sys.executable, "-m", "hsnet", "register", "--checkpoint", str(ckpt), "--metrics", str(metrics),
           "--dataset", "sample", "--name", name]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    versions = sorted(int(v.version) for v in MlflowClient(local_mlflow).search_model_versions(f"name='{name}'"))
    assert versions == [1], f"one checkpoint registered as versions {versions}: {[o.splitlines()[-1] for o in outs]}"
