"""Attack 23h: today's later fixes to the model server and the MLflow store, as the on-call
engineer and a local user meet them.

* the registry retries at start (hsnet.serve._look_up, RESOLVE_DELAYS_S): a registry that is
  not up yet, or that fails on the load's next request, after the one lookup that is retried;
* ``--grace-period`` after SIGTERM while a reload (``POST /v2/repository/models/hsnet/load``)
  is in progress;
* hsnet.tracking.ensure_store (realpath, ``.creating-<uuid>``) on a store folder that can be read,
  not written.

``hsnet serve`` runs as users run it (a subprocess on loopback); the registry's answers come from
a real HTTP server on loopback answering as an MLflow tracking server (or the proxy in front of
it) does. Each test fails on the code as it stands and passes once the defect it names is fixed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HSNET = str(Path(sys.executable).with_name("hsnet"))
NAME = "hsnet-rafdb"
VERSION_ANSWER = json.dumps({"model_version": {"name": NAME, "version": "3", "aliases": ["production"],
                                               "source": "models:/m-0123456789", "run_id": "r1",
                                               "status": "READY"}}).encode()
MISSING = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such version"}).encode()
UNAVAILABLE = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "the database is not reachable"}).encode()


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true", **{k: str(v) for k, v in extra.items()}}


def _registry(answer):
    """A tracking server stand-in on loopback: ``answer(n, path)`` -> (status, body) for its n-th
    request (1-based), or None to drop the connection unanswered. Returns (server, seen paths)."""
    from servers import serve_http

    seen: list[str] = []
    lock = threading.Lock()

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                seen.append(self.path)
                n = len(seen)
            got = answer(n, self.path)
            if got is None:  # a dropped connection: closed without a word
                self.close_connection = True
                return
            status, body = got
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body[:1] == b"{" else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    return serve_http(Registry), seen


def _serve(url: str, log: Path, tmp_path: Path, model: str = f"models:/{NAME}@production") -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([HSNET, "serve", "--model", model, "--port", "9", "--host", "127.0.0.1",
                                 "--threads", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_env(MLFLOW_TRACKING_URI=url, HSNET_CACHE_DIR=tmp_path / "cache"))


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --- 1. a registry that is not up yet is not tried again -------------------------------------------
@pytest.mark.parametrize("first_answers", ["dropped", "503"])
def test_a_registry_not_up_yet_at_start_is_tried_again(first_answers, tmp_path):
    """README ("Start and stop", today): "a registry that fails the alias lookup (5xx, a dropped
    connection) is tried again for about a minute, each failure logged"; hsnet/serve.py: "a registry
    that fails (5xx, 429, a dropped connection) is tried again at start".

    The retry loop (``_look_up``) only wraps MLflow's lookup; before it, ``tracking.connect``'s
    reachability check (``GET /health``) ends the server at the first dropped connection
    ("unreachable") or 503 ("answered HTTP 503") -- the failures a registry that is still starting
    gives (its pod restarting after a node drain, the Knative/Envoy proxy in front answering 503
    until it is ready). The predictor then crash-loops with Kubernetes' growing back-off instead of
    the minute of retries the README describes.

    Here the registry drops (or answers 503 to) its first two requests, then answers. Expected: the
    server tries again and reaches the alias lookup."""
    def answer(n, path):
        if n <= 2:
            return None if first_answers == "dropped" else (503, b"upstream connect error or disconnect/reset "
                                                                  b"before headers. reset reason: connection failure")
        if path.startswith("/health"):
            return 200, b"OK"
        if "/registered-models/alias" in path:
            return 200, VERSION_ANSWER
        return 404, MISSING  # then the load stops at once: this test is about reaching the lookup

    registry, seen = _registry(answer)
    log = tmp_path / "serve.log"
    proc = _serve(f"http://127.0.0.1:{registry.server_address[1]}", log, tmp_path)
    try:
        # the retries' 2 + 4 s after the server's start, which takes 10 s and more on a loaded 2-core
        # machine (session 33's CI rehearsal: 18 s in all was too short); it ends at once when reached
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not any("/alias" in p for p in seen):
            time.sleep(0.2)
    finally:
        _end(proc)
        registry.shutdown()
        registry.server_close()
    assert any("/registered-models/alias" in p for p in seen), (
        f"the registry {first_answers} its first two requests and answered after; the server asked "
        f"{seen} and said: {log.read_text(errors='replace')[-800:]}")


# --- 2. the retries cover one request of the load: the next ones are MLflow's silent minutes ----------
def _says_registry_fails(text: str) -> bool:
    """Whether a line of ``text`` says the registry fails: its 503, or the registry (tracking server)
    with a word of failure."""
    for line in text.lower().splitlines():
        if "503" in line or "temporarily_unavailable" in line or (
                ("registry" in line or "tracking server" in line or "mlflow" in line)
                and any(w in line for w in ("fail", "unavailable", "trying again", "retry", "retrying"))):
            return True
    return False


def _after_lookup(proc: subprocess.Popen, seen: list[str], log: Path, seconds: float) -> tuple[str, bool]:
    """Once the server has asked for the alias, up to ``seconds`` for it to say the registry fails:
    (its whole output, whether it still runs)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("/alias" in p for p in seen) and proc.poll() is None:
        time.sleep(0.2)
    assert any("/alias" in p for p in seen), (seen, log.read_text(errors="replace")[-800:])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not _says_registry_fails(log.read_text(
            errors="replace")):
        time.sleep(0.5)
    return log.read_text(errors="replace"), proc.poll() is None


