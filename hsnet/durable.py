"""Checkpoints that outlive the machine: ``last.pt`` (and ``best.pt`` when it improved) copied to
an S3 prefix after the first epoch and then at most every :data:`INTERVAL_S` seconds (every
epoch when epochs are slower), and brought back before training starts, so a preempted or
killed training (a Kubernetes pod, a spot instance) continues from its last uploaded epoch.

    hsnet train --data ... --out runs/x --checkpoint-uri s3://bucket/checkpoints/run-42/rafdb

The local ``--out`` stays the working copy: when it already holds a ``last.pt`` (the same
machine, restarted) that copy is used; otherwise the prefix's copies are downloaded. Training
then resumes with ``resume="auto"``: only from a checkpoint of the same data, settings and code,
from scratch otherwise. ``last.pt`` is uploaded before ``best.pt``, as training writes them: a
``best.pt`` upload cut off leaves a ``last.pt`` whose best epoch the prefix's ``best.pt`` doesn't
hold, which the resumed training repairs (:func:`hsnet.train._best_as_recorded`); the other order
would leave a ``best.pt`` of an epoch no record of the run has.

The Kubeflow train steps take the prefix :func:`prefix_for_run` makes of the pipeline's
``checkpoint_uri``, the run's id and the training settings.
"""

from __future__ import annotations

import math

import hashlib
import json
import logging
import os
from pathlib import Path

from . import checkpoint
from .errors import HSNetError
from .params import Params

log = logging.getLogger(__name__)
FILES = (checkpoint.LAST, checkpoint.BEST)  # upload order, as train writes them (see the module docstring)
INTERVAL_S = 300.0  # at most one upload per 5 minutes after the first epoch's: what a kill can cost


def settings_key(params: Params) -> str:
    """A short hash of everything that shapes a training: runs with other settings (the ablation's
    configurations and seeds, run side by side in one pipeline run) never share a prefix."""
    return hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_prefix(base_uri: str, run_key: str, params: Params) -> str:
    """``BASE/RUN_KEY/DATASET-SETTINGS``: one prefix per pipeline run, dataset and training."""
    from .s3 import split_uri

    split_uri(base_uri)  # an s3:// URI, or a clear error naming it
    if not run_key or "/" in run_key or run_key in (".", ".."):
        raise HSNetError(f"run key {run_key!r}: give the pipeline run's id (no '/')")
    return f"{base_uri.rstrip('/')}/{run_key}/{params.dataset}-{settings_key(params)}"


def prefix_for_run(base_uri: str, run_key: str, params: Params) -> str | None:
    """A pipeline step's durable prefix (:func:`run_prefix`), or None (checkpoints stay where the
    training runs) when ``base_uri`` is "" or there is no run key: the step then can't find its
    earlier attempt's checkpoints, which is said."""
    if not base_uri:
        return None
    if not run_key:
        log.warning("no pipeline run id (not on a Kubeflow cluster?): checkpoints for %s stay local, a restarted "
                    "step trains from the start", base_uri)
        return None
    return run_prefix(base_uri, run_key, params)


def prefixes_for_run(base_uri: str, run_key: str, runs: dict[str, Params]) -> dict[str, str] | None:
    """:func:`prefix_for_run` for each of several trainings of one step (the ablation's group), said
    once; None when they keep their checkpoints where they run."""
    if prefix_for_run(base_uri, run_key, next(iter(runs.values()))) is None:
        return None
    return {name: run_prefix(base_uri, run_key, params) for name, params in runs.items()}


def _key(uri: str, name: str) -> tuple[str, str]:
    from .s3 import split_uri

    bucket, prefix = split_uri(uri)
    return bucket, f"{prefix.rstrip('/')}/{name}" if prefix else name


def restore(uri: str, out_dir: str | os.PathLike, *, over: bool = False) -> list[str]:
    """Bring ``best.pt``/``last.pt`` (and a guard's ``verdict.json``) from the prefix ``uri`` into
    ``out_dir`` unless it already holds a ``last.pt``; returns the names downloaded. Fails (clearly) when the prefix can't be
    listed: a wrong bucket or missing credentials show before any training, not after. ``over``:
    over the folder's own copies, when the prefix holds a ``last.pt`` (nothing otherwise)."""
    from .io import atomic_path
    from .s3 import _hint, client, errors, list_objects

    out_dir = Path(out_dir)
    s3 = client()
    present = {o["Key"].rsplit("/", 1)[-1] for o in list_objects(uri, s3=s3)}
    if over and checkpoint.LAST not in present:
        return []
    if (out_dir / checkpoint.LAST).is_file() and not over:
        log.info("%s holds a %s: resuming from it, not from %s", out_dir, checkpoint.LAST, uri)
        return []
    # an earlier attempt's verdict (hsnet.guards) comes too, with or without a checkpoint (a run
    # stopped after its first epoch has none): the training then ends with it at once
    # last.pt last: a folder holding it is a whole copy (a restore cut off before it is done again)
    order = (checkpoint.BEST, checkpoint.VERDICT, checkpoint.LAST)
    names = [n for n in order if n in present and (checkpoint.LAST in present or n not in FILES)]
    if not names:
        log.info("no checkpoint at %s yet: training from the start", uri)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name in names:
        if name in present:
            bucket, key = _key(uri, name)
            try:
                with atomic_path(out_dir / name) as tmp:
                    s3.download_file(bucket, key, str(tmp))
            except errors() as exc:
                raise _hint(f"s3://{bucket}/{key}", exc) from exc
            fetched.append(name)
    log.info("restored %s from %s", ", ".join(fetched), uri)
    return fetched


