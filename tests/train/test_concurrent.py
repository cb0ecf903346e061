"""Several trainings at once (hsnet.concurrent): two CPU processes side by side, each training what
it would train alone; a failing run is a record; a GPU group (the Kubeflow ablation's
runs_per_gpu) trains and evaluates its runs. The ablation's DVC experiments two at a time:
tests/pipeline/test_reproduce.py::test_ablation_with_seeds_then_report."""

from __future__ import annotations

import json
import sys

import pytest

from hsnet import reproduce
from hsnet.concurrent import Job, check_concurrent, run_jobs, threads_per_job, train_jobs
from hsnet.errors import HSNetError

RUNS = {"dib1": {"model.dib": True, "train.seed": 0}, "dib0-s1": {"model.dib": False, "train.seed": 1}}


def _history(path):
    return json.loads((path / "history.json").read_text())


@pytest.mark.slow
def test_two_trainings_at_once_train_what_each_trains_alone(tiny_data, tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    extra = ["--max-epochs", "1", "--set", "train.num_threads=1"]
    jobs = train_jobs(tiny_data, tiny_params, "sample", RUNS, tmp_path / "together", device="cpu", track=False,
                      extra=extra)
    together = run_jobs(jobs, 2)
    assert list(together) == list(RUNS)
    for name, done in together.items():
        assert done["returncode"] == 0, done["output"]
    a, b = together.values()
    assert a["started"] < b["ended"] and b["started"] < a["ended"]  # they did run side by side

    alone = run_jobs(train_jobs(tiny_data, tiny_params, "sample", {"dib1": RUNS["dib1"]}, tmp_path / "alone",
                                device="cpu", track=False, extra=extra), 1)
    assert alone["dib1"]["returncode"] == 0, alone["dib1"]["output"]
    (h_alone,), (h_together,) = _history(tmp_path / "alone" / "dib1"), _history(tmp_path / "together" / "dib1")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert h_together[key] == pytest.approx(h_alone[key], rel=1e-6, abs=1e-7), key
    # the other run trained its own settings: another seed, no DIB
    other = json.loads((tmp_path / "together" / "dib0-s1" / "train_summary.json").read_text())
    assert other["epochs_run"] == 1 and _history(tmp_path / "together" / "dib0-s1")[0]["loss"] != h_alone["loss"]


def test_a_failing_job_is_a_record_and_the_others_run(tmp_path):
    ok = Job("ok", [sys.executable, "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"])
    bad = Job("bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    later = Job("later", [sys.executable, "-c", "open('made', 'w').write('x')"], cwd=tmp_path)
    done = run_jobs([bad, ok, later], 2)
    assert list(done) == ["bad", "ok", "later"]
    assert done["bad"]["returncode"] == 3 and "boom" in done["bad"]["output"]
    assert done["ok"]["returncode"] == 0 and f"threads {threads_per_job(2)}" in done["ok"]["output"]
    assert done["later"]["returncode"] == 0 and (tmp_path / "made").is_file()


def test_a_shared_sqlite_tracking_store_is_created_before_the_runs_start(tmp_path):
    """Two processes creating the same MLflow SQLite store at once: one fails (duplicate column)."""
    db = tmp_path / "mlflow.db"
    code = ("import mlflow, sys; mlflow.MlflowClient(sys.argv[1]).create_experiment(sys.argv[2])")
    jobs = [Job(f"e{i}", [sys.executable, "-c", code, f"sqlite:///{db}", f"e{i}"],
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}) for i in range(2)]
    done = run_jobs(jobs, 2)
    assert all(d["returncode"] == 0 for d in done.values()), {k: d["output"][-500:] for k, d in done.items()}
    import mlflow

    names = {e.name for e in mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()}
    assert {"e0", "e1"} <= names


def test_bad_concurrency_is_refused(tmp_path):
    assert threads_per_job(2, cores=16) == 8 and threads_per_job(8, cores=2) == 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(HSNetError, match="--concurrent"):
            check_concurrent(bad)
    with pytest.raises(HSNetError, match="--concurrent"):
        reproduce.ablation("sample", repo=tmp_path, concurrent=0)
    with pytest.raises(HSNetError, match="unique"):
        run_jobs([Job("a", ["true"]), Job("a", ["true"])], 2)


@pytest.mark.slow
def test_a_gpu_group_trains_its_runs_and_evaluates_each_a_failing_run_is_a_record(tiny_data, tiny_params, tmp_path,
                                                                                 monkeypatch):
    """What one Kubeflow ablation pod with runs_per_gpu=2 does: both runs train at once (as processes),
    the finished one is evaluated on the test split, the failing one (KTL with a stem file that isn't
    there) is a record, and runs.json on disk says the same."""
    import hashlib

    from hsnet.concurrent import train_and_evaluate
    from hsnet.params import Params

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    quick = {"train": {"max_epochs": 1, "num_threads": 1, "seed": 5}, "model": {"dib": False}}
    good = Params.resolve(tiny_params, "sample", quick)
    bad = Params.resolve(tiny_params, "sample", {**quick, "model": {"ktl": True, "stem_weights": str(tmp_path / "no.pt")}})
    out = tmp_path / "group"
    records = train_and_evaluate(tiny_data, {"dib0-seed5": good, "ktl-missing-stem": bad}, out, device="cpu",
                                 track=False)
    assert list(records) == ["dib0-seed5", "ktl-missing-stem"]
    assert json.loads((out / "runs.json").read_text()) == records

    done = records["dib0-seed5"]
    assert done["returncode"] == 0, done["output"]
    metrics = json.loads((out / "dib0-seed5" / "eval" / "metrics.json").read_text())
    cm = metrics["confusion_matrix"]
    assert done["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(len(cm))) / sum(map(sum, cm)))
    best = (out / "dib0-seed5" / "train" / "best.pt").read_bytes()
    assert metrics["checkpoint_sha256"] == hashlib.sha256(best).hexdigest()  # it evaluated this run's model
    assert metrics["split"] == "test" and metrics["model"]["dib"] is False

    failed = records["ktl-missing-stem"]
    assert failed["returncode"] != 0 and "accuracy" not in failed
    assert "training ended with exit code" in failed["error"] and "no.pt" in failed["output"]
    assert not (out / "ktl-missing-stem" / "eval").exists()


def test_group_names_and_sizes(tmp_path, tiny_params):
    from hsnet.concurrent import groups_of, train_and_evaluate
    from hsnet.params import Params

    assert groups_of(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert groups_of(list("abc"), 8) == [["a", "b", "c"]]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(HSNetError, match="runs_per_gpu"):
            groups_of(list("abc"), bad)
    p = Params.resolve(tiny_params, "sample")
    for name in ("../x", "a/b", "/abs", ".."):
        with pytest.raises(HSNetError, match="run name"):
            train_and_evaluate(tmp_path, {name: p}, tmp_path / "out")
    for name in ("runs.json", ".settings-x"):  # the group's own files
        with pytest.raises(HSNetError, match=f"run names \\['{name}'\\]: runs.json and .settings-"):
            train_and_evaluate(tmp_path, {name: p}, tmp_path / "out")
    with pytest.raises(HSNetError, match="--concurrent"):
        train_and_evaluate(tmp_path, {"a": p}, tmp_path / "out", concurrent=0)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_processes_that_each_open_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """Each process goes through hsnet.tracking.connect(), as every hsnet step does, at the same
    moment (they wait for a 'go' file): MLflow's table migrations ran in several at once, and all but
    one failed ("table _alembic_tmp_experiments already exists": two GPU groups on kfp.local)."""
    import time

    db = tmp_path / "store" / "mlflow.db"
    go = tmp_path / "go"
    code = ("import os, sys, time\n"
            "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
            "from hsnet import tracking\n"
            "import mlflow\n"
            "tracking.connect()\n"
            "mlflow.MlflowClient().create_experiment(sys.argv[2])\n")
    import os
    import subprocess

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(go), f"e{i}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(4)]
    time.sleep(3.0)  # every process is waiting by then (not run_jobs: it creates the store before it starts them)
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[-800:] for o in outputs]
    import mlflow

    assert {f"e{i}" for i in range(4)} <= {e.name for e in mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()}


def test_a_group_removes_the_settings_a_killed_group_left_and_refuses_a_second_group(tiny_params, tmp_path):
    """A group killed before its end leaves its settings folder (.settings-*) in out_root: the next
    group there removes it. Two groups into one out_root at once: the second is refused by name,
    before it writes anything."""
    import fcntl
    import os

    from hsnet.concurrent import train_and_evaluate
    from hsnet.params import Params

    out = tmp_path / "group"
    left = out / ".settings-killed"  # what a group killed before its end leaves
    left.mkdir(parents=True)
    (left / "dib1.yaml").write_text("train: {}\n")
    p = Params.resolve(tiny_params, "sample")
    records = train_and_evaluate(tmp_path / "no-crops-here", {"r": p}, out, device="cpu", track=False)
    assert records["r"]["returncode"] != 0  # no crops: the run is a record
    assert sorted(x.name for x in out.iterdir()) == ["r", "runs.json"]  # nothing else left behind

    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)  # another group holds out_root
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(HSNetError, match=f"{out}.*in use"):
            train_and_evaluate(tmp_path / "no-crops-here", {"other": p}, out, device="cpu", track=False)
    finally:
        os.close(fd)
    assert not (out / "other").exists()


@pytest.mark.parametrize("visible, cuda_sees, device, expected", [
    ("0,1", 2, None, ["0", "1"]), ("2,3,5", 3, "cuda", ["2", "3", "5"]),
    ("GPU-8f2c,GPU-91ab", 2, None, ["GPU-8f2c", "GPU-91ab"]),  # UUIDs, as CUDA takes them
    ("0,1,-1,2", 2, None, ["0", "1"]),  # CUDA enumerates up to the first invalid entry (torch counts 2)
    (None, 3, None, ["0", "1", "2"]),  # unset: every GPU
    ("3", 1, None, []), ("", 0, None, []),  # one GPU or none: nothing to spread over
    ("0,1", 2, "cuda:1", []), ("0,1", 2, "cpu", []),  # a device given: every run where it says
])
def test_the_gpus_concurrent_runs_are_spread_over(monkeypatch, visible, cuda_sees, device, expected):
    import torch

    from hsnet.concurrent import visible_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_sees)  # what CUDA reports here
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv("HSNET_DEVICE", raising=False)
    assert visible_gpus(device) == expected
    monkeypatch.setenv("HSNET_DEVICE", "cuda:0")
    assert visible_gpus() == []  # HSNET_DEVICE names one: all there


