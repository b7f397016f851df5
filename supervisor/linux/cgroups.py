"""Per-container cgroups on cgroup v2 or v1, behind one small interface.

The daemon gives every container its own cgroup *before* the workload runs (its init is
born in it: see :mod:`.threadcg` for v1, :func:`.libc.clone_fork` for v2), so that
limits apply from the first instruction, every descendant is accounted, and ``kill_all``
can find processes that double-forked or called ``setsid`` -- a pid-tree walk cannot.

Layout is detected at run time from ``/proc/self/mountinfo``:

- **v2** (unified): one directory ``<mount>/<parent>/<name>``; controllers are enabled in
  ``cgroup.subtree_control`` of every level above it.
- **v1** (including "hybrid" hosts with v1 controllers and an empty cgroup2 at
  ``/sys/fs/cgroup/unified``): one directory per controller hierarchy (co-mounted
  hierarchies such as ``cpu,cpuacct`` count once).

All kernel access goes through :class:`CgroupFs` so tests can run the v2 code path against
a fake tree (the fake must create the interface files the kernel creates on ``mkdir``).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

from . import mountinfo

__all__ = [
    "CPU_PERIOD_US",
    "Cgroup",
    "CgroupError",
    "CgroupFs",
    "CgroupLayout",
    "CgroupManager",
    "CgroupStats",
    "Limits",
    "detect",
    "validate_name",
]

CPU_PERIOD_US = 100_000
"""CFS period for ``cpu.max`` / ``cpu.cfs_period_us``: the kernel and runc default (100 ms)."""

MIN_CPU_QUOTA_US = 1_000
"""The kernel rejects quotas below 1 ms (EINVAL), so :class:`Limits` refuses them up front."""

V1_UNLIMITED = 2**62
"""v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE (0x7FFFFFFFFFFFF000); anything this
large is treated as unlimited, like cAdvisor does."""

MAX_NAME_LEN = 64

# Controllers we create directories in on v1; other hierarchies (cpuset needs cpus/mems set
# before use, devices/blkio/net_cls are not limited by us) are left alone.
V1_CONTROLLERS: tuple[str, ...] = ("cpu", "cpuacct", "memory", "pids", "freezer")
# Controllers enabled in subtree_control on v2 (freeze/kill are core files, always present).
V2_CONTROLLERS: tuple[str, ...] = ("cpu", "memory", "pids")
# The v1 controllers whose presence makes a host "v1" even if a cgroup2 mount exists.
_V1_DECISIVE = frozenset({"cpu", "cpuacct", "memory", "pids"})
_KNOWN_V1 = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio", "net_cls",
     "net_prio", "perf_event", "hugetlb", "rdma", "misc"}
)


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file (and value) involved.

    ``path`` and ``errno`` are kept so callers can react (e.g. EBUSY) without parsing text.
    """

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = errno


# --------------------------------------------------------------------------- limits/stats


@dataclass(frozen=True)
class Limits:
    """Resource limits for one container; ``None`` means unlimited.

    Validated here so a typo in a config fails with a clear ValueError instead of an
    EINVAL from some cgroup file after half the writes were done.
    """

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None

    def __post_init__(self) -> None:
        for attr in ("memory_bytes", "pids"):
            value = getattr(self, attr)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{attr} must be a positive integer or None, got {value!r}")
        if self.cpus is not None:
            if isinstance(self.cpus, bool) or not isinstance(self.cpus, int | float):
                raise ValueError(f"Limits.cpus must be a number or None, got {self.cpus!r}")
            if not self.cpus * CPU_PERIOD_US >= MIN_CPU_QUOTA_US:  # also rejects NaN
                raise ValueError(
                    f"Limits.cpus must be >= {MIN_CPU_QUOTA_US / CPU_PERIOD_US}, got {self.cpus!r}"
                )

    def cpu_quota_us(self) -> int | None:
        """CFS quota in microseconds per :data:`CPU_PERIOD_US`, or None when unlimited."""
        if self.cpus is None:
            return None
        return round(self.cpus * CPU_PERIOD_US)


@dataclass(frozen=True)
class CgroupStats:
    """One scrape of a cgroup's counters; every field is None when the kernel doesn't say.

    Units are seconds and bytes so the metrics layer can export them unchanged.
    ``processes`` is ``pids.current`` when the pids controller is there (it counts tasks,
    i.e. threads -- the quantity ``pids.max`` limits), else the number of pids in
    ``cgroup.procs``.
    """

    cpu_usage_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    memory_usage_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_limit_bytes: int | None = None
    processes: int | None = None
    oom_events: int | None = None
    nr_throttled: int | None = None
    throttled_seconds: float | None = None


