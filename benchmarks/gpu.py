"""GPU training speed (needs a CUDA GPU): images/s of ``hsnet train``'s loop at 224x224, batch 32,
bf16 autocast, channels-last, with the full input pipeline (memory-mapped uint8 cache ->
pinned batches -> augmentation on the GPU); GPU utilisation (nvidia-smi, sampled) and peak
memory; the projected wall time of 500 RAF-DB epochs (12,271 train+val images).

    python -m benchmarks.gpu [--compile] [--smoke]
"""

from __future__ import annotations

import subprocess
import threading
import time

import torch

from .common import parser, save
from .model import synthetic_split

RAFDB_IMAGES_PER_EPOCH = 12_271  # train (incl. our val) images of RAF-DB basic, one pass each


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile: true)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing measured")
        return {"skipped": "no CUDA GPU"}
    from hsnet.tensors import Batches
    from hsnet.train import build_model, pick_device, run_epoch

    size, batch = (96, 8) if args.smoke else (224, 32)
    n = batch * (4 if args.smoke else 200)
    setup = pick_device("cuda")
    model = build_model(7, {"dib": True, "fgal": True, "ktl": True}, for_checkpoint=True).to(setup.device)
    model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3)
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
                         aug={"hflip": True, "rotate_degrees": 5.0})

    epoch()  # warm-up (cuDNN autotuning, compilation)
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
    result = {"gpu": torch.cuda.get_device_name(0), "size": size, "batch": batch, "amp": str(setup.amp_dtype),
              "compile": args.compile, "train_img_s": ips,
              "gpu_util_mean_pct": sum(util) / len(util) if util else None,
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
              "rafdb_500_epochs_min": 500 * RAFDB_IMAGES_PER_EPOCH / ips / 60}
    print(result)
    save("gpu" + ("-smoke" if args.smoke else ""), result, args.out)
    return result


if __name__ == "__main__":
    main()