def test_concurrent_jobs_on_a_machine_with_several_gpus_never_share_one_while_there_are_enough(tmp_path):
    """4 jobs, 2 at a time, 2 GPUs: each job sees one GPU (CUDA_VISIBLE_DEVICES), and two jobs
    running at the same time never see the same one; a job whose env names its own GPU keeps it."""
    code = ("import os, sys, time; print(os.environ['CUDA_VISIBLE_DEVICES']); "
            "time.sleep(float(sys.argv[1]))")
    jobs = [Job(f"j{i}", [sys.executable, "-c", code, str(0.3 + 0.4 * (i % 2))]) for i in range(4)]
    jobs.append(Job("own", [sys.executable, "-c", code, "0"], env={"CUDA_VISIBLE_DEVICES": "7"}))
    records = run_jobs(jobs, 2, gpus=["0", "1"], poll=0.02)
    assert records["own"]["output"].strip() == "7" and "gpu" not in records["own"]
    spread = {n: r for n, r in records.items() if n != "own"}
    for name, r in spread.items():
        assert r["returncode"] == 0 and r["output"].strip() == r["gpu"] in ("0", "1"), (name, r)
    for a in spread:
        for b in spread:
            overlap = spread[a]["started"] < spread[b]["ended"] and spread[b]["started"] < spread[a]["ended"]
            if a < b and overlap:
                assert spread[a]["gpu"] != spread[b]["gpu"], (a, b, spread)
