"""The training input pipeline: decode once into a uint8 tensor cache, augment on the device.

* :func:`load_split` decodes a split's cropped images once into a memory-mapped
  ``(N, 3, S, S)`` uint8 ``.npy`` file (cached by manifest content and size), so epochs
  read raw bytes instead of decoding PNGs. The cache (``HSNET_CACHE_DIR``, default
  ``~/.cache/hsnet``) keeps under ``HSNET_CACHE_MAX_GB`` (default 20) by dropping the least
  recently used files.
* :class:`Batches` gathers shuffled batches from it in a background thread into pinned
  memory and copies them to the device without blocking.
* :func:`augment` flips and rotates a whole batch on the device (the paper's random
  horizontal flip and ±5° rotation) after :func:`hsnet.device.normalize`.
* When a split fits a share of the GPU's memory (``train.data_on_device``,
  ``train.data_memory_share``), :func:`to_device` keeps it there as uint8: :class:`DeviceBatches`
  gathers batches with an index on the device and :class:`EpochAugment` draws the epoch's flips
  and rotations up front (the same numbers :func:`augment` draws), so a training step has no
  host thread, no pinned copy and no host-to-device transfer.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import queue
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import sources
from .errors import HSNetError
from .io import CACHE_ENV, cache_folder, cache_root, dvc_cache_of, file_stamp, open_rgb, remove_stale_temporaries, safe_join, \
    usable_cores
from .params import MIN_BATCH


@dataclass
class Split:
    images: np.ndarray  # (N, 3, S, S) uint8, memory-mapped
    labels: torch.Tensor  # (N,) int64
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


CACHE_MAX_ENV = "HSNET_CACHE_MAX_GB"
DEFAULT_CACHE_MAX_GB = 20.0
STALE_DECODE_SECONDS = 86_400  # a decode writes through a memory map, whose file time may lag: a day


def default_cache_dir() -> Path:
    return cache_root() / "tensors"


def cache_limit_bytes() -> int:
    """:data:`CACHE_MAX_ENV` (default :data:`DEFAULT_CACHE_MAX_GB`): the tensor cache's size cap."""
    raw = os.environ.get(CACHE_MAX_ENV) or DEFAULT_CACHE_MAX_GB
    try:
        gb = float(raw)
    except ValueError:
        raise HSNetError(f"{CACHE_MAX_ENV}={raw!r} is not a number of gigabytes (e.g. 20)") from None
    return int(gb * 1e9)


def prune_cache(cache_dir: Path, keep: Path, limit: int | None = None) -> list[Path]:
    """Delete the least recently used tensor files until the cache fits ``limit`` bytes.

    ``keep`` (the split just loaded) is never deleted, however large. Also drops temporary files
    that a killed decode left behind more than a day ago. Returns what was deleted.
    """
    limit = cache_limit_bytes() if limit is None else limit
    if not os.access(cache_dir, os.W_OK | os.X_OK):  # a cache this user reads only: not its to prune
        return []
    gone = remove_stale_temporaries(cache_dir, "*.tmp", older_than=STALE_DECODE_SECONDS)
    files = []
    for f in cache_dir.glob("*.npy"):
        try:
            st = f.stat()
        except FileNotFoundError:  # another process pruned it
            continue
        files.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    for _, size, f in sorted(files, key=lambda t: t[0]):
        if total <= limit:
            break
        if f == keep:
            continue
        try:
            f.unlink()  # a reader that has it memory-mapped keeps its pages (POSIX)
        except FileNotFoundError:
            pass
        except OSError:  # not ours to remove (a shared cache): left, and counted
            continue
        total -= size
        gone.append(f)
    return gone


LIBRARIES = ("PIL", "numpy")  # (import names) what decodes and resizes a cached split's images


