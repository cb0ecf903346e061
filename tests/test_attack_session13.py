"""Attack session 13 (issue 18): the batched MTCNN, the GPU-resident data path, concurrent
trainings and the GPU session script. Each test fails on the code it was written against and
compares with an independent expectation (facenet-pytorch's own detector, a hand computation,
or the documented behaviour)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def mtcnn():
    facenet = pytest.importorskip("facenet_pytorch")
    torch.set_num_threads(1)
    return facenet.MTCNN(keep_all=True, device="cpu").eval()


def reference(mtcnn, image: np.ndarray) -> np.ndarray:
    """facenet-pytorch's MTCNN.detect on this photo alone: (k, 5) x1, y1, x2, y2, prob, most probable first."""
    boxes, probs = mtcnn.detect(Image.fromarray(image))
    if boxes is None:
        return np.zeros((0, 5))
    found = np.concatenate([np.asarray(boxes, np.float64), np.asarray(probs, np.float64)[:, None]], 1)
    return found[np.argsort(-found[:, 4], kind="stable")]


def assert_same(found: np.ndarray, expected: np.ndarray, name: str) -> None:
    found = found[np.argsort(-found[:, 4], kind="stable")]
    assert found.shape == expected.shape, (f"{name}: {len(found)} faces {found.round(1).tolist()}, "
                                           f"facenet-pytorch alone found {len(expected)} {expected.round(1).tolist()}")
    if len(found):
        assert np.abs(found[:, :4] - expected[:, :4]).max() <= 1.0, name
        assert np.abs(found[:, 4] - expected[:, 4]).max() <= 1e-3, name


