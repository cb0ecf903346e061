"""Attack, session 19a: ML bugs that don't crash (training/serving skew, labels, logged figures).

Each test states the expectation it checks against: what training fed the model for a face
(``hsnet crop`` -> stored crop -> ``hsnet.tensors.load_split`` -> ``hsnet.device.forward``), a
docstring, or the figures a run logs.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hsnet.data.crop import crop
from hsnet.data.manifest import read_manifest, write_manifest
from hsnet.params import CropParams


class Recorder(torch.nn.Module):
    """A stand-in model that keeps every batch it is fed (after hsnet.device.forward's
    standardisation) and answers zeros: what a path feeds the model, compared across paths."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.num_classes = num_classes
        self.seen: list[torch.Tensor] = []
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a parameter, so .to(device) has something

    def forward(self, x):
        self.seen.append(x.detach().float().cpu().clone())
        return torch.zeros(x.shape[0], self.num_classes) + self.anchor


def _training_input(tmp_path, image: np.ndarray, crop_settings: CropParams, input_size: int) -> torch.Tensor:
    """What training and evaluate feed the model for the photo ``image``: hsnet crop with the model's
    crop settings, then the tensor cache at input_size, then forward's standardisation."""
    from hsnet.device import pick_device
    from hsnet.evaluate import predict_split
    from hsnet.tensors import load_split

    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(image).save(raw / "face.png")
    write_manifest(tmp_path / "manifest.csv",
                   [{"path": "face.png", "label": 0, "label_name": "anger", "split": "test", "subject": ""}],
                   columns=["path", "label", "label_name", "split", "subject"])
    crop(tmp_path / "manifest.csv", raw, tmp_path / "crops", settings=crop_settings, progress=False)
    rows = read_manifest(tmp_path / "crops" / "manifest.csv")
    split = load_split(rows, tmp_path / "crops", input_size, cache_dir=tmp_path / "cache", progress=False)
    rec = Recorder()
    predict_split(rec, split, pick_device("cpu"), batch_size=4)
    return rec.seen[0][0]


