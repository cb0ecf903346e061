"""Session 25: session 24's "left, found and not changed" items, each a failing test first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from hsnet.io import TMP_SUFFIX
from hsnet.predict import Classifier, predict

ROOT = Path(__file__).resolve().parents[1]


class _Constant(torch.nn.Module):
    def forward(self, x):  # (N, 3, S, S) -> (N, 3) logits
        return torch.zeros(x.shape[0], 3)


def _killed_write(path: Path) -> Path:
    """An atomic write of ``path`` killed in the middle (os._exit: no cleanup runs); its
    temporary, made two hours old, is returned."""
    code = ("import os, sys\n"
            "from hsnet.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os._exit(9)\n")
    before = set(path.parent.iterdir()) if path.parent.is_dir() else set()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code, str(path)], env=env, timeout=60).returncode == 9
    left = [p for p in set(path.parent.iterdir()) - before if p.name.endswith(TMP_SUFFIX)]
    assert len(left) == 1, left
    old = time.time() - 7200
    os.utime(left[0], (old, old))
    return left[0]


def test_predict_removes_a_killed_annotated_copys_temporary_of_a_long_name(tmp_path):
    """predict cleans the annotate folder of killed writes' temporaries ('*.annotated.jpg'). A photo
    whose name is 230 bytes has a legal 244-byte annotated copy, but atomic_path cuts its
    temporary's name to 241 bytes, losing the '.annotated.jpg' ending, so the cleanup never found
    it: an hour-old half-written copy stayed for ever (session 24's note)."""
    photos, ann = tmp_path / "photos", tmp_path / "ann"
    photos.mkdir()
    name = "p" * 226 + ".jpg"  # 230 bytes
    Image.new("RGB", (64, 48), (120, 100, 90)).save(photos / name)
    target = ann / (name + ".annotated.jpg")
    assert len(target.name) == 244
    ann.mkdir()
    stale = _killed_write(target)
    clf = Classifier(_Constant(), ["anger", "joy", "neutral"], 64, device="cpu")
    predict([photos], "unused", annotate_dir=ann, classifier=clf, progress=False, workers=1)
    assert not stale.exists(), f"the killed write's temporary {stale.name} was left in {ann}"


def test_a_tracking_uri_with_a_capital_scheme_or_a_trailing_blank_records_in_the_store_it_names(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI as typed in a form or a shell: 'SQLITE:///...' (RFC 3986 3.1: a scheme is
    read in any case) and a trailing blank (pasted). Before, MLflow failed on the first with
    SQLAlchemy's "Can't load plugin: sqlalchemy.dialects:SQLITE", and the second made a second
    store, 'mlflow.db ' (a blank at the end of its file name), beside the one named."""
    from hsnet import tracking

    db = tmp_path / "mlflow.db"
    for given in (f"SQLITE:///{db}", f"sqlite:///{db} ", f"\tSqLite:///{db}\n"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", given)
        uri = tracking.connect()
        assert uri == f"sqlite:///{db}", given
        import os as _os
        assert _os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{db}", "child processes would see another URI"
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["mlflow.db"], \
            sorted(p.name for p in tmp_path.iterdir())
        assert tracking._sqlite_file(uri) == str(db)


def test_unlock_refused_by_the_registry_is_said_not_taken_for_a_lock_that_was_not_held(monkeypatch):
    """hsnet promote --unlock: "Remove a stale promotion lock (left by a killed promotion); True if
    there was one". Behind an auth proxy that refuses the deletion (HTTP 403, a user without write
    rights), unlock answered False and the CLI printed "was not held": the user believes there is
    no lock, while the stale lock is still there and every promotion is refused by it. Expected:
    an error that names the registry's refusal."""
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest

    from hsnet.errors import HSNetError
    from hsnet.registry import unlock

    class Proxy(BaseHTTPRequestHandler):
        def _answer(self):
            if self.path.rstrip("/").endswith("/health"):
                body, code = b"OK", 200
            else:
                body, code = _json.dumps({"error_code": "PERMISSION_DENIED",
                                          "message": "user reader may not write"}).encode(), 403
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = do_PATCH = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(HSNetError, match="(?i)permission|refus|403|may not"):
            unlock("hsnet-sample")
    finally:
        server.shutdown()


def test_a_finished_training_rerun_after_a_speed_only_change_keeps_its_curves_in_mlflow(tiny_data, tmp_path,
                                                                                       local_mlflow):
    """A finished training, then train.num_threads edited (a speed setting: --resume auto keeps the
    checkpoint, hsnet/train.py SPEED_SETTINGS) and dvc repro: the train stage re-runs, nothing is
    left to train, and the MLflow run it starts (the settings differ, so not the old one:
    tagged resumed_from_run) is the one the model's lineage points to. It had no epoch metrics:
    its curves were empty in the UI. Expected: the run of the model has every epoch's metrics,
    epochs 1 and 2, once each."""
    import mlflow

    from hsnet.params import Params
    from hsnet.train import train

    params = tmp_path / "params.yaml"
    body = ("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
            "    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3%s}\n")
    params.write_text(body % "")
    first = train(tiny_data, Params.resolve(params, "sample"), tmp_path / "run", progress=False, resume="auto")
    params.write_text(body % ", num_threads: 1")
    second = train(tiny_data, Params.resolve(params, "sample"), tmp_path / "run", progress=False, resume="auto")
    run_id = second["mlflow_run_id"] if isinstance(second, dict) and "mlflow_run_id" in second else None
    client = mlflow.MlflowClient(local_mlflow)
    runs = client.search_runs([client.get_experiment_by_name("hsnet").experiment_id],
                              order_by=["attributes.start_time DESC"])
    assert len(runs) == 2, [r.info.run_id for r in runs]
    latest = runs[0]
    assert run_id in (None, latest.info.run_id)
    assert latest.data.tags.get("resumed_from_run") == runs[1].info.run_id
    steps = [m.step for m in client.get_metric_history(latest.info.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2], f"the model's run {latest.info.run_id} has val_accuracy at epochs {steps}"
    assert first is not None
