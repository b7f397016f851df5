"""Moving the calling *thread* between cgroup v1 cgroups, the cheap way.

Writing a pid to ``cgroup.procs`` takes the kernel's global ``cgroup_threadgroup_rwsem``
for writing, which waits for an RCU grace period when cgroup writes are rare (8-16 ms
measured here) and holds up every fork on the host meanwhile. A thread that writes "0" to
a v1 hierarchy's ``tasks`` file moves only itself, and the kernel skips that lock
(``cgroup_procs_write_start``: a single thread that is ``current`` cannot exit or exec
under it): ~50 us. A child is born in its parent thread's cgroups, so the fork server
steps into a container's cgroups, clones the init there and steps back.

cgroup v2 has no ``tasks`` file for domain cgroups (there, ``clone3(CLONE_INTO_CGROUP)``
is the equivalent: :func:`..libc.clone_fork`); :func:`tasks_file` returns None for it.

It imports only ``os`` and :mod:`.mountinfo`: the fork server loads it.
"""

from __future__ import annotations

import os

from . import mountinfo


def tasks_file(procs_file: str) -> str | None:
    """The v1 ``tasks`` file next to ``procs_file``, or None on cgroup v2."""
    path = os.path.join(os.path.dirname(procs_file), "tasks")
    return path if os.path.exists(path) else None


def own_tasks_file(dev: int) -> str:
    """The ``tasks`` file of the calling thread's cgroup in the v1 hierarchy mounted from
    device ``dev`` (``st_dev`` of any file of that hierarchy).

    Raises FileNotFoundError when no mount of that hierarchy shows our cgroup.
    """
    mounts = [m for m in mountinfo.read() if m.dev == dev and m.fstype == "cgroup"]
    with open("/proc/thread-self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            found = mountinfo.cgroup_dir(controllers, path, mounts) if controllers else None
            if found is not None:
                return os.path.join(found, "tasks")
    raise FileNotFoundError(2, "the fork server's own cgroup in that hierarchy is not "
                               "mounted here", str(dev))


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
