"""A tiny Kubernetes API server on loopback for InferenceServices: GET, POST (create) and PUT
(replace, with resourceVersion checks), enough for the official client that `hsnet promote
--deploy` uses. Objects are kept in memory; every request is recorded."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/?]+))?")


class FakeKube:
    def __init__(self):
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.version = 0
        self.lock = threading.Lock()
        self.refuse_writes: tuple[int, str] | None = None  # (code, reason) for every POST/PUT: a webhook, RBAC
        self.history: list[dict] = []  # every object stored, in order (what each POST/PUT left)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, obj: dict):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _status(self, code: int, reason: str):
                self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                   "code": code, "message": reason})

            def _handle(self, method: str):
                body = None
                if method in ("POST", "PUT"):
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.requests.append((method, self.path, body))
                m = PATH.match(self.path)
                if not m:
                    return self._status(404, "NotFound")
                ns, name = m.group(1), m.group(2)
                if method in ("POST", "PUT") and fake.refuse_writes:
                    return self._status(*fake.refuse_writes)
                with fake.lock:
                    if method == "GET":
                        obj = fake.objects.get((ns, name))
                        return self._reply(200, obj) if obj else self._status(404, "NotFound")
                    if method == "POST":
                        name = body["metadata"]["name"]
                        if (ns, name) in fake.objects:
                            return self._status(409, "AlreadyExists")
                        return self._reply(201, fake._store(ns, name, body))
                    if method == "PUT":
                        old = fake.objects.get((ns, name))
                        if old is None:
                            return self._status(404, "NotFound")
                        if body.get("metadata", {}).get("resourceVersion") != old["metadata"]["resourceVersion"]:
                            return self._status(409, "Conflict")
                        return self._reply(200, fake._store(ns, name, body))
                return self._status(405, "MethodNotAllowed")

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _store(self, ns: str, name: str, obj: dict) -> dict:
        self.version += 1
        obj = json.loads(json.dumps(obj))
        obj.setdefault("metadata", {}).update(namespace=ns, name=name, resourceVersion=str(self.version))
        self.objects[(ns, name)] = obj
        self.history.append(json.loads(json.dumps(obj)))
        return obj

    def kubeconfig(self, path: Path, namespace: str = "models") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}]}))
        return path

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
