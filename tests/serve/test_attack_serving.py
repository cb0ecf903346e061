"""Hostile requests to `hsnet serve` (a real server on a checkpoint file): malformed bodies, protocol
fields that lie, bombs, a model it does not serve, concurrent requests; what the KServe V1/V2
(Open Inference Protocol) specifications ask for."""

from __future__ import annotations

import base64
import http.client
import json
import threading

import pytest
from serve_helpers import b64, post, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    log = tmp_path_factory.mktemp("attack-serve") / "serve.log"
    s = start_server(str(trained["checkpoint"]), log, HSNET_SERVE_MAX_REQUEST_BYTES=4_000_000)
    yield s
    s.stop()


def _raw(url: str, path: str, body: bytes, headers: dict | None = None, chunked: bool = False):
    host = url.split("//", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=120)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(body), 1 << 16):
            piece = body[i:i + (1 << 16)]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
    else:
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data or b"{}")
    except ValueError:
        return resp.status, {"raw": data[:500].decode(errors="replace")}


def _v2(data, *, datatype="BYTES", shape=None, name="image"):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape if shape is not None else [len(data)],
                        "data": data}]}


def test_malformed_bodies_are_4xx_with_a_message(server):
    url = server.url
    for path in ("/v1/models/hsnet:predict", "/v2/models/hsnet/infer"):
        for body in (b"{not json", b"", b"[]", b"null", b'"x"', b"{}"):
            status, out = _raw(url, path, body)
            assert 400 <= status < 500, (path, body, status, out)
            # OIP (KServe's V2 REST spec): a failed request's body is {"error": "<message>"}
            assert isinstance(out.get("error"), str) and out["error"], (path, body, out)
    status, out = _raw(url, "/v2/models/hsnet/infer", b"{not json")
    assert status == 400 and "JSON" in out["error"] and '"inputs"' in out["error"], (status, out)
    status, out = _raw(url, "/v2/no/such/route", b"{}")
    assert status == 404 and out["error"], (status, out)


def test_a_model_it_does_not_serve_is_404(server, photos):
    url = server.url
    status, out = post(url + "/v1/models/other:predict", {"instances": [{"b64": b64(photos["astronaut"])}]})
    assert status == 404, out
    status, out = post(url + "/v2/models/other/infer", _v2([b64(photos["astronaut"])]))
    assert status == 404, out


def test_v2_version_in_the_path_that_is_not_the_one_served(server, photos):
    """OIP: `v2/models/<name>[/versions/<version>]/infer` targets that version; a server that has
    not got it must not answer with another one as if it were."""
    status, out = post(server.url + "/v2/models/hsnet/versions/999/infer", _v2([b64(photos["astronaut"])]))
    assert status in (404, 501) or (status == 200 and out.get("model_version") == "999"), (status, out)


def test_v2_datatype_and_shape_lies(server, photos):
    url = server.url + "/v2/models/hsnet/infer"
    image = b64(photos["astronaut"])
    status, out = post(url, _v2([image], datatype="FP32"))
    assert status == 400 and "BYTES" in out["error"], out
    # shape says one image, data holds three: the OIP request is inconsistent
    status, out = post(url, _v2([image, image, image], shape=[1]))
    assert status == 400 and "shape [1]" in out["error"], (status, out)
    status, out = post(url, _v2([image], shape=[1, 1, 1, 1, 1, 1, 1, 100000000]))
    assert status == 400, (status, out)


def test_base64_bomb_and_huge_bodies(server):
    url = server.url
    zeros = base64.b64encode(bytes(3_000_000)).decode()  # 4 MB of valid base64, not an image
    status, out = post(url + "/v1/models/hsnet:predict", {"instances": [{"b64": zeros[:3_900_000 // 4 * 4]}]})
    assert status == 200 and "not a readable image" in out["predictions"][0]["error"], (status, out)
    big = json.dumps({"instances": [{"b64": "A" * 6_000_000}]}).encode()
    status, out = _raw(url, "/v1/models/hsnet:predict", big)
    assert status == 413 and "max_request_bytes" in out["error"], (status, out)
    # streamed: no Content-Length, refused once the body passes the limit, in the same shape
    status, out = _raw(url, "/v1/models/hsnet:predict", big, chunked=True)
    assert status == 413 and "max_request_bytes" in out["error"], (status, out)
    status, out = _raw(url, "/v2/models/hsnet/infer", json.dumps(_v2(["A" * 6_000_000])).encode(), chunked=True)
    assert status == 413 and "max_request_bytes" in out["error"], (status, out)


def test_concurrent_requests_get_their_own_answers(server, photos):
    url = server.url + "/v1/models/hsnet:predict"
    bodies = [{"instances": [{"b64": b64(photos["astronaut"])}] * (1 + i % 3)} for i in range(8)]
    results: list = [None] * len(bodies)

    def go(i):
        results[i] = post(url, bodies[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = results[0][1]["predictions"][0]
    for i, (status, out) in enumerate(results):
        assert status == 200, out
        assert len(out["predictions"]) == 1 + i % 3
        for p in out["predictions"]:
            assert [f["expression"] for f in p["faces"]] == [f["expression"] for f in first["faces"]]


def test_the_readme_curl_line_works(server, photos, tmp_path):
    """README.md's `printf ... | curl ...` against the server (its port instead of 8080)."""
    import re
    import subprocess
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (line,) = re.findall(r"^printf '\{\"instances\".*\n  curl .*$", readme, flags=re.M)
    (tmp_path / "astronaut.jpg").write_bytes(photos["astronaut"])
    line = line.replace("localhost:8080", server.url.split("//", 1)[1])
    out = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout)
    assert got["model_name"] == "hsnet" and len(got["predictions"]) == 1
    assert len(got["predictions"][0]["faces"]) == 1 and got["predictions"][0]["size"] == [512, 512]


def test_a_photo_the_detector_fails_on_is_that_photos_error_not_the_requests(trained, photos, tmp_path):
    """A photo MTCNN fails on alone (out of memory: a 63 Mpx photo under a raised pixel limit on a
    server with 1.2 GB to spare; on a GPU, CUDA's out of memory) failed the whole request, the other
    photos' answers lost. It must be that photo's error, as a photo that can't be read is."""
    import subprocess

    from PIL import Image
    from serve_helpers import encode

    s = start_server(str(trained["checkpoint"]), tmp_path / "serve.log", HSNET_SERVE_MAX_IMAGE_PIXELS=70_000_000,
                     HSNET_SERVE_MAX_REQUEST_PIXELS=80_000_000)
    try:
        vm = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{s.proc.pid}/status")
                  if line.startswith("VmSize"))
        subprocess.run(["prlimit", f"--pid={s.proc.pid}", f"--as={vm + (1200 << 20)}"], check=True)
        big = encode(Image.new("RGB", (8000, 7900), (90, 120, 150)), "PNG")
        status, body = post(s.url + "/v1/models/hsnet:predict",
                            {"instances": [{"b64": b64(photos["astronaut"])}, {"b64": b64(big)}]}, timeout=300)
    finally:
        s.stop()
    assert status == 200, body
    first, second = body["predictions"]
    assert len(first["faces"]) == 1 and first["size"] == [512, 512]
    assert second["faces"] == [] and "8000x7900" in second["error"], second
