"""Review session 15b: hand mutation testing. Each test below passes on the current code and fails on
the mutant named in the comment above it (file:line, before -> after), which survived the test files
that import the module. Expectations are hand computations, the paper's literal numbers or a promise
written in the code's docstrings, never the code's own output."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hsnet.errors import HSNetError


# --- hsnet/model/dib.py ------------------------------------------------------------------------

# hsnet/model/dib.py:47  nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1) -> nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
# (torch's default eps; ConvBNReLU's docstring promises facenet-pytorch BasicConv2d's eps=1e-3)
def test_every_dib_convolution_has_facenet_pytorchs_batchnorm_settings():
    from hsnet.model import dib

    for make in (dib.rdib_a, dib.sdib_a, dib.rdib_b, dib.sdib_b, dib.rdib_c):
        norms = [m for m in make().modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms, make.__name__
        for bn in norms:
            assert bn.eps == pytest.approx(1e-3, rel=0, abs=1e-12), make.__name__
            assert bn.momentum == pytest.approx(0.1), make.__name__



# --- hsnet/model/hsnet.py ------------------------------------------------------------------------

# hsnet/model/hsnet.py:164  self.head(stages["rdib_a"], ...) -> self.head(stages["stem"], ...)
# (the stem's output has F^A's shape, 256x25x25 at 224: nothing else notices)
def test_fgal_reads_f_a_from_rdib_a_not_from_the_stem():
    """Fig. 3 / Table 1: F^A is RDIB-A's output (the stem -> RDIB-A -> F^A), F^B RDIB-B's, F^C RDIB-C's."""
    from hsnet.model.hsnet import HSNet

    torch.manual_seed(0)
    model = HSNet(7, ktl=False).eval()
    outputs, head_inputs = {}, []
    for name in ("stem", "rdib_a", "rdib_b", "rdib_c"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    model.head.register_forward_hook(lambda m, i, o: head_inputs.extend(i))
    with torch.no_grad():
        model(torch.randn(2, 3, 80, 80))
    assert not torch.equal(outputs["stem"], outputs["rdib_a"])  # RDIB-A adds its branches
    assert [t is outputs[n] for t, n in zip(head_inputs, ("rdib_a", "rdib_b", "rdib_c"))] == [True] * 3


# hsnet/model/hsnet.py:147  if min(x.shape[-2:]) < MIN_INPUT_SIZE: -> if max(x.shape[-2:]) < MIN_INPUT_SIZE:
def test_a_non_square_input_with_one_side_under_the_minimum_is_refused_by_name():
    from hsnet.model.hsnet import HSNet

    model = HSNet(7, ktl=False).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"input 74x200 is smaller than HSNet's minimum 75x75"):
        model(torch.randn(1, 3, 74, 200))
    with torch.no_grad(), pytest.raises(ValueError, match=r"input 200x74 is smaller than HSNet's minimum 75x75"):
        model(torch.randn(1, 3, 200, 74))

# --- hsnet/pyfunc.py and hsnet/serve.py: the request limits are maxima (what a request "may hold") ----

def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buf, "PNG")
    return buf.getvalue()


# hsnet/pyfunc.py:103  if n > limits.max_images: -> if n >= limits.max_images:
def test_exactly_max_images_is_accepted_one_more_is_refused():
    from hsnet.pyfunc import InputRefused, Limits, check_count

    check_count(4, Limits(max_images=4))  # "max_images: photos or crops in one request" (hsnet/limits.py)
    with pytest.raises(InputRefused, match="5 images in one request is over the limit of 4"):
        check_count(5, Limits(max_images=4))


# hsnet/pyfunc.py:109  if pixels > limits.max_request_pixels: -> if pixels >= limits.max_request_pixels:
def test_exactly_max_request_pixels_is_accepted_one_more_is_refused():
    from hsnet.pyfunc import InputRefused, Limits, decode_all

    limits = Limits(max_images=4, max_image_pixels=10_000, max_request_pixels=2 * 100 * 100)
    out = decode_all([_png((100, 100)), _png((100, 100))], limits)  # 20,000 pixels: the limit itself
    assert [a.shape for a in out] == [(100, 100, 3), (100, 100, 3)]
    with pytest.raises(InputRefused, match="20,100 pixels, over the limit of 20,000"):
        decode_all([_png((100, 100)), _png((100, 100)), _png((10, 10))], limits)


