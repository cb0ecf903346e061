"""hsnet.io and the manifest reader at the edges: names from outside that leave their folder,
files that aren't regular files, manifests that aren't UTF-8 CSV, the files atomic writes leave."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hsnet.data.manifest import ManifestError, manifest_columns, read_manifest, write_manifest
from hsnet.errors import HSNetError
from hsnet.io import (FileReadError, ImageReadError, UnsafePath, atomic_path, check_writable, clean_stale_tmp,
                      open_regular, open_rgb, safe_join, sha256_file, write_json)


def finishes(fn, seconds: float = 10.0):
    """fn()'s result or exception, or a failure if it blocks (a FIFO opened for reading blocks
    until a writer comes): run in a daemon thread that is abandoned if it hangs."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.png", "a/../../x.png", "a/b/../../../x", "..\\x.png",
                                  "C:x.png", "c:\\x.png", "\\\\server\\share\\x.png", "~/x.png", "", "a\0b.png",
                                  ".", "a/.."])
def test_safe_join_refuses_names_that_leave_the_root(tmp_path, name):
    with pytest.raises(UnsafePath) as err:
        safe_join(tmp_path, name, what="manifest path")
    assert "manifest path" in str(err.value)


@pytest.mark.parametrize("name", ["x.png", "a/b/x.png", "x.png\n", "a\\b.png", "..x.png", "x..png", "./a/x.png",
                                  "ÄÖ/日本.png", "ab:c.png"])
def test_safe_join_keeps_names_inside(tmp_path, name):
    assert safe_join(tmp_path, name) == tmp_path / name


def test_safe_join_follows_links_that_exist(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (root / "out").symlink_to(outside)
    (root / "file.png").symlink_to(outside / "secret.png")
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "ok").symlink_to(root / "inner")
    (root / "loop").symlink_to(root / "loop")
    for name in ("out/secret.png", "file.png", "zero.png", "out/new/deeper.png"):
        with pytest.raises(UnsafePath, match="outside .* symbolic link"):
            safe_join(root, name)
    assert safe_join(root, "ok/x.png") == root / "ok" / "x.png"
    assert safe_join(outside, "x.png", links=False) == outside / "x.png"
    with pytest.raises(UnsafePath):
        safe_join(root, "loop/x.png")


def test_only_regular_files_are_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")  # its open raises (ELOOP), as root too
    for name, what in (("fifo.png", "a FIFO"), ("dir.png", "a directory"), ("zero.png", "a device"),
                       ("loop.png", "can't open it"), ("missing.png", "file not found")):
        for reader, error in ((open_regular, FileReadError), (sha256_file, FileReadError), (open_rgb, ImageReadError)):
            with pytest.raises(error) as err:
                finishes(lambda: reader(tmp_path / name))
            assert str(tmp_path / name) in str(err.value) and what in str(err.value)
    (tmp_path / "ok.bin").write_bytes(b"abc")
    with open_regular(tmp_path / "ok.bin") as f:
        assert f.read() == b"abc"


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    import errno

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "x.png").chmod(0)
    if os.geteuid() == 0:  # root reads files whatever their mode (CI runs as root): the kernel's answer to others
        real_open = os.open

        def refused(path, *args, **kwargs):
            if os.fspath(path) == str(tmp_path / "x.png"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refused)
    with pytest.raises(ImageReadError, match="x.png: can't open it .*ermission"):
        open_rgb(tmp_path / "x.png")


def test_atomic_writes_respect_the_umask_and_an_existing_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
        os.umask(0o027)
        write_json(tmp_path / "b.json", {"b": 1})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
        (tmp_path / "a.json").chmod(0o600)  # a private file stays private when rewritten
        write_json(tmp_path / "a.json", {"a": 2})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_stale_temporary_files_are_cleaned_fresh_ones_kept(tmp_path):
    (tmp_path / "sub").mkdir()
    old_tmp, fresh_tmp = tmp_path / ".last.pt.abc123.tmp", tmp_path / ".last.pt.def456.tmp"
    deep = tmp_path / "sub" / ".x.png.zz.tmp"
    other = tmp_path / "notes.tmp"  # not an atomic write's: never touched
    for p in (old_tmp, fresh_tmp, deep, other):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for p in (old_tmp, deep, other):
        os.utime(p, (two_hours_ago, two_hours_ago))
    assert clean_stale_tmp(tmp_path, "last.pt") == [old_tmp]
    assert fresh_tmp.exists() and deep.exists() and other.exists()
    odd = [tmp_path / ".d.zz.tmp", tmp_path / ".l.zz.tmp"]  # a folder and a link: atomic writes make neither
    odd[0].mkdir()
    odd[1].symlink_to(other)
    for p in odd:
        os.utime(p, (two_hours_ago, two_hours_ago), follow_symlinks=False)
    assert clean_stale_tmp(tmp_path, recursive=True) == [deep]
    assert fresh_tmp.exists() and other.exists() and odd[0].is_dir() and odd[1].is_symlink()
    with atomic_path(tmp_path / "y.txt") as tmp:  # what a killed write leaves has this name
        assert tmp.name.startswith(".y.txt.") and tmp.name.endswith(".tmp") and tmp.parent == tmp_path
        tmp.write_text("y")


