"""Real servers for tests: moto's S3 server and an MLflow tracking server, as subprocesses on loopback.

Each runs in its own process group, killed as a group at the end (the MLflow server forks
workers). Nothing here is mocked in-process: boto3, DVC's s3fs and MLflow talk HTTP to them.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cmd: list[str], url: str, health: str, env: dict, log: Path):
        self.url, self.log = url, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + health, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{cmd[:3]} did not answer at {url}{health}:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        self._log.close()


def start_s3(workdir: Path) -> Server:
    port = free_port()
    env = {**os.environ, **FAKE_AWS}
    return Server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                  f"http://127.0.0.1:{port}", "/moto-api/", env, workdir / "moto.log")


def s3_env(s3: Server) -> dict:
    """What a client needs to use the moto server: endpoint and (fake) credentials."""
    return {**FAKE_AWS, "AWS_ENDPOINT_URL_S3": s3.url, "MLFLOW_S3_ENDPOINT_URL": s3.url}


def make_bucket(s3: Server, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)


def start_mlflow(workdir: Path, artifacts: str, extra_env: dict | None = None) -> Server:
    """``bash mlflow/server.sh`` (the launch script users run) on a free port, sqlite backend."""
    port = free_port()
    env = {**os.environ, **(extra_env or {}), "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{workdir / 'server.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": artifacts, "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return Server(["bash", str(ROOT / "mlflow" / "server.sh")], f"http://127.0.0.1:{port}", "/health", env,
                  workdir / "mlflow-server.log")


def models_serve_env(**extra: str) -> dict:
    """The environment of README's ``mlflow models serve`` as a user runs it: this venv's ``mlflow``
    first on PATH, and Python free to write bytecode (PYTHONDONTWRITEBYTECODE unset: this test
    machine sets it, most boxes don't; a local store's version is loaded in place)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for the body (a bind mount of itself, remounted ro: what a read-only
    volume is); the test is skipped where the machine can't make one (not root)."""
    import pytest

    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("can't bind-mount here (not root): no read-only filesystem to test with")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("can't remount read-only here")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def refused_run(where: str) -> str:
    """The message of the HSNetError that refuses an hsnet tracking run in the store
    MLFLOW_TRACKING_URI names (an artifact location the run's artifacts would be lost at); fails
    the test, naming ``where`` they went, when the run logs its artifacts instead."""
    import mlflow
    import pytest

    from hsnet import tracking
    from hsnet.errors import HSNetError

    with pytest.raises(HSNetError) as err:
        with tracking.run("refused", params={"a": 1}, tags={}, computes=False) as active:
            mlflow.log_text("the model", "model.txt")
            ran = active.info.run_id
        pytest.fail(f"run {ran} logged its artifacts to {where} (experiment location "
                    f"{mlflow.MlflowClient().get_experiment_by_name(tracking.EXPERIMENT).artifact_location})")
    return str(err.value)


def serve_overlay_probe(code: str, *args: str) -> dict:
    """Run ``code`` in a Python that sees KServe's SDK (the serve overlay, ``make serve-env``) and
    hsnet, as tests/serve/test_deploy.py probes KServe's SDK; its last stdout line, read as JSON."""
    import hsnet

    overlay = os.path.join(sys.prefix, "serve")
    root = str(Path(hsnet.__file__).resolve().parent.parent)
    run = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, "PYTHONPATH": os.pathsep.join([overlay, root])},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"KServe's SDK (make serve-env) is needed here: {run.stderr[-800:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def host_status(url: str, host: str) -> int:
    """The status the server at ``url`` answers an MLflow API GET sent with ``Host: host``."""
    import http.client

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def serve_http(handler_cls, ssl_context=None) -> http.server.ThreadingHTTPServer:
    """``handler_cls`` on a free loopback port (TLS with ``ssl_context``), served by a daemon thread,
    in this process; the caller calls ``shutdown()`` and ``server_close()``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def answering(status: int, headers: dict | None = None, body: bytes = b"", seen: list | None = None):
    """A request handler that answers every GET with ``status``, ``headers`` and ``body``, quietly;
    ``seen`` collects each request's Authorization header."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if seen is not None:
                seen.append(self.headers.get("Authorization"))
            self.send_response(status)
            for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed CA certificate for localhost and 127.0.0.1 (one day), and its key, in ``tmp_path``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
