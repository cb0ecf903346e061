"""Validation speed: ``hsnet validate`` on a 30,000-image manifest, cold (empty image-info
cache) and warm (second run, files unchanged).

    python -m benchmarks.validate [--smoke]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .common import parser, save


def make_dataset(root: Path, n: int) -> Path:
    """n distinct 48x48 PNGs in 7 classes, split 80/10/10, and their manifest."""
    from hsnet.data.datasets import FERG_CLASSES
    from hsnet.data.manifest import write_manifest

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 7
        rel = f"{FERG_CLASSES[label]}/{i:06d}.png"
        (root / FERG_CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / rel, compress_level=1)
        split = "test" if i % 10 == 0 else "val" if i % 10 == 1 else "train"
        rows.append({"path": rel, "label": label, "label_name": FERG_CLASSES[label], "split": split,
                     "subject": f"s{i % 6}"})
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    from hsnet.data.validate import validate

    n = 300 if args.smoke else 30_000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        manifest = make_dataset(tmp / "data", n)
        made = time.perf_counter() - t0
        os.environ["HSNET_CACHE_DIR"] = str(tmp / "cache")  # an empty image-info cache: cold
        times = {}
        for run in ("cold", "warm"):
            t0 = time.perf_counter()
            validate(manifest, tmp / "data", "sample", tmp / f"report-{run}", progress=False)
            times[run] = time.perf_counter() - t0
            print(run, times[run], flush=True)
    result = {"images": n, "cores": os.cpu_count(), "cold_s": times["cold"], "warm_s": times["warm"],
              "dataset_generation_s": made}
    save("validate" + ("-smoke" if args.smoke else ""), result, args.out)
    return result


if __name__ == "__main__":
    main()
