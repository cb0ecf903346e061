"""The model server: whole photos in, every face's box and expression out, on KServe's protocols.

A :class:`kserve.Model` that loads a registered model (``models:/hsnet-rafdb@production``, a
version ``models:/hsnet-rafdb/7``) or a local checkpoint file once at start, and answers

* V1: ``POST /v1/models/<name>:predict`` with ``{"instances": [{"b64": "<JPEG/PNG>"}, ...],
  "parameters": {"crops": false}}`` -> ``{"predictions": [<record>, ...], "model_name",
  "model_version", "model_uri"}``;
* V2 (Open Inference Protocol): ``POST /v2/models/<name>/infer`` with one ``BYTES`` input
  (``"data": ["<base64>", ...]``) -> one ``BYTES`` output ``records`` holding each photo's
  record as JSON text, ``model_version`` set and ``parameters.model_uri``; the model metadata
  (``GET /v2/models/<name>``) names them (input ``images``, shape ``[-1]``);

plus KServe's health endpoints (``/v2/health/live``, ``/v2/health/ready``,
``/v1/models/<name>`` and ``/v2/models/<name>/ready``, 503 until the model is loaded), and
KServe's repository API: ``POST /v2/repository/models/<name>/load`` reloads the model, ``unload``
is refused (501). The Open Inference Protocol's versioned paths (``/v2/models/<name>/versions/<v>/...``)
answer for the version being served (:class:`Protocol`).

A photo's record is ``hsnet predict``'s (:func:`hsnet.predict.classify_faces`): ``faces``
(``box``, ``detection_probability``, ``expression``, ``confidence``, ``probabilities``) and
``size``; a photo that can't be read or is over the pixel limit is ``{"faces": [], "error"}``
and the other photos are answered. With ``crops`` (today's pyfunc contract) each image is a
face crop, fed as the pyfunc feeds it (a centre square at the model's crop size, then its input
size): ``expression``, ``confidence``, ``probabilities``, ``size``.
The faces of all photos of a request are classified in one batch; requests run in parallel on
``threads`` worker threads, which share the cores (a lone request gets all of them).

Limits (:class:`hsnet.pyfunc.Limits`): the body size (checked before it is read), the number
of images and the pixels of all images together (from their headers, before decoding) refuse
the request with HTTP 413 naming the limit; an image over the per-image pixel limit is a
per-photo error naming it. A request whose body would take the bodies held at once (arriving,
waiting for a worker or computed) past ``max_pending_bytes`` gets HTTP 503 with ``Retry-After``,
before its body is read: what waiting requests hold in memory is bounded, as Knative's
``containerConcurrency`` bounds it on the cluster.

KServe's SDK pins pandas<3 and psutil<6 (serving/requirements.txt): it runs in the serving
image, or on a development machine from the overlay ``make serve-env`` installs, which
``hsnet serve`` puts in front of the project's packages itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kserve
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput, ModelNotFound

from . import model_copies, tracking
from .errors import HSNetError
from .io import is_utf8, usable_cores
from .limits import GRACE_PERIOD_S, HOST, MIN_FACE_SIZE, MIN_PROB, MODEL_NAME, PORT
from .pyfunc import InputRefused, Limits, as_bytes, check_budget, check_count, decode_opened, open_encoded

log = logging.getLogger(__name__)

INPUT, OUTPUT = "images", "records"  # V2: the tensors the model metadata names (any input name is taken)
# set by BodyLimit for each HTTP request once its client has closed the connection
_CLIENT_GONE: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("hsnet_client_gone",
                                                                                      default=None)
# set by Protocol for a request to /v2/models/<name>/versions/<version>/...: the version it asked for
_ASKED_VERSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("hsnet_asked_version", default=None)


@dataclass(frozen=True)
class Loaded:
    """One loaded model and what every response says about it (swapped whole on reload)."""

    classifier: object
    detector: object
    model_uri: str  # what was loaded: models:/NAME/VERSION, or the checkpoint's path
    model_version: str  # the registry's version, or sha256:<12 hex> of a checkpoint file
    registered_model: str | None


# a registry that fails (unreachable, 5xx, 429, a dropped connection) is tried again at start after
# these delays, each failure logged: about a minute in all, inside the liveness probe's first 120 s.
# While the server loads, MLflow's own retries and its long wait for a silent registry are off
# (tracking.fail_fast): they would keep it silent for minutes.
RESOLVE_DELAYS_S = (2, 4, 8, 16, 32)


def _may_pass(exc: BaseException) -> bool:
    """Whether a failed load may work when tried again: the tracking server unreachable or failing
    (5xx, 429, a dropped connection) or a runs:/ model still uploading, not a refusal (credentials,
    permission), a missing model nor a failed upload."""
    from mlflow.exceptions import MlflowException

    from .tracking import ServerUnavailable

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # not "no store here" (TrackingUnavailable): waiting can't make one
        if isinstance(exc, (ServerUnavailable, model_copies.ModelUploading)):
            return True
        if isinstance(exc, MlflowException):
            return tracking.may_pass(exc)
        exc = exc.__cause__ or exc.__context__
    return False


def resolve(model: str) -> tuple[str, str | None, str | None]:
    """(URI to load, version, registered name): an alias is resolved to its version first, so
    the version reported is the one loaded even if the alias moves meanwhile. A checkpoint file's
    version (``sha256:`` of its bytes) is known once it is loaded: None here."""
    text = str(model)
    if Path(text).is_file():
        return text, None, None
    if text.startswith("models:/"):
        from mlflow.exceptions import MlflowException

        from . import tracking

        uri = tracking.connect(create=False)
        try:
            name, version = tracking.model_version(text)
        except MlflowException as exc:
            if exc.error_code in tracking.MISSING:  # the registry answered: no such model, version or alias
                raise HSNetError(f"--model {text}: not found in the registry at {tracking.mask_uri(uri)} "
                                 f"({tracking.mask_text(exc.message)[:300]}); check the name and alias (hsnet "
                                 "promote)") from exc
            raise HSNetError(f"--model {text}: the registry at {tracking.mask_uri(uri)} refused or failed the lookup "
                             f"({exc.error_code}: {tracking.mask_text(exc.message)[:600]}); check its credentials "
                             "(MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN: the hsnet-mlflow secret) and that the "
                             "tracking server and its database are up") from exc
        return tracking.version_uri(name, version), version, name
    if text.startswith("runs:/"):
        return text, text[len("runs:/"):].split("/", 1)[0], None
    from .tracking import mask_uri

    raise HSNetError(f"--model {mask_uri(text)}: no such checkpoint file, and not models:/NAME@ALIAS, models:/NAME/VERSION "
                     "or runs:/RUN_ID/model")


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class HSNetModel(kserve.Model):
    """HSNet behind KServe: see the module's docstring for the protocol."""

    def __init__(self, name: str, model: str, *, limits: Limits | None = None, device: str | None = None,
                 min_prob: float = MIN_PROB, min_face_size: int | None = None, threads: int | None = None):
        super().__init__(name)

        self.model_ref = str(model)
        self.limits = limits or Limits.from_env()
        self.device = device
        self.min_prob = float(min_prob)
        self.min_face_size = int(min_face_size or MIN_FACE_SIZE)
        self.threads = int(threads or usable_cores())
        self.state: Loaded | None = None
        self._reload_lock = threading.Lock()
        self._busy_lock = threading.Lock()
        self.busy = 0  # requests being computed now
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="hsnet-infer")

    # --- V2 model metadata (GET /v2/models/<name>): what a client sends and gets back -------------
    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]  # base64 JPEG/PNG, one per photo

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}]  # a JSON record per photo

    # --- loading ----------------------------------------------------------------------------
    def _load(self, *, retry: bool = False) -> Loaded:
        """The model loaded, MLflow's silent retries off; with ``retry`` (at start) a failure that
        may pass is tried again after :data:`RESOLVE_DELAYS_S`, each logged. A reload fails at
        once: the client waits for its answer, and the old version keeps serving."""
        for delay in RESOLVE_DELAYS_S if retry else ():
            try:
                with tracking.fail_fast():
                    return self._load_once()
            except Exception as exc:  # noqa: BLE001 - classified by _may_pass
                if not _may_pass(exc):
                    raise
                why = ("the model is still being uploaded" if isinstance(exc, model_copies.ModelUploading) else
                       "the tracking server (registry) may be starting or failing")
                log.warning("loading %s failed, %s (%s): trying again in %d s", self.model_ref, why,
                            str(exc).splitlines()[0][:300], delay)
                time.sleep(delay)
        with tracking.fail_fast():  # the last try: its failure is the answer
            return self._load_once()

    def _load_once(self) -> Loaded:
        from .data.crop import Detector
        from .predict import load_classifier

        uri, version, registered = resolve(self.model_ref)
        classifier = load_classifier(uri, self.device)  # a registered version's files are checked first
        if version is None:  # a checkpoint file: the hash of the bytes loaded, not of the file as it is now
            version = "sha256:" + classifier.info["sha256"][:12]
        detector = Detector(str(classifier.setup.device), min_face_size=self.min_face_size)
        loaded = Loaded(classifier, detector, uri, version, registered)
        self._infer(loaded, [], crops=False)  # nothing to do, but proves the objects work together
        log.info("loaded %s (version %s) on %s: classes %s", uri, version, classifier.setup.device,
                 ", ".join(classifier.classes))
        return loaded

    def load(self) -> bool:
        self.state = self._load(retry=True)
        self.ready = True
        return self.ready

    def reload(self) -> Loaded:
        """Load ``model`` again (an alias is resolved anew) and swap it in; requests in flight
        finish on the old one, and a failed load leaves the old one serving."""
        with self._reload_lock:
            new = self._load()
            self.state = new
            self.ready = True
            return new

    # --- inference --------------------------------------------------------------------------
    def _decode(self, values: list) -> tuple[list, list[str | None]]:
        """(images, errors): per value a decoded RGB image or None and its error. The request
        limits (count, pixel budget) raise :class:`InputRefused` (413) before any decoding."""
        limits = self.limits
        check_count(len(values), limits)
        opened: list = []
        errors: list[str | None] = []
        pixels = 0
        try:
            for row, value in enumerate(values):
                try:
                    if isinstance(value, dict):
                        if "b64" not in value:
                            raise InputRefused(f"image {row}: an object must hold the image as {{\"b64\": ...}}")
                        value = value["b64"]
                        if not isinstance(value, str):
                            raise InputRefused(f"image {row}: \"b64\" must be base64 text")
                    img = open_encoded(as_bytes(value, row), row, limits)
                except InputRefused as exc:
                    opened.append(None)
                    errors.append(exc.message)
                    continue
                pixels += img.width * img.height
                opened.append(img)
                errors.append(None)
                check_budget(pixels, limits)
            images = []
            for row, img in enumerate(opened):
                if img is None:
                    images.append(None)
                    continue
                try:
                    images.append(decode_opened(img, row))
                except InputRefused as exc:
                    images.append(None)
                    errors[row] = exc.message
            return images, errors
        finally:
            for img in opened:
                if img is not None:
                    img.close()

    def _infer(self, loaded: Loaded, values: list, *, crops: bool) -> list[dict]:
        from .predict import classify_faces

        images, errors = self._decode(values)
        clf = loaded.classifier
        if crops:
            ok = [i for i, img in enumerate(images) if img is not None]
            probs = clf.probabilities([images[i] for i in ok])
            records: list[dict] = [{"error": e} for e in errors]
            for i, p in zip(ok, probs):
                k = int(p.argmax())
                records[i] = {"expression": clf.classes[k], "confidence": round(float(p[k]), 4),
                              "probabilities": {c: round(float(v), 4) for c, v in zip(clf.classes, p)},
                              "size": list(images[i].size)}
            return records
        failed: dict[int, str] = {}  # photos the detector failed on alone (out of memory): their own error
        faces = classify_faces(images, clf, loaded.detector, min_prob=self.min_prob, failed=failed)
        records = []
        for row, (img, found, error) in enumerate(zip(images, faces, errors)):
            error = error or failed.get(row)
            records.append({"faces": found, "error": error} if error else {"faces": found, "size": list(img.size)})
        return records

    async def predict(self, payload, headers=None, response_headers=None):
        loaded = self.state
        if loaded is None:
            raise InvalidInput("the model is not loaded yet")
        asked = _ASKED_VERSION.get()
        if asked is not None and asked != loaded.model_version:  # reloaded since Protocol let the path through
            raise InputRefused(f"version {asked!r} of {self.name!r} is no longer served: version "
                               f"{loaded.model_version!r} is (reloaded meanwhile)", status=404)
        if isinstance(payload, InferRequest):
            if payload.id is not None and not is_utf8(payload.id):  # the response echoes it: refused before the work
                raise InvalidInput(f"the request's \"id\" {payload.id!r} is not valid Unicode text (a lone "
                                   "surrogate escape such as \\ud800): send an id the response can carry")
            values, crops = self._v2_inputs(payload)
        elif isinstance(payload, dict):
            values, crops = self._v1_inputs(payload)
        else:
            raise InvalidInput(f"unexpected request of type {type(payload).__name__}")
        check_count(len(values), self.limits)  # before queueing for a worker
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(self.pool, self._compute, loaded, values, crops, _CLIENT_GONE.get())
        if isinstance(payload, InferRequest):
            out = InferOutput(name=OUTPUT, shape=[len(records)], datatype="BYTES",
                              data=[json.dumps(r) for r in records])
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out],
                                 model_version=loaded.model_version,
                                 parameters={"model_uri": loaded.model_uri, "crops": crops})
        return {"predictions": records, "model_name": self.name, "model_version": loaded.model_version,
                "model_uri": loaded.model_uri}

    def _compute(self, loaded: Loaded, values: list, crops: bool, gone: threading.Event | None = None) -> list[dict]:
        """One request on a worker thread, the ``threads`` cores shared among the requests in
        flight (PyTorch's intra-op threads are set per calling thread): a lone request gets all
        of them, ``threads`` concurrent ones one each. In a container give ``--threads`` its CPU
        limit: the host's core count is not what it may use.

        A request whose client has closed the connection while it waited for a worker (its own
        timeout, or Knative's queue-proxy after the predictor's ``timeout``) is not computed:
        HTTP 499, to nobody. Otherwise the abandoned requests ran in full for no one, each
        request after them waited for all of them, and under an overload every request timed out."""
        import torch

        if gone is not None and gone.is_set():
            log.info("a request whose client has gone is not computed")
            raise HTTPException(status_code=499, detail="the client closed the connection before its request "
                                                        "was computed")
        with self._busy_lock:
            self.busy += 1
            share = max(1, self.threads // self.busy)
        try:
            torch.set_num_threads(share)
            return self._infer(loaded, values, crops=crops)
        finally:
            with self._busy_lock:
                self.busy -= 1

    @staticmethod
    def _v1_inputs(payload: dict) -> tuple[list, bool]:
        if "instances" in payload and "inputs" in payload:
            raise InvalidInput('give the images as "instances" or as "inputs", not both')
        instances = payload.get("instances", payload.get("inputs"))  # KServe's V1 takes either (TF Serving's forms)
        if not isinstance(instances, list):
            raise InvalidInput('expected {"instances": [{"b64": "<base64 JPEG/PNG>"}, ...]}')
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput('"parameters" must be an object, e.g. {"crops": true}')
        return instances, _flag(params.get("crops", False))

    @staticmethod
    def _v2_inputs(request: InferRequest) -> tuple[list, bool]:
        if len(request.inputs) != 1 or request.inputs[0].datatype != "BYTES":
            raise InvalidInput("expected one input of datatype BYTES holding base64-encoded JPEG/PNG images, "
                               f"got {[(i.name, i.datatype) for i in request.inputs]}")
        asked = [o.name for o in request.request_outputs or []]
        if any(name != OUTPUT for name in asked):  # OIP: "the output tensors requested": never another one
            raise InvalidInput(f"requested outputs {asked}: this model has one output, {OUTPUT!r}; ask for it "
                               "or leave \"outputs\" out")
        params = {**(request.inputs[0].parameters or {}), **(request.parameters or {})}
        data = list(request.inputs[0].data if request.inputs[0].data is not None else [])
        shape = list(request.inputs[0].shape or [])
        if shape != [len(data)]:  # OIP: the data is the tensor of that shape, one image per element
            raise InvalidInput(f"input {request.inputs[0].name!r}: shape {shape} does not match its data of "
                               f"{len(data)} images: expected shape [{len(data)}]")
        return data, _flag(params.get("crops", False))


BINARY_HEADER = b"inference-header-content-length"  # the V2 binary data extension's (lower case: ASGI's)
JSON_TYPES = (b"application/json", b"application/cloudevents+json", b"application/ld+json")  # what KServe decodes
_INFERENCE = re.compile(r"^/v1/models/[^/]+:predict$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
_VERSIONED = re.compile(r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/ready|/infer)?$")


class Protocol:
    """ASGI middleware: requests the protocols allow and KServe's routes refuse, made what they mean.

    * An inference body is JSON whatever its Content-Type says: KServe decodes only the literal
      ``application/json`` (``application/json; charset=utf-8``, what OkHttp and .NET send, reached
      the model as bytes: "unexpected request of type bytes"; a V2 body sent as curl -d's form type
      was taken for the binary extension, which the server refuses). The binary extension itself is
      still refused by :class:`BodyLimit` (its header).
    * The Open Inference Protocol's versioned paths (``/v2/models/<name>/versions/<v>``, ``/ready``,
      ``/infer``) of the version being served answer as the unversioned ones (every response names
      ``model_version``, so a client can pin it; KServe answers them 501); another version, or
      another model, is 404. A pinned request that a reload overtakes is refused (404) by
      :meth:`HSNetModel.predict`, never answered by another version."""

    def __init__(self, app, model: HSNetModel):
        self.app, self.model = app, model

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if _INFERENCE.match(path):
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            given = dict(scope.get("headers") or []).get(b"content-type", b"").split(b";")[0].strip().lower()
            scope = dict(scope, headers=headers + [(b"content-type", given if given in JSON_TYPES else JSON_TYPES[0])])
        versioned = _VERSIONED.match(path)
        if versioned is None:
            return await self.app(scope, receive, send)
        name, version = versioned["name"], versioned["version"]
        served = self.model.state.model_version if self.model.state is not None else None
        if name != self.model.name or version != served:
            what = (f"no model {name!r} here" if name != self.model.name else
                    f"version {version!r} of {name!r} is not served here" + (f": version {served!r} is" if served else ""))
            return await JSONResponse({"error": what}, status_code=404)(scope, receive, send)
        plain = f"/v2/models/{name}{versioned['rest'] or ''}"
        token = _ASKED_VERSION.set(version)
        try:
            return await self.app(dict(scope, path=plain, raw_path=urllib.parse.quote(plain).encode()), receive, send)
        finally:
            _ASKED_VERSION.reset(token)


RETRY_AFTER_S = 1  # what a request refused for a full server is told to wait


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 naming the limit,
    before it is read (Content-Length) or as soon as a streamed body passes it. The bodies held at
    once (the bytes received of the POST requests not answered yet) are kept within
    ``max_pending_bytes``: a request whose Content-Length would pass it is refused with 503 and
    ``Retry-After`` before its body is kept, and one whose arriving bytes pass it, as they arrive
    (the rest of its body is read and dropped, then the 503 sent: see :meth:`_drain`). Only bytes
    received count: connections that send headers and stall hold no memory, and shut no one out. Once the body is read it also watches the connection: a client that goes away
    sets the request's ``_CLIENT_GONE`` event, so that its work is not started
    (:meth:`HSNetModel._compute`)."""

    def __init__(self, app, max_bytes: int, max_pending_bytes: int):
        self.app, self.max_bytes, self.max_pending_bytes = app, int(max_bytes), int(max_pending_bytes)
        self.pending = 0  # bytes received of the POST requests held now (one event loop: no lock)

    def busy(self, size: int | None) -> HTTPException:
        """The 503 of a request that would take the bodies held past ``max_pending_bytes``."""
        this = f"this one's {size:,}" if size is not None else "this one's next bytes"
        log.info("a request is refused: %s bytes of request bodies are held, %s", f"{self.pending:,}",
                 Limits.flag("max_pending_bytes"))
        return HTTPException(
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
            detail=f"the server holds {self.pending:,} bytes of request bodies: {this} would pass the limit of "
                   f"{self.max_pending_bytes:,} bytes, {Limits.flag('max_pending_bytes')}; retry in a moment, or "
                   "send fewer requests at once")

    def message(self, size: int | None) -> str:
        got = f"{size:,} bytes" if size is not None else "more bytes"
        return (f"the request body of {got} is over the limit of {self.max_bytes:,} bytes, "
                f"{Limits.flag('max_request_bytes')}; send fewer or smaller images per request")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if BINARY_HEADER in headers:  # KServe's parser answers 500 with Python's error text
            response = JSONResponse({"error": "the V2 binary tensor extension (Inference-Header-Content-Length) "
                                              "is not supported: send the images as JSON, base64 in a BYTES "
                                              "input's data"}, status_code=415)
            return await response(scope, receive, send)
        length = headers.get(b"content-length")
        try:
            size = int(length) if length is not None else None
        except ValueError:
            size = None
        if size is not None and size > self.max_bytes:
            response = JSONResponse({"error": self.message(size)}, status_code=413)
            return await response(scope, receive, send)
        if scope.get("method") != "POST":  # health, readiness, metadata: never refused for a full server
            return await self._limited(scope, receive, send, counted=False)
        if size is not None and self.pending + size > self.max_pending_bytes:
            refused = self.busy(size)
            if headers.get(b"expect", b"").lower() != b"100-continue":  # else it waits for us: nothing sent
                await self._drain(receive, {"type": "http.request", "more_body": True}, 0)
            response = JSONResponse({"error": refused.detail}, status_code=503, headers=refused.headers)
            return await response(scope, receive, send)
        return await self._limited(scope, receive, send, counted=True)

    async def _drain(self, receive, message: dict, total: int) -> None:
        """Read the rest of a refused body (``message`` the last one read, ``total`` its bytes so
        far) and drop it, up to ``max_bytes``: a client still sending when the server answers and
        closes gets a TCP reset, not the answer (curl: "Connection reset by peer"), so the 503 is
        sent once the body is in; nothing of it is kept."""
        while message["type"] == "http.request" and message.get("more_body", False) and total <= self.max_bytes:
            message = await receive()
            total += len(message.get("body", b""))

    async def _limited(self, scope, receive, send, *, counted: bool):
        total = held = 0  # bytes received; of them, counted in self.pending
        gone = threading.Event()
        watcher: asyncio.Task | None = None
        refused: dict | None = None  # the last message of a body refused for the budget
        answer: list[dict] = []  # its response, sent once the app has let go of the body and the rest is read

        async def watch():  # after the whole body: the next message is the disconnect
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def limited():
            nonlocal total, held, watcher, refused
            message = await receive()
            if message["type"] == "http.request":
                got = len(message.get("body", b""))
                total += got
                if total > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self.message(None))
                if counted:
                    if self.pending + got > self.max_pending_bytes:
                        refused = message
                        raise self.busy(None)
                    self.pending, held = self.pending + got, held + got
                if not message.get("more_body", False) and watcher is None:
                    watcher = asyncio.ensure_future(watch())
            elif message["type"] == "http.disconnect":
                gone.set()
            return message

        async def answering(message):
            if refused is not None:
                answer.append(message)
            else:
                await send(message)

        token = _CLIENT_GONE.set(gone)
        try:
            await self.app(scope, limited, answering)
        except ClientDisconnect:  # a client's doing, as a typo is: one line, not uvicorn's ERROR traceback
            if not gone.is_set():
                raise
            log.info("%s %s: the client went away before its body was in (%s bytes received)", scope.get("method"),
                     scope.get("path"), f"{total:,}")
        finally:
            _CLIENT_GONE.reset(token)
            self.pending -= held  # the app has ended: what it read of the body is let go
            if watcher is not None:
                watcher.cancel()
        if refused is not None:
            await self._drain(receive, refused, total)
            for message in answer:
                await send(message)


async def _refused(_request, exc: InputRefused):
    return JSONResponse({"error": exc.message}, status_code=exc.status)


def _client_error(status: int):
    """KServe's refusal of a client's request (an unknown model name: 404; a body the protocol
    doesn't allow: 400) answered as KServe does, ``{"error": "<message>"}``, and logged as one line:
    KServe's own handlers log it as an ERROR with a traceback, which pages whoever alerts on
    ERROR for every client's typo."""
    async def handler(request, exc):
        text = str(exc)  # a client's 30 MB input name is not echoed into the log whole
        shown = text if len(text) <= 500 else f"{text[:500]}... ({len(text):,} characters)"
        log.info("%s %s refused (%d): %s", request.method, request.url.path, status, shown)  # escaped by hsnet.logs
        return JSONResponse({"error": str(exc)}, status_code=status)
    return handler


async def _http_error(_request, exc: StarletteHTTPException):
    """FastAPI's own refusals (no such route, a method not allowed, a streamed body over the limit,
    a client gone) in the protocol's error shape, ``{"error": "<message>"}``, not FastAPI's
    ``{"detail": ...}``: KServe's clients read ``error``."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _invalid_body(request, exc: RequestValidationError):
    """A body that isn't JSON or not what the endpoint takes: HTTP 400 and ``{"error"}`` naming
    where and why (FastAPI's default is a 422 with a ``detail`` list no protocol client reads)."""
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', 'not valid')}"
                for e in exc.errors()[:3]]
    hint = ('; expected {"inputs": [{"name": ..., "datatype": "BYTES", "shape": [N], "data": [N base64 images]}]}'
            if request.url.path.endswith("/infer") else "")
    return JSONResponse({"error": f"the request body is not valid at {request.url.path} ("
                                  f"{'; '.join(problems or ['not valid'])}){hint}"}, status_code=400)


class _Repository(kserve.model_repository.ModelRepository):
    """KServe's model repository, whose ``load`` (``POST /v2/repository/models/<name>/load``)
    reloads our model: a new production version is picked up without a restart."""

    async def load(self, name: str) -> bool:
        model = self.get_model(name)
        if not isinstance(model, HSNetModel):
            raise HSNetError(f"no model {name!r} here")
        # in a thread of its own, not the loop's executor: a SIGTERM mid-reload (a download of minutes)
        # ends the server after its grace period, where asyncio.run would wait for the executor's thread
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def work():
            try:
                outcome = (done.set_result, model.reload())
            except BaseException as exc:  # noqa: BLE001 - handed to the request that asked
                outcome = (done.set_exception, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
                loop.call_soon_threadsafe(*outcome)

        threading.Thread(target=work, name="hsnet-reload", daemon=True).start()
        await done
        return True


class _Extension(kserve.protocol.model_repository_extension.ModelRepositoryExtension):
    """KServe's repository API as clients reach it: ``unload`` is refused (HTTP 501). This server
    holds one model and any client of the predictor can call ``POST /v2/repository/models/<name>/unload``:
    KServe's unload dropped the model for good (readiness 404 while liveness stays 200, so
    Kubernetes never restarts the pod; ``load`` had no model left to reload). The server's own
    shutdown (SIGTERM) unloads through the repository, not through this."""

    async def load(self, model_name: str) -> None:
        """A model this server doesn't hold is 404, as on every other endpoint (KServe answered 503
        "not ready", which clients retry); a failed reload says what keeps serving (KServe: "not
        ready", while the old version answers and /ready says true)."""
        model = self._model_registry.get_model(model_name)
        if not isinstance(model, HSNetModel):
            raise ModelNotFound(model_name)
        try:
            await self._model_registry.load(model_name)
        except Exception as exc:  # noqa: BLE001 - answered, with what was kept
            from . import tracking

            kept = model.state.model_version if model.state is not None else None
            raise HTTPException(status_code=500, detail=f"reloading {model_name!r} failed ({type(exc).__name__}: "
                                f"{tracking.mask_text(str(exc))[:500]})" + (f"; version {kept!r} keeps serving"
                                                                             if kept else "")) from exc

    async def unload(self, model_name: str) -> None:
        if isinstance(self._model_registry.get_model(model_name), HSNetModel):
            raise NotImplementedError(f"unloading {model_name!r} is not supported: hsnet serve serves one model; "
                                      f"POST /v2/repository/models/{model_name}/load reloads it")
        await super().unload(model_name)


def check_settings(*, port: int, threads: int | None, grace_period: float) -> None:
    """The server's own flags, refused by name before anything loads: a port outside 1-65535 (0
    would listen where no probe looks), threads under 1 (None: the CPU's cores), a grace period
    that isn't a positive number of seconds (0 would cut every request in flight at SIGTERM)."""
    problems = []
    if not 1 <= int(port) <= 65535:
        problems.append(f"--port {port}: give a port from 1 to 65535")
    if threads is not None and int(threads) < 1:
        problems.append(f"--threads {threads}: give 1 or more (or leave it out: one per CPU core)")
    if not float(grace_period) > 0 or float(grace_period) == float("inf"):  # (nan fails the first test)
        problems.append(f"--grace-period {grace_period}: give a number of seconds above 0, under the pod's "
                        f"terminationGracePeriodSeconds (default {GRACE_PERIOD_S})")
    if problems:
        raise HSNetError("; ".join(problems))


def serve(model: str, *, port: int = PORT, host: str = HOST, name: str = MODEL_NAME,
          limits: Limits | None = None, device: str | None = None, min_prob: float = MIN_PROB,
          min_face_size: int | None = None, threads: int | None = None,
          grace_period: float = GRACE_PERIOD_S) -> None:
    """Load ``model``, then answer on ``host:port`` until SIGTERM/SIGINT; then no new connection, and
    the requests in flight get ``grace_period`` seconds to finish."""
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.rest.server import RESTServer

    check_settings(port=port, threads=threads, grace_period=grace_period)  # before minutes of loading
    limits = limits or Limits.from_env()
    hsnet_model = HSNetModel(name, model, limits=limits, device=device, min_prob=min_prob,
                             min_face_size=min_face_size, threads=threads)
    hsnet_model.load()  # the port opens only now: readiness follows the load
    repository = _Repository()
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, registered_models=repository)
    server.model_repository_extension = _Extension(model_registry=repository)
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes, max_pending_bytes=limits.max_pending_bytes)
    app.add_middleware(Protocol, model=hsnet_model)  # outside BodyLimit: it sees the paths as clients send them
    app.add_exception_handler(InputRefused, _refused)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    class Server(RESTServer):  # KServe adds its handlers as it starts: a client's mistake, one INFO line
        def _add_exception_handlers(self, fastapi_app):
            super()._add_exception_handlers(fastapi_app)
            fastapi_app.add_exception_handler(InvalidInput, _client_error(400))
            fastapi_app.add_exception_handler(ModelNotFound, _client_error(404))
            fastapi_app.add_exception_handler(NotImplementedError, _client_error(501))  # unload: refused by design

    rest = Server(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port,
                      workers=1, grace_period=grace_period)
    rest.config.host = host  # KServe binds 0.0.0.0; locally we default to loopback
    metadata = server.dataplane.model_metadata

    async def model_metadata(model_name: str) -> dict:  # "versions": the one served (KServe says none)
        out = await metadata(model_name)
        served = hsnet_model.state.model_version if hsnet_model.state is not None else None
        if model_name == hsnet_model.name and served:
            out["versions"] = [str(served)]
        return out

    server.dataplane.model_metadata = model_metadata
    server._register_and_check_atleast_one_model_is_ready([hsnet_model])
    server._rest_server = rest
    server.servers.append(rest.start())
    log.info("serving %s as %r on http://%s:%d (V1 /v1/models/%s:predict, V2 /v2/models/%s/infer); limits %s",
             hsnet_model.state.model_uri, name, host, port, name, name, limits)
    server.setup_event_loop()
    server.register_signal_handler()
    asyncio.run(server._serve())


if __name__ == "__main__":  # python -m hsnet.serve ... = hsnet serve ...
    import sys

    from .cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
