"""Inference: faces in photos to expressions, from a local checkpoint or a registered model.

* :class:`Classifier` is HSNet plus the preprocessing it was trained with (resize to its
  input size, fixed image standardisation, class names). It classifies face images.
  The MLflow pyfunc (:mod:`hsnet.pyfunc`) wraps one.
* :func:`predict` finds every face in each photo with MTCNN, crops it as ``hsnet crop``
  did for training (square box plus the training margin), classifies all faces of a chunk
  of photos in one batch, and writes one JSON line per photo; photos without a face or
  that can't be read are reported in the output and the summary, never dropped silently.

Speed (docs/performance.md): on a GPU, photos of equal size go through MTCNN as one batch;
on a CPU, where MTCNN's batches don't help, one photo per core is decoded and detected in
parallel threads (one intra-op thread each). Faces smaller than ``min_face_size`` (40 px by
default: too little detail for an expression classifier working at 100-256 px) are not
searched for, which halves MTCNN's image pyramid on a 640x480 photo.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import tracking
from .errors import HSNetError
from .limits import MIN_FACE_SIZE, MIN_PROB
from .io import (CACHE_ENV, IMAGE_SUFFIXES, ImageReadError, atomic_path, check_writable, clean_stale_tmp,
                 clean_stale_tmp_of, is_cut_in_tmp_name, open_rgb, output_file, safe_join, to_rgb, usable_cores)

log = logging.getLogger(__name__)

CHUNK = 32  # photos decoded, detected and classified together (fewer when they are large: _read_chunks)


class Classifier:
    """HSNet with its preprocessing: RGB uint8 face images of any size in, class probabilities out."""

    def __init__(self, model: torch.nn.Module, classes: list[str], input_size: int, *,
                 device: str | None = None, crop: dict | None = None, info: dict | None = None):
        from .device import pick_device, place

        self.setup = pick_device(device)
        self.model = place(model, self.setup).eval()
        self.classes = list(classes)
        self.input_size = int(input_size)
        self.crop = dict(crop or {})
        self.info = dict(info or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | None = None) -> "Classifier":
        from . import checkpoint

        ckpt, _, sha = checkpoint.read(path)  # one read: the weights and the hash are of one file
        meta = ckpt["meta"]
        return cls(checkpoint.model_from(ckpt), meta["classes"], meta["input_size"], device=device,
                   crop=meta.get("params", {}).get("crop"),
                   info={"dataset": meta["dataset"], "data_version": meta["data_version"],
                         "model": meta["model"], "source": str(path), "sha256": sha})

    @property
    def margin(self) -> int:
        return int(self.crop.get("margin", 0) or 0)

    @property
    def crop_size(self) -> int:
        """The side ``hsnet crop`` cut the training faces at (its ``margin`` is in these pixels);
        the tensor cache then resized them to ``input_size``."""
        return int(self.crop.get("size") or self.input_size)

    def to_tensor(self, faces: list[np.ndarray | Image.Image]) -> torch.Tensor:
        """Each face as training fed it to the model: made RGB as training's reader makes it
        (transparency on white), cut to a centre square at ``crop_size`` as ``hsnet crop`` stored it,
        then resized to the input size as the tensor cache did; (N, 3, S, S) uint8."""
        from .data.crop import center_crop

        s, stored = self.input_size, self.crop_size
        out = np.empty((len(faces), s, s, 3), dtype=np.uint8)
        for i, face in enumerate(faces):
            img = to_rgb(face) if isinstance(face, Image.Image) else Image.fromarray(as_rgb_array(face))
            if img.size != (stored, stored):
                img = center_crop(img, stored)
            if img.size != (s, s):
                img = img.resize((s, s), Image.BILINEAR)
            out[i] = np.asarray(img)
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    @torch.no_grad()
    def probabilities(self, faces: list, batch_size: int = 64) -> np.ndarray:
        """(N, C) class probabilities for N face images."""
        from .device import forward

        if not len(faces):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        setup, parts = self.setup, []
        for start in range(0, len(faces), batch_size):
            x = self.to_tensor(faces[start:start + batch_size]).to(setup.device, non_blocking=True)
            parts.append(forward(self.model, x, setup).softmax(1).cpu())
        return torch.cat(parts).numpy()


def as_rgb_array(face) -> np.ndarray:
    """An (H, W, 3) uint8 array from an array-like image (H, W), (H, W, 3) or (H, W, 4) (its
    transparency on white, as training's reader does)."""
    if isinstance(face, (str, bytes, os.PathLike)):
        raise HSNetError(f"an image array was expected, got {type(face).__name__} {str(face)[:80]!r}: open a "
                         "photo first (PIL.Image.open), or give files to hsnet predict")
    arr = np.asarray(face)
    if arr.dtype.kind not in "biuf":  # text, objects, complex numbers: not pixels
        raise HSNetError(f"an image array must hold numbers (uint8 RGB), got dtype {arr.dtype} of shape {arr.shape}")
    if arr.dtype == np.bool_:  # a 1-bit image (PIL mode "1"): black and white, as training's reader reads it
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            arr = np.rint(arr * 255.0 if arr.size and arr.max() <= 1.0 else arr)  # rounded, as an encoder would
        elif arr.dtype.kind in "iu" and arr.size and (arr.dtype == np.uint16 or arr.max() > 255):
            arr = np.rint(arr / 65535.0 * 255.0)  # 16 bits per value: to 8, as training's reader does (io.to_rgb)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
        raise HSNetError(f"an image array must be (H, W, 3) RGB uint8, got shape {arr.shape}")
    if arr.shape[2] == 4:
        return np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(arr), "RGBA")))
    return np.ascontiguousarray(arr)