# --------------------------------------------------------------------------- the fs seam


class CgroupFs:
    """Every syscall the cgroup layer makes, in one place so tests can substitute a fake.

    The real kernel creates interface files on ``mkdir`` and removes them on ``rmdir``; a
    fake built on a plain directory has to do that itself (see ``tests/cgroup_tree.py``).
    """

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def read(self, path: str) -> str:
        # Plain os.open/os.read: ~40% cheaper than open() per file, and a scrape of 200
        # containers reads about a thousand of these.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("ascii", errors="replace")

    def write(self, path: str, data: str) -> None:
        # One write(2) without O_CREAT/O_TRUNC: cgroupfs reports errors from the write call
        # itself, and a missing interface file must fail (ENOENT) rather than be created.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def subdirs(self, path: str) -> list[str]:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]

    def kill(self, pid: int, sig: int) -> None:
        os.kill(pid, sig)


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class CgroupLayout:
    """Where the cgroup hierarchies are mounted on this host.

    ``version`` is 2 only on a pure unified host; ``unified`` is the cgroup2 mount (also
    recorded on hybrid v1 hosts, unused there). ``controllers`` is what can be used: v2 the
    root's ``cgroup.controllers``, v1 every mounted v1 controller. ``v1_mounts`` maps a v1
    controller to its hierarchy's mount point (co-mounted controllers share one).
    """

    version: int
    unified: str | None = None
    controllers: frozenset[str] = frozenset()
    v1_mounts: dict[str, str] = field(default_factory=dict, hash=False)


def _under_root(fs_root: str, mount_point: str) -> str:
    return os.path.join(fs_root, mount_point.lstrip("/")) if fs_root != "/" else mount_point


def detect(mountinfo_path: str = "/proc/self/mountinfo", fs_root: str = "/") -> CgroupLayout:
    """Work out the cgroup layout from mountinfo (no shelling out, no guessing paths).

    ``fs_root`` is prefixed to every mount point so tests can describe a fake tree with a
    realistic mountinfo. A host with any of cpu/cpuacct/memory/pids on v1 is treated as v1
    even when cgroup2 is also mounted (the "hybrid" systemd layout): those controllers
    cannot be enabled on v2 while a v1 hierarchy holds them.
    """
    mounts = mountinfo.read(mountinfo_path)

    v1: dict[str, str] = {}
    unified_candidates: list[str] = []
    for m in mounts:
        if m.fstype == "cgroup":
            for opt in m.super_options:
                if opt in _KNOWN_V1 and opt not in v1:  # first mount of a hierarchy wins
                    v1[opt] = _under_root(fs_root, m.mount_point)
        elif m.fstype == "cgroup2":
            unified_candidates.append(m.mount_point)

    unified = None
    if unified_candidates:
        preferred = [p for p in unified_candidates if p == "/sys/fs/cgroup"]
        unified = _under_root(fs_root, (preferred or unified_candidates)[0])

    if _V1_DECISIVE & v1.keys():
        return CgroupLayout(version=1, unified=unified, controllers=frozenset(v1), v1_mounts=v1)
    if unified is not None:
        try:
            with open(os.path.join(unified, "cgroup.controllers"), encoding="ascii") as f:
                controllers = frozenset(f.read().split())
        except OSError as e:
            raise CgroupError(
                f"cgroup: reading {unified}/cgroup.controllers: {e.strerror}",
                path=unified, errno=e.errno,
            ) from e
        return CgroupLayout(version=2, unified=unified, controllers=controllers)
    raise CgroupError(f"cgroup: no cgroup v1 or v2 hierarchy mounted (per {mountinfo_path})")


# --------------------------------------------------------------------------- helpers