def _face(width: int, height: int) -> np.ndarray:
    """A face-sized test image with detail at every scale (a resize that differs shows)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx * yy) // 7) % 256], -1)
    return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("width, height, crop_size, input_size", [
    (120, 120, 60, 80),  # crops stored smaller than the input (rafdb: crop.size 100, input_size 224)
    (120, 90, 80, 80),  # a face image that is not square (training centre-crops it)
])
def test_the_pyfunc_feeds_a_face_as_training_fed_it(tmp_path, width, height, crop_size, input_size):
    """The same face through the MLflow pyfunc (and ``hsnet serve``'s ``crops``, the same
    Classifier) and through training's path must reach the model as the same tensor. The pyfunc
    says resizing travels inside the model; Classifier.crop_size says training's faces were cut at
    crop.size and *then* resized to input_size (hsnet predict does both steps). For a model whose
    crops were cut with ``detector: none`` (sample, FERG, RAF-DB), ``hsnet crop`` of a face image
    is: centre square, resize to crop.size, store; the tensor cache then resizes to input_size."""
    from hsnet.predict import Classifier
    from hsnet.pyfunc import HSNetModel

    settings = CropParams(detector="none", size=crop_size)
    image = _face(width, height)
    expected = _training_input(tmp_path, image, settings, input_size)

    rec = Recorder()
    model = HSNetModel()
    model.classifier = Classifier(rec, ["c%d" % i for i in range(7)], input_size, device="cpu",
                                  crop={"detector": "none", "size": crop_size, "margin": 0})
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    import pandas as pd

    model.predict(None, pd.DataFrame({"image": [buf.getvalue()]}))
    served = rec.seen[0][0]
    assert served.shape == expected.shape
    diff = (served - expected).abs() * 128  # in grey levels
    assert diff.max() <= 1, (f"the pyfunc feeds this face {diff.mean():.1f} grey levels (mean; max "
                             f"{diff.max():.0f}) away from what training fed the model for it")


def test_an_rgba_array_reaches_the_model_as_the_same_image_sent_as_png():
    """The pyfunc takes an image as encoded bytes or as an array (README: 'encoded image bytes ...
    or RGB uint8 arrays'); hsnet.io.open_rgb (training's reader) and the pyfunc's decoding of bytes
    composite a transparent image on white. An (H, W, 4) array, which as_rgb_array accepts, must
    become the same RGB image, not have its alpha dropped (transparent pixels turned black)."""
    from hsnet.limits import Limits
    from hsnet.pyfunc import decode_all

    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[20:60, 20:60, 3] = 255  # an opaque face on a transparent background
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    from_png, from_array = decode_all([buf.getvalue(), rgba], Limits.from_env())
    np.testing.assert_array_equal(np.asarray(from_array), np.asarray(from_png))


def test_train_refuses_crops_whose_class_names_are_not_the_datasets(tiny_data, tmp_path):
    """evaluate refuses crops whose label -> label_name is not the checkpoint's classes ('the
    metrics would be silently wrong'). hsnet train reads the same manifest and writes the dataset's
    class names into the checkpoint, which predict, the pyfunc's prob_<class> columns and the
    server name every answer with: trained on FERG-ordered labels as rafdb, a 'joy' face is
    served as 'happiness'... or as whatever class shares its index (label 3: joy vs happiness;
    label 0: anger vs surprise). It must refuse as evaluate does, before training."""
    from hsnet.errors import HSNetError
    from hsnet.params import ModelParams, Params, TrainParams
    from hsnet.train import train

    params = Params(dataset="rafdb", input_size=80, model=ModelParams(ktl=False),
                    train=TrainParams(lr=0.001, epochs=1, batch_size=16, seed=3))
    with pytest.raises(HSNetError, match="class"):
        train(tiny_data, params, tmp_path / "run", track=False, progress=False)


def test_the_lr_logged_for_an_epoch_is_the_lr_that_epoch_trained_with(tiny_data, tmp_path, monkeypatch):
    """history.json's and MLflow's per-epoch ``lr`` sits in one row with that epoch's loss and
    accuracy (and the training-curves plot draws them on one epoch axis): it must be the rate the
    epoch's steps used. ReduceLROnPlateau steps after validation, before the row is made, so the
    epoch at whose end the lr is cut is logged with the cut lr: every drop shows one epoch early
    (docs/paper-notes.md reads 'its lr stayed at 0.01 for 9 epochs' off these rows)."""
    import hsnet.train as train_mod
    from hsnet.params import ModelParams, Params, SchedulerParams, TrainParams

    used: dict[int, float] = {}

    def train_one_epoch(model, split, tp, setup, optimizer, epoch, **kw):
        used[epoch] = optimizer.param_groups[0]["lr"]
        return 1.0, 0.5, 100.0

    def validate_epoch(model, split, tp, setup, step=None):
        return 1.0 + len(used), 0.9  # a validation loss that only rises: the lr is cut after epoch 2

    monkeypatch.setattr(train_mod, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(train_mod, "validate_epoch", validate_epoch)
    params = Params(dataset="sample", input_size=80, model=ModelParams(ktl=False),
                    train=TrainParams(lr=0.01, epochs=3, batch_size=16, seed=3,
                                      scheduler=SchedulerParams(patience=0)))
    train_mod.train(tiny_data, params, tmp_path / "run", track=False, progress=False)
    import json

    history = json.loads((tmp_path / "run" / train_mod.HISTORY).read_text())
    assert used[3] < used[2]  # the scheduler did cut the lr between epochs 2 and 3
    assert {row["epoch"]: row["lr"] for row in history} == pytest.approx(used)


def test_evaluated_figures_with_a_test_time_flip_are_the_served_models_or_say_they_are_not(trained, tmp_path,
                                                                                            caplog):
    """register and promote rank versions by evaluate's figures; with evaluate.tta_hflip they are
    of the image and its mirror averaged, while the pyfunc, hsnet predict and hsnet serve classify
    the image alone (Classifier.probabilities has no flip). evaluate already warns when its crops
    are not cut as the served model cuts faces ('these figures are not the served model's'); a
    test-time flip the served model never does must be served too, or said the same way."""
    import csv
    import logging

    from hsnet.evaluate import PREDICTIONS, evaluate
    from hsnet.params import EvaluateParams
    from hsnet.predict import Classifier

    caplog.set_level(logging.WARNING)
    out = tmp_path / "eval"
    evaluate(trained["checkpoint"], trained["data"], out, settings=EvaluateParams(tta_hflip=True), track=False,
             progress=False)
    said = any("served" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    clf = Classifier.from_checkpoint(trained["checkpoint"], device="cpu")
    rows = list(csv.DictReader(open(out / PREDICTIONS)))
    faces = [Image.open(trained["data"] / r["path"]).convert("RGB") for r in rows]
    served = clf.probabilities(faces)
    evaluated = np.array([float(r["confidence"]) for r in rows])
    served_conf = served[np.arange(len(rows)), [clf.classes.index(r["predicted"]) for r in rows]]
    same = np.allclose(served_conf, evaluated, atol=2e-4)
    assert same or said, (f"evaluate's test-time-flip figures differ from the served model's answers "
                          f"(confidence off by up to {np.abs(served_conf - evaluated).max():.4f}) and nothing says so")
