"""Training and evaluation end to end on the CPU, resuming, metrics, MLflow records, bad settings."""

from __future__ import annotations

import dataclasses

import csv
import json
import socket

import numpy as np
import pytest
import torch

from hsnet.errors import HSNetError
from hsnet.evaluate import confusion_matrix, evaluate, metrics_from_confusion
from hsnet.model import StemWeightsError
from hsnet.device import normalize
from hsnet.tensors import augment
from hsnet.checkpoint import load as load_checkpoint
from hsnet.params import Params
from hsnet.train import train


def _train(data, params_path, dataset, out, overrides=None, **kw):
    """train() with the settings of ``dataset`` in the params file at ``params_path``."""
    return train(data, Params.resolve(params_path, dataset, overrides), out, **kw)
from hsnet.tracking import TrackingUnavailable


def test_train_and_evaluate_end_to_end(tiny_data, tiny_params, local_mlflow, tmp_path):
    import mlflow

    summary = _train(tiny_data, tiny_params, "sample", tmp_path / "run", progress=False)
    assert summary["epochs_run"] == 2
    for name in ("last.pt", "best.pt", "history.json", "train_summary.json"):
        assert (tmp_path / "run" / name).is_file()
    assert (tmp_path / "run" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"loss", "val_accuracy", "lr", "lambda_A", "lambda_B", "lambda_C", "images_per_s"} <= set(history[0])
    best, last = (load_checkpoint(tmp_path / "run" / n) for n in ("best.pt", "last.pt"))
    assert "optimizer" in last and "optimizer" not in best  # best.pt is for evaluation: no Adam moments
    assert (tmp_path / "run" / "best.pt").stat().st_size < (tmp_path / "run" / "last.pt").stat().st_size / 2

    metrics = evaluate(tmp_path / "run" / "best.pt", tiny_data, tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] and 0 <= saved["accuracy"] <= 1
    assert len(saved["per_class_accuracy"]) == 7 and np.array(saved["confusion_matrix"]).sum() == saved["images"]
    with open(tmp_path / "eval" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"actual", "predicted"} <= set(rows[0]) and len(rows) == saved["images"]
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| this run |" in (tmp_path / "eval" / "comparison.md").read_text()

    client = mlflow.MlflowClient(local_mlflow)
    runs = {r.data.tags["step"]: r for r in client.search_runs(
        [client.get_experiment_by_name("hsnet").experiment_id])}
    tr = runs["train"]
    assert tr.data.params["train.lr"] == "0.001" and tr.data.params["model.fgal"] == "True"
    assert tr.data.tags["data_version"].startswith("sha256:") and tr.data.tags["git_commit"]
    assert [m.step for m in client.get_metric_history(tr.info.run_id, "val_accuracy")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(tr.info.run_id)}
    assert {"history.json", "training_curves.png", "checkpoint"} <= artifacts
    ev = runs["evaluate"]
    assert ev.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert ev.data.tags["train_run_id"] == tr.info.run_id
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(ev.info.run_id)}
    assert not any("SECRET" in k.upper() or "PASSWORD" in k.upper() for k in tr.data.params)


def test_loss_goes_down(tiny_data, tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    summary = _train(tiny_data, tiny_params, "sample", tmp_path / "run", track=False, progress=False,
                    overrides={"train": {"epochs": 4, "lr": 0.01}, "model": {"fgal": False}})  # the paper's lr
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["epochs_run"] == 4
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]