# hsnet/pyfunc.py:79  if pixels > limits.max_image_pixels: -> if pixels >= limits.max_image_pixels:  (encoded)
# hsnet/pyfunc.py:123 if pixels > limits.max_image_pixels: -> if pixels >= limits.max_image_pixels:  (arrays)
@pytest.mark.parametrize("kind", ["encoded", "array"])
def test_an_image_of_exactly_max_image_pixels_is_accepted(kind):
    from hsnet.pyfunc import InputRefused, Limits, decode_all

    limits = Limits(max_images=4, max_image_pixels=50 * 40, max_request_pixels=1_000_000)
    cell = (lambda w, h: _png((w, h))) if kind == "encoded" else (lambda w, h: np.zeros((h, w, 3), np.uint8))
    assert decode_all([cell(50, 40)], limits)[0].shape == (40, 50, 3)  # 2,000 pixels: the limit itself
    with pytest.raises(InputRefused, match="51x40 = 2,040 pixels is over the limit of 2,000"):
        decode_all([cell(51, 40)], limits)


# hsnet/serve.py:326  if size is not None and size > self.max_bytes: -> ... size >= self.max_bytes:
# hsnet/serve.py:343  if total > self.max_bytes: -> if total >= self.max_bytes:
_BODY_LIMIT_PROBE = r"""
import asyncio, json, sys
from hsnet.serve import BodyLimit

async def call(size, declared):
    seen, sent = [], []

    async def app(scope, receive, send):
        while True:
            m = await receive()
            seen.append(m)
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [{"type": "http.request", "body": b"x" * (size - 10), "more_body": True},
              {"type": "http.request", "body": b"x" * 10, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    headers = [(b"content-length", str(size).encode())] if declared else []
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    try:
        await BodyLimit(app, max_bytes=100, max_pending_bytes=100)(scope, receive, send)
    except Exception as exc:  # the streamed refusal: an HTTPException that the app's handler answers
        return getattr(exc, "status_code", repr(exc)), 0
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, sum(len(m.get("body", b"")) for m in seen)

declared = sys.argv[1] == "1"
print(json.dumps([asyncio.run(call(100, declared)), asyncio.run(call(101, declared))]))
"""


