"""Attack, session 21a: ``hsnet serve`` against the inference protocols it claims, as a client
engineer who codes against the specifications (KServe's V1 protocol, the Open Inference Protocol
REST API, KServe's repository extension), not against this server.

One real server (``hsnet serve`` on a checkpoint file, a subprocess on loopback, as
tests/serve does it) answers every test. Each test fails on the code as it stands and passes
once the defect its docstring names is fixed.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.serve.serve_helpers import b64, encode, get, post, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    s = start_server(str(trained["checkpoint"]), tmp_path_factory.mktemp("attack21a") / "serve.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def photo() -> str:
    """scikit-image's astronaut (one face, 512x512) as base64 JPEG text."""
    from PIL import Image
    from skimage import data

    return b64(encode(Image.fromarray(data.astronaut()), "JPEG", quality=95))


def _v2(images: list[str], **extra) -> dict:
    return {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)], "data": images}], **extra}


# --- 1. V1 with a JSON media type that carries a charset: "unexpected request of type bytes" -------
def test_v1_accepts_json_sent_with_a_charset_parameter(server, photo):
    """README "Serving in production": "V1 POST /v1/models/hsnet:predict: {"instances": [{"b64":
    ...}]}"; KServe's V1 protocol takes a JSON body. ``application/json; charset=utf-8`` is the
    same media type with a parameter (RFC 8259 section 11 / RFC 9110 8.3.1: parameters don't
    change the type); it is what OkHttp's own JSON recipe and .NET's ``StringContent(json,
    Encoding.UTF8, "application/json")`` send.

    KServe's ``DataPlane.decode`` passes a body whose Content-Type is not literally one of
    ``application/json``, ``application/cloudevents+json``, ``application/ld+json`` through as
    raw bytes, and ``HSNetModel.predict`` refuses it: HTTP 400 "unexpected request of type
    bytes". The V2 endpoint (FastAPI's body parsing) accepts the same header, so only V1
    clients are turned away, with a message that does not say why.

    Expected: the request is answered as with ``Content-Type: application/json``."""
    body = {"instances": [{"b64": photo}]}
    plain = post(server.url + "/v1/models/hsnet:predict", body)
    assert plain[0] == 200, plain  # the same body with the bare media type
    status, out = post(server.url + "/v1/models/hsnet:predict", body,
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200, (status, out)
    assert out["predictions"] == plain[1]["predictions"]


# --- 2. V2 JSON without application/json: told to use the header the server refuses (415) --------
def test_v2_json_without_json_content_type_is_not_sent_to_the_refused_binary_extension(server, photo):
    """README: "JSON only: the binary tensor extension (Inference-Header-Content-Length) gets
    HTTP 415"; docs/security.md: "The V2 binary tensor extension is refused (415): the server
    takes JSON only".

    A V2 JSON body posted as ``curl -d @req.json URL`` (curl's and urllib's default
    ``application/x-www-form-urlencoded``), or with ``text/plain`` (fetch()'s default for a string
    body), gets HTTP 400 "received byte inputs, but the 'inference-header-content-length' header
    is missing": KServe took it for the binary extension. The client that follows the message
    and adds the header is then refused with 415 "not supported: send the images as JSON" --
    which it was doing. Neither answer says the Content-Type is what is wrong.

    Expected: the JSON is answered, or refused with a 4xx that does not point to the binary
    extension's header (e.g. naming ``Content-Type: application/json``)."""
    body = json.dumps(_v2([photo])).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain;charset=UTF-8"):
        status, out = post(server.url + "/v2/models/hsnet/infer", body, headers={"Content-Type": content_type})
        if status == 200:
            assert out["outputs"][0]["shape"] == [1], out
            continue
        assert 400 <= status < 500 and isinstance(out.get("error"), str), (content_type, status, out)
        assert "inference-header-content-length" not in out["error"].lower(), (
            f"Content-Type {content_type!r}: {out['error']!r} sends the client to the binary extension, "
            "which this server refuses with 415")


# --- 3. KServe's V1 request form {"inputs": [...]} ----------------------------------------------
def test_v1_takes_the_inputs_form_kserve_documents(server, photo):
    """KServe's V1 protocol (https://kserve.github.io/website/docs/concepts/architecture/data-plane/
    v1-protocol): "Predict | POST | /v1/models/<model_name>:predict | {"instances": []}* or
    {"inputs": []}*"; V1 "is based on the TensorFlow Serving REST API", whose columnar form is
    ``{"inputs": ...}`` with binary values as ``{"b64": ...}``. hsnet/serve.py claims KServe's V1.

    ``HSNetModel._v1_inputs`` reads ``instances`` only: ``{"inputs": [{"b64": ...}]}`` is refused
    with HTTP 400 'expected {"instances": ...}'.

    Expected: the same record as for ``instances`` (under ``predictions``, or TF Serving's
    ``outputs`` for the columnar form)."""
    status, by_instances = post(server.url + "/v1/models/hsnet:predict", {"instances": [{"b64": photo}]})
    assert status == 200, by_instances
    status, out = post(server.url + "/v1/models/hsnet:predict", {"inputs": [{"b64": photo}]})
    assert status == 200, (status, out)
    records = out.get("predictions", out.get("outputs"))
    assert records == by_instances["predictions"], out


# --- 4. a V2 request id the response can't carry: HTTP 500 after the work is done -----------------
def test_a_v2_request_id_that_cannot_be_echoed_is_a_4xx_not_a_500(server, photo):
    """OIP ($inference_request): ""id" : An identifier for this request. Optional, but if
    specified this identifier must be returned in the response."; README: "A refused request's
    body is the protocol's {"error": "<message>"} ... (a body that isn't JSON or not a V2 request:
    HTTP 400)".

    ``{"id": "\\ud800", ...}`` is well-formed JSON (an escaped lone surrogate; Python's json and
    pydantic take it). The images are decoded and classified, then KServe's ORJSONResponse can't
    encode the echoed id: HTTP 500 "TypeError : str is not valid UTF-8: surrogates not allowed",
    an internal error (and an alert) for a client mistake, after a worker spent the inference.

    Expected: a 4xx naming the id (refused before the work), as any other invalid field is."""
    status, out = post(server.url + "/v2/models/hsnet/infer", _v2([photo], id="req-\ud800"))
    assert 400 <= status < 500, (status, out)
    assert isinstance(out.get("error"), str) and "id" in out["error"], out
    # the server is still answering
    status, out = post(server.url + "/v2/models/hsnet/infer", _v2([photo], id="req-1"))
    assert status == 200 and out["id"] == "req-1", out


# --- 5. the repository API: load of a model the server does not hold is "not ready" (503) ---------
def test_loading_a_model_the_server_does_not_hold_is_404_like_the_other_endpoints(server):
    """hsnet/serve.py: "KServe's repository API: POST /v2/repository/models/<name>/load reloads
    the model"; the server holds one model, ``hsnet``. Every other endpoint answers a name it
    does not hold with 404 "Model with name other does not exist" (V1 predict, V2 infer, metadata,
    readiness, and ``/v2/repository/models/other/unload``), and the repository extension's
    protocol (Triton's model_repository extension, which KServe's follows) says "A failed load
    request must be indicated by an HTTP error status (typically 400)".

    ``_Repository.load`` raises HSNetError "no model 'other' here", which KServe's extension
    turns into ModelNotReady: HTTP 503 "Model with name other is not ready. Error type: <class
    'hsnet.errors.HSNetError'> ...". 503 is "try again later": a deploy script or client with a
    retry policy retries a name that will never exist, and the answer says "not ready" instead
    of "no such model".

    Expected: 404 (or another non-retryable 4xx) with ``{"error"}`` naming the model."""
    assert get(server.url + "/v2/models/other/ready")[0] == 404  # how the server answers this name elsewhere
    status, out = post(server.url + "/v2/repository/models/other/load", {})
    assert 400 <= status < 500, (status, out)
    assert "other" in out.get("error", ""), out
    assert get(server.url + "/v2/models/hsnet/ready") == (200, {"name": "hsnet", "ready": True})


# --- 6. the version every response names can't be asked for ---------------------------------------
def test_the_version_the_server_reports_can_be_addressed(server, photo):
    """OIP (inference_rest.md): ""model_version" : The specific model version used for
    inference. Inference servers that do not implement versioning should not provide this field
    in the response." and "if the model has been configured to implement a version, the request
    path could look something like v2/models/my_model/versions/v10"; README: "every response
    names" the version (``model_version``).

    The server sets ``model_version`` in every V2 response, so by the protocol it implements
    versions, but ``POST /v2/models/hsnet/versions/<that version>/infer`` and ``GET
    .../versions/<that version>/ready`` answer 501 "Model versioning not supported yet": a client
    that pins the version it was answered by (to be sure a reload or a canary doesn't change it
    under it) can't send a single request.

    Expected: the versioned paths of the version being served answer as the unversioned ones
    (another version may stay 404/501, tests/serve/test_attack_serving.py)."""
    status, first = post(server.url + "/v2/models/hsnet/infer", _v2([photo]))
    assert status == 200, first
    version = first["model_version"]
    base = f"{server.url}/v2/models/hsnet/versions/{urllib.parse.quote(version, safe='')}"
    status, out = post(base + "/infer", _v2([photo]))
    assert status == 200, (version, status, out)
    assert out["model_version"] == version and out["outputs"][0]["data"] == first["outputs"][0]["data"]
    assert get(base + "/ready") == (200, {"name": "hsnet", "ready": True})
