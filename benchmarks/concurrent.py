"""Several trainings at once on one device (hsnet.concurrent, ``hsnet reproduce ablation --concurrent N``):
aggregate training images/s of N processes side by side, each ``hsnet train``'s loop on its own
synthetic split held on the device.

Each process warms up (compilation, cuDNN autotuning), waits until all are ready, then trains for
the same ``--seconds``; the aggregate is the sum of their rates. On a GPU: 224x224, batch 32, the
data on the device, CUDA graphs, N = 1, 2, 4, 8 (and the GPU's busy % seen by the first process);
on a CPU: 80x80, N = 1, 2 (the cores shared out between the processes).

    python -m benchmarks.concurrent [--runs 1,2,4,8] [--seconds 20] [--smoke]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from .common import parser, save

READY_TIMEOUT_S = 600


def worker(args) -> None:
    from .device_data import GpuBusy, trainer

    folder, i, n_runs = Path(args.worker), args.index, args.of
    gpu = torch.cuda.is_available()
    try:
        epoch, setup = trainer("cuda" if gpu else "cpu", args.size, args.batch, args.images, on_device=True,
                               compile_mode=args.compile, seed=i)
        epoch()  # warm-up
    except BaseException:
        (folder / f"failed-{i}").touch()  # the others stop waiting for this one
        raise
    (folder / f"ready-{i}").touch()
    deadline = time.time() + READY_TIMEOUT_S
    while len(list(folder.glob("ready-*"))) < n_runs and time.time() < deadline:
        if list(folder.glob("failed-*")):
            raise SystemExit("another run of this trial failed to start; not timing a partial trial")
        time.sleep(0.05)
    with GpuBusy() as busy:
        seen, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            seen += epoch()
        if gpu:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    result = {"images": seen, "seconds": elapsed, "img_s": seen / elapsed, "gpu_busy_pct": busy.mean if i == 0 else None,
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if gpu else None}
    (folder / f"result-{i}.json").write_text(json.dumps(result))


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--runs", default=None, help="numbers of concurrent runs, e.g. 1,2,4,8")
    p.add_argument("--seconds", type=float, default=None, help="timed training per process")
    p.add_argument("--compile", default=None, help="train.compile mode (default: reduce-overhead on a GPU)")
    p.add_argument("--mps", action="store_true",
                   help="run the processes under a private NVIDIA MPS daemon (their kernels may overlap)")
    p.add_argument("--worker", default=None, help=argparse_hidden())
    p.add_argument("--index", type=int, default=0, help=argparse_hidden())
    p.add_argument("--of", type=int, default=1, help=argparse_hidden())
    p.add_argument("--size", type=int, default=80, help=argparse_hidden())
    p.add_argument("--batch", type=int, default=32, help=argparse_hidden())
    p.add_argument("--images", type=int, default=64, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    from hsnet.concurrent import Job, run_jobs

    gpu = torch.cuda.is_available()
    if args.smoke:
        runs, seconds, size, batch, images = [1, 2], 1.0, 80, 4, 8
    elif gpu:
        runs, seconds, size, batch, images = [1, 2, 4, 8], 20.0, 224, 32, 32 * 20
    else:
        runs, seconds, size, batch, images = [1, 2], 20.0, 80, 32, 64
    runs = [int(r) for r in args.runs.split(",")] if args.runs else runs
    seconds = args.seconds or seconds
    compile_mode = args.compile or ("reduce-overhead" if gpu else None)
    if args.mps and not gpu:
        p.error("--mps: NVIDIA MPS needs a CUDA GPU")
    rows = []
    for n in runs:
        with tempfile.TemporaryDirectory(prefix="hsnet-concurrent-", ignore_cleanup_errors=True) as tmp:
            try:
                with mps_daemon(Path(tmp)) if args.mps else nullcontext({}) as env:
                    jobs = [Job(f"run{i}", [sys.executable, "-m", "benchmarks.concurrent", "--worker", tmp, "--index",
                                            str(i), "--of", str(n), "--seconds", str(seconds), "--size", str(size),
                                            "--batch", str(batch), "--images", str(images)]
                                + (["--compile", compile_mode] if compile_mode else []),
                                cwd=Path(__file__).resolve().parents[1], env=env) for i in range(n)]
                    t0 = time.perf_counter()
                    done = run_jobs(jobs, n)
                    wall = time.perf_counter() - t0
            except (OSError, subprocess.SubprocessError) as exc:
                rows.append({"concurrent": n, "failed": {"mps": f"MPS daemon: {exc}"}})
                print(rows[-1], flush=True)
                continue
            failed = {k: v["output"][-800:] for k, v in done.items() if v["returncode"] != 0}
            if failed:
                rows.append({"concurrent": n, "failed": failed})
                print(rows[-1], flush=True)
                continue
            per = [json.loads((Path(tmp) / f"result-{i}.json").read_text()) for i in range(n)]
        row = {"concurrent": n, "size": size, "batch": batch, "compile": compile_mode or False, "mps": args.mps,
               "aggregate_img_s": sum(r["img_s"] for r in per), "per_run_img_s": [r["img_s"] for r in per],
               "gpu_busy_pct": per[0]["gpu_busy_pct"], "peak_memory_gib_per_run": per[0]["peak_memory_gib"],
               "wall_s_incl_start": wall}
        rows.append(row)
        print(row, flush=True)
    ok = [r for r in rows if "aggregate_img_s" in r]
    result = {"device": "cuda" if gpu else "cpu", "seconds": seconds, "rows": rows}
    if ok:
        base = ok[0]["aggregate_img_s"]
        for r in ok:
            r["vs_first"] = r["aggregate_img_s"] / base
    save("concurrent" + ("-smoke" if args.smoke else "") + (f"-compile-{args.compile}" if args.compile else "")
         + ("-mps" if args.mps else ""), result, args.out)
    return result


@contextmanager
def mps_daemon(folder: Path):
    """A private NVIDIA MPS control daemon (pipes and logs under ``folder``) for the duration; yields
    the environment its clients need. Without MPS the GPU time-slices between processes; with it,
    kernels of several processes can run at once."""
    exe = shutil.which("nvidia-cuda-mps-control")
    if exe is None:
        raise OSError("nvidia-cuda-mps-control is not on PATH (the driver's MPS tools)")
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "mps-pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "mps-log")}
    for d in env.values():
        Path(d).mkdir()
    full = {**os.environ, **env}
    subprocess.run([exe, "-d"], env=full, check=True, timeout=30)
    try:
        yield env
    finally:
        try:
            subprocess.run([exe], input="quit\n", env=full, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:  # the trial's figures stand; say so
            print(f"stopping the MPS daemon: {exc}", file=sys.stderr, flush=True)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
