"""Session 9 attack on the day's fixes (37eb89a..): reproductions that fail on the current code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


# --- DVC: a stage that reads params.yaml must re-run when the layer it reads changes ---------------

def test_every_dvc_stage_that_reads_params_tracks_the_defaults_layer():
    """params.yaml's ``defaults`` is merged under every ``datasets.<name>`` entry (Params.from_mapping),
    so ``defaults: {crop: {margin: 8}}`` changes what ``hsnet crop --params params.yaml`` cuts. Only
    train lists ``defaults`` in dvc.yaml: ``dvc status`` reports crop, import and validate as up to
    date after such an edit (checked by hand on a clone), so ``dvc repro`` keeps crops cut with the
    old margin while train re-runs on them (and since 37a8652 records the old margin with a
    warning). The Kubeflow fix of today (76bc660) keys every step on ``defaults`` too: DVC and
    Kubeflow now disagree on what an edit of ``defaults`` re-runs."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        do = stage.get("do", stage)
        if "--params params.yaml" not in " ".join(str(do.get("cmd", "")).split()):
            continue
        keys = [str(k) for k in do.get("params", [])]
        if not any(k == "defaults" or k.startswith("defaults.") for k in keys):
            missing.append(name)
    assert not missing, f"stages that read params.yaml but ignore a change to its defaults: {missing}"


# --- an MLflow model URI that needs no tracking store --------------------------------------------

@pytest.mark.slow
def test_predict_from_an_mlflow_model_folder_needs_no_tracking_store(trained, local_mlflow, tmp_path):
    """6b0789f made load_classifier call tracking.connect(create=False) for every URI with '://',
    so `hsnet predict --model file:///path/to/model` (or s3://bucket/model: an MLflow model that is
    not in a registry) outside the project folder is refused with "MLFLOW_TRACKING_URI is not set
    and there is no local store", although MLflow loads such a model without any tracking server
    (fetch_model returns None for them). Before the fix it loaded (leaving a stray store)."""
    import mlflow
    from PIL import Image
    from skimage import data

    from hsnet.evaluate import evaluate
    from hsnet.registry import register

    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    name = "hsnet-sample-att9"
    register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name=name)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/1",
                                                      dst_path=str(tmp_path / "model")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(data.astronaut()).save(elsewhere / "astronaut.jpg", quality=95)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    hsnet = str(Path(sys.executable).with_name("hsnet"))
    done = subprocess.run([hsnet, "predict", "astronaut.jpg", "--model", folder.resolve().as_uri(), "--out", "o.jsonl"],
                          capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, cwd=elsewhere,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]


# --- hsnet reproduce report in a fresh clone (the README's command) --------------------------------

@pytest.mark.slow
def test_report_in_a_fresh_clone_keeps_the_committed_results(tmp_path):
    """da51dea: "in a fresh clone (git doesn't fetch DVC's refs/exps) the README's 'hsnet reproduce
    report --out docs/results.md' replaced the committed results"; the fix refuses only when
    collect() finds no row at all, and its test calls report(rows=[]). In a real clone collect()
    is never empty: `dvc exp show -A` lists every commit, whose git-tracked
    runs/sample/eval/metrics.json are rows (198 here). The report then still replaces the committed
    Table 6 (24 sample ablation runs) by an all-missing one, exit 0."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    committed = (clone / "docs" / "results.md").read_text()
    assert "| ✓ | ✗ | ✗ | 3 |" in committed  # the committed ablation rows (n = 3 seeds)
    done = subprocess.run([sys.executable, "-m", "hsnet", "reproduce", "report", "--out", "docs/results.md"],
                          cwd=clone, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert (clone / "docs" / "results.md").read_text() == committed, \
        f"exit {done.returncode}: the committed results were replaced ({done.stdout.splitlines()[:1]})"


# --- build.sh --release: a release tag on other code ------------------------------------------------

def test_a_release_tag_is_not_rebuilt_from_other_committed_code(tmp_path):
    """08496ac refuses `build.sh --release` only when the checkout differs from its commit. The
    hazard it names (Kubeflow keys cached steps on the image's name: a release tag built again from
    other code serves results cached from the old) is just as real from a clean later commit that
    kept hsnet.__version__: that is this repository's own history (0.1.0 through every commit), and
    such a build passes the check and tags the new code hsnet:0.1.0 again."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    with open(clone / "hsnet" / "io.py", "a") as f:
        f.write("# code committed after the release, same __version__\n")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "later code"], cwd=clone,
                   check=True)
    done = subprocess.run(["bash", "tests/container/build.sh", "--release"], cwd=clone, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": "false"})
    assert "__version__" in done.stderr, f"not refused (exit {done.returncode}): {done.stderr.strip()[-300:]}"
