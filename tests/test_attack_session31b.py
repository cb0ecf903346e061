"""Attack, session 31b: the two changes of 1bd1df2..e12c926.

* hsnet/tracking.py ``_check_artifact_location`` (4611e9e): behind a tracking server, an
  experiment whose artifact location is a plain path (no scheme; "a letter is a Windows drive")
  whose parent folder this machine lacks is refused, since MLflow's client would write the run's
  artifacts to its own disk. Attacked: the experiment hsnet *creates* behind such a server (the
  commit's own case, "a server started with --default-artifact-root /srv/mlruns, the old way"),
  and a Windows path read on a Linux client.
* hsnet/serve.py ``BodyLimit`` / hsnet/limits.py ``max_pending_bytes`` (1bd1df2, e12c926): checked
  against a real server (mid-body 503s on V1 and V2, keep-alive after them, the budget freed, RSS
  under 12 concurrent 20 MB uploads) and held; no test here (see the session's report).

Each test's docstring names the promise it checks and the expectation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _server_with_a_path_root(workdir: Path, root: str):
    """``mlflow server`` as MLflow's docs started it before --serve-artifacts (MLflow < 2.0, and
    still ``--no-serve-artifacts``): its default artifact root a path on its own disk."""
    from servers import Server, free_port

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
           f"sqlite:///{workdir / 'server.db'}", "--default-artifact-root", root, "--no-serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return Server(cmd, f"http://127.0.0.1:{port}", "/health", env, workdir / "mlflow-server.log")


@pytest.mark.parametrize("as_uri", [False, True], ids=["plain-path", "file-uri"])
def test_the_experiment_hsnet_creates_behind_a_path_root_server_is_checked_too(as_uri, tmp_path, monkeypatch):
    """4611e9e: behind a server, a plain-path (or ``file:``) location this machine lacks is refused
    ("a server started with --default-artifact-root /srv/mlruns, the old way": MLflow's client
    writes the artifacts to its own disk). Its message tells the user to rename the experiment,
    after which "hsnet then makes a new 'hsnet'" -- and "a server started with a path as its
    --default-artifact-root gives the new one a path again". But ``_run_in`` checks only an
    experiment it *found*: the one it creates (``artifact_location=None`` behind a server, so the
    server's path) is never checked. Against a fresh server of that kind (or after the rename the
    message asks for) the first run writes the model to ``/srv/mlruns/1/...`` on the client's
    disk, creating the folders; and since the parent now exists on the client, every later run is
    let through as well. Expected: refused the same way (naming the location), nothing made on
    the client."""
    import mlflow

    from servers import refused_run

    workdir = tmp_path / "server"
    workdir.mkdir()
    elsewhere = tmp_path / "the-server-machine" / "srv" / "mlruns"  # not made: the server never mkdirs it
    server = _server_with_a_path_root(workdir, elsewhere.as_uri() if as_uri else str(elsewhere))
    mlflow.set_tracking_uri(None)
    try:
        assert not elsewhere.exists()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        for attempt in (1, 2):
            message = refused_run(f"{elsewhere} on the client's disk (attempt {attempt})")
            assert str(elsewhere) in message, message
        assert not elsewhere.parent.exists(), f"{elsewhere.parent} was created on the client"
    finally:
        server.stop()


def test_a_windows_path_location_is_checked_on_a_linux_client(tmp_path, monkeypatch):
    """4611e9e's comment: a plain path is checked behind a server, "a letter is a Windows drive"
    (``len(scheme) <= 1``). An experiment made on a Windows machine with ``artifact_location=
    r"D:\\mlflow\\artifacts\\hsnet"`` (``mlflow experiments create --artifact-location ...``, kept
    as given by the store) is read on a Linux client as ``Path(r"D:\\mlflow\\artifacts\\hsnet")``:
    one file name, whose parent is ``.``, which always exists -- so it is let through, and MLflow's
    LocalArtifactRepository writes the model into a folder literally named
    ``D:\\mlflow\\artifacts\\hsnet`` in whatever folder the step runs in (a DVC experiment's copy,
    a pod's working dir): lost. Expected: refused, naming the location, and nothing written in the
    client's working folder."""
    import mlflow

    from servers import refused_run, start_mlflow

    workdir = tmp_path / "server"
    workdir.mkdir()
    windows = "D:\\mlflow\\artifacts\\hsnet"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'server.db'}").create_experiment(
        "hsnet", artifact_location=windows)
    mlflow.set_tracking_uri(None)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    server = start_mlflow(workdir, str(tmp_path / "served"))
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        assert mlflow.MlflowClient().get_experiment_by_name("hsnet").artifact_location == windows
        monkeypatch.chdir(client_dir)
        message = refused_run(f"the client's working folder {client_dir}")
        assert windows in message, message
        assert not any(client_dir.iterdir()), sorted(p.name for p in client_dir.iterdir())
    finally:
        server.stop()
