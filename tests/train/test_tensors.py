"""The training input pipeline's tensor cache: decoded once, invalidated by content, kept under its cap."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import hsnet.tensors as tensors
from hsnet.errors import HSNetError
from hsnet.tensors import load_split, prune_cache


def _images(root, names, size=16, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
        rows.append({"path": name, "label": i % 7})
    return rows


def test_a_split_is_decoded_once_and_redecoded_when_a_file_changes(tmp_path, monkeypatch):
    rows = _images(tmp_path, [f"{i}.png" for i in range(5)])
    cache = tmp_path / "cache"
    decoded = []
    real_open = tensors.open_rgb
    monkeypatch.setattr(tensors, "open_rgb", lambda p: decoded.append(p.name) or real_open(p))

    first = load_split(rows, tmp_path, 16, cache_dir=cache, progress=False)
    assert len(decoded) == 5 and first.images.shape == (5, 3, 16, 16)
    assert np.array_equal(first.images[2].transpose(1, 2, 0), np.asarray(Image.open(tmp_path / "2.png")))
    again = load_split(rows, tmp_path, 16, cache_dir=cache, progress=False)
    assert len(decoded) == 5 and np.array_equal(again.images, first.images)  # read from the cache

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "2.png")
    os.utime(tmp_path / "2.png", ns=(1, 1))  # a changed file, whatever the clock says
    changed = load_split(rows, tmp_path, 16, cache_dir=cache, progress=False)
    assert len(decoded) == 10 and not changed.images[2].any()


def test_the_cache_drops_the_least_recently_used_files_beyond_its_cap(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    splits = [_images(tmp_path, [f"{k}_{i}.png" for i in range(4)], seed=k) for k in range(3)]
    one_file = 4 * 3 * 16 * 16 + 128  # images + the .npy header
    monkeypatch.setenv("HSNET_CACHE_MAX_GB", str(2.5 * one_file / 1e9))  # room for two
    a = load_split(splits[0], tmp_path, 16, cache_dir=cache, progress=False)
    load_split(splits[1], tmp_path, 16, cache_dir=cache, progress=False)
    files = sorted(cache.glob("*.npy"), key=lambda f: f.stat().st_mtime)
    assert len(files) == 2
    for i, f in enumerate(files):
        os.utime(f, (1_000 + i, 1_000 + i))
    load_split(splits[0], tmp_path, 16, cache_dir=cache, progress=False)  # a hit: now the most recent
    load_split(splits[2], tmp_path, 16, cache_dir=cache, progress=False)
    left = list(cache.glob("*.npy"))
    assert len(left) == 2 and files[0] in left and files[1] not in left  # split 1 was least recently used

    monkeypatch.setenv("HSNET_CACHE_MAX_GB", "0")  # the split in use is never deleted, however small the cap
    load_split(splits[1], tmp_path, 16, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 1 and files[0] not in list(cache.glob("*.npy"))
    assert a.images[0].any() and a.images.sum() > 0  # deleted under a run that maps it: still readable

    stale = cache / "x_16.123.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (1_000, 1_000))
    fresh = cache / "y_16.456.tmp"  # another process is still writing this one
    fresh.write_bytes(b"half")
    assert stale in prune_cache(cache, keep=cache / "none.npy") and fresh.exists() and not stale.exists()


def test_a_bad_cache_cap_is_named(tmp_path, monkeypatch):
    rows = _images(tmp_path, ["a.png"])
    monkeypatch.setenv("HSNET_CACHE_MAX_GB", "lots")
    with pytest.raises(HSNetError, match="HSNET_CACHE_MAX_GB='lots'"):
        load_split(rows, tmp_path, 16, cache_dir=tmp_path / "cache", progress=False)


def test_a_cache_larger_than_the_free_disk_is_refused_before_anything_is_written(tmp_path):
    """input_size 5000 on a split of 800 images wanted a 60 GB file: it filled the disk instead of
    stopping. The need is n x 3 x size x size bytes; the error names it, the free space and the way out."""
    import shutil

    rows = _images(tmp_path, ["a.png", "b.png"])
    cache = tmp_path / "cache"
    cache.mkdir()
    free = shutil.disk_usage(cache).free
    # two images of 3 x size x size bytes: twice the free space, so that another process freeing some
    # meanwhile can't turn the refusal into a real allocation of that size (it once took 16 GB, and the
    # kernel ended the test worker)
    size = int((2 * free / (2 * 3)) ** 0.5) + 1
    need_gb = 2 * 3 * size * size / 1e9
    with pytest.raises(HSNetError, match=rf"2 images at {size}x{size} need {need_gb:.1f} GB.*{cache}.*"
                                         r"HSNET_CACHE_DIR.*input_size"):
        load_split(rows, tmp_path, size, cache_dir=cache, progress=False)
    assert not list(cache.iterdir())


def test_a_terminated_decode_leaves_no_temporary_file(tmp_path):
    """SIGTERM (a pod's preemption, `timeout`, systemd) in the middle of decoding a split: the
    half-written cache file is removed, as after Ctrl-C (it was left, up to the split's full size)."""
    import subprocess
    import sys
    import textwrap

    _images(tmp_path, [f"{i}.png" for i in range(6)])
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import hsnet.tensors as tensors
        from hsnet import interrupt
        root = Path({str(tmp_path)!r})
        real, seen = tensors.open_rgb, []
        def open_rgb(p):
            seen.append(p)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(p)
        tensors.open_rgb = open_rgb
        rows = [{{"path": f"{{i}}.png", "label": 0}} for i in range(6)]
        try:
            with interrupt.interruptible():
                tensors.load_split(rows, root, 16, cache_dir=root / "cache", progress=False)
        except interrupt.Terminated:
            print("terminated", len(seen))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("terminated"), done.stderr[-2000:]
    assert not list((tmp_path / "cache").iterdir())
