"""S3 access with boto3 (AWS, MinIO, Ceph): credentials and endpoint only from the environment.

``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or any boto3 credential source) and, for
S3-compatible stores, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from .errors import HSNetError
from .io import UnsafePath, atomic_path, safe_join


class S3Error(HSNetError):
    pass


_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")  # botocore's own check of a bucket name (VALID_BUCKET)


def _masked(uri: str) -> str:
    from .tracking import mask_uri  # the one masking rule

    return mask_uri(uri)


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise S3Error(f"{_masked(uri)!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise S3Error(f"{_masked(uri)!r} has no bucket; expected s3://BUCKET/PREFIX")
    if "@" in bucket:  # s3://KEY:SECRET@bucket: S3's credentials come from the environment only
        raise S3Error(f"{_masked(uri)!r}: credentials in the URI are not read; give s3://BUCKET/PREFIX and the "
                      "credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if bucket.startswith("arn:"):  # an access point's ARN (the AWS CLI's form): its name has a '/'
        raise S3Error(f"{_masked(uri)!r}: an access point ARN is not supported here; give s3://BUCKET/PREFIX with the "
                      "bucket's name")
    if not _BUCKET.fullmatch(bucket):  # what boto3 refuses before sending anything ("Invalid bucket name")
        where = " (an S3-compatible store's address goes in AWS_ENDPOINT_URL_S3, not in the URI)" if ":" in bucket else ""
        raise S3Error(f"{_masked(uri)!r}: {bucket!r} is not a bucket name (letters, digits, '.', '-', '_'){where}; "
                      "expected s3://BUCKET/PREFIX")
    return bucket, key


def errors() -> tuple[type[BaseException], ...]:
    """What a boto3 call raises for a store that refused or failed: botocore's errors, and boto3's
    own (``upload_file`` turns every refusal, NoSuchBucket or AccessDenied, into its
    S3UploadFailedError)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError, Boto3Error


def client():
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - boto3 is in the 'pipeline' extra
        raise S3Error("S3 access needs boto3: pip install 'hsnet[pipeline]'") from exc
    from botocore.config import Config

    # an endpoint that doesn't answer fails in about half a minute, not after boto3's default
    # 60 s connect timeout times 5 attempts
    config = Config(connect_timeout=10, read_timeout=120, retries={"mode": "standard", "max_attempts": 3})
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")
                        or os.environ.get("AWS_ENDPOINT_URL") or None, config=config)


def _hint(uri: str, exc: Exception) -> S3Error:
    from .tracking import mask_text, mask_uri  # the one masking rule: an endpoint or a presigned URL in the text

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    return S3Error(f"{mask_uri(uri)}: {type(exc).__name__}: {mask_text(str(exc))} (endpoint {mask_uri(endpoint)}). "
                   "Check the URI, the credentials "
                   "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment) and, for MinIO, "
                   "AWS_ENDPOINT_URL_S3")


def local_paths(bucket: str, prefix: str, keys: list[str], dest: Path) -> dict[str, Path]:
    """Where each object goes under ``dest``: its key less ``prefix``. Checked for all keys before
    anything is downloaded: a key that would be written outside ``dest`` (absolute once the prefix
    is cut, as ``raw//tmp/x``, or with ``..``), two keys for one file, or a key that is also
    another key's folder, refuses the whole download by name, and nothing is written."""
    targets, bad = {}, []
    for key in keys:
        try:
            targets[key] = safe_join(dest, key[len(prefix):], what=f"object s3://{bucket}/{key}:")
        except UnsafePath as exc:
            bad.append(str(exc))
    owners: dict[str, str] = {}
    for key, path in targets.items():
        norm = os.path.normpath(path)
        if norm in owners:
            bad.append(f"objects s3://{bucket}/{owners[norm]} and s3://{bucket}/{key} are the same file {path}")
        owners[norm] = key
    for norm, key in owners.items():
        for parent in Path(norm).parents:
            if str(parent) in owners:
                bad.append(f"object s3://{bucket}/{owners[str(parent)]} is also the folder of s3://{bucket}/{key}")
                break
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... {len(bad) - 5} more" if len(bad) > 5 else "")
        raise S3Error(f"s3://{bucket}/{prefix}: refusing to download, nothing was written: {shown}. "
                      f"Every object must land inside {dest}: rename or remove these keys")
    return targets


def list_objects(uri: str, *, s3=None) -> list[dict]:
    """The objects under the prefix ``uri`` (folder markers left out), sorted by key: each a dict
    with Key, ETag and Size as S3 lists them (one request per 1,000 objects, nothing downloaded)."""

    bucket, prefix = split_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = s3 or client()
    try:
        objects = [{"Key": o["Key"], "ETag": o.get("ETag", ""), "Size": o.get("Size", 0)}
                   for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                   for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    except errors() as exc:
        raise _hint(uri, exc) from exc
    return sorted(objects, key=lambda o: o["Key"])


def download_prefix(uri: str, dest: str | os.PathLike, *, workers: int = 16, progress: bool = True) -> int:
    """Copy every object under ``uri`` (a prefix) to ``dest``, keeping the relative paths. Returns the count."""
    from tqdm import tqdm

    bucket, prefix = split_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    dest = Path(dest)
    s3 = client()
    keys = [o["Key"] for o in list_objects(uri, s3=s3)]
    if not keys:
        raise S3Error(f"{uri}: no objects under this prefix; upload the raw dataset there first")
    targets = local_paths(bucket, prefix, keys, dest)

    def get(key: str) -> None:
        with atomic_path(targets[key], durable=False) as tmp:
            s3.download_file(bucket, key, str(tmp))

    try:
        with ThreadPoolExecutor(workers) as pool, tqdm(total=len(keys), desc="download", unit="file",
                                                      disable=None if progress else True) as bar:
            for _ in pool.map(get, keys):
                bar.update()
    except errors() as exc:
        raise _hint(uri, exc) from exc
    return len(keys)


def upload_dir(src: str | os.PathLike, uri: str, *, workers: int = 16) -> int:
    """Upload every file under ``src`` to the prefix ``uri``. Returns the count."""

    bucket, prefix = split_uri(uri)
    src = Path(src)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    s3 = client()

    def put(p: Path) -> None:
        key = str(PurePosixPath(prefix) / p.relative_to(src).as_posix()) if prefix else p.relative_to(src).as_posix()
        s3.upload_file(str(p), bucket, key)

    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(put, files))
    except errors() as exc:
        raise _hint(uri, exc) from exc
    return len(files)
