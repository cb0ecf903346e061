"""Attack session 13 (issue 18): the batched MTCNN, the GPU-resident data path, concurrent
trainings and the GPU session script. Each test fails on the code it was written against and
compares with an independent expectation (facenet-pytorch's own detector, a hand computation,
or the documented behaviour)."""

from __future__ import annotations

import pytest


# --- the batched MTCNN: tests/data/test_mtcnn.py::test_a_face_in_one_photo_is_not_suppressed_by_a_face_in_another_photo_of_the_batch


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
