"""Face cropping with facenet-pytorch's MTCNN (the paper's pre-processing, Sect. 4.2).

Reads a manifest, writes the cropped images, their manifest (same columns plus the
detection box and probability) and a crop report. Every input row ends up either in the
output manifest or, by name, in the report.

* ``detector="mtcnn"``: detect faces, keep the most probable (then largest) one, crop a
  square around it with ``margin`` pixels (in the output's scale, as facenet-pytorch's
  ``margin``) and resize to ``size``. Images are decoded in parallel, grouped by size and
  run through MTCNN in batches (:mod:`hsnet.data.mtcnn`: facenet-pytorch's networks, the
  candidate boxes of a whole batch cut and resized in one tensor operation; a batch may mix
  images with and without faces, which facenet-pytorch's own ``detect()`` crashes on).
* ``detector="none"``: no detection (FERG-DB, RAF-DB ship cropped faces): centre square
  crop and resize.
* No face found: ``no_face="drop"`` reports the file and leaves it out;
  ``no_face="center"`` falls back to a centre crop and marks the row.
* Incremental: a re-run into the same ``out`` only processes rows whose file content (sha256) changed,
  unless the settings, the code that crops (``hsnet.sources.code_version``) or the libraries it
  crops with (``LIBRARIES``' versions) changed: then all.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .. import sources
from ..errors import HSNetError
from ..io import (FileReadError, ImageReadError, atomic_path, check_writable, clean_stale_tmp, dvc_cache_of,
                  only_writer, open_rgb, safe_join, sha256_file, sync_filesystem, usable_cores, write_json)
from ..params import MTCNN_MIN_FACE_SIZE, CropParams, Params, allowed
from .manifest import CROP_REPORT as REPORT, MANIFEST, read_manifest, write_manifest

log = logging.getLogger(__name__)

DETECTORS = tuple(allowed(CropParams, "detector"))  # the schema's values
NO_FACE_POLICIES = tuple(allowed(CropParams, "no_face"))
STATE_FILE = "crop_state.json"
IMAGES = "images"  # the crops' folder inside --out
CHUNK = 256  # at most this many decoded photos are held at a time (MTCNN's batches are cut from them)
DECODED_BYTES = 1 << 30  # and at most about this much decoded RGB: 256 large photos are tens of GB
# On a CPU, at most this many pixels go through MTCNN in one call (a larger image alone): a call's
# memory grows with its pixels (about 40 bytes each for a 16 MP photo: the summed-area tables
# are int64 above 8.4 MP), and batches are no faster there. Three 16 MP photos of one server
# request took 1.9 GiB at once, and two such requests went over a 3 GiB container limit.
CPU_BATCH_PIXELS = 4_000_000


class DetectionFailed(HSNetError):
    """MTCNN failed on one image (e.g. out of memory on a very large photo): that image's result,
    in place of its boxes, so that the other images of the batch or run are still processed."""


class Detector:
    """MTCNN over equal-size batches; returns, per image, an array (k, 5): x1, y1, x2, y2, prob,
    or a :class:`DetectionFailed` for an image the detector failed on alone."""

    def __init__(self, device: str | None = None, min_face_size: int = MTCNN_MIN_FACE_SIZE):
        """``device``: cpu, cuda, cuda:1; None: ``HSNET_DEVICE``, else the CPU."""
        import torch
        from facenet_pytorch import MTCNN

        from ..device import asked

        device = asked(device) or "cpu"

        if not isinstance(min_face_size, int) or min_face_size < 1:  # 0: a division by zero; < 0: no pyramid
            raise HSNetError(f"--min-face-size {min_face_size}: the smallest face searched for must be at least "
                             f"1 pixel (MTCNN's default is {MTCNN_MIN_FACE_SIZE})")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HSNetError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
        from .mtcnn import BatchedMTCNN

        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size).eval()
        self.device = torch.device(device)
        self.batched = BatchedMTCNN(device, mtcnn=self.mtcnn)  # the same networks, no per-box loop

    def can_hold_a_face(self, image: np.ndarray) -> bool:
        """Whether MTCNN's image pyramid has a level for ``image``: its shorter side must be at least
        ``min_face_size`` (MTCNN itself crashes in torch.cat on smaller images)."""
        return image.ndim == 3 and min(image.shape[:2]) * (12.0 / self.mtcnn.min_face_size) >= 12

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Boxes per image; an image too small to hold a face of ``min_face_size`` has none."""
        fits = [self.can_hold_a_face(img) for img in images]
        if not all(fits):
            found = iter(self._detect([img for img, ok in zip(images, fits) if ok]) if any(fits) else [])
            return [next(found) if ok else np.zeros((0, 5)) for ok in fits]
        return self._detect(images)

    def _detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        if self.device.type == "cpu" and len(images) > 1:
            chunks, pixels = [[]], 0
            for img in images:
                n = img.shape[0] * img.shape[1]
                if chunks[-1] and pixels + n > CPU_BATCH_PIXELS:
                    chunks.append([])
                    pixels = 0
                chunks[-1].append(img)
                pixels += n
            if len(chunks) > 1:
                return [b for chunk in chunks for b in self._detect_chunk(chunk)]
        return self._detect_chunk(images)

    def _detect_chunk(self, images: list[np.ndarray]) -> list[np.ndarray]:
        try:
            boxes = self.batched(images)
        except Exception as exc:  # e.g. out of memory, a torchvision NMS corner case; retry one by one
            if len(images) == 1:
                h, w = images[0].shape[:2]
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                log.debug("face detection failed on a %dx%d image", w, h, exc_info=True)
                return [DetectionFailed(f"face detection failed on this {w}x{h} image ({type(exc).__name__}: "
                                        f"{reason}); downscale it, or run where there is more memory")]
            log.debug("batched detection failed (%s); retrying image by image", exc)
            return [self._detect_chunk([img])[0] for img in images]
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