def test_check_writable_names_the_option(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HSNetError, match=r"--out .*file/sub: can't write there"):
        check_writable(tmp_path / "file" / "sub", "--out")
    assert check_writable(tmp_path / "new" / "deep", "--out").is_dir()
    assert list((tmp_path / "new" / "deep").iterdir()) == []  # the probe leaves nothing behind


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_manifest_that_is_not_utf8_is_named(tmp_path):
    m = _write(tmp_path / "m.csv", "path,label,label_name,split,subject\nä.png,0,joy,train,\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"m.csv is not UTF-8 text \(line 2: .*save it as UTF-8"):
        read_manifest(m)
    bom = _write(tmp_path / "bom.csv", "\ufeffpath,label,label_name,split,subject\nä.png,0,joy,train,\n".encode())
    assert read_manifest(bom)[0]["path"] == "ä.png" and manifest_columns(bom)[0] == "path"


def test_manifest_special_files_and_bad_rows(tmp_path):
    os.mkfifo(tmp_path / "fifo.csv")
    with pytest.raises(ManifestError, match="fifo.csv: a FIFO, not a regular file"):
        finishes(lambda: read_manifest(tmp_path / "fifo.csv"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ManifestError, match="dir.csv: a directory"):
        read_manifest(tmp_path / "dir.csv")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "missing.csv")
    head = "path,label,label_name,split,subject\n"
    long_row = _write(tmp_path / "long.csv", (head + "a.png,0,joy,train,,extra\n").encode())
    with pytest.raises(ManifestError, match="long.csv line 2: 6 fields, the header has 5"):
        read_manifest(long_row)
    short = _write(tmp_path / "short.csv", (head + "a.png,0\n").encode())
    with pytest.raises(ManifestError, match="short.csv line 2: 2 fields, the header has 5"):  # a line cut short
        read_manifest(short)
    bad_label = _write(tmp_path / "bad.csv", (head + "a.png,1e3,joy,train,\n").encode())
    with pytest.raises(ManifestError, match="row 1: label '1e3' is not an integer"):
        read_manifest(bad_label)
    nul = _write(tmp_path / "nul.csv", (head + "a\0.png,0,joy,train,\n").encode())
    rows = read_manifest(nul)  # read: the path is refused where it is used (safe_join)
    with pytest.raises(UnsafePath, match="NUL"):
        safe_join(tmp_path, rows[0]["path"])


def test_newline_in_a_path_survives_the_manifest(tmp_path):
    rows = [{"path": "x.png\n", "label": 0, "label_name": "joy", "split": "train", "subject": ""}]
    write_manifest(tmp_path / "m.csv", rows)
    assert read_manifest(tmp_path / "m.csv") == rows


def test_tensor_loading_refuses_paths_outside_the_root(tmp_path):
    from hsnet.tensors import load_split

    root, outside = tmp_path / "crops", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "secret.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "ok.png")
    (root / "images" / "link.png").symlink_to(outside / "secret.png")
    for bad, why in ((str(outside / "secret.png"), "is absolute"), ("../outside/secret.png", "contains '..'"),
                     ("images/link.png", "symbolic link")):
        rows = [{"path": "images/ok.png", "label": 0}, {"path": bad, "label": 1}]
        with pytest.raises(UnsafePath, match=why):
            load_split(rows, root, 8, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(HSNetError, match="missing.png: No such file.*re-run 'hsnet crop'"):
        load_split([{"path": "images/missing.png", "label": 0}], root, 8, cache_dir=tmp_path / "cache",
                   progress=False)
    split = load_split([{"path": "images/ok.png", "label": 0}], root, 8, cache_dir=tmp_path / "cache",
                       progress=False)
    assert split.images.shape == (1, 3, 8, 8)


def test_stale_temporaries_go_work_in_progress_stays(tmp_path):
    """A folder a killed download left (nothing changed in it for two hours) is removed; one whose
    file is still being written (fresh, deep inside an old folder) and other names are kept."""
    import time

    from hsnet.io import remove_stale_temporaries

    old = time.time() - 7200
    killed, writing = tmp_path / ".download-a", tmp_path / ".download-b"
    for folder in (killed, writing):
        (folder / "model" / "data").mkdir(parents=True)
        (folder / "model" / "data" / "model.pt").write_bytes(b"half")
    for p in [killed, *killed.rglob("*"), writing, writing / "model", writing / "model" / "data"]:
        os.utime(p, (old, old))
    kept = tmp_path / "hsnet-sample-v1"
    kept.mkdir()
    os.utime(kept, (old, old))
    assert remove_stale_temporaries(tmp_path, ".download-*", older_than=3600) == [killed]
    assert not killed.exists() and writing.exists() and kept.exists()


def test_only_writer_refuses_a_second_holder_and_runs_unguarded_where_folders_cannot_be_locked(
        tmp_path, monkeypatch, caplog):
    import fcntl
    import errno

    from hsnet.io import only_writer

    with only_writer(tmp_path, "hsnet train", "use another --out"):
        with pytest.raises(HSNetError, match=rf"{tmp_path} is in use by another hsnet train.*use another --out"):
            with only_writer(tmp_path, "hsnet train", "use another --out"):
                pass
    with only_writer(tmp_path, "hsnet train", "use another --out"):  # released at the end of the block
        pass

    def nfs(fd, op):  # NFS: flock is a write lock, which a folder opened for reading can't take
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(fcntl, "flock", nfs)
    ran = []
    with only_writer(tmp_path, "hsnet train", "use another --out"):
        ran.append(True)
    assert ran and "can't lock the folder" in caplog.text and str(tmp_path) in caplog.text


def test_a_folder_that_cant_be_held_is_named(tmp_path, monkeypatch):
    """only_writer on a folder it can't open (writable but not readable for this user): an error
    naming the folder and what to do, not a traceback."""
    import errno

    from hsnet.errors import HSNetError
    from hsnet.io import only_writer

    real_open = os.open

    def refused(path, flags, *args, **kwargs):
        if os.fspath(path) == str(tmp_path) and flags & os.O_DIRECTORY:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(HSNetError, match=f"{tmp_path}: can't open the folder to hold it .*ermission.*hsnet train"):
        with only_writer(tmp_path, "hsnet train", "x"):
            pass


AS_ANOTHER_USER = r'''
import os, sys
from pathlib import Path
from hsnet.errors import HSNetError
from hsnet.io import atomic_path, only_writer

work = Path(sys.argv[1])
unreadable = work / "out"  # writable, not readable: the folder can't be opened to hold it
try:
    with only_writer(unreadable, "hsnet crop", "x"):
        print("held")
except HSNetError as exc:
    print("refused:", exc)
secret = work / "w" / "write-only"  # 0200: an ordinary rewrite keeps the mode; the flush opens it write-only
with atomic_path(secret) as tmp:
    tmp.write_bytes(b"new")
print("mode", oct(os.stat(secret).st_mode & 0o777))
'''


def _without_root_rights():
    """In the child, before exec: drop the two capabilities that let root ignore permission bits
    from the bounding set, so the new program runs as root but obeys them like any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_only_writer_and_the_flush_without_root_rights(tmp_path):
    """What the two tests above simulate with a refused ``os.open``, for real: CI runs as root, who
    may open anything, so the script runs without root's rights to ignore permission bits there.
    A folder the user may write but not read can't be held (a clear error naming it), and a
    write-only file is rewritten with the flush and keeps its mode (the flush opens it write-only)."""
    import stat
    import subprocess
    import sys

    import hsnet

    (tmp_path / "out").mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "write-only").write_bytes(b"old")
    os.chmod(tmp_path / "w" / "write-only", 0o200)
    os.chmod(tmp_path / "out", 0o300)
    try:
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(hsnet.__file__).parent.parent)}
        done = subprocess.run([sys.executable, "-c", AS_ANOTHER_USER, str(tmp_path)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=_without_root_rights if os.geteuid() == 0 else None)
        assert done.returncode == 0, done.stderr
        out = done.stdout.splitlines()
        assert out[0].startswith(f"refused: {tmp_path / 'out'}: can't open the folder to hold it"), out
        assert "ermission denied" in out[0] and "hsnet crop" in out[0], out
        assert out[1] == "mode 0o200", out
        assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o300
        os.chmod(tmp_path / "w" / "write-only", 0o600)
        assert (tmp_path / "w" / "write-only").read_bytes() == b"new"
    finally:
        os.chmod(tmp_path / "out", 0o700)
