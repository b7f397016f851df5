"""Per-container state files in ``state_dir``: what a restarted daemon needs to re-adopt.

One small JSON file per container, rewritten on every change of that container, so that a
``kill -9`` at any moment leaves every file either old or new, never torn. No fsync: the
state dir is normally a tmpfs, and what matters is surviving the daemon, not the host.

A file is rewritten in place, with one ``pwrite`` of at most a page at offset 0, padded
with spaces (JSON's whitespace) to the file's size, so it never has to shrink: the kernel
copies a page of a write whole before it lets a killed process die. Only the first save
(and a document too big for one page) writes a temporary file and renames it. Creating
and deleting an inode on every state change cost more than the rest of a container's
start on a busy journal-less ext4, which skips every inode deleted in the last 30 s when
it allocates one. The daemon reads the files only when it starts, when nobody writes
them; another reader (a test, a script) may catch one half rewritten and must retry.

Every state file of the daemon (these and ``networks.json``) is written by
:func:`write_state`. One that cannot be written (a full or read-only ``state_dir``) is
logged as an error, once, and once more when it can be again; it does not end the daemon:
supervision goes on, only a restarted nsvisord would find that file stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any

import structlog

log = structlog.get_logger("nsvisord")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_failing: set[str] = set()  # state files whose last write failed


class StateDirBusy(Exception):
    """Another nsvisord holds the state_dir; the message names it and what to do."""


def lock_state_dir(state_dir: str) -> int:
    """Claim ``state_dir`` for this nsvisord: an exclusive ``flock`` on its
    ``nsvisord.lock`` (which then holds our pid), held until the process ends - by a
    ``kill -9`` too, so a restarted nsvisord takes it over and re-adopts. Two daemons on
    one state_dir would re-adopt the same containers and fight over them.

    Returns the lock's fd (keep it open); StateDirBusy if another nsvisord holds it,
    OSError if the directory cannot be made or the file opened."""
    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "nsvisord.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirBusy(
            f"state_dir {state_dir} is in use by nsvisord pid {holder}: one nsvisord per "
            "state_dir (stop that one first, or give this one its own state_dir)") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class StateStore:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "containers")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def path(self, name: str, suffix: str = ".json") -> str:
        return os.path.join(self.dir, name + suffix)

    def exit_file(self, name: str) -> str:
        """Where the container's init records its workload's exit status."""
        return self.path(name, ".exit")

    def save(self, name: str, data: dict[str, Any]) -> bool:
        """Write the container's state; False (logged) if it could not be written."""
        return write_state(self.path(name), data)

    def load(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self.path(name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def names(self) -> list[str]:
        return sorted(f[:-5] for f in os.listdir(self.dir) if f.endswith(".json"))

    def remove(self, name: str) -> None:
        for suffix in (".json", ".exit"):
            path = self.path(name, suffix)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:  # a read-only state_dir: the file stays, stale
                log.error("state file not removed", path=path, error=e.strerror or str(e))
            _failing.discard(path)


def write_state(path: str, data: Any) -> bool:
    """Write ``data`` as JSON to the state file ``path`` (see the module's docstring);
    False if it could not be written, which is logged as an error once per streak."""
    try:
        text = json.dumps(data).encode()  # one write: this runs on every state change
        if not (len(text) <= _PAGE and _rewrite(path, text)):
            _replace(path, text)
    except OSError as e:
        if path not in _failing:
            _failing.add(path)
            log.error("state file not written", path=path, error=e.strerror or str(e),
                      hint="free space in state_dir (or make it writable); until then a "
                           "restarted nsvisord finds this file stale")
        return False
    if path in _failing:
        _failing.discard(path)
        log.info("state file written again", path=path)
    return True


def _rewrite(path: str, text: bytes) -> bool:
    """Overwrite the file at ``path`` in place; False if there is none (or it is too big
    to be rewritten in one page)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size > _PAGE:
            return False
        os.pwrite(fd, text.ljust(size), 0)
    finally:
        os.close(fd)
    return True


def _replace(path: str, text: bytes) -> None:
    """Write a temporary file and rename it over ``path``."""
    tmp = path + ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileNotFoundError:  # someone removed the state dir: make it again
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, flags, 0o600)
    try:
        os.write(fd, text)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def boot_id() -> str:
    """This boot's random id (/proc/sys/kernel/random/boot_id): a state file written
    before a reboot names processes that are gone, whatever holds their pids now."""
    global _boot_id
    if _boot_id is None:
        with open("/proc/sys/kernel/random/boot_id") as f:
            _boot_id = f.read().strip()
    return _boot_id


_boot_id: str | None = None


def saved_before_a_reboot(data: dict[str, Any]) -> bool:
    """Whether a state file was written in an earlier boot (files from before boot ids
    were recorded count as this boot's)."""
    return data.get("boot_id", boot_id()) != boot_id()


def init_left_running(data: dict[str, Any]) -> int | None:
    """The pid of the container init a state file names, if that very process still
    runs: the same boot, pid and start time (a pid reused by another process has another
    start time; after a reboot, the same pid and start time may well be another's)."""
    pid, start = data.get("pid"), data.get("pid_start")
    if not (pid and start) or saved_before_a_reboot(data):
        return None
    return pid if process_start_time(pid) == start else None


def process_start_time(pid: int) -> int | None:
    """The live process's start time in clock ticks since boot (/proc/PID/stat field 22).

    With the pid, it identifies a process across a daemon restart: a pid reused by
    another process has another start time. None when the process is gone or a zombie
    (it has exited; its new parent has not reaped it yet).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])