def validate_name(name: str, what: str = "cgroup name") -> str:
    """Reject names that could escape the parent directory or break /proc/<pid>/cgroup."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LEN:
        raise ValueError(f"{what} {name!r} is longer than {MAX_NAME_LEN} characters")
    if "/" in name or ".." in name or name == ".":
        raise ValueError(f"{what} {name!r} must not contain '/' or '..'")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} {name!r} must not contain control characters")
    return name


def _write_error(value: str, path: str, e: OSError) -> CgroupError:
    reason = e.strerror or str(e)
    return CgroupError(f'cgroup: writing "{value}" to {path}: {reason}', path=path, errno=e.errno)


def _read_kv(fs: CgroupFs, path: str) -> dict[str, int] | None:
    """Parse "key value" lines (cpu.stat, memory.stat, memory.events, ...); None if absent."""
    try:
        text = fs.read(path)
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _read_int(fs: CgroupFs, path: str) -> int | None:
    try:
        return int(fs.read(path).strip())
    except (OSError, ValueError):
        return None


def _first(d: dict[str, int] | None, *keys: str) -> int | None:
    if d is None:
        return None
    for k in keys:
        if k in d:
            return d[k]
    return None


def _sleep_until(deadline: float, seconds: float) -> None:
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))


# --------------------------------------------------------------------------- Cgroup


class Cgroup:
    """One container's cgroup (one directory on v2, one per hierarchy on v1).

    Obtained from :meth:`CgroupManager.create` or :meth:`CgroupManager.open`.
    """

    def __init__(self, name: str, version: int, dirs: dict[str, str], fs: CgroupFs):
        self.name = name
        self.version = version
        # controller -> directory. v2 maps every controller (and "core") to the one dir.
        self._dirs = dirs
        self._fs = fs

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, v{self.version}, {self.paths})"

    @property
    def paths(self) -> list[str]:
        """Every directory of this cgroup, one per hierarchy, in a stable order."""
        return list(dict.fromkeys(self._dirs.values()))

    def _dir(self, controller: str) -> str | None:
        return self._dirs.get(controller)

    def _file(self, controller: str, filename: str) -> str | None:
        d = self._dirs.get(controller)
        return None if d is None else os.path.join(d, filename)

    def _write(self, path: str, value: str) -> None:
        try:
            self._fs.write(path, value)
        except OSError as e:
            raise _write_error(value, path, e) from e

    # ----------------------------------------------------------------- membership

    def procs_files(self) -> list[str]:
        """All ``cgroup.procs`` files a process must join (one per hierarchy).

        The runtime puts the container's init in each of them before it runs, so nothing
        it forks can escape accounting or ``kill_all``.
        """
        return [os.path.join(d, "cgroup.procs") for d in self.paths]

    def add(self, pid: int) -> None:
        """Move ``pid`` (the whole thread group) into this cgroup in every hierarchy."""
        for path in self.procs_files():
            self._write(path, str(pid))

    def pids(self) -> list[int]:
        """Live processes in the cgroup (union over hierarchies on v1), sorted.

        Zombies are not listed by the kernel, so an empty result means nothing can run.
        """
        found: set[int] = set()
        for path in self.procs_files():
            try:
                text = self._fs.read(path)
            except OSError as e:
                # ENODEV: the cgroup was removed between our open and our read.
                if e.errno in (errno.ENOENT, errno.ENODEV):
                    continue
                raise
            found.update(int(tok) for tok in text.split() if tok.isdigit())
        return sorted(found)

    # ----------------------------------------------------------------- limits

    def set_limits(self, limits: Limits, *, fresh: bool = False) -> None:
        """Write memory, cpu and pids limits ("max"/-1 where unlimited).

        A limit whose controller is not available raises instead of being silently
        skipped: a container the operator capped must not run uncapped. ``fresh``: the
        cgroup was just made, and a new cgroup is unlimited, so only the limits that are
        set are written (at a cold start, the writes of "unlimited" cost more than making
        the cgroup).
        """
        if self.version == 2:
            self._set_limits_v2(limits, fresh)
        else:
            self._set_limits_v1(limits, fresh)

    def _require(self, controller: str, wanted: bool, probe: str) -> str | None:
        """Directory for ``controller`` if usable; raise if a limit needs it but it's absent."""
        d = self._dir(controller)
        usable = d is not None and self._fs.exists(os.path.join(d, probe))
        if usable:
            return d
        if wanted:
            where = d if d is not None else "this host's cgroup mounts"
            raise CgroupError(
                f"cgroup {self.name}: {controller} controller not available in {where} "
                f"(no {probe}); cannot apply the {controller} limit",
                path=d,
            )
        return None

    def _set_limits_v2(self, limits: Limits, fresh: bool) -> None:
        if not (fresh and limits.memory_bytes is None):
            d = self._require("memory", limits.memory_bytes is not None, "memory.max")
            if d is not None:
                self._write(os.path.join(d, "memory.max"), str(limits.memory_bytes or "max"))
                swap = os.path.join(d, "memory.swap.max")
                if self._fs.exists(swap):
                    # Without this, memory.max only forces pages out to swap: not a hard
                    # limit.
                    self._write(swap, "0" if limits.memory_bytes is not None else "max")
        if not (fresh and limits.cpus is None):
            d = self._require("cpu", limits.cpus is not None, "cpu.max")
            if d is not None:
                quota = limits.cpu_quota_us()
                self._write(os.path.join(d, "cpu.max"), f"{quota or 'max'} {CPU_PERIOD_US}")
        if not (fresh and limits.pids is None):
            d = self._require("pids", limits.pids is not None, "pids.max")
            if d is not None:
                self._write(os.path.join(d, "pids.max"), str(limits.pids or "max"))

    def _set_limits_v1(self, limits: Limits, fresh: bool) -> None:
        if not (fresh and limits.memory_bytes is None):
            d = self._require("memory", limits.memory_bytes is not None,
                              "memory.limit_in_bytes")
            if d is not None:
                self._set_memory_v1(d, limits.memory_bytes)
        if not (fresh and limits.cpus is None):
            d = self._require("cpu", limits.cpus is not None, "cpu.cfs_quota_us")
            if d is not None:
                quota = limits.cpu_quota_us()
                self._write(os.path.join(d, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                self._write(os.path.join(d, "cpu.cfs_quota_us"), str(quota or -1))
        if not (fresh and limits.pids is None):
            d = self._require("pids", limits.pids is not None, "pids.max")
            if d is not None:
                self._write(os.path.join(d, "pids.max"), str(limits.pids or "max"))

    def _set_memory_v1(self, d: str, memory_bytes: int | None) -> None:
        """Set limit_in_bytes and memsw (memory+swap) to the same value, so swap can't
        extend the limit. The kernel requires memsw >= limit at every moment, so raise
        memsw first when growing and lower it last when shrinking."""
        mem = os.path.join(d, "memory.limit_in_bytes")
        memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
        value = str(memory_bytes) if memory_bytes is not None else "-1"
        if not self._fs.exists(memsw):  # swap accounting disabled (swapaccount=0)
            self._write(mem, value)
            return
        current = _read_int(self._fs, mem)
        growing = memory_bytes is None or current is None or memory_bytes >= current
        order = (memsw, mem) if growing else (mem, memsw)
        for path in order:
            self._write(path, value)

    # ----------------------------------------------------------------- killing

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> bool:
        """Signal every process in the cgroup and wait until it is empty.

        Returns True when the cgroup is empty, False if processes remain after ``timeout``
        (normal for SIGTERM to a workload that ignores it; escalate with SIGKILL).
        On v2 with ``cgroup.kill`` (Linux >= 5.14) SIGKILL is one atomic write. Otherwise
        the cgroup is frozen while the pid list is read and signalled, so a fork bomb
        can't outrun us, then thawed so the signals are delivered. Non-SIGKILL signals
        are sent once per process (handlers shouldn't see repeats); SIGKILL is resent
        each round, which is harmless and covers pids that appeared since.
        """
        deadline = time.monotonic() + timeout
        kill_file = self._file("core", "cgroup.kill") if self.version == 2 else None
        if sig == signal.SIGKILL and kill_file is not None and self._fs.exists(kill_file):
            if self.pids():
                self._write(kill_file, "1")
            return self._wait_empty(deadline)

        signalled: set[int] = set()
        pause = 0.005
        while True:
            pids = self.pids()
            if not pids:
                return True
            if time.monotonic() >= deadline:
                return False
            if sig == signal.SIGKILL or any(p not in signalled for p in pids):
                frozen = self._freeze(deadline)
                try:
                    if frozen:
                        pids = self.pids()  # stable now: nothing can fork while frozen
                    for pid in pids:
                        if sig != signal.SIGKILL and pid in signalled:
                            continue
                        try:
                            self._fs.kill(pid, sig)
                        except ProcessLookupError:
                            pass
                        signalled.add(pid)
                finally:
                    if frozen:
                        self._thaw()
            _sleep_until(deadline, pause)
            pause = min(pause * 2, 0.05)

    def _wait_empty(self, deadline: float) -> bool:
        pause = 0.002
        while self.pids():
            if time.monotonic() >= deadline:
                return False
            _sleep_until(deadline, pause)
            pause = min(pause * 2, 0.05)
        return True

    def _freeze(self, deadline: float) -> bool:
        """Freeze if a freezer exists; wait (bounded) for it to settle. True if requested."""
        if self.version == 2:
            path = self._file("core", "cgroup.freeze")
            value, done_file, done = "1", self._file("core", "cgroup.events"), "frozen 1"
        else:
            path = self._file("freezer", "freezer.state")
            value, done_file, done = "FROZEN", path, "FROZEN"
        if path is None or done_file is None or not self._fs.exists(path):
            return False
        self._write(path, value)
        settle = min(deadline, time.monotonic() + 1.0)  # don't wait forever on D-state tasks
        pause = 0.001
        while time.monotonic() < settle:
            try:
                if done in self._fs.read(done_file).splitlines():
                    break
            except OSError:
                break
            _sleep_until(settle, pause)
            pause = min(pause * 2, 0.02)
        return True

    def _thaw(self) -> None:
        if self.version == 2:
            path = self._file("core", "cgroup.freeze")
            if path is not None:
                self._write(path, "0")
        else:
            path = self._file("freezer", "freezer.state")
            if path is not None:
                self._write(path, "THAWED")

    def destroy(self, timeout: float = 5.0) -> None:
        """SIGKILL everything, then rmdir the cgroup in every hierarchy.

        rmdir is retried on EBUSY until ``timeout`` (exiting tasks may still be charged for
        a moment after they vanish from cgroup.procs). Directories already gone are fine,
        so destroy is safe to call twice or on a half-removed v1 cgroup.
        """
        deadline = time.monotonic() + timeout
        if not self.kill_all(signal.SIGKILL, timeout=timeout):
            raise CgroupError(
                f"cgroup {self.name}: processes {self.pids()} still present after "
                f"SIGKILL and {timeout}s; not removing {self.paths}"
            )
        failures: list[str] = []
        for d in self.paths:
            pause = 0.005
            while True:
                try:
                    self._fs.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno == errno.EBUSY and time.monotonic() < deadline:
                        _sleep_until(deadline, pause)
                        pause = min(pause * 2, 0.05)
                        continue
                    failures.append(f"{d}: {e.strerror or e}")
                    break
        if failures:
            raise CgroupError(f"cgroup: removing {self.name}: " + "; ".join(failures))

    # ----------------------------------------------------------------- stats

    def oom_kills(self) -> int | None:
        """How many processes the kernel OOM-killed in this cgroup so far (None: unknown).

        v2 ``memory.events`` ``oom_kill``; v1 ``memory.oom_control`` ``oom_kill`` (Linux
        >= 4.13). Read it before :meth:`destroy`: the counter dies with the directory.
        """
        if self.version == 2:
            path = self._file("memory", "memory.events")
        else:
            path = self._file("memory", "memory.oom_control")
        return None if path is None else _first(_read_kv(self._fs, path), "oom_kill")

    def oom_killed_since(self, previous: int | None) -> bool:
        """True if the OOM-kill count rose past ``previous`` (a value from :meth:`oom_kills`
        taken at start; None counts as 0), i.e. the workload's exit was an OOM kill."""
        now = self.oom_kills()
        return now is not None and now > (previous or 0)

    def stats(self) -> CgroupStats:
        """Read usage counters the way cAdvisor/runc do; missing files give None fields."""
        return self._stats_v2() if self.version == 2 else self._stats_v1()

    def _processes(self, pids_current: int | None) -> int:
        return pids_current if pids_current is not None else len(self.pids())

    def _stats_v2(self) -> CgroupStats:
        fs = self._fs
        cpu = _read_kv(fs, self._file("core", "cpu.stat") or "")
        mem_stat = _read_kv(fs, self._file("memory", "memory.stat") or "")
        usage = _read_int(fs, self._file("memory", "memory.current") or "")
        inactive = _first(mem_stat, "inactive_file")
        limit = None
        limit_path = self._file("memory", "memory.max")
        if limit_path is not None:
            limit = _read_int(fs, limit_path)  # "max" -> ValueError -> None
        usec = _first(cpu, "usage_usec")
        user = _first(cpu, "user_usec")
        system = _first(cpu, "system_usec")
        throttled = _first(cpu, "throttled_usec")
        return CgroupStats(
            cpu_usage_seconds=None if usec is None else usec / 1e6,
            cpu_user_seconds=None if user is None else user / 1e6,
            cpu_system_seconds=None if system is None else system / 1e6,
            memory_usage_bytes=usage,
            memory_working_set_bytes=_working_set(usage, inactive),
            memory_rss_bytes=_first(mem_stat, "anon"),
            memory_limit_bytes=limit,
            processes=self._processes(_read_int(fs, self._file("pids", "pids.current") or "")),
            oom_events=self.oom_kills(),
            nr_throttled=_first(cpu, "nr_throttled"),
            throttled_seconds=None if throttled is None else throttled / 1e6,
        )

    def _stats_v1(self) -> CgroupStats:
        fs = self._fs
        usage_ns = _read_int(fs, self._file("cpuacct", "cpuacct.usage") or "")
        acct = _read_kv(fs, self._file("cpuacct", "cpuacct.stat") or "")
        hz = os.sysconf("SC_CLK_TCK")  # cpuacct.stat is in USER_HZ ticks
        user, system = _first(acct, "user"), _first(acct, "system")
        cpu = _read_kv(fs, self._file("cpu", "cpu.stat") or "")
        throttled_ns = _first(cpu, "throttled_time")
        mem_stat = _read_kv(fs, self._file("memory", "memory.stat") or "")
        usage = _read_int(fs, self._file("memory", "memory.usage_in_bytes") or "")
        # total_* include descendants (use_hierarchy=1, the only mode since Linux 5.x).
        inactive = _first(mem_stat, "total_inactive_file", "inactive_file")
        limit = _read_int(fs, self._file("memory", "memory.limit_in_bytes") or "")
        if limit is not None and limit >= V1_UNLIMITED:
            limit = None
        return CgroupStats(
            cpu_usage_seconds=None if usage_ns is None else usage_ns / 1e9,
            cpu_user_seconds=None if user is None else user / hz,
            cpu_system_seconds=None if system is None else system / hz,
            memory_usage_bytes=usage,
            memory_working_set_bytes=_working_set(usage, inactive),
            memory_rss_bytes=_first(mem_stat, "total_rss", "rss"),
            memory_limit_bytes=limit,
            processes=self._processes(_read_int(fs, self._file("pids", "pids.current") or "")),
            oom_events=self.oom_kills(),
            nr_throttled=_first(cpu, "nr_throttled"),
            throttled_seconds=None if throttled_ns is None else throttled_ns / 1e9,
        )


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    """cAdvisor's working set: usage minus reclaimable inactive page cache, floored at 0."""
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


# --------------------------------------------------------------------------- manager


class CgroupManager:
    """Creates, re-adopts and lists container cgroups under ``<hierarchy>/<parent>/``.

    ``parent`` may be nested ("nsvisor/containers"); each component is validated like a
    container name. Paths are relative to the hierarchy roots as mounted (root-relative on
    the host, or the daemon's cgroup when it runs inside a cgroup namespace).
    """

    def __init__(self, layout: CgroupLayout, parent: str = "nsvisor", *,
                 fs: CgroupFs | None = None):
        self.layout = layout
        self.parent_parts = [validate_name(p, "cgroup parent component")
                             for p in parent.strip("/").split("/")]
        self.parent = "/".join(self.parent_parts)
        self._fs = fs or CgroupFs()
        self._hierarchies = self._compute_hierarchies()
        self._parents_ready: set[str] = set()  # mount points whose parent levels we made

    def _compute_hierarchies(self) -> list[tuple[str, list[str]]]:
        """(mount point, controllers served there) for each hierarchy we create dirs in."""
        if self.layout.version == 2:
            if self.layout.unified is None:
                raise CgroupError("cgroup: v2 layout without a unified mount point")
            wanted = [c for c in V2_CONTROLLERS if c in self.layout.controllers]
            return [(self.layout.unified, ["core", "freezer", *wanted])]
        grouped: dict[str, list[str]] = {}
        for c in V1_CONTROLLERS:
            mount = self.layout.v1_mounts.get(c)
            if mount is not None:
                grouped.setdefault(mount, []).append(c)
        if not grouped:
            raise CgroupError("cgroup: none of the v1 controllers "
                              f"{', '.join(V1_CONTROLLERS)} is mounted")
        return list(grouped.items())

    def parent_dirs(self) -> list[str]:
        """The parent directory in every hierarchy (for cleanup and diagnostics)."""
        return [os.path.join(mount, self.parent) for mount, _ in self._hierarchies]

    def _cgroup(self, name: str, only_existing: bool) -> Cgroup:
        dirs: dict[str, str] = {}
        for mount, controllers in self._hierarchies:
            d = os.path.join(mount, self.parent, name)
            if only_existing and not self._fs.exists(d):
                continue
            for c in controllers:
                dirs[c] = d
        return Cgroup(name, self.layout.version, dirs, self._fs)

    def create(self, name: str, limits: Limits) -> Cgroup:
        """Make the container's cgroup and apply ``limits``; all-or-nothing.

        Fails with CgroupError if the cgroup already exists (a leftover from a crash should
        be :meth:`open`-ed and destroyed first, so no stale process is silently adopted).
        On any failure every directory made by this call is removed again.
        """
        validate_name(name)
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
        made: list[str] = []
        try:
            for mount, _ in self._hierarchies:
                leaf = os.path.join(mount, self.parent, name)
                if mount in self._parents_ready:  # one mkdir per hierarchy and container
                    try:
                        self._mkdir(leaf, exist_ok=False)
                        made.append(leaf)
                        continue
                    except CgroupError as e:
                        if e.errno != errno.ENOENT:
                            raise
                        self._parents_ready.discard(mount)  # removed behind our back
                made += self._make_parents(mount)
                self._mkdir(leaf, exist_ok=False)
                made.append(leaf)
            cgroup = self._cgroup(name, only_existing=False)
            cgroup.set_limits(limits, fresh=True)
        except BaseException:
            for d in reversed(made):  # leaf dirs first, then parents we created
                try:
                    self._fs.rmdir(d)
                except OSError:
                    pass  # e.g. a parent another container lives in now
            raise
        return cgroup

    def _make_parents(self, mount: str) -> list[str]:
        """Make the parent levels in one hierarchy (v2: with controllers enabled in each);
        returns the directories made."""
        made = []
        level = mount
        if self.layout.version == 2:
            self._enable_controllers(level)
        for part in self.parent_parts:
            level = os.path.join(level, part)
            if self._mkdir(level, exist_ok=True):
                made.append(level)
            if self.layout.version == 2:
                self._enable_controllers(level)
        self._parents_ready.add(mount)
        return made

    def _mkdir(self, path: str, *, exist_ok: bool) -> bool:
        """mkdir with a CgroupError naming the path; returns True if it was created."""
        try:
            self._fs.mkdir(path)
            return True
        except FileExistsError as e:
            if exist_ok:
                return False
            raise CgroupError(
                f"cgroup: {path} already exists (open() and destroy() a leftover first)",
                path=path, errno=e.errno,
            ) from e
        except OSError as e:
            raise CgroupError(f"cgroup: mkdir {path}: {e.strerror or e}",
                              path=path, errno=e.errno) from e

    def _enable_controllers(self, level: str) -> None:
        """Make cpu/memory/pids available to ``level``'s children (v2 only).

        Only controllers listed in the level's cgroup.controllers are requested; missing
        ones are caught later by set_limits if a limit actually needs them.
        """
        fs = self._fs
        try:
            available = set(fs.read(os.path.join(level, "cgroup.controllers")).split())
            enabled = set(fs.read(os.path.join(level, "cgroup.subtree_control")).split())
        except OSError as e:
            raise CgroupError(f"cgroup: reading controllers of {level}: {e.strerror or e}",
                              path=level, errno=e.errno) from e
        missing = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
        if missing:
            path = os.path.join(level, "cgroup.subtree_control")
            value = " ".join(f"+{c}" for c in missing)
            try:
                fs.write(path, value)
            except OSError as e:
                raise _write_error(value, path, e) from e

    def open(self, name: str) -> Cgroup | None:
        """Re-adopt an existing cgroup (e.g. after a daemon restart); None if absent.

        Only hierarchies where the directory exists are included, so a half-removed v1
        cgroup can still be inspected and destroyed.
        """
        validate_name(name)
        cgroup = self._cgroup(name, only_existing=True)
        return cgroup if cgroup.paths else None

    def list(self) -> list[str]:
        """Names of the cgroups under the parent (union over v1 hierarchies), sorted."""
        names: set[str] = set()
        for parent in self.parent_dirs():
            try:
                entries = self._fs.subdirs(parent)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                try:
                    names.add(validate_name(entry))
                except ValueError:
                    continue
        return sorted(names)