def test_a_registry_failing_after_the_alias_lookup_is_in_the_log_before_liveness_kills_the_pod(tmp_path):
    """README (today): "a registry that fails the alias lookup (5xx, a dropped connection) is tried
    again for about a minute, each failure logged"; hsnet/serve.py: "MLflow's own retries, off
    meanwhile, would wait 4 minutes without a word"; hsnet/k8s/inferenceservice.yaml: liveness
    starts at 120 s and kills the container after 4 failures 15 s apart.

    The retries and MLflow's retries turned off cover the alias lookup only. The load then asks the
    registry again (``load_classifier``: the version's record, its files, the download) with
    MLflow's default retries back on (MLFLOW_HTTP_REQUEST_MAX_RETRIES unset again): a registry that
    answered the lookup and fails the next request -- an intermittent 503 from a database under load,
    a 429 when four replicas start at once -- puts the server back into minutes of silence, the
    very failure today's change was to end (the first log line comes after liveness has restarted
    the pod, or never).

    Here the registry answers the alias lookup, then 503 to every API request. Expected: within 12 s
    of that the server has said that the registry is failing (a line per failed attempt, or an exit
    naming the failure)."""
    def answer(n, path):
        if path.startswith("/health"):
            return 200, b"OK"
        if "/registered-models/alias" in path:
            return 200, VERSION_ANSWER
        return 503, UNAVAILABLE

    registry, seen = _registry(answer)
    log = tmp_path / "serve.log"
    proc = _serve(f"http://127.0.0.1:{registry.server_address[1]}", log, tmp_path)
    try:
        said, _ = _after_lookup(proc, seen, log, 12)
    finally:
        _end(proc)
        registry.shutdown()
        registry.server_close()
    assert _says_registry_fails(said), (
        f"12 s after the registry answered the alias lookup and then answered 503 to "
        f"{[p for p in seen if '/api/' in p and '/alias' not in p][:6]}, the server's whole output was: {said[-1500:]!r}")


# --- 3. SIGTERM during a reload: the grace period is not the end -------------------------------------
@pytest.fixture
def registered(trained, tmp_path, monkeypatch):
    """The trained checkpoint registered in a local SQLite store as ``hsnet-t``, production."""
    from hsnet.evaluate import evaluate
    from hsnet.registry import promote, register

    uri = f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "reg").mkdir()
    monkeypatch.chdir(tmp_path / "reg")
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name="hsnet-t")
    assert promote("hsnet-t")["production"] == 1
    return uri, tmp_path / "reg" / "mlflow.db"