@tracking.as_found
def load_classifier(model: str | os.PathLike, device: str | None = None) -> Classifier:
    """A checkpoint file, or an MLflow model URI (``models:/hsnet-rafdb@production``, ``runs:/...``).
    A registered version's files are checked against those it was registered with before MLflow
    imports any code from them (:func:`hsnet.registry.check_model_files`)."""
    text = str(model)
    if Path(text).is_file():
        return Classifier.from_checkpoint(text, device=device)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        import mlflow

        from . import model_copies, registry, tracking

        # a registry or run lookup needs the tracking server (and makes no empty store wherever this
        # runs); an MLflow model folder or s3:// URI needs none
        uri = tracking.connect(create=False) if text.startswith(("models:/", "runs:/")) else "its location"
        try:
            if text.startswith("models:/"):  # the alias resolved once: the version checked is the one loaded
                name, version = tracking.model_version(text)
                local = _checked_copy(name, version)
            else:
                local = model_copies.fetch_model(text)
            # nothing written into the copy (checked at each load); bytecode found there is not run
            with model_copies.no_bytecode(ignore_found=local is not None and registry.holds_bytecode(local)), \
                    model_copies.import_path_kept(local if local is not None else _file_uri_folder(text)):
                loaded = mlflow.pyfunc.load_model(str(local or text))
        except HSNetError:  # registry.ModelChanged: said as it is
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types
            # all of it: MLflow's download errors say the failure itself on their second line
            said = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            check = ("the run id and the model's path in it" if text.startswith("runs:/") else
                     "the name and alias (hsnet promote)" if text.startswith("models:/") else "the URI")
            raise HSNetError(f"--model {tracking.mask_uri(text)}: can't load it from MLflow at {tracking.mask_uri(uri)} "
                             f"({type(exc).__name__}: {tracking.mask_text(said)[:600]}). Check {check} "
                             "and MLFLOW_TRACKING_URI") from exc
        inner = loaded.unwrap_python_model()
        if not hasattr(inner, "classifier"):
            raise HSNetError(f"--model {tracking.mask_uri(text)} is not an hsnet model")
        if device and str(inner.classifier.setup.device) != device:
            inner.classifier = Classifier(inner.classifier.model, inner.classifier.classes,
                                          inner.classifier.input_size, device=device,
                                          crop=inner.classifier.crop, info=inner.classifier.info)
        return inner.classifier
    from .tracking import mask_uri

    raise HSNetError(f"--model {mask_uri(text)}: no such checkpoint file, and not an MLflow model URI "
                     "(models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model)")