def test_kill_and_resume_gives_the_same_weights(tiny_data, tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    opts = dict(track=False, progress=False, overrides={"train": {"epochs": 3}})
    _train(tiny_data, tiny_params, "sample", tmp_path / "straight", **opts)
    _train(tiny_data, tiny_params, "sample", tmp_path / "killed", stop_after_epochs=1, **opts)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["state"]["epoch"] == 1
    (tmp_path / "killed" / ".last.pt.half-written.tmp").write_bytes(b"partial")  # a kill mid-save
    summary = _train(tiny_data, tiny_params, "sample", tmp_path / "killed", resume=True, **opts)
    assert summary["epochs_run"] == 3
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    same = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
    assert [[h[k] for k in same] for h in a["state"]["history"]] == \
        [[h[k] for k in same] for h in b["state"]["history"]]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key


def test_metrics_of_a_known_confusion_matrix():
    # rows: actual, columns: predicted
    cm = np.array([[8, 2, 0],
                   [1, 3, 0],
                   [0, 0, 0]])  # class 2 absent from the test set
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(11 / 14)  # eq. 22
    assert m["mean_accuracy"] == pytest.approx((8 / 10 + 3 / 4) / 2)  # eq. 23 over present classes
    assert m["per_class_accuracy"] == {"a": pytest.approx(0.8), "b": pytest.approx(0.75), "c": None}  # untested
    assert m["confusion_matrix_normalized"][1] == pytest.approx([0.25, 0.75, 0.0])
    assert confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_device_augmentation_on_cpu_tensors():
    x = normalize(torch.randint(0, 256, (64, 3, 80, 80), dtype=torch.uint8))
    flipped = augment(x, torch.Generator().manual_seed(0), hflip=True, rotate_degrees=0)
    same = [torch.equal(a, b) for a, b in zip(flipped, x)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and 16 < sum(mirrored) < 48
    again = augment(x, torch.Generator().manual_seed(0), hflip=True, rotate_degrees=0)
    assert torch.equal(flipped, again)  # the generator decides, not global state
    rotated = augment(x, torch.Generator().manual_seed(1), hflip=False, rotate_degrees=5)
    assert rotated.shape == x.shape and not torch.equal(rotated, x)
    centre = (slice(None), slice(None), slice(30, 50), slice(30, 50))
    assert (rotated[centre] - x[centre]).abs().mean() < (rotated - x).abs().mean() * 1.5
    assert torch.equal(augment(x, torch.Generator(), hflip=False, rotate_degrees=0), x)


def test_bad_settings_fail_before_training(tiny_data, tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    opts = dict(track=False, progress=False)
    with pytest.raises(HSNetError, match="unknown dataset 'affectnet'"):
        train(tiny_data, Params(dataset="affectnet"), out, **opts)
    with pytest.raises(HSNetError, match="input_size: 64 is out of range; it must be >= 75"):
        _train(tiny_data, tiny_params, "sample", out, overrides={"input_size": 64}, **opts)
    with pytest.raises(StemWeightsError, match="does not exist"):
        _train(tiny_data, tiny_params, "sample", out,
              overrides={"model": {"ktl": True, "stem_weights": str(tmp_path / "none.pt")}}, **opts)
    rows = (tiny_data / "manifest.csv").read_text().splitlines()
    empty = tmp_path / "noval"
    empty.mkdir()
    (empty / "manifest.csv").write_text("\n".join(r for r in rows if ",val," not in r) + "\n")
    with pytest.raises(HSNetError, match="val split .* is empty"):
        _train(empty, tiny_params, "sample", out, **opts)
    assert not out.exists() or not any(out.iterdir())


def test_unreachable_tracking_server_fails_fast(tiny_data, tiny_params, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TrackingUnavailable, match=f"127.0.0.1:{port}.*unreachable"):
        _train(tiny_data, tiny_params, "sample", tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_sigkill_of_the_process_then_resume(tiny_data, tiny_params, tmp_path):
    """A real kill: `hsnet train` is SIGKILLed after its first epoch; `--resume` ends bit-identical."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "HSNET_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "hsnet", "train", "--data", str(tiny_data), "--params", str(tiny_params),
           "--dataset", "sample", "--no-mlflow", "--set", "train.epochs=4"]
    subprocess.run(cmd + ["--out", str(tmp_path / "straight")], env=env, check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    epoch_at_kill = load_checkpoint(killed / "last.pt")["state"]["epoch"]
    assert 1 <= epoch_at_kill < 4
    subprocess.run(cmd + ["--out", str(killed), "--resume"], env=env, check=True, capture_output=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(killed / "last.pt")
    assert b["state"]["epoch"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key


def test_the_gpu_recipe_bf16_channels_last_trains_on_cpu():
    """The CUDA setup's code path (bf16 autocast, channels-last model and batches, device-side
    augmentation, the pinned-batch iterator) run on the CPU, where autocast takes bf16 too: its
    losses follow an fp32 run of the same steps, they fall, and the weights stay fp32."""
    from hsnet.tensors import Batches, Split
    from hsnet.checkpoint import build_model
    from hsnet.device import Setup
    from hsnet.params import ModelParams
    from hsnet.train import run_epoch

    rng = np.random.default_rng(0)
    labels = torch.arange(8) % 7  # each class its own grey level, so flips and rotations keep it learnable
    images = (labels.numpy()[:, None, None, None] * 35 + rng.integers(0, 20, (8, 3, 80, 80))).astype(np.uint8)
    split = Split(images, labels, [f"{i}.png" for i in range(8)])

    def losses(setup):
        torch.manual_seed(0)
        model = build_model(7, ModelParams(ktl=False))
        if setup.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        out = [run_epoch(model, Batches(split, torch.arange(8), 8, setup.device), setup, optimizer=opt,
                         generator=gen, aug={"hflip": True, "rotate_degrees": 5.0})[0] for _ in range(8)]
        assert all(p.dtype == torch.float32 for p in model.parameters())
        return np.array(out)

    fp32 = losses(Setup(torch.device("cpu"), None, False))
    bf16 = losses(Setup(torch.device("cpu"), torch.bfloat16, True))
    assert np.isfinite(bf16).all() and bf16[-1] < bf16[0] - 0.5
    # the first step's loss, before any update, differs by bf16's rounding alone (8 bits of mantissa:
    # 0.4% a number; measured 0.17%); then within 15% of the fp32 loss at every step: 8 Adam steps
    # amplify the rounding while the loss falls fastest, by an amount that depends on how the sums are
    # split among threads (measured, the He-initialised heads of eq. 18: at most 6.6% with 2 threads,
    # 10.5% with 1, at the fifth step)
    assert abs(bf16[0] - fp32[0]) < 0.01 * fp32[0], (bf16, fp32)
    assert (np.abs(bf16 - fp32) < 0.15 * fp32).all(), (bf16, fp32)


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tiny_data, tiny_params, tmp_path, monkeypatch):
    """A full disk in the middle of epoch 2's checkpoint: a clear error naming the file, epoch 1's
    last.pt whole, no temporary file left, and --resume carries on from it."""
    import hsnet.train as train_mod

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    _train(tiny_data, tiny_params, "sample", tmp_path / "run", track=False, progress=False, stop_after_epochs=1)
    before, best_before = ((tmp_path / "run" / name).read_bytes() for name in ("last.pt", "best.pt"))
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # part of it lands, then the device is full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(train_mod.torch, "save", full_disk)
    # the first write of epoch 2 fails: best.pt's when it improved (written first), else last.pt's
    with pytest.raises(HSNetError, match=r"can't write checkpoint .*(best|last)\.pt.*disk full.*--resume"):
        _train(tiny_data, tiny_params, "sample", tmp_path / "run", resume=True, track=False, progress=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert (tmp_path / "run" / "best.pt").read_bytes() == best_before
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(train_mod.torch, "save", real_save)
    killed_write = tmp_path / "run" / ".last.pt.k1ll3d.tmp"  # what a SIGKILL during torch.save leaves
    killed_write.write_bytes(b"PK\x03\x04 half a zip")
    summary = _train(tiny_data, tiny_params, "sample", tmp_path / "run", resume=True, track=False, progress=False)
    assert summary["epochs_run"] == 2
    assert not killed_write.exists()  # cleaned when training starts again


def test_train_compile_setting(monkeypatch):
    """``train.compile``: false/true/a torch.compile mode reach torch.compile; anything else is refused
    with the setting's name, before any training."""
    import torch._dynamo as dynamo

    from hsnet.params import TrainParams
    from hsnet.train import compile_model

    suppress_errors = dynamo.config.suppress_errors  # auto sets it: restored at the end

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or ("compiled", model))
    model = torch.nn.Linear(2, 2)
    for off in (False, None):  # the params schema refuses the string "false"
        assert compile_model(model, off) is model
    assert compile_model(model, True) == ("compiled", model)
    compile_model(model, "reduce-overhead")
    assert calls == [{"mode": None, "dynamic": False}, {"mode": "reduce-overhead", "dynamic": False}]
    # auto, the default: eager on a CPU, CUDA graphs on a GPU
    assert TrainParams().compile == "auto"
    assert compile_model(model, "auto", torch.device("cpu")) is model
    try:
        assert compile_model(model, "auto", torch.device("cuda")) == ("compiled", model)
        assert dynamo.config.suppress_errors  # auto falls back to eager where compiling fails
    finally:
        dynamo.config.suppress_errors = suppress_errors
    assert calls[-1] == {"mode": "reduce-overhead", "dynamic": False}
    with pytest.raises(HSNetError, match="train.compile 'fastest'.*reduce-overhead"):
        compile_model(model, "fastest")


def test_a_compiled_model_trains_like_the_eager_one_and_marks_each_step(monkeypatch):
    """run_epoch with a torch.compile'd model (dynamo, eager backend: no C++ compiler needed) gives the
    eager losses and starts a new CUDA-graph step before every batch (reduce-overhead reuses the
    previous step's output buffers otherwise)."""
    from hsnet.tensors import Batches, Split
    from hsnet.device import Setup
    from hsnet.train import run_epoch

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8), torch.arange(12) % 7,
                  [f"{i}.png" for i in range(12)])
    marks = []
    real_mark = torch.compiler.cudagraph_mark_step_begin
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1) or real_mark())
    setup = Setup(torch.device("cpu"), None, False)

    def losses(compiled):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 7))
        step_model = torch.compile(model, backend="eager", dynamic=False) if compiled else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(0)
        return [run_epoch(step_model, Batches(split, torch.arange(12), 4, setup.device), setup, optimizer=opt,
                          generator=gen, aug={"hflip": True, "rotate_degrees": 5.0})[0] for _ in range(3)]

    eager = losses(False)
    assert marks == []
    compiled = losses(True)
    assert len(marks) == 3 * 3  # 3 epochs of 3 batches
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)
    assert compiled[-1] < compiled[0]