def test_sigterm_during_a_reload_ends_the_server_within_its_grace_period(registered, tmp_path):
    """hsnet serve --help (today): "--grace-period SECONDS: after SIGTERM, how long requests in flight
    may still finish (keep it under the pod's terminationGracePeriodSeconds)"; README: "After SIGTERM
    no new connection is taken and the requests in flight get --grace-period seconds ... to finish".

    A reload (``POST /v2/repository/models/hsnet/load``) runs in asyncio's default executor
    (``_Repository.load``: ``run_in_executor(None, model.reload)``). At SIGTERM uvicorn waits the
    grace period, cancels the reload's request ("Finished server process"), and then
    ``asyncio.run`` joins the default executor's threads without any limit: the process lives on
    until the reload itself ends -- today's registry retries alone are 62 s of sleeps, and a large
    model's download takes minutes -- past the grace period and the pod's, so Kubernetes SIGKILLs
    it, and a local ``hsnet serve`` stopped with Ctrl-C hangs.

    The reload is held here by the store's own lock (``ensure_store`` takes ``<store>.lock`` at every
    connect; another hsnet step creating or upgrading the store holds it), the simplest slow reload
    to make on loopback. Expected: the server exits within its grace period (2 s) and a few seconds."""
    from servers import Server, free_port

    uri, db = registered
    port = free_port()
    server = Server([HSNET, "serve", "--model", "models:/hsnet-t@production", "--port", str(port), "--host",
                     "127.0.0.1", "--threads", "1", "--grace-period", "2"], f"http://127.0.0.1:{port}",
                    "/v2/models/hsnet/ready", _env(MLFLOW_TRACKING_URI=uri, HSNET_CACHE_DIR=tmp_path / "cache"),
                    tmp_path / "serve.log")
    lock = open(f"{db}.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)

        def reload():
            request = urllib.request.Request(server.url + "/v2/repository/models/hsnet/load", data=b"{}",
                                             method="POST", headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=60).close()
            except OSError:
                pass

        threading.Thread(target=reload, daemon=True).start()
        time.sleep(1.5)  # the reload is waiting for the store
        os.killpg(server.proc.pid, signal.SIGTERM)
        start = time.monotonic()
        try:
            server.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            pass
        waited = time.monotonic() - start
        exited = server.proc.poll() is not None
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        server.stop()
    assert exited, (f"SIGTERM with --grace-period 2 during a reload: the server was still running {waited:.0f} s "
                    f"later:\n{(tmp_path / 'serve.log').read_text(errors='replace')[-1200:]}")


# --- 4. a store that can be read, not written --------------------------------------------------------
READ = """
import os, sys
from hsnet import tracking
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + sys.argv[1]
tracking.connect(create=False)
print("found", tracking.model_version("models:/m@production"))
"""


def test_a_registry_on_a_read_only_folder_can_be_read(tmp_path):
    """hsnet.tracking.tracking_uri: the store is "created for steps that record, refused by name for
    those that only read (create=False: a registry lookup)"; README: ``hsnet serve --model
    models:/hsnet-sample@production`` serves from the project's local store.

    A lookup only reads, and MLflow reads a SQLite store on a read-only folder as it is (a project
    mounted read-only into a container, a colleague's project). hsnet's ``connect(create=False)``
    first runs ``ensure_store``, which opens ``<store>.lock`` for appending before anything else: on
    a read-only folder that is ``OSError: [Errno 30] Read-only file system`` (EACCES in another
    user's folder), a traceback, and ``hsnet serve``/``hsnet predict --model models:/...`` can't
    read a registry they need nothing but to read.

    Expected: the version behind ``models:/m@production`` is found (the lock is only needed to create
    or upgrade a store, which a store that opens needs neither)."""
    import mlflow

    from hsnet import tracking

    if not shutil.which("unshare") or subprocess.run(["unshare", "-Urm", "true"], capture_output=True,
                                                     timeout=30).returncode != 0:
        pytest.skip("no user + mount namespaces here (unshare -Urm refused)")
    store = tmp_path / "project" / "mlflow"
    db = store / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking.ensure_store(uri)  # as hsnet's steps made it: the store and its lock file
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("m")
    client.create_model_version("m", source=str(tmp_path / "model"))
    client.set_registered_model_alias("m", "production", "1")
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 78; '
              'touch "$1/.probe" 2>/dev/null && exit 77; shift; exec "$@"')
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", str(store), sys.executable, "-c", READ,
                           str(db)], env=_env(PYTHONPATH=str(ROOT), HSNET_CACHE_DIR=tmp_path / "cache"),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode in (77, 78):
        pytest.skip(f"can't mount the store's folder read-only here: {proc.stderr[-300:]}")
    assert proc.returncode == 0 and "found ('m', '1')" in proc.stdout, (
        f"a lookup in a store on a read-only folder failed:\n{proc.stderr[-1200:]}")


# --- 5. (session 24) a registry whose lookup hangs: MLflow's 120 s timeout per try, without a word ----
def test_a_registry_whose_lookup_hangs_is_named_in_the_log_within_twenty_seconds(tmp_path):
    """Session 23's note ("left, found and not changed"): "a registry whose lookup hangs (health
    answers, the database doesn't) waits MLflow's 120 s request timeout per try without a log line".
    hsnet/k8s/inferenceservice.yaml's liveness probe starts at 120 s: six silent tries of 120 s each
    would restart the pod long before the first line said why.

    Here the registry answers ``/health`` and never answers the alias lookup. Expected: within 20 s
    the server has logged a failed try naming the registry (and it goes on trying)."""
    release = threading.Event()

    def answer(n, path):
        if path.startswith("/health"):
            return 200, b"OK"
        release.wait(60)  # the database behind the server doesn't answer
        return 503, UNAVAILABLE

    registry, seen = _registry(answer)
    log = tmp_path / "serve.log"
    proc = _serve(f"http://127.0.0.1:{registry.server_address[1]}", log, tmp_path)
    try:
        said, running = _after_lookup(proc, seen, log, 20)
    finally:
        release.set()
        _end(proc)
        registry.shutdown()
        registry.server_close()
    assert _says_registry_fails(said), f"20 s after a lookup that hangs, the server's whole output was: {said[-1500:]!r}"
    assert running, f"a hanging lookup may pass: the server should try again, not exit: {said[-1500:]!r}"


