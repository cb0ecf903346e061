"""File helpers shared by every step: atomic writes and robust image reading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import HSNetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 64_000_000  # larger files are refused (decompression bombs, scans)


def cache_root() -> Path:
    """Where hsnet keeps its caches (tensor files, image checks, downloaded models):
    ``HSNET_CACHE_DIR``, default ``~/.cache/hsnet``."""
    return Path(os.environ.get("HSNET_CACHE_DIR") or Path.home() / ".cache" / "hsnet")


class ImageReadError(HSNetError):
    """An image file could not be read; the message names it."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    A crash or an exception leaves whatever ``path`` held before untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def open_rgb(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image fully as 8-bit RGB, whatever it was stored as.

    Handles EXIF orientation, grayscale, palette, RGBA/LA (composited on white), CMYK and
    16-bit images. Raises :class:`ImageReadError` naming the file otherwise.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageReadError(
                    f"{path}: {img.width}x{img.height} pixels is over the limit of {max_pixels:,}; "
                    "downscale it first")
            img = ImageOps.exif_transpose(img)
            img.load()
            return to_rgb(img)
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, F ...
