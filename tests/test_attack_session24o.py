"""Attack 24o: data that passes ``hsnet validate`` and then breaks, or silently misleads, a later step.

README, "Data validation": validate checks "every split non-empty, every class in train, ...,
no identical image (sha256) in two splits", and "a failed validation stops that dataset before
cropping" (the gate before the GPU). Each test builds a small dataset in the importers' layouts
that validate passes, and follows it into crop, train or train's guards.
"""

from __future__ import annotations

import pytest
from PIL import Image, PngImagePlugin

from hsnet.data.crop import crop
from hsnet.data.datasets import import_dataset
from hsnet.data.manifest import read_manifest
from hsnet.data.sample import generate
from hsnet.data.validate import ValidationFailed, validate
from hsnet.errors import HSNetError
from hsnet.params import CropParams, ImportParams, Params, ValidateParams

CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")  # the sample's (FERG-DB's)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))


def _photos_with_faces(root, faceless=lambda emotion, n, split=None: False, per_class: int = 3):
    """The sample's layout (aia/aia_<emotion>/aia_<emotion>_<n>.png), 96x96 PNGs: the astronaut's
    face (skimage), each turned a little (no two files alike), in which MTCNN finds a face; where
    ``faceless(emotion, n)`` an evenly grey picture instead (a photo too dark or blown out to
    show a face: it decodes, so validate passes it; MTCNN finds nothing in it)."""
    from skimage import data as skimage_data

    face = Image.fromarray(skimage_data.astronaut()).crop((140, 20, 310, 220))
    i = 0
    for emotion in CLASSES:
        for n in range(1, per_class + 1):
            i += 1
            path = root / "aia" / f"aia_{emotion}" / f"aia_{emotion}_{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if faceless(emotion, n):
                Image.new("RGB", (96, 96), (90 + i, 90 + i, 90 + i)).save(path)
            else:
                face.rotate(i * 1.5).resize((96, 96)).save(path)
    return root


def _quick_params() -> Params:
    return Params.from_mapping({"datasets": {"sample": {
        "input_size": 80, "model": {"ktl": False},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0, "num_threads": 1}}}}, "sample")


def test_a_class_in_which_crop_finds_no_face_is_not_trained_without(tmp_path):
    """README: validate checks "every class in train" -- a model trained without a class can never
    answer it (tests/test_attack_session16d.py: "the check exists to stop exactly that") -- and
    crop "Images without a face are dropped and listed (--no-face drop)", the default for RaFD and
    KDEF. Here every 'surprise' photo decodes (validate passes, 'surprise' in train) but shows no
    face: crop drops all of them, and train then trains a 7-class model that has never seen
    'surprise' without a word (its check of the crops' classes passes ``every_class=False``);
    evaluate then averages over the six classes left. Crop or train must refuse it, naming the
    class, as validate would have."""
    root = _photos_with_faces(tmp_path / "raw", faceless=lambda emotion, n: emotion == "surprise")
    manifest = tmp_path / "manifest.csv"
    import_dataset("sample", root, manifest, ImportParams())
    summary = validate(manifest, root, "sample", tmp_path / "validation", progress=False)
    assert summary["success"], summary["failed"]  # the gate passed it

    from hsnet.train import train

    with pytest.raises(HSNetError, match="surprise"):
        report = crop(manifest, root, tmp_path / "crops", settings=CropParams(size=80), progress=False)
        assert len(report["no_face"]) == 3  # every surprise photo dropped (the premise)
        train(tmp_path / "crops", _quick_params(), tmp_path / "run", track=False, progress=False)


def test_a_test_split_crop_emptied_is_refused_before_training_not_after(tmp_path):
    """README: validate checks "every split non-empty", because a split without images can't be
    used: train refuses an empty train or val split of the crops before its first epoch ("the
    train split of ... is empty ...; check the crop report for dropped images"), and evaluate
    refuses an empty test split. When crop drops every test image (no face in them), validate has
    passed and train is not stopped: it trains the whole run (the paper's 500 epochs: hours on a
    GPU) and only evaluate, afterwards, says the test split is empty. The crops' test split is
    known before the first epoch; train must refuse it then, as it does for train and val."""
    root = tmp_path / "raw"
    _photos_with_faces(root)
    manifest = tmp_path / "manifest.csv"
    import_dataset("sample", root, manifest, ImportParams())
    for row in read_manifest(manifest):  # the test split's photos turn out faceless (too dark, say)
        if row["split"] == "test":
            Image.new("RGB", (96, 96), (40 + row["label"], 40, 40)).save(root / row["path"])
    summary = validate(manifest, root, "sample", tmp_path / "validation", progress=False)
    assert summary["success"] and summary["usable"]["test"] == 7, summary

    from hsnet.train import train

    report = crop(manifest, root, tmp_path / "crops", settings=CropParams(size=80), progress=False)
    assert len(report["no_face"]) == 7 and not any(r["split"] == "test" for r in
                                                   read_manifest(tmp_path / "crops" / "manifest.csv"))
    with pytest.raises(HSNetError, match=r"\btest split\b"):
        train(tmp_path / "crops", _quick_params(), tmp_path / "run", track=False, progress=False)


