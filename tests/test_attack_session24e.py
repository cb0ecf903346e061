"""Attack 24e: today's alias lock around register's ``candidate`` (commit 0b3308b), with real
processes on a real MLflow store (SQLite, as hsnet's default store; the processes share it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hsnet.registry as registry_mod
from hsnet.errors import HSNetError

ROOT = Path(__file__).resolve().parents[1]
NAME = "hsnet-sample"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _lock_exists(client) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(NAME + registry_mod.LOCK_SUFFIX)
        return True
    except MlflowException:
        return False


def _promote_killed_holding_the_lock(cwd: Path) -> None:
    """A real process takes the promotion lock and is killed (SIGKILL: an OOM kill, a pod's
    deadline) while holding it, as a killed ``hsnet promote`` leaves it."""
    code = textwrap.dedent(f"""
        import os, signal
        from hsnet import registry
        with registry._promotion_lock(registry._client(), {NAME!r}, "promote"):
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def test_register_stopped_by_a_stale_lock_does_not_say_it_changed_nothing(local_mlflow, evaluated, quick_log_model,
                                                                          monkeypatch, tmp_path):
    """docs/security.md: a refused promotion "lost the race and changed nothing". Today register
    takes the same lock to set ``candidate``, after it has made the version; with a lock left by a
    killed promote it ends with an error that quotes the promotion's refusal. The version *was*
    made (it is in the registry, tagged registration=pending), so the error must not tell the user
    that nothing changed: someone reading "changed nothing" registers another checkpoint or
    promotes the old candidate, leaving a half-finished version behind. (FINISH_WAIT_S, 60 s,
    is shortened here: the wait itself is not what is checked.)"""
    from mlflow import MlflowClient

    _promote_killed_holding_the_lock(tmp_path)
    monkeypatch.setattr(registry_mod, "FINISH_WAIT_S", 1)
    ck, m, _ = evaluated(0)
    with pytest.raises(HSNetError) as refused:
        registry_mod.register(ck, m, "sample")
    made = [mv for mv in MlflowClient().search_model_versions(f"name='{NAME}'") if str(mv.version) == "1"]
    assert made and made[0].tags.get(registry_mod.STATE_TAG) == registry_mod.PENDING  # it was made
    assert "changed nothing" not in str(refused.value), str(refused.value)


def test_a_promotion_is_not_refused_because_a_registration_is_setting_candidate(
        local_mlflow, evaluated, quick_log_model, register_killed, tmp_path):
    """README: "One promotion at a time: of two at once, one wins and the other says it lost".
    A registration is not a promotion: before today ``hsnet promote`` never failed because a
    ``hsnet register`` of the same model was running. Today register holds the promotion lock
    while it reads and moves ``candidate`` (and itself waits FINISH_WAIT_S = 60 s for a
    promotion), but ``promote`` does not wait at all: a promotion that meets a registration in
    that window is refused as "lost the race", and a Kubeflow run's promote step fails because
    another run of the same dataset was registering. Here the registering process is real
    (hsnet register finishing a version a killed register left), its registry slow to answer
    the alias write (3 s, a loaded tracking server); the first promotion (version 1, no production
    yet) should wait for it and then promote, as register waits for a promotion."""
    from mlflow import MlflowClient

    go = tmp_path / "go"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path

        import torch  # noqa: F401 - imported while the test prepares: the test stays quick
        from mlflow import MlflowClient
        from hsnet import registry

        real = MlflowClient.set_registered_model_alias

        def slow(self, name, alias, version):  # the registry answering the alias write slowly
            time.sleep(3)
            return real(self, name, alias, version)

        MlflowClient.set_registered_model_alias = slow
        while not Path({str(go)!r}).exists():
            time.sleep(0.05)
        ckpt, metrics = Path({str(go)!r}).read_text().splitlines()
        print(registry.register(ckpt, metrics, "sample"))
    """)
    finishing = subprocess.Popen([sys.executable, "-c", code], env=_env(), cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ck1, m1, _ = evaluated(0)
        registry_mod.register(ck1, m1, "sample")
        ck2, m2, _ = evaluated(0)
        register_killed(ck2, m2, "sample")  # version 2, stopped before its alias: the next register finishes it
        (tmp_path / "go.tmp").write_text(f"{ck2}\n{m2}\n")
        (tmp_path / "go.tmp").rename(go)
        client = MlflowClient()
        deadline = time.monotonic() + 30
        while not _lock_exists(client):
            assert finishing.poll() is None, finishing.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the registration never took the lock"
            time.sleep(0.02)
        try:
            decision = registry_mod.promote(NAME, version=1)
        except registry_mod.PromotionLost as exc:
            pytest.fail(f"the promotion was refused because a registration was setting candidate: {exc}")
        assert decision["promoted"] and decision["production"] == 1
    finally:
        if not go.exists():
            finishing.kill()
        out, _ = finishing.communicate(timeout=60)
    assert finishing.returncode == 0, out[-3000:]