def _file_uri_folder(uri: str) -> Path | None:
    """The folder of a ``file://`` model URI, loaded in place (other schemes: None)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _checked_copy(name: str, version: str) -> Path:
    """The cached copy of a registered version, its files checked against the registry's record
    (:class:`~hsnet.registry.ModelChanged` when the registry's own files changed). A copy damaged
    on this disk is downloaded again (once) and that download checked, not refused for ever."""
    import mlflow

    from . import model_copies, registry, tracking

    client, uri = mlflow.MlflowClient(), tracking.version_uri(name, version)
    local = model_copies.fetch_model(uri)
    seen = model_copies.copy_identity(local)
    try:
        registry.check_model_files(client, name, version, local)
    except registry.ModelChanged:
        try:
            model_copies.discard_copy(local, seen)
        except OSError as exc:  # can't repair it: say which files differ, the copy's or the registry's
            registry.check_model_files(client, name, version)  # the registry's: ModelChanged if they changed
            raise HSNetError(f"the local copy {local} of {uri} differs from the registry's files, which are intact, "
                             f"and the model cache can't be written ({exc.strerror}): remove the copy, or set "
                             f"{CACHE_ENV} to a writable folder") from exc
        log.warning("the local copy %s of %s differs from the files registered: downloading it again", local, uri)
        local = model_copies.fetch_model(uri)
        registry.check_model_files(client, name, version, local)  # a fresh copy: ModelChanged if the registry's changed
    return local


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and the image files under each directory (recursively, sorted), but for
    hidden files and the annotated copies ``--annotate`` writes (``*.annotated.jpg``)."""
    return [path for path, _ in _expand(inputs)]


def _expand(inputs: list[str | os.PathLike]) -> list[tuple[Path, str]]:
    """(file, its name relative to the directory it was found in, or its own name)."""
    files: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            # not only regular files: a FIFO or a broken link named like a photo is listed and then
            # refused by name in its own record (open_regular), not skipped without a word
            found = sorted(f for f in p.rglob("*") if not f.is_dir() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.name.startswith(".") and not f.name.endswith(ANNOTATED))  # --annotate's copies
            if not found:
                log.warning("%s holds no image files (%s)", p, ", ".join(sorted(IMAGE_SUFFIXES)))
            files.extend((f, f.relative_to(p).as_posix()) for f in found)
        elif p.exists():
            files.append((p, p.name))
        else:
            raise HSNetError(f"{p}: no such file or directory")
    if not files:
        raise HSNetError("no image files to predict on: " + ", ".join(str(i) for i in inputs))
    return files


ANNOTATED = ".annotated.jpg"


def annotate_targets(files: list[tuple[Path, str]], annotate_dir: str | os.PathLike) -> dict[Path, Path]:
    """Where each photo's annotated copy goes: its place under the folder it was found in (or its
    name), whole name kept, plus ``.annotated.jpg`` (``a/x.jpg`` -> ``a/x.jpg.annotated.jpg``).
    Photos that would still share a name (two arguments with the same layout or file name) get a
    short hash of their full path in it, so that no copy overwrites another."""
    import hashlib

    first: dict[Path, str] = {}  # a photo given twice keeps its first name
    for path, rel in files:
        first.setdefault(path, rel)
    owners: dict[str, set[Path]] = {}
    for path, rel in first.items():
        owners.setdefault(rel, set()).add(path.absolute())
    targets = {}
    for path, rel in first.items():
        if len(owners[rel]) > 1:
            rel += "." + hashlib.sha256(os.fsencode(path.absolute())).hexdigest()[:8]  # any name's bytes
        targets[path] = safe_join(annotate_dir, rel + ANNOTATED, what="annotated copy")
    return targets


@dataclass
class _Photo:
    path: Path
    image: Image.Image | None = None
    error: str | None = None


def _detect_batched(detector, images: list) -> list[np.ndarray]:
    """MTCNN boxes per photo, equal sizes as one batch (what a GPU wants)."""
    boxes: list[np.ndarray] = [np.zeros((0, 5))] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        if image is not None:
            groups.setdefault(image.size, []).append(i)
    for idx in groups.values():
        found = detector([np.asarray(images[i]) for i in idx])
        for i, b in zip(idx, found):
            boxes[i] = b
    return boxes


def _read(path: Path) -> _Photo:
    try:
        return _Photo(path, open_rgb(path))
    except ImageReadError as exc:
        return _Photo(path, error=str(exc))


def detect(images: list[Image.Image | None], detector, pool: ThreadPoolExecutor | None = None) -> list[np.ndarray]:
    """MTCNN's boxes (k, 5) for each decoded photo (``None``: no boxes). Without ``pool`` (a GPU,
    or a single photo) equal sizes go through as one batch; with it, one photo per core (a CPU)."""
    if pool is None or len(images) == 1:
        return _detect_batched(detector, images)
    readable = [i for i, image in enumerate(images) if image is not None]
    boxes: list[np.ndarray] = [np.zeros((0, 5))] * len(images)
    for i, b in zip(readable, detector.each([np.asarray(images[i]) for i in readable], pool)):
        boxes[i] = b
    return boxes


def _check_min_prob(min_prob: float) -> None:
    if not 0.0 <= min_prob <= 1.0:  # nan too: every comparison with it is false, so no face would pass
        raise HSNetError(f"--min-prob {min_prob}: a detection probability between 0 and 1 (e.g. 0.9)")


def classify_faces(images: list[Image.Image | None], clf: Classifier, detector, *, min_prob: float = MIN_PROB,
                   pool: ThreadPoolExecutor | None = None, failed: dict[int, str] | None = None) -> list[list[dict]]:
    """The faces of decoded RGB photos, a list of records per photo (``None``: ``[]``).

    Each record: ``box`` (x1, y1, x2, y2), ``detection_probability``, ``expression``,
    ``confidence`` and every class's ``probabilities``. Faces at or above ``min_prob`` are
    cropped as ``hsnet crop`` did for training (MTCNN's box, the model's crop size and margin; a
    model trained on a dataset's own cut faces, ``detector: none``, never saw such a box) and the
    faces of all photos are classified in
    one batch. ``hsnet predict`` and the model server (:mod:`hsnet.serve`) both use this.
    ``failed``: where photos the detector failed on (out of memory) get their error, by index, and
    no faces; without it such a photo's :class:`~hsnet.data.crop.DetectionFailed` is raised.
    """
    from .data.crop import DetectionFailed, square_crop

    _check_min_prob(min_prob)
    boxes = detect(images, detector, pool)
    for i, b in enumerate(boxes):
        if isinstance(b, DetectionFailed):
            if failed is None:
                raise b
            failed[i] = str(b)
            boxes[i] = np.zeros((0, 5))
    crops, owners = [], []
    for i, (image, b) in enumerate(zip(images, boxes)):
        for box in b[b[:, 4] >= min_prob] if len(b) else b:
            crops.append(square_crop(image, box, clf.crop_size, clf.margin))  # resized as in training
            owners.append((i, box))
    probs = clf.probabilities(crops)
    per_photo: list[list[dict]] = [[] for _ in images]
    for (i, box), p in zip(owners, probs):
        k = int(p.argmax())
        per_photo[i].append({
            "box": [round(float(v), 1) for v in box[:4]], "detection_probability": round(float(box[4]), 4),
            "expression": clf.classes[k], "confidence": round(float(p[k]), 4),
            "probabilities": {c: round(float(v), 4) for c, v in zip(clf.classes, p)}})
    return per_photo


def annotate(image: Image.Image, faces: list[dict]) -> Image.Image:
    """A copy of ``image`` with each face's box and expression drawn."""
    out = image.copy()
    d = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        d.rectangle([x1, y1, x2, y2], outline=(255, 40, 40), width=width)
        label = f"{face['expression']} {face['confidence']:.0%}"
        left, top, right, bottom = d.textbbox((x1, y1), label)
        ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y2 + 2
        d.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 4], fill=(255, 40, 40))
        d.text((x1 + 2, ty + 1), label, fill=(255, 255, 255))
    return out


