"""File helpers shared by every step: names from outside turned into paths, atomic writes, and
robust reading of regular files and images."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import math
import logging
import os
import re
import stat
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import HSNetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 64_000_000  # larger files are refused (decompression bombs, scans)


def cache_root() -> Path:
    """Where hsnet keeps its caches (tensor files, image checks, downloaded models):
    ``HSNET_CACHE_DIR``, default ``~/.cache/hsnet``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    try:
        return Path.home() / ".cache" / "hsnet"
    except RuntimeError:  # no HOME and no passwd entry (a cluster's arbitrary uid)
        raise HSNetError(f"there is no home folder to keep hsnet's caches in: set {CACHE_ENV} to a "
                         "writable folder") from None


def cache_folder(path: Path) -> Path:
    """``path`` (a folder under :func:`cache_root`), made if missing; an :class:`HSNetError` naming
    the folder and ``HSNET_CACHE_DIR`` when it can't be made or written (a pod's HOME of "/", a
    read-only home)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HSNetError(f"can't make hsnet's cache folder {path} ({exc.strerror or exc}): set {CACHE_ENV} to "
                         "a writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise HSNetError(f"hsnet's cache folder {path} can't be written: set {CACHE_ENV} to a writable folder")
    return path


CACHE_ENV = "HSNET_CACHE_DIR"  # where hsnet keeps what it can make again: decoded crops, model copies


class FileReadError(HSNetError):
    """A file could not be opened or read (missing, not a regular file, no permission); names it."""


class ImageReadError(FileReadError):
    """An image file could not be read; the message names it."""


class UnsafePath(HSNetError):
    """A name from outside (a manifest row, an object key, a model name) would lead outside its folder."""


def safe_join(root: str | os.PathLike, name: str, *, what: str = "path", links: bool = True,
              also: tuple[str, ...] = ()) -> Path:
    """``name``, a relative name that came from outside (a manifest's path, an S3 key, a model
    name), as a path inside ``root``; :class:`UnsafePath` naming it otherwise.

    Refused: empty names, NUL characters, absolute paths (``/x``, ``C:x``, ``\\x``, ``~x``), any
    ``..`` component (``/`` and ``\\`` both count as separators) and names that lead out of
    ``root`` through a symbolic link that exists now (``links=False``: the name alone is checked,
    for a ``root`` that isn't local), unless it leads into one of the resolved folders ``also``
    (:func:`dvc_cache_of`). Returns ``root / name`` (not resolved).
    """
    text = name if isinstance(name, str) else os.fspath(name)
    shown = f"{what} {text!r}"
    if not text or "\0" in text:
        raise UnsafePath(f"{shown}: {'empty' if not text else 'contains a NUL character'}; "
                         f"expected a path relative to {root}")
    both = text.replace("\\", "/")
    if both.startswith(("/", "~")) or (len(text) > 1 and text[1] == ":" and text[0].isalpha()):
        raise UnsafePath(f"{shown} is absolute; expected a path relative to {root}")
    if ".." in both.split("/"):
        raise UnsafePath(f"{shown} contains '..'; expected a path inside {root}")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"{shown} names {root} itself, not a file in it")
    path = Path(root) / text
    if not links:
        return path
    base = _real_root(root)
    try:
        target = _follow(base, parts)
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UnsafePath(f"{shown}: can't be resolved inside {root} ({exc})") from exc
    if not (target == base or target.startswith(base.rstrip(os.sep) + os.sep) or in_dvc_cache(target, also)):
        raise UnsafePath(f"{shown} leads outside {root} through a symbolic link (to {target})")
    return path


# where DVC keeps a file's content in its cache: files/md5/XX/<30 hex> (DVC 3), XX/<30 hex> (DVC 2)
_DVC_CACHE_ENTRY = re.compile(r"(files/md5/)?[0-9a-f]{2}/[0-9a-f]{30}")


def in_dvc_cache(target: str | os.PathLike, caches: tuple[str, ...]) -> bool:
    """Whether the resolved path ``target`` is a file's entry in one of the DVC caches ``caches``
    (:func:`dvc_cache_of`): a link of a ``cache.type symlink`` checkout. Only an entry's name as DVC
    lays it out counts, so a cache folder that a planted config names (a secrets folder, a home
    directory) lends none of its other files."""
    target = os.fspath(target)
    for cache in caches:
        prefix = cache.rstrip(os.sep) + os.sep
        if target.startswith(prefix) and _DVC_CACHE_ENTRY.fullmatch(target[len(prefix):].replace(os.sep, "/")):
            return True
    return False


def _dvc_cache_dir(config: Path) -> str | None:
    """``cache.dir`` of one DVC config file as DVC reads it: with configobj, as DVC does, section and
    key names in any case (DVC lowers them), inline ``# comments`` and blanks in ``[ cache ]``
    stripped, quotes removed; None when unset or unreadable."""
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        from configobj import ConfigObj, ConfigObjError  # DVC's own reader (a dependency of dvc)
    except ImportError:  # hsnet without dvc: the same rules, by hand
        return _ini_value(text, "cache", "dir")
    try:
        parsed = ConfigObj(text.splitlines())
    except ConfigObjError:
        return None
    for section, values in parsed.items():
        if section.lower() == "cache" and isinstance(values, dict):
            for key, value in values.items():
                if key.lower() == "dir" and isinstance(value, str):
                    return value.strip() or None
    return None


def _ini_value(text: str, section: str, key: str) -> str | None:
    """``key`` of ``[section]`` in configobj's INI dialect, which DVC's config is: names in any case,
    indentation ignored, a value in quotes taken whole, else cut at an inline ``#``."""
    current, found = None, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]").strip().strip("'\"").strip().lower()
            continue
        name, sep, value = line.partition("=")
        if not sep or current != section or name.strip().lower() != key:
            continue
        value = value.strip()
        if value[:1] in ("'", '"') and value[1:].find(value[0]) >= 0:
            found = value[1:1 + value[1:].find(value[0])]
        else:
            found = value.split("#", 1)[0].strip()
    return found or None


