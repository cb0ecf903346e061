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
    """The process's settings, for a test to put back (hsnet.device's own save and restore: test
    hygiene only, the tests' expectations read PyTorch's flags through :func:`tf32`)."""
    from hsnet.device import _tf32_settings

    return _tf32_settings()


def restore(settings: tuple) -> None:
    from hsnet.device import _set_tf32_settings

    _set_tf32_settings(settings)
