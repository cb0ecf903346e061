"""Network scale: feature guided auxiliary learning (FGAL), Sect. 3.2, Fig. 3b-c, eqs. 11-17.

FGAL fuses the high-level feature map F^C into the medium and low levels, top-down
as in a feature pyramid network (eqs. 11-13), then classifies each fused level with a
self-guided classifier that also learns the level's weight (eqs. 14-15); the model's
output is the sum of the three weighted logits (eqs. 16-17).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfGuidedClassifier(nn.Module):
    """Eqs. 14-15: Psi = AdaptiveAvgPool(F~), lambda~ = sigmoid(W_1 Psi), Y~ = W_C Psi."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Psi is standardised (no learned parameters) before W_1 only: on raw, all-positive
        # pooled features Adam moves W_1 Psi by about lr * sum(Psi) per step and the sigmoid
        # saturates at 0 within an epoch (docs/paper-notes.md, "FGAL level weights").
        self.weight_norm = nn.BatchNorm1d(channels, affine=False)
        self.weight = nn.Linear(channels, 1)  # W_1
        self.classifier = nn.Linear(channels, num_classes)  # W_C

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi = self.pool(fused).flatten(1)
        lam = torch.sigmoid(self.weight(self.weight_norm(psi)))  # (N, 1)
        return lam, self.classifier(psi)


class FGAL(nn.Module):
    """Feature guided auxiliary learning over F^A, F^B, F^C.

    After each forward pass the learned level weights lambda~_A, lambda~_B,
    lambda~_C (averaged over the batch, detached) are in :attr:`last_weights`.
    """

    LEVELS = ("A", "B", "C")

    def __init__(self, channels: tuple[int, int, int], num_classes: int):
        super().__init__()
        ca, cb, cc = channels
        self.lateral_c = nn.Conv2d(cc, cc, 1)  # K^C, eq. 11
        self.lateral_b = nn.Conv2d(cc, cb, 1)  # K^B, eq. 12
        self.lateral_a = nn.Conv2d(cb, ca, 1)  # K^A, eq. 13
        self.heads = nn.ModuleDict({
            level: SelfGuidedClassifier(c, num_classes) for level, c in zip(self.LEVELS, channels)
        })
        self._weights: dict[str, torch.Tensor] = {}

    def reset_parameters(self) -> None:
        """Lateral 1x1 convolutions are linear (no ReLU follows): unit gain, as in FPN."""
        for conv in (self.lateral_c, self.lateral_b, self.lateral_a):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

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
        weights = {}
        for level, fused in zip(self.LEVELS, self.fuse(fa, fb, fc)):
            lam, logits = self.heads[level](fused)
            out = out + lam * logits  # eqs. 16-17
            weights[level] = lam.detach()
        self._weights = weights
        return out

    @property
    def last_weights(self) -> dict[str, float]:
        """Batch-mean lambda~ per level from the latest forward pass (for logging)."""
        return {k: float(v.float().mean()) for k, v in self._weights.items()}
