"""Tests for supervisor.linux.cgroups.

v1 runs against the real kernel (this VM has v1 controllers plus an empty cgroup2, so it's
skipped elsewhere); v2 runs against tests/cgroup_tree.py, a fake tree that behaves like the
kernel's cgroup2 (interface files on mkdir, errnos on bad writes, cgroup.kill/freeze).
Every real cgroup lives under a per-run parent that the fixture removes even on failure;
every process signalled is one this module started.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from supervisor.linux.cgroups import (
    CPU_PERIOD_US,
    Cgroup,
    CgroupError,
    CgroupLayout,
    CgroupManager,
    Limits,
    detect,
    validate_name,
)

from .cgroup_tree import (
    CPU_STAT,
    HOST_HYBRID_MOUNTINFO,
    MEMORY_CURRENT,
    MEMORY_EVENTS,
    MEMORY_STAT,
    PURE_V2_MOUNTINFO,
    UBUNTU_HYBRID_MOUNTINFO,
    Cgroup2Tree,
    build_cgroup2_tree,
)

MiB = 1024 * 1024
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 10.0) -> T:
    """Poll until ``predicate`` is truthy; fail (never hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def ignores(pid: int, sig: int) -> bool:
    """Whether ``pid`` has ``sig`` ignored yet (SigIgn in /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    except FileNotFoundError:
        pass
    return False


# =========================================================================== v1, real kernel


def _host_v1_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    try:
        layout = detect()
    except (OSError, CgroupError) as e:
        return f"cannot detect cgroups: {e}"
    if layout.version != 1 or "memory" not in layout.v1_mounts:
        return "host has no cgroup v1 memory hierarchy (v1 tests need a v1/hybrid host)"
    return None


# Join-first wrapper, like the runtime's launcher: the process writes its own pid into every
# cgroup.procs before exec'ing the workload, so everything it allocates is charged to us.
_JOIN = 'for f in $NSV_PROCS; do echo $$ > "$f" || exit 97; done; exec "$@"'


@dataclass
class V1Env:
    manager: CgroupManager
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn_in(self, cg: Cgroup, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "NSV_PROCS": " ".join(cg.procs_files())}
        p = subprocess.Popen(["/bin/sh", "-c", _JOIN, "sh", *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.children.append(p)
        def joined_every_hierarchy() -> bool:  # the shell joins them one at a time
            return all(str(p.pid) in Path(f).read_text().split() for f in cg.procs_files())
        wait_for(lambda: joined_every_hierarchy() or p.poll() is not None,
                 "child to join cgroup", 5)
        assert p.poll() is None or p.returncode != 97, "child could not join the cgroup"
        return p

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.children.append(p)
        return p


@pytest.fixture
def v1() -> Iterator[V1Env]:
    reason = _host_v1_skip_reason()
    if reason:
        pytest.skip(reason)
    parent = f"nsvisor-test-{os.getpid()}-{secrets.token_hex(3)}"
    env = V1Env(CgroupManager(detect(), parent=parent))
    try:
        yield env
    finally:
        problems: list[str] = []
        for name in env.manager.list():
            cg = env.manager.open(name)
            if cg is not None:
                try:
                    cg.destroy(timeout=10)
                except CgroupError as e:
                    problems.append(str(e))
        for p in env.children:  # only our own children, by pid
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"child {p.pid} did not exit")
        for d in env.manager.parent_dirs():
            deadline = time.monotonic() + 5
            while os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        problems.append(f"rmdir {d}: {e}")
                        break
                    time.sleep(0.05)
        assert not problems, problems


@pytest.mark.root
def test_v1_limits_written_and_read_back(v1: V1Env) -> None:
    cg = v1.manager.create("web", Limits(memory_bytes=50 * MiB, cpus=0.5, pids=64))
    layout = v1.manager.layout
    mem = os.path.join(layout.v1_mounts["memory"], v1.manager.parent, "web")
    cpu = os.path.join(layout.v1_mounts["cpu"], v1.manager.parent, "web")
    pids = os.path.join(layout.v1_mounts["pids"], v1.manager.parent, "web")

    def read(d: str, f: str) -> str:
        return Path(d, f).read_text().strip()

    assert read(mem, "memory.limit_in_bytes") == str(50 * MiB)
    if os.path.exists(os.path.join(mem, "memory.memsw.limit_in_bytes")):
        assert read(mem, "memory.memsw.limit_in_bytes") == str(50 * MiB)
    assert read(cpu, "cpu.cfs_period_us") == "100000"
    assert read(cpu, "cpu.cfs_quota_us") == "50000"
    assert read(pids, "pids.max") == "64"
    assert cg.stats().memory_limit_bytes == 50 * MiB
    # one cgroup.procs per distinct hierarchy (co-mounted ones count once)
    distinct = {layout.v1_mounts[c] for c in ("cpu", "cpuacct", "memory", "pids", "freezer")
                if c in layout.v1_mounts}
    assert len(cg.procs_files()) == len(distinct) == len(set(cg.procs_files()))

    # memsw must stay >= limit: shrinking and growing both need the right write order
    cg.set_limits(Limits(memory_bytes=20 * MiB))
    assert read(mem, "memory.limit_in_bytes") == str(20 * MiB)
    cg.set_limits(Limits(memory_bytes=200 * MiB))
    assert read(mem, "memory.limit_in_bytes") == str(200 * MiB)

    free = v1.manager.create("free", Limits())
    free_cpu = os.path.join(layout.v1_mounts["cpu"], v1.manager.parent, "free")
    assert read(free_cpu, "cpu.cfs_quota_us") == "-1"
    assert read(os.path.join(layout.v1_mounts["pids"], v1.manager.parent, "free"),
                "pids.max") == "max"
    assert free.stats().memory_limit_bytes is None  # 9223372036854771712 means unlimited


@pytest.mark.root
def test_v1_child_is_accounted(v1: V1Env) -> None:
    cg = v1.manager.create("acct", Limits(pids=32))
    joined = v1.spawn_in(cg, ["/bin/sleep", "30"])
    stats = cg.stats()
    assert joined.pid in cg.pids()
    assert stats.processes is not None and stats.processes >= 1
    assert stats.memory_usage_bytes is not None and stats.memory_usage_bytes > 0
    assert stats.memory_working_set_bytes is not None
    assert 0 <= stats.memory_working_set_bytes <= stats.memory_usage_bytes
    assert stats.memory_rss_bytes is not None and stats.oom_events == 0

    moved = v1.spawn(["/bin/sleep", "30"])  # started outside, then moved with add()
    cg.add(moved.pid)
    assert set(cg.pids()) == {joined.pid, moved.pid}
    assert cg.stats().processes == 2
    for procs in cg.procs_files():
        assert str(moved.pid) in Path(procs).read_text().split()


@pytest.mark.root
def test_v1_cpu_usage_rises_and_is_throttled(v1: V1Env) -> None:
    cg = v1.manager.create("burn", Limits(cpus=0.5))
    assert cg.stats().cpu_usage_seconds == 0
    v1.spawn_in(cg, ["/bin/sh", "-c", "while :; do :; done"])
    stats = wait_for(lambda: (s := cg.stats()).cpu_usage_seconds >= 0.3
                     and (s.nr_throttled or 0) > 0 and s, "cpu usage and throttling")
    assert stats.cpu_user_seconds is not None and stats.cpu_system_seconds is not None
    assert stats.cpu_user_seconds + stats.cpu_system_seconds > 0
    assert stats.throttled_seconds is not None and stats.throttled_seconds > 0


@pytest.mark.root
def test_v1_kill_all_kills_a_process_tree(v1: V1Env) -> None:
    cg = v1.manager.create("tree", Limits())
    script = ("sleep 60 & sleep 60 & "
              "(setsid sh -c 'sleep 60 & exec sleep 61' &) ; "  # double fork + new session
              "exec sleep 62")
    top = v1.spawn_in(cg, ["/bin/sh", "-c", script])
    members = wait_for(lambda: len(p := cg.pids()) >= 5 and p, "5 processes in the cgroup")
    assert cg.kill_all(timeout=5) is True
    assert cg.pids() == []
    assert top.wait(timeout=5) == -signal.SIGKILL
    wait_for(lambda: all(gone_or_zombie(p) for p in members), "tree to die", 5)


@pytest.mark.root
def test_v1_kill_all_sigterm_then_escalate(v1: V1Env) -> None:
    cg = v1.manager.create("term", Limits())
    stubborn = v1.spawn_in(cg, ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"])
    wait_for(lambda: ignores(stubborn.pid, signal.SIGTERM), "the trap to be installed", 5)
    started = time.monotonic()
    assert cg.kill_all(signal.SIGTERM, timeout=0.5) is False  # TERM ignored: bounded wait
    assert time.monotonic() - started < 3
    assert stubborn.poll() is None
    assert cg.kill_all(signal.SIGKILL, timeout=5) is True
    assert stubborn.wait(timeout=5) == -signal.SIGKILL

    polite = v1.spawn_in(cg, ["/bin/sleep", "30"])
    assert cg.kill_all(signal.SIGTERM, timeout=5) is True
    assert polite.wait(timeout=5) == -signal.SIGTERM


@pytest.mark.root
def test_v1_destroy_removes_every_directory(v1: V1Env) -> None:
    cg = v1.manager.create("gone", Limits(memory_bytes=64 * MiB, cpus=1, pids=16))
    child = v1.spawn_in(cg, ["/bin/sleep", "30"])
    paths = cg.paths
    assert paths and all(os.path.isdir(p) for p in paths)
    cg.destroy(timeout=5)
    assert not any(os.path.exists(p) for p in paths)
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert v1.manager.open("gone") is None
    assert v1.manager.list() == []
    cg.destroy()  # idempotent


@pytest.mark.root
def test_v1_oom_kill_is_counted(v1: V1Env) -> None:
    cg = v1.manager.create("oom", Limits(memory_bytes=50 * MiB))
    before = cg.oom_kills()
    assert before == 0, "this kernel's memory.oom_control should have an oom_kill line"
    hog = v1.spawn_in(cg, [sys.executable, "-c", "b = b'x' * (200 << 20)"])
    assert hog.wait(timeout=30) == -signal.SIGKILL
    assert cg.oom_killed_since(before)
    stats = cg.stats()
    assert stats.oom_events is not None and stats.oom_events >= 1
    assert not cg.oom_killed_since(stats.oom_events)


@pytest.mark.root
def test_v1_create_is_all_or_nothing(v1: V1Env) -> None:
    # pids.max above PID_MAX_LIMIT (4194304) -> EINVAL from the kernel, after the memory
    # and cpu limits were already written
    with pytest.raises(CgroupError) as info:
        v1.manager.create("bad", Limits(memory_bytes=50 * MiB, cpus=1, pids=10**7))
    pids_dir = os.path.join(v1.manager.layout.v1_mounts["pids"], v1.manager.parent, "bad")
    assert str(info.value) == (
        f'cgroup: writing "10000000" to {pids_dir}/pids.max: Invalid argument'
    )
    assert info.value.errno == errno.EINVAL
    for d in v1.manager.parent_dirs():
        assert not os.path.exists(os.path.join(d, "bad"))
    assert v1.manager.list() == []

    first = v1.manager.create("dup", Limits(pids=8))
    with pytest.raises(CgroupError, match="already exists"):
        v1.manager.create("dup", Limits())
    assert all(os.path.isdir(p) for p in first.paths)  # the existing one is untouched


@pytest.mark.root
def test_v1_reopen_after_daemon_restart(v1: V1Env) -> None:
    cg = v1.manager.create("keep", Limits(memory_bytes=64 * MiB))
    child = v1.spawn_in(cg, ["/bin/sleep", "30"])
    restarted = CgroupManager(detect(), parent=v1.manager.parent)
    assert restarted.list() == ["keep"]
    again = restarted.open("keep")
    assert again is not None
    assert again.paths == cg.paths
    assert again.pids() == [child.pid]
    assert again.stats().memory_limit_bytes == 64 * MiB
    with pytest.raises(CgroupError, match=r"cgroup\.procs"):
        again.add(2**22 + 1)  # no such pid


# =========================================================================== v2, fake tree


@pytest.fixture
def tree(tmp_path: Path) -> Cgroup2Tree:
    return build_cgroup2_tree(tmp_path)


def v2_manager(tree: Cgroup2Tree, parent: str = "nsvisor") -> CgroupManager:
    return CgroupManager(detect(tree.mountinfo, fs_root=tree.fs_root), parent=parent,
                         fs=tree.fs)


def test_v2_detected(tree: Cgroup2Tree) -> None:
    layout = detect(tree.mountinfo, fs_root=tree.fs_root)
    assert layout.version == 2
    assert layout.unified == str(tree.cgroot)
    assert layout.controllers == {"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma",
                                  "misc"}
    assert layout.v1_mounts == {}


def test_v2_create_enables_controllers_on_every_level(tree: Cgroup2Tree) -> None:
    mgr = v2_manager(tree, parent="nsvisor/pods")
    cg = mgr.create("web", Limits(memory_bytes=50 * MiB, cpus=0.5, pids=64))
    fs = tree.fs
    for level in ("", "nsvisor/", "nsvisor/pods/"):
        assert fs.writes_to(f"{level}cgroup.subtree_control") == ["+cpu +memory +pids"]
        assert fs.get(f"{level}cgroup.subtree_control") == "cpu memory pids\n"
    assert fs.writes_to("nsvisor/pods/web/cgroup.subtree_control") == []
    assert fs.get("nsvisor/pods/web/cgroup.controllers") == "cpu memory pids\n"
    assert fs.writes_to("nsvisor/pods/web/memory.max") == ["52428800"]
    assert fs.writes_to("nsvisor/pods/web/memory.swap.max") == ["0"]
    assert fs.writes_to("nsvisor/pods/web/cpu.max") == ["50000 100000"]
    assert fs.writes_to("nsvisor/pods/web/pids.max") == ["64"]
    assert fs.get("nsvisor/pods/web/cpu.max") == "50000 100000\n"
    assert cg.procs_files() == [str(tree.cgroot / "nsvisor/pods/web/cgroup.procs")]
    assert cg.stats().memory_limit_bytes == 50 * MiB

    mgr.create("db", Limits(cpus=2))  # already enabled: no second subtree_control write
    assert fs.writes_to("nsvisor/pods/cgroup.subtree_control") == ["+cpu +memory +pids"]
    assert fs.writes_to("nsvisor/pods/db/cpu.max") == [f"200000 {CPU_PERIOD_US}"]


def test_v2_parents_removed_behind_our_back_are_made_again(tree: Cgroup2Tree) -> None:
    mgr = v2_manager(tree, parent="nsvisor/pods")
    mgr.create("web", Limits()).destroy()
    for level in ("nsvisor/pods", "nsvisor"):  # an operator cleaned up
        tree.fs.rmdir(str(tree.cgroot / level))
    cg = mgr.create("web", Limits(pids=8))
    assert cg.procs_files() == [str(tree.cgroot / "nsvisor/pods/web/cgroup.procs")]
    assert tree.fs.get("nsvisor/pods/cgroup.subtree_control") == "cpu memory pids\n"
    assert tree.fs.get("nsvisor/pods/web/pids.max") == "8\n"


def test_v2_unlimited_writes_max_and_reads_none(tree: Cgroup2Tree) -> None:
    cg = v2_manager(tree).create("free", Limits())
    fs = tree.fs
    files = ("memory.max", "memory.swap.max", "cpu.max", "pids.max")
    # A new cgroup is unlimited already (the real v1 test reads that from the kernel).
    assert [fs.writes_to(f"nsvisor/free/{f}") for f in files] == [[], [], [], []]
    cg.set_limits(Limits(memory_bytes=64 * MiB, cpus=0.5, pids=10))
    cg.set_limits(Limits())  # an existing cgroup is set back to unlimited
    assert [fs.writes_to(f"nsvisor/free/{f}")[-1] for f in files] == \
        ["max", "max", "max 100000", "max"]
    stats = cg.stats()
    assert stats.memory_limit_bytes is None
    assert stats.memory_usage_bytes == 0 and stats.processes == 0 and stats.oom_events == 0


def test_v2_only_available_controllers_are_enabled(tmp_path: Path) -> None:
    tree = build_cgroup2_tree(tmp_path, controllers="cpuset io memory pids", with_swap=False)
    mgr = v2_manager(tree)
    cg = mgr.create("web", Limits(memory_bytes=64 * MiB))
    assert tree.fs.writes_to("cgroup.subtree_control") == ["+memory +pids"]
    assert tree.fs.writes_to("nsvisor/web/memory.max") == [str(64 * MiB)]
    assert tree.fs.writes_to("nsvisor/web/memory.swap.max") == []  # no swap accounting
    assert cg.stats().cpu_usage_seconds == 0  # cpu.stat is a core file, always there
    cg.destroy()
    # asking for a cpu limit without the cpu controller fails, leaving nothing behind
    tree.fs.rmdir(str(tree.cgroot / "nsvisor"))
    with pytest.raises(CgroupError, match="cpu controller not available"):
        mgr.create("capped", Limits(cpus=1))
    assert not (tree.cgroot / "nsvisor").exists()


def test_v2_failed_write_names_file_and_value_and_rolls_back(tree: Cgroup2Tree) -> None:
    with pytest.raises(CgroupError) as info:
        v2_manager(tree).create("web", Limits(memory_bytes=50 * MiB, pids=10**7))
    path = tree.cgroot / "nsvisor/web/pids.max"
    assert str(info.value) == f'cgroup: writing "10000000" to {path}: Invalid argument'
    assert info.value.path == str(path) and info.value.errno == errno.EINVAL
    assert not (tree.cgroot / "nsvisor").exists()  # leaf and the parent made for it


def test_v2_create_refuses_existing(tree: Cgroup2Tree) -> None:
    mgr = v2_manager(tree)
    mgr.create("web", Limits(pids=5))
    with pytest.raises(CgroupError, match="already exists"):
        mgr.create("web", Limits())
    assert tree.fs.get("nsvisor/web/pids.max") == "5\n"


def test_v2_stats_parse_kernel_formats(tree: Cgroup2Tree) -> None:
    cg = v2_manager(tree).create("busy", Limits(memory_bytes=512 * MiB))
    fs = tree.fs
    fs.put("nsvisor/busy/cpu.stat", CPU_STAT)
    fs.put("nsvisor/busy/memory.stat", MEMORY_STAT)
    fs.put("nsvisor/busy/memory.current", MEMORY_CURRENT)
    fs.put("nsvisor/busy/memory.events", MEMORY_EVENTS)
    fs.put("nsvisor/busy/pids.current", "7\n")
    s = cg.stats()
    assert s.cpu_usage_seconds == pytest.approx(8.745123)
    assert s.cpu_user_seconds == pytest.approx(6.012345)
    assert s.cpu_system_seconds == pytest.approx(2.732778)
    assert s.memory_usage_bytes == 118390784
    assert s.memory_working_set_bytes == 118390784 - 31457280  # minus inactive_file
    assert s.memory_rss_bytes == 73728000  # anon
    assert s.memory_limit_bytes == 512 * MiB
    assert s.processes == 7
    assert s.oom_events == 2
    assert s.nr_throttled == 312
    assert s.throttled_seconds == pytest.approx(2.051123)

    fs.put("nsvisor/busy/memory.current", "1048576\n")  # less than inactive_file
    assert cg.stats().memory_working_set_bytes == 0


def test_v2_oom_killed_since(tree: Cgroup2Tree) -> None:
    cg = v2_manager(tree).create("oom", Limits(memory_bytes=50 * MiB))
    before = cg.oom_kills()
    assert before == 0 and not cg.oom_killed_since(before)
    tree.fs.put("nsvisor/oom/memory.events", MEMORY_EVENTS)
    assert cg.oom_kills() == 2
    assert cg.oom_killed_since(before) and cg.oom_killed_since(None)
    assert not cg.oom_killed_since(2)


def test_v2_kill_all_uses_cgroup_kill(tree: Cgroup2Tree) -> None:
    cg = v2_manager(tree).create("web", Limits())
    tree.fs.add_fake_pids(tree.cgroot / "nsvisor/web", 4242, 4243)
    assert cg.pids() == [4242, 4243]
    assert cg.kill_all() is True
    assert tree.fs.writes_to("nsvisor/web/cgroup.kill") == ["1"]
    assert tree.fs.writes_to("nsvisor/web/cgroup.freeze") == []
    assert [e for e in tree.fs.log if e[0] == "kill()"] == []  # no per-pid signals
    assert cg.pids() == []
    cg.destroy()
    assert not (tree.cgroot / "nsvisor/web").exists()
    assert v2_manager(tree).list() == []


def test_v2_kill_all_without_cgroup_kill_freezes_signals_thaws(tmp_path: Path) -> None:
    tree = build_cgroup2_tree(tmp_path, with_kill=False)
    cg = v2_manager(tree).create("web", Limits())
    tree.fs.add_fake_pids(tree.cgroot / "nsvisor/web", 4242, 4243)
    assert cg.kill_all() is True
    sequence = [e for e in tree.fs.log if e[0] in ("kill()", "nsvisor/web/cgroup.freeze")]
    assert sequence == [
        ("nsvisor/web/cgroup.freeze", "1"),
        ("kill()", f"4242 {int(signal.SIGKILL)}"),
        ("kill()", f"4243 {int(signal.SIGKILL)}"),
        ("nsvisor/web/cgroup.freeze", "0"),
    ]
    assert tree.fs.get("nsvisor/web/cgroup.events") == "populated 0\nfrozen 0\n"


def test_v2_sigterm_sent_once_and_bounded(tree: Cgroup2Tree) -> None:
    cg = v2_manager(tree).create("web", Limits())
    tree.fs.add_fake_pids(tree.cgroot / "nsvisor/web", 4242)
    tree.fs.ignores_term.add(4242)
    started = time.monotonic()
    assert cg.kill_all(signal.SIGTERM, timeout=0.3) is False
    assert time.monotonic() - started < 2
    assert tree.fs.signals == [(4242, signal.SIGTERM)]
    with pytest.raises(CgroupError, match="still present"):
        Cgroup("web", 2, {"core": str(tree.cgroot / "nsvisor/web")}, _DeafFs(tree)).destroy(0.2)
    assert cg.kill_all() is True  # SIGKILL via cgroup.kill


def test_a_cgroup_removed_while_it_is_read_counts_as_empty(tree: Cgroup2Tree) -> None:
    # Reading cgroup.procs of a cgroup rmdir-ed after the open fails with ENODEV; that
    # ended a reload that was removing the same cgroup in two places at once.
    cg = v2_manager(tree).create("web", Limits())

    class _RemovedFs:
        def __getattr__(self, name: str) -> object:
            return getattr(tree.fs, name)

        def read(self, path: str) -> str:
            if path.endswith("cgroup.procs"):
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), path)
            return tree.fs.read(path)

    gone = Cgroup("web", 2, {"core": str(tree.cgroot / "nsvisor/web")}, _RemovedFs())
    assert gone.pids() == []
    gone.destroy()
    assert not (tree.cgroot / "nsvisor/web").exists()
    assert cg.pids() == []


class _DeafFs:
    """Delegates to the fake but ignores cgroup.kill and kill(): processes that won't die."""

    def __init__(self, tree: Cgroup2Tree):
        self._fs = tree.fs

    def __getattr__(self, name: str) -> object:
        return getattr(self._fs, name)

    def write(self, path: str, data: str) -> None:
        if not path.endswith("cgroup.kill"):
            self._fs.write(path, data)

    def kill(self, pid: int, sig: int) -> None:
        pass


def test_v2_add_open_and_list(tree: Cgroup2Tree) -> None:
    mgr = v2_manager(tree)
    web = mgr.create("web", Limits())
    mgr.create("db", Limits())
    tree.fs.add_fake_pids(tree.cgroot, 777)  # a process in the root cgroup
    web.add(777)
    assert web.pids() == [777]
    assert tree.fs.get("cgroup.procs") == ""  # moved, not copied
    restarted = v2_manager(tree)
    assert restarted.list() == ["db", "web"]
    again = restarted.open("web")
    assert again is not None and again.pids() == [777] and again.version == 2
    assert restarted.open("nope") is None
    assert v2_manager(tree, parent="other").list() == []


# =========================================================================== detection, names


def _write_mountinfo(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return str(path)


def test_hybrid_host_mountinfo_is_v1(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    layout = detect(_write_mountinfo(tmp_path, HOST_HYBRID_MOUNTINFO), fs_root=root)
    assert layout.version == 1
    assert layout.v1_mounts["memory"] == f"{root}/sys/fs/cgroup/memory"
    assert layout.v1_mounts["cpu"] == f"{root}/sys/fs/cgroup/cpu"
    assert layout.v1_mounts["cpuacct"] == f"{root}/sys/fs/cgroup/cpuacct"
    assert layout.unified == f"{root}/sys/fs/cgroup/unified"
    assert "name=systemd" not in layout.controllers and "freezer" in layout.controllers


def test_comounted_cpu_cpuacct_counts_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = detect(_write_mountinfo(tmp_path, UBUNTU_HYBRID_MOUNTINFO), fs_root=str(root))
    assert layout.version == 1
    assert layout.v1_mounts["cpu"] == layout.v1_mounts["cpuacct"] == \
        f"{root}/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1_mounts["net_prio"] == f"{root}/sys/fs/cgroup/net_cls,net_prio"
    mgr = CgroupManager(layout)
    for h in ("cpu,cpuacct", "memory", "pids", "freezer"):
        (root / "sys/fs/cgroup" / h / "nsvisor/web").mkdir(parents=True)
    cg = mgr.open("web")
    assert cg is not None
    assert cg.procs_files() == [
        f"{root}/sys/fs/cgroup/{h}/nsvisor/web/cgroup.procs"
        for h in ("cpu,cpuacct", "memory", "pids", "freezer")
    ]
    assert mgr.list() == ["web"]


def test_this_machine_is_detected() -> None:
    layout = detect()
    with open("/proc/self/mountinfo") as f:
        v1_memory = any(" - cgroup " in line and ",memory" in line for line in f)
    assert layout.version == (1 if v1_memory else 2)


def test_mountinfo_escapes_and_no_cgroups(tmp_path: Path) -> None:
    text = PURE_V2_MOUNTINFO.replace(" /sys/fs/cgroup ", " /sys/fs/my\\040cgroup ")
    (tmp_path / "root/sys/fs/my cgroup").mkdir(parents=True)
    (tmp_path / "root/sys/fs/my cgroup/cgroup.controllers").write_text("memory pids\n")
    layout = detect(_write_mountinfo(tmp_path, text), fs_root=str(tmp_path / "root"))
    assert layout.unified == str(tmp_path / "root/sys/fs/my cgroup")
    assert layout.controllers == {"memory", "pids"}
    no_cgroups = "\n".join(line for line in PURE_V2_MOUNTINFO.splitlines()
                           if "cgroup" not in line)
    with pytest.raises(CgroupError, match="no cgroup"):
        detect(_write_mountinfo(tmp_path, no_cgroups))


@pytest.mark.parametrize("name", ["a/b", "..", ".", "a..b", "x" * 65, "tab\there", "nl\n"])
def test_bad_names_rejected(tree: Cgroup2Tree, name: str) -> None:
    mgr = v2_manager(tree)
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        mgr.create(name, Limits())
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        mgr.open(name)
    assert not (tree.cgroot / "nsvisor").exists()


def test_names_accepted_and_empty_rejected() -> None:
    assert validate_name("web-1_2.svc") == "web-1_2.svc"
    assert validate_name("x" * 64) == "x" * 64
    with pytest.raises(ValueError, match="non-empty"):
        validate_name("")
    with pytest.raises(ValueError, match="parent"):
        CgroupManager(CgroupLayout(version=2, unified="/nonexistent"), parent="ok/../escape")


@pytest.mark.parametrize("kwargs", [
    {"cpus": 0}, {"cpus": 0.005}, {"cpus": float("nan")}, {"cpus": "1"},
    {"memory_bytes": 0}, {"memory_bytes": 1.5}, {"pids": -1}, {"pids": True},
])
def test_limits_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Limits"):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_limits_quota() -> None:
    assert Limits(cpus=0.5).cpu_quota_us() == 50_000
    assert Limits(cpus=2).cpu_quota_us() == 200_000
    assert Limits(cpus=0.01).cpu_quota_us() == 1_000
    assert Limits().cpu_quota_us() is None