class Uploader:
    """The ``on_checkpoint`` hook of :func:`hsnet.train.train`: copies the epoch's checkpoints to
    the prefix, the first epoch's and then at most one epoch's every ``min_interval_s`` seconds
    (last.pt is 185 MB: on a GPU an epoch of RAF-DB takes seconds, and uploading every one would
    move 90 GB in a 500-epoch run; a kill loses at most the interval). ``best.pt`` goes with the
    ``last.pt`` it belongs to, whenever it improved since the previous upload. A failed upload is
    logged and training goes on (the next epoch tries again): an S3 hiccup should not end a day
    of training that the upload was meant to protect."""

    def __init__(self, uri: str, min_interval_s: float = 0.0, clock=None):
        import time

        from .s3 import client

        self.uri, self.s3, self.min_interval_s, self.clock = uri, client(), min_interval_s, clock or time.monotonic
        # best.pt goes with the first upload whatever the epoch: a resume may have rewritten it
        # (hsnet.train._best_as_recorded), and the prefix's would then not hold the best epoch
        self.uploaded_at, self.best_pending, self.failed, self.uploads = None, True, 0, 0
        # the local last.pt holds epochs the prefix may lack (a resume from the local copy, an epoch
        # not uploaded yet): its epochs' figures wait for an upload (hsnet.train._fit) and the
        # training's end uploads it even when no epoch was left to train (_settle)
        self.behind = False

    def __call__(self, out_dir: Path, improved: bool) -> bool:
        """True when this epoch's checkpoints went up (a retry starts after this epoch)."""
        self.best_pending |= improved
        self.behind = True
        now = self.clock()
        if self.uploaded_at is not None and now - self.uploaded_at < self.min_interval_s:
            return False
        return self._upload(out_dir, now, "the next epoch tries again")

    def keep(self, out_dir: Path, name: str) -> None:
        """``name`` in ``out_dir`` up now (the guard's verdict, :data:`hsnet.checkpoint.VERDICT`)."""
        bucket, key = _key(self.uri, name)
        self.s3.upload_file(str(Path(out_dir) / name), bucket, key)

    def flush(self, out_dir: Path) -> bool:
        """The training's last epoch up now, whatever the interval (its end: the step may still fail
        after it, e.g. exporting the model, and a retry then starts from here)."""
        return self._upload(out_dir, self.clock(), "a retried step starts from the copy before it")

    def _upload(self, out_dir: Path, now: float, then: str) -> bool:
        from .s3 import errors
        from .tracking import mask_text

        for name in FILES:
            if name == checkpoint.BEST and not (self.best_pending and (Path(out_dir) / name).is_file()):
                continue
            bucket, key = _key(self.uri, name)
            try:
                self.s3.upload_file(str(Path(out_dir) / name), bucket, key)
            except errors() as exc:
                self.failed += 1
                log.warning("checkpoint upload to s3://%s/%s failed (%s: %s); %s", bucket, key,
                            type(exc).__name__, mask_text(str(exc)), then)
                return False
        self.uploaded_at, self.best_pending, self.behind, self.uploads = now, False, False, self.uploads + 1
        return True

    def replace_local(self, out_dir: Path) -> bool:
        """The prefix's checkpoints over the folder's ``last.pt``, which the training can't resume
        (other data, settings or code: ``restore`` kept it as the working copy); True when the
        prefix had one, for the training to try it instead of starting from scratch."""
        fetched = restore(self.uri, out_dir, over=True)
        if checkpoint.LAST in fetched:
            log.info("%s holds another training's %s: resuming from %s's", out_dir, checkpoint.LAST, self.uri)
            self.behind = False
            return True
        return False

    def start(self, out_dir: Path) -> None:
        """The training's ``on_start``: :func:`restore`; a ``last.pt`` already in ``out_dir`` (not
        the prefix's) may hold epochs the prefix lacks, which makes the uploader :attr:`behind`."""
        fetched = restore(self.uri, out_dir)
        self.behind = (Path(out_dir) / checkpoint.LAST).is_file() and checkpoint.LAST not in fetched


def train(data_dir, params: Params, out_dir, checkpoint_uri: str | None, *, min_interval_s: float | None = None,
          **kwargs) -> dict:
    """:func:`hsnet.train.train` with durable checkpoints at ``checkpoint_uri`` (an s3:// prefix):
    restored once the training holds ``out_dir`` (a second run refused there downloads nothing into
    it), uploaded after the first epoch and then every ``min_interval_s`` seconds at most (0: every
    epoch; None: :data:`INTERVAL_S`); resumes only a checkpoint of the same data, settings and code.
    ``checkpoint_uri`` None: none kept elsewhere (what ``out_dir`` holds is still resumed)."""
    from .train import train as train_local

    if min_interval_s is None:
        min_interval_s = INTERVAL_S
    if not 0 <= min_interval_s < math.inf:  # NaN too: every comparison with it is False
        raise HSNetError(f"checkpoint interval {min_interval_s} s: give 0 (every epoch) or more seconds, a finite "
                         "number")

    if checkpoint_uri is None:
        return train_local(data_dir, params, out_dir, resume="auto", **kwargs)
    uploader = Uploader(checkpoint_uri, min_interval_s)
    return train_local(data_dir, params, out_dir, resume="auto", on_start=uploader.start, on_checkpoint=uploader,
                       **kwargs)
