"""hsnet.step: the training step, and ``train.compile: whole-step`` (the step as one CUDA graph).

On the CPU nothing is captured, but everything else of the whole-step path runs: the step kept from
epoch to epoch, gradients zeroed and accumulated in the same tensors, the sums on the device, Adam
after the step. It must train exactly as a plain PyTorch loop written here does. The GPU test
(skipped here; run by benchmarks/gpu_session.sh) checks the captured graphs against eager steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsnet.checkpoint import build_model
from hsnet.device import Setup, forward, normalize, pick_device, place
from hsnet.errors import HSNetError
from hsnet.params import ModelParams, Params
from hsnet.step import WARMUP_STEPS, Step
from hsnet.tensors import Batches, DeviceBatches, EpochAugment, Split, augment, to_device
from hsnet.train import run_epoch, train

CPU = Setup(torch.device("cpu"), None, False)
AUG = {"hflip": True, "rotate_degrees": 5.0}


def _split(n: int, size: int = 80) -> Split:
    """Each class its own grey level plus noise: learnable through flips and rotations."""
    rng = np.random.default_rng(0)
    labels = torch.arange(n) % 7
    images = (labels.numpy()[:, None, None, None] * 30 + rng.integers(0, 40, (n, 3, size, size))).astype(np.uint8)
    return Split(images, labels, [f"{i}.png" for i in range(n)])


def _model_and_adam(lr=3e-3):
    torch.manual_seed(0)
    model = build_model(7, ModelParams(), for_checkpoint=True)  # KTL: a frozen stem, no gradients there
    return model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def _chunks(order: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def plain_loop(split: Split, orders: list[torch.Tensor], batch: int, seed: int):
    """The paper's recipe as anyone would write it: normalise, flip/rotate, forward, loss, zero_grad,
    backward, Adam; per epoch the mean loss and accuracy, summed in float64 on the host."""
    model, opt = _model_and_adam()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for order in orders:
        model.train()
        total, correct, seen = 0.0, 0, 0
        for idx in _chunks(order, batch):
            x = torch.from_numpy(split.images[idx.numpy()])
            y = split.labels[idx]
            logits = model(augment(normalize(x), gen, **AUG))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        out.append((total / seen, correct / seen))
    return model, opt, out


def test_whole_step_on_the_cpu_trains_bit_for_bit_like_a_plain_loop():
    """22 images in batches of 8 (8, 8, 6: two batch sizes), 3 epochs, the data held on the device and
    the epoch's augmentation drawn up front: the same weights and Adam state as the plain loop, to
    the bit, and the same per-epoch loss and accuracy. The eager step (what ``hsnet train`` runs by
    default) too, from the host pipeline."""
    split, batch, seed = _split(22), 8, 3
    orders = [torch.randperm(22, generator=torch.Generator().manual_seed(10 + e)) for e in range(3)]
    ref_model, ref_opt, ref = plain_loop(split, orders, batch, seed)

    for whole in (True, False):
        model, opt = _model_and_adam()
        step = Step(model, CPU, opt, whole_graph=whole) if whole else None
        held = to_device(split, CPU.device)
        gen = torch.Generator().manual_seed(seed)
        got = []
        for order in orders:
            if whole:
                batches = DeviceBatches(held, order, batch, CPU.device)
                transform = EpochAugment([len(c) for c in batches.chunks], gen, CPU.device, **AUG)
                loss, acc, _ = run_epoch(model, batches, CPU, optimizer=opt, transform=transform, step=step)
            else:
                loss, acc, _ = run_epoch(model, Batches(split, order, batch, CPU.device), CPU, optimizer=opt,
                                         generator=gen, aug=AUG)
            got.append((loss, acc))
        for (loss, acc), (ref_loss, ref_acc) in zip(got, ref):
            assert acc == ref_acc
            assert loss == pytest.approx(ref_loss, rel=1e-6)
        for name, value in ref_model.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), (whole, name)
        for ref_state, state in zip(ref_opt.state_dict()["state"].values(), opt.state_dict()["state"].values()):
            assert torch.equal(state["exp_avg"], ref_state["exp_avg"]) and torch.equal(state["exp_avg_sq"],
                                                                                       ref_state["exp_avg_sq"])
        if whole:  # the same tensors took every step's gradients
            assert step.grads and all(p.grad is g for p, g in zip(step.grad_params, step.grads))
            assert len(step.grads) == len(ref_opt.state_dict()["state"])  # every trained tensor
            assert ref[-1][0] < ref[0][0]  # and it learned


@pytest.mark.slow
def test_a_compiled_model_in_the_whole_step_trains_like_the_plain_loop():
    """whole-step puts a torch.compile'd model in the step (inductor on a GPU). Compiled here with
    AOTAutograd (its forward and backward graphs, FGAL's in-place level weights functionalised; no
    C compiler needed): two batch sizes, training and evaluation switching, the same weights as the
    plain loop, and the logged level weights are the last validation batch's."""
    split, batch, seed = _split(22), 8, 3
    orders = [torch.randperm(22, generator=torch.Generator().manual_seed(10 + e)) for e in range(3)]
    ref_model, _, ref = plain_loop(split, orders, batch, seed)
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def counting(gm, example_inputs):  # AOTAutograd, each graph dynamo hands over counted
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    model, opt = _model_and_adam()
    compiled = torch.compile(model, backend=counting, dynamic=False)
    step, val = Step(compiled, CPU, opt, whole_graph=True), Step(compiled, CPU, whole_graph=True)
    held = to_device(split, CPU.device)
    gen = torch.Generator().manual_seed(seed)
    for order, (ref_loss, ref_acc) in zip(orders, ref):
        batches = DeviceBatches(held, order, batch, CPU.device)
        transform = EpochAugment([len(c) for c in batches.chunks], gen, CPU.device, **AUG)
        loss, acc, _ = run_epoch(compiled, batches, CPU, optimizer=opt, transform=transform, step=step)
        assert acc == ref_acc and loss == pytest.approx(ref_loss, rel=1e-5)
        run_epoch(compiled, DeviceBatches(held, torch.arange(22), 16, CPU.device, drop_singleton=False), CPU, step=val)
    for name, value in ref_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert len(graphs) == 4  # whole, no graph breaks: training at 8 and 6, evaluation at 16 and 6
    logged = model.level_weights
    model.eval()
    with torch.no_grad():
        model(normalize(held.images[16:]))  # the last validation batch, eager
    assert logged == pytest.approx(model.level_weights, abs=1e-6)