def test_the_optimizer_is_the_papers_adam_fused_on_a_gpu():
    """make_optimizer: Adam with the settings given; the fused kernel for a CUDA setup (PyTorch's CPU
    has it too, so it is checked here) makes the same update as the plain one."""
    from hsnet.device import Setup
    from hsnet.params import TrainParams
    from hsnet.train import make_optimizer

    tp = TrainParams(lr=0.01, betas=(0.9, 0.999), weight_decay=0.0)
    weights = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        opt = make_optimizer(list(model.parameters()), tp, Setup(torch.device(device), None, False))
        assert opt.defaults["lr"] == 0.01 and opt.defaults["betas"] == (0.9, 0.999)
        assert bool(opt.defaults["fused"]) == (device == "cuda")
        x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights[device] = model.weight.detach().clone()
    torch.testing.assert_close(weights["cuda"], weights["cpu"], rtol=1e-5, atol=1e-6)
    with pytest.raises(HSNetError, match="train.optimizer 'sgd'"):
        make_optimizer(list(model.parameters()), dataclasses.replace(tp, optimizer="sgd"), Setup(torch.device("cpu"), None, False))


def test_the_checkpoint_records_the_crop_settings_the_crops_were_made_with(tiny_data, tiny_params, tmp_path):
    """Crops cut with `hsnet crop --margin 6` (a flag, not params.yaml) and trained with params
    whose crop margin is 0: the checkpoint recorded params' margin, so hsnet predict and the server
    cut faces tighter than the model was trained on. The crops' own record (crop_report.json) is
    what the model saw; a difference from params is logged."""
    import shutil

    from hsnet.checkpoint import load
    from hsnet.data.crop import crop
    from hsnet.data.datasets import import_dataset
    from hsnet.data.sample import generate
    from hsnet.params import CropParams
    from hsnet.predict import Classifier

    generate(tmp_path / "raw", per_class=2, size=96, seed=5)
    import_dataset("sample", tmp_path / "raw", tmp_path / "manifest.csv")
    made_with = CropParams(detector="none", size=80, margin=6, min_prob=0.5)
    crop(tmp_path / "manifest.csv", tmp_path / "raw", tmp_path / "crops", settings=made_with, progress=False)
    params = Params.resolve(tiny_params, "sample", {"train": {"epochs": 1}})
    assert params.crop.margin == 0 and params.crop.min_prob == 0.0  # what params.yaml says
    train(tmp_path / "crops", params, tmp_path / "run", device="cpu", track=False, progress=False)
    recorded = load(tmp_path / "run" / "best.pt")["meta"]["params"]["crop"]
    assert recorded == {"detector": "none", "size": 80, "margin": 6, "no_face": "drop", "min_face_size": 20,
                        "min_prob": 0.5}
    classifier = Classifier.from_checkpoint(tmp_path / "run" / "best.pt", device="cpu")
    assert (classifier.margin, classifier.crop_size) == (6, 80)
    shutil.rmtree(tmp_path / "run")


