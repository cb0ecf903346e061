"""Serving under load, on loopback: `hsnet serve` (the KServe model server) and the MLflow pyfunc
served by `mlflow models serve`, each a subprocess, driven by a bounded asyncio client.

* ``serve``: V1 requests with one 640x480 photo holding one face, for ``--seconds`` (60) at
  1, 4 and 16 concurrent clients: requests/s, p50/p95/p99 latency, error rate, the server's
  peak RSS (VmHWM);
* ``serve_hostile``: 4 clients, every other request hostile (8 PNGs of 8000x8000 in 100 kB,
  a 40 MB body, 40 images, broken bytes, text that is not base64): the good requests' error
  rate (must be 0) and latency, the statuses the hostile ones got, the peak RSS;
* ``pyfunc_hostile``: the same mix for `mlflow models serve` with face crops (its contract).

HSNet at RaFD's 100x100 input with random weights (speed doesn't depend on them), photos from
scikit-image's astronaut (benchmarks/predict.py makes both).

    python -m benchmarks.serve [--smoke] [--seconds 60]
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from .common import parser, percentile, save

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server subprocess in its own process group, ready once ``health`` answers 200."""

    def __init__(self, cmd: list[str], port: int, health: str, env: dict, log: Path, timeout: float = 180):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + health, timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{cmd[:3]} not ready: {log.read_text()[-2000:]}")
                time.sleep(0.3)

    def peak_rss_mb(self) -> float:
        """The largest resident set of the server and its children (VmHWM), in MiB."""
        pids = [self.proc.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True).stdout.split()]
        peak = 0
        for pid in set(pids):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
        return peak / 1024

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


async def load(url: str, bodies: list[tuple[str, bytes]], clients: int, seconds: float) -> dict:
    """``clients`` loops, each sending the next body (round robin) as soon as the last answered,
    for ``seconds``: per kind of body, the latencies and the statuses."""
    import aiohttp

    stats: dict[str, dict] = {}
    counter = 0
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(session):
        nonlocal counter
        while time.monotonic() < deadline:
            kind, body = bodies[counter % len(bodies)]
            counter += 1
            s = stats.setdefault(kind, {"lat": [], "status": {}})
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    code = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                code = type(exc).__name__
            s["lat"].append((time.perf_counter() - t0) * 1000)
            s["status"][str(code)] = s["status"].get(str(code), 0) + 1

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    wall = time.perf_counter() - t0
    out = {}
    for kind, s in stats.items():
        n = len(s["lat"])
        ok = s["status"].get("200", 0)
        out[kind] = {"requests": n, "requests_s": n / wall, "p50_ms": percentile(s["lat"], 0.5),
                     "p95_ms": percentile(s["lat"], 0.95), "p99_ms": percentile(s["lat"], 0.99),
                     "status": s["status"], "error_rate": 1 - ok / n if n else None}
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def hostile_images() -> dict[str, list[str]]:
    """Lists of base64 images a hostile or careless client sends."""
    huge = _b64(_png((8000, 8000)))  # 64 MP in about 200 kB
    return {"8x_8000x8000_png": [huge] * 8, "broken_bytes": [_b64(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)],
            "not_base64": ["this is not base64!"]}


def v1(images: list[str]) -> bytes:
    return json.dumps({"instances": [{"b64": i} for i in images]}).encode()


def pyfunc_body(images: list[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}}).encode()


