"""HSNet against the paper: Table 1's numbers written out, eqs. 11-17 computed independently, eq. 18."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models.inception_resnet_v1 import Block8, Block17, Block35, Mixed_6a, Mixed_7a
from torch import nn

from hsnet.model import FGAL, MIN_INPUT_SIZE, RDIB, SDIB, STAGES, HSNet, output_size
from hsnet.model.fgal import SelfGuidedClassifier
from hsnet.model.hsnet import PooledClassifier

# --- Table 1, written out ----------------------------------------------------------------

TABLE1_224 = {  # Table 1's "Output Size" column (C x H x W) for a 3x224x224 input
    "stem": (256, 25, 25),
    "rdib_a": (256, 25, 25),
    "sdib_a": (896, 12, 12),
    "rdib_b": (896, 12, 12),
    "sdib_b": (1792, 5, 5),
    "rdib_c": (1792, 5, 5),
}

# The stem rows of Table 1 with the two typos fixed (docs/paper-notes.md, "Stem"): the rows
# are shifted by one and "34" is 64. These are facenet-pytorch's layers' outputs at 224.
STEM_224 = {
    "conv2d_1a": (32, 111, 111),
    "conv2d_2a": (32, 109, 109),
    "conv2d_2b": (64, 109, 109),
    "maxpool_3a": (64, 54, 54),
    "conv2d_3b": (80, 54, 54),
    "conv2d_4a": (192, 52, 52),
    "conv2d_4b": (256, 25, 25),
}

# Table 1's (stride, padding, dilation) of each branch's 3x3 convolution; every 1x1 is (1, 0, 1),
# every max pool 3x3 (2, 0, 1). RDIB-A's branch 2 reads "2, 2, 1" in the paper: that can't be
# added to its input (docs/paper-notes.md, "RDIB-A branch 2"), we read it as RDIB-B's "1, 2, 2".
TABLE1_BRANCHES = {
    "rdib_a": [(1, 1, 1), (1, 2, 2)],
    "sdib_a": [(2, 0, 1), (2, 1, 2)],
    "rdib_b": [(1, 1, 1), (1, 2, 2), (1, 3, 3)],
    "sdib_b": [(2, 0, 1), (2, 1, 2), (2, 2, 3)],
    "rdib_c": [(1, 1, 1)],
}


def _spd(conv: nn.Conv2d | nn.MaxPool2d) -> tuple[int, int, int]:
    def first(v):
        return v[0] if isinstance(v, tuple) else v
    return first(conv.stride), first(conv.padding), first(conv.dilation)


@pytest.mark.parametrize("num_classes", [7, 8])
def test_stage_shapes_match_table1_at_224(num_classes):
    torch.manual_seed(0)
    model = HSNet(num_classes, ktl=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        stages = model.forward_stages(x)
        logits = model(x)
    assert list(stages) == ["stem", "rdib_a", "sdib_a", "rdib_b", "sdib_b", "rdib_c"]
    assert {k: tuple(v.shape[1:]) for k, v in stages.items()} == TABLE1_224
    assert logits.shape == (2, num_classes)  # Table 1's last row: "Output C"


def test_output_size_arithmetic_matches_table1():
    assert output_size(224) == {k: h for k, (_, h, _) in TABLE1_224.items()}


def test_stem_layers_at_224():
    model = HSNet(7, ktl=False).eval()
    shapes, x = {}, torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for name, layer in model.stem.named_children():
            x = layer(x)
            shapes[name] = tuple(x.shape[1:])
    assert shapes == STEM_224


def test_blocks_follow_table1_branch_by_branch():
    model = HSNet(7, ktl=False)
    assert [type(getattr(model, s)) for s in STAGES[1:]] == [RDIB, SDIB, RDIB, SDIB, RDIB]
    for stage, branches in TABLE1_BRANCHES.items():
        block = getattr(model, stage)
        assert [_spd(b[1].conv) for b in block.dilated] == branches, stage
        assert [b[1].conv.kernel_size for b in block.dilated] == [(3, 3)] * len(branches), stage
        assert [(b[0].conv.kernel_size, _spd(b[0].conv)) for b in block.dilated] == \
            [((1, 1), (1, 0, 1))] * len(branches), stage
        if isinstance(block, SDIB):  # branch 4: MaxPool 3x3 (2, 0, 1) then Conv 1x1 (1, 0, 1)
            pool, conv = block.pool
            assert (pool.kernel_size, _spd(pool)) == (3, (2, 0, 1))
            assert (conv.conv.kernel_size, _spd(conv.conv)) == ((1, 1), (1, 0, 1))
        else:  # branch 4: Conv 1x1 (1, 0, 1)
            assert (block.pointwise.conv.kernel_size, _spd(block.pointwise.conv)) == ((1, 1), (1, 0, 1))


def test_fgal_layers_follow_table1():
    """Table 1's FGAL rows: per level A, B, C a Conv 1x1 (1, 0, 1), AdaptAvgPool to 1, FC to 1 and FC to C."""
    model = HSNet(8, ktl=False)
    head = model.head
    assert isinstance(head, FGAL)
    laterals = {"C": head.lateral_c[0], "B": head.lateral_b[0], "A": head.lateral_a[0]}
    # K^C keeps F^C's 1792 channels; K^B maps them to F^B's 896, K^A F~B's 896 to F^A's 256
    assert {k: (c.in_channels, c.out_channels, c.kernel_size, _spd(c)) for k, c in laterals.items()} == {
        "C": (1792, 1792, (1, 1), (1, 0, 1)), "B": (1792, 896, (1, 1), (1, 0, 1)),
        "A": (896, 256, (1, 1), (1, 0, 1))}
    for level, channels in zip("ABC", (256, 896, 1792)):
        h = head.heads[level]
        assert h.features.pool.output_size == 1
        assert (h.weight.in_features, h.weight.out_features) == (channels, 1)
        assert (h.classifier.in_features, h.classifier.out_features) == (channels, 8)