def corner_faces(e: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 500x500 photos: A, a small face (about 30 px) in the bottom-right corner; B, a large face
    (about 390 px) whose box starts ``e`` px or so left of and above the image (cut by the border)."""
    astro = pytest.importorskip("skimage.data").astronaut()
    big = np.asarray(Image.fromarray(astro).resize((1536, 1536)))
    small = np.asarray(Image.fromarray(astro).resize((171, 171)))  # face box about [60, 21, 89, 57]
    a = np.full((500, 500, 3), 120, np.uint8)
    ox, oy = 495 - 89, 495 - 57
    a[oy:, ox:] = small[:500 - oy, :500 - ox]
    b = np.ascontiguousarray(big[186 + e:186 + e + 500, 543 + e:543 + e + 500])
    return a, b


@pytest.mark.parametrize("e", [40, 80])
def test_a_face_in_one_photo_is_not_suppressed_by_a_face_in_another_photo_of_the_batch(mtcnn, e):
    """NMS "within each image" is done with the coordinate trick (torchvision's batched_nms for
    <= 1000 boxes, facenet-pytorch's batched_nms_numpy after O-Net): each image's boxes are shifted
    by index * (max coordinate + 1), which keeps images apart only for boxes with non-negative
    coordinates. A face cut by the top-left border has a box with negative x1, y1; shifted, it
    lands on the other photo's face in its bottom-right corner, and one of the two faces is
    suppressed. facenet-pytorch on each photo alone finds both; so does BatchedMTCNN on each alone.
    (hsnet predict on a GPU and crop with batches go through this path; the crop Detector too.)
    facenet-pytorch's own MTCNN.detect on the pair as one batch drops the same face: the fault is
    inherited from its batch mode, but hsnet's contract is per photo (tests/data/test_mtcnn.py,
    test_a_batch_gives_each_photo_what_it_gets_alone) and hsnet batches photos of any sizes."""
    from hsnet.data.crop import Detector
    from hsnet.data.mtcnn import BatchedMTCNN

    a, b = corner_faces(e)
    expected = [reference(mtcnn, a), reference(mtcnn, b)]
    assert len(expected[0]) == 1 and len(expected[1]) == 1 and expected[1][0, 0] < 0  # the set-up holds
    found = BatchedMTCNN(mtcnn=mtcnn)([a, b])
    assert_same(found[0], expected[0], "A (face bottom-right), batched with B")
    assert_same(found[1], expected[1], "B (face over the top-left border), batched with A")
    found = Detector("cpu")([a, b])  # what predict (GPU) and crop (batch_size > 1 on a GPU) call
    assert_same(found[0], expected[0], "A through crop.Detector")
    assert_same(found[1], expected[1], "B through crop.Detector")


# --- benchmarks/gpu_session.sh ------------------------------------------------------------------------
# The finding (the script wrote 9-10 files into the device tool's $OUT, which brings back 8) is tested
# by running the script: tests/benchmarks/test_gpu_session.py::test_on_the_device_tool_every_result_comes_back_in_two_files


# --- the training data path: a split of one image --------------------------------------------------------

@pytest.mark.parametrize("on_device", [False, True])
def test_a_training_split_of_one_image_is_refused_with_a_message_not_a_batchnorm_crash(tmp_path, monkeypatch,
                                                                                        on_device):
    """params.py refuses train.batch_size 1 ('BatchNorm needs 2 images') and Batches drops a last
    batch of one image for the same reason, but a training split of one image (batch_size > split)
    still makes a batch of one: `hsnet train` dies in its first step with PyTorch's
    'ValueError: Expected more than 1 value per channel when training', on the host path and with
    the data on the device alike, instead of an HSNetError naming the split (as an empty split gets,
    tensors.check_nonempty)."""
    import csv

    from hsnet.data.crop import crop
    from hsnet.data.datasets import import_dataset
    from hsnet.data.sample import generate
    from hsnet.errors import HSNetError
    from hsnet.params import CropParams, Params
    from hsnet.train import train

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    generate(tmp_path / "raw", per_class=4, size=96, seed=5)
    import_dataset("sample", tmp_path / "raw", tmp_path / "manifest.csv")
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    keep = [r for r in rows if r["split"] != "train"] + [r for r in rows if r["split"] == "train"][:1]
    with open(tmp_path / "one.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    crop(tmp_path / "one.csv", tmp_path / "raw", tmp_path / "crops", settings=CropParams(detector="none", size=80),
         progress=False)
    (tmp_path / "params.yaml").write_text(
        "datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
        f"    train: {{lr: 0.001, epochs: 1, batch_size: 16, seed: 3, data_on_device: {str(on_device).lower()}}}\n")
    params = Params.resolve(tmp_path / "params.yaml", "sample")
    with pytest.raises(HSNetError, match=r"the train split of .*manifest.csv holds 1 image \(at least 2"):
        train(tmp_path / "crops", params, tmp_path / "out", device="cpu", track=False, progress=False)


# --- concurrent trainings: the commands train_jobs builds ------------------------------------------------

def test_train_jobs_hands_each_run_the_overrides_it_was_given(tmp_path):
    """hsnet.concurrent.train_jobs turns a run's overrides into `hsnet train --set KEY=VALUE` with
    str(value) (booleans lower-cased): None becomes the text 'None', which --set's YAML reads as the
    string 'None', and a tuple (train.betas is one in Params) becomes '(0.9, 0.99)', a string too.
    The run then fails at its start ("'None' is not an integer or null", "is not a list of 2
    numbers") instead of training with the settings asked for. Expected: the settings `hsnet train`
    resolves from the command are the overrides given (as they are for numbers and booleans)."""
    from hsnet.concurrent import train_jobs
    from hsnet.params import Params, ParamsError, deep_merge, flags, parse_set

    params_file = tmp_path / "params.yaml"
    params_file.write_text("datasets:\n  sample:\n    input_size: 80\n"
                           "    train: {epochs: 3, max_epochs: 2, early_stopping: 5}\n")
    runs = {"control": {"train.lr": 1e-05, "model.dib": False},  # numbers and booleans arrive as given
            "no-epoch-cap": {"train.max_epochs": None},
            "no-early-stop": {"train.early_stopping": None},
            "betas": {"train.betas": (0.9, 0.99)}}
    refused = {}
    for job in train_jobs(tmp_path / "crops", params_file, "sample", runs, tmp_path / "out"):
        sets = [job.argv[i + 1] for i, arg in enumerate(job.argv) if arg == "--set"]
        # what hsnet.cli._train does with the command's --set (no --max-epochs given)
        try:
            params = Params.resolve(params_file, "sample",
                                    deep_merge(parse_set(sets), flags("train", {"max_epochs": None})))
        except ParamsError as exc:
            refused[job.name] = f"--set {' '.join(sets)}: {exc}"
            continue
        for key, value in runs[job.name].items():
            section, field_name = key.split(".")
            assert getattr(getattr(params, section), field_name) == value, (job.name, key, sets)
    assert not refused, refused