# hsnet/serve.py:326  if size is not None and size > self.max_bytes: -> ... size >= self.max_bytes:
# hsnet/serve.py:343  if total > self.max_bytes: -> if total >= self.max_bytes:
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_a_body_of_exactly_max_request_bytes_reaches_the_model(declared):
    """max_request_bytes: "the HTTP body" a request may hold (hsnet/limits.py); 100 bytes against a limit
    of 100 are served, 101 refused with 413. KServe lives in the serve overlay (make serve-env), so the
    middleware runs in a subprocess, as tests/serve/test_deploy.py probes KServe's SDK."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import hsnet

    overlay = os.path.join(sys.prefix, "serve")
    root = str(Path(hsnet.__file__).resolve().parent.parent)
    probe = subprocess.run([sys.executable, "-c", _BODY_LIMIT_PROBE, "1" if declared else "0"],
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([overlay, root])},
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, f"KServe's SDK (make serve-env) is needed here: {probe.stderr[-800:]}"
    (ok_status, ok_bytes), (over_status, _) = json.loads(probe.stdout.strip().splitlines()[-1])
    assert (ok_status, ok_bytes) == (200, 100)
    assert over_status == 413


# --- hsnet/guards.py ---------------------------------------------------------------------------

def _row(epoch, loss=1.0, val_accuracy=0.5, lr=0.01):
    return {"epoch": epoch, "loss": loss, "val_accuracy": val_accuracy, "lr": lr}


# hsnet/guards.py:86  all(float(r["val_accuracy"]) <= at_most ...) -> all(float(r["val_accuracy"]) < at_most ...)
def test_a_validation_accuracy_exactly_at_the_chance_threshold_counts_as_chance():
    from hsnet.guards import chance_level, check_epoch

    labels = [0, 1] * 8  # 16 images, balanced: p = 0.5, 2 * sqrt(0.25 / 16) = 0.25, exact in binary
    assert chance_level(2, labels) == (0.5, 0.75)
    history = [_row(1, 0.69, 0.75)]
    # "at chance": *at most* chance + CHANCE_Z standard errors (the docstring); 12/16 is at most 0.75
    with pytest.raises(HSNetError, match="at chance"):
        check_epoch(_row(2, 0.69, 0.75), history, 2, val_labels=labels, chance_epochs=2)
    check_epoch(_row(2, 0.69, 13 / 16), history, 2, val_labels=labels, chance_epochs=2)


# hsnet/guards.py:77  if loss > ceiling: -> if loss >= ceiling:
def test_a_loss_exactly_at_the_ceiling_is_not_above_it():
    from hsnet.guards import check_epoch

    check_epoch(_row(1, 10.0 * math.log(7), 0.5), [], 7, chance_epochs=0)  # "above 10 * ln C" stops; equal doesn't
    with pytest.raises(HSNetError, match="far above"):
        check_epoch(_row(1, math.nextafter(10.0 * math.log(7), math.inf), 0.5), [], 7, chance_epochs=0)


# --- hsnet/tensors.py: the paper's augmentation, "random horizontal flips and 5 degree rotations" ------

# hsnet/tensors.py:167  angle = (torch.rand(n) * 2 - 1) * math.radians(deg) -> angle = torch.rand(n) * math.radians(deg)
# hsnet/tensors.py:167  ... * math.radians(rotate_degrees) -> ... * rotate_degrees  (5 radians)
# hsnet/tensors.py:170  [[cos, -sin, 0], [sin, cos, 0]] -> [[cos, sin, 0], [sin, cos, 0]]  (not a rotation)
def test_rotations_are_rotations_within_plus_minus_five_degrees_both_ways():
    from hsnet.tensors import draw_augment

    flip, theta = draw_augment(2000, torch.Generator().manual_seed(0), hflip=True, rotate_degrees=5.0)
    assert theta.shape == (2000, 2, 3) and flip.shape == (2000,)
    a = theta[:, :, :2].double()
    eye = torch.eye(2, dtype=torch.float64).expand(2000, 2, 2)
    torch.testing.assert_close(a @ a.transpose(1, 2), eye, rtol=0, atol=1e-6)  # orthonormal
    torch.testing.assert_close(torch.linalg.det(a), torch.ones(2000, dtype=torch.float64), rtol=0, atol=1e-6)
    assert torch.equal(theta[:, :, 2], torch.zeros(2000, 2))  # about the centre: no shift
    degrees = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0]))
    assert degrees.abs().max() <= 5.0 + 1e-9
    assert degrees.min() < -4.5 and degrees.max() > 4.5  # both directions, up to 5 degrees
    assert abs(float(degrees.mean())) < 0.5  # uniform on [-5, 5]: mean 0 (sd 2.9 / sqrt(2000) = 0.06)


# hsnet/tensors.py:177  x.flip(-1) -> x.flip(-2)  (a vertical flip)
# (this mutant is also killed by tests/train/test_train.py::test_device_augmentation_on_cpu_tensors;
# kept as the direct, by-hand check of which axis the flip is on)
def test_the_flip_is_horizontal_left_right():
    from hsnet.tensors import apply_augment

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    out = apply_augment(x, torch.tensor([True, False]), None)
    # image 0 mirrored left-right: column j becomes column 4 - j, rows untouched; image 1 as it was
    assert out[0, 1, 2].tolist() == [x[0, 1, 2, 4 - j].item() for j in range(5)]
    assert out[0, :, :, 0].tolist() == x[0, :, :, 4].tolist()
    assert torch.equal(out[1], x[1])



# hsnet/tensors.py:86  if total <= limit: break -> if total < limit: break
def test_a_cache_exactly_at_its_cap_keeps_every_file(tmp_path):
    """prune_cache: "Delete the least recently used tensor files until the cache fits ``limit`` bytes"."""
    import os

    from hsnet.tensors import prune_cache

    for i, name in enumerate(["a_16.npy", "b_16.npy", "c_16.npy"]):
        (tmp_path / name).write_bytes(b"x" * 100)
        os.utime(tmp_path / name, (1_000 + i, 1_000 + i))
    assert prune_cache(tmp_path, keep=tmp_path / "c_16.npy", limit=300) == []  # 300 bytes fit in 300
    assert prune_cache(tmp_path, keep=tmp_path / "c_16.npy", limit=299) == [tmp_path / "a_16.npy"]  # the oldest
    assert sorted(f.name for f in tmp_path.glob("*.npy")) == ["b_16.npy", "c_16.npy"]

# --- hsnet/data/crop.py -------------------------------------------------------------------------

def _coordinates_image(w=200, h=200) -> Image.Image:
    """Red = x, green = y, so a crop says where it was cut."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.arange(w)[None, :]
    arr[..., 1] = np.arange(h)[:, None]
    return Image.fromarray(arr)


