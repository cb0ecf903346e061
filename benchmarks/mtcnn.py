"""MTCNN face detection: hsnet's batched detector (hsnet.data.mtcnn: R-Net/O-Net candidates of a whole
batch cut and resized in one tensor operation) against facenet-pytorch's ``detect_face`` (a
Python loop over candidate boxes), same networks and photos, photos/s.

Photos: scikit-image's astronaut placed on KDEF-size canvases (562x762), as benchmarks.crop.
Each detector runs the photos in batches of ``--batch`` (16) with the process's torch threads,
and, on a CPU, also one photo per thread with one intra-op thread each (what ``hsnet crop`` does
on a CPU, ``Detector.each``). The faces found are checked equal (boxes within 1 px).

    python -m benchmarks.mtcnn [--photos 32] [--batch 16] [--smoke]
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import parser, save
from .crop import SIZES, make_photos


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--photos", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2, help="timed passes over the photos (the best is kept)")
    args = p.parse_args(argv)
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.utils.detect_face import detect_face

    from hsnet.data.mtcnn import BatchedMTCNN

    n, batch, repeat = (2, 2, 1) if args.smoke else (args.photos, args.batch, args.repeat)
    size = SIZES["KDEF-like 562x762"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_photos(Path(tmp), n, size)
        photos = [np.asarray(Image.open(Path(tmp) / r["path"]).convert("RGB")) for r in rows]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    threads = torch.get_num_threads()
    results = []
    for device in devices:
        mtcnn = MTCNN(keep_all=True, device=device).eval()
        ours = BatchedMTCNN(device, mtcnn=mtcnn)

        def facenet(images):
            with torch.no_grad():
                boxes, _ = detect_face(np.stack(images), mtcnn.min_face_size, mtcnn.pnet, mtcnn.rnet, mtcnn.onet,
                                       mtcnn.thresholds, mtcnn.factor, torch.device(device))
            return [np.asarray(b, np.float64).reshape(-1, 5) for b in boxes]

        def batched(fn):
            return lambda: [b for i in range(0, n, batch) for b in fn(photos[i:i + batch])]

        def one_per_thread(fn):
            def run():
                torch.set_num_threads(1)
                try:
                    with ThreadPoolExecutor(threads) as pool:
                        return list(pool.map(lambda img: fn([img])[0], photos))
                finally:
                    torch.set_num_threads(threads)
            return run

        modes = {"facenet batched": batched(facenet), "hsnet batched": batched(ours)}
        if device == "cpu":
            modes.update({"facenet one per thread": one_per_thread(facenet),
                          "hsnet one per thread": one_per_thread(ours)})
        row = {"device": device, "photos": n, "size": f"{size[0]}x{size[1]}", "batch": batch, "threads": threads}
        found = {}
        for name, fn in modes.items():
            fn()  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            best = 0.0
            for _ in range(repeat):
                t0 = time.perf_counter()
                found[name] = fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                best = max(best, n / (time.perf_counter() - t0))
            row[f"{name} photos_s"] = best
            print(f"{device} {name}: {best:.2f} photos/s", flush=True)
        for a, b in zip(found["facenet batched"], found["hsnet batched"]):  # the same faces
            assert a.shape == b.shape and (not len(a) or np.abs(np.sort(a[:, 0]) - np.sort(b[:, 0])).max() <= 1)
        row["faces"] = sum(len(b) for b in found["hsnet batched"])
        row["speedup_batched"] = row["hsnet batched photos_s"] / row["facenet batched photos_s"]
        if device == "cpu":
            row["speedup_one_per_thread"] = row["hsnet one per thread photos_s"] / row["facenet one per thread photos_s"]
            best_ours = max(row["hsnet batched photos_s"], row["hsnet one per thread photos_s"])
            best_theirs = max(row["facenet batched photos_s"], row["facenet one per thread photos_s"])
            row["speedup_best_vs_best"] = best_ours / best_theirs
        results.append(row)
    out = {"rows": results}
    save("mtcnn" + ("-smoke" if args.smoke else ""), out, args.out)
    return out


if __name__ == "__main__":
    main()