def dvc_cache_of(folder: str | os.PathLike) -> tuple[str, ...]:
    """The cache folder (resolved) of the DVC project ``folder`` is in, as DVC finds it: ``cache.dir``
    of the project's ``.dvc/config.local`` or ``.dvc/config`` (relative to ``.dvc``), else
    ``.dvc/cache``; () outside a DVC project. With ``cache.type symlink`` every tracked file of a
    checkout is a link into it, which :func:`safe_join` then follows: the project's own data, not
    an escape. The project is looked for above ``folder`` only (a ``.dvc`` in the data itself came
    with it), and a cache that holds ``folder`` (``/``, ``..``) counts as none. A cache set only in
    DVC's user or system config is not seen."""
    here = Path(os.path.realpath(folder))
    for project in here.parents:  # above the data: a .dvc inside it came with the data, not from the user
        dvc_dir = project / ".dvc"
        if dvc_dir.is_dir():  # what DVC itself looks for
            break
    else:
        return ()
    cache = dvc_dir / "cache"
    for name in ("config", "config.local"):  # the local one wins
        configured = _dvc_cache_dir(dvc_dir / name)
        if configured:
            cache = dvc_dir / os.path.expanduser(configured)
    cache = os.path.realpath(cache)
    if here.as_posix().startswith(cache.rstrip(os.sep) + os.sep):  # a "cache" holding the data (e.g. /) is no cache
        return ()
    return (cache,)


@functools.lru_cache(maxsize=64)
def _real_root_of(root: str, dev: int, ino: int) -> str:
    return os.path.realpath(root)


def _real_root(root: str | os.PathLike) -> str:
    """``root`` resolved, remembered per (path, device, inode): a manifest's 30k rows share one."""
    try:
        st = os.stat(root)
    except OSError:
        return os.path.realpath(root)
    return _real_root_of(os.fspath(root), st.st_dev, st.st_ino)


