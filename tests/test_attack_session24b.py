"""Session 24b attack: two of everything at once. A team shares one GPU box and one MLflow
registry; two engineers (or a retried step and its original) run the same step at the same time.
Each test runs real processes (``python -m hsnet`` or a small driver around hsnet's own functions).

Where a race window is narrow, the driver of one process pauses at a point of hsnet's own code
(it calls the real function after the pause: nothing of hsnet is replaced), so that the other
process's whole run falls into that window every time instead of now and then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.update(extra)
    return env


def _driver(tmp_path: Path, name: str, body: str) -> Path:
    """A Python script run as its own process: ``body`` after the shared helpers
    (``wait_for(path)``: until the file exists, at most 120 s)."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from pathlib import Path

        def wait_for(path, limit=120.0):
            end = time.monotonic() + limit
            while not Path(path).exists():
                if time.monotonic() > end:
                    raise SystemExit(f"gave up waiting for {path}")
                time.sleep(0.02)
    """) + textwrap.dedent(body))
    return script


def _start(script: Path, env: dict, cwd: Path) -> subprocess.Popen:
    """``script`` as a process, its output into ``<script>.log`` (read with :func:`_output`)."""
    log = open(script.with_suffix(".log"), "w")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = Path(log.name)
    log.close()
    return proc


def _output(proc: subprocess.Popen) -> str:
    return proc.log.read_text(errors="replace")


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 120.0) -> None:
    end = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the first process ended (exit {proc.returncode}) before its pause:\n{_output(proc)[-3000:]}")
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def _b_then_a(pa: subprocess.Popen, pb: subprocess.Popen, paused: Path, go: Path, *, b_alone: float = 60.0):
    """Once A is paused: B runs to its end (or for ``b_alone`` seconds, should it wait for A: a fix
    that makes it wait must not hang the test), then A goes on; both outputs."""
    try:
        _wait_for(paused, pa)
        end = time.monotonic() + b_alone
        # B ends, or says it waits for what A holds (hsnet.registry's lock: "waiting for the lock")
        while pb.poll() is None and time.monotonic() < end and "waiting for the lock" not in _output(pb):
            time.sleep(0.2)
    finally:
        go.touch()
    pb.wait(timeout=120)
    pa.wait(timeout=120)
    return _output(pa), _output(pb)


def _answering(trained, k: int, path: Path) -> Path:
    """The trained checkpoint changed to answer class ``k`` whatever the image."""
    from crafted import answering_checkpoint

    return answering_checkpoint(trained["checkpoint"], k, path)


# --- 1. two `hsnet evaluate` into one --out -----------------------------------------------------

def test_two_evaluations_into_one_out_never_record_each_others_figures(trained, gate_data, tmp_path):
    """README: "MLflow: every train and evaluate run is recorded in experiment hsnet — params, per-epoch
    metrics ... and the artifacts"; hsnet evaluate "writes metrics.json ..., predictions.csv ...,
    confusion_matrix.png and comparison.md". docs/architecture.md: a second train or crop into a
    held --out "is refused". Two evaluations of two checkpoints into one --out (two people, or a
    retried step and the original still running) must either refuse the second by name, or leave
    each evaluation's MLflow record holding its own metrics.json and the folder holding one
    evaluation's files, never a mix.

    evaluate writes its four files one by one into --out and then logs them from --out into its run:
    the second evaluation's files, written meanwhile, are logged as the first one's artifacts (its
    metrics.json names the other run and the other checkpoint), and the folder ends with the figures
    of one and the confusion plot and comparison of the other."""
    import hashlib

    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from hsnet.tracking import ensure_store

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(store)
    env = _env(tmp_path, MLFLOW_TRACKING_URI=store, HSNET_CACHE_DIR=str(tmp_path / "cache"))
    a_ckpt, b_ckpt = _answering(trained, 0, tmp_path / "a.pt"), _answering(trained, 1, tmp_path / "b.pt")
    out = tmp_path / "eval"
    paused, go = tmp_path / "a-paused", tmp_path / "go"

    def argv(ckpt):
        return ["evaluate", "--checkpoint", str(ckpt), "--data", str(gate_data), "--out", str(out)]

    # A pauses once it has written metrics.json and predictions.csv, before its plot (hsnet's own
    # plot_confusion, called after the pause)
    a = _driver(tmp_path, "a", f"""
        import hsnet.evaluate as ev
        from hsnet.cli import main
        real = ev.plot_confusion
        def plot_after_pause(*args, **kwargs):
            Path({str(paused)!r}).touch()
            wait_for({str(go)!r})
            return real(*args, **kwargs)
        ev.plot_confusion = plot_after_pause
        sys.exit(main({argv(a_ckpt)!r}))
    """)
    # B: a plain hsnet evaluate, its imports done while A works
    b = _driver(tmp_path, "b", f"""
        import hsnet.evaluate
        from hsnet.cli import main
        wait_for({str(paused)!r})
        sys.exit(main({argv(b_ckpt)!r}))
    """)
    pa, pb = _start(a, env, tmp_path), _start(b, env, tmp_path)
    out_a, out_b = _b_then_a(pa, pb, paused, go)
    assert pa.returncode == 0, out_a[-3000:]
    if pb.returncode != 0:  # refused: by name, saying what to do
        assert str(out) in out_b and "in use" in out_b, out_b[-3000:]
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a_ckpt, b_ckpt)}
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("hsnet").experiment_id], "tags.step = 'evaluate'")
    for run in runs:
        logged = json.loads((Path(download_artifacts(run_id=run.info.run_id, artifact_path="metrics.json",
                                                     dst_path=str(tmp_path / run.info.run_id),
                                                     tracking_uri=store))).read_text())
        assert (logged["mlflow_run_id"], logged["checkpoint_sha256"]) == \
            (run.info.run_id, run.data.params["checkpoint_sha256"]), (
            f"evaluation run {run.info.run_id} of {run.data.params['checkpoint']} holds as its metrics.json the "
            f"figures of run {logged['mlflow_run_id']} (checkpoint sha256 {logged['checkpoint_sha256'][:12]}…)")
    # the folder: one evaluation's files
    m = json.loads((out / "metrics.json").read_text())
    answered = 0 if m["checkpoint_sha256"] == sha[a_ckpt] else 1
    predicted = {line.split(",")[2] for line in (out / "predictions.csv").read_text().splitlines()[1:]}
    assert predicted == {m["classes"][answered]}, "predictions.csv is of another evaluation than metrics.json"
    assert f"| this run | {m['accuracy'] * 100:.2f} |" in (out / "comparison.md").read_text(), \
        "comparison.md is of another evaluation than metrics.json"


# --- 2. the tensor cache, filled and pruned by two processes -------------------------------------

def _photos(root: Path, tag: str, n: int = 8) -> list[dict]:
    import numpy as np
    from PIL import Image

    rows = []
    for i in range(n):
        rel = f"{tag}/{i}.png"
        (root / tag).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng([i, len(tag)]).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / rel)
        rows.append({"path": rel, "label": i % 2})
    return rows


def test_a_split_just_decoded_is_not_pruned_away_by_another_process_before_it_is_read(tmp_path):
    """README: the cropped images "are decoded once into a memory-mapped uint8 tensor file
    ($HSNET_CACHE_DIR/tensors ... kept under HSNET_CACHE_MAX_GB ... by deleting the least recently
    used files)"; prune_cache: "keep (the split just loaded) is never deleted, however large". The
    cache is shared by every training and evaluation on the machine (docs/architecture.md), and
    README runs trainings side by side (--concurrent, runs_per_gpu).

    load_split puts the decoded file in place, prunes, and only then maps it. Another process's
    prune in between (its own split just made, the cache over its limit) deletes this one's file,
    which is not yet open, and the training or evaluation ends with FileNotFoundError. The file a
    process is about to read must survive another process's prune (map it before pruning, or
    decode again when it is gone)."""
    import json as _json

    root, cache = tmp_path / "crops", tmp_path / "cache"
    rows_a, rows_b = _photos(root, "a"), _photos(root, "bb")
    # the cache holds one split of 8 32x32 images (24,576 bytes), not two: as 20 GB holds one large split
    env = _env(tmp_path, HSNET_CACHE_MAX_GB="0.00003")
    paused, go = tmp_path / "a-paused", tmp_path / "go"

    def call(rows):
        return f"load_split({_json.dumps(rows)}, Path({str(root)!r}), 32, cache_dir=Path({str(cache)!r}), progress=False)"

    # A pauses after its file is in place, before its prune (hsnet's own, called after the pause)
    a = _driver(tmp_path, "a", f"""
        import hsnet.tensors as t
        from hsnet.tensors import load_split
        real = t.prune_cache
        def prune_after_pause(*args, **kwargs):
            Path({str(paused)!r}).touch()
            wait_for({str(go)!r})
            return real(*args, **kwargs)
        t.prune_cache = prune_after_pause
        split = {call(rows_a)}
        print("A read", len(split), "images")
    """)
    b = _driver(tmp_path, "b", f"""
        from hsnet.tensors import load_split
        wait_for({str(paused)!r})
        split = {call(rows_b)}
        print("B read", len(split), "images")
    """)
    pa, pb = _start(a, env, tmp_path), _start(b, env, tmp_path)
    out_a, out_b = _b_then_a(pa, pb, paused, go)
    assert pb.returncode == 0, out_b[-3000:]
    assert pa.returncode == 0, f"the first process's split was deleted under it:\n{out_a[-400:]}"


# --- 3. two `hsnet register` of two checkpoints at once ------------------------------------------

def test_two_registrations_at_once_leave_candidate_on_the_newer_version(trained, gate_data, tmp_path):
    """README: register "registers a new version ... and points the alias candidate at it";
    hsnet.registry._finish: "candidate is the newest registered version: a registration finished
    late never takes it back". Two registrations of two checkpoints at once (two Kubeflow runs, two
    `dvc queue` workers with HSNET_REGISTER_EXPERIMENTS=1) must leave candidate on the newer version.

    _finish reads which version holds candidate, then sets it: check-then-act with nothing held.
    Version 1's registration reads "no candidate yet", version 2's registers meanwhile and takes
    candidate, and version 1's then sets candidate back to 1: `hsnet promote` (which promotes the
    candidate) then never sees version 2, and compares or serves the older model."""
    from mlflow import MlflowClient

    from hsnet.evaluate import evaluate
    from hsnet.tracking import ensure_store

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(store)
    env = _env(tmp_path, MLFLOW_TRACKING_URI=store, HSNET_CACHE_DIR=str(tmp_path / "cache"))
    name = "hsnet-att24b-race"
    args = {}
    with pytest.MonkeyPatch.context() as mp:  # the evaluations register needs, tracked in the store
        mp.setenv("MLFLOW_TRACKING_URI", store)
        mp.chdir(tmp_path)
        for who, k in (("a", 0), ("b", 1)):
            ckpt = _answering(trained, k, tmp_path / f"{who}.pt")
            evaluate(ckpt, gate_data, tmp_path / f"eval-{who}", progress=False)
            args[who] = ["register", "--checkpoint", str(ckpt), "--metrics", str(tmp_path / f"eval-{who}" /
                         "metrics.json"), "--dataset", "sample", "--name", name]
    paused, go = tmp_path / "a-paused", tmp_path / "go"
    # the pyfunc packaging (10 s a version, and nothing to do with aliases) stood in for, as the
    # fixture quick_log_model of tests/conftest.py does for tests of the registry's own steps
    quick = """
        import hsnet.registry as registry_mod
        def quick_log_model(ckpt, *, run_name, params, tags, metrics=None):
            import mlflow
            from hsnet import tracking
            with tracking.run(run_name, params=params, tags=tags) as active:
                mlflow.log_text("stand-in for the pyfunc model", "model/MLmodel")
                uri = f"runs:/{active.info.run_id}/model"
                mlflow.log_param(registry_mod.MODEL_FILES_PARAM, registry_mod._download_digest(uri))
                mlflow.log_param(registry_mod.WEIGHTS_SHA256, "0" * 64)
                return {"model_uri": uri, "run_id": active.info.run_id, registry_mod.WEIGHTS_SHA256: "0" * 64}
        registry_mod.log_model = quick_log_model
    """
    # A (version 1) pauses when it is about to point candidate at its version (MLflow's own call, made
    # after the pause)
    a = _driver(tmp_path, "a", quick + f"""
        from mlflow import MlflowClient
        from hsnet.cli import main
        real = MlflowClient.set_registered_model_alias
        def set_after_pause(self, name, alias, version):
            if alias == "candidate" and not Path({str(paused)!r}).exists():
                Path({str(paused)!r}).touch()
                wait_for({str(go)!r})
            return real(self, name, alias, version)
        MlflowClient.set_registered_model_alias = set_after_pause
        sys.exit(main({args["a"]!r}))
    """)
    b = _driver(tmp_path, "b", quick + f"""
        import mlflow, torch  # imported while A works
        from hsnet.cli import main
        wait_for({str(paused)!r})
        sys.exit(main({args["b"]!r}))
    """)
    pa, pb = _start(a, env, tmp_path), _start(b, env, tmp_path)
    out_a, out_b = _b_then_a(pa, pb, paused, go)
    assert pa.returncode == 0, out_a[-3000:]
    assert pb.returncode == 0, out_b[-3000:]
    client = MlflowClient(store)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert versions == [1, 2], versions
    held = int(client.get_model_version_by_alias(name, "candidate").version)
    assert held == 2, f"candidate is on version {held}, registered before version 2: the newer model is never promoted"
