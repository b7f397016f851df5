"""The container's pid-1 init (the catatonit pattern).

The init blocks every signal it can and reads them from a signalfd: the kernel never
drops a *blocked* signal, even for a namespace's pid 1, so nothing is lost between
reads. SIGCHLD reaps every zombie (orphans included) with a ``waitpid(-1, WNOHANG)``
loop; TSTP/TTIN/TTOU are ignored; every other signal goes to the workload (or its
process group). With log capture, the same poll loop reads the workload's pipes and
writes their lines to the log files. When the workload exits, the init records its
status, SIGTERMs what is left, SIGKILLs it after a grace period, drains the pipes and
exits with the workload's status.

Container-side code: only modules the fork server already holds (no signal, enum,
contextlib, json), so an idle init dirties as few shared pages as possible.
"""

from __future__ import annotations

import _signal
import os
import select
import time

from ..linux import libc

# Synchronous faults stay unblocked: blocking them would hang the process (tini, catatonit).
_FAULTS = {_signal.SIGFPE, _signal.SIGILL, _signal.SIGSEGV, _signal.SIGBUS, _signal.SIGABRT,
           _signal.SIGTRAP, _signal.SIGSYS}
_IGNORED = {_signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU}
_UNCATCHABLE = {_signal.SIGKILL, _signal.SIGSTOP}


def block_signals() -> int:
    """Block every signal but the faults and return a signalfd that reads them."""
    blocked = libc.all_signals() - _FAULTS - _UNCATCHABLE
    _signal.pthread_sigmask(_signal.SIG_BLOCK, blocked)
    # An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap and blind us.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    return libc.signalfd(blocked, libc.SFD_CLOEXEC)


def exit_record(exit_code: int, signal: int | None, finished_at: float) -> bytes:
    """The exit file's content: one JSON line, read back by ``status.parse_exit_record``."""
    sig = "null" if signal is None else str(signal)
    return (f'{{"exit_code": {exit_code}, "signal": {sig}, '
            f'"finished_at": {finished_at!r}}}\n').encode()


class Init:
    """The init's loop, from the fork of the workload's process to the init's exit."""

    def __init__(self, workload: int, sfd: int, exit_fd: int | None, spec,
                 logs=None) -> None:
        self.workload = workload
        self.sfd = sfd
        self.exit_fd = exit_fd
        self.group = spec.signal_process_group
        self.grace = spec.kill_grace
        self.pid_namespace = "pid" in spec.namespaces
        self.logs = logs
        self.exit_code: int | None = None
        self.kill_at: float | None = None

    def run(self):
        poller = select.poll()
        poller.register(self.sfd, select.POLLIN)
        streams = self.logs.by_fd() if self.logs is not None else {}
        for fd in streams:
            poller.register(fd, select.POLLIN)
        self._reap()  # the workload may be gone already (reparented as a zombie)
        while True:
            timeout = None
            if self.kill_at is not None:
                timeout = max(0, int((self.kill_at - time.monotonic()) * 1000))
            events = poller.poll(timeout)
            for fd, _ in events:
                if fd == self.sfd:
                    data = os.read(self.sfd, libc.SIGNALFD_SIGINFO_SIZE * 32)
                    for off in range(0, len(data), libc.SIGNALFD_SIGINFO_SIZE):
                        self._on_signal(libc.read_siginfo(data[off:])[0])
                elif not streams[fd].feed():
                    poller.unregister(fd)
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self._kill_rest(_signal.SIGKILL)
                self.kill_at = None
            if self.exit_code is not None and not self._reap():
                self._exit()

    def _exit(self):
        if self.logs is not None:
            self.logs.close()
        os._exit(self.exit_code or 0)

    def _on_signal(self, signo: int) -> None:
        if signo == _signal.SIGCHLD:
            self._reap()
        elif signo in _IGNORED:
            pass
        elif self.exit_code is None:
            try:
                os.kill(-self.workload if self.group else self.workload, signo)
            except ProcessLookupError:
                if self.group:  # not yet its own session (it makes one first), or left it
                    self._signal_workload(signo)
            except PermissionError:
                pass

    def _signal_workload(self, signo: int) -> None:
        try:
            os.kill(self.workload, signo)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self) -> bool:
        """Reap every zombie; False once no child is left."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.workload and self.exit_code is None:
                self._workload_exited(wait_status)

    def _workload_exited(self, wait_status: int) -> None:
        if os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            self._record(128 + sig, sig)
        else:
            self._record(os.WEXITSTATUS(wait_status), None)
        self._kill_rest(_signal.SIGTERM)
        self.kill_at = time.monotonic() + self.grace

    def _record(self, exit_code: int, signal: int | None) -> None:
        self.exit_code = exit_code
        if self.exit_fd is not None:
            try:
                os.ftruncate(self.exit_fd, 0)
                os.pwrite(self.exit_fd, exit_record(exit_code, signal, time.time()), 0)
            except OSError:
                pass

    def _kill_rest(self, sig: int) -> None:
        # As pid 1 of its namespace, kill(-1) reaches every other process in it. Without a
        # PID namespace that would be the whole host: only the workload's group then.
        target = -1 if self.pid_namespace and os.getpid() == 1 else -self.workload
        try:
            os.kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass
