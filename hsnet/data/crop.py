"""Face cropping with facenet-pytorch's MTCNN (the paper's pre-processing, Sect. 4.2).

Reads a manifest, writes the cropped images, their manifest (same columns plus the
detection box and probability) and a crop report. Every input row ends up either in the
output manifest or, by name, in the report.

* ``detector="mtcnn"``: detect faces, keep the most probable (then largest) one, crop a
  square around it with ``margin`` pixels (in the output's scale, as facenet-pytorch's
  ``margin``) and resize to ``size``. Images are decoded in parallel, grouped by size and
  run through MTCNN in batches (its batch mode needs equal sizes); MTCNN's own
  ``detect()`` crashes on a batch where some images have no face, so the lower-level
  ``detect_face`` is called and every image's boxes are read separately.
* ``detector="none"``: no detection (FERG-DB, RAF-DB ship cropped faces): centre square
  crop and resize.
* No face found: ``no_face="drop"`` reports the file and leaves it out;
  ``no_face="center"`` falls back to a centre crop and marks the row.
* Incremental: a re-run only processes rows whose file content (sha256) or settings changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..errors import HSNetError
from ..io import ImageReadError, atomic_path, open_rgb, sha256_file, write_json
from .manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

DETECTORS = ("mtcnn", "none")
NO_FACE_POLICIES = ("drop", "center")
STATE_FILE = "crop_state.json"
CHUNK = 256  # images decoded at a time: bounds memory on large photos


@dataclass(frozen=True)
class CropSettings:
    detector: str = "mtcnn"
    size: int = 100
    margin: int = 0
    no_face: str = "drop"
    min_face_size: int = 20
    min_prob: float = 0.0  # detections below are ignored

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class Detector:
    """MTCNN over equal-size batches; returns, per image, an array (k, 5): x1, y1, x2, y2, prob."""

    def __init__(self, device: str = "cpu", min_face_size: int = 20):
        import torch
        from facenet_pytorch import MTCNN

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HSNetError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size).eval()
        self.device = torch.device(device)

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face

        m = self.mtcnn
        try:
            with torch.no_grad():
                boxes, _ = detect_face(np.stack(images), m.min_face_size, m.pnet, m.rnet, m.onet,
                                       m.thresholds, m.factor, self.device)
        except Exception as exc:  # e.g. a torchvision NMS corner case; retry one by one
            if len(images) == 1:
                raise
            log.debug("batched detection failed (%s); retrying image by image", exc)
            return [self([img])[0] for img in images]
        return [np.asarray(b, dtype=np.float64).reshape(-1, 5) for b in boxes]

    def each(self, images: list[np.ndarray], pool: ThreadPoolExecutor) -> list[np.ndarray]:
        """One image per worker thread, one intra-op thread each: what a CPU wants, where
        MTCNN's batches are no faster than single images (docs/performance.md)."""
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return list(pool.map(lambda img: self([img])[0], images))
        finally:
            torch.set_num_threads(old)


def best_box(boxes: np.ndarray, min_prob: float) -> tuple[np.ndarray | None, int]:
    """(the most probable box, largest on ties; number of faces at or above ``min_prob``)."""
    boxes = boxes[boxes[:, 4] >= min_prob] if len(boxes) else boxes
    if not len(boxes):
        return None, 0
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((-area, -boxes[:, 4]))
    return boxes[order[0]], len(boxes)