# hsnet/data/crop.py:146  side += side * margin / max(size - margin, 1) -> side += side * margin / size
def test_margin_is_in_output_pixels_as_facenet_pytorchs():
    from hsnet.data.crop import square_crop

    # facenet-pytorch: "margin: Margin to add to bounding box, in terms of pixels in the final image".
    # A 60x40 box at (50, 60)-(110, 100), size 80, margin 20: the face's 60 px fill 80 - 20 = 60 output
    # pixels, so the square is 80 source pixels about the box's centre (80, 80): (40, 40)-(120, 120),
    # cut 1:1 (no resampling).
    out = np.asarray(square_crop(_coordinates_image(), (50, 60, 110, 100, 0.99), 80, 20))
    assert out.shape == (80, 80, 3)
    assert (out[0, 0, 0], out[0, 0, 1]) == (40, 40)
    assert (out[79, 79, 0], out[79, 79, 1]) == (119, 119)


# hsnet/data/crop.py:138  np.lexsort((-area, -boxes[:, 4])) -> np.lexsort((area, -boxes[:, 4]))
# hsnet/data/crop.py:134  boxes[:, 4] >= min_prob -> boxes[:, 4] > min_prob
def test_best_box_is_the_most_probable_then_the_largest_and_counts_faces_at_the_threshold():
    from hsnet.data.crop import best_box

    boxes = np.array([[0, 0, 10, 10, 0.95],     # small, tied for most probable
                      [0, 0, 30, 20, 0.95],     # large, tied: the one ("largest on ties")
                      [0, 0, 50, 50, 0.90],     # exactly the threshold: counted ("at or above")
                      [0, 0, 90, 90, 0.89]])    # below: not a face
    box, faces = best_box(boxes, 0.90)
    assert box.tolist() == [0, 0, 30, 20, 0.95] and faces == 3
    box, faces = best_box(boxes[2:], 0.90)
    assert box.tolist() == [0, 0, 50, 50, 0.90] and faces == 1


# hsnet/data/crop.py:154  left, top = (w - side) // 2, (h - side) // 2 -> left, top = 0, 0
def test_center_crop_takes_the_middle_square():
    from hsnet.data.crop import center_crop

    out = np.asarray(center_crop(_coordinates_image(200, 120), 120))  # 120 x 120 from x 40 to 159
    assert out.shape == (120, 120, 3)
    assert (out[0, 0, 0], out[0, 0, 1]) == (40, 0) and (out[119, 119, 0], out[119, 119, 1]) == (159, 119)


# --- hsnet/evaluate.py --------------------------------------------------------------------------

class _LeftRight(torch.nn.Module):
    """Two logits: the mean of the image's left half, of its right half (a horizontal flip swaps them)."""

    def forward(self, x):
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)


def _split(images: np.ndarray):
    from hsnet.tensors import Split

    return Split(images, torch.zeros(len(images), dtype=torch.long), [f"{i}.png" for i in range(len(images))])


# hsnet/evaluate.py:86  forward(model, x.flip(-1), setup) -> forward(model, x.flip(-2), setup)  (vertical flip)
# hsnet/evaluate.py:86  p = (p + ...softmax(1)) / 2 -> p = p + ...softmax(1)
def test_tta_averages_the_image_and_its_left_right_mirror():
    from hsnet.device import pick_device
    from hsnet.evaluate import predict_split

    images = np.zeros((3, 3, 8, 8), np.uint8)
    images[:, :, :, :4] = 255  # left half white, right half black
    images[1, :, :4, :] = 0  # image 1: also its top half black (a vertical flip would change its halves)
    setup = pick_device("cpu")
    plain = predict_split(_LeftRight(), _split(images), setup, batch_size=2)
    tta = predict_split(_LeftRight(), _split(images), setup, batch_size=2, tta_hflip=True)
    # by hand: normalised white = 127.5/128, black = -127.5/128; image 0 logits (0.996, -0.996)
    a = 127.5 / 128
    expected0 = np.exp([a, -a]) / np.exp([a, -a]).sum()
    np.testing.assert_allclose(plain[0], expected0, rtol=1e-5)
    # the mirror has the logits swapped: the average of softmax(l) and softmax(swapped l) is (0.5, 0.5)
    np.testing.assert_allclose(tta, np.full((3, 2), 0.5), rtol=1e-6)


