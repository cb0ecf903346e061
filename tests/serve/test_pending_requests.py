"""The model server holds at most max_pending_bytes of request bodies at once (hsnet/limits.py):
each request holds its body in memory while it waits for a worker, and before this limit nothing
bounded how many a local `hsnet serve` took in (a left-over of sessions 23-30: "queued request
bodies are held in memory"). The bytes received count: a request whose Content-Length would pass
the limit gets 503 with Retry-After before its body is read, one whose arriving bytes pass it as
they arrive; connections that only send headers hold nothing; health checks are never refused;
a request that ends, however it ends, frees its bytes."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import pytest
from serve_helpers import b64, get, post, start_server
from servers import serve_overlay_probe

_PROBE = r"""
import asyncio, json
from fastapi import HTTPException
from hsnet.serve import BodyLimit

async def main():
    release = asyncio.Event()
    held = 0

    async def app(scope, receive, send):
        nonlocal held
        if scope["method"] == "POST":
            message = await receive()
            if message.get("body", b"").startswith(b"fail"):
                raise HTTPException(status_code=400, detail="bad")
            if message.get("body", b"").startswith(b"hold"):
                held += 1
                await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit = BodyLimit(app, max_bytes=100, max_pending_bytes=150)

    async def call(method, body=b"x" * 60, declared=True):
        sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(m):
            sent.append(m)

        headers = [(b"content-length", str(len(body)).encode())] if declared else []
        scope = {"type": "http", "method": method, "path": "/v1/models/hsnet:predict", "query_string": b"",
                 "headers": headers}
        try:
            await limit(scope, receive, send)
        except HTTPException as exc:
            return [exc.status_code, {}, ""]
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return [start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body.decode()]

    out = {}
    first = [asyncio.ensure_future(call("POST", b"hold" + b"x" * 56)) for _ in range(2)]  # 120 bytes held
    while held < 2:
        await asyncio.sleep(0)
    out["third"] = await call("POST")  # 60 more: 180 > 150
    out["fits"] = await call("POST", b"x" * 30)  # 150: at the limit, served
    out["chunked_fits"] = await call("POST", b"x" * 30, declared=False)  # no Content-Length: what arrives, 150
    out["chunked"] = await call("POST", b"x" * 40, declared=False)  # 160 > 150: refused as it arrives
    out["health"] = await call("GET", b"")
    out["held"] = limit.pending
    release.set()
    out["first"] = [await f for f in first]
    out["failed"] = [await call("POST", b"fail" + b"x" * 96) for _ in range(3)]  # each frees its bytes
    out["after"] = await call("POST", b"x" * 100, declared=False)
    out["over_size"] = await call("POST", b"y" * 101)
    out["pending_at_end"] = limit.pending
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_request_over_the_pending_bytes_gets_503_and_each_request_frees_its_bytes():
    out = serve_overlay_probe(_PROBE)
    status, headers, body = out["third"]
    assert status == 503 and headers["retry-after"] == "1"
    error = json.loads(body)["error"]
    assert "holds 120 bytes" in error and "this one's 60" in error and "limit of 150 bytes" in error
    assert "max_pending_bytes (HSNET_SERVE_MAX_PENDING_BYTES)" in error
    assert out["fits"][0] == 200  # 120 + 30 = 150: at the limit, served
    assert out["chunked_fits"][0] == 200
    assert out["chunked"][0] == 503  # refused as its bytes arrive: no Content-Length to refuse it by
    assert out["health"][0] == 200  # a readiness probe is never refused
    assert out["held"] == 120
    assert [s for s, _, _ in out["first"]] == [200, 200]
    assert [s for s, _, _ in out["failed"]] == [400, 400, 400]  # 3 x 100 > 150: each freed its bytes
    assert out["after"][0] == 200  # a chunked body of 100 bytes fits an empty server
    assert out["over_size"][0] == 413
    assert out["pending_at_end"] == 0


def test_the_pending_budget_must_hold_one_request_at_the_limit(monkeypatch):
    from hsnet.errors import HSNetError
    from hsnet.limits import PENDING_AT_THE_LIMIT, Limits

    from doc_claims import claimed
    from serve_helpers import ROOT

    claimed("`hsnet serve` also holds at most 8 bodies' worth (256 MiB) of requests at once", ROOT / "README.md")
    assert Limits().max_pending_bytes == 8 * 32 * 1024 * 1024  # README's: 8 bodies of 32 MiB, 256 MiB
    assert Limits.from_env(max_request_bytes=1000).max_pending_bytes == PENDING_AT_THE_LIMIT * 1000
    monkeypatch.setenv("HSNET_SERVE_MAX_PENDING_BYTES", "999")
    with pytest.raises(HSNetError, match=r"max_pending_bytes \(HSNET_SERVE_MAX_PENDING_BYTES\) 999 is below "
                                         r"max_request_bytes \(HSNET_SERVE_MAX_REQUEST_BYTES\) 1,000"):
        Limits.from_env(max_request_bytes=1000)


