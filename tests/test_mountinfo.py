"""mountinfo parsing and cgroup paths: pure functions, against kernel-formatted text."""

from __future__ import annotations

import os

from supervisor.linux import mountinfo

TEXT = """\
22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
33 22 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
34 22 0:30 / /sys/fs/cgroup/pids rw,nosuid shared:13 - cgroup cgroup rw,pids
35 22 0:31 /ctr /mnt/my\\040pids rw master:14 - cgroup cgroup rw,pids
36 22 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
this line is garbage
37 22 0:33 / /mnt/short rw
"""


def test_parse_reads_devices_roots_escapes_and_skips_garbage() -> None:
    mounts = mountinfo.parse(TEXT)
    assert [m.mount_point for m in mounts] == [
        "/sys", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/pids",
        "/mnt/my pids", "/sys/fs/cgroup/systemd"]
    pids = mounts[4]
    assert (pids.dev, pids.root, pids.fstype) == (os.makedev(0, 31), "/ctr", "cgroup")
    assert pids.super_options == ("rw", "pids")
    assert mountinfo.unescape("a\\011b\\134c\\012") == "a\tb\\c\n"
    assert mountinfo.unescape("no\\9x") == "no\\9x"  # not an octal escape


def test_cgroup_dir_per_hierarchy() -> None:
    mounts = mountinfo.parse(TEXT)
    assert mountinfo.cgroup_dir("", "/a/b", mounts) == "/sys/fs/cgroup/unified/a/b"
    assert mountinfo.cgroup_dir("cpu,cpuacct", "/x", mounts) == "/sys/fs/cgroup/cpu,cpuacct/x"
    assert mountinfo.cgroup_dir("cpu", "/", mounts) == "/sys/fs/cgroup/cpu,cpuacct"
    assert mountinfo.cgroup_dir("name=systemd", "/s", mounts) == "/sys/fs/cgroup/systemd/s"
    assert mountinfo.cgroup_dir("memory", "/x", mounts) is None  # not mounted


def test_cgroup_dir_through_a_subtree_mount() -> None:
    sub = [m for m in mountinfo.parse(TEXT) if m.root == "/ctr"]
    assert mountinfo.cgroup_dir("pids", "/ctr", sub) == "/mnt/my pids"
    assert mountinfo.cgroup_dir("pids", "/ctr/web", sub) == "/mnt/my pids/web"
    assert mountinfo.cgroup_dir("pids", "/ctrl", sub) is None  # a sibling, not below
    assert mountinfo.cgroup_dir("pids", "/other", sub) is None


def test_this_process_cgroups_are_found() -> None:
    mounts = mountinfo.read()
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    found = [mountinfo.cgroup_dir(c, p, mounts) for _id, c, p in lines]
    for d in found:
        assert d is None or os.path.isfile(os.path.join(d, "cgroup.procs"))
    assert any(d is not None for d in found)