def pixels_sha256(img: Image.Image) -> str:
    """sha256 of an image's size, mode and pixels (not of a file's bytes, which the encoder decides)."""
    return hashlib.sha256(f"{img.width}x{img.height} {img.mode}\n".encode() + img.tobytes()).hexdigest()


def center_crop(img: Image.Image, size: int) -> Image.Image:
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


_ESCAPED = re.compile(r"[%\x00-\x1f\x7f]")


def output_name(rel: str) -> str:
    """Where the crop of the manifest row ``rel`` goes, relative to the output folder.

    The whole source name is kept, so that ``x.png`` and ``x.jpg``, ``x.JPG`` and ``x.jpg``, or
    ``x.png`` and ``x.png`` plus a newline get different crops: ``images/<rel>``, plus ``.png``
    unless ``rel`` already ends with it; control characters and ``%`` become ``%XX``.
    Names that still collide (``x.jpg`` and ``x.jpg.png``, or one path listed twice) are found by
    :func:`colliding_rows`.
    """
    rel = "/".join(part for part in rel.split("/") if part not in ("", "."))  # ./x.png, a//b.png: one file
    name = _ESCAPED.sub(lambda m: f"%{ord(m.group()):02X}", rel)
    return f"{IMAGES}/" + (name if name.endswith(".png") else name + ".png")


def colliding_rows(paths: list[str]) -> dict[int, int]:
    """{row index: index of an earlier row whose crop can't exist beside its crop} for manifest paths
    whose :func:`output_name` is the same, or where one crop's name is a folder the other's lies in
    (``a`` and ``a.png/x.jpg``: ``images/a.png`` and ``images/a.png/x.jpg.png``). (Names equal but
    for case, ``x.JPG`` and ``x.jpg``, are two files only where the filesystem tells case apart, and
    so are their crops.)"""
    files: dict[str, int] = {}  # crop name -> row
    folders: dict[str, int] = {}  # a folder a crop lies in -> the first such row
    clashes = {}
    for i, rel in enumerate(paths):
        key = output_name(rel)
        parents = [str(p) for p in PurePosixPath(key).parents if str(p) != "."]
        other = files.get(key, folders.get(key))
        if other is None:
            other = next((files[p] for p in parents if p in files), None)
        if other is not None:
            clashes[i] = other
            continue
        files[key] = i
        for folder in parents:
            folders.setdefault(folder, i)
    return clashes


