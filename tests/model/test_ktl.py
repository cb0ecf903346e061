"""Knowledge transfer learning: the stem's weights, where they come from, and that they stay frozen."""

from __future__ import annotations

import copy

import pytest
import torch

from hsnet.model import HSNet, StemWeightsError
from hsnet.model.ktl import STEM_LAYERS, vggface2_cache_path


def _stem_items(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.split(".")[0] in STEM_LAYERS}


@pytest.mark.parametrize("layout", ["whole", "without_logits", "stem_only"])
def test_stem_loads_bit_for_bit(layout, irv1_state_dict, tmp_path):
    state = dict(irv1_state_dict)
    if layout == "without_logits":
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    elif layout == "stem_only":
        state = _stem_items(state)
    path = tmp_path / f"{layout}.pt"
    torch.save(state, path)
    model = HSNet(7, stem_weights=path)
    loaded = model.stem.state_dict()
    expected = _stem_items(irv1_state_dict)
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


def test_ktl_stem_stays_frozen_while_the_rest_trains(stem_weights_file):
    """Eqs. 19-20: after an Adam step every stem tensor (weights and BN statistics) is theta_recog,
    bit for bit, and every tensor after it (weights, biases, BN statistics) has moved."""
    torch.manual_seed(0)
    model = HSNet(7, stem_weights=stem_weights_file).train()
    assert not model.stem.training and model.rdib_a.training
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 100, 100)),
                                             torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    stem = {k for k in before if k.startswith("stem.")}
    assert len(stem) == len(model.stem.state_dict()) > 0
    moved_in_stem = [k for k in stem if not torch.equal(after[k], before[k])]
    assert not moved_in_stem
    for name, p in model.stem.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    rest = set(before) - stem
    unchanged = sorted(k for k in rest if torch.equal(after[k], before[k]))
    assert not unchanged  # every weight, bias and BN statistic after the stem moved
    trainable = {f"{n}" for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in rest if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_without_ktl_the_stem_trains(stem_weights_file):
    torch.manual_seed(0)
    model = HSNet(7, ktl=False).train()
    before = model.stem.conv2d_1a.bn.running_mean.clone()
    model(torch.randn(2, 3, 100, 100)).sum().backward()
    assert model.stem.training and model.stem.conv2d_1a.conv.weight.grad is not None
    assert not torch.equal(before, model.stem.conv2d_1a.bn.running_mean)
    with pytest.raises(ValueError, match="ktl=False"):
        HSNet(7, ktl=False, stem_weights=stem_weights_file)


def test_missing_file_says_how_to_provide(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(StemWeightsError, match="does not exist") as err:
        HSNet(7, stem_weights=missing)
    assert str(missing) in str(err.value) and "ktl: false" in str(err.value)


def test_file_that_is_not_a_state_dict(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(StemWeightsError, match="not a PyTorch state dict") as err:
        HSNet(7, stem_weights=garbage)
    assert str(garbage) in str(err.value)


def test_state_dict_of_another_model(tmp_path):
    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(StemWeightsError, match="not an InceptionResnetV1 state dict"):
        HSNet(7, stem_weights=other)
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save({k: torch.zeros(1) for k in
                _stem_items(HSNet(7, ktl=False).stem.state_dict())}, wrong_shape)
    with pytest.raises(StemWeightsError, match="has shape"):
        HSNet(7, stem_weights=wrong_shape)


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"obj": object.__new__(_Payload)}, evil)  # not loadable with weights_only=True
    with pytest.raises(StemWeightsError, match="safely"):
        HSNet(7, stem_weights=evil)


class _Payload:
    pass


def test_vggface2_without_cache_or_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    # no network here or in CI; make sure of it even where there is some
    monkeypatch.setattr("hsnet.model.ktl.VGGFACE2_URL", "https://127.0.0.1:9/20180402-114759-vggface2.pt")
    with pytest.raises(StemWeightsError, match="VGGFace2") as err:
        HSNet(7)  # ktl=True, stem_weights defaults to "vggface2"
    message = str(err.value)
    assert str(vggface2_cache_path()) in message and "downloading" in message
    assert "stem_weights" in message


def test_vggface2_from_facenet_cache(tmp_path, monkeypatch, irv1_state_dict):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = vggface2_cache_path()
    assert cache.parent == tmp_path / "checkpoints"
    cache.parent.mkdir(parents=True)
    torch.save(irv1_state_dict, cache)
    model = HSNet(7)
    assert torch.equal(model.stem.conv2d_4b.conv.weight, irv1_state_dict["conv2d_4b.conv.weight"])