def _follow(base: str, parts: list[str]) -> str:
    """Where ``base/parts`` leads: one lstat per part, links resolved where they are; the parts
    after the first one that doesn't exist are taken as they are (they can't be links)."""
    cur = base
    for i, part in enumerate(parts):
        nxt = os.path.join(cur, part)
        try:
            mode = os.lstat(nxt).st_mode
        except OSError:  # missing, not a folder, name too long: nothing further to follow
            return os.path.join(nxt, *parts[i + 1:])
        cur = str(Path(nxt).resolve()) if stat.S_ISLNK(mode) else nxt
    return cur


def _umask() -> int:
    """The process's umask, from /proc where there is one (os.umask can only be read by setting
    it, which races other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


PROC_SELF = "/proc/self"  # its mountinfo (where the cgroup hierarchies are) and cgroup (where in them this process is)


def _cgroup_mounts(proc_self: Path):
    """(version, root, mountpoint) of each cgroup hierarchy that holds the CPU controller, from
    mountinfo: ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS``."""
    for line in (proc_self / "mountinfo").read_text(encoding="utf-8", errors="replace").splitlines():
        mine, sep, theirs = line.partition(" - ")
        fields, fs = mine.split(), theirs.split(" ")  # one space each: a source may be empty ("cgroup2  rw")
        if not sep or len(fields) < 5 or len(fs) < 3:
            continue
        root, point = (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f) for f in fields[3:5])
        if fs[0] == "cgroup2":
            yield 2, root, Path(point)
        elif fs[0] == "cgroup" and "cpu" in fs[2].split(","):
            yield 1, root, Path(point)


def _cpu_limit_at(version: int, folder: Path) -> float | None:
    """The CPU limit one cgroup sets, in cores: v2's ``cpu.max`` ("QUOTA PERIOD", QUOTA "max" for
    none) or v1's ``cpu.cfs_quota_us`` (-1 for none) over ``cpu.cfs_period_us``; None for none."""
    try:
        if version == 2:
            quota, period = (folder / "cpu.max").read_text(encoding="ascii").split()[:2]
            if quota == "max":
                return None
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
            period = (folder / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        quota, period = int(quota), int(period)
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError, OverflowError):  # none here, or nothing a kernel writes
        return None


def cgroup_cpu_limit(proc_self: str | os.PathLike = PROC_SELF) -> float | None:
    """The CPU time this process's cgroups allow it, in cores (``docker --cpus``, a pod's
    ``limits.cpu``, a systemd ``CPUQuota``), or None where none is set: the smallest limit on the
    way from its own cgroup up to the top of the hierarchy it can see, in cgroup v2 and in v1's
    CPU controller. /proc/self/cgroup names the process's cgroup from the hierarchy's root; a
    container sees the hierarchy from its own cgroup down (mountinfo's ROOT), which is cut off."""
    proc_self = Path(proc_self)
    try:
        mounts = list(_cgroup_mounts(proc_self))
        where = {}  # version -> the process's cgroup path
        for line in (proc_self / "cgroup").read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                where[2] = parts[2]
            elif "cpu" in parts[1].split(","):
                where[1] = parts[2]
    except OSError:  # no /proc (macOS) or none readable
        return None
    limits = []
    for version, root, point in mounts:
        path = where.get(version)
        if path is None:
            continue
        if root != "/":
            if path != root and not path.startswith(root.rstrip("/") + "/"):
                continue  # this mount shows another part of the hierarchy
            path = path[len(root.rstrip("/")):]
        parts = [p for p in path.split("/") if p]
        if ".." in parts:
            continue
        for depth in range(len(parts), -1, -1):  # the process's own cgroup, then each parent
            limit = _cpu_limit_at(version, point.joinpath(*parts[:depth]))
            if limit is not None:
                limits.append(limit)
    return min(limits, default=None)


