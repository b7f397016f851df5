"""The container's init, from its birth to the exec of the workload.

The fork server clones the init with ``CLONE_PARENT`` and the namespace flags (runc's
``clone_parent``): it is born in its new namespaces, as pid 1 of its PID namespace, and
as a child of the runtime's caller - not of the fork server - so the caller reaps it and
learns its exact exit status. The init then:
  waits while the fork server, outside, joins it to its cgroups, sets its rlimits and
  writes its id maps; becomes root of its user namespace; unshares the cgroup namespace;
  blocks signals into a signalfd; builds the filesystem and pivots; sets the hostname;
  cuts the capability bounding set; optionally waits for the caller's "go"; takes the
  workload's identity and spawns it; reports "ready" (or the exec error); runs the pid-1 loop.

Reports go over one SOCK_SEQPACKET socket, one JSON message per packet. A failure is
reported as ``{"error": "<step>: <reason>"}`` and the init exits: its mounts and
namespaces die with it, so nothing is left on the host.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from typing import NoReturn

from ..linux import caps, libc
from . import rootfs
from .errors import SetupError, step
from .init import Init, block_signals, spawn_workload
from .spec import ContainerSpec

_CLONE_FLAGS = {
    "mount": libc.CLONE_NEWNS, "uts": libc.CLONE_NEWUTS, "ipc": libc.CLONE_NEWIPC,
    "pid": libc.CLONE_NEWPID, "net": libc.CLONE_NEWNET, "cgroup": libc.CLONE_NEWCGROUP,
    "user": libc.CLONE_NEWUSER,
}


class Channel:
    """The report socket to the caller."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)

    def send(self, **msg: object) -> None:
        self.sock.send(json.dumps(msg).encode())

    def recv(self) -> dict:
        data = self.sock.recv(65536)
        return json.loads(data) if data else {}

    def fail(self, error: BaseException) -> NoReturn:
        if isinstance(error, SetupError):
            msg = {"error": str(error), "errno": error.errno, "step": error.step}
        elif isinstance(error, OSError):
            msg = {"error": f"{error.strerror} ({error.filename or ''})", "errno": error.errno}
        else:
            msg = {"error": f"internal error: {error!r}", "errno": 0}
        try:
            self.send(**msg)
        finally:
            os._exit(1)


def clone_flags(spec: ContainerSpec) -> int:
    """The namespaces the init is born in. The cgroup namespace comes later, once the
    init is in its cgroup, so that the namespace's root is the container's cgroup."""
    flags = libc.CLONE_PARENT
    for ns in spec.namespaces:
        flags |= _CLONE_FLAGS[ns]
    return flags & ~libc.CLONE_NEWCGROUP


def run_init(spec: ContainerSpec, fds: dict[str, int], sources: rootfs.Sources | None,
             go_fd: int, last_cap: int) -> NoReturn:
    """The container's pid 1, from its birth in new namespaces to its signalfd loop.

    It first waits on ``go_fd`` while the fork server, outside, puts it in its cgroups,
    sets its rlimits and writes its id maps.
    """
    channel = Channel(fds["report"])
    try:
        sfd = block_signals()
        go = os.read(go_fd, 16)
        os.close(go_fd)
        if go != b"go":
            os._exit(1)  # the fork server reported why
        if "user" in spec.namespaces:
            with step("become root in the user namespace"):
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
                os.setgroups([])
        if "cgroup" in spec.namespaces:
            with step("unshare cgroup namespace"):
                libc.unshare(libc.CLONE_NEWCGROUP)
        libc.set_process_name("nsv-init")
        # Non-dumpable: processes in the container cannot ptrace us or open /proc/1/fd,
        # where the exit file's host fd lives.
        libc.prctl(libc.PR_SET_DUMPABLE, 0)
        if "pid" not in spec.namespaces:
            libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, not the host
        if sources is not None:
            rootfs.build(spec, sources)
        if "uts" in spec.namespaces:
            with step("sethostname"):
                libc.sethostname(spec.effective_hostname)
                if spec.domainname:
                    libc.setdomainname(spec.domainname)
        with step("limit capability bounding set"):
            caps.limit_bounding_set(caps.mask(spec.capabilities), last_cap)
        if spec.hold:
            channel.send(created=True)
            if not channel.recv().get("go"):
                os._exit(1)  # the caller gave up on us
        stdio = (fds["stdin"], fds["stdout"], fds["stderr"])
        init = Init(None, sfd, fds.get("exit"), spec)
        try:
            init.workload = spawn_workload(spec, stdio)
            channel.send(ready=True, workload=init.workload)
        except OSError as e:
            code = 127 if e.errno == errno.ENOENT else 126
            init.spawn_failed(code)
            channel.send(error=f"exec {spec.command[0]}: {e.strerror} "
                               f"({errno.errorcode.get(e.errno or 0, '')})",
                         errno=e.errno, step="exec", exit_code=code)
        for fd in set(stdio):
            os.close(fd)
        channel.sock.close()
    except BaseException as e:  # noqa: BLE001
        channel.fail(e)
    init.run()
