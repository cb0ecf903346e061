from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture
def variant(trained, tmp_path):
    """Another model (perturbed weights, so another file) with a metrics.json of given values."""
    counter = {"n": 0}

    def make(accuracy_delta: float = 0.0, test_data_version: str | None = None):
        counter["n"] += 1
        ckpt = torch.load(trained["checkpoint"], weights_only=True)
        gen = torch.Generator().manual_seed(counter["n"])
        for key, value in ckpt["model"].items():
            if value.is_floating_point() and "running" not in key:
                value.add_(torch.randn(value.shape, generator=gen) * 1e-4)
        path = tmp_path / f"variant{counter['n']}.pt"
        torch.save(ckpt, path)
        metrics = json.loads(trained["metrics"].read_text())
        metrics["accuracy"] = min(1.0, max(0.0, metrics["accuracy"] + accuracy_delta))
        if test_data_version:
            metrics["data_version"] = test_data_version
        mpath = tmp_path / f"variant{counter['n']}-metrics.json"
        mpath.write_text(json.dumps(metrics))
        return path, mpath, metrics

    return make