def load_split(rows: list[dict], root: Path, size: int, *, cache_dir: Path | None = None,
               progress: bool = True) -> Split:
    """The images of ``rows`` (paths relative to ``root``) as a cached uint8 tensor file."""
    from tqdm import tqdm

    cache_dir = Path(cache_dir or default_cache_dir())
    key = hashlib.sha256(repr((size, [(r["path"], r["label"]) for r in rows])).encode())
    key.update(sources.code_version(__name__).encode())  # decoded and resized by this code, not an older one
    key.update(repr(sources.library_versions(LIBRARIES)).encode())  # ... and these libraries
    linked = dvc_cache_of(root)  # crops DVC checked out as links into its cache (cache.type symlink)
    files = [safe_join(root, r["path"], what="manifest path", also=linked) for r in rows]  # nothing else is read
    for f in files:  # content changes under the same names invalidate the cache too
        try:
            st = f.stat()
        except OSError as exc:
            raise HSNetError(f"{f}: {exc.strerror or exc}; the manifest lists it: re-run 'hsnet crop'") from exc
        key.update(file_stamp(st).encode())
    path = cache_dir / f"{key.hexdigest()[:24]}_{size}.npy"
    labels = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
    paths = [r["path"] for r in rows]
    try:
        os.utime(path)  # a hit: now the most recently used, the last to be pruned
        hit = True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # a cache this user can read, not write
            hit = path.is_file()  # (a volume filled before, another user's): a hit is used as it is
        else:  # not there (or its folder can't be: cache_folder names why)
            hit = False
    data = None
    if hit:  # opened now: once mapped, another process's prune can't take it away (POSIX keeps the pages)
        try:
            data = np.load(path, mmap_mode="r")
        except FileNotFoundError:  # pruned by another process since the utime: decoded again
            hit = False
    if not hit:
        cache_folder(cache_dir)
        need, free = len(rows) * 3 * size * size, shutil.disk_usage(cache_dir).free
        if need > free:  # refused before anything is written, instead of a full disk half-way
            raise HSNetError(f"the tensor cache of {len(rows)} images at {size}x{size} need {need / 1e9:.1f} GB, "
                             f"but {cache_dir} has {free / 1e9:.1f} GB free: free space there, set {CACHE_ENV} "
                             "to a folder on a larger disk, or lower input_size (params.yaml) to the crops' size")
        # a name no other decode takes: not the PID alone (hsnet is PID 1 in each container sharing a cache volume)
        tmp = path.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), 3, size, size))

        def decode(i):
            img = open_rgb(files[i])
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr[i] = np.asarray(img).transpose(2, 0, 1)

        try:
            with ThreadPoolExecutor(max_workers=min(8, usable_cores() * 2)) as pool:
                list(tqdm(pool.map(decode, range(len(rows))), total=len(rows), disable=None if progress else True,
                          desc="decoding into tensor cache", unit="img", leave=False))
            arr.flush()
            del arr
            data = np.load(tmp, mmap_mode="r")  # mapped before it is in place: no other prune can take it first
            os.replace(tmp, path)
        except BaseException:  # a crop that no longer decodes, Ctrl-C: no partial file left in the cache
            tmp.unlink(missing_ok=True)
            raise
    prune_cache(cache_dir, keep=path)
    return Split(data, labels, paths)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor onto ``device`` without stopping the host: a plain copy from pageable
    memory waits for the GPU to finish all queued work, so the host could no longer run ahead of
    the GPU (a stall per batch); from pinned memory the copy is queued like a kernel."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def draw_augment(n: int, generator: torch.Generator, *, hflip: bool, rotate_degrees: float):
    """The random numbers of one batch's augmentation, on the CPU: (flip mask (n,) or None,
    rotation matrices (n, 2, 3) or None), drawn from ``generator`` flips first."""
    flip = theta = None
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
    if rotate_degrees:
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotate_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    return flip, theta


def apply_augment(x: torch.Tensor, flip: torch.Tensor | None, theta: torch.Tensor | None) -> torch.Tensor:
    """Flip the images where ``flip``, then rotate by ``theta`` (both already on ``x``'s device)."""
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if theta is not None:
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x


def augment(x: torch.Tensor, generator: torch.Generator, *, hflip: bool,
            rotate_degrees: float) -> torch.Tensor:
    """Random horizontal flip (p = 0.5) and rotation in [-deg, deg] of a normalised batch.

    The random numbers come from a CPU ``generator`` so that CPU and GPU runs draw the same
    augmentations; the work itself runs on ``x``'s device. Rotated-in corners are 0 (mid-grey).
    """
    return apply_augment(x, *BatchAugment(generator, x.device, hflip=hflip, rotate_degrees=rotate_degrees)
                         .take(x.shape[0]))


