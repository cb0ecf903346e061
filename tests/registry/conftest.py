from __future__ import annotations

import itertools
import shutil

import pytest
import torch


@pytest.fixture
def gate_data(trained, tmp_path):
    """The tiny sample's crops with every class-0 image in the test split, so that class 0 is most
    of the test images: a model that always answers class 0 scores far more than one that always
    answers class 1 (``share``): figures far apart, known without training."""
    from hsnet.data.manifest import read_manifest, write_manifest

    out = tmp_path / "gate-crops"
    shutil.copytree(trained["data"], out)
    rows = read_manifest(out / "manifest.csv")
    for r in rows:
        if r["label"] == 0:
            r["split"] = "test"
    write_manifest(out / "manifest.csv", rows)
    return out


@pytest.fixture
def share(gate_data):
    """``share(k)``: the accuracy of a model that always answers class ``k`` on ``gate_data``,
    counted from its manifest."""
    from hsnet.data.manifest import read_manifest

    test = [r for r in read_manifest(gate_data / "manifest.csv") if r["split"] == "test"]
    return lambda k: sum(r["label"] == k for r in test) / len(test)


@pytest.fixture
def evaluated(trained, gate_data, tmp_path):
    """A checkpoint and its real ``hsnet evaluate`` (on ``gate_data`` unless ``data`` is given),
    tracked in the current store (the MLflow server or the local sqlite one): what ``register`` needs.

    ``evaluated(k)``: the trained weights with every classifier's weights zeroed and its bias set
    to answer class ``k`` whatever the image; the other weights are perturbed by 1e-4 (seeded per
    call), so every call gives another file with the same figures.
    ``evaluated("trained")``: the trained checkpoint itself.
    """
    from hsnet.evaluate import evaluate

    counter = itertools.count(1)

    def make(predicts, data=None):
        n = next(counter)
        out = tmp_path / f"eval{n}"
        data = data or gate_data
        if predicts == "trained":
            return trained["checkpoint"], out / "metrics.json", evaluate(trained["checkpoint"], data, out,
                                                                         progress=False)
        ckpt = torch.load(trained["checkpoint"], weights_only=True)
        gen = torch.Generator().manual_seed(n)
        for key, value in ckpt["model"].items():
            if not value.is_floating_point() or "running" in key:
                continue
            if "classifier.weight" in key:
                value.zero_()
            elif "classifier.bias" in key:
                value.zero_()
                value[predicts] = 10.0
            else:
                value.add_(torch.randn(value.shape, generator=gen) * 1e-4)
        path = tmp_path / f"class{predicts}-{n}.pt"
        torch.save(ckpt, path)
        return path, out / "metrics.json", evaluate(path, data, out, progress=False)

    return make


@pytest.fixture
def other_test_data(gate_data, tmp_path):
    """``gate_data`` with one test image (not of class 0) fewer: another test data version."""
    from hsnet.data.manifest import read_manifest, write_manifest

    other = tmp_path / "other-crops"
    shutil.copytree(gate_data, other)
    rows = read_manifest(other / "manifest.csv")
    drop = max(i for i, r in enumerate(rows) if r["split"] == "test" and r["label"] != 0)
    write_manifest(other / "manifest.csv", rows[:drop] + rows[drop + 1:])
    return other
