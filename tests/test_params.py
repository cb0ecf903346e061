"""params.yaml, typed: the paper's choices as defaults, per-dataset entries on top, every key and
value checked against the schema with its dotted name in the error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hsnet.cli import main
from hsnet.params import CropParams, ModelParams, Params, ParamsError, TrainParams, parse_set

ROOT = Path(__file__).resolve().parents[1]


def test_the_paper_recipe_is_the_default():
    """Sect. 4.2: Adam, lr 0.01, betas (0.9, 0.999), 500 epochs, batch 32, ReduceLROnPlateau on the
    validation loss with patience 20, random horizontal flip and ±5° rotation; HSNet = DIB+FGAL+KTL."""
    t = TrainParams()
    assert (t.optimizer, t.lr, t.betas, t.epochs, t.batch_size) == ("adam", 0.01, (0.9, 0.999), 500, 32)
    assert (t.scheduler.name, t.scheduler.monitor, t.scheduler.patience) == ("plateau", "val_loss", 20)
    assert (t.augment.hflip, t.augment.rotate_degrees) == (True, 5.0)
    assert ModelParams() == ModelParams(dib=True, fgal=True, ktl=True, stem_weights="vggface2")
    assert Params().crop.size == Params().input_size == 224  # crops are stored at the training size


@pytest.mark.parametrize("dataset, size, crop_size, detector", [
    ("rafd", 100, 100, "mtcnn"), ("kdef", 256, 256, "mtcnn"), ("ferg", 256, 256, "none"),
    ("rafdb", 224, 100, "none")])  # RAF-DB's aligned faces are 100 px: stored so, upscaled to 224 when loaded
def test_the_committed_params_carry_the_papers_input_sizes(dataset, size, crop_size, detector):
    p = Params.resolve(ROOT / "params.yaml", dataset)
    assert (p.input_size, p.crop.size, p.crop.detector) == (size, crop_size, detector)
    assert p.train.lr == 0.01 and p.train.epochs == 500 and p.model.ktl is True


def test_precedence_and_unknown_datasets(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"train": {"lr": 0.002, "seed": 4}},
                                    "datasets": {"x": {"train": {"lr": 0.003}}}}))
    p = Params.resolve(path, "x")
    assert (p.train.lr, p.train.seed, p.train.batch_size) == (0.003, 4, 32)
    assert Params.resolve(path, "x", {"train": {"lr": 0.5}}).train.lr == 0.5
    with pytest.raises(ParamsError, match=r"dataset 'y' has no entry under 'datasets' in .*params.yaml.*entries: x"):
        Params.resolve(path, "y")


@pytest.mark.parametrize("entry, message", [
    ({"model": {"fgal": "false"}}, r"datasets\.x\.model\.fgal: 'false' is not true or false"),
    ({"train": {"max_epoch": 1}}, r"datasets\.x\.train\.max_epoch: unknown key; allowed: optimizer, lr, .*max_epochs"),
    ({"train": {"epochs": "many"}}, r"datasets\.x\.train\.epochs: 'many' is not an integer"),
    ({"train": {"epochs": 12.5}}, r"datasets\.x\.train\.epochs: 12\.5 is not an integer"),
    ({"train": {"lr": 0}}, r"datasets\.x\.train\.lr: 0\.0 is out of range; it must be > 0"),
    ({"train": {"batch_size": 1}}, r"datasets\.x\.train\.batch_size: 1 is out of range; it must be >= 2"),
    ({"train": {"betas": [0.9]}}, r"datasets\.x\.train\.betas: \[0\.9\] is not a list of 2 numbers"),
    # Adam's own bounds (torch raised a bare ValueError mid-run): each beta in [0, 1)
    ({"train": {"betas": [1.5, 0.999]}}, r"datasets\.x\.train\.betas\[0\]: 1\.5 is out of range; it must be >= 0 and < 1"),
    ({"train": {"betas": [0.9, 1]}}, r"datasets\.x\.train\.betas\[1\]: 1\.0 is out of range; it must be >= 0 and < 1"),
    ({"train": {"betas": [-0.1, 0.9]}}, r"datasets\.x\.train\.betas\[0\]: -0\.1 is out of range"),
    # NaN compares false with every bound: it passed every range (crop --min-prob nan: no face found anywhere)
    ({"crop": {"min_prob": float("nan")}}, r"datasets\.x\.crop\.min_prob: nan is not a number"),
    ({"train": {"lr": float("inf")}}, r"datasets\.x\.train\.lr: inf is not a finite number"),
    ({"train": {"scheduler": {"factor": 1.0}}}, r"scheduler\.factor: 1\.0 is out of range; it must be > 0 and < 1"),
    ({"crop": {"detector": "haar"}}, r"datasets\.x\.crop\.detector: 'haar' is not one of mtcnn, none"),
    ({"train": {"compile": "fastest"}}, r"train\.compile: 'fastest' is not true or false or null or one of auto"),
    ({"train": 5}, r"datasets\.x\.train: expected a mapping of optimizer, lr"),
])
def test_a_wrong_key_or_value_is_refused_by_its_dotted_name(tmp_path, entry, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"x": entry}}))
    with pytest.raises(ParamsError, match=message):
        Params.resolve(path, "x")


def test_every_entry_and_the_top_level_are_checked_not_only_the_dataset_asked_for(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"x": {}, "y": {"model": {"dib": 1}}}}))
    with pytest.raises(ParamsError, match=r"datasets\.y\.model\.dib: 1 is not true or false"):
        Params.resolve(path, "x")
    path.write_text(yaml.safe_dump({"dataset": {"x": {}}}))
    with pytest.raises(ParamsError, match="unknown top-level key.*dataset; allowed: datasets_to_run, defaults"):
        Params.resolve(path, "x")
    path.write_text(yaml.safe_dump({"datasets_to_run": ["z"], "datasets": {"x": {}}}))
    with pytest.raises(ParamsError, match="datasets_to_run must list names under 'datasets'"):
        Params.resolve(path, "x")


def test_set_overrides_are_yaml_values_checked_like_the_file():
    assert parse_set(["model.dib=false", "train.lr=2e-3", "train.augment.rotate_degrees=0"]) == \
        {"model": {"dib": False}, "train": {"lr": "2e-3", "augment": {"rotate_degrees": 0}}}
    p = Params.resolve(None, "x", parse_set(["model.dib=false", "train.lr=2e-3", "train.augment.rotate_degrees=0"]))
    assert (p.model.dib, p.train.lr, p.train.augment.rotate_degrees) == (False, 0.002, 0.0)
    with pytest.raises(ParamsError, match="--set 'model.dib': expected KEY=VALUE"):
        parse_set(["model.dib"])
    with pytest.raises(ParamsError, match=r"--set: train\.max_epoch: unknown key"):
        Params.resolve(None, "x", parse_set(["train.max_epoch=1"]))


def test_the_cli_refuses_a_bad_set_before_any_work(tmp_path, capsys):
    """`hsnet train --set train.max_epoch=1` used to train all 12 epochs; now exit 2 naming the key."""
    code = main(["train", "--data", str(tmp_path / "none"), "--dataset", "sample", "--params",
                 str(ROOT / "params.yaml"), "--out", str(tmp_path / "run"), "--set", "train.max_epoch=1"])
    err = capsys.readouterr().err
    assert code == 2 and "train.max_epoch: unknown key" in err and "max_epochs" in err
    assert not (tmp_path / "run").exists()


def test_crop_size_follows_the_input_size_unless_given():
    assert Params.resolve(None, "x", {"input_size": 100}).crop.size == 100
    assert Params.resolve(None, "x", {"input_size": 100, "crop": {"size": 120}}).crop.size == 120
    assert CropParams(size=80).key() != CropParams(size=81).key()


def test_to_dict_round_trips_through_yaml():
    p = Params.resolve(ROOT / "params.yaml", "sample")
    data = p.to_dict()
    assert data["import"] == {"split_by": "class", "seed": 0, "rafdb_images": "aligned"}
    again = Params.from_mapping({"datasets": {"sample": yaml.safe_load(yaml.safe_dump(
        {k: v for k, v in data.items() if k != "dataset"}))}}, "sample")
    assert again == p


def test_to_file_hands_the_resolved_settings_to_another_process(tmp_path):
    """A params file written from resolved settings (hsnet.concurrent's NAME/params.yaml) resolves,
    read back from disk with no other file, to the same settings: the overrides given, RAF-DB's
    crop size 100 from the repository's params.yaml, the paper's lr 0.01 and batch 32."""
    p = Params.resolve(ROOT / "params.yaml", "rafdb", {"model": {"dib": False}, "train": {"seed": 2}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(p.to_file()))
    q = Params.resolve(path, "rafdb")
    assert q == p
    assert (q.model.dib, q.model.fgal, q.train.seed, q.crop.size, q.train.lr, q.train.batch_size) == \
        (False, True, 2, 100, 0.01, 32)


def test_a_data_step_gets_only_the_keys_it_reads():
    """Kubeflow's import, validate and crop take params cut to their own keys (a parameter is part
    of the cache key): the same settings for the step, and nothing else of the file."""
    from hsnet.params import Params, for_step

    data = {"datasets_to_run": ["a", "b"],
            "defaults": {"crop": {"margin": 4}, "train": {"seed": 7}, "validate": {"min_size": 40}},
            "datasets": {"a": {"input_size": 96, "crop": {"detector": "none"}, "import": {"seed": 3},
                               "train": {"lr": 0.5}, "model": {"ktl": False}},
                         "b": {"input_size": 64, "train": {"lr": 0.1}}}}
    assert for_step(data, "a", "crop") == {"datasets_to_run": ["a"], "defaults": {"crop": {"margin": 4}},
                                           "datasets": {"a": {"input_size": 96, "crop": {"detector": "none"}}}}
    assert for_step(data, "a", "import") == {"datasets_to_run": ["a"], "datasets": {"a": {"import": {"seed": 3}}}}
    assert for_step(data, "a", "validate") == {"datasets_to_run": ["a"], "defaults": {"validate": {"min_size": 40}},
                                               "datasets": {"a": {}}}
    crop = Params.from_mapping(for_step(data, "a", "crop"), "a").crop
    assert (crop.detector, crop.size, crop.margin) == ("none", 96, 4)  # size: a's input_size
    assert Params.from_mapping(for_step(data, "a", "import"), "a").import_.seed == 3
    assert Params.from_mapping(for_step(data, "a", "validate"), "a").validate.min_size == 40
    # another dataset's or another section's edit leaves every data step's slice as it was
    edited = {**data, "defaults": {**data["defaults"], "train": {"seed": 8}},
              "datasets": {**data["datasets"], "a": {**data["datasets"]["a"], "train": {"lr": 0.25}},
                           "b": {"input_size": 32}}}
    for step in ("import", "validate", "crop"):
        assert for_step(edited, "a", step) == for_step(data, "a", step)


def test_a_float32_setting_is_the_number_it_prints():
    """A notebook sweep's ``np.float32(1e-4)`` (np.logspace(..., dtype=np.float32)) is the learning
    rate 1e-4, as numpy prints it; its float64 widening, 9.999999747378752e-05, would be recorded in
    params, MLflow and the DVC experiment and read as a different setting from 0.0001."""
    import numpy as np

    from hsnet.params import Params

    p = Params.resolve(None, "sample", {"train": {"lr": np.float32(1e-4), "betas": [np.float16(0.9), np.float32(0.999)]}})
    assert p.train.lr == 0.0001 and p.train.betas == (0.9, 0.999)
    assert Params.resolve(None, "sample", {"train": {"lr": np.float64(1e-4 + 1e-19)}}).train.lr == 1e-4 + 1e-19
