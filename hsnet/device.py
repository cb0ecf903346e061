"""Where the model runs, and the one forward pass every step uses.

:func:`pick_device` chooses the device and its numerics (bf16 autocast and channels-last on a
GPU, fp32 on a CPU); :func:`forward` is the model's input contract, used by training,
evaluation, prediction and serving alike: uint8 RGB batch -> fixed image standardisation
(what the VGGFace2 stem was trained with) -> optional augmentation -> channels-last ->
autocast -> float32 logits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import HSNetError

NORMALIZATION = "fixed_image_standardization: (x - 127.5) / 128"  # facenet-pytorch's


@dataclass(frozen=True)
class Setup:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool


def pick_device(name: str | None = None) -> Setup:
    """``name`` (cpu, cuda, cuda:1), else ``HSNET_DEVICE``, else a GPU when one is visible."""
    name = name or os.environ.get("HSNET_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HSNetError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise HSNetError(f"device {name!r} is not a device name; use cpu or cuda (cuda:N)") from exc
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Setup(device, amp, True)
    return Setup(device, None, False)


def place(model: torch.nn.Module, setup: Setup) -> torch.nn.Module:
    """``model`` on the device, in the memory format :func:`forward` feeds it."""
    model = model.to(setup.device)
    return model.to(memory_format=torch.channels_last) if setup.channels_last else model


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0-255) -> facenet-pytorch's fixed standardisation, (x - 127.5) / 128."""
    return (x.float() - 127.5) / 128.0


def forward(model: torch.nn.Module, x: torch.Tensor, setup: Setup,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Float32 logits of a uint8 (N, 3, S, S) batch already on ``setup.device``.

    ``transform`` (training's augmentation) runs on the standardised batch."""
    x = normalize(x)
    if transform is not None:
        x = transform(x)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
        return model(x).float()