def _read_chunks(files: list[Path], pool: ThreadPoolExecutor | None, window: int):
    """The photos of ``files`` read ``window`` at a time (one per worker), in chunks of at most
    CHUNK photos and about crop's DECODED_BYTES of decoded RGB: 32 photos of 64 Mpx (each under the
    per-image limit) are 6 GB."""
    from .data import crop

    todo: list[_Photo] = []
    held = 0
    for i in range(0, len(files), window):
        batch = files[i:i + window]
        for photo in (list(pool.map(_read, batch)) if pool is not None and len(batch) > 1 else map(_read, batch)):
            todo.append(photo)
            held += photo.image.width * photo.image.height * 3 if photo.image is not None else 0
        if len(todo) >= CHUNK or held >= crop.DECODED_BYTES:
            yield todo
            todo, held = [], 0
    if todo:
        yield todo


def _predict_chunk(photos, clf, detector, pool, min_prob, targets, results, no_face, unreadable) -> None:
    failed: dict[int, str] = {}
    per_photo = classify_faces([photo.image for photo in photos], clf, detector, min_prob=min_prob, pool=pool,
                               failed=failed)
    for i, (photo, faces) in enumerate(zip(photos, per_photo)):
        if i in failed:  # read, but the detector failed on it: a record like an unreadable photo's
            photo = _Photo(photo.path, error=f"{photo.path}: {failed[i]}")
        record = {"path": str(photo.path), "faces": faces}
        if photo.error:
            record["error"] = photo.error
            unreadable.append(str(photo.path))
            log.warning("skipped %s", photo.error)
        else:
            record["size"] = list(photo.image.size)
            if not faces:
                no_face.append(str(photo.path))
            if targets:  # a copy that can't be written is this photo's record; its faces still count
                try:
                    with atomic_path(targets[photo.path], durable=False) as tmp:
                        annotate(photo.image, faces).save(tmp, format="JPEG", quality=90)
                except OSError as exc:
                    record["annotation_error"] = (f"{targets[photo.path]}: the annotated copy can't be written "
                                                  f"({exc.strerror or exc})")
                    log.warning("%s", record["annotation_error"])
        results.append(record)


