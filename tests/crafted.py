"""Small inputs tests make by hand: manifest rows and noise photos (no face, any size)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def manifest_rows(names: list[str]) -> list[dict]:
    """Manifest rows for ``names``, all in the train split, labels cycling over 7 classes."""
    return [{"path": n, "label": i % 7, "label_name": "joy", "split": "train", "subject": ""}
            for i, n in enumerate(names)]


def noise_photo(path, seed: int = 0, size: int = 40, fmt: str = "PNG") -> None:
    """A size x size photo of seeded noise at ``path`` (its folders made), saved as ``fmt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        path, format=fmt)