class _Normed(torch.nn.Module):
    """Logits: BatchNorm1d of the mean of each channel; in eval mode its running statistics (0, 1)
    leave them as they are (up to eps), in train mode the batch's would standardise them."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(3, affine=False)

    def forward(self, x):
        return self.bn(x.mean((2, 3)))


# hsnet/evaluate.py:81  model.eval() -> (dropped)
def test_predictions_are_made_in_eval_mode():
    from hsnet.device import pick_device
    from hsnet.evaluate import predict_split

    images = np.zeros((2, 3, 4, 4), np.uint8)
    images[0, 0] = 255  # image 0: channel 0 white, others black
    images[1, 2] = 255
    model = _Normed().train()
    probs = predict_split(model, _split(images), pick_device("cpu"), batch_size=2)
    a = 127.5 / 128 / math.sqrt(1 + 1e-5)  # running mean 0, var 1
    l0 = np.array([a, -a, -a])
    np.testing.assert_allclose(probs[0], np.exp(l0) / np.exp(l0).sum(), rtol=1e-5)
    assert not model.training


# hsnet/evaluate.py:184  f"{pr[p]:.4f}" -> f"{pr[a]:.4f}"  (the confidence of the actual class)
def test_predictions_csv_confidence_is_the_predicted_class_probability(tmp_path):
    from hsnet.evaluate import PREDICTIONS, _write_outputs, confusion_matrix, metrics_from_confusion

    classes = ["a", "b", "c"]
    probs = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    actual, predicted = np.array([0, 0]), probs.argmax(1)
    metrics = metrics_from_confusion(confusion_matrix(actual, predicted, 3), classes)
    metrics.update(images=2)
    data = _split(np.zeros((2, 3, 4, 4), np.uint8))
    _write_outputs(tmp_path, metrics, data, actual, predicted, probs, classes, "sample", "test")
    lines = (tmp_path / PREDICTIONS).read_text().splitlines()
    assert lines == ["path,actual,predicted,confidence", "0.png,a,b,0.7000", "1.png,a,a,0.6000"]


# hsnet/evaluate.py:71  f"| difference | {acc - p_acc:+.2f} | " -> f"| difference | {p_acc - acc:+.2f} | "
# hsnet/evaluate.py:64  acc, macc = metrics["accuracy"] * 100, metrics["mean_accuracy"] * 100 -> (swapped)
def test_comparison_with_the_papers_table5_by_hand():
    from hsnet.evaluate import comparison_markdown

    text = comparison_markdown("rafdb", {"accuracy": 0.85, "mean_accuracy": 0.75})
    # Table 5: HSNet on RAF-DB, mAcc. 76.89, Acc. 86.67
    assert "| this run | 85.00 | 75.00 |" in text
    assert "| 86.67 | 76.89 |" in text
    assert "| difference | -1.67 | -1.89 |" in text


# hsnet/model/hsnet.py:91  if num_classes < 2: -> if num_classes < 1:
def test_one_class_is_refused():
    from hsnet.model.hsnet import HSNet

    with pytest.raises(ValueError, match="num_classes must be at least 2, got 1"):
        HSNet(1, ktl=False)
    assert HSNet(2, ktl=False).head.heads["A"].classifier.out_features == 2


# --- hsnet/durable.py ------------------------------------------------------------------------------

class _FakeS3:
    def __init__(self):
        self.puts = []

    def upload_file(self, path, bucket, key):
        self.puts.append((bucket, key))


def _uploader(monkeypatch, interval, times):
    from hsnet import durable

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    clock = iter(times)
    up = durable.Uploader("s3://bucket/ck/run", min_interval_s=interval, clock=lambda: next(clock))
    up.s3 = _FakeS3()
    return up


# hsnet/durable.py:115  now - self.uploaded_at < self.min_interval_s -> now - self.uploaded_at <= self.min_interval_s
def test_interval_zero_uploads_every_epoch_and_an_upload_exactly_one_interval_later_is_due(monkeypatch, tmp_path):
    # durable.train: "0: every epoch"; even two epochs the clock can't tell apart
    up = _uploader(monkeypatch, 0.0, [5.0, 5.0, 5.0])
    for _ in range(3):
        up(tmp_path, False)
    assert up.uploads == 3 and up.s3.puts == [("bucket", "ck/run/last.pt")] * 3
    # "at most one upload per 5 minutes": one exactly 300 s after the last one is allowed
    (tmp_path / "best.pt").write_bytes(b"x")  # (above: no best.pt yet, none uploaded)
    up = _uploader(monkeypatch, 300.0, [0.0, 299.0, 300.0])
    up(tmp_path, True)
    up(tmp_path, False)
    up(tmp_path, False)
    assert up.uploads == 2
    # last.pt first, as training writes them (hsnet.durable: a cut-off best.pt is repaired on resume)
    assert up.s3.puts == [("bucket", "ck/run/last.pt"), ("bucket", "ck/run/best.pt"), ("bucket", "ck/run/last.pt")]


# --- hsnet/params.py ------------------------------------------------------------------------------

# hsnet/params.py:133  min(self.epochs, self.max_epochs) if self.max_epochs else self.epochs -> self.max_epochs if ...
def test_max_epochs_caps_the_epochs_and_never_adds_to_them():
    from hsnet.params import TrainParams

    assert TrainParams().epochs_to_run == 500  # Sect. 4.2: "trained for 500 epochs"
    assert TrainParams(epochs=500, max_epochs=2).epochs_to_run == 2  # "cap for quick runs"
    assert TrainParams(epochs=3, max_epochs=10).epochs_to_run == 3  # a cap, not a target


# --- hsnet/limits.py -----------------------------------------------------------------------------

# hsnet/limits.py:33  if overrides.get(f.name) is not None: -> if overrides.get(f.name):
#   (a flag of 0 falls through to the environment/default instead of being refused)
# hsnet/limits.py:42  if getattr(limits, f.name) < 1: -> if getattr(limits, f.name) < 0:
def test_limits_from_flags_beat_the_environment_and_zero_is_refused(monkeypatch):
    from hsnet.limits import Limits

    monkeypatch.setenv("HSNET_SERVE_MAX_IMAGES", "7")
    assert Limits.from_env().max_images == 7
    assert Limits.from_env(max_images=3).max_images == 3  # the flag wins
    assert Limits.from_env(max_images=None).max_images == 7  # no flag given
    assert Limits.from_env().max_image_pixels == 16_000_000  # untouched: the documented default
    with pytest.raises(HSNetError, match=r"HSNET_SERVE_MAX_IMAGES \(--max-images\) must be at least 1"):
        Limits.from_env(max_images=0)
    monkeypatch.setenv("HSNET_SERVE_MAX_IMAGES", "0")
    with pytest.raises(HSNetError, match=r"HSNET_SERVE_MAX_IMAGES \(--max-images\) must be at least 1"):
        Limits.from_env()
    monkeypatch.setenv("HSNET_SERVE_MAX_IMAGES", "ten")
    with pytest.raises(HSNetError, match=r"HSNET_SERVE_MAX_IMAGES='ten' is not a whole number"):
        Limits.from_env()


# --- hsnet/model/ktl.py ----------------------------------------------------------------------------

# hsnet/model/ktl.py:177  freeze(): stem.requires_grad_(False); stem.eval() -> (stem.eval() dropped)
# (HSNet.train() puts the stem back in eval mode, so only a model used straight after construction shows it)
def test_freeze_alone_stops_gradients_and_batchnorm_statistics():
    from hsnet.model.ktl import freeze

    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # eq. 19: theta_s fixed
    freeze(stem)
    before = stem[1].running_mean.clone()
    stem(torch.randn(2, 3, 8, 8) + 5.0)
    assert not any(p.requires_grad for p in stem.parameters())
    assert not stem.training and torch.equal(stem[1].running_mean, before)


# hsnet/model/ktl.py:149  for prefix in ("", "module.", "stem."): -> for prefix in ("", "stem."):
def test_a_dataparallel_state_dict_loads_bit_for_bit(tmp_path):
    """The comment at the prefix loop: "whole model, DataParallel, HSNet checkpoints"."""
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    from hsnet.model.ktl import load_stem, stem_of

    torch.manual_seed(1)
    source = InceptionResnetV1().state_dict()
    torch.save({f"module.{k}": v for k, v in source.items()}, tmp_path / "dp.pt")
    stem = stem_of(InceptionResnetV1())
    load_stem(stem, tmp_path / "dp.pt")
    for key, value in stem.state_dict().items():
        assert torch.equal(value, source[key]), key
