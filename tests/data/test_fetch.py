"""`hsnet data fetch` (the Kubeflow pipeline's first step): from a folder and from S3 (moto's server),
and what a user sees when the source is wrong or the store is unreachable. The DVC source is
tested with a real DVC repository in tests/pipeline/test_dvc.py."""

from __future__ import annotations

import os

import boto3
import pytest

from hsnet.data.fetch import fetch
from hsnet.errors import HSNetError
from hsnet.s3 import S3Error
from tests.servers import FAKE_AWS, free_port, make_bucket, s3_env


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_fetch_from_a_folder_and_its_refusals(tmp_path):
    src = tmp_path / "src"
    (src / "aia" / "aia_joy").mkdir(parents=True)
    (src / "aia" / "aia_joy" / "aia_joy_1.png").write_bytes(b"png-1")
    (src / "aia" / "aia_joy" / "aia_joy_2.png").write_bytes(b"png-2")
    out = tmp_path / "out"
    assert fetch(str(src), out, progress=False)["files"] == 2
    assert _files(out) == _files(src)
    with pytest.raises(HSNetError, match=f"--out {out} exists and is not empty"):
        fetch(str(src), out, progress=False)
    with pytest.raises(HSNetError, match="'nowhere/raw': not an s3:// prefix, not a folder"):
        fetch("nowhere/raw", tmp_path / "other", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HSNetError, match="no files arrived"):
        fetch(str(tmp_path / "empty"), tmp_path / "out2", progress=False)


def test_data_that_changed_since_its_version_was_read_is_not_kept(tmp_path):
    """The pipeline reads the source's version first (its cache key), then fetches: a file changed in
    between (an upload still going on) must not be delivered under the old version: the fetch
    fails saying so and leaves --out empty; with the version unchanged it goes through."""
    from hsnet.data.fetch import source_version

    src = tmp_path / "src"
    (src / "aia" / "aia_joy").mkdir(parents=True)
    photo = src / "aia" / "aia_joy" / "aia_joy_1.png"
    photo.write_bytes(b"png-1")
    before = source_version(str(src))
    photo.write_bytes(b"png-1, re-exported")
    with pytest.raises(HSNetError, match=f"the data at {src} changed while it was being fetched"):
        fetch(str(src), tmp_path / "out", progress=False, expect_version=before)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert fetch(str(src), tmp_path / "out", progress=False, expect_version=source_version(str(src)))["files"] == 1


def test_fetch_from_s3(s3_server, tmp_path, monkeypatch):
    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    make_bucket(s3_server, "fetch-raw")
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    objects = {"aia/aia_joy/aia_joy_1.png": b"one", "aia/aia_sadness/aia_sadness_1.png": b"two",
               "bonnie/bonnie_fear/bonnie_fear_3.png": b"three"}
    for key, body in objects.items():
        s3.put_object(Bucket="fetch-raw", Key=f"raw/ferg/{key}", Body=body)
    s3.put_object(Bucket="fetch-raw", Key="raw/ferg-old/aia/x.png", Body=b"not this one")
    out = tmp_path / "ferg"
    result = fetch("s3://fetch-raw/raw/ferg", out, progress=False)
    assert result["files"] == 3 and _files(out) == objects
    with pytest.raises(S3Error, match="s3://fetch-raw/raw/rafdb: no objects under this prefix"):
        fetch("s3://fetch-raw/raw/rafdb", tmp_path / "rafdb", progress=False)
    with pytest.raises(S3Error, match="s3://no-such-bucket/raw.*NoSuchBucket.*Check the URI"):
        fetch("s3://no-such-bucket/raw", tmp_path / "nb", progress=False)


def test_fetch_from_an_unreachable_s3_endpoint_says_which(tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    out = tmp_path / "raw"
    with pytest.raises(S3Error, match=f"s3://hsnet-data/raw/kdef: EndpointConnectionError.*endpoint {endpoint}"):
        fetch("s3://hsnet-data/raw/kdef", out, progress=False)
    assert not out.exists()


# --- hostile and odd inputs (issue 13) ---------------------------------------------------------

def _client(s3_server):
    return boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.mark.parametrize("bad", ["abs", "dotdot", "file_and_folder"])
def test_s3_keys_that_leave_out_are_refused_and_nothing_is_written(s3_server, tmp_path, monkeypatch, bad):
    """'raw//tmp/x/pwned.txt' (absolute once the prefix is cut) was written to /tmp/x/pwned.txt."""
    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    bucket = f"hostile-{bad.replace('_', '-')}"
    make_bucket(s3_server, bucket)
    s3 = _client(s3_server)
    target = tmp_path / "elsewhere" / "pwned.txt"
    keys = {"abs": "raw/" + str(target), "dotdot": "raw/a/../../elsewhere/pwned.txt",
            "file_and_folder": "raw/aia"}[bad]
    for key in ("raw/aia/aia_joy_1.png", "raw/bonnie/b.png", keys):
        s3.put_object(Bucket=bucket, Key=key, Body=b"data")
    assert keys in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]  # the store kept it
    out = tmp_path / "out"
    with pytest.raises(S3Error, match=f"refusing to download, nothing was written: .*{keys}") as err:
        fetch(f"s3://{bucket}/raw", out, progress=False)
    assert {"abs": "is absolute", "dotdot": "contains '..'", "file_and_folder": "is also the folder of"}[bad] \
        in str(err.value)
    assert not out.exists() and not target.exists() and not (tmp_path / "elsewhere").exists()


