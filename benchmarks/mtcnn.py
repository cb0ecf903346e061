"""MTCNN face detection: hsnet's detector (hsnet.data.mtcnn) against facenet-pytorch's ``detect_face``
and against hsnet's detector as it was before a given revision, same networks and photos, photos/s.

Photos: scikit-image's astronaut placed on KDEF-size canvases (562x762), as benchmarks.crop.
Detectors: ``facenet`` (facenet-pytorch's ``detect_face``: a Python loop over candidate boxes),
``before`` (``hsnet/data/mtcnn.py`` at ``--before``, read with git; left out where git can't),
``hsnet`` (the working tree's). Layouts, each detector in each:

* ``batched``: batches of ``--batch`` with the process's torch threads (on the CPU only with
  ``--cpu-batched``: per photo, batches of 8 and more are slower there than single photos, and
  intra-op threads on a loaded machine slower still);
* ``one at a time`` (CPU): single photos, one after the other, with the process's torch threads
  (a single photo's latency);
* ``one per thread`` (CPU): one photo per thread, one intra-op thread each: what ``hsnet crop``
  and ``hsnet predict`` do on a CPU (``Detector.each``);
* ``batch per thread`` (CPU): batches of ``--thread-batch`` per thread, one intra-op thread each;
* ``hsnet crop`` (CPU): the whole ``crop()`` (decode, detect, crop, write PNGs) at batch size 16
  into a new folder each time, its detector swapped for each of the three.

The detectors take turns within each timed pass (the best of ``--repeat`` passes is kept), so
the ratios come from one run on a shared machine. The references run their networks in full fp32;
on a GPU hsnet's runs as it is with TF32 turned on (as training leaves it), which it must undo by
itself. The faces found are checked equal between all detectors (each face paired with the most
overlapping one: boxes within 1 px, probabilities within 1e-3).

``--profile``: instead, where one photo's time goes, stage by stage and pyramid level by level,
facenet-pytorch's operations against hsnet's (one torch thread).

    python -m benchmarks.mtcnn [--photos 32] [--batch 16] [--before REV] [--min-face-size 20] [--smoke]
    python -m benchmarks.mtcnn --profile
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hsnet.device import enable_tf32, full_fp32

from .common import parser, save
from .crop import SIZES, make_photos

BEFORE = "8c78b9d7538771e0aa991fd0bd9cacbc131e757a"  # hsnet/data/mtcnn.py before the P-Net/pooling work
ROOT = Path(__file__).resolve().parent.parent


def load_before(rev: str, tmp: Path):
    """hsnet/data/mtcnn.py at ``rev`` as a module of the ``hsnet.data`` package (its relative
    imports read today's package), or None where git can't give it or it doesn't import."""
    try:
        text = subprocess.run(["git", "show", f"{rev}:hsnet/data/mtcnn.py"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no 'before' detector: git show {rev}:hsnet/data/mtcnn.py failed ({exc})", flush=True)
        return None
    path = tmp / "mtcnn_before.py"
    path.write_text(text)
    import hsnet.data

    spec = importlib.util.spec_from_file_location("hsnet.data._mtcnn_before", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = hsnet.data.__name__
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        print(f"no 'before' detector: hsnet/data/mtcnn.py at {rev} doesn't import ({exc})", flush=True)
        return None
    return module


class FacenetDetector:
    """facenet-pytorch's ``detect_face`` behind BatchedMTCNN's interface (equal-size photos)."""

    def __init__(self, device, mtcnn):
        self.mtcnn, self.device = mtcnn, torch.device(device)

    def __call__(self, images):
        from facenet_pytorch.models.utils.detect_face import detect_face

        m = self.mtcnn
        with torch.no_grad():
            boxes, _ = detect_face(np.stack(images), m.min_face_size, m.pnet, m.rnet, m.onet, m.thresholds,
                                   m.factor, self.device)
        return [np.asarray(b, np.float64).reshape(-1, 5) for b in boxes]


@contextmanager
def detector_class(cls):
    """``hsnet crop``'s Detector builds its batched detector from this class meanwhile."""
    import hsnet.data.mtcnn as module

    old = module.BatchedMTCNN
    module.BatchedMTCNN = cls
    try:
        yield
    finally:
        module.BatchedMTCNN = old


def compare_faces(a: list[np.ndarray], b: list[np.ndarray], box_px: float = 1.0, prob: float = 1e-3) -> dict:
    """Photo by photo, ``a``'s faces (rows x1, y1, x2, y2, probability) against ``b``'s, each face
    paired with the other side's most overlapping one: the same when every photo has as many faces
    and every pair is within ``box_px`` and ``prob`` (the tests' tolerances); else which photos
    differ (the first 10) and how much."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} photos against {len(b)}")
    worst_box, worst_prob, differ, other_counts = 0.0, 0.0, [], 0
    for i, (x, y) in enumerate(zip(a, b)):
        ok = len(x) == len(y)
        other_counts += not ok
        free = list(range(len(y)))
        for face in x[np.argsort(-x[:, 4], kind="stable")] if len(x) else []:
            if not free:
                break
            j = max(free, key=lambda k: _iou(face, y[k]))
            if _iou(face, y[j]) <= 0:
                continue
            free.remove(j)
            d_box, d_prob = float(np.abs(face[:4] - y[j, :4]).max()), float(abs(face[4] - y[j, 4]))
            worst_box, worst_prob = max(worst_box, d_box), max(worst_prob, d_prob)
            ok = ok and d_box <= box_px and d_prob <= prob
        ok = ok and not free
        if not ok:
            differ.append({"photo": i, "faces": [np.round(x, 3).tolist(), np.round(y, 3).tolist()]})
    return {"same": not differ, "photos": len(a), "photos_differing": len(differ),
            "photos_with_other_face_counts": other_counts, "max_box_diff_px": worst_box,
            "max_prob_diff": worst_prob, "differences": differ[:10]}


def _iou(p: np.ndarray, q: np.ndarray) -> float:
    w = min(p[2], q[2]) - max(p[0], q[0])
    h = min(p[3], q[3]) - max(p[1], q[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter))


def in_full_fp32(detector):
    """``detector`` with its networks in full fp32, as hsnet's detector runs them by itself: with
    TF32 convolutions on a GPU the references' boxes move by pixels (docs/performance.md, section 8),
    so the references are compared like with like. hsnet's detector runs as it is, with TF32 on
    (:func:`hsnet.device.enable_tf32`, as training and ``pick_device`` leave it): the check that it
    keeps to fp32 on its own."""

    def run(images):
        with full_fp32():
            return detector(images)
    return run


def best_ms(fn, repeat: int = 15) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def profile(photo: np.ndarray, mtcnn, ours) -> dict:
    """Where one photo's time goes (ms, best of 15, the process's torch threads), stage by stage:
    facenet-pytorch's operations (``imresample``, P-Net with ``nn.MaxPool2d``, ``generateBoundingBox``
    and per-scale NMS, R-Net/O-Net on the same crops) against hsnet's (summed-area-table resize,
    strided pools). R-Net and O-Net get the candidates of hsnet's run."""
    from facenet_pytorch.models.utils import detect_face as fd
    from torchvision.ops.boxes import batched_nms

    from hsnet.data import mtcnn as hm

    h, w = photo.shape[:2]
    out = {"levels": []}
    with torch.inference_mode():
        raw = torch.as_tensor(np.ascontiguousarray(photo[None]))
        image = raw.permute(0, 3, 1, 2).float()  # as detect_face makes it
        out["summed_area_table_ms"] = best_ms(lambda: hm.summed_area_tables(raw, torch.int32))
        tables = hm.summed_area_tables(raw, torch.int32)
        for scale, win in ours._pyramid(h, w):
            x = fd.imresample(image, win.size)
            x = (x - 127.5) * 0.0078125
            reg, probs = mtcnn.pnet(x)

            def generate():
                b, i = fd.generateBoundingBox(reg, probs[:, 1], scale, mtcnn.thresholds[0])
                return batched_nms(b[:, :4], b[:, 4], i, 0.5)

            out["levels"].append({
                "scale": scale, "size": list(win.size), "candidates": int((probs[:, 1] >= mtcnn.thresholds[0]).sum()),
                "facenet_resize_normalize_ms": best_ms(lambda: (fd.imresample(image, win.size) - 127.5) * 0.0078125),
                "hsnet_resize_normalize_ms": best_ms(lambda: hm.area_resize(tables, win.size, win, normalize=True)),
                "facenet_pnet_ms": best_ms(lambda: mtcnn.pnet(x)),
                "hsnet_pnet_ms": best_ms(lambda: ours.pnet(x)),
                "boxes_nms_ms": best_ms(generate)})
        for key in ("facenet_resize_normalize_ms", "hsnet_resize_normalize_ms", "facenet_pnet_ms", "hsnet_pnet_ms",
                    "boxes_nms_ms"):
            out[f"pyramid_{key}"] = sum(level[key] for level in out["levels"])
        out["hsnet_pnet_stage_ms"] = best_ms(lambda: ours._pnet(tables, torch.float32))
        boxes, inds = ours._pnet(tables, torch.float32)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds = boxes[pick], inds[pick]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = fd.rerec(torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                                      boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                                      boxes[:, 4]], 1))
        flat, base, hw = tables.reshape(-1), torch.zeros(1, dtype=torch.int64), torch.tensor([[h, w]])
        for stage, size, net, fast in (("rnet", hm.RNET_SIZE, mtcnn.rnet, ours.rnet),
                                       ("onet", hm.ONET_SIZE, mtcnn.onet, ours.onet)):
            y, ey, x0, ex = fd.pad(boxes, w, h)

            def facenet_crops():  # detect_face's loop
                return torch.cat([fd.imresample(image[:, :, y[k] - 1:ey[k], x0[k] - 1:ex[k]], (size, size))
                                  for k in range(len(y)) if ey[k] > y[k] - 1 and ex[k] > x0[k] - 1])

            crops, _ = hm.crop_resize_boxes(flat, base, hw, boxes, inds, size, normalize=True)
            contiguous = crops.contiguous()
            out[f"{stage}_boxes"] = len(boxes)
            out[f"facenet_{stage}_crops_ms"] = best_ms(lambda: (facenet_crops() - 127.5) * 0.0078125)
            out[f"hsnet_{stage}_crops_ms"] = best_ms(lambda: hm.crop_resize_boxes(flat, base, hw, boxes, inds, size,
                                                                                   normalize=True))
            out[f"facenet_{stage}_ms"] = best_ms(lambda: net(contiguous))
            out[f"hsnet_{stage}_ms"] = best_ms(lambda: fast(crops))
            result = fast(crops)
            if stage == "rnet":
                keep = result[1][:, 1] > mtcnn.thresholds[1]
                boxes = torch.cat((boxes[keep, :4], result[1][keep, 1:2]), 1)
                mv, inds = result[0][keep], inds[keep]
                pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
                boxes, inds = fd.rerec(fd.bbreg(boxes[pick], mv[pick])), inds[pick]
        out["facenet_detect_face_ms"] = best_ms(lambda: fd.detect_face(
            photo[None], mtcnn.min_face_size, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.thresholds, mtcnn.factor,
            torch.device("cpu")))
        out["hsnet_detector_ms"] = best_ms(lambda: ours([photo]))
    return out


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--photos", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--thread-batch", type=int, default=4, help="photos per call in the 'batch per thread' layout")
    p.add_argument("--repeat", type=int, default=3, help="timed passes (the best is kept)")
    p.add_argument("--before", default=BEFORE, help="git revision of the 'before' detector")
    p.add_argument("--min-face-size", type=int, default=20, help="MTCNN's (20: crop's default; predict uses 40)")
    p.add_argument("--cpu-batched", action="store_true",
                   help="also the batched layout on the CPU (hsnet and before; slow on a loaded machine)")
    p.add_argument("--facenet-batched", action="store_true",
                   help="with --cpu-batched: facenet-pytorch too (minutes: its per-box loop)")
    p.add_argument("--no-crop", action="store_true", help="leave out the `hsnet crop` rows")
    p.add_argument("--devices", default=None,
                   help="comma-separated, e.g. cuda (default: cpu, and cuda where there is one)")
    p.add_argument("--profile", action="store_true",
                   help="only the stage-by-stage times of one photo with one torch thread (mtcnn-profile.json)")
    args = p.parse_args(argv)
    from facenet_pytorch import MTCNN

    from hsnet.data.crop import crop
    from hsnet.data.manifest import write_manifest
    from hsnet.data.mtcnn import BatchedMTCNN
    from hsnet.params import CropParams

    load_start = list(os.getloadavg())  # (1, 5, 15 minutes): the machine is shared
    n, batch, repeat = (2, 2, 1) if args.smoke else (args.photos, args.batch, args.repeat)
    size = SIZES["KDEF-like 562x762"]
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    threads = torch.get_num_threads()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        rows = make_photos(tmp / "photos", n, size)
        write_manifest(tmp / "photos.csv", rows)
        photos = [np.asarray(Image.open(tmp / "photos" / r["path"]).convert("RGB")) for r in rows]
        if args.profile:
            torch.set_num_threads(1)
            mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=args.min_face_size).eval()
            out = {"photo": f"{size[0]}x{size[1]}", "torch_threads": 1, "min_face_size": args.min_face_size,
                   **profile(photos[0], mtcnn, BatchedMTCNN("cpu", mtcnn=mtcnn))}
            out["load_average_start_end"] = [load_start, list(os.getloadavg())]
            print(json.dumps(out, indent=1), flush=True)
            save("mtcnn-profile" + ("-smoke" if args.smoke else ""), out, args.out)
            return out
        before = load_before(args.before, tmp)
        for device in devices:
            mtcnn = MTCNN(keep_all=True, device=device, min_face_size=args.min_face_size).eval()
            classes = {"facenet": FacenetDetector, "hsnet": BatchedMTCNN}
            if before is not None:
                classes = {"facenet": FacenetDetector, "before": before.BatchedMTCNN, "hsnet": BatchedMTCNN}
            if device.startswith("cuda"):
                enable_tf32()  # as hsnet.device.pick_device leaves it: hsnet's detector must keep fp32 itself
            detectors = {name: cls(device, mtcnn=mtcnn) if name == "hsnet" else in_full_fp32(cls(device, mtcnn=mtcnn))
                         for name, cls in classes.items()}

            def batched(fn, k=batch):
                return lambda: [b for i in range(0, n, k) for b in fn(photos[i:i + k])]

            def per_thread(fn, k):
                def run():
                    torch.set_num_threads(1)
                    try:
                        with ThreadPoolExecutor(threads) as pool:
                            chunks = pool.map(fn, [photos[i:i + k] for i in range(0, n, k)])
                            return [b for found in chunks for b in found]
                    finally:
                        torch.set_num_threads(threads)
                return run

            def hsnet_crop(cls):
                def run():
                    with detector_class(cls):
                        crop(tmp / "photos.csv", tmp / "photos", tempfile.mkdtemp(prefix="crops-", dir=tmp),
                             settings=CropParams(detector="mtcnn", size=100, min_face_size=args.min_face_size),
                             device=device, batch_size=16, progress=False)
                    return None
                return run

            layouts = {}
            for name, det in detectors.items():
                if device == "cuda" or args.smoke or (args.cpu_batched and (name != "facenet" or args.facenet_batched)):
                    layouts.setdefault("batched", {})[name] = batched(det)
                if device == "cpu":
                    layouts.setdefault("one at a time", {})[name] = batched(det, 1)
                    layouts.setdefault("one per thread", {})[name] = per_thread(det, 1)
                    layouts.setdefault("batch per thread", {})[name] = per_thread(det, args.thread_batch)
                    if not args.no_crop:
                        layouts.setdefault("hsnet crop", {})[name] = hsnet_crop(classes[name])
            row = {"device": device, "photos": n, "size": f"{size[0]}x{size[1]}", "batch": batch,
                   "thread_batch": args.thread_batch, "threads": threads, "min_face_size": args.min_face_size,
                   "before": args.before if before is not None else None}
            found = {}
            for layout, fns in layouts.items():
                for fn in fns.values():
                    fn()  # warm-up
                best = dict.fromkeys(fns, 0.0)
                for _ in range(repeat):
                    for name, fn in fns.items():  # the detectors take turns
                        if device == "cuda":
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        out = fn()
                        if device == "cuda":
                            torch.cuda.synchronize()
                        best[name] = max(best[name], n / (time.perf_counter() - t0))
                        if out is not None:
                            found.setdefault(name, out)
                for name, value in best.items():
                    row[f"{name} {layout} photos_s"] = value
                    print(f"{device} {layout} {name}: {value:.2f} photos/s", flush=True)
                for name in fns:
                    if name != "hsnet":
                        row[f"hsnet/{name} {layout}"] = best["hsnet"] / best[name]
            for name, faces in found.items():  # the same faces (recorded; checked at the end)
                if name != "hsnet":
                    row[f"faces {name}/hsnet"] = compare_faces(faces, found["hsnet"])
                    if not row[f"faces {name}/hsnet"]["same"]:
                        print(f"{device}: {name} found other faces than hsnet: {row[f'faces {name}/hsnet']}", flush=True)
            row["faces"] = sum(len(b) for b in found["hsnet"])
            row["speedup_batched"] = row.get("hsnet/facenet batched")  # the first version's name
            results.append(row)
    out = {"rows": results, "load_average_start_end": [load_start, list(os.getloadavg())], "command": " ".join([Path(sys.argv[0]).name] + list(argv or sys.argv[1:]))}
    save("mtcnn" + ("-smoke" if args.smoke else ""), out, args.out)
    differ = [f"{r['device']} {k}" for r in results for k, v in r.items() if k.startswith("faces ") and not v["same"]]
    if differ:
        raise SystemExit(f"the detectors found other faces ({', '.join(differ)}): see the saved results")
    return out


if __name__ == "__main__":
    main()
