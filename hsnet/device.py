"""Where the model runs, and the one forward pass every step uses.

:func:`pick_device` chooses the device and its numerics (bf16 autocast and channels-last on a
GPU, fp16 autocast on one without bf16: :class:`hsnet.step.Step` scales its loss; fp32 on a
CPU); :func:`forward` is the model's input contract, used by training, evaluation, prediction
and serving alike: uint8 RGB batch -> fixed image standardisation
(what the VGGFace2 stem was trained with) -> optional augmentation -> channels-last ->
autocast -> float32 logits.

TF32 is one process-wide switch, kept here: :func:`enable_tf32` (training and inference on a
GPU) and :func:`full_fp32` (face detection, whose boxes must not depend on it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import HSNetError

NORMALIZATION = "fixed_image_standardization: (x - 127.5) / 128"  # facenet-pytorch's


@dataclass(frozen=True)
class Setup:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool


def asked(name: str | None = None) -> str | None:
    """The device asked for: ``name`` (a --device flag), else ``HSNET_DEVICE``, else None."""
    return name or os.environ.get("HSNET_DEVICE") or None


def pick_device(name: str | None = None) -> Setup:
    """``name`` (cpu, cuda, cuda:1), else ``HSNET_DEVICE``, else a GPU when one is visible."""
    name = asked(name) or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HSNetError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise HSNetError(f"device {name!r} is not a device name; use cpu or cuda (cuda:N)") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise HSNetError(f"device {name!r}: {count} GPU(s) visible (cuda:0 to cuda:{count - 1}"
                             + (f"; CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
                             + "); pick one of them")
        if device.index is not None:
            torch.cuda.set_device(device)  # the current device: its RNG, streams and graphs are this one's
        torch.backends.cudnn.benchmark = True
        enable_tf32()
        amp = torch.bfloat16 if native_bf16(device) else torch.float16
        return Setup(device, amp, True)
    return Setup(device, None, False)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (Ampere, compute capability 8.0, and later).
    Not ``torch.cuda.is_bf16_supported()``: by default it counts emulation (True on a V100 or T4,
    where bf16 runs slowly) and answers for the current device, not ``device``."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device) >= (8, 0)


def place(model: torch.nn.Module, setup: Setup) -> torch.nn.Module:
    """``model`` on the device, in the memory format :func:`forward` feeds it."""
    model = model.to(setup.device)
    return model.to(memory_format=torch.channels_last) if setup.channels_last else model


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0-255) -> facenet-pytorch's fixed standardisation, (x - 127.5) / 128."""
    return (x.float() - 127.5) / 128.0


def forward(model: torch.nn.Module, x: torch.Tensor, setup: Setup,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
            autocast_cache: bool = True) -> torch.Tensor:
    """Float32 logits of a uint8 (N, 3, S, S) batch already on ``setup.device``.

    ``transform`` (training's augmentation) runs on the standardised batch. ``autocast_cache=False``
    while a CUDA graph is captured (autocast's cache of cast weights must not outlive the capture)."""
    x = normalize(x)
    if transform is not None:
        x = transform(x)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None,
                        cache_enabled=autocast_cache):
        return model(x).float()


# --- TF32: PyTorch's settings are process-wide; one lock, and what to restore after fp32 sections
_TF32_LOCK = threading.Lock()
_fp32_sections = 0
_outside_fp32: tuple | None = None


def _tf32_settings() -> tuple:
    """The process's settings, to restore later. Read through PyTorch's older flags, which its
    compiler still reads too; where the caller mixed them with the newer ``fp32_precision``
    settings (reading the older ones then raises), the newer ones as they are."""
    b = torch.backends
    try:
        return "flags", b.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    except RuntimeError:
        return "precision", b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision


def _set_tf32_settings(settings: tuple) -> None:
    # the older setters keep the older and newer views of the settings in step (the newer setters
    # alone leave the older readers raising "mix of the legacy and new APIs")
    b = torch.backends
    if settings[0] == "flags":
        b.cudnn.allow_tf32 = settings[1]
        torch.set_float32_matmul_precision(settings[2])
    else:
        b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision = settings[1:]


def _tf32(on: bool) -> tuple:
    return "flags", on, "high" if on else "highest"  # matmuls: "high" is TF32, "highest" full fp32


def enable_tf32() -> None:
    """TF32 for cuDNN's convolutions and for matmuls (Ampere and later: several times the fp32
    throughput, a 10-bit mantissa). Asked for while a :func:`full_fp32` section runs in another
    thread, it takes effect when the last such section ends."""
    global _outside_fp32
    with _TF32_LOCK:
        if _fp32_sections:
            _outside_fp32 = _tf32(True)
        else:
            _set_tf32_settings(_tf32(True))


@contextmanager
def full_fp32() -> Iterator[None]:
    """Convolutions and matmuls in full fp32 while inside (for every thread: the settings are the
    process's); the settings from before come back when the last section ends, also after an error.
    MTCNN runs in it: TF32 moved its boxes on a GPU (docs/performance.md, section 8)."""
    global _fp32_sections, _outside_fp32
    with _TF32_LOCK:
        if _fp32_sections == 0:
            _outside_fp32 = _tf32_settings()
            _set_tf32_settings(_tf32(False))
        _fp32_sections += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _fp32_sections -= 1
            if _fp32_sections == 0:
                _set_tf32_settings(_outside_fp32)
                _outside_fp32 = None