def test_local_folder_with_special_files_is_refused(tmp_path):
    from tests.data.test_io import finishes

    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(b"ok")
    os.mkfifo(src / "fifo.png")  # copying it hung the copy
    out = tmp_path / "out"
    with pytest.raises(HSNetError, match="src/fifo.png: a FIFO, not a regular file"):
        finishes(lambda: fetch(str(src), out, progress=False), 30)
    assert not out.exists()
    (src / "fifo.png").unlink()
    (src / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(HSNetError, match="zero.png is a link to /dev/zero, outside"):
        finishes(lambda: fetch(str(src), out, progress=False), 30)


def test_dvc_path_must_stay_in_the_repository(tmp_path):
    for bad in ("/etc", "../secrets", "data/../../x"):
        with pytest.raises(HSNetError, match="--dvc-path"):
            fetch(str(tmp_path), tmp_path / "out", dvc_path=bad, progress=False)
    assert not (tmp_path / "out").exists()


def test_unwritable_out_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HSNetError, match="--out .*file/raw: can't write there"):
        fetch(str(tmp_path), tmp_path / "file" / "raw", progress=False)


def test_what_dvc_get_delivers_is_checked_for_links_out_and_special_files(tmp_path):
    """dvc get writes where dvc decides: afterwards every entry must be a regular file or folder inside
    --out (a link out would be followed by the next step)."""
    from hsnet.data.fetch import _check_tree

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "ok.png").write_bytes(b"x")
    (out / "inner.png").symlink_to(out / "sub" / "ok.png")  # inside: fine
    _check_tree(out, "dvc get repo data/raw")
    (out / "passwd.png").symlink_to("/etc/passwd")
    os.mkfifo(out / "sub" / "fifo.png")
    with pytest.raises(HSNetError, match=r"dvc get repo data/raw: refusing what arrived \(.*passwd.png is a link to "
                                         r"/etc/passwd, outside .*fifo.png is not a regular file"):
        _check_tree(out, "dvc get repo data/raw")


def test_a_folder_checked_out_with_dvc_symlinks_is_copied_and_a_link_elsewhere_refused(tmp_path):
    """A DVC checkout with ``cache.type symlink``: each file is a link into the project's cache,
    which the copy follows (the project's own data); a link to a file outside both, or to a
    folder, is refused by name and nothing is copied. The content version hashes what the copy
    takes: the file's bytes under its name in the folder."""
    import hashlib

    from hsnet.data.fetch import source_version

    project = tmp_path / "project"
    cached = project / ".dvc" / "cache" / "files" / "md5" / "ab" / ("c" * 30)  # DVC 3's layout
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a photo")
    src = project / "data" / "raw"
    src.mkdir(parents=True)
    (src / "a.png").symlink_to(cached)
    (src / "b.png").write_bytes(b"another")
    out = tmp_path / "out"
    fetch(str(src), out, progress=False)
    assert (out / "a.png").read_bytes() == b"a photo" and not (out / "a.png").is_symlink()
    assert (out / "b.png").read_bytes() == b"another"
    expected = hashlib.sha256()
    for name, data in (("a.png", b"a photo"), ("b.png", b"another")):  # as source_version documents it
        expected.update(f"{name}\t{hashlib.sha256(data).hexdigest()}\n".encode())
    assert source_version(str(src)) == f"folder:{expected.hexdigest()}"
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (src / "c.png").symlink_to(secret)
    (src / "dir").symlink_to(tmp_path)
    (project / ".dvc" / "cache" / "notes.txt").write_text("not a cache entry")
    (src / "d.png").symlink_to(project / ".dvc" / "cache" / "notes.txt")  # in the cache, but no entry of it
    with pytest.raises(HSNetError, match=r"c\.png is a link to .*secret\.txt, outside.*d\.png is a link.*dir is a "
                                         r"link to the folder"):
        fetch(str(src), tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(HSNetError, match=r"c\.png is a link"):
        source_version(str(src))