def test_a_validation_step_is_a_plain_evaluation():
    """Step without an optimizer: the model in eval mode, no gradients, the mean loss and accuracy of
    a plain no-grad pass, the sums starting from zero at each begin()."""
    split = _split(13)
    model, opt = _model_and_adam()
    model.eval()
    with torch.no_grad():
        logits = model(normalize(torch.from_numpy(np.asarray(split.images))))
        expected_loss = F.cross_entropy(logits, split.labels).item()
        expected_acc = (logits.argmax(1) == split.labels).float().mean().item()
    step = Step(model, CPU, whole_graph=True)
    for _ in range(2):
        model.train()
        loss, acc, _ = run_epoch(model, DeviceBatches(to_device(split, CPU.device), torch.arange(13), 5, CPU.device,
                                                      drop_singleton=False), CPU, step=step)
        assert not model.training
        assert loss == pytest.approx(expected_loss, rel=1e-5) and acc == pytest.approx(expected_acc)
    assert all(p.grad is None for p in model.parameters())


def test_a_batch_whose_augmentation_differs_from_the_captured_one_is_refused():
    """A captured step copies each batch's flip mask and rotations into its inputs; a batch without
    them (or with them, where the capture had none) can't be replayed: a clear error, not a step
    that silently reuses the last batch's augmentation."""
    from hsnet.step import _copy

    captured = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(HSNetError, match="lacks a flip mask.*augmentation settings can't change"):
        _copy(captured, None, "a flip mask")
    with pytest.raises(HSNetError, match="has rotations"):
        _copy(None, torch.zeros(4, 2, 3), "rotations")
    _copy(captured, torch.ones(4, dtype=torch.bool), "a flip mask")
    assert captured.all()
    _copy(None, None, "rotations")  # neither: nothing to copy


def test_a_capture_that_fails_stops_with_what_to_do():
    """A capture that fails (here: no GPU to capture on) ends the run with an error naming the setting,
    the step and the way on, instead of PyTorch's bare error mid-epoch; the steps before it trained."""
    split = _split(8)
    model, opt = _model_and_adam()
    step = Step(model, CPU, opt, whole_graph=True)
    step.capture = True  # as on a GPU: the fourth batch of a size is captured
    batches = Batches(split, torch.arange(8), 2, CPU.device)
    with pytest.raises(HSNetError, match=r"(?s)whole-step: capturing the training step for batches of 2 as a CUDA "
                                         r"graph failed .*train\.compile auto.*--resume"):
        run_epoch(model, batches, CPU, optimizer=opt, step=step)
    assert step.steps_as_written[2] == WARMUP_STEPS and not step.graphs


