"""hsnet evaluate checks the data against the checkpoint (issue 13.8) and binds its figures to the
checkpoint file and the test data (issue 13.3)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from hsnet.cli import main
from hsnet.data.datasets import KDEF_CODES, RAFD_CLASSES
from hsnet.data.manifest import read_manifest, write_manifest
from hsnet.errors import HSNetError
from hsnet.evaluate import evaluate


def _relabelled(data, out, names, extra_class_rows: int = 0):
    """A copy of the crops whose manifest names the labels ``names`` (another dataset's classes);
    with ``extra_class_rows``, that many test rows get the label after the last (an 8th class)."""
    shutil.copytree(data, out)
    rows = read_manifest(out / "manifest.csv")
    test = [r for r in rows if r["split"] == "test"]
    for r in test[:extra_class_rows]:
        r["label"] = len(names) - 1
    for r in rows:
        r["label_name"] = names[r["label"]]
    write_manifest(out / "manifest.csv", rows)
    return out


def test_a_checkpoint_on_another_datasets_crops_is_refused(trained, tmp_path, capsys):
    ferg = ", ".join(f"{i} {n}" for i, n in enumerate(
        ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]))
    # KDEF crops: 7 classes too, other names -> today silently wrong metrics
    kdef = _relabelled(trained["data"], tmp_path / "kdef", list(KDEF_CODES.values()))
    with pytest.raises(HSNetError) as err:
        evaluate(trained["checkpoint"], kdef, tmp_path / "eval-kdef", track=False, progress=False)
    msg = str(err.value)
    assert f"{kdef / 'manifest.csv'} does not hold the classes checkpoint {trained['checkpoint']}" in msg
    assert "the data has 7 classes (0 afraid, 1 angry, 2 disgusted" in msg and "as kdef has" in msg
    assert f"where these 7 are expected: {ferg}." in msg
    assert not (tmp_path / "eval-kdef").exists()  # nothing written

    # RaFD crops: 8 classes -> today an IndexError
    rafd = _relabelled(trained["data"], tmp_path / "rafd", list(RAFD_CLASSES), extra_class_rows=3)
    assert main(["evaluate", "--checkpoint", str(trained["checkpoint"]), "--data", str(rafd),
                 "--out", str(tmp_path / "eval-rafd"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "the data has 8 classes (0 angry, 1 contemptuous" in err and "7 surprised), as rafd has" in err
    assert f"where these 7 are expected: {ferg}." in err and "Traceback" not in err


def test_one_label_with_two_names_is_refused(trained, tmp_path):
    data = tmp_path / "mixed"
    shutil.copytree(trained["data"], data)
    rows = read_manifest(data / "manifest.csv")
    rows[0]["label_name"] = "happy"
    write_manifest(data / "manifest.csv", rows)
    with pytest.raises(HSNetError, match=rf"label {rows[0]['label']} is named .*'happy'"):
        evaluate(trained["checkpoint"], data, tmp_path / "eval", track=False, progress=False)


def test_the_figures_are_bound_to_the_checkpoint_and_the_test_data(trained, local_mlflow, tmp_path):
    import mlflow

    from hsnet.tracking import data_version

    sha = hashlib.sha256(trained["checkpoint"].read_bytes()).hexdigest()
    offline = json.loads(trained["metrics"].read_text())  # evaluated with track=False
    assert offline["checkpoint_sha256"] == sha and offline["mlflow_run_id"] is None
    assert offline["data_version"] == data_version(trained["data"] / "manifest.csv")

    m = evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m)) and saved["checkpoint_sha256"] == sha
    run = mlflow.MlflowClient(local_mlflow).get_run(saved["mlflow_run_id"])
    assert run.data.tags["step"] == "evaluate"
    assert run.data.params["checkpoint_sha256"] == sha and run.data.tags["checkpoint_sha256"] == sha
    assert run.data.params["test_data_version"] == saved["data_version"] and run.data.params["split"] == "test"
    assert run.data.metrics["test_accuracy"] == saved["accuracy"]
