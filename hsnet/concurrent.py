"""Several trainings at once on one machine: processes sharing its GPU, or spread over its GPUs.

One HSNet run at the paper's batch of 32 leaves most of a large GPU idle and takes under half a
GiB (docs/performance.md, section 8), so Table 6's configurations go faster side by side than
one after another. Each run is its own process (its own CUDA context, allocator and Python
interpreter: a crash or an out-of-memory in one ends only that one, and its result is a per-run
record); the GPU time-slices between them. On a machine with several GPUs (:func:`visible_gpus`),
each run starts on the one with the fewest runs (``CUDA_VISIBLE_DEVICES``), unless a device index
was given.
The CPU threads are divided between the runs (``OMP_NUM_THREADS``).

* :func:`run_jobs` runs commands, at most ``concurrent`` at a time: what ``hsnet reproduce
  ablation --concurrent N`` does with its ``dvc exp run --temp`` commands.
* :func:`train_jobs` builds the ``hsnet train`` commands of several settings on the same crops.
* :func:`train_and_evaluate` trains several runs side by side and evaluates each: what a Kubeflow
  ablation pod with ``runs_per_gpu`` > 1 does (components/train_group.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HSNetError
from .io import usable_cores
from .params import PARAMS_FILE
from .tracking import ensure_store

log = logging.getLogger(__name__)

TAIL = 3000  # characters of a job's output kept in its record
RUNS_FILE = "runs.json"  # train_and_evaluate's record of every run
SETTINGS_PREFIX = ".settings-"  # train_and_evaluate's folder of the settings it hands to its runs
# NAME/PARAMS_FILE (hsnet.params): the settings NAME/train was trained with


@dataclass
class Job:
    name: str
    argv: list[str]
    cwd: str | os.PathLike | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment


def check_concurrent(concurrent) -> int:
    if not isinstance(concurrent, int) or isinstance(concurrent, bool) or concurrent < 1:
        raise HSNetError(f"--concurrent {concurrent!r}: give the number of runs at a time, 1 or more")
    return concurrent


def threads_per_job(concurrent: int, cores: int | None = None) -> int:
    """The CPU threads each of ``concurrent`` processes gets: the cores shared out, at least one."""
    return max(1, (cores or usable_cores()) // concurrent)


def visible_gpus(device: str | None = None) -> list[str]:
    """The GPUs concurrent runs are spread over: the first ``torch.cuda.device_count()`` entries of
    ``CUDA_VISIBLE_DEVICES`` (CUDA stops at the first invalid entry, and torch counts as CUDA
    does: "0,1,7" on a 2-GPU machine is 0 and 1), else every GPU torch sees. None to spread over
    when the runs' ``device`` (else ``HSNET_DEVICE``) is the CPU or a GPU index ("cuda:1": every
    run there, as asked), or with one GPU or none."""
    import torch

    from .device import asked

    if asked(device) not in (None, "cuda"):
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in visible.split(",")] if visible is not None else [str(i) for i in range(count)]
    ids = entries[:count]
    return ids if len(ids) > 1 else []


def run_jobs(jobs: list[Job], concurrent: int, *, gpus: list[str] | None = None,
             poll: float = 0.2) -> dict[str, dict]:
    """Run ``jobs``, at most ``concurrent`` at once, in the given order; wait for all. ``gpus``
    (:func:`visible_gpus`): each job starts with ``CUDA_VISIBLE_DEVICES`` set to the one running
    the fewest jobs then (a job's own ``env`` may set it instead).

    Returns {name: {"returncode", "seconds", "started", "ended" (epoch seconds), "output" (the end of
    stdout and stderr), "gpu" (with ``gpus``)}}; a job that
    fails is its record, the others still run. Interrupted (Ctrl-C), every running job is stopped.
    """
    check_concurrent(concurrent)
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise HSNetError(f"job names must be unique: {names}")
    threads = str(threads_per_job(concurrent))
    if concurrent > 1:
        for uri in {j.env.get("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI")) for j in jobs}:
            ensure_store(uri)
    pending, running, results, started = list(jobs), {}, {}, {}
    load = {gpu: 0 for gpu in gpus or []}  # running jobs per GPU
    placed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hsnet-jobs-") as tmp:
        try:
            while pending or running:
                while pending and len(running) < concurrent:
                    job = pending.pop(0)
                    out = open(Path(tmp) / f"{len(results) + len(running)}.log", "w+b")
                    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
                    if load and "CUDA_VISIBLE_DEVICES" not in job.env:
                        placed[job.name] = min(load, key=lambda g: load[g])  # the first of the least busy
                        load[placed[job.name]] += 1
                        env["CUDA_VISIBLE_DEVICES"] = placed[job.name]
                    env.update(job.env)
                    log.info("starting %s (%d running, %d waiting)", job.name, len(running) + 1, len(pending))
                    proc = subprocess.Popen(job.argv, cwd=job.cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
                    running[job.name] = (proc, out, time.perf_counter())
                    started[job.name] = time.time()
                for name, (proc, out, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    out.seek(0)
                    text = out.read().decode("utf-8", "replace")
                    out.close()
                    results[name] = {"returncode": proc.returncode, "seconds": time.perf_counter() - t0,
                                     "started": started[name], "ended": time.time(), "output": text[-TAIL:]}
                    if name in placed:
                        results[name]["gpu"] = placed[name]
                        load[placed[name]] -= 1
                    del running[name]
                    (log.info if proc.returncode == 0 else log.error)(
                        "%s ended with %d after %.0f s", name, proc.returncode, results[name]["seconds"])
                if running:
                    time.sleep(poll)
        finally:
            for proc, out, _ in running.values():
                proc.terminate()
            for proc, out, _ in running.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                out.close()
    return {name: results[name] for name in names if name in results}


def train_jobs(data_dir: str | os.PathLike, params_path: str | os.PathLike, dataset: str,
               runs: dict[str, dict], out_root: str | os.PathLike, *, device: str | None = None,
               track: bool = True, extra: list[str] | None = None) -> list[Job]:
    """``hsnet train`` commands, one per run: ``runs`` maps a run's name (its folder under
    ``out_root``) to its ``--set`` overrides, e.g. {"dib1-fgal0-ktl0-s0": {"model.dib": True, "train.seed": 0}}."""
    from .params import set_text

    jobs = []
    for name, overrides in runs.items():
        argv = [sys.executable, "-m", "hsnet", "train", "--data", str(data_dir), "--params", str(params_path),
                "--dataset", dataset, "--out", str(Path(out_root) / name)]
        for key, value in overrides.items():
            argv += ["--set", f"{key}={set_text(value)}"]
        argv += (["--device", device] if device else []) + ([] if track else ["--no-mlflow"]) + list(extra or [])
        jobs.append(Job(name, argv))
    return jobs


def train_and_evaluate(data_dir: str | os.PathLike, runs: dict, out_root: str | os.PathLike, *,
                       concurrent: int | None = None, checkpoint_uris: dict[str, str] | None = None,
                       checkpoint_every_s: float | None = None, device: str | None = None,
                       track: bool = True) -> dict[str, dict]:
    """Several trainings on the same crops side by side (one GPU, or spread over several), then each finished one evaluated
    on the test split: the step of a Kubeflow ablation pod that trains several configurations.

    ``runs``: a run's name (its folder under ``out_root``) -> its resolved settings
    (:class:`~hsnet.params.Params`). Each trains as its own ``hsnet train`` process, its settings
    handed over in a params file, ``concurrent`` at a time (default: all of them), with
    durable checkpoints at ``checkpoint_uris[NAME]`` when given (a restarted pod resumes every run
    from its last upload). Then the runs that trained are evaluated here, one after another.
    Writes ``NAME/params.yaml`` (the settings, once NAME/train is trained with them),
    ``NAME/train/`` (best.pt, history.json, ...), ``NAME/eval/`` (metrics.json, ...) and
    :data:`RUNS_FILE`: per run its return code, seconds, the end of its output, and its test
    accuracy or what failed. A run that fails (to train or to evaluate) is
    its record; the others go on. Returns what :data:`RUNS_FILE` holds.

    One group at a time per ``out_root`` (a second is refused by name); a group removes the
    settings folder a killed group left there.
    """
    from .io import only_writer, remove_stale_temporaries, safe_join

    if not runs:
        raise HSNetError("no runs to train: give at least one")
    out_root = Path(out_root)
    if any(not isinstance(name, str) or "/" in name or "\\" in name for name in runs):
        raise HSNetError(f"run names are folder names, without '/': {sorted(map(str, runs))}")
    taken = sorted(n for n in runs if n == RUNS_FILE or n.startswith(SETTINGS_PREFIX))
    if taken:
        raise HSNetError(f"run names {taken}: {RUNS_FILE} and {SETTINGS_PREFIX}* are the group's own files; "
                         "name the runs otherwise")
    if concurrent is not None:
        check_concurrent(concurrent)
    folders = {name: safe_join(out_root, name, what="run name") for name in runs}
    out_root.mkdir(parents=True, exist_ok=True)
    with only_writer(out_root, "group of trainings", "wait for it to end, or give another output folder"):
        # holding out_root, no other group is here: any settings folder is a killed group's
        remove_stale_temporaries(out_root, SETTINGS_PREFIX + "*", older_than=-1)
        return _train_and_evaluate(data_dir, runs, out_root, folders, concurrent=concurrent,
                                   checkpoint_uris=checkpoint_uris, checkpoint_every_s=checkpoint_every_s,
                                   device=device, track=track)


def _train_and_evaluate(data_dir, runs: dict, out_root: Path, folders: dict[str, Path], *, concurrent, checkpoint_uris,
                        checkpoint_every_s, device, track) -> dict[str, dict]:
    import yaml

    from .checkpoint import BEST
    from .evaluate import evaluate
    from .io import write_json, write_text

    settings = {name: yaml.safe_dump(params.to_file(), sort_keys=False) for name, params in runs.items()}
    jobs = []
    # the settings go to each `hsnet train` in a file of this call's own; NAME/params.yaml records
    # them once NAME/train is trained with them (a run refused because another training holds
    # NAME/train leaves that training's record alone)
    with tempfile.TemporaryDirectory(prefix=SETTINGS_PREFIX, dir=out_root) as handed:
        for name, params in runs.items():
            folders[name].mkdir(parents=True, exist_ok=True)
            params_file = Path(handed) / f"{name}.yaml"
            params_file.write_text(settings[name], encoding="utf-8")
            extra = []
            if checkpoint_uris and checkpoint_uris.get(name):
                extra += ["--checkpoint-uri", checkpoint_uris[name]]
                if checkpoint_every_s is not None:
                    extra += ["--checkpoint-every", str(checkpoint_every_s)]
            # one `hsnet train` into NAME/train, with no overrides: the params file holds all the settings
            (job,) = train_jobs(data_dir, params_file, params.dataset, {"train": {}}, folders[name],
                                device=device, track=track, extra=extra)
            jobs.append(Job(name, job.argv))
        records = run_jobs(jobs, concurrent or len(jobs), gpus=visible_gpus(device))
    for name, record in records.items():
        if record["returncode"] != 0:
            record["error"] = f"training ended with exit code {record['returncode']}"
            log.error("%s: %s; the end of its output:\n%s", name, record["error"], record["output"])
            continue
        write_text(folders[name] / PARAMS_FILE, settings[name])
        try:
            m = evaluate(folders[name] / "train" / BEST, data_dir, folders[name] / "eval", device=device,
                         track=track, progress=False)
            record["accuracy"] = m["accuracy"]
        except Exception as exc:  # noqa: BLE001 - one run's failure is its record
            log.exception("evaluating %s failed", name)
            record["error"] = f"evaluation failed: {type(exc).__name__}: {exc}"
    write_json(out_root / RUNS_FILE, records)
    return records


def failed(records: dict[str, dict]) -> dict[str, str]:
    """The runs of :func:`train_and_evaluate`'s records that have no test accuracy, with what failed."""
    return {name: r.get("error", "no test accuracy") for name, r in records.items() if "accuracy" not in r}