def test_a_step_and_another_optimizer_are_refused():
    """run_epoch(optimizer=, step=): the step carries its optimizer (or none: validation); given both and
    they differ, one would be silently ignored."""
    split = _split(4)
    model, opt = _model_and_adam()
    batches = Batches(split, torch.arange(4), 4, CPU.device)
    for step in (Step(model, CPU), Step(model, CPU, torch.optim.Adam(model.parameters()))):
        with pytest.raises(HSNetError, match="another optimizer"):
            run_epoch(model, batches, CPU, optimizer=opt, step=step)


def test_a_gradient_replaced_behind_the_steps_back_is_refused():
    """The graphs write into fixed gradient tensors: if something sets them to None (zero_grad's
    default) Adam would read nothing; the next epoch refuses to start, saying why."""
    split = _split(8)
    model, opt = _model_and_adam()
    step = Step(model, CPU, opt, whole_graph=True)
    run_epoch(model, Batches(split, torch.arange(8), 4, CPU.device), CPU, optimizer=opt, step=step)
    opt.zero_grad(set_to_none=True)
    with pytest.raises(HSNetError, match="gradient tensor was replaced.*set_to_none"):
        run_epoch(model, Batches(split, torch.arange(8), 4, CPU.device), CPU, optimizer=opt, step=step)


@pytest.mark.slow
def test_hsnet_train_with_whole_step_gives_the_eager_history(tiny_data, tiny_params, tmp_path, monkeypatch):
    """``train.compile: whole-step`` end to end on the CPU: the same history as eager training."""
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    runs = {}
    for setting in (False, "whole-step"):
        params = Params.resolve(tiny_params, "sample", {"train": {"compile": setting, "data_on_device": True}})
        train(tiny_data, params, tmp_path / str(setting), device="cpu", track=False, progress=False)
        runs[setting] = json.loads((tmp_path / str(setting) / "history.json").read_text())
    assert len(runs[False]) == len(runs["whole-step"]) == 2
    for eager, whole in zip(runs[False], runs["whole-step"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert whole[key] == pytest.approx(eager[key], rel=1e-6, abs=1e-7), key


@pytest.mark.parametrize("device", [
    "cpu",  # nothing captured: the same code, so that the GPU run can't fail on the test's own mistakes
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="CUDA graphs need a GPU (benchmarks/gpu_session.sh)")),
])
def test_on_a_gpu_the_captured_steps_train_like_eager_ones(device):
    """On a GPU: after WARMUP_STEPS steps per batch size the step is captured and replayed; the replayed
    steps train as eager steps do (bf16: within a few per cent per epoch), also from the host
    pipeline (its thread pins memory while a graph is captured), BatchNorm's statistics follow, the
    eval graphs evaluate the same, FGAL's level weights (the last batch's in the buffer, the epoch's
    mean in the validation step's sums) are a plain forward's, and a
    learning rate set between epochs reaches Adam."""
    setup = pick_device(device)
    split = _split(70)  # batches of 16, 16, 16, 16, 6: 16 captured in epoch 1, 6 in epoch 4
    held = to_device(split, setup.device)
    orders = [torch.randperm(70, generator=torch.Generator().manual_seed(10 + e)) for e in range(5)]
    last_val = torch.arange(64, 70)
    results = {}
    for whole in (False, True):
        torch.manual_seed(0)
        model = place(build_model(7, ModelParams(), for_checkpoint=True), setup)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3, fused=True)
        step = Step(model, setup, opt, whole_graph=whole)
        val = Step(model, setup, whole_graph=whole)
        gen = torch.Generator().manual_seed(3)
        rows = []
        for e, order in enumerate(orders):
            if e == 4:
                opt.param_groups[0]["lr"] = 0.0  # as ReduceLROnPlateau would: nothing may change now
                before = {k: v.clone() for k, v in model.named_parameters()}
            host = e in (1, 3)  # the host pipeline (a thread pinning batches) in some epochs
            batches = Batches(split, order, 16, setup.device) if host else DeviceBatches(held, order, 16, setup.device)
            transform = EpochAugment([len(c) for c in batches.chunks], gen, setup.device, **AUG)
            loss, acc, _ = run_epoch(model, batches, setup, optimizer=opt, transform=transform, step=step)
            vloss, vacc, _ = run_epoch(model, DeviceBatches(held, torch.arange(70), 32, setup.device,
                                                            drop_singleton=False), setup, step=val)
            rows.append((loss, acc, vloss, vacc))
        for k, v in before.items():
            assert torch.equal(dict(model.named_parameters())[k], v), k
        logged, epoch_means = model.level_weights, val.level_means()
        with torch.no_grad():
            model.eval()
            halves = []
            for idx in (torch.arange(0, 35), torch.arange(35, 70)):  # the split again, in other batches
                forward(model, held.images[idx], setup)
                halves.append(np.array([model.level_weights[k] for k in "ABC"]))
            forward(model, held.images[last_val], setup)  # the last validation batch, eager
        assert logged == pytest.approx(model.level_weights, abs=2e-3)
        assert epoch_means == pytest.approx(dict(zip("ABC", (halves[0] + halves[1]) / 2)), abs=2e-3)
        stats = {k: v.float().clone() for k, v in model.state_dict().items() if "running" in k}
        results[whole] = (rows, step, val, stats)
    eager, graphed = results[False][0], results[True][0]
    if device == "cuda":
        assert set(results[True][1].graphs) == {16, 6} and set(results[True][2].graphs) == {32, 6}
        assert results[True][1].steps_as_written == {16: WARMUP_STEPS, 6: WARMUP_STEPS}
    else:
        assert not results[True][1].graphs and results[True][1].steps_as_written == {16: 4 * 5, 6: 5}
    for (loss, _, vloss, _), (gloss, _, gvloss, _) in zip(eager, graphed):
        assert gloss == pytest.approx(loss, rel=0.05) and gvloss == pytest.approx(vloss, rel=0.05)
    assert graphed[3][0] < graphed[0][0]  # the replayed steps learn
    for k, v in results[False][3].items():  # BatchNorm's running statistics were updated by the replays
        assert (results[True][3][k] - v).norm() <= 0.05 * v.norm() + 1e-3, k