def usable_cores(proc_self: str | os.PathLike = PROC_SELF) -> int:
    """The CPU cores this process may use, not the machine's: those it may run on (a container's
    cpuset, ``taskset``, a Kubernetes pod's exclusive cores), fewer where its cgroups allow less
    CPU time than that (:func:`cgroup_cpu_limit`), rounded up; at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity here (macOS)
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(proc_self)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


TMP_SUFFIX = ".tmp"  # atomic_path's temporary files: .NAME.RANDOM.tmp beside the target
STALE_TMP_SECONDS = 3600


_NAME_MAX = 255  # bytes in one file name: Linux's (ext4, xfs, overlayfs) and macOS's limit


def _tmp_stem(name: str, limit: int = _NAME_MAX) -> str:
    """``name`` as :func:`atomic_path`'s temporary name holds it: cut so that ``.NAME.XXXXXXXX.tmp``
    stays within a file name's ``limit`` bytes (NAME_MAX) when ``name`` itself does."""
    room = limit - len(f"..XXXXXXXX{TMP_SUFFIX}")
    raw = os.fsencode(name)
    return name if len(raw) <= room else os.fsdecode(raw[:room])  # a cut character: bytes kept as they are


def is_cut_in_tmp_name(name: str) -> bool:
    """Whether :func:`atomic_path`'s temporary of a file called ``name`` holds only the start of it."""
    return _tmp_stem(name) != name


def temp_dir(prefix: str, suffix: str = "", *, dir: str | os.PathLike) -> Path:
    """A new folder in ``dir`` named as :func:`tempfile.mkdtemp` names one (no other process takes
    it), with the mode an ordinary ``mkdir`` gives (0777 less the umask: 0755 by default), not
    mkdtemp's 0700: it is renamed into place, and what it becomes is read by others too (a
    teammate sharing a cache, a pod's uid reading a volume another filled, a web server)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dir))
    try:  # the setgid bit mkdir gave it in a team's setgid folder kept (its files get the team's group)
        path.chmod((path.stat().st_mode & 0o7000) | (0o777 & ~_umask()))
    except OSError:  # a filesystem without modes: keep mkdtemp's
        pass
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    A crash or an exception leaves whatever ``path`` held before untouched. With ``durable`` the
    new file is flushed to the disk before the rename (and the folder after it), so a machine
    that loses power just after finds the old file or the new one whole, never a name pointing at
    a file cut short; without it (many small files that a re-run writes again, e.g. crops) only a
    killed process is survived. The new file gets the mode an ordinary write would give it: the
    old file's mode, or 0666 less the umask (0644 by default), not mkstemp's 0600. A killed
    process leaves ``.NAME.*.tmp``: :func:`clean_stale_tmp` removes old ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{_tmp_stem(path.name)}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        os.fchmod(fd, mode)
    except OSError:  # a filesystem without modes: keep mkstemp's
        pass
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            _flush(tmp)
        os.replace(tmp, path)
        if durable:
            _flush(path.parent, folder=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _flush(path: str | os.PathLike, *, folder: bool = False) -> None:
    """fsync ``path`` (a folder: its entries, e.g. a rename); a filesystem that can't (some network
    and virtual ones refuse a folder's fsync) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    except OSError:
        if folder:
            return
        try:  # a file its mode makes write-only (rewriting a 0200 file keeps its mode)
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            return  # neither: not ours to flush (it is renamed all the same)
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def sync_filesystem(folder: str | os.PathLike) -> None:
    """Flush what was written to the filesystem ``folder`` is on (Linux ``syncfs``), not every
    mounted one (``os.sync``, the fallback elsewhere, would wait on a slow network mount too)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        os.sync()
        return
    try:
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def clean_stale_tmp(folder: str | os.PathLike, name: str = "*", *, recursive: bool = False,
                    older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files that killed atomic writes of ``name`` (a glob; default: any
    name) left in ``folder`` (and below it with ``recursive``) more than ``older_than`` seconds ago;
    a write in progress keeps its file's modification time fresh, so it is left alone. Regular
    files only (:func:`atomic_path` makes nothing else). Returns what was deleted."""
    return remove_stale_temporaries(folder, f".{name}.*{TMP_SUFFIX}", recursive=recursive, older_than=older_than,
                                    files_only=True)


