from __future__ import annotations

import pytest

from hsnet.data.crop import CropSettings, crop
from hsnet.data.datasets import import_dataset
from hsnet.data.sample import generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A few dozen sample images per split, cropped (resized) to 80x80: the trainer's input."""
    base = tmp_path_factory.mktemp("tiny")
    generate(base / "raw", per_class=4, size=96, seed=5)
    import_dataset("sample", base / "raw", base / "manifest.csv")
    crop(base / "manifest.csv", base / "raw", base / "crops", settings=CropSettings(detector="none", size=80),
         progress=False)
    return base / "crops"


@pytest.fixture
def tiny_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("""
datasets:
  sample:
    input_size: 80
    model: {ktl: false}
    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3, scheduler: {patience: 1}}
""")
    return path


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts go under ./mlflow/artifacts
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    return uri
