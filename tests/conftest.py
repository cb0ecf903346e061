"""Shared fixtures. Tests are split like the package: tests/model, tests/data, tests/pipeline ..."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def irv1_state_dict():
    """A whole InceptionResnetV1 state dict (with logits.*), as facenet-pytorch's VGGFace2 file has.

    Random weights: the real file cannot be downloaded here; the loading path is the same.
    """
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(1234)
    model = InceptionResnetV1(classify=True, num_classes=8631)
    with torch.no_grad():  # non-trivial BN statistics, so that "loaded" can't pass by accident
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


@pytest.fixture(scope="session")
def stem_weights_file(irv1_state_dict, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weights") / "irv1-vggface2-like.pt"
    torch.save(irv1_state_dict, path)
    return str(path)