def square_crop(img: Image.Image, box, size: int, margin: int) -> Image.Image:
    """A square around ``box`` (x1, y1, x2, y2) plus ``margin`` output pixels, resized to ``size``."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = max(x2 - x1, y2 - y1)
    side += side * margin / max(size - margin, 1)  # facenet-pytorch's margin semantics
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    region = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return img.crop(region).resize((size, size), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def _out_rel(rel: str) -> str:
    return (PurePosixPath("images") / PurePosixPath(rel).with_suffix(".png")).as_posix()


def crop(manifest: str | os.PathLike, root: str | os.PathLike, out: str | os.PathLike, *,
         settings: CropSettings = CropSettings(), device: str = "cpu", batch_size: int = 16,
         workers: int | None = None, progress: bool = True) -> dict:
    """Crop every row of ``manifest`` (files under ``root``) into ``out``. Returns the report."""
    from tqdm import tqdm

    if settings.detector not in DETECTORS:
        raise HSNetError(f"--detector must be one of {', '.join(DETECTORS)}, got {settings.detector!r}")
    if settings.no_face not in NO_FACE_POLICIES:
        raise HSNetError(f"no-face policy must be one of {', '.join(NO_FACE_POLICIES)}, "
                         f"got {settings.no_face!r}")
    if settings.size < 16:
        raise HSNetError(f"--size {settings.size} is too small for a face crop")
    root, out = Path(root), Path(out)
    rows = read_manifest(manifest)
    if not rows:
        raise HSNetError(f"manifest {manifest} has no rows: nothing to crop")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    previous = state.get("entries", {}) if state.get("settings") == settings.key() else {}

    detector = Detector(device, settings.min_face_size) if settings.detector == "mtcnn" else None
    # batch_size 1: one image at a time; more: MTCNN batches on a GPU, one image per core on a CPU
    parallel_cpu = detector is not None and detector.device.type == "cpu" and batch_size > 1
    entries: dict[str, dict] = {}
    report = {"images": len(rows), "settings": asdict(settings), "processed": 0, "reused": 0,
              "faces_found": 0, "no_face": [], "multi_face": [], "unreadable": [], "center_fallback": []}
    pool = ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2))
    bar = tqdm(total=len(rows), disable=not progress, desc="cropping", unit="img")

    def load(row):
        src = root / row["path"]
        try:
            digest = sha256_file(src)
        except OSError as exc:
            return row, None, None, f"{src}: {exc.strerror or exc}"
        old = previous.get(row["path"])
        if old and old["sha256"] == digest and (old["row"] is None or (out / old["row"]["path"]).is_file()):
            return row, digest, old, None
        try:
            return row, digest, open_rgb(src), None
        except ImageReadError as exc:
            return row, digest, None, str(exc)

    def finish(row, digest, result_row, outcome):
        entries[row["path"]] = {"sha256": digest, "row": result_row, "outcome": outcome}

    try:
        for start in range(0, len(rows), CHUNK):
            loaded = list(pool.map(load, rows[start:start + CHUNK]))
            todo = []
            for row, digest, img, error in loaded:
                if error:
                    report["unreadable"].append({"path": row["path"], "error": error})
                    bar.update()
                elif isinstance(img, dict):  # unchanged since the last run
                    entries[row["path"]] = img
                    report["reused"] += 1
                    bar.update()
                else:
                    todo.append((row, digest, img))
            by_size: dict[tuple[int, int], list] = {}
            for item in todo:
                by_size.setdefault(item[2].size, []).append(item)
            for group in by_size.values():
                step = len(group) if parallel_cpu else batch_size
                for b in range(0, len(group), step):
                    batch = group[b:b + step]
                    images = [np.asarray(img) for _, _, img in batch]
                    detections = ([None] * len(batch) if not detector
                                  else detector.each(images, pool) if parallel_cpu else detector(images))
                    for (row, digest, img), boxes in zip(batch, detections):
                        _crop_one(row, digest, img, boxes, settings, out, finish)
                        report["processed"] += 1
                        bar.update()
    finally:
        bar.close()
        pool.shutdown()

    out_rows = []
    for row in rows:
        entry = entries.get(row["path"])
        if entry is None:
            continue  # unreadable: in the report
        outcome = entry["outcome"]
        if outcome == "no_face":
            report["no_face"].append(row["path"])
        if outcome == "center_fallback":
            report["center_fallback"].append(row["path"])
            report["no_face"].append(row["path"])
        if outcome.startswith("face"):
            report["faces_found"] += 1
            if outcome == "faces_multi":
                report["multi_face"].append(row["path"])
        if entry["row"] is not None:
            out_rows.append(entry["row"])
    report["output_images"] = len(out_rows)
    if settings.detector == "none":
        report["faces_found"] = None
    write_manifest(out / "manifest.csv", out_rows,
                   columns=["path", "label", "label_name", "split", "subject", "source_path", "crop",
                            "box_x1", "box_y1", "box_x2", "box_y2", "det_prob"])
    write_json(out / "crop_report.json", report)
    keep = {out / r["path"] for r in out_rows}
    for stale in (out / "images").rglob("*.png") if (out / "images").is_dir() else []:
        if stale not in keep:  # crops of rows that left the manifest or now have no face
            stale.unlink()
    write_json(state_path, {"settings": settings.key(), "entries": entries})
    accounted = len(out_rows) + len(report["unreadable"]) + (
        len(report["no_face"]) if settings.no_face == "drop" else 0)
    assert accounted == len(rows), "every input row is in the output manifest or the report"
    log.info("cropped %d of %d images (%d reused, %d without a face, %d unreadable) -> %s",
             len(out_rows), len(rows), report["reused"], len(report["no_face"]),
             len(report["unreadable"]), out)
    return report


def _crop_one(row, digest, img, boxes, settings: CropSettings, out: Path, finish) -> None:
    result = {k: row[k] for k in ("label", "label_name", "split", "subject")}
    result.update(path=_out_rel(row["path"]), source_path=row["path"],
                  box_x1="", box_y1="", box_x2="", box_y2="", det_prob="")
    if boxes is None:
        face, outcome = center_crop(img, settings.size), "full"
        result["crop"] = "full"
    else:
        box, n = best_box(boxes, settings.min_prob)
        if box is None:
            if settings.no_face == "drop":
                finish(row, digest, None, "no_face")
                return
            face, outcome = center_crop(img, settings.size), "center_fallback"
            result["crop"] = "center_fallback"
        else:
            face = square_crop(img, box, settings.size, settings.margin)
            outcome = "faces_multi" if n > 1 else "face"
            result["crop"] = "mtcnn"
            result.update(box_x1=f"{box[0]:.1f}", box_y1=f"{box[1]:.1f}", box_x2=f"{box[2]:.1f}",
                          box_y2=f"{box[3]:.1f}", det_prob=f"{box[4]:.4f}")
    dest = out / result["path"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        face.save(tmp, format="PNG", compress_level=1)
    finish(row, digest, result, outcome)
