"""HSNet: hierarchical scale network (Fan et al. 2022), Sect. 3.4, Fig. 3, Table 1.

    input 3xHxW
      -> stem (Inception-ResNet-V1 conv2d_1a ... conv2d_4b)     knowledge scale (KTL)
      -> RDIB-A -> F^A -> SDIB-A -> RDIB-B -> F^B -> SDIB-B -> RDIB-C -> F^C
                                                                kernel scale (DIB)
      -> FGAL(F^A, F^B, F^C) -> C logits                        network scale (FGAL)

The switches reproduce the ablations of Table 6: ``dib=False`` puts
Inception-ResNet-V1's own stages where the DIBs were, ``fgal=False`` classifies the
pooled F^C with one linear layer, ``ktl=False`` trains the stem from He
initialisation. All three off is the paper's baseline, Inception-ResNet-V1.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
from torch import nn

from . import dib as dibs
from . import ktl as ktl_
from ..params import SKIP_STEM_WEIGHTS, VGGFACE2  # stem_weights' keywords
from ..sizes import MIN_INPUT_SIZE  # Table 1's arithmetic (output_size): torch-free, for params
from .fgal import FGAL, PooledFeatures

STAGES = ("stem", "rdib_a", "sdib_a", "rdib_b", "sdib_b", "rdib_c")
LEVEL_CHANNELS = (256, 896, 1792)  # F^A, F^B, F^C




class PooledClassifier(nn.Module):
    """The head without FGAL: F^C pooled, standardised and scaled as FGAL's heads see their
    levels (:class:`~hsnet.model.fgal.PooledFeatures`, so that the ablations differ only in
    what Table 6 switches), then one FC layer to C classes."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = PooledFeatures(channels)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, fa, fb, fc):  # same signature as FGAL
        return self.classifier(self.features(fc))


class HSNet(nn.Module):
    """HSNet for ``num_classes`` expressions.

    Args:
        num_classes: C, the number of expression classes.
        dib: kernel scale; False uses Inception-ResNet-V1's own blocks (Block35 x5,
            Mixed_6a, Block17 x10, Mixed_7a, Block8 x5 + Block8) in the same places.
        fgal: network scale; False classifies the pooled F^C with one linear layer.
        ktl: knowledge scale; True loads the stem from ``stem_weights`` and freezes it.
        stem_weights: with ``ktl``, where theta_recog comes from: ``"vggface2"``
            (the default), a local file or an ``s3://`` URI; ``"skip"`` builds the
            frozen stem without loading it, for a checkpoint loaded afterwards.

    ``stem_weights_sha256``: the sha256 of the stem weights file loaded (None when none was).
    """

    def __init__(self, num_classes: int, *, dib: bool = True, fgal: bool = True, ktl: bool = True,
                 stem_weights: str | os.PathLike | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if stem_weights is not None and not ktl:
            raise ValueError("stem_weights is given but ktl=False: the stem would be trained from "
                             "He initialisation and the weights ignored; set ktl=True or drop "
                             "stem_weights")
        self.num_classes = num_classes
        self.config = {"dib": dib, "fgal": fgal, "ktl": ktl}
        source = InceptionResnetV1()  # its stem (and, without DIB, its stages) are reused
        self.stem = ktl_.stem_of(source)
        if dib:
            self.rdib_a, self.sdib_a = dibs.rdib_a(), dibs.sdib_a()
            self.rdib_b, self.sdib_b = dibs.rdib_b(), dibs.sdib_b()
            self.rdib_c = dibs.rdib_c()
        else:
            self.rdib_a, self.sdib_a = source.repeat_1, source.mixed_6a
            self.rdib_b, self.sdib_b = source.repeat_2, source.mixed_7a
            self.rdib_c = nn.Sequential(source.repeat_3, source.block8)
        self.head = FGAL(LEVEL_CHANNELS, num_classes) if fgal else PooledClassifier(
            LEVEL_CHANNELS[-1], num_classes)

        for name in STAGES[1:] + ("head",):
            ktl_.he_init(getattr(self, name))
        self.stem_weights_sha256 = None
        if ktl:
            if os.fspath(stem_weights or VGGFACE2) != SKIP_STEM_WEIGHTS:
                self.stem_weights_sha256 = ktl_.load_stem(self.stem, stem_weights or VGGFACE2)
            ktl_.freeze(self.stem)
        else:
            ktl_.he_init(self.stem)

    @property
    def dib(self) -> bool:
        return self.config["dib"]

    @property
    def fgal(self) -> bool:
        return self.config["fgal"]

    @property
    def ktl(self) -> bool:
        return self.config["ktl"]

    def train(self, mode: bool = True) -> HSNet:
        super().train(mode)
        if self.ktl:  # eq. 19: the frozen stem keeps its BatchNorm statistics too
            self.stem.eval()
        return self

    @property
    def level_weights(self) -> dict[str, float]:
        """FGAL's learned weights lambda~_A, lambda~_B, lambda~_C from the latest forward pass."""
        return self.head.last_weights if self.fgal else {}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"HSNet expects a batch of RGB images (N, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than HSNet's minimum "
                f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}; resize the faces to at least that "
                "(params.yaml: input_size)")

    def forward_stages(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The output of every stage, in order: stem, rdib_a, sdib_a, rdib_b, sdib_b, rdib_c."""
        self._check_input(x)
        out = OrderedDict()
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.forward_stages(x)
        return self.head(stages["rdib_a"], stages["rdib_b"], stages["rdib_c"])
