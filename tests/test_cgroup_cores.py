"""hsnet's thread pools count the CPU time a process may use, wherever its limit is set.

A container's or a pod's CPU limit (``docker --cpus``, ``limits.cpu``) lives in a cgroup: in
cgroup v2 as ``cpu.max`` ("QUOTA PERIOD"), in cgroup v1 as ``cpu.cfs_quota_us`` and
``cpu.cfs_period_us`` (-1: none). The limit that holds is the smallest on the way from the
process's own cgroup up to the hierarchy's root (a systemd slice's ``CPUQuota``, a pod's limit
above its container's), and a container sees only its part of the hierarchy (mountinfo's root).
"""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hsnet.io import cgroup_cpu_limit

V1_CPU = Path("/sys/fs/cgroup/cpu")


def _v1_writable() -> bool:
    try:
        return (os.geteuid() == 0 and (V1_CPU / "cpu.cfs_quota_us").is_file()
                and os.access(V1_CPU, os.W_OK))
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _v1_writable(),
                    reason="needs root and a writable cgroup v1 cpu controller (this CI machine has one)")
def test_a_parents_v1_quota_limits_a_process_in_a_child_cgroup():
    """The real kernel: a parent cgroup with half a core (quota 50000 of 100000 µs), the process in
    an unlimited child below it (docker's layout on a cgroup v1 host: /docker/<id>, a systemd
    slice above a service). Half a core, rounded up, is 1 core, not this machine's cores."""
    parent = V1_CPU / f"hsnet-test-{uuid.uuid4().hex[:8]}"
    child = parent / "child"
    parent.mkdir()
    try:
        child.mkdir()
        (parent / "cpu.cfs_period_us").write_text("100000")
        (parent / "cpu.cfs_quota_us").write_text("50000")
        code = "from hsnet.io import cgroup_cpu_limit, usable_cores; print(cgroup_cpu_limit(), usable_cores())"
        out = subprocess.run(
            ["sh", "-c", f'echo $$ > "{child}/cgroup.procs" && exec "$0" -c "$1"', sys.executable, code],
            capture_output=True, text=True, timeout=120, check=True).stdout.split()
        assert out == ["0.5", "1"], out
    finally:
        for d in (child, parent):
            if d.exists():
                d.rmdir()


def _fake(tmp_path: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "cgroup").write_text(cgroup)
    return proc


def test_v2_the_smallest_cpu_max_on_the_way_up_to_the_mount(tmp_path):
    """cgroup v2 on a host: the process in /kubepods/pod1/ctr; the pod's limit (1.5 cores) is below
    the container's own (3.5) and holds; the root of the hierarchy has no cpu.max."""
    mnt = tmp_path / "sys" / "fs" / "cgroup"
    ctr = mnt / "kubepods" / "pod1" / "ctr"
    ctr.mkdir(parents=True)
    (ctr / "cpu.max").write_text("350000 100000\n")
    (ctr.parent / "cpu.max").write_text("150000 100000\n")
    (ctr.parent.parent / "cpu.max").write_text("max 100000\n")
    proc = _fake(tmp_path, f"41 23 0:38 / {mnt} rw,relatime - cgroup2 cgroup2 rw\n",
                 "0::/kubepods/pod1/ctr\n")
    assert cgroup_cpu_limit(proc) == 1.5
    (ctr.parent / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(proc) == 3.5
    (ctr / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(proc) is None


def test_v2_inside_a_container_that_sees_its_own_cgroup_as_root(tmp_path):
    """A container with its own cgroup namespace: /proc/self/cgroup says "0::/" and the mount's
    root is its cgroup, so /sys/fs/cgroup/cpu.max is its limit (docker --cpus=0.25 → 1 core)."""
    mnt = tmp_path / "cg"
    mnt.mkdir()
    (mnt / "cpu.max").write_text("25000 100000\n")
    proc = _fake(tmp_path, f"30 25 0:27 / {mnt} ro,nosuid - cgroup2 cgroup rw\n", "0::/\n")
    assert cgroup_cpu_limit(proc) == 0.25


def test_v1_a_container_mount_rooted_at_its_own_cgroup(tmp_path):
    """cgroup v1, a container without a cgroup namespace: /proc/self/cgroup names the host's path
    (/docker/abc) while the cpu controller's mount is rooted there (mountinfo's root field); the
    comounted "cpu,cpuacct" controller is found by its super options."""
    mnt = tmp_path / "cpu,cpuacct"
    mnt.mkdir()
    (mnt / "cpu.cfs_quota_us").write_text("250000\n")
    (mnt / "cpu.cfs_period_us").write_text("100000\n")
    proc = _fake(tmp_path,
                 f"31 23 0:28 / {tmp_path}/systemd rw - cgroup cgroup rw,name=systemd\n"
                 f"32 23 0:29 /docker/abc {mnt} rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n",
                 "12:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n")
    assert cgroup_cpu_limit(proc) == 2.5
    (mnt / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(proc) is None


def test_no_cgroup_or_unreadable_files_mean_no_limit(tmp_path):
    """No /proc (macOS), garbage, a path outside the mount's root: no limit, never an error."""
    assert cgroup_cpu_limit(tmp_path / "nothing") is None
    proc = _fake(tmp_path, "garbage\n\n- - -\n", "0::/x\nnonsense\n")
    assert cgroup_cpu_limit(proc) is None
    mnt = tmp_path / "cg"
    (mnt / "a").mkdir(parents=True)
    (mnt / "a" / "cpu.max").write_text("nonsense here\n")
    (proc / "mountinfo").write_text(f"30 25 0:27 /elsewhere {mnt} rw - cgroup2 cgroup2 rw\n")
    (proc / "cgroup").write_text("0::/a\n")
    assert cgroup_cpu_limit(proc) is None
    (proc / "mountinfo").write_text(f"30 25 0:27 / {mnt} rw - cgroup2 cgroup2 rw\n")
    assert cgroup_cpu_limit(proc) is None  # the garbage cpu.max is skipped
    (mnt / "a" / "cpu.max").write_text("0 100000\n")
    assert cgroup_cpu_limit(proc) is None  # a zero quota is no limit the kernel accepts