def test_a_photo_saved_again_losslessly_is_not_in_train_and_test(tmp_path):
    """README: validate checks "no identical image (sha256) in two splits" (leakage: the model is
    tested on a photo it was trained on). The file's sha256 is not the image's: a PNG saved again
    by another tool (another compression level, a text chunk) has other bytes and the same pixels.
    Validate decodes every image fully already; crop itself hashes pixels, not bytes, because "a
    file's bytes ... the encoder decides" (``pixels_sha256``). Here one test photo's re-saved copy
    sits in train under another name: validate passes it, and crop then writes two crops with
    one ``pixels_sha256``, one in train and one in test."""
    root = tmp_path / "raw"
    generate(root, per_class=1, size=48, seed=5)
    manifest = tmp_path / "manifest.csv"
    import_dataset("sample", root, manifest, ImportParams())
    rows = read_manifest(manifest)
    test_row = next(r for r in rows if r["split"] == "test")
    train_row = next(r for r in rows if r["split"] == "train" and r["label"] == test_row["label"])
    with Image.open(root / test_row["path"]) as img:  # the same photo, saved again by another program
        img.load()
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", "an image viewer")
        img.save(root / train_row["path"], pnginfo=info, compress_level=9)

    crop(manifest, root, tmp_path / "crops", settings=CropParams(detector="none", size=48), progress=False)
    splits_of: dict[str, set] = {}
    for r in read_manifest(tmp_path / "crops" / "manifest.csv"):
        splits_of.setdefault(r["pixels_sha256"], set()).add(r["split"])
    assert {"train", "test"} in splits_of.values()  # the premise: one picture trained on and tested on

    with pytest.raises(ValidationFailed, match="identical images in more than one split"):
        validate(manifest, root, "sample", tmp_path / "validation", ValidateParams(), progress=False)


def test_a_small_validation_split_validate_passes_does_not_stop_a_perfect_run_as_not_learning(tmp_path):
    """README: training stops "a validation accuracy at chance for 32 epochs in a row with the
    paper's patience" as a run that "can't end well", and keeps that verdict (a retry ends with it
    at once). hsnet/guards.py: chance is "what always answering the most frequent validation class
    scores", plus two standard errors. A small dataset that validate passes (every split
    non-empty, every class in train) can have a validation split of two images; then the limit
    is 0.5 + 2*sqrt(0.25/2) = 1.21, above any accuracy, so every run, one that gets every
    validation image right included, is stopped at epoch 32 as "not learning" and told to lower
    its lr. A run scoring 100% on validation is not at chance: with too few validation images to
    tell, the guard must not give that verdict."""
    from hsnet.guards import chance_window, check_epoch

    root = tmp_path / "raw"
    generate(root, per_class=1, size=48, seed=5)  # six characters: six photos per class
    keep = {"anger": 3, "disgust": 3}  # two classes with 3 photos (1 train, 1 val, 1 test), the rest 2 (train)
    for emotion in CLASSES:
        photos = sorted(root.glob(f"*/*_{emotion}/*.png"))
        for extra in photos[keep.get(emotion, 2):]:
            extra.unlink()
    manifest = tmp_path / "manifest.csv"
    import_dataset("sample", root, manifest, ImportParams())
    summary = validate(manifest, root, "sample", tmp_path / "validation", progress=False)
    assert summary["success"], summary["failed"]
    val_labels = [r["label"] for r in read_manifest(manifest) if r["split"] == "val"]
    assert len(val_labels) == 2, summary["splits"]

    window = chance_window(Params().train.scheduler.patience)  # what train passes at the paper's patience
    history = []
    for epoch in range(1, window + 1):  # the training loss falls, every validation image is right
        row = {"epoch": epoch, "loss": 1.9 / epoch, "accuracy": 1 - 0.5 / epoch, "val_accuracy": 1.0, "lr": 0.01}
        check_epoch(row, history, len(CLASSES), val_labels=val_labels, chance_epochs=window)
        history.append(row)
