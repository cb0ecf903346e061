"""Helpers of the serving tests: `hsnet serve` as users run it (a subprocess on a free loopback port), HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def start_server(model: str, log: Path, **env):
    """`hsnet serve --model MODEL` on a free port; returns the running Server (ready: the model is loaded)."""
    from servers import Server, free_port

    port = free_port()
    hsnet = str(Path(sys.executable).with_name("hsnet"))
    environ = {**os.environ, **{k: str(v) for k, v in env.items()}, "OMP_NUM_THREADS": "1"}
    return Server([hsnet, "serve", "--model", model, "--port", str(port), "--host", "127.0.0.1", "--threads", "2"],
                  f"http://127.0.0.1:{port}", "/v2/models/hsnet/ready", environ, log)


def post(url: str, body, headers: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def get(url: str) -> tuple[int, dict]:
    """GET ``url``: (status, JSON body), an HTTP error's too."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
