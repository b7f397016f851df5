# ruff: noqa: E501  (mountinfo lines below are verbatim kernel output; wrapping would change them)
"""A fake cgroup2 tree in a temporary directory, laid out and behaving like the kernel's.

A plain directory doesn't grow interface files on ``mkdir``, doesn't validate writes and
doesn't move pids, so :class:`FakeCgroup2Fs` (a :class:`CgroupFs`) does what kernfs and the
cgroup core would: it populates a new cgroup with the core files plus those of every
controller enabled in the parent's ``cgroup.subtree_control``, validates writes with the
kernel's errnos, and implements ``cgroup.procs``, ``cgroup.kill`` and ``cgroup.freeze``.
It never signals a real process: ``kill`` only edits the fake ``cgroup.procs`` files.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from supervisor.linux.cgroups import CgroupFs

ALL_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"
PAGE_SIZE = 4096
PID_MAX_LIMIT = 4 * 1024 * 1024  # kernel's PID_MAX_LIMIT on 64-bit; pids.max above -> EINVAL

# A Debian 12 host (pure cgroup2, systemd), as in /proc/self/mountinfo.
PURE_V2_MOUNTINFO = """\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 28 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=8123456k,nr_inodes=2030864,mode=755,inode64
25 24 0:22 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
26 28 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=1631448k,mode=755,inode64
28 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
29 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
30 24 0:25 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,inode64
32 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
33 22 0:28 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
34 22 0:29 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:11 - bpf bpf rw,mode=700
"""

# This VM's /proc/self/mountinfo: v1 controllers on tmpfs plus an (almost) empty cgroup2.
HOST_HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334432k,nr_inodes=3083608,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683652k
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# Ubuntu 20.04 (systemd "hybrid"): cpu and cpuacct co-mounted, symlinked as cpu/ and cpuacct/.
UBUNTU_HYBRID_MOUNTINFO = """\
25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755,inode64
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
32 25 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
33 25 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
34 25 0:32 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer
35 25 0:33 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,net_cls,net_prio
36 25 0:34 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,blkio
"""

# Realistic contents (Linux 6.x) for a busy container, used by the stats tests.
CPU_STAT = """\
usage_usec 8745123
user_usec 6012345
system_usec 2732778
nice_usec 0
core_sched.force_idle_usec 0
nr_periods 4215
nr_throttled 312
throttled_usec 2051123
nr_bursts 0
burst_usec 0
"""

MEMORY_STAT = """\
anon 73728000
file 41943040
kernel 2719744
kernel_stack 245760
pagetables 1011712
sec_pagetables 0
percpu 1440
sock 0
vmalloc 8192
shmem 0
zswap 0
zswapped 0
file_mapped 20971520
file_dirty 4096
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 73400320
active_anon 327680
inactive_file 31457280
active_file 10485760
unevictable 0
slab_reclaimable 925696
slab_unreclaimable 487424
slab 1413120
workingset_refault_anon 0
workingset_refault_file 12
workingset_activate_anon 0
workingset_activate_file 0
workingset_restore_anon 0
workingset_restore_file 0
workingset_nodereclaim 0
pgdemote_kswapd 0
pgdemote_direct 0
pgdemote_khugepaged 0
pgscan 0
pgsteal 0
pgscan_kswapd 0
pgscan_direct 0
pgscan_khugepaged 0
pgsteal_kswapd 0
pgsteal_direct 0
pgsteal_khugepaged 0
pgfault 29877
pgmajfault 3
pgrefill 0
pgactivate 2560
pgdeactivate 0
pglazyfree 0
pglazyfreed 0
zswpin 0
zswpout 0
zswpwb 0
thp_fault_alloc 0
thp_collapse_alloc 0
thp_swpout 0
thp_swpout_fallback 0
"""
MEMORY_CURRENT = "118390784\n"
MEMORY_EVENTS = "low 0\nhigh 0\nmax 41\noom 2\noom_kill 2\noom_group_kill 0\n"

_EMPTY_CPU_STAT = "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnice_usec 0\n"
_CPU_THROTTLE = "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n"
_ZERO_MEMORY_STAT = "".join(
    f"{line.split()[0]} 0\n" for line in MEMORY_STAT.splitlines()
)

# Core files on the root and on every non-root cgroup (cgroup/cgroup.c cgroup_base_files,
# cgroup_psi_files; CFTYPE_NOT_ON_ROOT ones only below the root).
_ROOT_CORE = {
    "cgroup.controllers": "", "cgroup.subtree_control": "", "cgroup.procs": "",
    "cgroup.threads": "", "cgroup.max.depth": "max\n", "cgroup.max.descendants": "max\n",
    "cgroup.stat": "nr_descendants 0\nnr_dying_descendants 0\n",
    "cgroup.pressure": "1\n", "cpu.pressure": "", "io.pressure": "", "memory.pressure": "",
    "irq.pressure": "", "cpu.stat": _EMPTY_CPU_STAT, "cpu.stat.local": "throttled_usec 0\n",
}
_CHILD_CORE = {
    **_ROOT_CORE,
    "cgroup.type": "domain\n", "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0\n", "cgroup.kill": "",
}
_CONTROLLER_FILES = {
    "cpu": {"cpu.max": "max 100000\n", "cpu.max.burst": "0\n", "cpu.weight": "100\n",
            "cpu.weight.nice": "0\n", "cpu.idle": "0\n"},
    "memory": {"memory.current": "0\n", "memory.min": "0\n", "memory.low": "0\n",
               "memory.high": "max\n", "memory.max": "max\n", "memory.peak": "0\n",
               "memory.oom.group": "0\n", "memory.reclaim": "",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
               "memory.events.local": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"
                                      "oom_group_kill 0\n",
               "memory.stat": _ZERO_MEMORY_STAT, "memory.numa_stat": "",
               "memory.swap.current": "0\n", "memory.swap.high": "max\n",
               "memory.swap.max": "max\n", "memory.swap.peak": "0\n",
               "memory.swap.events": "high 0\nmax 0\nfail 0\n"},
    "pids": {"pids.current": "0\n", "pids.max": "max\n", "pids.peak": "0\n",
             "pids.events": "max 0\n", "pids.events.local": "max 0\n"},
    "io": {"io.max": "", "io.stat": "", "io.weight": "default 100\n"},
    "cpuset": {"cpuset.cpus": "\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "0-3\n",
               "cpuset.mems.effective": "0\n", "cpuset.cpus.partition": "member\n"},
    "hugetlb": {"hugetlb.2MB.current": "0\n", "hugetlb.2MB.max": "max\n"},
    "rdma": {"rdma.current": "", "rdma.max": ""},
    "misc": {"misc.current": "", "misc.max": "", "misc.events": ""},
}
# Files without a ->write handler: kernfs refuses to open them for writing (EACCES).
_READ_ONLY = {
    "cgroup.controllers", "cgroup.events", "cgroup.stat", "cpu.stat", "cpu.stat.local",
    "memory.current", "memory.events", "memory.events.local", "memory.stat", "memory.peak",
    "memory.swap.current", "memory.swap.events", "pids.current", "pids.events", "pids.peak",
}


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class FakeCgroup2Fs(CgroupFs):
    """Kernel-like cgroup2 semantics on a plain directory rooted at ``root``."""

    def __init__(self, root: Path, controllers: str = ALL_CONTROLLERS, *,
                 with_kill: bool = True, with_swap: bool = True):
        self.root = root
        self.order = controllers.split()
        self.with_kill = with_kill
        self.with_swap = with_swap
        # Every write as (path relative to root, value), and every kill() as ("kill()", "pid sig"),
        # in order, so tests can check e.g. freeze -> signal -> thaw.
        self.log: list[tuple[str, str]] = []
        self.signals: list[tuple[int, int]] = []  # (pid, sig) from kill() and cgroup.kill
        self.ignores_term: set[int] = set()  # fake pids that survive non-SIGKILL signals
        root.mkdir(parents=True)
        for name, content in _ROOT_CORE.items():
            (root / name).write_text(content)
        (root / "cgroup.controllers").write_text(controllers + "\n")

    # --------------------------------------------------------------- helpers for tests

    def rel(self, path: str | Path) -> str:
        return os.path.relpath(path, self.root)

    def put(self, relpath: str, content: str) -> None:
        """Set a file's content as the kernel would report it (for stats tests)."""
        target = self.root / relpath
        assert target.exists(), f"{relpath} does not exist in the fake tree"
        target.write_text(content)

    def get(self, relpath: str) -> str:
        return (self.root / relpath).read_text()

    def writes_to(self, relpath: str) -> list[str]:
        return [v for p, v in self.log if p == relpath]

    def add_fake_pids(self, cgroup_dir: str | Path, *pids: int) -> None:
        procs = Path(cgroup_dir) / "cgroup.procs"
        current = procs.read_text().split()
        procs.write_text("".join(f"{p}\n" for p in [*current, *map(str, pids)]))
        self._update_populated(Path(cgroup_dir))

    # --------------------------------------------------------------- CgroupFs

    def _populate(self, d: Path) -> None:
        files = dict(_CHILD_CORE)
        if not self.with_kill:
            del files["cgroup.kill"]
        parent_enabled = (d.parent / "cgroup.subtree_control").read_text().split()
        for c in parent_enabled:
            files.update(self._controller_files(c))
        for name, content in files.items():
            (d / name).write_text(content)
        (d / "cgroup.controllers").write_text(" ".join(parent_enabled) + "\n")

    def _controller_files(self, controller: str) -> dict[str, str]:
        files = dict(_CONTROLLER_FILES.get(controller, {}))
        if controller == "memory" and not self.with_swap:
            files = {k: v for k, v in files.items() if not k.startswith("memory.swap.")}
        return files

    def mkdir(self, path: str) -> None:
        p = Path(path)
        if not p.parent.is_relative_to(self.root) or not (p.parent / "cgroup.procs").exists():
            raise _oserror(errno.ENOENT, path)
        os.mkdir(path)
        self._populate(p)

    def rmdir(self, path: str) -> None:
        p = Path(path)
        if not p.is_dir():
            raise _oserror(errno.ENOENT, path)
        if p == self.root:
            raise _oserror(errno.EBUSY, path)
        if any(c.is_dir() for c in p.iterdir()) or (p / "cgroup.procs").read_text().split():
            raise _oserror(errno.EBUSY, path)
        for f in p.iterdir():
            f.unlink()
        os.rmdir(path)

    def write(self, path: str, data: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise _oserror(errno.ENOENT, path)
        if p.name in _READ_ONLY:
            raise _oserror(errno.EACCES, path)
        self.log.append((self.rel(p), data))
        handler = {
            "cgroup.subtree_control": self._w_subtree_control,
            "cgroup.procs": self._w_procs,
            "cgroup.kill": self._w_kill,
            "cgroup.freeze": self._w_freeze,
            "memory.max": self._w_memory,
            "memory.high": self._w_memory,
            "memory.swap.max": self._w_memory,
            "cpu.max": self._w_cpu_max,
            "pids.max": self._w_pids_max,
        }.get(p.name)
        if handler is None:
            p.write_text(data)
        else:
            handler(p, data.strip())

    def kill(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))
        self.log.append(("kill()", f"{pid} {int(sig)}"))
        if sig != signal.SIGKILL and pid in self.ignores_term:
            return
        for procs in self.root.rglob("cgroup.procs"):
            pids = procs.read_text().split()
            if str(pid) in pids:
                procs.write_text("".join(f"{p}\n" for p in pids if p != str(pid)))
                self._update_populated(procs.parent)
                return
        raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))

    # --------------------------------------------------------------- write handlers

    def _w_subtree_control(self, p: Path, data: str) -> None:
        d = p.parent
        available = (d / "cgroup.controllers").read_text().split()
        enabled = set(p.read_text().split())
        for token in data.split():
            op, name = token[:1], token[1:]
            if op not in "+-" or name not in self.order:
                raise _oserror(errno.EINVAL, str(p))
            if name not in available:
                raise _oserror(errno.ENOENT, str(p))
            if op == "+":
                enabled.add(name)
            else:
                enabled.discard(name)
        # "no internal processes": a non-root cgroup with tasks can't delegate controllers
        if enabled and d != self.root and (d / "cgroup.procs").read_text().split():
            raise _oserror(errno.EBUSY, str(p))
        ordered = [c for c in self.order if c in enabled]
        p.write_text(" ".join(ordered) + "\n" if ordered else "")
        for child in (c for c in d.iterdir() if c.is_dir()):
            (child / "cgroup.controllers").write_text(" ".join(ordered) + "\n")
            for c in ordered:
                for name, content in self._controller_files(c).items():
                    if not (child / name).exists():
                        (child / name).write_text(content)

    def _w_procs(self, p: Path, data: str) -> None:
        if not data.isdigit():
            raise _oserror(errno.EINVAL, str(p))
        d = p.parent
        if d != self.root and (d / "cgroup.subtree_control").read_text().split():
            raise _oserror(errno.EBUSY, str(p))
        for procs in self.root.rglob("cgroup.procs"):  # a pid lives in one cgroup
            pids = procs.read_text().split()
            if data in pids:
                procs.write_text("".join(f"{x}\n" for x in pids if x != data))
                self._update_populated(procs.parent)
        self.add_fake_pids(d, int(data))

    def _w_kill(self, p: Path, data: str) -> None:
        if data != "1":
            raise _oserror(errno.ERANGE, str(p))
        for procs in p.parent.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                self.signals.append((int(pid), signal.SIGKILL))
            procs.write_text("")
            self._update_populated(procs.parent)

    def _w_freeze(self, p: Path, data: str) -> None:
        if data not in ("0", "1"):
            raise _oserror(errno.ERANGE, str(p))
        p.write_text(data + "\n")
        events = p.parent / "cgroup.events"
        populated = events.read_text().splitlines()[0]
        events.write_text(f"{populated}\nfrozen {data}\n")

    def _update_populated(self, d: Path) -> None:
        events = d / "cgroup.events"
        if not events.exists():
            return
        populated = 1 if (d / "cgroup.procs").read_text().split() else 0
        frozen = events.read_text().splitlines()[1]
        events.write_text(f"populated {populated}\n{frozen}\n")

    def _w_memory(self, p: Path, data: str) -> None:
        if data == "max":
            p.write_text("max\n")
        elif data.isdigit():
            p.write_text(f"{int(data) // PAGE_SIZE * PAGE_SIZE}\n")  # stored in pages
        else:
            raise _oserror(errno.EINVAL, str(p))

    def _w_cpu_max(self, p: Path, data: str) -> None:
        parts = data.split()
        quota, period = parts[0], (parts[1] if len(parts) > 1 else "100000")
        if len(parts) > 2 or not period.isdigit() or not 1000 <= int(period) <= 1_000_000:
            raise _oserror(errno.EINVAL, str(p))
        if quota != "max" and (not quota.isdigit() or int(quota) < 1000):
            raise _oserror(errno.EINVAL, str(p))
        p.write_text(f"{quota} {period}\n")

    def _w_pids_max(self, p: Path, data: str) -> None:
        if data != "max" and (not data.isdigit() or int(data) > PID_MAX_LIMIT):
            raise _oserror(errno.EINVAL, str(p))
        p.write_text(data + "\n")


@dataclass
class Cgroup2Tree:
    """A fake host: mountinfo path, filesystem root, the cgroup2 root and its fake fs."""

    mountinfo: str
    fs_root: str
    cgroot: Path
    fs: FakeCgroup2Fs


def build_cgroup2_tree(tmp_path: Path, controllers: str = ALL_CONTROLLERS, *,
                       with_kill: bool = True, with_swap: bool = True) -> Cgroup2Tree:
    """Lay out ``tmp_path`` like a pure-v2 host: proc/self/mountinfo + sys/fs/cgroup."""
    fs_root = tmp_path / "host"
    mountinfo = fs_root / "proc" / "self" / "mountinfo"
    mountinfo.parent.mkdir(parents=True)
    mountinfo.write_text(PURE_V2_MOUNTINFO)
    cgroot = fs_root / "sys" / "fs" / "cgroup"
    cgroot.parent.mkdir(parents=True)
    fs = FakeCgroup2Fs(cgroot, controllers, with_kill=with_kill, with_swap=with_swap)
    return Cgroup2Tree(str(mountinfo), str(fs_root), cgroot, fs)