class EpochAugment:
    """A whole epoch's augmentation drawn up front and moved to the device in one copy: called
    batch after batch, it flips and rotates exactly as :func:`augment` with the same ``generator``
    would, without a host-to-device copy per batch."""

    def __init__(self, batch_sizes: list[int], generator: torch.Generator, device: torch.device, *,
                 hflip: bool, rotate_degrees: float):
        draws = [draw_augment(n, generator, hflip=hflip, rotate_degrees=rotate_degrees) for n in batch_sizes]
        self.flip = torch.cat([f for f, _ in draws]).to(device) if hflip and draws else None
        self.theta = torch.cat([t for _, t in draws]).to(device) if rotate_degrees and draws else None
        self.pos = 0

    def take(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The next ``n`` images' (flip mask, rotation matrices), on the device."""
        part = slice(self.pos, self.pos + n)
        self.pos = part.stop
        return (None if self.flip is None else self.flip[part]), (None if self.theta is None else self.theta[part])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_augment(x, *self.take(x.shape[0]))


class BatchAugment:
    """:func:`augment`'s draws batch by batch, as (flip mask, rotation matrices) moved to ``device``:
    the same interface as :class:`EpochAugment` for the host pipeline."""

    def __init__(self, generator: torch.Generator, device: torch.device, *, hflip: bool,
                 rotate_degrees: float):
        self.generator, self.device = generator, device
        self.hflip, self.rotate_degrees = hflip, rotate_degrees

    def take(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        flip, theta = draw_augment(n, self.generator, hflip=self.hflip, rotate_degrees=self.rotate_degrees)
        return (None if flip is None else _to_device(flip, self.device)), \
            (None if theta is None else _to_device(theta, self.device))


class Batches:
    """Batches of (uint8 images on ``device``, labels on ``device``) in ``order``.

    A background thread gathers the next batches from the memory-mapped cache into pinned
    memory while the device works on the current one.
    """

    def __init__(self, split: Split, order: torch.Tensor, batch_size: int, device: torch.device,
                 *, drop_singleton: bool = True, prefetch: int = 3):
        self.split, self.device = split, device
        self.chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if drop_singleton and self.chunks and len(self.chunks[-1]) < MIN_BATCH and len(self.chunks) > 1:
            self.chunks.pop()  # BatchNorm can't train on one image
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.chunks)

    def _gather(self, idx: torch.Tensor):
        idx_np = idx.numpy()
        x = torch.from_numpy(np.ascontiguousarray(self.split.images[np.sort(idx_np)]))
        # restore the shuffled order (memmap reads are faster sorted)
        x = x[torch.from_numpy(np.argsort(np.argsort(idx_np)))]
        y = self.split.labels[idx]
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def __iter__(self):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def worker():
            try:
                for idx in self.chunks:
                    if stop.is_set():
                        return
                    q.put(self._gather(idx))
            except BaseException as exc:  # surfaced in the consumer
                q.put(exc)
            q.put(None)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, y = item
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)


@dataclass
class DeviceSplit:
    """A split held in device memory: images (N, 3, S, S) uint8 and labels (N,) int64 on the device."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def split_bytes(split: Split) -> int:
    return int(np.prod(split.images.shape)) * split.images.itemsize + split.labels.numel() * 8


# What training allocates on the GPU after the data is placed (Adam's state, gradients,
# activations, cuDNN's workspace, CUDA graph pools): under half a GiB at batch 32 and 224 px
# (docs/performance.md, section 8), with room for larger batches. ``auto`` leaves this much free.
TRAINING_HEADROOM = 2 << 30


def data_on_device(splits: list[Split], device: torch.device, setting, share: float) -> bool:
    """``train.data_on_device``: whether to hold ``splits`` in device memory. ``auto``: on a GPU when
    together they take at most ``share`` of its memory (``train.data_memory_share``) and leave
    :data:`TRAINING_HEADROOM` of what is free (another job may hold the rest); ``true``: always
    when they fit in what is free (a CPU holds them in RAM: the same code path, used by the
    tests); ``false``: never (the host pipeline, :class:`Batches`)."""
    if setting is False or setting == "false":
        return False
    need = sum(split_bytes(s) for s in splits)
    if device.type != "cuda":
        return setting is True or setting == "true"
    free, total = torch.cuda.mem_get_info(device)
    insisted = setting is True or setting == "true"
    fits = need <= share * total and need + (0 if insisted else TRAINING_HEADROOM) <= free
    if not fits and insisted:
        raise HSNetError(f"train.data_on_device true: the splits take {need / 2**30:.2f} GiB, over "
                         f"train.data_memory_share {share} of the GPU's {total / 2**30:.1f} GiB or its "
                         f"{free / 2**30:.1f} GiB free; set train.data_on_device auto (or false), or raise "
                         "train.data_memory_share")
    return fits


def to_device(split: Split, device: torch.device, chunk_bytes: int = 256 << 20) -> DeviceSplit:
    """``split`` copied into device memory, a chunk at a time (the host never holds a second full copy)."""
    images = torch.empty(split.images.shape, dtype=torch.uint8, device=device)
    per = max(1, chunk_bytes // max(1, int(np.prod(split.images.shape[1:]))))
    for i in range(0, len(split), per):
        images[i:i + per].copy_(torch.from_numpy(np.array(split.images[i:i + per])))
    return DeviceSplit(images, split.labels.to(device), split.paths)


class DeviceBatches(Batches):
    """The batches of :class:`Batches` (same chunks, same order) from a :class:`DeviceSplit`: the
    epoch's order goes to the device once, each batch is one gather there."""

    def __iter__(self):
        if not self.chunks:
            return
        order = torch.cat(self.chunks).to(self.device)
        start = 0
        for chunk in self.chunks:
            idx = order[start:start + len(chunk)]
            start += len(chunk)
            yield self.split.images.index_select(0, idx), self.split.labels.index_select(0, idx)


def check_nonempty(name: str, split: Split | list, where: str, minimum: int = 1) -> None:
    if len(split) < minimum:
        held = "is empty" if not len(split) else f"holds {len(split)} image{'s' if len(split) > 1 else ''}"
        needs = f" (at least {minimum} are needed: BatchNorm normalises over a batch)" if minimum > 1 else ""
        raise HSNetError(f"the {name} split of {where} {held}{needs}; re-import with other split settings "
                         "or check the crop report for dropped images")
