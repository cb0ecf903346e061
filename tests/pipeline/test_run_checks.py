"""The first step's checks of the parameters typed in the Kubeflow UI (components.convert.check_run),
each against what the step that would use the value accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsnet.errors import HSNetError

ROOT = Path(__file__).resolve().parents[2]

GOOD = dict(crop_device="cpu", mlflow_tracking_uri="http://mlflow:5000", checkpoint_uri="s3://b/ck",
            promote=True, deploy=True, canary_percent=10)


def test_the_defaults_and_good_values_pass():
    from components.convert import check_run

    check_run("rafdb", **GOOD)
    check_run("rafdb", **{**GOOD, "checkpoint_uri": "", "crop_device": "cuda", "canary_percent": 100})
    check_run("rafdb", **{**GOOD, "deploy": False, "canary_percent": 500})  # no rollout: the share is unused


@pytest.mark.parametrize("change, named", [
    ({"canary_percent": 150}, "between 0 and 100, got 150"),  # KServe's canaryTrafficPercent is a percentage
    ({"canary_percent": -1}, "between 0 and 100, got -1"),
    ({"promote": False}, "deploy is on and promote off"),
    ({"crop_device": "cuda:0"}, "crop_device 'cuda:0'"),  # the GPU branch is taken for 'cuda' only
    ({"checkpoint_uri": "s3://"}, "has no bucket"),
])
def test_a_value_no_step_can_use_is_named(change, named):
    from components.convert import check_run

    with pytest.raises(HSNetError, match=named):
        check_run("rafdb", **{**GOOD, **change})


def test_several_problems_are_named_together(monkeypatch):
    from components.convert import check_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(HSNetError) as refused:
        check_run(" ", **{**GOOD, "mlflow_tracking_uri": "", "crop_device": "gpu"})
    assert all(s in str(refused.value) for s in ("dataset is empty", "crop_device 'gpu'", "mlflow_tracking_uri is empty"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-the-pod-env:5000")  # a URI the pod has: fine
    check_run("rafdb", **{**GOOD, "mlflow_tracking_uri": ""})


def test_set_model_refuses_a_share_over_100():
    """hsnet promote --deploy --canary-percent 150 was taken as all the traffic, while the message
    for -5 said 0..100."""
    from hsnet.deploy import load_template, set_model

    with pytest.raises(HSNetError, match="between 0 and 100"):
        set_model(load_template(), "models:/m/2", 150)
    assert "canaryTrafficPercent" not in set_model(load_template(), "models:/m/2", 100)["spec"]["predictor"]
    assert set_model(load_template(), "models:/m/2", 0)["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_a_training_refuses_stem_weights_changed_since_source_version(tmp_path):
    """components.convert.check_stem_version: a train task whose KTL stem weights are no longer the
    version source-version read (its cache key) is refused, naming both versions; unchanged weights
    and KTL-off trainings ("" version) pass. Expectation by hand: the version names the file's
    sha256, so rewriting the file with other bytes changes it."""
    import hashlib

    import yaml

    from components.convert import check_stem_version, stem_version

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dataset = next(iter(params["datasets"]))
    weights = tmp_path / "stem.pt"
    params["datasets"][dataset].setdefault("model", {}).update(ktl=True, stem_weights=str(weights))
    weights.write_bytes(b"old weights")
    read = stem_version(params, dataset)
    assert read == f"{weights} sha256:{hashlib.sha256(b'old weights').hexdigest()}"
    check_stem_version(params, dataset, {}, read)  # unchanged: trains
    check_stem_version(params, dataset, {"ktl": False}, "")  # KTL off: no weights read, nothing checked
    weights.write_bytes(b"new weights")
    with pytest.raises(HSNetError, match="changed since this run started") as caught:
        check_stem_version(params, dataset, {}, read)
    assert hashlib.sha256(b"new weights").hexdigest() in str(caught.value)
    assert "Start a new run" in str(caught.value)


def test_a_component_step_ends_through_its_finally_blocks_on_sigterm(tmp_path):
    """components.convert.start_step: a Kubeflow pod is stopped with SIGTERM (preemption, a deleted
    run) and killed after its grace period; Python's default SIGTERM ends the process at once, with
    no ``finally`` block run (temporary files left, MLflow runs left RUNNING). After start_step, as
    with the hsnet CLI (hsnet.interrupt), SIGTERM raises in the step: its ``finally`` runs, and the
    process exits non-zero (the pod fails and is retried)."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "finally-ran"
    code = ("import sys, time\nfrom components.convert import start_step\nstart_step()\n"
            "print('ready', flush=True)\ntry:\n    time.sleep(60)\n"
            f"finally:\n    open({str(marker)!r}, 'w').close()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert marker.exists(), "SIGTERM ended the step without running its finally block"
    assert proc.returncode != 0
