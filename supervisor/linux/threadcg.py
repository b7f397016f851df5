"""Moving the calling *thread* between cgroup v1 cgroups, the cheap way.

Writing a pid to ``cgroup.procs`` takes the kernel's global ``cgroup_threadgroup_rwsem``
for writing, which waits for an RCU grace period when cgroup writes are rare (8-16 ms
measured here) and holds up every fork on the host meanwhile. A thread that writes "0" to
a v1 hierarchy's ``tasks`` file moves only itself, and the kernel skips that lock
(``cgroup_procs_write_start``: a single thread that is ``current`` cannot exit or exec
under it): ~50 us. A child is born in its parent thread's cgroups, so the fork server
steps into a container's cgroups, clones the init there and steps back.

cgroup v2 has no ``tasks`` file for domain cgroups (there, ``clone3(CLONE_INTO_CGROUP)``
is the equivalent); :func:`tasks_file` returns None for it and the caller joins the init
from outside instead.

Only ``os`` is imported: the fork server loads this module.
"""

from __future__ import annotations

import os


def tasks_file(procs_file: str) -> str | None:
    """The v1 ``tasks`` file next to ``procs_file``, or None on cgroup v2."""
    path = os.path.join(os.path.dirname(procs_file), "tasks")
    return path if os.path.exists(path) else None


def own_tasks_file(dev: int) -> str:
    """The ``tasks`` file of the calling thread's cgroup in the v1 hierarchy mounted from
    device ``dev`` (``st_dev`` of any file of that hierarchy).

    Raises OSError(ENOENT) when no such hierarchy is mounted in our mount namespace.
    """
    for mount_root, mount_point, options in _v1_mounts(dev):
        with open("/proc/thread-self/cgroup") as f:
            for line in f:
                _id, controllers, path = line.rstrip("\n").split(":", 2)
                if not controllers or not set(controllers.split(",")) <= options:
                    continue
                if mount_root != "/":  # a bind of a subtree: paths are below its root
                    if path != mount_root and not path.startswith(mount_root + "/"):
                        continue
                    path = path[len(mount_root):]
                tasks = mount_point.rstrip("/") + path.rstrip("/") + "/tasks"
                if os.stat(tasks).st_dev == dev:
                    return tasks
    raise FileNotFoundError(2, "no cgroup v1 hierarchy of ours on that device", str(dev))


def _v1_mounts(dev: int) -> list[tuple[str, str, set[str]]]:
    """(root, mount point, super options) of the cgroup v1 mounts of device ``dev``."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            major, minor = fields[2].split(":")
            if os.makedev(int(major), int(minor)) != dev:
                continue
            sep = fields.index("-", 6)
            if fields[sep + 1] == "cgroup":
                found.append((_unescape(fields[3]), _unescape(fields[4]),
                              set(fields[sep + 3].rstrip("\n").split(","))))
    return found


def _unescape(text: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as \ooo."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class ThreadCgroups:
    """Steps the calling thread into cgroups and back home (one fd per hierarchy)."""

    def __init__(self) -> None:
        self._home: dict[int, int] = {}  # st_dev of a hierarchy -> our own tasks file

    def home_fds(self) -> list[int]:
        return list(self._home.values())

    def enter(self, tasks_files: dict[str, int]) -> list[int]:
        """Move into the cgroup of each ``tasks`` file (path -> open fd); returns the home
        fds to :meth:`leave` to. An OSError names the file; the thread is back home by
        then."""
        homes: list[int] = []
        try:
            for path, fd in tasks_files.items():
                try:
                    home = self._home_of(os.fstat(fd).st_dev)
                    os.write(fd, b"0")
                except OSError as e:
                    raise OSError(e.errno, e.strerror, path) from None
                homes.append(home)
        except BaseException:
            self.leave(homes)
            raise
        return homes

    def leave(self, homes: list[int]) -> None:
        for fd in homes:
            os.write(fd, b"0")

    def _home_of(self, dev: int) -> int:
        fd = self._home.get(dev)
        if fd is None:
            fd = os.open(own_tasks_file(dev), os.O_WRONLY | os.O_CLOEXEC)
            self._home[dev] = fd
        return fd
