"""Session 25d: `hsnet serve` against the protocols its clients speak (the Open Inference Protocol's
REST inference request, as KServe and Triton clients send it). A real server on a trained
checkpoint; every expectation is the OIP text, not the server's own code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SERVE = Path(__file__).resolve().parent / "serve"
sys.path.insert(0, str(SERVE))  # the serving tests' helpers (serve_helpers), as tests/serve's files import them
from serve_helpers import b64, post, start_server  # noqa: E402

# tests/serve/conftest.py's ``photos`` fixture, reused (this file lives beside tests/serve, not in it)
_spec = importlib.util.spec_from_file_location("serve_conftest_25d", SERVE / "conftest.py")
_serve_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_serve_conftest)
photos = _serve_conftest.photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    s = start_server(str(trained["checkpoint"]), tmp_path_factory.mktemp("attack-25d") / "serve.log")
    yield s
    s.stop()


def test_v2_an_output_the_model_does_not_have_is_not_answered_with_another(server, photos):
    """The Open Inference Protocol (kserve/open-inference-protocol, inference_rest.md, "Inference
    Request JSON Object") defines ``"outputs"`` as "The output tensors requested for this
    inference", and its example says of a request naming ``output0``: "the inference server must
    return the “output0” output tensor". hsnet/serve.py's docstring and README ("Serving in
    production") promise the V2 endpoint is that protocol, and the model metadata
    (``GET /v2/models/hsnet``) names one output, ``records``.

    A client that asks for an output the model doesn't have (``"outputs": [{"name": "faces"}]``: a
    typo, or a client written for another model) gets HTTP 200 with the ``records`` tensor it did
    not ask for and nothing it did: :meth:`hsnet.serve.HSNetModel.predict` never reads
    ``payload.request_outputs``. It must be refused (4xx, ``{"error"}`` naming the output), as
    every other request the model can't answer is."""
    body = {"id": "r-25d", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                       "data": [b64(photos["no_face"])]}],
            "outputs": [{"name": "faces"}]}
    status, out = post(server.url + "/v2/models/hsnet/infer", body)
    names = [o.get("name") for o in out.get("outputs", [])]
    assert 400 <= status < 500 and "faces" in out.get("error", ""), (
        f"asked for output 'faces', got HTTP {status} with outputs {names}")
    body["outputs"] = [{"name": "records"}]  # the one it has: answered
    status, out = post(server.url + "/v2/models/hsnet/infer", body)
    assert status == 200 and [o.get("name") for o in out["outputs"]] == ["records"], (status, out)
