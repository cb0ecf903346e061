"""Network scale: feature guided auxiliary learning (FGAL), Sect. 3.2, Fig. 3b-c, eqs. 11-17.

FGAL fuses the high-level feature map F^C into the medium and low levels, top-down
as in a feature pyramid network (eqs. 11-13), then classifies each fused level with a
self-guided classifier that also learns the level's weight (eqs. 14-15); the model's
output is the sum of the three weighted logits (eqs. 16-17).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PooledFeatures(nn.Module):
    """Psi of eq. 14 as the FC layers see it: adaptive average pooling to 1x1, then standardised
    over the batch (a parameter-free BatchNorm1d) and divided by sqrt(channels), so that its
    expected squared length is 1.

    Neither step is in the paper; both make its Adam at lr 0.01 train (docs/paper-notes.md,
    "Learning rate 0.01"). Adam moves each weight of an FC layer by about lr per step whatever
    the gradient's size, so the layer's output moves by about lr * sum(|input|). On the raw
    pooled features (all positive, 256-1792 channels) that is 3-17 per step at lr 0.01:
    lambda~ saturated at 0 and the logits swung by that much every step. Standardised, it is
    still about lr * 0.8 * channels = 2-14 for the inputs of one batch; divided by
    sqrt(channels), at most lr * 0.8 * sqrt(channels) = 0.13-0.34.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.BatchNorm1d(channels, affine=False)
        self.scale = channels ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pool(x).flatten(1)) * self.scale


class SelfGuidedClassifier(nn.Module):
    """Eqs. 14-15: Psi = AdaptiveAvgPool(F~), lambda~ = sigmoid(W_1 Psi), Y~ = W_C Psi, with Psi
    standardised and scaled by :class:`PooledFeatures`."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = PooledFeatures(channels)
        self.weight = nn.Linear(channels, 1)  # W_1
        self.classifier = nn.Linear(channels, num_classes)  # W_C

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi = self.features(fused)
        return torch.sigmoid(self.weight(psi)), self.classifier(psi)


def lateral(cin: int, cout: int) -> nn.Sequential:
    """A lateral 1x1 convolution K^j of eqs. 11-13, followed by BatchNorm as every convolution of
    Table 1 is (no ReLU: the fused maps are sums, as in an FPN). Without the BatchNorm, Adam at
    lr 0.01 moves K^C's outputs by about lr * 1792 * mean(F^C) = 14 in its first step and the
    fused maps grow 8-19 times (docs/paper-notes.md, "Learning rate 0.01")."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-3))


class FGAL(nn.Module):
    """Feature guided auxiliary learning over F^A, F^B, F^C.

    After each forward pass the learned level weights lambda~_A, lambda~_B,
    lambda~_C (averaged over the batch, detached) are in :attr:`last_weights`. They are
    written into a buffer in place, so that a forward replayed from a CUDA graph
    (``train.compile: whole-step``) updates them too.
    """

    LEVELS = ("A", "B", "C")

    def __init__(self, channels: tuple[int, int, int], num_classes: int):
        super().__init__()
        ca, cb, cc = channels
        self.lateral_c = lateral(cc, cc)  # K^C, eq. 11
        self.lateral_b = lateral(cc, cb)  # K^B, eq. 12
        self.lateral_a = lateral(cb, ca)  # K^A, eq. 13
        self.heads = nn.ModuleDict({
            level: SelfGuidedClassifier(c, num_classes) for level, c in zip(self.LEVELS, channels)
        })
        # not in checkpoints; NaN until the first forward pass
        self.register_buffer("lambdas", torch.full((len(self.LEVELS),), float("nan")), persistent=False)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    def fuse(self, fa: torch.Tensor, fb: torch.Tensor, fc: torch.Tensor):
        """Eqs. 11-13: the fused maps (F~A, F~B, F~C)."""
        fc_t = self.lateral_c(fc)
        fb_t = fb + self._up(self.lateral_b(fc_t), fb)
        fa_t = fa + self._up(self.lateral_a(fb_t), fa)
        return fa_t, fb_t, fc_t

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        out = 0
        lambdas = []
        for level, fused in zip(self.LEVELS, self.fuse(fa, fb, fc)):
            lam, logits = self.heads[level](fused)
            out = out + lam * logits  # eqs. 16-17
            lambdas.append(lam.detach().float().mean())
        # a model built in inference mode has an inference-tensor buffer, writable only in inference mode
        # (asked outside compilation: the question would break torch.compile's graph in two)
        if torch.compiler.is_compiling() or not self.lambdas.is_inference() or torch.is_inference_mode_enabled():
            with torch.no_grad():
                self.lambdas.copy_(torch.stack(lambdas))
        return out

    @property
    def last_weights(self) -> dict[str, float]:
        """Batch-mean lambda~ per level from the latest forward pass (for logging); {} before any."""
        values = self.lambdas.tolist()
        return {} if all(math.isnan(v) for v in values) else dict(zip(self.LEVELS, values))