# --- FGAL, eqs. 11-17, against an independent computation ---------------------------------

def _bn(x, bn):
    """Inference-mode BatchNorm written out: (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def _lateral(x, seq):
    conv, bn = seq
    w = conv.weight[:, :, 0, 0]  # (out, in)
    return _bn(torch.einsum("oc,nchw->nohw", w, x), bn)


def _nearest(x, size):
    """Nearest upsampling to ``size`` x ``size``: output pixel i reads input pixel floor(i * h / size)."""
    h = x.shape[-1]
    idx = torch.tensor([(i * h) // size for i in range(size)])
    return x[:, :, idx][:, :, :, idx]


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Known, distinct values everywhere, BN running statistics included."""
    with torch.no_grad():
        for p in itertools.chain(module.parameters(), module.buffers()):
            if p.dtype.is_floating_point:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5 if p.dim() == 1 else
                        torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("channels", [(2, 3, 4), (3, 3, 3)])  # equal widths: wiring shows in values only
def test_fgal_fusion_and_output_equal_eqs_11_to_17(channels):
    gen = torch.Generator().manual_seed(0)
    fgal = FGAL(channels, num_classes=5)
    _randomise(fgal, gen)
    fgal.eval()
    ca, cb, cc = channels
    fa = torch.randn(2, ca, 11, 11, generator=gen)
    fb = torch.randn(2, cb, 5, 5, generator=gen)
    fc = torch.randn(2, cc, 2, 2, generator=gen)

    fc_t = _lateral(fc, fgal.lateral_c)  # eq. 11: F~C = F^C * K^C
    fb_t = fb + _nearest(_lateral(fc_t, fgal.lateral_b), 5)  # eq. 12: F~B = F^B + UP(F~C * K^B)
    fa_t = fa + _nearest(_lateral(fb_t, fgal.lateral_a), 11)  # eq. 13: F~A = F^A + UP(F~B * K^A)
    expected = torch.zeros(2, 5)
    lambdas = {}
    for level, fused in zip("ABC", (fa_t, fb_t, fc_t)):
        h = fgal.heads[level]
        # eq. 14's Psi, standardised and scaled by 1 / sqrt(channels) (paper-notes, "Learning rate 0.01")
        psi = _bn(fused.mean(dim=(2, 3)), h.features.norm) / math.sqrt(fused.shape[1])
        lam = torch.sigmoid(psi @ h.weight.weight.T + h.weight.bias)  # eq. 15
        y = psi @ h.classifier.weight.T + h.classifier.bias
        expected += lam * y  # eqs. 16-17
        lambdas[level] = lam.mean().item()  # what is logged: the batch's mean lambda~
    with torch.no_grad():
        got = fgal.fuse(fa, fb, fc)
        out = fgal(fa, fb, fc)
    for name, a, b in zip(("F~A", "F~B", "F~C"), got, (fa_t, fb_t, fc_t)):
        assert torch.allclose(a, b, atol=1e-5), name
    assert torch.allclose(out, expected, atol=1e-5)
    assert fgal.last_weights == pytest.approx(lambdas, abs=1e-6)
    assert "lambdas" not in fgal.state_dict()  # a logged figure, not a weight: checkpoints stay as they were
    assert FGAL(channels, num_classes=5).last_weights == {}  # before any forward pass: nothing to log


