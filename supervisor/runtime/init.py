"""The container's pid-1 init (the catatonit pattern) and the exec of its workload.

The init blocks every signal it can and reads them from a signalfd: the kernel never
drops a *blocked* signal, even for a namespace's pid 1, so nothing is lost between
reads. SIGCHLD reaps every zombie (orphans included) with a ``waitpid(-1, WNOHANG)``
loop; TSTP/TTIN/TTOU are ignored; every other signal goes to the workload (or its
process group). When the workload exits, the init records its status, SIGTERMs what is
left, SIGKILLs it after a grace period, and exits with the workload's status.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from typing import NoReturn

from ..linux import caps, libc
from .spec import ContainerSpec
from .status import ExitStatus, write_exit_file

# Synchronous faults stay unblocked: blocking them would hang the process (tini, catatonit).
_FAULTS = {signal.SIGFPE, signal.SIGILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT,
           signal.SIGTRAP, signal.SIGSYS}
_IGNORED = {signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def block_signals() -> int:
    """Block every signal but the faults and return a signalfd that reads them."""
    blocked = libc.all_signals() - _FAULTS - _UNCATCHABLE
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    # An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap and blind us.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return libc.signalfd(blocked, libc.SFD_CLOEXEC)


def spawn_workload(spec: ContainerSpec, stdio: tuple[int, int, int]) -> int:
    """Take the workload's identity and spawn it; return its pid (raises OSError).

    The init takes the identity itself (uid, gid, groups, capabilities, no_new_privs,
    working directory) and then ``posix_spawn``s the workload, which costs a vfork
    instead of a copy-on-write fork of this Python process. The init needs no privilege
    afterwards: it signals processes of its own uid, and when it exits the kernel kills
    everything left in its PID namespace anyway.
    """
    _set_identity(spec)
    libc.prctl(libc.PR_SET_DUMPABLE, 0)  # a uid change resets it
    env = _environment(spec)
    os.chdir(spec.workdir)
    os.environ["PATH"] = env["PATH"]  # posix_spawnp searches the caller's PATH
    # Every fd >= 3 is close-on-exec: only stdio reaches the workload (CVE-2024-21626).
    libc.close_range_cloexec(3)
    actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(stdio)]
    return os.posix_spawnp(
        spec.command[0], spec.command, env, file_actions=actions, setsid=True,
        setsigmask=(), setsigdef=signal.valid_signals() - _UNCATCHABLE)


def _set_identity(spec: ContainerSpec) -> None:
    keep = caps.mask(spec.capabilities)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(spec.groups))
    os.setresgid(spec.gid, spec.gid, spec.gid)
    os.setresuid(spec.uid, spec.uid, spec.uid)
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    libc.capset(effective=keep, permitted=keep, inheritable=0)
    if spec.no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)


def _environment(spec: ContainerSpec) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.effective_hostname,
           "HOME": "/root" if spec.uid == 0 else "/"}
    env.update(spec.env)
    return env


class Init:
    """The init's loop, after the workload was forked."""

    def __init__(self, workload: int | None, sfd: int, exit_fd: int | None,
                 spec: ContainerSpec):
        self.workload = workload
        self.sfd = sfd
        self.exit_fd = exit_fd
        self.group = spec.signal_process_group
        self.grace = spec.kill_grace
        self.pid_namespace = "pid" in spec.namespaces
        self.status: ExitStatus | None = None
        self.kill_at: float | None = None

    def run(self) -> NoReturn:
        if self.workload is None:  # the spawn failed: nothing to wait for
            assert self.status is not None
            os._exit(self.status.exit_code)
        poller = select.poll()
        poller.register(self.sfd, select.POLLIN)
        while True:
            timeout = None
            if self.kill_at is not None:
                timeout = max(0, int((self.kill_at - time.monotonic()) * 1000))
            if poller.poll(timeout):
                data = os.read(self.sfd, libc.SIGNALFD_SIGINFO_SIZE * 32)
                for off in range(0, len(data), libc.SIGNALFD_SIGINFO_SIZE):
                    self._on_signal(libc.read_siginfo(data[off:])[0])
            elif self.kill_at is not None:
                self._kill_rest(signal.SIGKILL)
                self.kill_at = None
            if self.status is not None and not self._reap():
                os._exit(self.status.exit_code)

    def _on_signal(self, signo: int) -> None:
        if signo == signal.SIGCHLD:
            self._reap()
        elif signo in _IGNORED:
            pass
        elif self.status is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(-self.workload if self.group else self.workload, signo)

    def _reap(self) -> bool:
        """Reap every zombie; False once no child is left."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.workload and self.status is None:
                self._workload_exited(ExitStatus.from_wait_status(wait_status, time.time()))

    def spawn_failed(self, exit_code: int) -> None:
        self._record(ExitStatus(exit_code, None, time.time()))

    def _workload_exited(self, status: ExitStatus) -> None:
        self._record(status)
        self._kill_rest(signal.SIGTERM)
        self.kill_at = time.monotonic() + self.grace

    def _record(self, status: ExitStatus) -> None:
        self.status = status
        if self.exit_fd is not None:
            with contextlib.suppress(OSError):
                write_exit_file(self.exit_fd, status)

    def _kill_rest(self, sig: int) -> None:
        # As pid 1 of its namespace, kill(-1) reaches every other process in it. Without a
        # PID namespace that would be the whole host: only the workload's group then.
        target = -1 if self.pid_namespace and os.getpid() == 1 else -self.workload
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)
