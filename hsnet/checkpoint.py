"""Checkpoints: what ``hsnet train`` writes and evaluate, register, predict and serve read.

A checkpoint is a plain mapping that ``torch.load(weights_only=True)`` can read (no pickled
objects): ``format``, ``meta`` (dataset, classes, input size, model switches, the data
version, the resolved params), ``model`` (the state dict), ``state`` (epochs, best epoch,
history) and, in ``last.pt`` only, what resuming needs (optimizer, scheduler, RNG states).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import __version__, files
from .device import NORMALIZATION
from .errors import HSNetError
from .io import atomic_path
from .params import ModelParams, section

BEST, LAST, VERDICT = files.BEST, files.LAST, files.VERDICT  # in train's output folder
FORMAT = 2  # 2: FGAL with BatchNorm after its laterals and standardised FC inputs (docs/paper-notes.md)
INFERENCE_KEYS = ("format", "meta", "model", "state")


def build_model(num_classes: int, model: ModelParams, *, for_checkpoint: bool = False):
    """HSNet with ``model``'s switches. ``for_checkpoint``: the stem's weights come from a
    checkpoint about to be loaded, so KTL's VGGFace2 file is not read."""
    from .model.hsnet import SKIP_STEM_WEIGHTS, HSNet

    stem = (SKIP_STEM_WEIGHTS if for_checkpoint else model.stem_weights) if model.ktl else None
    return HSNet(num_classes, dib=model.dib, fgal=model.fgal, ktl=model.ktl, stem_weights=stem)


def save(path: Path, ckpt: dict) -> None:
    """Write ``ckpt`` to ``path`` atomically; a failed write (full disk) leaves the old file whole."""
    try:
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    except (OSError, RuntimeError) as exc:  # a full disk: torch's zip writer raises RuntimeError
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
        raise HSNetError(f"can't write checkpoint {path} ({reason}); is the disk full? Free space there or train "
                         f"with another --out; {path.name} from the last finished epoch is intact, and "
                         f"--resume continues from {LAST}") from exc


def for_inference(ckpt: dict) -> dict:
    """A checkpoint without what only resuming needs (optimizer, scheduler, RNG: 2/3 of last.pt):
    weights, metadata and history, for evaluate, register and predict."""
    return {k: ckpt[k] for k in INFERENCE_KEYS}


def _why_unloadable(exc: Exception) -> str:
    """What torch.load's error means, in a few words: PyTorch's own message suggests loading the
    file with weights_only=False (running whatever code it holds), which hsnet never does."""
    import pickle

    text = str(exc)
    if "zip archive" in text or "central directory" in text or isinstance(exc, EOFError):
        return "is damaged or incomplete (not a whole PyTorch file: a copy cut short?)"
    if isinstance(exc, pickle.UnpicklingError):
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = next((line for line in detail if line.strip()), "")[:200] if "WeightsUnpickler" in text else ""
        return ("is not a checkpoint hsnet can load: it is not a PyTorch file, or holds more than tensors and "
                "plain data, which is refused unread" + (f" ({detail})" if detail else ""))
    return f"is not a checkpoint hsnet can load ({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''})"


def load(path: str | os.PathLike) -> dict:
    """A checkpoint read safely (``weights_only``), or an error naming the file."""
    return read(path)[0]


def read(path: str | os.PathLike) -> tuple[dict, bytes, str]:
    """:func:`load`, the bytes it was loaded from and their sha256: the file is read once, so its
    hash, its weights and any copy of it are of one file, even if it is replaced meanwhile
    (``best.pt`` of a training still running)."""
    import hashlib
    import io

    path = Path(path)
    if not path.is_file():
        raise HSNetError(f"checkpoint {path} does not exist (or is not a regular file)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HSNetError(f"checkpoint {path} can't be read ({exc.strerror or exc})") from exc
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HSNetError(f"checkpoint {path} {_why_unloadable(exc)}; use a checkpoint written by hsnet train "
                         "(copy it again, or train again)") from exc
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in INFERENCE_KEYS):
        raise HSNetError(f"{path} is not an hsnet training checkpoint")
    if ckpt.get("format") != FORMAT:
        raise OtherFormat(path, ckpt.get("format"))
    return ckpt, data, hashlib.sha256(data).hexdigest()


class OtherFormat(HSNetError):
    """A checkpoint of another :data:`FORMAT`: older (train it again with this hsnet) or newer (it
    needs the newer hsnet that wrote it: upgrade this one, e.g. the serving image)."""

    def __init__(self, path: Path, found):
        newer = isinstance(found, int) and found > FORMAT
        super().__init__(
            f"{path} was written by {'a newer' if newer else 'an older'} hsnet (checkpoint format {found!r}, this "
            f"hsnet {__version__} reads format {FORMAT}): "
            + ("upgrade hsnet where it is read (for a registered model, the serving image or the pipeline's "
               "image to the release that trained it)" if newer else
               "the model changed since; train it again with this version"))
        self.path, self.found = path, found


def model_from(ckpt: dict):
    """The trained HSNet of a loaded checkpoint, on the CPU."""
    meta = ckpt["meta"]
    trained_on = meta.get("normalization")  # what its inputs were standardised as (recorded by train)
    if trained_on is not None and trained_on != NORMALIZATION:
        raise HSNetError(f"the checkpoint's model was trained on inputs standardised as {trained_on!r}, and this "
                         f"hsnet feeds {NORMALIZATION!r}: every prediction would be wrong. Use the hsnet that "
                         "trained it, or train again with this one")
    model = build_model(len(meta["classes"]), section(ModelParams, meta["model"]), for_checkpoint=True)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing/unexpected keys, other shapes
        raise HSNetError(f"the checkpoint's weights don't fit the model its metadata describes "
                         f"({str(exc).splitlines()[0][:200]}); was it written by another hsnet version?") from exc
    return model