@pytest.mark.slow
def test_slow_clients_fill_the_server_and_it_answers_again_once_they_go(trained, photos, tmp_path):
    """A real `hsnet serve` whose pending budget holds two requests of 100 kB: two clients that send
    99 kB of their bodies and then stall (two huge uploads on a slow link) take nearly all of it; a
    third request is refused at once with 503 and the limit's name, the readiness probe still
    answers, and once the two go the server answers requests again."""
    server = start_server(str(trained["checkpoint"]), tmp_path / "serve.log", HSNET_SERVE_MAX_PENDING_BYTES=200_000,
                          HSNET_SERVE_MAX_REQUEST_BYTES=150_000)
    stalled = []
    try:
        url = server.url + "/v1/models/hsnet:predict"
        request = {"instances": [{"b64": b64(photos["astronaut"])}]}
        where = urlparse(server.url)
        for _ in range(2):
            s = socket.create_connection((where.hostname, where.port), timeout=30)
            s.sendall(b"POST /v1/models/hsnet:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"instances\": [" + b" " * 99_000)  # all but the end
            stalled.append(s)
        deadline, status, body = time.monotonic() + 30, None, {}
        while time.monotonic() < deadline:  # the server reads the stalled requests' headers in its own time
            status, body = post(url, request)
            if status == 503:
                break
            time.sleep(0.2)
        assert status == 503, (status, body)
        assert "max_pending_bytes (HSNET_SERVE_MAX_PENDING_BYTES)" in body["error"]
        assert get(server.url + "/v2/models/hsnet/ready")[0] == 200
        for s in stalled:
            s.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = post(url, request)
            if status != 503:
                break
            time.sleep(0.2)
        assert status == 200 and len(body["predictions"][0]["faces"]) == 1
    finally:
        for s in stalled:
            s.close()
        server.stop()


def _response(s: socket.socket) -> tuple[int, dict, dict]:
    """The status, headers and JSON body of the HTTP/1.1 response on ``s`` (Connection: close)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body or b"{}")


@pytest.mark.slow
def test_a_refused_upload_gets_the_503_not_a_connection_reset(trained, tmp_path):
    """A server that answers and closes while the client is still sending its body gives it a TCP
    reset, not the answer: the client sees "Connection reset by peer" (or a broken pipe) and
    can't tell a full server from a crash. A refused upload -- refused from its Content-Length, or
    as its chunked bytes arrive -- must get the whole 503 with Retry-After and the limit's name,
    once it has sent its body (read and dropped)."""
    mib = 1 << 20
    server = start_server(str(trained["checkpoint"]), tmp_path / "serve.log", HSNET_SERVE_MAX_REQUEST_BYTES=2 * mib,
                          HSNET_SERVE_MAX_PENDING_BYTES=5 * mib // 2)
    where = urlparse(server.url)
    stalled = []
    try:
        for _ in range(2):  # 2 MiB held: 1 MiB of each body, then nothing
            s = socket.create_connection((where.hostname, where.port), timeout=60)
            s.sendall(b"POST /v1/models/hsnet:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % (mib + 10) + b" " * mib)
            stalled.append(s)
        time.sleep(1)  # the server reads them
        body = b" " * mib
        for framing in (b"Content-Length: %d\r\n\r\n%s" % (mib, body),  # refused from its header
                        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (mib, body)):  # as it arrives
            with socket.create_connection((where.hostname, where.port), timeout=60) as s:
                s.sendall(b"POST /v1/models/hsnet:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Connection: close\r\n" + framing)
                status, headers, answer = _response(s)
            assert status == 503 and headers.get("retry-after") == "1", (status, headers, answer)
            assert "max_pending_bytes (HSNET_SERVE_MAX_PENDING_BYTES)" in answer["error"]
    finally:
        for s in stalled:
            s.close()
        server.stop()


@pytest.mark.slow
def test_a_client_gone_mid_upload_is_one_info_line_not_an_error_traceback(trained, tmp_path):
    """A phone that loses its signal mid-upload is a client's doing, as a typo is: hsnet/serve.py
    answers those with one INFO line ("KServe's own handlers log it as an ERROR with a traceback,
    which pages whoever alerts on ERROR"). Starlette raises ClientDisconnect from the body read, and
    it reached uvicorn as "Exception in ASGI application" with a traceback (found by attack 31b).
    Expected: no ERROR and no traceback in the server's log, a line that says the client went
    away, its bytes freed (the next request is served)."""
    log = tmp_path / "serve.log"
    server = start_server(str(trained["checkpoint"]), log)
    where = urlparse(server.url)
    try:
        with socket.create_connection((where.hostname, where.port), timeout=30) as s:
            s.sendall(b"POST /v1/models/hsnet:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"instances\": [" + b" " * 1000)
            time.sleep(0.5)
        deadline = time.monotonic() + 20
        while "went away" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = post(server.url + "/v1/models/hsnet:predict", {"instances": []})
        assert status == 200, (status, body)
    finally:
        server.stop()
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    assert "went away" in text, text[-3000:]