def predict(inputs: list[str | os.PathLike], model: str | os.PathLike, *, out: str | os.PathLike | None = None,
            annotate_dir: str | os.PathLike | None = None, device: str | None = None, min_prob: float = MIN_PROB,
            min_face_size: int = MIN_FACE_SIZE, progress: bool = True, classifier: Classifier | None = None,
            workers: int | None = None) -> dict:
    """Detect and classify the faces in ``inputs`` (files and directories).

    Writes JSON lines to ``out`` (atomically) when given; returns a summary with the per-photo
    results under ``results``.
    """
    from tqdm import tqdm

    from .data.crop import Detector

    _check_min_prob(min_prob)
    entries = _expand(inputs)
    files = [path for path, _ in entries]
    targets = None
    if out:  # an unwritable output is refused before any work
        if any(os.path.realpath(out) == os.path.realpath(f) for f in files):
            raise HSNetError(f"--out {out} is one of the photos to predict on; give another file name "
                             "(JSON lines)")
        output_file(out, "--out")
        if annotate_dir and Path(os.path.realpath(out)) in (here := Path(os.path.realpath(annotate_dir)), *here.parents):
            raise HSNetError(f"--annotate {annotate_dir} is --out {out} or inside it: the results file can't also be "
                             "the folder of annotated copies (or hold it); give them two places")
    if annotate_dir:
        check_writable(annotate_dir, "--annotate")
        clean_stale_tmp(annotate_dir, "*" + ANNOTATED, recursive=True)
        targets = annotate_targets(entries, annotate_dir)
        for target in targets.values():  # a long name's temporary lost the ending matched above
            if is_cut_in_tmp_name(target.name):
                clean_stale_tmp_of(target)
    clf = classifier or load_classifier(model, device)
    detector = Detector(str(clf.setup.device), min_face_size=min_face_size)
    results, no_face, unreadable = [], [], []
    bar = tqdm(total=len(files), desc="predict", unit="photo", disable=None if progress else True)
    on_gpu = clf.setup.device.type == "cuda"
    workers = workers or min(8, usable_cores())
    pool = None if on_gpu else ThreadPoolExecutor(workers)
    try:
        for chunk in _read_chunks(files, pool, workers):
            _predict_chunk(chunk, clf, detector, pool, min_prob, targets, results, no_face, unreadable)
            bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    n_faces = sum(len(r["faces"]) for r in results)
    if out:
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for record in results:
                f.write(json.dumps(record) + "\n")
    if no_face:
        log.warning("%d photo(s) with no face found (detection probability >= %s), e.g. %s", len(no_face),
                    min_prob, ", ".join(no_face[:3]))
    return {"photos": len(files), "faces": n_faces, "no_face": no_face, "unreadable": unreadable,
            "not_annotated": [r["path"] for r in results if "annotation_error" in r], "model": clf.info,
            "results": results}
