"""GPU training speed: images/s of ``hsnet train``'s loop at 224x224, batch 32, bf16 autocast,
channels-last, with the full input pipeline (memory-mapped uint8 cache -> pinned batches ->
augmentation on the GPU); GPU utilisation (nvidia-smi, sampled) and peak memory; the projected
wall time of 500 RAF-DB epochs (12,271 train+val images).

Without a GPU it measures what decides the GPU figure and can be counted anywhere: the
operations one eager training step dispatches (each is at least one kernel launch on a GPU),
and so the time per operation the target of 5,000 images/s at batch 32 leaves.

    python -m benchmarks.gpu                          # eager, as `hsnet train` runs by default
    python -m benchmarks.gpu --compile                # train.compile: true
    python -m benchmarks.gpu --compile reduce-overhead   # + CUDA graphs
    python -m benchmarks.gpu --smoke
"""

from __future__ import annotations

import subprocess
import threading
import time

import torch
import torch.nn.functional as F

from hsnet.data.datasets import get_spec

from .common import parser, save
from .model import AUG, BENCH_TRAIN, synthetic_split

# images per RAF-DB epoch: its train split, our validation share included (an upper bound), one pass each
RAFDB_IMAGES_PER_EPOCH = get_spec("rafdb").paper_split_sizes["train+val"]
TARGET_IMG_S = 5_000
BATCH = 32