def test_a_second_training_into_the_same_folder_is_refused(tiny_data, tiny_params, tmp_path):
    """Two `hsnet train` on one --out would each remove the other's checkpoint temporaries and
    overwrite its last.pt: the second is refused while the first runs; once it is gone (killed),
    the folder is free again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "HSNET_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "hsnet", "train", "--data", str(tiny_data), "--params", str(tiny_params),
           "--dataset", "sample", "--no-mlflow", "--out", str(out)]
    first = subprocess.Popen(cmd + ["--set", "train.epochs=500"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").is_file() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first training ended before the second started"
        second = subprocess.run(cmd + ["--set", "train.epochs=1"], env=env, capture_output=True, text=True)
        assert second.returncode != 0
        assert str(out) in second.stderr and "another" in second.stderr and "--out" in second.stderr, second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    epoch = load_checkpoint(out / "last.pt")["state"]["epoch"]
    assert epoch >= 1 and load_checkpoint(out / "last.pt")["meta"]["params"]["train"]["epochs"] == 500
    # killed: nothing holds the folder, and a resume continues the first run's last.pt
    again = subprocess.run(cmd + ["--set", "train.epochs=500", "--set", "train.max_epochs=" + str(epoch + 1),
                                  "--resume"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(out / "last.pt")["state"]["epoch"] == epoch + 1


def test_fp16_loss_scale_lives_through_the_run_and_a_resume(tiny_params, tmp_path, monkeypatch):
    """Under float16 autocast (a GPU without bf16) the GradScaler's scale adapts over the whole run:
    PyTorch's AMP examples make one scaler per run, and its ``growth_interval`` counts "consecutive
    iterations without inf/NaN gradients" (2,000 by default) across epochs. So while the scale
    never backed off (still the documented ``init_scale`` 2**16), last.pt records a tracker equal to
    the run's optimizer steps so far, through a kill and ``--resume`` too. (float16 on a CPU is ~6x
    slower than float32: 42 photos, one batch per epoch, keep this short.)"""
    import hsnet.train as train_module
    from hsnet.data.crop import crop
    from hsnet.data.datasets import import_dataset
    from hsnet.data.sample import generate
    from hsnet.device import Setup
    from hsnet.params import CropParams

    generate(tmp_path / "raw", per_class=1, size=80, seed=5)
    import_dataset("sample", tmp_path / "raw", tmp_path / "manifest.csv")
    crop(tmp_path / "manifest.csv", tmp_path / "raw", tmp_path / "crops", settings=CropParams(detector="none", size=80),
         progress=False)
    with open(tmp_path / "crops" / "manifest.csv") as f:
        train_images = sum(row["split"] == "train" for row in csv.DictReader(f))
    batch = 64
    assert 1 < train_images <= batch  # one batch, one optimizer step, per epoch

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(train_module, "pick_device", lambda name=None: Setup(torch.device("cpu"), torch.float16, False))
    opts = dict(track=False, progress=False, overrides={"train": {"epochs": 2, "batch_size": batch}})
    _train(tmp_path / "crops", tiny_params, "sample", tmp_path / "run", stop_after_epochs=1, **opts)
    first = load_checkpoint(tmp_path / "run" / "last.pt")["scaler"]
    assert first is not None and first["scale"] == 2.0 ** 16 and first["_growth_tracker"] == 1
    _train(tmp_path / "crops", tiny_params, "sample", tmp_path / "run", resume=True, **opts)
    resumed = load_checkpoint(tmp_path / "run" / "last.pt")["scaler"]
    assert resumed["scale"] == 2.0 ** 16 and resumed["_growth_tracker"] == 2  # 1 again: the scale started over


def test_an_epochs_level_weights_describe_the_whole_validation_split(tiny_data, tiny_params, tmp_path, monkeypatch):
    """history's lambda_A/B/C: the model after the epoch, each validation image once, averaged
    (computed here image by image from last.pt), not the validation's last batch."""
    from hsnet.checkpoint import model_from
    from hsnet.data.manifest import MANIFEST, read_manifest
    from hsnet.tensors import load_split

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    _train(tiny_data, tiny_params, "sample", tmp_path / "run", track=False, progress=False,
           overrides={"train": {"epochs": 1, "batch_size": 2}})  # validation in batches of 4
    logged = json.loads((tmp_path / "run" / "history.json").read_text())[-1]
    model = model_from(load_checkpoint(tmp_path / "run" / "last.pt")).eval()
    rows = [r for r in read_manifest(tiny_data / MANIFEST) if r["split"] == "val"]
    assert len(rows) % 4 and len(rows) > 4  # a last batch smaller than the rest
    split = load_split(rows, tiny_data, 80)
    per_image = []
    with torch.no_grad():
        for img in split.images:
            model(normalize(torch.from_numpy(img[None])))
            per_image.append([model.level_weights[k] for k in "ABC"])
    expected = np.mean(per_image, axis=0)
    assert [logged[f"lambda_{k}"] for k in "ABC"] == pytest.approx(expected, abs=1e-5)
