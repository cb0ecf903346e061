"""Face cropping speed: ``hsnet crop`` with MTCNN on real-size photos, one image at a time
against batched, on the CPU (and the GPU when there is one).

The photos are scikit-image's astronaut (a public-domain NASA portrait) placed at varying
positions and scales on canvases of KDEF's 562x762 and RaFD's 681x1024 pixels.

    python -m benchmarks.crop [--smoke]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import parser, save

SIZES = {"KDEF-like 562x762": (562, 762), "RaFD-like 681x1024": (681, 1024)}


def make_photos(root: Path, n: int, size: tuple[int, int]) -> list[dict]:
    from skimage import data

    face = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        w, h = size
        canvas = Image.new("RGB", size, tuple(int(c) for c in rng.integers(60, 200, 3)))
        side = int(w * rng.uniform(0.7, 0.95))
        canvas.paste(face.resize((side, side)), (int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))))
        name = f"p{i:04d}.jpg"
        canvas.save(root / name, quality=92)
        rows.append({"path": name, "label": 0, "label_name": "neutral", "split": "train", "subject": ""})
    return rows


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    from hsnet.data.crop import crop
    from hsnet.params import CropParams
    from hsnet.data.manifest import write_manifest

    n = 4 if args.smoke else 32
    sizes = dict(list(SIZES.items())[:1]) if args.smoke else SIZES
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, size in sizes.items():
            root = tmp / label.split()[0]
            root.mkdir()
            write_manifest(tmp / f"{root.name}.csv", make_photos(root, n, size))
            for device in devices:
                result = {"photos": label, "device": device, "n": n}
                for mode, batch in (("one_at_a_time", 1), ("batched", 16)):
                    out = tmp / f"out-{root.name}-{device}-{mode}"
                    t0 = time.perf_counter()
                    report = crop(tmp / f"{root.name}.csv", root, out, settings=CropParams(detector="mtcnn", size=100),
                                  device=device, batch_size=batch, progress=False)
                    result[f"{mode}_img_s"] = n / (time.perf_counter() - t0)
                    result[f"{mode}_faces"] = report["output_images"]
                result["speedup"] = result["batched_img_s"] / result["one_at_a_time_img_s"]
                rows.append(result)
                print(result, flush=True)
    out = {"rows": rows}
    save("crop" + ("-smoke" if args.smoke else ""), out, args.out)
    return out


if __name__ == "__main__":
    main()
