"""Attack 24f: today's docs against today's code: what hsnet refuses (the first step's checks, the
stem_weights keyword) held to what the rest of hsnet then does with what was let through."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hsnet.errors import HSNetError
from doc_claims import claimed

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_stem_weights_skip_never_trains_with_an_untrained_frozen_stem(tmp_path, monkeypatch):
    """README, "VGGFace2 stem weights (KTL)": "If the weights can't be had, HSNet refuses to build
    and says how to provide them; it never trains silently without them." The params schema reads
    ``model.stem_weights`` (today: its keyword ``vggface2`` in any case, an empty value refused) and
    lets ``skip`` through as a file name; hsnet.checkpoint.build_model, which ``hsnet train`` builds
    its model with (train.build_engine), hands it to HSNet, for which ``skip`` is the internal value
    "the stem's weights come from a checkpoint about to be loaded" (SKIP_STEM_WEIGHTS): no file is
    read, and the stem stays He-initialised but frozen. A params.yaml (or ``--set
    model.stem_weights=skip``) with no file ``skip`` around must be refused by the schema or by the
    build, as any other missing file is (``stem weights file ... does not exist``)."""
    from hsnet import checkpoint
    from hsnet.params import ModelParams, section

    claimed("If the weights can't be had, HSNet refuses to build and says how to provide them; it never "
            "trains silently without them.", README)
    monkeypatch.chdir(tmp_path)  # no file named "skip" here
    try:
        model = section(ModelParams, {"stem_weights": "skip", "ktl": True})
    except HSNetError:
        return  # refused by the schema: fine
    try:
        net = checkpoint.build_model(7, model)
    except HSNetError:
        return  # refused by the build, as a missing file is: fine
    stem_frozen = not any(p.requires_grad for p in net.stem.parameters())
    pytest.fail(f"model.stem_weights 'skip' (no such file) built a KTL model without reading any weights "
                f"(stem_weights_sha256 {net.stem_weights_sha256}, stem frozen: {stem_frozen}): training "
                "would run on a random, frozen stem without a word")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_uri_the_first_step_takes_as_a_server_is_treated_as_one(monkeypatch):
    """README, "Kubeflow Pipelines": the first step takes "a non-empty ``mlflow_tracking_uri`` that
    is a server's ``http(s)://`` URL"; components.convert._server_uri reads the scheme in any case,
    so ``HTTP://mlflow:5000`` passes check_run (and MLflow, which lower-cases schemes, talks to that
    server). The rest of hsnet must then treat it as the server it accepted, as README, "Training
    and evaluation", says of a server: "An unreachable server stops the command before training
    starts" (hsnet.tracking.connect's health check), and a new experiment ``hsnet`` keeps its
    artifacts where the server chooses (hsnet.tracking.artifact_location: None for a server), not
    in the project's ``mlflow/artifacts`` folder, which in a pod is deleted with it. Both test the
    scheme with a case-sensitive ``startswith(("http://", "https://"))``."""
    from components.convert import check_run
    from hsnet import tracking

    claimed("An unreachable server stops the command before training starts.", README)
    claimed("a server's `http(s)://` URL with a host and no", README)
    uri = f"HTTP://127.0.0.1:{_closed_port()}"
    check_run("sample", mlflow_tracking_uri=uri)  # the first step takes it as a server's URL
    assert tracking.artifact_location(uri) == tracking.artifact_location(uri.lower()) is None, (
        f"{uri}: a new experiment would keep its artifacts at {tracking.artifact_location(uri)} (the pod's "
        "disk), not the server's artifact store as for the same URI in lower case")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(HSNetError, match="unreachable"):
        tracking.connect()  # "http://..." is refused here, by name