def test_whole_step_compiles_without_torch_compiles_own_graphs(monkeypatch):
    """compile_model: whole-step is inductor's default mode on a GPU (the step captures the graphs: a
    reduce-overhead model inside them would capture graphs within a graph) and eager on a CPU."""
    from hsnet.train import compile_model, whole_step

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or ("compiled", model))
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, "whole-step", torch.device("cpu")) is model
    assert compile_model(model, " Whole-Step ", torch.device("cuda")) == ("compiled", model)
    assert calls == [{"mode": None, "dynamic": False}]
    assert whole_step("whole-step") and not whole_step("reduce-overhead") and not whole_step(True)
    assert Params.from_mapping(None, "sample", {"train": {"compile": "whole-step"}}).train.compile == "whole-step"


def _per_image_levels(model, images: np.ndarray) -> np.ndarray:
    """FGAL's lambda~ (A, B, C) of each image alone, in evaluation mode: (N, 3)."""
    model.eval()
    rows = []
    with torch.no_grad():
        for img in images:
            model(normalize(torch.from_numpy(img[None])))
            rows.append([model.level_weights[k] for k in "ABC"])
    return np.array(rows)


def test_the_epoch_level_weights_are_the_mean_over_every_validation_image():
    """The lambda~ an epoch logs describe the validation split, each image once: not the last
    batch's (here a batch of 1 after one of 8), which depends on where the split happens to end."""
    split = _split(9)
    model, _ = _model_and_adam()
    val = Step(model, CPU)
    run_epoch(model, Batches(split, torch.arange(9), 8, CPU.device, drop_singleton=False), CPU, step=val)
    means = val.level_means()
    per_image = _per_image_levels(model, split.images)
    assert means == pytest.approx(dict(zip("ABC", per_image.mean(0))), abs=1e-5)
    assert means != pytest.approx(dict(zip("ABC", per_image[-1])), abs=1e-5)  # the last batch alone differs
    val.begin()
    assert val.level_means() == {}  # nothing seen since: nothing to log


def test_a_model_without_fgal_has_no_level_weights_to_average():
    model = build_model(7, ModelParams(fgal=False), for_checkpoint=True)
    val = Step(model, CPU)
    run_epoch(model, Batches(_split(3), torch.arange(3), 8, CPU.device, drop_singleton=False), CPU, step=val)
    assert val.level_means() == {}
