"""The fork server: a small single-threaded Python process that clones each container.

Started once per runtime (``python -S``, importing only the container side), it never
runs threads, so forking it is safe - unlike forking the daemon - and a container costs a
clone instead of a new interpreter (~10 ms and several MiB each).

Every page the fork server writes after a clone becomes private to that container's
init, so a cycle here does as little as it can: receive one request, clone, report the
pid. The caller does the rest from outside (bind sources, rlimits, id maps) and sends
the spec to the init itself.

Protocol on the control socket (SOCK_SEQPACKET, one request per packet): a ``marshal``-ed
``(clone_flags, fd_names)`` with those fds attached (SCM_RIGHTS), the first being the
request's report socket, where the fork server answers ``{"pid": N, "cgroup2": B}`` (the
init's host pid, and whether it was born in the request's cgroup v2 directory) or the
error it met.
Fds named ``cgroup:*`` are cgroup v1 ``tasks`` files: the fork server steps into them for
the clone, so the init is born in its cgroups (see :mod:`..linux.threadcg`), and is back
in its own before it reads the next request. An fd named ``cgroup2:*`` is a cgroup v2
directory: clone3 puts the init there (CLONE_INTO_CGROUP).
"""

from __future__ import annotations

import _signal
import _socket
import errno
import gc
import marshal
import os
import sys

from ..linux import caps, libc
from ..linux.threadcg import ThreadCgroups
from .launcher import run_init
from .wire import encode

MAX_REQUEST = 1 << 16
MAX_FDS = 250  # the kernel's SCM_MAX_FD is 253


def main(control_fd: int, parent_pid: int) -> None:
    libc.set_process_name("nsv-zygote")
    libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
    if os.getppid() != parent_pid:
        sys.exit(0)  # our caller died before PDEATHSIG was armed
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    control = _socket.socket(fileno=control_fd)
    last_cap = caps.last_cap()
    cmsg_size = _socket.CMSG_SPACE(MAX_FDS * 4)
    cgroups = ThreadCgroups()
    gc.collect()
    gc.freeze()  # keep the heap's pages shared with every forked container
    while True:
        try:
            data, ancillary, _flags, _addr = control.recvmsg(MAX_REQUEST, cmsg_size,
                                                             _socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            continue
        if not data:
            return  # the caller closed the socket: shut down
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += memoryview(payload)[:len(payload) - len(payload) % 4].cast("i")
        _serve(control, data, fds, last_cap, cgroups)


def _serve(control: _socket.socket, data: bytes, fds: list[int], last_cap: int,
           cgroups: ThreadCgroups) -> None:
    try:
        flags, names = marshal.loads(data)
        if len(names) != len(fds) or names[0] != "report":
            raise ValueError(f"{len(names)} fd names for {len(fds)} fds")
    except Exception as e:  # noqa: BLE001 - a bad request must not kill the server
        if fds:
            _report(fds[0], error=f"fork server: bad request: {e!r}", errno=0, step="")
        for fd in fds:
            os.close(fd)
        return
    joins = {name[7:]: fd for name, fd in zip(names, fds, strict=True)
             if name.startswith("cgroup:")}
    cgroup2 = next((fd for name, fd in zip(names, fds, strict=True)
                    if name.startswith("cgroup2:")), None)
    pid, error, born_in_cgroup2 = -1, None, False
    try:
        homes = cgroups.enter(joins)
    except OSError as e:
        where = os.path.dirname(e.filename or "")
        error = dict(error=f"join cgroup {where}: {e.strerror}", errno=e.errno or 0,
                     step=f"join cgroup {where}")
    else:
        try:
            pid, born_in_cgroup2 = _clone(flags, cgroup2)
        except OSError as e:
            error = dict(error=f"clone: {e.strerror}", errno=e.errno or 0, step="clone")
        if pid == 0:
            control.close()
            for fd in (*cgroups.home_fds(), *joins.values()):  # no way back to the host's
                os.close(fd)
            run_init({n: fd for n, fd in zip(names, fds, strict=True)
                      if not n.startswith(("cgroup:", "cgroup2:"))}, last_cap)
        try:  # home before anyone hears from us: the next request finds us there
            cgroups.leave(homes)
        except OSError as e:  # every later clone would land in this container's cgroups
            _report(fds[0], error=f"fork server: cannot return to its cgroup: {e.strerror}",
                    errno=e.errno or 0, step="join cgroup")
            os._exit(1)
    if error is not None:
        _report(fds[0], **error)
    elif pid > 0:
        _report(fds[0], pid=pid, cgroup2=born_in_cgroup2)
    for fd in fds:
        os.close(fd)


def _clone(flags: int, cgroup2: int | None) -> tuple[int, bool]:
    """Clone the init, into the cgroup v2 directory ``cgroup2`` if given and the kernel
    can (>= 5.7); returns its pid (0 in the child) and whether it was born there."""
    if cgroup2 is not None:
        try:
            return libc.clone_fork(flags, cgroup2), True
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.E2BIG):
                raise
    return libc.clone_fork(flags), False


def _report(fd: int, **msg: object) -> None:
    try:
        os.write(fd, encode(**msg))
    except OSError:
        pass


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
