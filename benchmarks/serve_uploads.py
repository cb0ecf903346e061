"""Memory under many large uploads at once: `hsnet serve` with its pending budget
(``max_pending_bytes``, the default) against the same server with the budget lifted, in one run.

``--uploads`` clients each send a V1 body of ``--mb`` MiB at the same time, in 1 MiB chunks
spread over ``--spread`` seconds (a phone on a slow link; large photos): base64 text that
is no image, so each admitted request is answered 200 with a per-photo error at once and the
memory measured is what the bodies hold, not the model's work. Per server: the statuses
(200; 503 when the budget refuses), the peak RSS (VmHWM) before the uploads and after them.

    python -m benchmarks.serve_uploads [--smoke] [--uploads 32] [--mb 24] [--spread 4]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .common import parser, save
from .serve import Proc, free_port

CHUNK = 1 << 20


async def upload(port: int, body: bytes, spread_s: float) -> str:
    """One client: headers, the body in chunks over ``spread_s``, then the response's status (or
    what ended the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/models/hsnet:predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        chunks = range(0, len(body), CHUNK)
        try:
            for i in chunks:
                writer.write(body[i:i + CHUNK])
                await writer.drain()
                await asyncio.sleep(spread_s / len(chunks))
        except (ConnectionError, OSError):
            pass  # refused mid-body: the server answered and closed; its status follows
        try:
            line = await asyncio.wait_for(reader.readline(), 120)
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            return type(exc).__name__
        return line.split()[1].decode() if len(line.split()) > 1 else "closed"
    finally:
        writer.close()


async def uploads(port: int, n: int, body: bytes, spread_s: float) -> dict:
    statuses = await asyncio.gather(*(upload(port, body, spread_s) for _ in range(n)))
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return counts


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--uploads", type=int, default=32)
    p.add_argument("--mb", type=float, default=24.0, help="each body, MiB (under max_request_bytes, 32 MiB)")
    p.add_argument("--spread", type=float, default=4.0, help="seconds over which each body is sent")
    args = p.parse_args(argv)
    from hsnet.limits import ENV_PREFIX, Limits

    from .predict import make_checkpoint

    n, mb, spread = (4, 1.0, 0.5) if args.smoke else (args.uploads, args.mb, args.spread)
    size = int(mb * CHUNK)
    # {"instances": [{"b64": "AAAA..."}]}: valid base64 of zeros, not an image: a per-photo error, cheaply
    body = json.dumps({"instances": [{"b64": "A" * (size - 40 - size % 4)}]}).encode()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    hsnet = str(Path(sys.executable).with_name("hsnet"))
    # the smoke's bodies are 1 MiB: its limits scaled to them (a budget of two bodies and a half)
    limits = ({"HSNET_SERVE_MAX_REQUEST_BYTES": str(2 * CHUNK), "HSNET_SERVE_MAX_PENDING_BYTES": str(5 * CHUNK // 2)}
              if args.smoke else {})
    lifted = str(2 * n * len(body))  # room for every body at once: no budget
    result: dict = {"uploads": n, "body_bytes": len(body), "spread_s": spread, "servers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["HSNET_CACHE_DIR"] = str(tmp / "cache")
        ckpt = make_checkpoint(tmp / "model.pt")
        for name, extra in (("budget", limits), ("lifted", {**limits, "HSNET_SERVE_MAX_PENDING_BYTES": lifted})):
            port = free_port()
            server = Proc([hsnet, "serve", "--model", str(ckpt), "--port", str(port)], port,
                          "/v2/models/hsnet/ready", {**env, **extra}, tmp / f"{name}.log")
            try:
                idle = server.peak_rss_mb()
                t0 = time.perf_counter()
                counts = asyncio.run(uploads(port, n, body, spread))
                wall = time.perf_counter() - t0
                peak = server.peak_rss_mb()
            finally:
                server.stop()
            given = {k[len(ENV_PREFIX):].lower(): int(v) for k, v in extra.items()}
            row = {"max_pending_bytes": Limits(**given).max_pending_bytes,
                   "status": counts, "idle_rss_mb": idle, "peak_rss_mb": peak, "growth_mb": peak - idle,
                   "wall_s": wall}
            result["servers"][name] = row
            print(f"{name}: {counts}, peak RSS {peak:.0f} MiB ({peak - idle:+.0f} MiB over idle), {wall:.1f} s",
                  flush=True)
    budget, free = result["servers"]["budget"], result["servers"]["lifted"]
    result["growth_ratio"] = budget["growth_mb"] / free["growth_mb"] if free["growth_mb"] > 0 else None
    save("serve_uploads" + ("-smoke" if args.smoke else ""), result, args.out)
    return result


if __name__ == "__main__":
    main()
