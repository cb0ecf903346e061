"""Kernel scale: the dilated Inception blocks (DIBs) of HSNet, Sect. 3.1, Fig. 4, eqs. 4-10.

A DIB branch is a 1x1 reduction followed by a 3x3 convolution with the branch's
dilation rate. Two kinds of block exist:

* ``SDIB`` (stride DIB, eqs. 4-6): dilated branches with stride 2, plus a
  max-pool -> 1x1 branch; the branches are concatenated, the spatial size
  becomes floor((H - 1) / 2).
* ``RDIB`` (residual DIB, eqs. 7-10): dilated branches with stride 1, plus a
  1x1 branch; the concatenation is added to the block's input, so the branch
  widths sum to the input's channel count.

The five blocks of Table 1 are built by :func:`rdib_a` ... :func:`rdib_c`; the
choices where Table 1 is ambiguous are explained in ``docs/paper-notes.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DilatedBranch:
    """One 1x1-reduction -> 3x3-dilated branch of a DIB."""

    dilation: int
    reduce: int  # channels after the 1x1 reduction
    out: int  # channels after the 3x3 dilated convolution


class ConvBNReLU(nn.Module):
    """Conv -> BatchNorm -> ReLU, the unit each convolution of Table 1 stands for.

    Same layout and BatchNorm settings (eps=1e-3) as facenet-pytorch's ``BasicConv2d``
    in the Inception-ResNet-V1 stem, plus a dilation rate.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _dilated(cin: int, branch: DilatedBranch, stride: int) -> nn.Sequential:
    # Table 1: stride 1 -> padding d (same size); stride 2 -> padding d - 1, which
    # gives floor((H - 1) / 2) for every dilation rate (the SDIB rule of Sect. 3.1).
    padding = branch.dilation if stride == 1 else branch.dilation - 1
    return nn.Sequential(
        ConvBNReLU(cin, branch.reduce, kernel_size=1),
        ConvBNReLU(branch.reduce, branch.out, kernel_size=3, stride=stride, padding=padding,
                   dilation=branch.dilation),
    )


class SDIB(nn.Module):
    """Stride dilated Inception block (eqs. 4-6): halves the spatial size."""

    def __init__(self, cin: int, branches: Sequence[DilatedBranch], pool_out: int):
        super().__init__()
        self.dilated = nn.ModuleList(_dilated(cin, b, stride=2) for b in branches)
        # Branch 4 (eq. 6): 3x3 max-pool, stride 2, then a 1x1 convolution.
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=2), ConvBNReLU(cin, pool_out, 1))
        self.out_channels = sum(b.out for b in branches) + pool_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.dilated] + [self.pool(x)], dim=1)


class RDIB(nn.Module):
    """Residual dilated Inception block (eqs. 7-10): F^l = F^{l-1} + concat(branches)."""

    def __init__(self, cin: int, branches: Sequence[DilatedBranch], pointwise_out: int):
        super().__init__()
        width = sum(b.out for b in branches) + pointwise_out
        if width != cin:
            raise ValueError(f"RDIB branch widths sum to {width}, the residual add needs {cin}")
        self.dilated = nn.ModuleList(_dilated(cin, b, stride=1) for b in branches)
        # Branch 4 (eq. 9): a 1x1 convolution.
        self.pointwise = ConvBNReLU(cin, pointwise_out, 1)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([branch(x) for branch in self.dilated] + [self.pointwise(x)], dim=1)
        return x + s


# --- The five blocks of Table 1 (input 3x224x224 -> shapes in the comments) ---------------
# Reduction widths follow Inception-ResNet-V1 at the same place (Block35: 32, Mixed_6a: 192,
# Block17: 128, Mixed_7a: 256, Block8: 192); SDIB widths follow Mixed_6a / Mixed_7a.

def rdib_a() -> RDIB:
    """256x25x25 -> 256x25x25; branches 1 (d=1), 2 (d=2) and 4; no branch 3."""
    return RDIB(256, [DilatedBranch(1, 32, 96), DilatedBranch(2, 32, 96)], pointwise_out=64)


def sdib_a() -> SDIB:
    """256x25x25 -> 896x12x12; branches 1 (d=1), 2 (d=2) and 4; no branch 3."""
    return SDIB(256, [DilatedBranch(1, 192, 384), DilatedBranch(2, 192, 256)], pool_out=256)


def rdib_b() -> RDIB:
    """896x12x12 -> 896x12x12; branches 1-3 (d=1, 2, 3) and 4."""
    return RDIB(896, [DilatedBranch(d, 128, 224) for d in (1, 2, 3)], pointwise_out=224)


def sdib_b() -> SDIB:
    """896x12x12 -> 1792x5x5; branches 1-3 (d=1, 2, 3) and 4."""
    return SDIB(896, [DilatedBranch(1, 256, 384), DilatedBranch(2, 256, 256),
                      DilatedBranch(3, 256, 256)], pool_out=896)


def rdib_c() -> RDIB:
    """1792x5x5 -> 1792x5x5; branches 1 (d=1) and 4 only."""
    return RDIB(1792, [DilatedBranch(1, 192, 896)], pointwise_out=896)
