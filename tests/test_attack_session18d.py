"""Attack 18d: the fixes for 18c (mask_uri / mask_text, the gate's advice, fetch's masking).
Each test fails on the code it was written against and passes once the defect is fixed."""

from __future__ import annotations

import shlex

import pytest


def _advice(monkeypatch, tmp_path, checkpoint_file="best.pt", uri=None):
    """The gate's not-comparable advice for production's evaluation record (as _figures builds it)."""
    from types import SimpleNamespace

    from hsnet.registry import _not_comparable

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri or f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = "sha256:0123456789abcdef"
    cand = SimpleNamespace(version="2", tags={})
    prod = SimpleNamespace(version="1", tags={"train_run_id": "0" * 32})
    p_fig = {"evaluation_run_id": "a" * 32, "checkpoint_file": checkpoint_file}
    return _not_comparable(cand, prod, p_fig, (data, "test", "False"), ("sha256:fedcba9876543210", "test", "False"))


def _download_argv(reason: str) -> tuple[dict, list[str]]:
    """The advised download command as a shell would run it: its VAR=value prefixes, then argv."""
    command = reason.split("there (", 1)[1].split(", then hsnet evaluate", 1)[0]
    argv = shlex.split(command)
    env = {}
    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    return env, argv


# --- 1. the advice's download with a checkpoint file name a shell splits ----------------------

@pytest.mark.parametrize("name", ["model (1).pt", "my best.pt"])
def test_the_advised_download_names_a_checkpoint_file_with_spaces_or_parentheses_as_one_argument(
        monkeypatch, tmp_path, name):
    """The commit: the advice "downloads production's checkpoint from its own evaluation run
    (checkpoint/<file>)", the file name evaluate was given (``hsnet evaluate --checkpoint
    "model (1).pt"``: a browser's second download of a file is named so). The advice quotes the
    ``hsnet evaluate --checkpoint`` path (shlex.quote) but not the download's ``-a
    checkpoint/<file>``: pasted into a shell, ``model (1).pt`` is a syntax error ("syntax error
    near unexpected token '('"), and ``my best.pt`` gives the mlflow CLI an extra argument
    (click: "Got unexpected extra argument (best.pt)"). The real mlflow CLI's parser
    (mlflow/store/artifact/cli.py ``download_artifacts``: ``--artifact-path/-a``) must receive
    ``checkpoint/<file>`` whole."""
    from mlflow.store.artifact.cli import commands

    reason = _advice(monkeypatch, tmp_path, checkpoint_file=name)
    try:
        _, argv = _download_argv(reason)
    except ValueError as exc:  # shlex: what a shell would refuse too
        pytest.fail(f"{exc}: {reason}")
    assert argv[:3] == ["mlflow", "artifacts", "download"], argv
    download = commands.get_command(None, "download")
    try:
        ctx = download.make_context("download", argv[3:])
    except Exception as exc:  # click.UsageError: the command as written does not run
        pytest.fail(f"mlflow artifacts download {argv[3:]}: {exc}")
    assert ctx.params["artifact_path"] == f"checkpoint/{name}", ctx.params


# --- 2. the advice names a store whose password it masked --------------------------------------

def test_the_advised_download_does_not_name_a_store_with_a_masked_password(monkeypatch, tmp_path):
    """The commit: the advice names the store "only when that would not drop credentials hsnet
    moved out of the URI: the user's own MLFLOW_TRACKING_URI has them". MLflow's tracking URI may
    be a database URI itself (MLflow docs, "Backend Stores": ``<dialect>+<driver>://<username>:
    <password>@<host>:<port>/<database>``; README/mlflow/server.sh use postgresql:// for the
    store). hsnet moves credentials out of http(s) URIs only (tracking._move_credentials), so for
    ``postgresql://mlflow:PASSWORD@db/mlflow`` the advice prints
    ``MLFLOW_TRACKING_URI='postgresql://mlflow:***@db/mlflow' mlflow artifacts download ...``:
    run as written, it logs in with the password ``***`` and fails, where without the prefix the
    user's own MLFLOW_TRACKING_URI (set: that is where the store came from) would work."""
    reason = _advice(monkeypatch, tmp_path, uri="postgresql://mlflow:s3cret@db.example:5432/mlflow")
    assert "s3cret" not in reason
    env, _ = _download_argv(reason)
    assert "***" not in env.get("MLFLOW_TRACKING_URI", ""), f"the command as written cannot log in: {reason}"


# --- 3. mask_uri: a password with an unencoded '#' or '?' --------------------------------------

@pytest.mark.parametrize("uri", [
    "https://user:Pa#ss@mlflow.example/",
    "https://user:Pa?ss@mlflow.example/",
    "https://oauth2:ab#cd@gitlab.example/group/data.git",
])
def test_mask_uri_hides_a_password_with_an_unencoded_hash_or_question_mark(uri):
    """mask_uri's promise: "a password in it (scheme://user:PASSWORD@host) ... replaced by ***", and
    the commit: a password whose unencoded '/' ends the authority early is "masked up to the next
    '@'". '#' and '?' end the authority exactly as '/' does (RFC 3986 3.2: the authority "is
    terminated by the next slash ("/"), question mark ("?"), or number sign ("#")"; urllib reads
    ``https://user:Pa#ss@host`` as netloc ``user:Pa``), and generated passwords often hold them.
    _SPLIT_PASSWORD's password stops at '?'/'#' and then needs an '@', so nothing is masked: the
    whole password is printed (an MLFLOW_TRACKING_URI hsnet does not move, as urlsplit sees no
    '@' in the netloc; fetch's error for such a --source)."""
    from hsnet.tracking import mask_text, mask_uri

    secret = uri.split(":", 2)[2].rsplit("@", 1)[0]
    assert secret not in mask_uri(uri), mask_uri(uri)
    assert secret not in mask_text(f"dvc get {uri} data/raw failed"), mask_text(f"dvc get {uri} data/raw failed")


# --- 4. mask_text: two URIs with no space between ----------------------------------------------

@pytest.mark.parametrize("text", [
    "remotes: https://mirror.example/data,https://oauth2:s3cret@gitlab.example/g/d.git",
    "a=https://u:x@h1.example;b=https://oauth2:s3cret@h2.example",
])
def test_mask_text_masks_every_uri_when_two_are_joined_without_a_space(text):
    """mask_text's promise: "text ... with every URI in it through mask_uri". Its URI pattern runs to
    the next space or quote, so two URIs joined by ',' or ';' are one match, and mask_uri masks
    only the first authority: the second URI's password is printed."""
    from hsnet.tracking import mask_text

    assert "s3cret" not in mask_text(text), mask_text(text)


# --- 5. mask_uri: an IPv6 host with an '@' later in the path ---------------------------------

@pytest.mark.parametrize("uri", ["http://[::1]:5000/api/runs/a@b", "http://[::1]/a@b"])
def test_mask_uri_keeps_an_ipv6_host_when_an_at_follows_in_the_path(uri):
    """The commit: mask_uri reads "the authority as urllib reads it"; the brief: masking must not eat
    the host. urllib reads these as host ``::1`` and no user at all (RFC 3986 3.2.2 IP-literal), but
    _SPLIT_PASSWORD takes '[' as the user and ':1]:5000/api/runs/a' as a password: printed as
    ``http://[:***@b``, host and path gone (the URI a local IPv6 MLflow server prints)."""
    import urllib.parse

    from hsnet.tracking import mask_uri

    assert urllib.parse.urlsplit(uri).username is None
    assert mask_uri(uri) == uri, mask_uri(uri)
