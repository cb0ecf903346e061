"""Input pipeline vs model: images/s the training input pipeline delivers (memory-mapped uint8
cache -> shuffled batches -> normalise -> flip/rotate) against images/s the model consumes in
``hsnet train``'s loop, same size, same device, same run. Also the one-time decode into the cache.

    python -m benchmarks.input_pipeline [--smoke]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import parser, rate, save
from .model import AUG, train_path


def pipeline_rate(split, batch: int, device: torch.device, repeat: int) -> float:
    from hsnet.device import normalize
    from hsnet.tensors import Batches, augment

    gen = torch.Generator().manual_seed(0)

    def epoch():
        for x, _ in Batches(split, torch.randperm(len(split), generator=gen), batch, device):
            augment(normalize(x), gen, **AUG)
    return rate(epoch, len(split), warmup=1, repeat=repeat, sync=_sync(device))


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else None


def decode_rate(n: int, size: int, workdir: Path) -> float:
    """load_split's first pass: PNG files -> the memory-mapped cache."""
    from hsnet.tensors import load_split

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(workdir / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": i % 7})
    t0 = time.perf_counter()
    load_split(rows, workdir, size, cache_dir=workdir / "cache", progress=False)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    from hsnet.tensors import Split

    sizes, batch, n, steps, repeat = ([80], 4, 16, 1, 1) if args.smoke else ([100, 224], 32, 1024, 2, 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not args.smoke:  # a GPU eats 1,024 images in a fraction of a second
        n, steps = 4096, 50
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in sizes:
            path = tmp / f"cache_{size}.npy"
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
            arr[:] = np.random.default_rng(0).integers(0, 256, arr.shape, dtype=np.uint8)
            arr.flush()
            del arr
            split = Split(np.load(path, mmap_mode="r"), torch.randint(0, 7, (n,)), [""] * n)
            delivered = pipeline_rate(split, batch, device, repeat)
            step, _ = train_path(size, batch, steps, device.type)
            consumed = rate(step, batch * steps, warmup=1, repeat=repeat, sync=_sync(device))
            (tmp / f"png{size}").mkdir()
            decoded = decode_rate(min(n, 64 if args.smoke else 512), size, tmp / f"png{size}")
            rows.append({"size": size, "pipeline_img_s": delivered, "model_train_img_s": consumed,
                         "ratio": delivered / consumed, "decode_once_img_s": decoded})
            print(rows[-1], flush=True)
    result = {"batch": batch, "device": str(device), "rows": rows}
    save("input_pipeline" + ("-smoke" if args.smoke else ""), result, args.out)
    return result


if __name__ == "__main__":
    main()
