"""HSNet's spatial sizes stage by stage (Table 1's arithmetic), without torch: the model's input
check (hsnet.model) and the params schema's smallest ``input_size`` (hsnet.params), which the
torch-free first step of a pipeline run checks before any data is fetched."""

from __future__ import annotations


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_size(size: int) -> dict[str, int]:
    """Spatial size after each stage for a ``size``x``size`` input (Table 1's arithmetic)."""
    s = _conv_out(size, 3, 2)  # conv2d_1a
    s = _conv_out(s, 3)  # conv2d_2a
    s = _conv_out(s, 3, padding=1)  # conv2d_2b
    s = _conv_out(s, 3, 2)  # maxpool_3a
    s = _conv_out(s, 3)  # conv2d_4a (conv2d_3b is 1x1)
    stem = _conv_out(s, 3, 2)  # conv2d_4b
    a = _conv_out(stem, 3, 2)  # SDIB-A (every branch: floor((H - 1) / 2))
    b = _conv_out(a, 3, 2)  # SDIB-B
    return {"stem": stem, "rdib_a": stem, "sdib_a": a, "rdib_b": a, "sdib_b": b, "rdib_c": b}


def _min_input_size() -> int:
    size = 1
    while min(output_size(size).values()) < 1 or output_size(size)["sdib_a"] < 3:
        size += 1
    return size


MIN_INPUT_SIZE = _min_input_size()  # 75: the SDIBs need at least 3x3 inputs
