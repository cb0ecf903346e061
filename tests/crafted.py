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


def ferg_tree(root, per_class: int = 6):
    """FERG-DB's layout at ``root`` ({character}/{character}_{emotion}/{character}_{emotion}_{n}.png),
    ``per_class`` noise photos of 40 px per character and emotion, each of its own seed."""
    from hsnet.data.datasets import FERG_CHARACTERS, FERG_CLASSES

    seed = 0
    for character in FERG_CHARACTERS:
        for emotion in FERG_CLASSES:
            for n in range(1, per_class + 1):
                seed += 1
                noise_photo(root / character / f"{character}_{emotion}" / f"{character}_{emotion}_{n}.png", seed)
    return root


def answering_checkpoint(checkpoint, k: int, path):
    """A copy of the hsnet ``checkpoint`` at ``path`` whose classifier answers class ``k`` whatever
    the image (its weights zero, its bias 10 for ``k``); returns ``path``."""
    import torch

    ckpt = torch.load(checkpoint, weights_only=True)
    for key, value in ckpt["model"].items():
        if "classifier.weight" in key:
            value.zero_()
        elif "classifier.bias" in key:
            value.zero_()
            value[k] = 10.0
    torch.save(ckpt, path)
    return path
