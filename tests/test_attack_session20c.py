"""Attack 20c: the fixes of attacks 20a and 20b (mask_text's user part, the promotion record's new
order, the kept verdict, the BrokenPipeError exit, --history's refusals). Each test states the
promise it checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from mlflow import MlflowClient

from hsnet.errors import HSNetError

# --- 1. mask_text -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "https://oauth2:p@ss'w0rd@gitlab.example.com/g/data.git",
    "dvc get failed for https://oauth2:p@ss'w0rd@gitlab.example.com/g/data.git (exit 128)",
])
def test_mask_text_hides_a_password_holding_an_at_sign_and_a_quote(text):
    """mask_text: "``text`` with every URI in it through :func:`mask_uri`"; mask_uri reads the user
    part "to the authority's last '@' ... as urllib reads it" and masks the whole password
    (p@ss'w0rd). _URI_IN_TEXT's user part now stops at the FIRST '@' and the rest of the URI stops
    at the quote, so the match is https://oauth2:p@ss and the password's tail ss'w0rd is shown."""
    import urllib.parse

    from hsnet.tracking import mask_text, mask_uri

    uri = text[text.index("https://"):].split(" ")[0]
    assert urllib.parse.urlsplit(uri).password == "p@ss'w0rd"
    assert "w0rd" not in mask_uri(uri)  # the URI alone: masked whole
    shown = mask_text(text)
    assert "w0rd" not in shown and "ss'" not in shown, shown


@pytest.mark.parametrize("text", [
    '{"tracking_uri":"http://mlflow:5000","owner":"ops@corp.example"}',  # compact JSON (a proxy's error body)
    "store <http://mlflow:5000>,<ops@corp.example>",
])
def test_mask_text_leaves_a_text_without_secrets_as_it_is(text):
    """mask_text masks URIs' secrets and nothing else. The new user part runs over any character but
    a blank and '@' (also '"', '<', '>', which RFC 3986 3.2.1 doesn't allow in a userinfo, and which
    _URI_IN_TEXT itself ends a URI at) to the next '@', so a URI without a path followed by an e-mail
    address becomes one 'URI' whose user:password is 'mlflow:5000","owner":"ops': the text then
    names a server that isn't the one (http://mlflow:***@corp.example) and the address is lost.
    (Cases like http://h:5000,x=ops@corp, which RFC 3986 does read as a userinfo, are left out.)"""
    from hsnet.tracking import mask_text

    assert mask_text(text) == text


def test_mask_text_of_a_100kB_line_is_fast():
    """Errors and tool outputs (dvc get's stderr, the store's messages) go through mask_text. On a
    100 kB line of letters after a URI (a hex digest dump, a long token) it takes ~20 s here (~10 s
    before the user part was added): every position re-scans the run in the scheme look-ahead
    (quadratic). A regex that looks at each character a bounded number of times takes milliseconds."""
    code = textwrap.dedent("""
        from hsnet.tracking import mask_text
        mask_text("fetch of https://host/" + "a" * 100_000 + " failed")
        mask_text("x" * 100_000)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("mask_text took more than 8 s on two 100 kB lines")
    assert done.returncode == 0, done.stderr[-2000:]


# --- 2. the promotion record ------------------------------------------------------------------------

def _two_versions(local_mlflow, tmp_path, monkeypatch, name):
    """production 2, previous 1 (no file checks: these versions have no runs)."""
    from hsnet import registry

    client = MlflowClient(local_mlflow)
    client.create_registered_model(name)
    experiment = client.create_experiment("versions")
    for i in (1, 2):
        src = tmp_path / f"v{i}"
        src.mkdir()
        client.create_model_version(name, str(src), run_id=client.create_run(experiment).info.run_id)
    client.set_registered_model_alias(name, "previous", "1")
    client.set_registered_model_alias(name, "production", "2")
    monkeypatch.setattr(registry, "check_model_files", lambda *a, **k: False)
    return client


def test_a_rollback_deploy_whose_traffic_change_fails_is_recorded(local_mlflow, tmp_path, monkeypatch):
    """README: "each promotion and rollback, made or refused, is recorded"; security.md: "Each
    promotion and rollback, made or refused, leaves a record". `hsnet promote --rollback --deploy`
    (deploy.rollback_production) changes the traffic before the registry; when the cluster refuses
    (no InferenceService, a webhook's denial, RBAC), the rollback is refused and nothing records it:
    rollback_target's record is written only when its own checks refuse, and registry.rollback's
    record starts only after the traffic moved. `--history` shows no attempt at all."""
    from hsnet import deploy
    from hsnet.registry import promotion_history

    name = "hsnet-rbd"
    _two_versions(local_mlflow, tmp_path, monkeypatch, name)

    def refused(model_uri, *, name, namespace=None):
        raise HSNetError(f"InferenceService default/{name} does not exist: there is nothing to roll back")
    monkeypatch.setattr(deploy, "rollback", refused)
    with pytest.raises(HSNetError, match="does not exist"):
        deploy.rollback_production(name)
    rows = promotion_history(name)
    assert [(r["action"], r["outcome"]) for r in rows] == [("rollback", "refused")], rows


def test_a_promotion_that_moved_is_not_recorded_as_an_error_when_stopped_releasing_the_lock(
        local_mlflow, tmp_path, monkeypatch):
    """_recorded: the record ends with ``outcome`` moved/unchanged/refused/error and "production and
    previous as they stand after it". Now that the record wraps the lock, the lock's release runs
    after record() closed it as 'moved': a SIGTERM (Kubeflow stops the run: interrupt.Terminated) or
    Ctrl-C while the lock is deleted goes through _recorded's except and closes it a second time,
    as 'error' with reason 'Terminated', though production moved to the candidate."""
    from hsnet import interrupt
    from hsnet.registry import LOCK_SUFFIX, promote, promotion_history

    name = "hsnet-term"
    client = _two_versions(local_mlflow, tmp_path, monkeypatch, name)
    src = tmp_path / "v3"
    src.mkdir()
    run = client.create_run(client.get_experiment_by_name("versions").experiment_id)
    client.create_model_version(name, str(src), run_id=run.info.run_id)
    client.set_registered_model_alias(name, "candidate", "3")
    real = MlflowClient.delete_registered_model

    def stopped(self, model):
        real(self, model)
        if model.endswith(LOCK_SUFFIX):
            raise interrupt.Terminated
    monkeypatch.setattr(MlflowClient, "delete_registered_model", stopped)
    with pytest.raises(interrupt.Terminated):
        promote(name, force=True)
    assert str(client.get_model_version_by_alias(name, "production").version) == "3"  # it moved
    rows = promotion_history(name)
    assert [(r["outcome"], r["production"]) for r in rows] == [("moved", 3)], rows


# --- 4. BrokenPipeError -----------------------------------------------------------------------------

def test_a_broken_pipe_that_is_not_stdout_is_not_a_silent_141(local_mlflow, tmp_path):
    """cli.main: `except BrokenPipeError:  # hsnet ... | head: the reader stopped reading` ->
    logs.reader_gone() ("After a BrokenPipeError on stdout"). Any BrokenPipeError is taken for
    stdout's: a pipe to a child process that died (torch's inductor compile workers:
    torch/_inductor/compile_worker/subproc_pool.py _send writes to the worker's pipe; a DataLoader
    worker; any subprocess's stdin) ends the command with 141 and nothing on stderr, stdout being
    fine. Here the history's lookup writes to a child that has exited, stdout is a healthy pipe."""
    code = textwrap.dedent("""
        import subprocess, sys
        from hsnet import registry
        from hsnet.cli import main

        def history(name, max_results=None):
            child = subprocess.Popen(["true"], stdin=subprocess.PIPE)
            child.wait()
            child.stdin.write(b"x" * 1_000_000)
            child.stdin.flush()
            return []
        registry.promotion_history = history
        sys.exit(main(["promote", "--name", "m", "--history"]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 141 and "Broken pipe" in done.stderr, (done.returncode, done.stderr[-1500:])


# --- 5. --history with action flags -------------------------------------------------------------------

def test_history_with_deploy_dry_run_is_refused(local_mlflow, capsys, monkeypatch):
    """c0ab240: "--history refuses action flags by name"; _promote lists --deploy and --dry-run among
    them ("--history only lists; it doesn't go with ..."). The --dry-run branch runs before that
    check, so `hsnet promote --name N --history --deploy --dry-run` prints a dry run's manifest
    (or its error) and never the refusal: the check's --dry-run entry is never reached."""
    from hsnet import deploy
    from hsnet.cli import main

    monkeypatch.setattr(deploy, "dry_run", lambda *a, **k: "# --dry-run: a manifest\n")
    rc = main(["promote", "--name", "hsnet-x", "--history", "--deploy", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "--history only lists" in err, (rc, err)
