"""The container's pid-1 init (the catatonit pattern) and the spawn of its workload.

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

from ..linux import caps, libc

# Synchronous faults stay unblocked: blocking them would hang the process (tini, catatonit).
_FAULTS = {_signal.SIGFPE, _signal.SIGILL, _signal.SIGSEGV, _signal.SIGBUS, _signal.SIGABRT,
           _signal.SIGTRAP, _signal.SIGSYS}
_IGNORED = {_signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU}
_UNCATCHABLE = {_signal.SIGKILL, _signal.SIGSTOP}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def block_signals() -> int:
    """Block every signal but the faults and return a signalfd that reads them."""
    blocked = libc.all_signals() - _FAULTS - _UNCATCHABLE
    _signal.pthread_sigmask(_signal.SIG_BLOCK, blocked)
    # An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap and blind us.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    return libc.signalfd(blocked, libc.SFD_CLOEXEC)


def spawn_workload(spec, stdio: tuple[int, int, int]) -> int:
    """Take the workload's identity and spawn it; return its pid (raises OSError).

    Runs in the short-lived setup process, which takes the identity (uid, gid, groups,
    capabilities, no_new_privs, working directory) and then ``posix_spawn``s the
    workload: a vfork, not a copy-on-write fork of this Python process.
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
        setsigmask=(), setsigdef=_signal.valid_signals() - _UNCATCHABLE)


def _set_identity(spec) -> None:
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


def _environment(spec) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.effective_hostname,
           "HOME": "/root" if spec.uid == 0 else "/"}
    env.update(spec.env)
    return env


def exit_record(exit_code: int, signal: int | None, finished_at: float) -> bytes:
    """The exit file's content: one JSON line, read back by ``status.parse_exit_record``."""
    sig = "null" if signal is None else str(signal)
    return (f'{{"exit_code": {exit_code}, "signal": {sig}, '
            f'"finished_at": {finished_at!r}}}\n').encode()


class Init:
    """The init's loop, once the setup process has spawned the workload."""

    def __init__(self, workload: int | None, sfd: int, exit_fd: int | None, spec,
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
        if self.workload is None:  # no workload: wait for the exiting setup process
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    self._exit()
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

    def spawn_failed(self, exit_code: int) -> None:
        self._record(exit_code, None)

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
