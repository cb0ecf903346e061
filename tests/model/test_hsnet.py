"""HSNet's architecture against Table 1, the ablations of Table 6 and the model's contract."""

from __future__ import annotations

import itertools

import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models.inception_resnet_v1 import Block8, Block17, Block35, Mixed_6a, Mixed_7a

from hsnet.model import FGAL, MIN_INPUT_SIZE, RDIB, SDIB, STAGES, HSNet, output_size

TABLE1_224 = {  # Table 1's output sizes (C x H x W) for a 3x224x224 input
    "stem": (256, 25, 25),
    "rdib_a": (256, 25, 25),
    "sdib_a": (896, 12, 12),
    "rdib_b": (896, 12, 12),
    "sdib_b": (1792, 5, 5),
    "rdib_c": (1792, 5, 5),
}


@pytest.mark.parametrize("num_classes", [7, 8])
def test_stage_shapes_match_table1_at_224(num_classes):
    torch.manual_seed(0)
    model = HSNet(num_classes, ktl=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        stages = model.forward_stages(x)
        logits = model(x)
    assert list(stages) == list(STAGES)
    assert {k: tuple(v.shape[1:]) for k, v in stages.items()} == TABLE1_224
    assert logits.shape == (2, num_classes)
    assert {k: (c, s, s) for (k, (c, _, _)), s in
            zip(TABLE1_224.items(), output_size(224).values())} == TABLE1_224


def test_blocks_are_the_papers_dibs():
    model = HSNet(7, ktl=False)
    assert [type(getattr(model, s)) for s in STAGES[1:]] == [RDIB, SDIB, RDIB, SDIB, RDIB]
    # branch sets of Table 1: RDIB-A/SDIB-A without branch 3, RDIB-C branches 1 and 4 only
    assert [len(getattr(model, s).dilated) for s in STAGES[1:]] == [2, 2, 3, 3, 1]
    dilations = [[b[1].conv.dilation[0] for b in getattr(model, s).dilated] for s in STAGES[1:]]
    assert dilations == [[1, 2], [1, 2], [1, 2, 3], [1, 2, 3], [1]]
    strides = [[b[1].conv.stride[0] for b in getattr(model, s).dilated] for s in STAGES[1:]]
    assert strides == [[1, 1], [2, 2], [1, 1, 1], [2, 2, 2], [1]]
    assert isinstance(model.head, FGAL)


def test_rdib_adds_its_input():
    block = RDIB(64, [], pointwise_out=64).eval()
    x = torch.randn(1, 64, 9, 9)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.pointwise(x))
    with pytest.raises(ValueError, match="residual add"):
        RDIB(64, [], pointwise_out=32)


def test_fgal_output_is_the_sum_of_weighted_level_logits():
    torch.manual_seed(0)
    model = HSNet(7, ktl=False).eval()
    x = torch.randn(3, 3, 100, 100)
    with torch.no_grad():
        st = model.forward_stages(x)
        fa, fb, fc = model.head.fuse(st["rdib_a"], st["rdib_b"], st["rdib_c"])
        assert fa.shape == st["rdib_a"].shape and fb.shape == st["rdib_b"].shape
        expected = 0
        for level, fused in zip("ABC", (fa, fb, fc)):
            lam, logits = model.head.heads[level](fused)
            assert lam.shape == (3, 1) and ((lam > 0) & (lam < 1)).all()
            expected = expected + lam * logits
        out = model(x)
    assert torch.allclose(out, expected, atol=1e-5)
    weights = model.level_weights
    assert set(weights) == {"A", "B", "C"} and all(0 < w < 1 for w in weights.values())


@pytest.mark.parametrize("dib,fgal,ktl", list(itertools.product([True, False], repeat=3)))
def test_every_ablation_runs_forward_and_backward_at_100(dib, fgal, ktl, stem_weights_file):
    torch.manual_seed(0)
    model = HSNet(7, dib=dib, fgal=fgal, ktl=ktl,
                  stem_weights=stem_weights_file if ktl else None).train()
    out = model(torch.randn(2, 3, 100, 100))
    assert out.shape == (2, 7)
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 3])).backward()
    assert model.head is not None
    trained = [p for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    assert all(p.requires_grad is not ktl for p in model.stem.parameters())


def test_baseline_is_inception_resnet_v1():
    model = HSNet(7, dib=False, fgal=False, ktl=False)
    assert isinstance(model.rdib_a[0], Block35) and len(model.rdib_a) == 5
    assert isinstance(model.sdib_a, Mixed_6a)
    assert isinstance(model.rdib_b[0], Block17) and len(model.rdib_b) == 10
    assert isinstance(model.sdib_b, Mixed_7a)
    assert isinstance(model.rdib_c[0][0], Block8) and isinstance(model.rdib_c[1], Block8)
    irv1 = InceptionResnetV1()
    head = {"last_linear", "last_bn", "logits"}
    body = sum(p.numel() for n, p in irv1.named_parameters() if n.split(".")[0] not in head)
    ours = sum(p.numel() for p in model.parameters())
    assert ours == body + 1792 * 7 + 7  # the same blocks, only the head is C-class


def test_hsnet_has_fewer_parameters_than_the_baseline():
    hsnet = sum(p.numel() for p in HSNet(7, ktl=False).parameters())
    base = sum(p.numel() for p in HSNet(7, dib=False, fgal=False, ktl=False).parameters())
    assert hsnet < 0.75 * base


def test_too_small_input_names_the_minimum():
    model = HSNet(7, ktl=False).eval()
    assert MIN_INPUT_SIZE == 75
    with torch.no_grad():
        assert model(torch.randn(1, 3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)).shape == (1, 7)
        with pytest.raises(ValueError, match=r"smaller than HSNet's minimum 75x75"):
            model(torch.randn(1, 3, MIN_INPUT_SIZE - 1, MIN_INPUT_SIZE - 1))
        with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
            model(torch.randn(1, 1, 100, 100))


@pytest.mark.parametrize("size", [75, 100, 128, 224, 256])
def test_square_inputs_up_to_256(size):
    model = HSNet(7, ktl=False).eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, size, size))
    assert {k: v.shape[-1] for k, v in stages.items()} == output_size(size)
