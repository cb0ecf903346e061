"""Attack, session 26b (from 25c's findings, rewritten): a new user who ran ``make pipeline``, then
``bash mlflow/server.sh`` as the README says, and points other clients at that server.

The promises: mlflow/server.sh "Clients upload through the server" and MLFLOW_ALLOWED_HOSTS "Host
headers to accept besides localhost"; hsnet.tracking._check_artifact_location "Refuse an experiment
whose artifacts would be lost or land outside the project".
"""

from __future__ import annotations

import urllib.parse

import pytest

pytestmark = pytest.mark.slow


def test_behind_a_server_an_experiment_whose_artifacts_are_a_path_this_machine_lacks_is_refused(
        tmp_path, monkeypatch):
    """``make pipeline`` makes experiment ``hsnet`` in mlflow/mlflow.db with its artifacts at
    ``file:///…/mlflow/artifacts`` (no server: a path). ``bash mlflow/server.sh`` serves that same
    store by default. A client elsewhere (a Kubeflow pod, a colleague's laptop) then gets the
    experiment's ``file:`` location from the server and MLflow writes the run's artifacts (the
    model) to that path on *its own* disk, creating the folders: the run says it has a model that
    exists nowhere the server or anyone else can read. Expected: refused, naming the location."""
    import mlflow

    from servers import refused_run, start_mlflow

    workdir = tmp_path / "server"
    workdir.mkdir()
    elsewhere = tmp_path / "the-laptop-that-ran-make-pipeline" / "mlflow" / "artifacts"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'server.db'}").create_experiment(
        "hsnet", artifact_location=elsewhere.as_uri())
    mlflow.set_tracking_uri(None)
    server = start_mlflow(workdir, str(tmp_path / "served"))
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        message = refused_run(f"{elsewhere} on the client's disk")
        assert str(elsewhere) in message and "rename" in message.lower(), message
        assert not elsewhere.parent.exists(), f"{elsewhere.parent} was created on the client"
    finally:
        server.stop()


def test_an_allowed_host_is_accepted_with_a_port(tmp_path):
    """mlflow/server.sh: MLFLOW_ALLOWED_HOSTS "Host headers to accept besides localhost, e.g.
    mlflow.kubeflow.svc.cluster.local,mlflow.kubeflow". A client of http://mlflow.kubeflow:5000
    (the README's cluster URI, or a Service on any port) sends ``Host: mlflow.kubeflow:5000``,
    which MLflow compares as a whole string with each entry: the host as documented is refused
    (403) unless the user also guesses to list it with the port. ``kubectl port-forward
    svc/mlflow 8080:5000`` sends ``Host: localhost:8080``. Expected: each listed name accepted at
    any port, localhost too."""
    from servers import host_status, start_mlflow

    server = start_mlflow(tmp_path, str(tmp_path / "artifacts"),
                          {"MLFLOW_ALLOWED_HOSTS": "mlflow.kubeflow, mlflow.example.com"})
    try:
        port = urllib.parse.urlsplit(server.url).port
        for host in ("mlflow.kubeflow", f"mlflow.kubeflow:{port}", "mlflow.example.com:80",
                     "mlflow.example.com", "localhost:8080", f"127.0.0.1:{port}"):
            assert host_status(server.url, host) == 200, f"Host: {host} refused"
        assert host_status(server.url, "evil.example.com") == 403  # the check still checks
        assert host_status(server.url, "evil.example.com:5000") == 403
    finally:
        server.stop()