def test_a_model_built_in_inference_mode_still_runs_outside_it():
    """FGAL writes its logged level weights in place; a model built under torch.inference_mode (whose
    buffers are then inference tensors) must still run forward outside it, as it did before."""
    with torch.inference_mode():
        fgal = FGAL((2, 3, 4), num_classes=5).eval()  # (in training mode BatchNorm itself would write)
    x = (torch.randn(2, 2, 11, 11), torch.randn(2, 3, 5, 5), torch.randn(2, 4, 2, 2))
    with torch.no_grad():
        assert fgal(*x).shape == (2, 5)
    with torch.inference_mode():
        fgal(*x)
    assert set(fgal.last_weights) == {"A", "B", "C"}


def test_nearest_upsampling_to_the_exact_finer_size():
    """5 -> 12 -> 25 at 224: not a factor of 2; each pixel of the coarse map is copied into a block."""
    x = torch.arange(25.0).view(1, 1, 5, 5)
    up = FGAL._up(x, torch.zeros(1, 1, 12, 12))
    rows = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]  # floor(i * 5 / 12)
    assert up[0, 0].tolist() == [[x[0, 0, r, c].item() for c in rows] for r in rows]


def test_level_weights_see_standardised_features():
    """Eqs. 14-15 with the standardisation of paper-notes: in training, lambda~ and Y~ depend on Psi
    only through its batch-standardised value (any per-channel a * Psi + b gives the same output),
    and they equal the standardisation, divided by sqrt(channels), written out."""
    torch.manual_seed(0)
    head = SelfGuidedClassifier(6, 3).train()
    fused = torch.rand(8, 6, 4, 4) * 5 + 2  # all positive, like pooled residual features
    lam, y = head(fused)
    psi = fused.mean(dim=(2, 3))
    std = (psi - psi.mean(0)) / torch.sqrt(psi.var(0, unbiased=False) + head.features.norm.eps) / math.sqrt(6)
    assert torch.allclose(lam, torch.sigmoid(std @ head.weight.weight.T + head.weight.bias), atol=1e-5)
    assert torch.allclose(y, std @ head.classifier.weight.T + head.classifier.bias, atol=1e-5)
    scale = torch.rand(1, 6, 1, 1) * 10 + 0.1
    lam2, y2 = head(fused * scale + 100)
    assert torch.allclose(lam, lam2, atol=1e-4) and torch.allclose(y, y2, atol=1e-4)
    assert sum(p.numel() for p in head.features.parameters()) == 0  # no learned parameters added


# --- He initialisation, eq. 18 ------------------------------------------------------------

def _convs_after_stem(model):
    return [(f"{s}.{n}", m) for s in STAGES[1:] + ("head",) for n, m in getattr(model, s).named_modules()
            if isinstance(m, nn.Conv2d)]


def _assert_he(name, w):
    """N(0, 2 / fan_in) (He et al. 2015): the sample std within 6 standard errors, mean ~0, and
    normal, not uniform: a uniform of that std never exceeds sqrt(3) = 1.73 of it."""
    fan_in = w[0].numel()
    expected = math.sqrt(2.0 / fan_in)
    n = w.numel()
    assert abs(float(w.std()) / expected - 1) < 6 / math.sqrt(2 * n), (name, float(w.std()), expected)
    assert abs(float(w.mean())) < 6 * expected / math.sqrt(n), name
    if n > 5000:
        assert float(w.abs().max()) > 2.5 * expected, name