class _CountOps:
    """Counts the ATen operations dispatched inside ``with``, by name."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        ops: dict[str, int] = {}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                ops[name] = ops.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        self.ops, self.mode = ops, Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def launching(self) -> int:  # views and allocations launch no kernel
        return sum(n for name, n in self.ops.items() if name not in _NO_KERNEL)


_NO_KERNEL = {"view", "_unsafe_view", "t", "transpose", "expand", "reshape", "as_strided", "detach", "alias",
              "unsqueeze", "squeeze", "permute", "select", "slice", "split", "empty", "empty_like",
              "empty_strided", "lift_fresh", "_local_scalar_dense"}
ADAM_VARIANTS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _train_step(model, opt, x8, y, gen):
    from hsnet.device import normalize
    from hsnet.tensors import augment

    def step():
        x = augment(normalize(x8), gen, **AUG)
        loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def count_step_ops(model_params: dict, adam: str, *, size: int = 80, batch: int = BATCH) -> dict:
    """ATen operations of one step of ``hsnet train``'s loop (normalise, augment, forward, loss,
    backward, Adam), counted on the CPU; the count does not depend on the input size. Adam: PyTorch's
    CPU default ``for-loop`` (several ops per parameter tensor), its CUDA default ``foreach``
    (one op per step of the update for all tensors), or ``fused`` (what hsnet uses on a GPU)."""
    from hsnet.checkpoint import build_model
    from hsnet.params import ModelParams

    torch.manual_seed(0)
    model = build_model(7, ModelParams(**model_params), for_checkpoint=True).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, **ADAM_VARIANTS[adam])
    step = _train_step(model, opt, torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8),
                       torch.randint(0, 7, (batch,)), torch.Generator().manual_seed(0))
    step()  # Adam's state is created on the first step
    with _CountOps() as counted:
        step()
    return {"ops": counted.total, "launching_ops": counted.launching,
            "trainable_tensors": sum(1 for p in model.parameters() if p.requires_grad),
            "top": dict(sorted(counted.ops.items(), key=lambda kv: -kv[1])[:8])}


def host_us_per_op(blocks: int = 40, repeat: int = 30) -> float:
    """The framework's own cost per dispatched op (Python modules, dispatcher, autograd, Adam) on this
    CPU: a training step of conv+BN+ReLU blocks on 2x2x4x4 tensors, where the arithmetic is nil."""
    from torch import nn

    torch.manual_seed(0)
    layers = [m for _ in range(blocks) for m in (nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU())]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32, 7)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(2, 2, 4, 4), torch.tensor([0, 1])

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: with a thread pool, waking it up would be what is timed
    try:
        for _ in range(3):
            step()
        with _CountOps() as counted:
            step()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return sorted(times)[len(times) // 2] / counted.total * 1e6


def launch_budget() -> dict:
    """What the GPU target leaves per kernel launch, and what the host side alone allows."""
    budget_us = BATCH / TARGET_IMG_S * 1e6
    per_op = host_us_per_op()
    rows = []
    for name, cfg in (("HSNet (DIB+FGAL+KTL)", {"dib": True, "fgal": True, "ktl": True}),
                      ("baseline IRV1, all trainable", {"dib": False, "fgal": False, "ktl": False})):
        for adam in ADAM_VARIANTS:
            counted = count_step_ops(cfg, adam)
            host_ms = counted["ops"] * per_op / 1e3
            rows.append({"model": name, "adam": adam, **counted,
                         "us_per_launch_at_target": budget_us / counted["launching_ops"],
                         "host_ms_per_step": host_ms, "host_bound_img_s": BATCH / host_ms * 1e3})
    return {"target_img_s": TARGET_IMG_S, "batch": BATCH, "step_budget_us": budget_us,
            "host_us_per_op": per_op, "rows": rows}


def measure_gpu(args) -> dict:
    from hsnet.tensors import Batches
    from hsnet.checkpoint import build_model
    from hsnet.device import pick_device
    from hsnet.params import ModelParams
    from hsnet.train import compile_model, make_optimizer, run_epoch

    size, batch = (96, 8) if args.smoke else (224, BATCH)
    n = batch * (4 if args.smoke else 200)
    setup = pick_device("cuda")
    model = build_model(7, ModelParams(), for_checkpoint=True).to(setup.device)
    model = model.to(memory_format=torch.channels_last)
    step_model = compile_model(model, args.compile or False)
    opt = make_optimizer([q for q in model.parameters() if q.requires_grad], BENCH_TRAIN, setup)
    split = synthetic_split(n, size)
    gen = torch.Generator().manual_seed(0)
    util, stop = [], threading.Event()

    def sample_util():
        while not stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                util.append(float(out[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)

    def epoch():
        batches = Batches(split, torch.randperm(n, generator=gen), batch, setup.device)
        return run_epoch(step_model, batches, setup, optimizer=opt, generator=gen,
                         aug=AUG)

    t_warm = time.perf_counter()
    epoch()  # warm-up (cuDNN autotuning, compilation, graph capture)
    warmup_s = time.perf_counter() - t_warm
    torch.cuda.reset_peak_memory_stats()
    thread = threading.Thread(target=sample_util, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    epochs = 1 if args.smoke else 3
    for _ in range(epochs):
        epoch()
    torch.cuda.synchronize()
    ips = epochs * n / (time.perf_counter() - t0)
    stop.set()
    thread.join()
    return {"gpu": torch.cuda.get_device_name(0), "size": size, "batch": batch, "amp": str(setup.amp_dtype),
            "compile": args.compile or False, "warmup_s": warmup_s, "train_img_s": ips,
            "gpu_util_mean_pct": sum(util) / len(util) if util else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
            "rafdb_500_epochs_min": 500 * RAFDB_IMAGES_PER_EPOCH / ips / 60}


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the model as train.compile does (default mode, or e.g. reduce-overhead)")
    args = p.parse_args(argv)
    result = {"launch_budget": launch_budget()}
    budget = result["launch_budget"]
    print(f"host cost per dispatched op on this CPU: {budget['host_us_per_op']:.1f} µs")
    for row in budget["rows"]:
        print(f"{row['model']:30s} Adam {row['adam']:8s}: {row['ops']:5d} ops, {row['launching_ops']:5d} launch kernels "
              f"-> {row['us_per_launch_at_target']:5.1f} µs each at {TARGET_IMG_S} img/s; host alone "
              f"{row['host_ms_per_step']:.1f} ms/step = {row['host_bound_img_s']:,.0f} img/s at most")
    if torch.cuda.is_available():
        result["gpu"] = measure_gpu(args)
        print(result["gpu"])
    else:
        result["gpu"] = {"skipped": "no CUDA GPU"}
        print("no CUDA GPU: training speed not measured")
    suffix = ("-smoke" if args.smoke else "") + (f"-compile-{args.compile}" if args.compile else "")
    save("gpu" + suffix, result, args.out)
    return result


if __name__ == "__main__":
    main()