def test_a_download_slower_than_the_lookup_timeout_still_loads(tmp_path, monkeypatch):
    """hsnet/tracking.py: while the server loads, a lookup that takes more than REGISTRY_TIMEOUT_S
    fails, but "a download keeps MLflow's own timeout (120 s), since MLflow's artifact proxy sends
    its first byte only once it has the whole file from the artifact store" (mlflow/server/
    handlers.py ``_download_artifact``: ``artifact_repo.download_artifacts`` to a temporary folder,
    then the response). A model of ~100 MB on a slow object store takes longer than a lookup may.

    Here the stand-in proxy answers the run's lookups at once and a file's download only after
    REGISTRY_TIMEOUT_S + 1.5 s. Expected: the copy is made (the download waited)."""
    from hsnet import model_copies, tracking

    mlmodel = b"artifact_path: model\nflavors: {}\n"
    prefix = "/api/2.0/mlflow-artifacts/artifacts/0/r1/artifacts"

    def answer(n, path):
        if path.startswith("/api/2.0/mlflow/runs/get"):
            return 200, json.dumps({"run": {"info": {"run_id": "r1", "experiment_id": "0",
                                                     "artifact_uri": "mlflow-artifacts:/0/r1/artifacts",
                                                     "status": "FINISHED", "lifecycle_stage": "active"},
                                            "data": {}}}).encode()
        if path.startswith("/api/2.0/mlflow-artifacts/artifacts?"):
            listed = [{"path": "MLmodel", "is_dir": False, "file_size": len(mlmodel)}]
            return 200, json.dumps({"files": listed if "model" in path else
                                    [{"path": "model", "is_dir": True}]}).encode()
        if path == prefix + "/model/MLmodel":
            time.sleep(tracking.REGISTRY_TIMEOUT_S + 1.5)  # the proxy fetching the file from the object store
            return 200, mlmodel
        return 404, MISSING

    registry, seen = _registry(answer)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{registry.server_address[1]}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    try:
        with tracking.fail_fast():
            local = model_copies.fetch_model("runs:/r1/model")
    finally:
        registry.shutdown()
        registry.server_close()
    assert (local / "MLmodel").read_bytes() == mlmodel, seen


def test_readme_states_the_timeouts_the_server_loads_with():
    """README, "Start and stop": "a lookup not answered within N s; a download keeps MLflow's M s":
    N is hsnet.tracking.REGISTRY_TIMEOUT_S and M MLflow's own default MLFLOW_HTTP_REQUEST_TIMEOUT."""
    import re

    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT

    from hsnet.tracking import REGISTRY_TIMEOUT_S

    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    m = re.search(r"a lookup not answered within (\d+) s; a download keeps MLflow's (\d+) s", text)
    assert m, "README states the server's lookup and download timeouts while it loads"
    assert (int(m.group(1)), int(m.group(2))) == (REGISTRY_TIMEOUT_S, MLFLOW_HTTP_REQUEST_TIMEOUT.default)


@pytest.mark.parametrize("flags, named", [(["--grace-period", "0"], "--grace-period 0.0"),
                                          (["--grace-period", "-5"], "--grace-period -5.0"),
                                          (["--grace-period", "nan"], "--grace-period nan"),
                                          (["--threads", "-1"], "--threads -1"),
                                          (["--port", "70000"], "--port 70000")])
def test_serve_refuses_its_own_flags_by_name_before_loading(flags, named, tmp_path):
    """Session 23's note: "--grace-period 0 or a negative value makes uvicorn log a cosmetic ERROR
    on each stop"; a negative --threads was ThreadPoolExecutor's traceback after the model loaded.
    hsnet.serve.check_settings refuses them by name, before the model is looked up (the model here
    doesn't exist: a refusal that names it would mean the flags were taken)."""
    proc = subprocess.run([HSNET, "serve", "--model", str(tmp_path / "none.pt"), *flags], capture_output=True,
                          text=True, timeout=120, env=_env(HSNET_CACHE_DIR=tmp_path / "cache"))
    assert proc.returncode == 2 and named in proc.stderr, proc.stderr[-1500:]
    assert "none.pt" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]
