"""Attack, session 20b: the README walked through as a newcomer (make pipeline, the promotion flow,
the guards' verdict under dvc repro). Each test states the promise it checks.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from hsnet import tracking
from hsnet.cli import main
from hsnet.registry import promote, promotion_history


def _versions(client: MlflowClient, name: str, tmp_path, n: int) -> None:
    client.create_registered_model(name)
    for i in range(n):
        src = tmp_path / f"v{i + 1}"
        src.mkdir()
        client.create_model_version(name, str(src))


def test_history_previous_is_the_previous_alias_after_an_unchanged_or_failed_promotion(local_mlflow, tmp_path):
    """registry.promotion_history's docstring: each row holds "production and previous after it
    (versions, None where there was none)"; README: each record is tagged with `production` and
    `previous`. After a rollback (production 1, previous 2), a promotion that changes nothing, and
    one that fails, leave `previous` at version 2: the history must say 2, not "-" (a reader of
    `--history` would conclude there is nothing to roll back to)."""
    client = MlflowClient(local_mlflow)
    name = "hsnet-prev"
    _versions(client, name, tmp_path, 2)
    client.set_registered_model_alias(name, "production", "1")
    client.set_registered_model_alias(name, "previous", "2")
    client.set_registered_model_alias(name, "candidate", "1")

    r = promote(name)  # candidate is production: nothing to do
    assert r["promoted"] is False
    with pytest.raises(Exception):
        promote(name, version=99)  # no such version: recorded as an error
    assert str(client.get_model_version_by_alias(name, "previous").version) == "2"  # still there

    rows = promotion_history(name)
    assert [r["outcome"] for r in rows] == ["refused", "unchanged"]  # an HSNetError: refused (session 20)
    assert [(r["production"], r["previous"]) for r in rows] == [(1, 2), (1, 2)], rows


def test_history_lists_every_promotion_not_the_last_100(local_mlflow, tmp_path, capsys):
    """README: `hsnet promote --name hsnet-sample --history  # every promotion and rollback, refused
    ones too`; the CLI's help: "list the promotions and rollbacks of --name". A model promoted by every
    Kubeflow run (`promote` on) passes 100 records in a few months; the audit trail must not drop the
    oldest silently (at least it must say that some were left out)."""
    client = MlflowClient(local_mlflow)
    name = "hsnet-long"
    client.create_registered_model(name)
    experiment = client.create_experiment(tracking.EXPERIMENT)
    for i in range(105):
        client.create_run(experiment, start_time=1_700_000_000_000 + i * 1000,
                          tags={"step": "promote", "model": name, "action": "promote", "outcome": "moved",
                                "production": str(i + 1), "previous": str(i) if i else ""})
    assert main(["promote", "--name", name, "--history"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = out[1:]
    said_so = any("more" in line or "left out" in line or "oldest" in line for line in out)
    assert len(rows) == 105 or said_so, f"{len(rows)} rows listed of 105, and nothing says so"


# the verdict copy at a --checkpoint-uri prefix: tests/test_attack_session20a.py
# (test_deleting_the_verdict_the_error_names_lets_a_durable_training_train_again)


def test_history_piped_into_head_ends_without_a_traceback(local_mlflow, tmp_path):
    """`hsnet promote --name hsnet-sample --history | head` (the history grows with every pipeline
    run) printed a Python traceback (BrokenPipeError from the print loop in hsnet/cli.py _promote),
    as did `python -m hsnet.summary runs | head`. Python's documented handling of SIGPIPE
    (docs.python.org/3/library/signal.html, "Note on SIGPIPE") is to catch BrokenPipeError and exit
    quietly: a reader that stops reading is not an error of the command."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    client = MlflowClient(local_mlflow)
    name = "hsnet-piped"
    client.create_registered_model(name)
    experiment = client.create_experiment(tracking.EXPERIMENT)
    for i in range(40):
        client.create_run(experiment, start_time=1_700_000_000_000 + i * 1000,
                          tags={"step": "promote", "model": name, "action": "promote", "outcome": "refused",
                                "production": "1", "reason": "does not beat production " + "x" * 150})
    hsnet = Path(sys.executable).parent / "hsnet"
    r, w = os.pipe()
    os.close(r)  # the reader (head) has gone before the history is printed
    try:
        done = subprocess.run([str(hsnet), "promote", "--name", name, "--history"], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr[-1500:]


def test_a_broken_pipe_that_is_not_stdouts_is_still_an_error(monkeypatch, capsys):
    """Follow-up: only a reader of stdout that has gone ends a command quietly; a BrokenPipeError from
    a socket or a child's pipe (stdout still open) is raised, not turned into a silent exit 141."""
    from hsnet import cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe (a socket)")
    parser = cli.build_parser()
    args = parser.parse_args(["promote", "--name", "x"])
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    monkeypatch.setattr(args, "func", broken)
    with pytest.raises(BrokenPipeError):
        main(["promote", "--name", "x"])