def clash_message(rel: str, other: str) -> str:
    """Why the crop of row ``rel`` is refused beside the crop of the earlier row ``other``."""
    mine, theirs = output_name(rel), output_name(other)
    why = ("would overwrite the crop of" if mine == theirs
           else "can't exist beside the crop (one crop's name is the other's folder) of")
    return f"its crop {mine!r} {why} the row {other!r}; rename one of the files"


@dataclass
class _Item:
    row: dict
    src: Path
    dest: str  # output_name(row["path"])


def _plan(rows: list[dict], root: Path, out: Path) -> tuple[list[_Item], list[dict]]:
    """The rows crop may read and write, and the refused ones (paths outside ``root``, crops that
    would land outside ``out`` or on another row's crop) as report records."""
    items, refused, linked = [], [], dvc_cache_of(root)  # a DVC checkout of links into its cache is the data
    clashes = colliding_rows([r["path"] for r in rows])
    try:
        name_max = os.pathconf(out, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for i, row in enumerate(rows):
        try:
            if i in clashes:
                raise HSNetError(clash_message(row["path"], rows[clashes[i]]["path"]))
            src = safe_join(root, row["path"], what="manifest path", also=linked)
            dest = output_name(row["path"])
            safe_join(out, dest, what="crop output")
            if any(len(os.fsencode(part)) > name_max for part in PurePosixPath(dest).parts):
                raise HSNetError(f"its crop's name {dest!r} is over this filesystem's limit of {name_max} bytes")
        except HSNetError as exc:
            refused.append({"path": row["path"], "error": str(exc)})
            continue
        items.append(_Item(row, src, dest))
    return items, refused


# the libraries a crop's pixels depend on: decoding and resizing (Pillow, numpy), and with a
# detector, the detector (torch, torchvision, facenet-pytorch)
LIBRARIES = ("PIL", "numpy")  # import names (hsnet.sources.library_versions)
DETECTOR_LIBRARIES = ("torch", "torchvision", "facenet_pytorch")


def _made_with(settings: CropParams) -> dict:
    """What a crop depends on besides its photo: the settings, the code that cuts it and the
    versions of the libraries it cuts with (``detector: none`` builds no detector)."""
    libraries = LIBRARIES + (DETECTOR_LIBRARIES if settings.detector != "none" else ())
    return {"settings": settings.key(), "code_version": sources.code_version(__name__),
            "libraries": sources.library_versions(libraries)}


def _previous_entries(out: Path, settings: CropParams) -> dict:
    """The last run's entries when the same settings and code made them; {} when there is none or it
    is unreadable."""
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
        same = all(state.get(k) == v for k, v in _made_with(settings).items())
        return dict(state.get("entries", {})) if same else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s is unreadable (%s): cropping everything again", out / STATE_FILE, exc)
        return {}


def _reusable(old, digest: str, item: _Item, out: Path, size: int) -> bool:
    try:
        return old["sha256"] == digest and (old["row"] is None or (
            old["row"]["path"] == item.dest and _png_size(out / item.dest) == (size, size)))
    except (TypeError, KeyError):
        return False


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # a PNG's last chunk: IEND, empty, with its CRC


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a whole PNG file, from its header, if it ends with its end chunk; None for
    anything else (missing, empty, cut short: what a power cut or an interrupted copy can leave)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            f.seek(-len(_PNG_END), os.SEEK_END)
            tail = f.read()
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or tail != _PNG_END:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


ROW_FIELDS = ("label", "label_name", "split", "subject")  # what crop copies from the input row


def _with_current_row(entry: dict, item: _Item) -> dict:
    """A reused state entry with the current manifest row's label, class name, split and subject:
    the crop depends on the file and the settings only, those fields on the manifest (a label fix
    or another split must reach the output without re-cropping)."""
    if entry.get("row") is None:
        return entry
    row = dict(entry["row"], source_path=item.row["path"], source_sha256=entry["sha256"])
    row.update((k, item.row[k]) for k in ROW_FIELDS)
    return dict(entry, row=row)


def _check_apart(root: Path, out: Path) -> None:
    """Refuse an ``out`` whose crops folder holds ``root`` or lies in it: crops would overwrite the
    photos (``--root D/images --out D``: ``images/x.png``'s crop is ``D/images/x.png``) and the
    stale-crop cleanup would delete them (``--root D --out D``)."""
    if (out / IMAGES).exists() and not (out / IMAGES).is_dir():
        raise HSNetError(f"--out {out}: {out / IMAGES}, where the crops go, is a file, not a folder; move it "
                         "away, or give another output folder")
    if (out / IMAGES).is_symlink():
        raise HSNetError(f"--out {out}: its crops folder {out / IMAGES} is a symbolic link (to "
                         f"{os.readlink(out / IMAGES)}); crop writes and deletes only inside --out: remove the "
                         "link, or give an --out on the disk you want the crops on")
    photos, crops = os.path.realpath(root), os.path.realpath(out / IMAGES)
    if photos == crops or crops.startswith(photos.rstrip(os.sep) + os.sep) \
            or photos.startswith(crops.rstrip(os.sep) + os.sep):
        raise HSNetError(f"--out {out}: its crops folder {out / IMAGES} overlaps --root {root} (the photos); "
                         "crops there would overwrite or delete photos. Give an output folder outside the root")


def _check_settings(settings: CropParams) -> None:
    if settings.detector not in DETECTORS:
        raise HSNetError(f"--detector must be one of {', '.join(DETECTORS)}, got {settings.detector!r}")
    if settings.no_face not in NO_FACE_POLICIES:
        raise HSNetError(f"no-face policy must be one of {', '.join(NO_FACE_POLICIES)}, "
                         f"got {settings.no_face!r}")
    if settings.size < 16:
        raise HSNetError(f"--size {settings.size} is too small for a face crop")
    if settings.detector == "mtcnn" and settings.margin >= settings.size:  # the box grows by margin / (size - margin): unbounded
        raise HSNetError(f"--margin {settings.margin} must be smaller than --size {settings.size} (it is in "
                         "output pixels, as facenet-pytorch's margin: e.g. 20 for 160)")


BATCH_SIZE = 16  # photos per MTCNN batch (hsnet crop --batch-size)


def crop(manifest: str | os.PathLike, root: str | os.PathLike, out: str | os.PathLike, *,
         settings: CropParams = Params().crop, device: str | None = None, batch_size: int = BATCH_SIZE,
         workers: int | None = None, progress: bool = True) -> dict:
    """Crop every row of ``manifest`` (files under ``root``) into ``out``. Returns the report.
    ``device`` runs the detector (None: ``HSNET_DEVICE``, else the CPU); detector "none" needs none.

    Every row path is checked here, validated or not: a path outside ``root`` (absolute, ``..``,
    a symbolic link out of it), a crop that would land on another row's, a file that isn't a
    regular file or an image: each is a record in the report, never the end of the run.
    """
    _check_settings(settings)
    root, out = Path(root), Path(out)
    _check_apart(root, out)
    if any(os.path.realpath(out / name) == os.path.realpath(manifest)
           for name in (MANIFEST, REPORT, STATE_FILE)):
        raise HSNetError(f"--out {out}: crop would write its own {Path(manifest).name} over --manifest {manifest}; "
                         "give another output folder")
    rows = read_manifest(manifest)
    if not rows:
        raise HSNetError(f"manifest {manifest} has no rows: nothing to crop")
    check_writable(out, "--out")
    with only_writer(out, "hsnet data crop", "wait for it to end, or crop into another --out"):
        return _crop_into(rows, root, out, settings, device, batch_size, workers, progress)


def _crop_into(rows: list[dict], root: Path, out: Path, settings: CropParams, device: str | None, batch_size: int,
               workers: int | None, progress: bool) -> dict:
    """:func:`crop`'s work, with ``out`` held against another crop (a second one would mix crops
    of its settings under this one's record, and remove this one's temporary files)."""
    clean_stale_tmp(out, recursive=True, older_than=0)  # a killed crop's: no other crop writes here (only_writer)
    items, refused = _plan(rows, root, out)
    _clear_the_way(out, items)
    previous = _previous_entries(out, settings)
    detector = Detector(device, settings.min_face_size) if settings.detector == "mtcnn" else None
    report = {"images": len(rows), "settings": asdict(settings), "processed": 0, "reused": 0,
              "faces_found": 0, "no_face": [], "multi_face": [], "unreadable": [], "refused": refused,
              "center_fallback": []}
    if not previous:  # the crops are re-cut from here on: nothing may still say how the old ones were
        for name in (STATE_FILE, MANIFEST, REPORT):  # (a run stopped half-way would leave crops of two
            (out / name).unlink(missing_ok=True)  # settings under a record naming one; all written last)
    entries = _crop_all(items, previous, detector, settings, out, report, batch_size=batch_size,
                        workers=workers, progress=progress)
    out_rows = _summarise(items, entries, report, settings)
    _write_outputs(out, out_rows, report, entries, settings)
    accounted = len(out_rows) + len(report["unreadable"]) + len(refused) + (
        len(report["no_face"]) if settings.no_face == "drop" else 0)
    assert accounted == len(rows), "every input row is in the output manifest or the report"
    log.info("cropped %d of %d images (%d reused, %d without a face, %d unreadable, %d refused) -> %s",
             len(out_rows), len(rows), report["reused"], len(report["no_face"]),
             len(report["unreadable"]), len(refused), out)
    return report


def _crop_all(items: list[_Item], previous: dict, detector, settings: CropParams, out: Path, report: dict,
              *, batch_size: int, workers: int | None, progress: bool) -> dict[str, dict]:
    """Decode, detect and crop ``items`` chunk by chunk; the state entries of the done ones."""
    from tqdm import tqdm

    # batch_size 1: one image at a time; more: MTCNN batches on a GPU, one image per core on a CPU
    parallel_cpu = detector is not None and detector.device.type == "cpu" and batch_size > 1
    entries: dict[str, dict] = {}
    n_workers = workers or min(8, usable_cores() * 2)
    pool = ThreadPoolExecutor(max_workers=n_workers)
    bar = tqdm(total=len(items), disable=None if progress else True, desc="cropping", unit="img")

    def load(item: _Item):
        try:
            digest = sha256_file(item.src)
        except FileReadError as exc:
            return item, None, None, str(exc)
        old = previous.get(item.row["path"])
        if old and _reusable(old, digest, item, out, settings.size):
            return item, digest, old, None
        try:
            return item, digest, open_rgb(item.src), None
        except ImageReadError as exc:
            return item, digest, None, str(exc)

    def run(todo: list) -> None:
        by_size: dict[tuple[int, int], list] = {}
        for job in todo:
            by_size.setdefault(job[2].size, []).append(job)
        for group in by_size.values():
            step = len(group) if parallel_cpu else batch_size
            for b in range(0, len(group), step):
                batch = group[b:b + step]
                images = [np.asarray(img) for _, _, img in batch]
                detections = ([None] * len(batch) if not detector
                              else detector.each(images, pool) if parallel_cpu else detector(images))
                for (item, digest, img), boxes in zip(batch, detections):
                    if isinstance(boxes, DetectionFailed):  # a record; no state entry: a re-run retries it
                        report["unreadable"].append({"path": item.row["path"], "error": f"{item.src}: {boxes}"})
                        bar.update()
                        continue
                    try:
                        result, outcome = _crop_one(item, img, boxes, settings, out)
                    except _RowRefused as exc:  # no state entry: a re-run tries it again
                        report["refused"].append({"path": item.row["path"], "error": str(exc)})
                        bar.update()
                        continue
                    if result is not None:
                        result["source_sha256"] = digest
                    entries[item.row["path"]] = {"sha256": digest, "row": result, "outcome": outcome}
                    report["processed"] += 1
                    bar.update()

    try:
        # decoded a few at a time (one per worker), cropped when CHUNK photos or DECODED_BYTES are held
        todo, held = [], 0
        for start in range(0, len(items), n_workers):
            for item, digest, img, error in pool.map(load, items[start:start + n_workers]):
                if error:
                    report["unreadable"].append({"path": item.row["path"], "error": error})
                    bar.update()
                elif isinstance(img, dict):  # unchanged since the last run: its crop, this manifest's row
                    entries[item.row["path"]] = _with_current_row(img, item)
                    report["reused"] += 1
                    bar.update()
                else:
                    todo.append((item, digest, img))
                    held += img.width * img.height * 3
            if len(todo) >= CHUNK or held >= DECODED_BYTES:
                run(todo)
                todo, held = [], 0
        run(todo)
    finally:
        bar.close()
        pool.shutdown()
    return entries


def _summarise(items: list[_Item], entries: dict[str, dict], report: dict, settings: CropParams) -> list[dict]:
    """Fill the report's lists from the entries; the output manifest's rows, in manifest order."""
    out_rows = []
    for item in items:
        entry = entries.get(item.row["path"])
        if entry is None:
            continue  # unreadable: in the report
        outcome = entry["outcome"]
        if outcome == "no_face":
            report["no_face"].append(item.row["path"])
        if outcome == "center_fallback":
            report["center_fallback"].append(item.row["path"])
            report["no_face"].append(item.row["path"])
        if outcome.startswith("face"):
            report["faces_found"] += 1
            if outcome == "faces_multi":
                report["multi_face"].append(item.row["path"])
        if entry["row"] is not None:
            out_rows.append(entry["row"])
    report["output_images"] = len(out_rows)
    if settings.detector == "none":
        report["faces_found"] = None
    return out_rows


RUN_COUNTS = ("processed", "reused")  # what this run cut and reused: returned and printed, not in the report file


def _write_outputs(out: Path, out_rows: list[dict], report: dict, entries: dict, settings: CropParams) -> None:
    if report["processed"]:
        sync_filesystem(out)  # the crops (written unflushed, thousands of them) reach the disk before the records
    write_manifest(out / MANIFEST, out_rows,
                   columns=["path", "label", "label_name", "split", "subject", "source_path", "source_sha256",
                            "crop", "box_x1", "box_y1", "box_x2", "box_y2", "det_prob", "pixels_sha256"])
    # the report in the folder says what the crops are, not what this run did: the same for the same
    # crops (train and evaluate depend on the folder: a re-run reusing every crop must not re-train)
    write_json(out / REPORT, {k: v for k, v in report.items() if k not in RUN_COUNTS})
    _remove_stale(out, {out / r["path"] for r in out_rows})  # crops of rows that now have no face
    write_json(out / STATE_FILE, {**_made_with(settings), "entries": entries})


def _clear_the_way(out: Path, items: list[_Item]) -> None:
    """Before cutting: remove the old crops in the way of this run's crop names (a crop whose name
    is now a folder a crop goes into; a folder of old crops where a crop now goes). The records
    go first, so that nothing lists a crop that is gone if the run stops; the other old crops
    stay until the run's end (:func:`_remove_stale`)."""
    images = out / IMAGES
    in_the_way: set[Path] = set()
    for item in items:
        dest = out / item.dest
        for parent in dest.parents:
            if parent == images or images not in parent.parents:
                break
            if parent.is_file() and not parent.is_symlink():
                in_the_way.add(parent)
        if dest.is_dir() and not dest.is_symlink():
            in_the_way.update(_crops_in(dest))
    if not in_the_way:
        return
    for name in (MANIFEST, REPORT):
        (out / name).unlink(missing_ok=True)
    _remove_stale(out, set(_crops_in(images)) - in_the_way)


def _remove_stale(out: Path, keep: set[Path]) -> None:
    """Delete the crops under ``out/images`` not in ``keep`` (rows that left the manifest, or have
    no face now), then the folders left empty."""
    for stale in _crops_in(out / IMAGES):
        if stale not in keep:
            stale.unlink()
    if (out / IMAGES).is_dir() and not (out / IMAGES).is_symlink():
        for parent, dirs, files in os.walk(out / IMAGES, topdown=False):
            for d in dirs:
                with contextlib.suppress(OSError):  # not empty, or a link: left alone
                    if not (Path(parent) / d).is_symlink():
                        (Path(parent) / d).rmdir()


def _crops_in(folder: Path) -> list[Path]:
    """The ``.png`` files under ``folder``, never looking through a symbolic link to a folder (a
    linked folder's files are not crop's to delete; a linked file is only a link to remove)."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []
    for parent, _, files in os.walk(folder, followlinks=False):
        found += [Path(parent) / f for f in files if f.endswith(".png")]
    return found


def _crop_one(item: _Item, img, boxes, settings: CropParams, out: Path) -> tuple[dict | None, str]:
    """Crop one image and write it; (its output manifest row or None, outcome)."""
    row = item.row
    result = {k: row[k] for k in ROW_FIELDS}
    result.update(path=item.dest, source_path=row["path"],
                  box_x1="", box_y1="", box_x2="", box_y2="", det_prob="")
    if boxes is None:
        face, outcome = center_crop(img, settings.size), "full"
        result["crop"] = "full"
    else:
        box, n = best_box(boxes, settings.min_prob)
        if box is None:
            if settings.no_face == "drop":
                return None, "no_face"
            face, outcome = center_crop(img, settings.size), "center_fallback"
            result["crop"] = "center_fallback"
        else:
            face = square_crop(img, box, settings.size, settings.margin)
            outcome = "faces_multi" if n > 1 else "face"
            result["crop"] = "mtcnn"
            result.update(box_x1=f"{box[0]:.1f}", box_y1=f"{box[1]:.1f}", box_x2=f"{box[2]:.1f}",
                          box_y2=f"{box[3]:.1f}", det_prob=f"{box[4]:.4f}")
    # the crop's pixels, so that the manifest (and its data_version) changes when they do: another
    # crop.size or margin, another cutting code, moves no byte of the columns above
    result["pixels_sha256"] = pixels_sha256(face)
    dest = out / item.dest
    try:
        with atomic_path(dest, durable=False) as tmp:  # thousands of files a re-run cuts again
            face.save(tmp, format="PNG", compress_level=1)
    except OSError as exc:
        message = f"{dest}: can't write the crop of {row['path']!r} ({exc.strerror or exc})"
        if exc.errno in _NAME_ERRORS:  # this row's name, not the disk: a record, the run goes on
            raise _RowRefused(message) from exc
        raise HSNetError(message + "; nothing was recorded, run it again once fixed") from exc
    return result, outcome


# write errors that come from one crop's name (too long, a file where a folder must be, bytes the
# filesystem refuses), unlike a full disk or a read-only folder, which would fail every row
_NAME_ERRORS = {errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EILSEQ, errno.EINVAL}


class _RowRefused(Exception):
    """One row's crop can't be written under its name: a ``refused`` record."""
