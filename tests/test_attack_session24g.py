"""Attack 24g: the last fixes of commit 9f8b33d, from the outside.

* hsnet.registry._promotion_lock (the lock records its action; a registration waits for any
  holder, a promotion for a registration's hold only): a lock whose holder the registry won't
  show (MLflow's basic-auth app with ``default_permission = NO_PERMISSIONS`` answers 403 to a
  user reading a model someone else created, while letting them try to create it) now makes the
  process retry create+get with no pause and no end, hammering the tracking server;
* components.convert._server_uri: a tracking URI with a query string gets through the first
  step, although MLflow sends every call to the page the query hangs off (as it does for the
  fragment this commit refuses).

The registry's answers come from a real HTTP server on loopback answering as an MLflow tracking
server does; the code under test runs in a real process (it may not end: it is killed after a
timeout). Each test fails on the code as it stands and passes once the defect it names is fixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = "hsnet-sample"


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1",
            "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", **extra}


def _serve(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _lock_held_by_someone_you_cannot_read():
    """A tracking server stand-in where ``NAME.promotion-lock`` exists (created by another user)
    and this user may not read it: create answers 400 RESOURCE_ALREADY_EXISTS, get answers 403
    PERMISSION_DENIED, as MLflow's basic-auth app does with default_permission NO_PERMISSIONS
    (403 is not one of the codes MLflow's client retries). Returns (server, request counts)."""
    counts = {"create": 0, "get": 0, "other": 0}
    guard = threading.Lock()

    class Registry(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/api/2.0/mlflow/registered-models/create"):
                with guard:
                    counts["create"] += 1
                return self._answer(400, {"error_code": "RESOURCE_ALREADY_EXISTS",
                                          "message": f"Registered Model (name={NAME}.promotion-lock) already exists."})
            with guard:
                counts["other"] += 1
            self._answer(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": self.path})

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/api/2.0/mlflow/registered-models/get"):
                with guard:
                    counts["get"] += 1
                return self._answer(403, {"error_code": "PERMISSION_DENIED",
                                          "message": "Permission denied"})
            with guard:
                counts["other"] += 1
            self._answer(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": self.path})

        def log_message(self, *args):
            pass

    return _serve(Registry), counts


@pytest.mark.parametrize("action", ["promote", "register"])
def test_a_lock_whose_holder_cannot_be_read_ends_instead_of_spinning(action, tmp_path):
    """hsnet.registry._promotion_lock: "A registration waits up to FINISH_WAIT_S for any holder,
    and a promotion or rollback for a registration ...; a promotion that meets another promotion
    or rollback is refused at once with PromotionLost, as is any holder once the wait is over."
    Before commit 9f8b33d a registry that refused to show the lock's holder gave the holder
    "just finished" and the usual refusal after one try. Today any MlflowException from reading
    the holder is taken as "released meanwhile: try again at once": a 403 (or any failure but
    RESOURCE_DOES_NOT_EXIST) makes ``hsnet promote`` / ``hsnet register`` loop create+get with no
    sleep and no deadline (thousands of requests a minute at the tracking server, the command
    never ending, the Kubeflow step hanging until its timeout). With FINISH_WAIT_S at 2 s, the
    lock must be given up (an HSNetError) within 12 s, after a bounded number of requests."""
    server, counts = _lock_held_by_someone_you_cannot_read()
    url = f"http://127.0.0.1:{server.server_port}"
    code = textwrap.dedent(f"""
        import hsnet.registry as registry
        from hsnet.errors import HSNetError
        from mlflow import MlflowClient

        registry.FINISH_WAIT_S = 2  # the wait itself is not what is checked
        try:
            with registry._promotion_lock(MlflowClient(), {NAME!r}, {action!r}):
                print("TOOK THE LOCK")
        except HSNetError as exc:
            print("REFUSED", type(exc).__name__, exc)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(MLFLOW_TRACKING_URI=url), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=12)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=15)
        pytest.fail(f"{action}: still trying to take the lock after 12 s (FINISH_WAIT_S 2 s): the tracking "
                    f"server got {counts['create']} creates and {counts['get']} reads of the lock; "
                    f"output: {out[-1500:]}")
    finally:
        server.shutdown()
        server.server_close()
    assert "REFUSED" in out, out[-3000:]
    assert counts["create"] < 50, counts  # polled, not hammered


def _query_reaches_the_ui_page() -> str:
    """What MLflow's own client requests for a tracking URI with a query string: a loopback
    server records the path (it answers as the MLflow UI's page does, with HTML)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    seen: list[str] = []

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            body = b"<html>MLflow</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = _serve(Page)
    try:
        with pytest.raises(MlflowException):
            MlflowClient(tracking_uri=f"http://127.0.0.1:{server.server_port}/?token=abc").get_experiment_by_name("hsnet")
    finally:
        server.shutdown()
        server.server_close()
    return seen[0]


@pytest.mark.parametrize("uri", [
    "http://mlflow.kubeflow.svc.cluster.local:5000/?token=abc",  # a proxy's token as a query
    "https://mlflow.example.com/mlflow?auth=1",  # a path prefix and a query
    "http://mlflow.kubeflow.svc.cluster.local:5000?",  # an empty query
])
def test_first_step_refuses_a_tracking_uri_with_a_query(uri):
    """components.convert._server_uri: a tracking server's URL has "no fragment (the MLflow UI's
    address, http://HOST:5000/#/experiments/0, would send every API call to the UI's page)";
    README "Kubeflow Pipelines": the first step checks "a non-empty mlflow_tracking_uri that is a
    server's http(s):// URL". A query string does the same harm: MLflow appends /api/2.0/... to the
    URI, so the REST path lands inside the query and every call is a GET of the page before it
    (checked here with MLflow's client: it requests ``/?token=abc/api/2.0/mlflow/...``), and
    hsnet's /health check passes (GET / answers 200). Today check_run takes such a URI, the run
    fetches and crops, and its first MLflow call fails on an HTML page. It must be refused, naming
    mlflow_tracking_uri (or, if it is taken, it must work: MLflow can't send a query)."""
    from components.convert import check_run
    from hsnet.errors import HSNetError

    assert _query_reaches_the_ui_page().startswith("/?token=abc/api/2.0/mlflow/")
    with pytest.raises(HSNetError, match="mlflow_tracking_uri"):
        check_run("sample", mlflow_tracking_uri=uri)
