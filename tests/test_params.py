"""params.yaml: the paper's choices as defaults, per-dataset entries on top, and the files the
Kubeflow components hand to the verbs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from hsnet.errors import HSNetError
from hsnet.params import PAPER_DEFAULTS, params_file, parse_set, resolve, settings

ROOT = Path(__file__).resolve().parents[1]


def test_the_paper_recipe_is_the_default():
    t = PAPER_DEFAULTS["train"]
    assert (t["optimizer"], t["lr"], t["betas"], t["epochs"], t["batch_size"]) == ("adam", 0.01, [0.9, 0.999], 500, 32)
    assert (t["scheduler"]["monitor"], t["scheduler"]["patience"]) == ("val_loss", 20)
    assert t["augment"] == {"hflip": True, "rotate_degrees": 5.0}
    assert PAPER_DEFAULTS["model"] == {"dib": True, "fgal": True, "ktl": True, "stem_weights": "vggface2"}


@pytest.mark.parametrize("dataset, size", [("rafd", 100), ("kdef", 256), ("ferg", 256), ("rafdb", 224)])
def test_the_committed_params_carry_the_papers_input_sizes(dataset, size):
    cfg = resolve(ROOT / "params.yaml", dataset)
    assert cfg["input_size"] == size and cfg["crop"]["size"] == size
    assert cfg["train"]["lr"] == 0.01 and cfg["train"]["epochs"] == 500 and cfg["model"]["ktl"] is True


def test_precedence_and_unknown_datasets(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"train": {"lr": 0.002, "seed": 4}},
                                    "datasets": {"x": {"train": {"lr": 0.003}}}}))
    cfg = resolve(path, "x")
    assert (cfg["train"]["lr"], cfg["train"]["seed"], cfg["train"]["batch_size"]) == (0.003, 4, 32)
    assert settings(path, "x", "train", {"lr": 0.5, "seed": None})["lr"] == 0.5
    assert settings(path, "x", "train", {"seed": None})["seed"] == 4
    with pytest.raises(HSNetError, match=r"dataset 'y' has no entry under 'datasets' in .*params.yaml.*entries: x"):
        resolve(path, "y")


def test_set_overrides_are_yaml_values():
    assert parse_set(["model.dib=false", "train.lr=2e-3", "train.augment.rotate_degrees=0"]) == \
        {"model": {"dib": False}, "train": {"lr": 0.002, "augment": {"rotate_degrees": 0}}}
    with pytest.raises(HSNetError, match="--set 'model.dib': expected KEY=VALUE"):
        parse_set(["model.dib"])


def test_params_file_restores_ints_and_is_deleted_afterwards():
    """Kubeflow's parameter transport turns ints into floats: 500.0 epochs must be 500 again."""
    sent = {"datasets": {"sample": {"input_size": 80.0, "train": {"epochs": 12.0, "lr": 0.001, "betas": [0.9, 1.0]}}}}
    with params_file(sent) as path:
        got = yaml.safe_load(Path(path).read_text())
        cfg = resolve(path, "sample")
    train = got["datasets"]["sample"]["train"]
    assert type(train["epochs"]) is int and train["lr"] == 0.001 and train["betas"] == [0.9, 1]
    assert cfg["input_size"] == 80 and type(cfg["input_size"]) is int
    assert not os.path.exists(path)
    with pytest.raises(HSNetError, match="'datasets' section"):
        with params_file({"train": {}}):
            pass
