"""The runtime's public API: start containers from specs and hold handles on them.

>>> rt = Runtime()
>>> c = rt.start(ContainerSpec(name="hello", command=["/bin/echo", "hi"]))
>>> c.wait(timeout=5).exit_code
0
>>> rt.close()

Creating a Runtime makes the calling process a child subreaper: container inits become
its children once their launcher exits, so their exact exit status comes back here.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import replace
from typing import Any, TypeVar

from ..linux import libc, threadcg
from ..linux.fdwait import readable
from ..model.idranges import IdRanges
from .consts import SPEC_MAX
from .errors import LaunchError, SetupError
from .reaper import DEFAULT_REAPER, Reaper
from .rootfs import Sources
from .spec import ID_RANGE_SIZE, RLIMITS, ContainerSpec, IdMapping, validate
from .status import ExitStatus, parse_exit_record, read_exit_file

T = TypeVar("T")
Steps = Generator[socket.socket, None, T]
"""A launch step by step: yields the socket to wait for, returns the result."""
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ZYGOTE_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from supervisor.runtime.zygote import main; main(int(sys.argv[2]), int(sys.argv[3]))"
)


class Container:
    """A handle on a started container: its init's host pid and a pidfd to it."""

    def __init__(self, spec: ContainerSpec, pid: int, *, exit_file: str | None = None,
                 reaper: Reaper = DEFAULT_REAPER, exit_fd: int | None = None):
        self.spec = spec
        self.name = spec.name
        self.pid = pid
        self.exit_file = exit_file
        self.started_at = time.time()
        self.workload_pid: int | None = None  # as the init sees it (host pid without pidns)
        self._reaper = reaper
        self._report: socket.socket | None = None  # open while held before exec (hold)
        self._exit_fd = exit_fd  # where the init records the workload's status
        self._status: ExitStatus | None = None
        self.pidfd: int | None = os.pidfd_open(pid)

    def __repr__(self) -> str:
        return f"<Container {self.name} pid={self.pid}>"

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the container's init, which forwards it to the workload."""
        if self.pidfd is None or self._status is not None:
            raise ProcessLookupError(f"container {self.name} has exited")
        signal.pidfd_send_signal(self.pidfd, sig)

    def kill(self) -> None:
        """SIGKILL the init: the kernel then kills everything in its PID namespace.

        Without a PID namespace nothing does that: the workload's session is SIGKILLed
        instead, and the init (a subreaper then) reaps it and exits. What left the
        session survives: only a cgroup catches that.
        """
        if "pid" not in self.spec.namespaces and self.workload_pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.workload_pid, signal.SIGKILL)
                return
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGKILL)

    def go(self, timeout: float = 10.0) -> None:
        """Release a container created with ``hold=True``: exec its workload."""
        drive(self.go_steps(), timeout, self.name)

    def go_steps(self) -> Steps[None]:
        """:meth:`go` as steps (see :meth:`Runtime.launch`)."""
        if self._report is None:
            raise RuntimeError(f"container {self.name} is not held")
        report, self._report = self._report, None
        try:
            report.send(json.dumps({"go": True}).encode())
            self.workload_pid = yield from _exec_of(report, self.spec)
        except BaseException as error:
            self._settle(error)
            raise
        finally:
            report.close()

    def poll(self) -> ExitStatus | None:
        """The exit status once the container has exited, else None. Never blocks."""
        if self._status is not None:
            return self._status
        try:
            raw = self._reaper.collect(self.pid)
        except ChildProcessError:
            # Not our child (adopted after a restart): the pidfd says when it is gone
            # and the init's exit file says how.
            if self.pidfd is not None and readable(self.pidfd):
                self._status = self._recorded() or ExitStatus(255)
            return self._status
        if raw is None:
            return None
        status = ExitStatus.from_wait_status(raw, time.time())
        recorded = self._recorded()
        if recorded is not None and status.signal is None:
            # The init exits with 128+N for a workload killed by signal N; the record
            # tells that apart from a plain exit with that code.
            status = recorded
        self._status = status
        return status

    def _recorded(self) -> ExitStatus | None:
        if self._exit_fd is not None:
            return parse_exit_record(os.pread(self._exit_fd, 4096, 0))
        return read_exit_file(self.exit_file) if self.exit_file else None

    def wait(self, timeout: float | None = None) -> ExitStatus:
        """Block until the container exits; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status is not None:
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"container {self.name} still running after {timeout}s")
            assert self.pidfd is not None
            readable(self.pidfd, left)

    def close(self) -> None:
        if self._report is not None:
            self._report.close()
            self._report = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None

    def _settle(self, error: BaseException, timeout: float = 2.0) -> None:
        """After a failed start: make sure the init is gone and reaped. An init that
        reported its error exits by itself (with a status worth keeping); one given up
        on (a timeout, the caller's own error) is killed at once.

        Each wait is bounded by ``timeout`` (a daemon's event loop runs this): an init
        the kernel still holds after SIGKILL (D state) is left to the process's reaper,
        and ``error``, not a TimeoutError, is what the caller sees."""
        reported = isinstance(error, LaunchError) and error.step != "timeout"
        if reported and self.poll() is None:
            with contextlib.suppress(TimeoutError):
                self.wait(timeout)
        if self.poll() is None:
            self.kill()
            with contextlib.suppress(TimeoutError):
                self.wait(timeout)
        self.close()


class Runtime:
    """Starts containers through a fork server it owns. One per process is enough.

    Containers get the open-file limit (RLIMIT_NOFILE) the caller had when it made the
    runtime, unless their spec sets one: the caller may raise its own afterwards, as
    nsvisord does, without its containers inheriting that.
    """

    def __init__(self, *, reaper: Reaper = DEFAULT_REAPER, ids: IdRanges | None = None):
        self.reaper = reaper
        self.ids = ids or IdRanges(size=ID_RANGE_SIZE)
        self._nofile = resource.getrlimit(resource.RLIMIT_NOFILE)  # for the containers
        self._lock = threading.Lock()
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        self._control: socket.socket | None = None
        self._spawn_fork_server()

    def _spawn_fork_server(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        self._zygote_pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-S", "-c", _ZYGOTE_CODE, _PACKAGE_PARENT, str(theirs.fileno()),
             str(os.getpid())],
            # LD_BIND_NOW: the dynamic linker resolves every symbol now, once, instead of
            # in each container's init and workload process, where the first call of a
            # libc function writes the GOT page and copies it (50 of ~1,100 page faults
            # per container).
            os.environ | {"PYTHONDONTWRITEBYTECODE": "1", "LD_BIND_NOW": "1"},
            # Its own session: signals to the caller's process group (a terminal's ^C,
            # `timeout`, a shell's job control) must not reach the containers. A clean
            # signal mask: the daemon blocks the signals it reads from its signalfd.
            setsid=True, setsigmask=(),
        )
        theirs.close()
        self._control = ours
        self._zygote_pidfd = os.pidfd_open(self._zygote_pid)  # signalled safely later
        if resource.getrlimit(resource.RLIMIT_NOFILE) != self._nofile:
            # Before any request: it clones nothing until it has one.
            resource.prlimit(self._zygote_pid, resource.RLIMIT_NOFILE, self._nofile)

    def _retire_fork_server(self, grace: float = 0.0) -> None:
        """Make sure the fork server is gone (SIGKILL after ``grace`` seconds), and reaped
        unless a daemon's SIGCHLD handler got there first."""
        pidfd, self._zygote_pidfd = self._zygote_pidfd, -1
        if pidfd < 0:
            return  # retired already
        if not readable(pidfd, grace):  # still running
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            readable(pidfd, 5.0)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            self.reaper.collect(self._zygote_pid)

    def _send_request(self, request: bytes, fds: list[int]) -> None:
        """To the fork server; one that died (killed by hand, say) is replaced once."""
        with self._lock:
            if self._control is None:
                raise RuntimeError("runtime is closed")
            if self._control.fileno() >= 0:  # closed: an earlier replacement failed
                try:
                    socket.send_fds(self._control, [request], fds)
                    return
                except (BrokenPipeError, ConnectionResetError):
                    self._control.close()
            self._retire_fork_server()
            self._spawn_fork_server()
            socket.send_fds(self._control, [request], fds)

    @property
    def fork_server_pid(self) -> int:
        """The pid of the fork server that clones this runtime's container inits."""
        return self._zygote_pid

    def prepare(self, spec: ContainerSpec) -> ContainerSpec:
        """The spec as it will run: validated, with id maps filled in for a user namespace."""
        if "user" in spec.namespaces and spec.uid_map is None:
            start = self.ids.allocate(spec.name)
            mapping = (IdMapping(0, start, ID_RANGE_SIZE),)
            spec = replace(spec, uid_map=mapping, gid_map=spec.gid_map or mapping)
        elif "user" in spec.namespaces and spec.gid_map is None:
            spec = replace(spec, gid_map=spec.uid_map)
        validate(spec)
        return spec

    def start(self, spec: ContainerSpec, *, stdin: int | None = None,
              stdout: int | None = None, stderr: int | None = None,
              exit_file: str | None = None, timeout: float = 10.0) -> Container:
        """Launch ``spec`` and return once its workload was exec'd (or, with
        ``spec.hold``, once it is ready to exec: call :meth:`Container.go`).

        The workload's stdio is ``stdin`` (default /dev/null), ``stdout`` and ``stderr``
        (default: ours) - except with ``spec.log``: ``stdout`` and ``stderr`` are then
        ignored, the workload writes into pipes its init reads and logs.

        Raises SpecError for a bad spec and LaunchError naming the failed step (or
        "timeout" after ``timeout`` seconds); either way nothing of the container is left
        behind.
        """
        return drive(self.launch(spec, stdin=stdin, stdout=stdout, stderr=stderr,
                                 exit_file=exit_file), timeout, spec.name)

    def launch(self, spec: ContainerSpec, *, stdin: int | None = None,
               stdout: int | None = None, stderr: int | None = None,
               exit_file: str | None = None) -> Steps[Container]:
        """:meth:`start` as steps, for a caller with its own event loop.

        A generator: each value it yields is the socket to wait for until it is readable,
        then resume it with ``send(None)``; it returns the Container (StopIteration).
        To give up, ``throw()`` an exception into it (or ``close()`` it): it cleans up as
        a failed :meth:`start` does and raises that exception. The steps in between are
        short non-blocking syscalls, so an event loop can run them on its own thread.
        """
        spec = self.prepare(spec)
        report, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        opened: list[int] = []
        join_outside: list[str] = []
        cgroup2_path: str | None = None  # the cgroup v2 cgroup.procs the init is cloned into
        sources: Sources | None = None
        log_fd = exit_fd = -1
        try:
            if stdin is None:
                stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                opened.append(stdin)
            fds = {"report": theirs.fileno(), "stdin": stdin}
            if spec.log is None:
                fds["stdout"] = 1 if stdout is None else stdout
                fds["stderr"] = 2 if stderr is None else stderr
            # The init records the workload's status here; the caller keeps its own fd.
            if exit_file is not None:
                exit_fd = os.open(exit_file, os.O_RDWR | os.O_CREAT | os.O_TRUNC
                                  | os.O_CLOEXEC, 0o600)
            else:
                exit_fd = os.memfd_create(f"nsv-exit-{spec.name}", os.MFD_CLOEXEC)
            fds["exit"] = exit_fd
            try:
                if spec.log is not None:
                    # A detached bind of the log directory: the init cannot walk out of
                    # it, and with a user namespace it is idmapped (see _prepare).
                    with _step(f"open log directory {spec.log.dir}"):
                        log_fd = libc.open_tree_clone(spec.log.dir, recursive=False)
                    fds["logdir"] = log_fd
                for path in spec.cgroup_procs:
                    # The init is born in its cgroups: v1 through the fork server's
                    # thread, v2 through clone3 (one directory: there is one hierarchy).
                    tasks = threadcg.tasks_file(path)
                    cgroup_dir = os.path.dirname(path)
                    if tasks is None and cgroup2_path is not None:
                        join_outside.append(path)
                        continue
                    with _step(f"join cgroup {cgroup_dir}"):
                        if tasks is not None:
                            opened.append(os.open(tasks, os.O_WRONLY | os.O_CLOEXEC))
                        else:
                            opened.append(os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY
                                                  | os.O_CLOEXEC))
                            cgroup2_path = path
                    fds[("cgroup:" + tasks) if tasks else ("cgroup2:" + path)] = opened[-1]
                if "mount" in spec.namespaces:
                    # Opened here, as host root, before the init exists (a user
                    # namespace's root could not traverse a 0700 host directory).
                    sources = Sources.open(spec)
                    for path, fd in sources.fds.items():
                        fds["src:" + path] = fd
            except SetupError as e:
                raise LaunchError(f"{spec.name}: {e}", errno=e.errno, step=e.step) from None
            self._send_request(marshal.dumps((clone_flags(spec), tuple(fds))),
                               list(fds.values()))
        except BaseException as e:
            report.close()
            for fd in (exit_fd, log_fd):
                if fd >= 0:
                    os.close(fd)
            if isinstance(e, BrokenPipeError | ConnectionResetError):
                raise LaunchError("fork server is gone and could not be replaced") from None
            raise
        finally:
            theirs.close()
            for fd in opened:
                os.close(fd)
            if sources is not None:
                sources.close()
        return (yield from self._finish_start(spec, report, exit_fd, exit_file, log_fd,
                                              join_outside, cgroup2_path))

    def _finish_start(self, spec: ContainerSpec, report: socket.socket, exit_fd: int,
                      exit_file: str | None, log_fd: int, join_outside: list[str],
                      cgroup2_path: str | None) -> Steps[Container]:
        container = None
        try:
            born = yield from _report_of(report, spec, want="pid", whole=True)
            pid = born["pid"]
            if cgroup2_path is not None and not born.get("cgroup2"):
                join_outside = [cgroup2_path, *join_outside]  # a kernel before 5.7
            container = Container(spec, pid, exit_file=exit_file, reaper=self.reaper,
                                  exit_fd=exit_fd)
            exit_fd = -1  # the container owns it now
            _prepare(pid, spec, log_fd, join_outside)
            # The spec is the init's "go": it is in its cgroups, with its limits and maps.
            _send_spec(report, spec)
            if spec.hold:
                yield from _report_of(report, spec, want="created")
            else:
                container.workload_pid = yield from _exec_of(report, spec)
        except BaseException as error:
            report.close()
            if exit_fd >= 0:
                os.close(exit_fd)
            if container is not None:
                container._settle(error)
                if isinstance(error, LaunchError) and error.exit_code is None:
                    error.exit_code = container.poll().exit_code  # type: ignore[union-attr]
            raise
        finally:
            if log_fd >= 0:
                os.close(log_fd)
        if spec.hold:
            container._report = report
        else:
            report.close()
        return container

    def close(self) -> None:
        """Stop the fork server. Running containers are not touched."""
        with self._lock:
            if self._control is None:
                return
            self._control.close()
            self._control = None
        self._retire_fork_server(grace=5.0)  # it exits when its socket closes

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _step:
    """Turn an OSError inside the block into a SetupError naming the step."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> None:
        if isinstance(error, OSError):
            raise SetupError(self.name, error.errno or 0) from None


def clone_flags(spec: ContainerSpec) -> int:
    """The namespaces the init is born in. The cgroup namespace comes later, once the
    init is in its cgroup, so that the namespace's root is the container's cgroup."""
    flags = libc.CLONE_PARENT
    for ns in spec.namespaces:
        flags |= libc.NAMESPACE_FLAGS[ns]
    return flags & ~libc.CLONE_NEWCGROUP


def _prepare(pid: int, spec: ContainerSpec, log_fd: int, procs_files: list[str]) -> None:
    """From outside, before the init may go on: cgroups (``procs_files``: those it was not
    born in), rlimits, id maps (runc's order), and the idmap of the log directory. Raises
    LaunchError naming the step."""
    try:
        for path in procs_files:
            with _step(f"join cgroup {os.path.dirname(path)}"), open(path, "w") as f:
                f.write(str(pid))
        for name, limits in spec.rlimits.items():
            with _step(f"setrlimit {name} {limits}"):
                resource.prlimit(pid, RLIMITS[name], limits)
        if "user" in spec.namespaces:
            # gid_map before uid_map, as crun does; setgroups stays "allow": we are root.
            for kind, mapping in (("gid_map", spec.gid_map), ("uid_map", spec.uid_map)):
                text = "".join(f"{m.inside} {m.outside} {m.count}\n" for m in mapping or ())
                with _step(f"{kind}: writing {text.strip()!r}"), \
                        open(f"/proc/{pid}/{kind}", "w") as f:
                    f.write(text)
            if log_fd >= 0:
                # Files owned by host root appear owned by the container's root through
                # it, and the files the init creates are host root's: the init stays
                # unprivileged on the host and still rotates its logs.
                with _step(f"idmap log directory {spec.log.dir}"):  # type: ignore[union-attr]
                    userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        libc.idmap_tree(log_fd, userns)
                    finally:
                        os.close(userns)
    except SetupError as e:
        raise LaunchError(f"{spec.name}: {e}", errno=e.errno, step=e.step) from None


def _send_spec(sock: socket.socket, spec: ContainerSpec) -> None:
    """Send the spec in one packet. A socket's send buffer (~208 KiB) caps a packet: a
    bigger spec (a large env) gets a buffer to fit, up to SPEC_MAX."""
    data = marshal.dumps(spec.to_wire())
    if len(data) > SPEC_MAX:
        raise LaunchError(f"{spec.name}: its spec is {len(data)} bytes, more than the "
                          f"{SPEC_MAX} a launch carries: shrink its env or command",
                          step="send the spec")
    if len(data) > 65536:
        # FORCE: past net.core.wmem_max, which we are root enough to ignore.
        sock.setsockopt(socket.SOL_SOCKET, libc.SO_SNDBUFFORCE, len(data) + 65536)
    sock.send(data)


def _report_of(sock: socket.socket, spec: ContainerSpec, want: str | None,
               whole: bool = False) -> Steps[Any]:
    """Read report messages until ``want`` arrives (its value, or with ``whole`` the whole
    message), or with ``want`` None until the stream ends; LaunchError on an error, or
    on an end before ``want``."""
    while True:
        try:  # the next message is often there already: no need to wait for the loop
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            yield sock
            continue
        if not data:
            if want is None:
                return None
            raise LaunchError(f"{spec.name}: the launcher exited without reporting",
                              step="unknown")
        msg = json.loads(data)
        if "error" in msg:
            raise LaunchError(f"{spec.name}: {msg['error']}", errno=msg.get("errno", 0),
                              step=msg.get("step", ""), exit_code=msg.get("exit_code"))
        if want is not None and want in msg:
            return msg if whole else msg[want]


def _exec_of(sock: socket.socket, spec: ContainerSpec) -> Steps[int]:
    """The workload's pid (as its init sees it) once it was exec'd: the workload's
    process reports "exec" and execs, which closes its end of ``sock`` (close-on-exec);
    a failed exec reports the error instead."""
    pid = yield from _report_of(sock, spec, want="exec")
    yield from _report_of(sock, spec, want=None)
    return pid


def drive(steps: Steps[T], timeout: float, name: str) -> T:
    """Run steps (:meth:`Runtime.launch`) to the end, blocking; LaunchError with step
    "timeout" when they take longer than ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    try:
        sock = next(steps)
        while True:
            left = deadline - time.monotonic()
            if left > 0 and readable(sock.fileno(), left):
                sock = steps.send(None)
            else:
                sock = steps.throw(LaunchError(
                    f"{name}: no answer from the launcher in {timeout}s", step="timeout"))
    except StopIteration as done:
        return done.value