@pytest.mark.parametrize("ktl", [True, False])
def test_he_initialisation_of_everything_after_the_stem(ktl, stem_weights_file):
    torch.manual_seed(0)
    model = HSNet(7, ktl=ktl, stem_weights=stem_weights_file if ktl else None)
    convs = _convs_after_stem(model)
    assert len(convs) == (2 * 2 + 1) + (2 * 2 + 1) + (3 * 2 + 1) + (3 * 2 + 1) + (1 * 2 + 1) + 3  # Table 1's
    for name, conv in convs:
        _assert_he(name, conv.weight.detach())
    # spot checks written out: a 1x1 from 256 channels, a 3x3 from 256
    assert float(model.rdib_a.dilated[0][0].conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert float(model.sdib_b.dilated[2][1].conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / 2304), rel=0.05)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and not name.startswith("stem."):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
        if isinstance(m, nn.Linear):  # FC layers too (eq. 18: "all the rest"): std sqrt(2 / fan-in), zero bias
            _assert_he(name, m.weight.detach())
            assert torch.all(m.bias == 0), name
    if not ktl:  # without KTL the stem is He-initialised too
        for name, m in model.stem.named_modules():
            if isinstance(m, nn.Conv2d):
                _assert_he(f"stem.{name}", m.weight.detach())


# --- The ablations (Table 6) and the model's contract -------------------------------------

def test_rdib_adds_its_input():
    block = RDIB(64, [], pointwise_out=64).eval()
    x = torch.randn(1, 64, 9, 9)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.pointwise(x))
    with pytest.raises(ValueError, match="residual add"):
        RDIB(64, [], pointwise_out=32)


@pytest.mark.parametrize("dib,fgal,ktl", list(itertools.product([True, False], repeat=3)))
def test_every_ablation_runs_forward_and_backward_at_100(dib, fgal, ktl, stem_weights_file):
    torch.manual_seed(0)
    model = HSNet(7, dib=dib, fgal=fgal, ktl=ktl,
                  stem_weights=stem_weights_file if ktl else None).train()
    assert type(model.head) is (FGAL if fgal else PooledClassifier)
    assert (type(model.rdib_a) is RDIB) is dib
    out = model(torch.randn(4, 3, 100, 100))
    assert out.shape == (4, 7)
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 3, 0, 6])).backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    silent = [n for n, p in trained.items() if p.grad is None or not p.grad.any()]
    assert not silent  # every trainable tensor gets a gradient
    assert all(p.requires_grad is not ktl for p in model.stem.parameters())
    assert set(model.level_weights) == ({"A", "B", "C"} if fgal else set())


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


def test_parameter_counts():
    """docs/paper-notes.md's table; HSNet has about 68% of the baseline's parameters."""
    hsnet = sum(p.numel() for p in HSNet(7, ktl=False).parameters())
    base = sum(p.numel() for p in HSNet(7, dib=False, fgal=False, ktl=False).parameters())
    assert (hsnet, base) == (15_436_184, 22_576_647)
    assert hsnet < 0.75 * base  # DIBs "reduced the number of parameters" (Sect. 3.1)


def test_too_small_input_names_the_minimum():
    model = HSNet(7, ktl=False).eval()
    assert MIN_INPUT_SIZE == 75
    with torch.no_grad():
        assert model(torch.randn(1, 3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)).shape == (1, 7)
        with pytest.raises(ValueError, match=r"smaller than HSNet's minimum 75x75"):
            model(torch.randn(1, 3, MIN_INPUT_SIZE - 1, MIN_INPUT_SIZE - 1))
        with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
            model(torch.randn(1, 1, 100, 100))


@pytest.mark.parametrize("size,expected", [  # floor((H - 1) / 2) per SDIB (Sect. 3.1)
    (75, {"stem": 7, "sdib_a": 3, "sdib_b": 1}),
    (100, {"stem": 10, "sdib_a": 4, "sdib_b": 1}),
    (256, {"stem": 29, "sdib_a": 14, "sdib_b": 6}),
])
def test_square_inputs(size, expected):
    model = HSNet(7, ktl=False).eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, size, size))
    got = {k: v.shape[-1] for k, v in stages.items()}
    assert {k: got[k] for k in expected} == expected
    assert got["rdib_a"] == got["stem"] and got["rdib_b"] == got["sdib_a"] and got["rdib_c"] == got["sdib_b"]


def test_hsnet_compiles_as_one_graph_in_training_and_evaluation():
    """torch.compile (CUDA graphs on a GPU by default) must see HSNet whole: a graph break splits the
    compiled step, each piece with its own launches (FGAL's logged level weights once broke it)."""
    import torch._dynamo as dynamo

    from hsnet.checkpoint import build_model
    from hsnet.params import ModelParams

    model = build_model(7, ModelParams(), for_checkpoint=True)
    for mode in (True, False):
        model.train(mode)
        found = dynamo.explain(model)(torch.randn(4, 3, 80, 80))
        assert (found.graph_count, found.graph_break_count) == (1, 0), [b.reason for b in found.break_reasons]
