"""What one request to the model server may hold (:class:`Limits`), and the defaults of the
inference entry points (``hsnet predict``, ``hsnet serve``, the MLflow pyfunc model): read when
the command line is parsed, so this module imports nothing heavy."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import HSNetError

ENV_PREFIX = "HSNET_SERVE_"
MIN_PROB = 0.9  # face detection probability threshold: below it a candidate is not a face
MIN_FACE_SIZE = 40  # pixels; MTCNN's default of 20 finds faces too small to read an expression from
HOST = "127.0.0.1"  # hsnet serve answers this machine only, unless told (0.0.0.0 in a container)
PORT = 8080  # KServe's HTTP port (serving/Dockerfile and hsnet/k8s/inferenceservice.yaml expose it)
# after SIGTERM, how long requests in flight may still finish: inside Kubernetes' default grace of 30 s
# before its SIGKILL (Knative's is the revision's timeout, 60 s in hsnet/k8s/inferenceservice.yaml)
GRACE_PERIOD_S = 25
MODEL_NAME = "hsnet"  # the model's name in the server's URLs: /v1/models/hsnet:predict, /v2/models/hsnet/infer


PENDING_AT_THE_LIMIT = 8  # requests at max_request_bytes the model server holds at once, by default


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how many requests the model server holds at once. Each is
    settable as ``HSNET_SERVE_<NAME>`` (e.g. ``HSNET_SERVE_MAX_IMAGE_PIXELS``) and by ``hsnet
    serve``'s flags."""

    max_request_bytes: int = 32 * 1024 * 1024  # the HTTP body (the model server checks it)
    max_images: int = 32  # photos or crops in one request
    max_image_pixels: int = 16_000_000  # one image (a 16 MP photo; 12 MP phone photos fit)
    max_request_pixels: int = 48_000_000  # all images of one request: about 150 MB decoded
    # the bodies of the requests the model server holds at once (arriving, waiting for a worker,
    # computed), counted as their bytes arrive: each is in memory a few times over (its parsed JSON,
    # the decoded images: docs/performance.md) while it waits; a request that would pass it gets 503.
    # None: PENDING_AT_THE_LIMIT requests of max_request_bytes
    max_pending_bytes: int | None = None

    def __post_init__(self):
        if self.max_pending_bytes is None:
            object.__setattr__(self, "max_pending_bytes", PENDING_AT_THE_LIMIT * self.max_request_bytes)

    @classmethod
    def from_env(cls, **overrides) -> "Limits":
        values = {}
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if overrides.get(f.name) is not None:
                values[f.name] = int(overrides[f.name])
            elif os.environ.get(key):
                try:
                    values[f.name] = int(os.environ[key])
                except ValueError as exc:
                    raise HSNetError(f"{key}={os.environ[key]!r} is not a whole number") from exc
        limits = cls(**values)
        for f in fields(cls):
            if getattr(limits, f.name) < 1:
                raise HSNetError(f"{ENV_PREFIX}{f.name.upper()} (--{f.name.replace('_', '-')}) must be at least 1")
        if limits.max_pending_bytes < limits.max_request_bytes:
            raise HSNetError(f"{cls.flag('max_pending_bytes')} {limits.max_pending_bytes:,} is below "
                             f"{cls.flag('max_request_bytes')} {limits.max_request_bytes:,}: a request of that size "
                             "could never be served; raise it")
        return limits

    @staticmethod
    def flag(name: str) -> str:
        """How a limit is named to clients: ``max_image_pixels (HSNET_SERVE_MAX_IMAGE_PIXELS)``."""
        return f"{name} ({ENV_PREFIX}{name.upper()})"


    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The limits' names (``max_images``, ...): hsnet serve's flags are ``--max-images``, ..."""
        return tuple(f.name for f in fields(cls))