def clean_stale_tmp_of(path: str | os.PathLike, *, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete the temporaries killed :func:`atomic_path` writes of ``path`` itself left beside it
    (named as atomic_path names them: a long name cut, no character of it read as a glob)."""
    path = Path(path)
    return clean_stale_tmp(path.parent, glob.escape(_tmp_stem(path.name)), older_than=older_than)


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str, *, recursive: bool = False,
                             older_than: float = STALE_TMP_SECONDS, files_only: bool = False) -> list[Path]:
    """Delete what a killed process left in ``folder`` (and below it with ``recursive``) under a
    temporary name (``pattern``, a glob: files, links, or folders with all they hold; with
    ``files_only`` regular files alone) when nothing in it changed for ``older_than`` seconds; work
    in progress keeps its files fresh and is left alone. Returns what was deleted."""
    import shutil

    folder, gone, now = Path(folder), [], time.time()
    if not folder.is_dir():
        return gone
    for item in list((folder.rglob if recursive else folder.glob)(pattern)):
        try:
            st = item.lstat()  # a link is removed, not followed
            folder_item, newest = stat.S_ISDIR(st.st_mode), st.st_mtime
            if files_only and not stat.S_ISREG(st.st_mode):
                continue
            if folder_item:
                for base, dirs, files in os.walk(item):
                    for name in dirs + files:
                        newest = max(newest, os.lstat(os.path.join(base, name)).st_mtime)
            if now - newest <= older_than:
                continue
            if folder_item:
                shutil.rmtree(item)
            else:
                item.unlink()
            gone.append(item)
        except FileNotFoundError:  # another process removed it, or its owner finished
            pass
        except PermissionError as exc:  # another user's, in a shared folder (sticky, as /tmp): theirs to remove
            log.info("left %s, which a killed process left: this user can't remove it (%s)", item, exc.strerror)
    return gone


@contextlib.contextmanager
def only_writer(folder: str | os.PathLike, who: str, instead: str):
    """Hold ``folder`` for this process while the block runs: another process asking for it (a second
    ``who`` into the same output folder) gets an error naming the folder and ``instead`` (what to do).

    An advisory lock (``flock``) on the folder itself, so nothing is written into it; the kernel
    releases it when the process ends, killed or not, so a crash never leaves the folder locked.
    A file system without such locks for folders (NFS emulates flock with write locks, which a
    folder can't take) gets a warning, and the block runs unguarded."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise HSNetError(f"{folder}: can't open the folder to hold it ({exc.strerror or exc}); {who} needs to "
                         "read and write it: fix its permissions, or give another output folder") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HSNetError(f"{folder} is in use by another {who}, which is still running: {instead}") from None
        except OSError as exc:
            log.warning("%s: can't lock the folder here (%s); make sure no other %s writes into it", folder,
                        exc.strerror, who)
        yield Path(folder)
    finally:
        os.close(fd)  # releases the lock


def file_stamp(st: os.stat_result) -> str:
    """What tells a cached result about a file from the file now, besides its path: size,
    modification time, and the change time and inode, which no tool can set back (a photo replaced
    by one of the same size and modification time, as ``cp -p``, ``rsync -a`` or a re-extracted
    archive leave it, is seen). Copying a folder elsewhere changes them too: its files are read again."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work is done;
    :class:`HSNetError` naming ``what`` (e.g. ``--out``) otherwise."""
    folder = check_creatable(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HSNetError(f"{what} {folder}: can't write there ({exc.strerror or exc}); "
                         "give a folder you can write to") from exc
    return folder


def check_creatable(folder: str | os.PathLike, what: str) -> Path:
    """Prove that ``folder`` can be created and written into, before any work is done, creating
    nothing (a step that then refuses its inputs leaves no empty folder behind): the nearest part
    of the path that exists must be a folder a file can be written in. :class:`HSNetError` naming
    ``what`` (e.g. ``--out``) otherwise."""
    folder = Path(folder)
    # where the kernel will put it: links followed, '..' taken after them (a/missing/../.. is a's parent)
    probe = Path(os.path.realpath(folder))
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise HSNetError(f"{what} {folder}: can't write there ({probe} is not a folder); "
                         "give a folder you can write to")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise HSNetError(f"{what} {folder}: can't write there ({exc.strerror or exc}); "
                         "give a folder you can write to") from exc
    return folder


def output_file(path: str | os.PathLike, what: str) -> Path:
    """Ready ``path`` (a file a step will write atomically) before any work is done: refused, naming
    ``what`` (e.g. ``--out``), when it is a folder or its folder can't be written; the temporaries a
    killed write of it left (an hour old) are removed."""
    path = Path(path)
    if len(os.fsencode(path.name)) > _NAME_MAX:
        raise HSNetError(f"{what} {path}: its file name is {len(os.fsencode(path.name))} bytes, over the "
                         f"{_NAME_MAX} a file name may have; give a shorter one")
    try:
        if path.is_dir():
            raise HSNetError(f"{what} {path} is a folder; give a file name")
    except OSError as exc:  # a folder in the path too long, a loop of links
        raise HSNetError(f"{what} {path}: {exc.strerror or exc}; give another path") from exc
    check_creatable(path.parent, what)
    clean_stale_tmp_of(path)
    return path


def open_regular(path: str | os.PathLike):
    """``path`` opened for binary reading if it is a regular file (after symbolic links);
    :class:`FileReadError` naming it otherwise. A FIFO, a device, a socket or a directory is
    refused without blocking on it or reading from it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise FileReadError(f"{path}: file not found") from exc
    except OSError as exc:
        raise FileReadError(f"{path}: can't open it ({exc.strerror or exc})") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a file")
            raise FileReadError(f"{path}: {kind}, not a regular file; only regular files are read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a regular file's content, read in 1 MiB blocks; :class:`FileReadError`
    naming the file when it can't be read."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        try:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        except OSError as exc:
            raise FileReadError(f"{path}: read error ({exc.strerror or exc})") from exc
    return h.hexdigest()


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: not if it holds lone surrogates (the undecodable
    bytes of a file name, as os.walk hands them over; ``\\ud800`` escapes in JSON)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# what Pillow raises for a malformed file: besides OSError/ValueError/SyntaxError, its parsers fail
# on odd EXIF or TIFF tags with struct.error, TypeError, IndexError, KeyError, EOFError or
# ZeroDivisionError (attack 24k: TileOffsets stored as text). A file that raises one is unreadable,
# in its own record, never the end of a batch or a request.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, struct.error, TypeError, IndexError, KeyError, EOFError,
                 ZeroDivisionError, Image.DecompressionBombError)


def open_rgb(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image fully as 8-bit RGB, whatever it was stored as.

    Handles EXIF orientation, grayscale, palette, RGBA/LA (composited on white), CMYK and
    16-bit images. Raises :class:`ImageReadError` naming the file otherwise.
    """
    path = Path(path)
    try:
        with open_regular(path) as f, Image.open(f) as img:
            if img.width * img.height > max_pixels:
                raise ImageReadError(
                    f"{path}: {img.width}x{img.height} pixels is over the limit of {max_pixels:,}; "
                    "downscale it first")
            img = ImageOps.exif_transpose(img)
            img.load()
            return to_rgb(img)
    except ImageReadError:
        raise
    except FileReadError as exc:
        raise ImageReadError(str(exc)) from exc
    except DECODE_ERRORS as exc:
        # PIL names the file object it was given ("<_io.BufferedReader name=7>": a descriptor number,
        # another at every run); the reason must read the same for the same file (validate's verdict)
        said = re.sub(r"\s*<_io\.\w+ name=[^>]*>", "", str(exc))
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {said})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("La", "RGBa"):  # alpha stored premultiplied (a TIFF's ExtraSamples 1): Pillow has no La -> L
        img = img.convert(img.mode[:-1] + "A")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, F ...