def save_pyfunc(ckpt: Path, out: Path) -> Path:
    """The model as `hsnet register` logs it (model-from-code, the checkpoint as an artifact,
    the package's source), saved to a folder instead of a registry."""
    import mlflow

    from hsnet.pyfunc import signature

    code = out.parent / "code" / "hsnet"
    shutil.copytree(ROOT / "hsnet", code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    mlflow.pyfunc.save_model(str(out), python_model=str(ROOT / "hsnet" / "mlflow_model.py"),
                             artifacts={"checkpoint": str(ckpt)}, code_paths=[str(code)],
                             signature=signature(["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]))
    return out


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    from .predict import make_checkpoint, make_photos

    seconds = 3.0 if args.smoke else args.seconds
    levels = (1, 4) if args.smoke else (1, 4, 16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    hsnet = str(Path(sys.executable).with_name("hsnet"))
    result: dict = {"seconds": seconds, "photo": "640x480 JPEG, one face", "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["HSNET_CACHE_DIR"] = str(tmp / "cache")
        ckpt = make_checkpoint(tmp / "model.pt")
        photos = [_b64(p.read_bytes()) for p in make_photos(tmp / "photos", 8)]
        good = [("good", v1([ph])) for ph in photos]

        port = free_port()
        server = Proc([hsnet, "serve", "--model", str(ckpt), "--port", str(port)], port, "/v2/models/hsnet/ready",
                      env, tmp / "serve.log")
        try:
            url = server.url + "/v1/models/hsnet:predict"
            asyncio.run(load(url, good, 1, min(seconds, 3)))  # warm-up
            result["serve"] = {}
            for clients in levels:
                r = asyncio.run(load(url, good, clients, seconds))["good"]
                r["peak_rss_mb"] = server.peak_rss_mb()
                result["serve"][str(clients)] = r
                print(f"serve, {clients} client(s): {r['requests_s']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, "
                      f"p95 {r['p95_ms']:.0f}, p99 {r['p99_ms']:.0f}, errors {r['error_rate']:.1%}, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
            hostile = hostile_images()
            mix = [good[0], ("40_images", v1(photos[:1] * 40)), good[1],
                   ("40MB_body", json.dumps({"instances": [{"b64": "A" * (40 << 20)}]}).encode())]
            for i, (kind, images) in enumerate(list(hostile.items()) * 2):
                mix += [good[i % len(good)], (kind, v1(images))]
            r = asyncio.run(load(url, mix, 4, seconds))
            result["serve_hostile"] = {"by_kind": r, "peak_rss_mb": server.peak_rss_mb()}
            print("serve, hostile mix:", json.dumps({k: [round(v["p50_ms"]), v["status"]] for k, v in r.items()}),
                  f"peak RSS {server.peak_rss_mb():.0f} MiB", flush=True)
        finally:
            server.stop()

        # the MLflow pyfunc (face crops in) under the same hostile mix
        model_dir = save_pyfunc(ckpt, tmp / "pyfunc")
        crops = []
        for ph in photos[:4]:
            buf = io.BytesIO()
            Image.open(io.BytesIO(base64.b64decode(ph))).convert("RGB").resize((100, 100)).save(buf, format="PNG")
            crops.append(_b64(buf.getvalue()))
        port = free_port()
        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        server = Proc([mlflow_bin, "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h",
                       "127.0.0.1", "-p", str(port), "-w", "1"], port, "/ping",
                      {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}, tmp / "pyfunc.log")
        try:
            url = server.url + "/invocations"
            good = [("good", pyfunc_body([c])) for c in crops]
            mix = []
            for i, (kind, images) in enumerate(hostile_images().items()):
                mix += [good[i % len(good)], (kind, pyfunc_body(images))]
            asyncio.run(load(url, good, 1, min(seconds, 3)))
            r = asyncio.run(load(url, mix, 4, seconds))
            result["pyfunc_hostile"] = {"by_kind": r, "peak_rss_mb": server.peak_rss_mb()}
            print("pyfunc, hostile mix:", json.dumps({k: [round(v["p50_ms"]), v["status"]] for k, v in r.items()}),
                  f"peak RSS {server.peak_rss_mb():.0f} MiB", flush=True)
        finally:
            server.stop()
    save("serve" + ("-smoke" if args.smoke else ""), result, args.out)
    return result


if __name__ == "__main__":
    main()