def export(out_root: str | os.PathLike, records: dict[str, dict], models: str | os.PathLike,
           evaluations: str | os.PathLike) -> None:
    """Copy what :func:`train_and_evaluate` made in ``out_root`` out (the Kubeflow group step's
    artifacts): per finished run ``models/NAME/`` (the trained model, :func:`hsnet.train.export_model`,
    and its ``params.yaml``) and ``evaluations/NAME/`` (its evaluation); :data:`RUNS_FILE` (every
    run's record, the failed ones' too) into ``evaluations``."""
    import shutil

    from .train import export_model

    out_root, models, evaluations = Path(out_root), Path(models), Path(evaluations)
    for name in sorted(records.keys() - failed(records).keys()):
        shutil.copytree(out_root / name / "eval", evaluations / name)
        shutil.copyfile(out_root / name / PARAMS_FILE, export_model(out_root / name / "train", models / name)
                        / PARAMS_FILE)
    evaluations.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_root / RUNS_FILE, evaluations / RUNS_FILE)


def groups_of(items: list, size: int) -> list[list]:
    """``items`` in consecutive groups of ``size`` (the last may be smaller): the runs each GPU pod
    of the ablation trains side by side."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise HSNetError(f"runs_per_gpu {size!r}: give the number of runs per GPU, 1 or more")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]
