"""Training with the data held on the device (train.data_on_device) against the host pipeline:
images/s of ``hsnet train``'s loop (run_epoch: normalise, flip/rotate, forward, loss, backward,
Adam) on a synthetic uint8 split, and on a GPU its utilisation (nvidia-smi, sampled) and peak memory.

On a GPU: 224x224, batch 32, bf16, channels-last, fused Adam, eager and with CUDA graphs
(train.compile reduce-overhead, or whole-step: the whole step one graph, hsnet.step). On a CPU (a
check of the path, not a GPU figure): 80x80, batch 32.

    python -m benchmarks.device_data [--compile reduce-overhead|whole-step] [--smoke]
    python -m benchmarks.device_data --profile --compile reduce-overhead

``--profile``: instead, where one training step's host time goes with the data on the device
(torch.profiler over one timed epoch after the warm-up): the operations by their own CPU time
per step, with the device time they launched, and the step's CPU and device totals. On a GPU the
graphs' share is what's left of the step once the host work outside them is counted.
"""

from __future__ import annotations

import subprocess
import threading
import time

import torch

from .common import parser, save
from .gpu import RAFDB_IMAGES_PER_EPOCH
from .model import AUG, BENCH_TRAIN, synthetic_split


class GpuBusy:
    """nvidia-smi's utilisation.gpu sampled every ``period`` s inside ``with``; ``mean`` in %."""

    def __init__(self, period: float = 0.5):
        self.samples: list[float] = []
        self.period, self.stop = period, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                self.samples.append(float(out[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            time.sleep(self.period)

    def __enter__(self):
        if torch.cuda.is_available():
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def trainer(device: str, size: int, batch: int, n: int, *, on_device: bool, compile_mode=None, seed: int = 0):
    """``hsnet train``'s epoch on a synthetic split of ``n`` images; returns (run one epoch, setup)."""
    from hsnet.checkpoint import build_model
    from hsnet.device import pick_device, place
    from hsnet.params import ModelParams
    from hsnet.step import Step
    from hsnet.tensors import Batches, DeviceBatches, EpochAugment, to_device
    from hsnet.train import compile_model, make_optimizer, run_epoch, whole_step

    setup = pick_device(device)
    torch.manual_seed(seed)
    model = place(build_model(7, ModelParams(), for_checkpoint=True), setup)
    step_model = compile_model(model, compile_mode or False, setup.device)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], BENCH_TRAIN, setup)
    split = synthetic_split(n, size)
    data = to_device(split, setup.device) if on_device else split
    gen = torch.Generator().manual_seed(seed)
    aug = AUG
    step = Step(step_model, setup, opt, whole_graph=True) if whole_step(compile_mode) else None  # kept: its graphs

    def epoch() -> int:
        order = torch.randperm(n, generator=gen)
        if on_device:
            batches = DeviceBatches(data, order, batch, setup.device)
            transform = EpochAugment([len(c) for c in batches.chunks], gen, setup.device, **aug)
        else:
            batches, transform = Batches(split, order, batch, setup.device), None
        run_epoch(step_model, batches, setup, optimizer=opt, generator=gen, aug=aug, transform=transform, step=step)
        return sum(len(c) for c in batches.chunks)

    return epoch, setup


def measure(device: str, size: int, batch: int, n: int, epochs: int, *, on_device: bool, compile_mode=None) -> dict:
    epoch, setup = trainer(device, size, batch, n, on_device=on_device, compile_mode=compile_mode)
    t0 = time.perf_counter()
    epoch()  # warm-up: cuDNN autotuning, compilation, graph capture
    warmup = time.perf_counter() - t0
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with GpuBusy() as busy:
        t0, seen = time.perf_counter(), 0
        for _ in range(epochs):
            seen += epoch()
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
        ips = seen / (time.perf_counter() - t0)
    row = {"data": "device" if on_device else "host", "compile": compile_mode or False, "size": size, "batch": batch,
           "images": n, "warmup_s": warmup, "train_img_s": ips, "gpu_busy_pct": busy.mean}
    if setup.device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        row["rafdb_500_epochs_min"] = 500 * RAFDB_IMAGES_PER_EPOCH / ips / 60
    return row


def profile_step(device: str, size: int, batch: int, n: int, *, compile_mode=None, top: int = 30) -> dict:
    """Where a training step's host time goes, the data on the device: per operation (by its own CPU
    time) the CPU and device microseconds per step and the calls per step."""
    from torch.profiler import ProfilerActivity, profile

    epoch, setup = trainer(device, size, batch, n, on_device=True, compile_mode=compile_mode)
    epoch()  # warm-up: compilation, graph capture
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        seen = epoch()
    wall = time.perf_counter() - t0
    steps = -(-seen // batch)
    events = prof.key_averages()

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) or 0.0)

    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"compile": compile_mode or False, "size": size, "batch": batch, "steps": steps,
            "wall_ms_per_step_profiled": 1e3 * wall / steps,
            "cpu_self_us_per_step": sum(e.self_cpu_time_total for e in events) / steps,
            "device_us_per_step": sum(device_us(e) for e in events) / steps,
            "ops": [{"name": e.key, "calls_per_step": e.count / steps, "cpu_self_us_per_step": e.self_cpu_time_total / steps,
                     "device_us_per_step": device_us(e) / steps} for e in rows[:top]]}


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--compile", default=None, metavar="MODE", help="train.compile mode, e.g. reduce-overhead")
    p.add_argument("--profile", action="store_true", help="where a step's host time goes (device_data-profile.json)")
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    if args.smoke:
        size, batch, n, epochs = 80, 8, 24, 1
    elif gpu:
        size, batch, n, epochs = 224, 32, 32 * 200, 3
    else:
        size, batch, n, epochs = 80, 32, 32 * 6, 2
    suffix = ("-smoke" if args.smoke else "") + (f"-compile-{args.compile}" if args.compile else "")
    if args.profile:
        result = profile_step(device, size, batch, min(n, 32 * 40), compile_mode=args.compile)
        for op in result["ops"][:15]:
            print(f"{op['cpu_self_us_per_step']:9.1f} us CPU {op['device_us_per_step']:9.1f} us device "
                  f"{op['calls_per_step']:6.2f}/step  {op['name']}", flush=True)
        print(f"per step: {result['wall_ms_per_step_profiled']:.2f} ms wall (profiled), "
              f"{result['cpu_self_us_per_step']:.0f} us CPU, {result['device_us_per_step']:.0f} us device", flush=True)
        save("device_data-profile" + suffix, result, args.out)
        return result
    rows = []
    for on_device in (False, True):
        try:
            row = measure(device, size, batch, n, epochs, on_device=on_device, compile_mode=args.compile)
        except Exception as exc:  # one failing row (a capture, say) keeps the other's figures
            row = {"data": "device" if on_device else "host", "compile": args.compile or False,
                   "failed": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        print(row, flush=True)
    ok = all("train_img_s" in r for r in rows)
    result = {"device": device, "rows": rows,
              "device_over_host": rows[1]["train_img_s"] / rows[0]["train_img_s"] if ok else None}
    if ok:
        print(f"data on the device / host pipeline: {result['device_over_host']:.2f}x")
    save("device_data" + suffix, result, args.out)
    if not ok:
        raise SystemExit("a row failed (see its 'failed'); the figures are saved")
    return result


if __name__ == "__main__":
    main()
