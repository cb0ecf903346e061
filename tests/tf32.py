"""PyTorch's TF32 settings as the tests read and restore them (its newer fp32_precision settings
where it has them: mixing them with the older allow_tf32 flags is an error in PyTorch)."""

from __future__ import annotations

import torch

backends = torch.backends
NEW_API = hasattr(backends.cuda.matmul, "fp32_precision") and hasattr(getattr(backends.cudnn, "conv", None),
                                                                         "fp32_precision")


def tf32() -> tuple[bool, bool]:
    """(cuDNN convolutions, matmuls) allowed TF32, as PyTorch reports them."""
    if NEW_API:
        return backends.cudnn.conv.fp32_precision == "tf32", backends.cuda.matmul.fp32_precision == "tf32"
    return backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32


def saved() -> tuple:
    if NEW_API:
        return backends.cudnn.conv.fp32_precision, backends.cudnn.rnn.fp32_precision, backends.cuda.matmul.fp32_precision
    return backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32


def restore(settings: tuple) -> None:
    if NEW_API:
        backends.cudnn.conv.fp32_precision, backends.cudnn.rnn.fp32_precision, backends.cuda.matmul.fp32_precision = \
            settings
    else:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = settings
