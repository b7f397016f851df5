"""The container's init, from its birth to its loop, and its workload's process.

The fork server clones the init with ``CLONE_PARENT`` and the namespace flags (runc's
``clone_parent``): it is born in its new namespaces, as pid 1 of its PID namespace, and
as a child of the runtime's caller - not of the fork server - so the caller reaps it and
learns its exact exit status. The init (pid 1) then:
  waits while the caller, outside, joins it to its cgroups, sets its rlimits and writes
  its id maps, until the caller sends the spec (``marshal``, the trusted direction);
  blocks signals into a signalfd; becomes root of its user namespace; unshares the cgroup
  namespace; cuts the capability bounding set; opens the log files; and forks the
  **workload's process** W, in the same namespaces.
W does the heavy part - builds the filesystem and pivots (``pivot_root`` moves the root
and cwd of every process of the mount namespace, pid 1 included), sets the hostname,
optionally waits for the caller's "go", takes the workload's identity, reports "exec"
(or the error) to the caller and execs the workload: its report socket closes on exec,
so the caller learns that the exec worked from the end of the stream. pid 1 keeps only
CAP_KILL and runs its signal/reap/log loop with W as the workload from the start. What
W touched is dropped by its exec: an idle init's memory stays shared with the fork
server.

Reports go over one SOCK_SEQPACKET socket, one JSON message per packet (written by
:mod:`.wire`). A failure is reported as ``{"error": "<step>: <reason>"}`` and the init
exits: its mounts and namespaces die with it, so nothing is left on the host.
"""

from __future__ import annotations

import _signal
import errno
import marshal
import os

from ..linux import caps, libc
from . import rootfs
from .become import DEFAULT_PATH, default_signals, execvpe, set_identity
from .consts import SPEC_MAX
from .errors import SetupError, step
from .init import Init, block_signals
from .logs import Logs
from .wire import encode

_CAP_KILL = 1 << caps.CAPABILITIES["KILL"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


class _Attrs:
    """A dict's items as attributes: the spec, on the container side."""

    def __init__(self, data: dict) -> None:
        self.__dict__.update(data)


def spec_from_wire(data: dict) -> _Attrs:
    spec = _Attrs(data)
    spec.mounts = tuple(_Attrs(m) for m in data["mounts"])
    for key in ("uid_map", "gid_map"):
        if data[key] is not None:
            setattr(spec, key, tuple(_Attrs(m) for m in data[key]))
    if data.get("log") is not None:
        spec.log = _Attrs(data["log"])
    return spec


def send(fd: int, **msg: object) -> None:
    try:
        os.write(fd, encode(**msg))
    except OSError:
        pass


def failure(error: BaseException) -> dict:
    """The report of a failed launch: ``error``, ``errno`` and the ``step`` if known."""
    if isinstance(error, SetupError):
        return {"error": str(error), "errno": error.errno, "step": error.step}
    if isinstance(error, OSError):
        return {"error": f"{error.strerror} ({error.filename or ''})", "errno": error.errno or 0}
    return {"error": f"internal error: {error!r}", "errno": 0}


def fail(fd: int, error: BaseException):
    """Report ``error`` to the caller and exit."""
    try:
        send(fd, **failure(error))
    finally:
        os._exit(1)


def run_init(fds: dict[str, int], last_cap: int):
    """The container's pid 1, from its birth in new namespaces to its signalfd loop."""
    report = fds["report"]
    try:
        libc.set_process_name("nsv-init")
        # Non-dumpable: processes in the container cannot ptrace us or open /proc/1/fd,
        # where the exit file's and the log directory's host fds live.
        libc.prctl(libc.PR_SET_DUMPABLE, 0)
        sfd = block_signals()
        os.chdir("/")  # so that the pivot moves our cwd off the host too
        data = os.read(report, SPEC_MAX)  # the spec: the caller's "go"
        if not data:
            os._exit(1)  # the caller gave up on us (and reported why)
        spec = spec_from_wire(marshal.loads(data))
        if "user" in spec.namespaces:
            with step("become root in the user namespace"):
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
                os.setgroups([])
        if "cgroup" in spec.namespaces:
            with step("unshare cgroup namespace"):
                libc.unshare(libc.CLONE_NEWCGROUP)
        if "pid" not in spec.namespaces:
            libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, not the host
        with step("limit capability bounding set"):
            caps.limit_bounding_set(caps.mask(spec.capabilities), last_cap)
        stdio = (fds["stdin"], fds.get("stdout", -1), fds.get("stderr", -1))
        logs = None
        if spec.log is not None:
            with step(f"open log files in {spec.log.dir}"):
                logs = Logs(fds["logdir"], spec.name, spec.log.max_bytes, spec.log.backups,
                            spec.log.merge)
            stdio = (fds["stdin"], *logs.stdio())
        workload = os.fork()
        if workload == 0:
            _workload_process(spec, fds, stdio)
        if logs is not None:
            logs.close_write_ends()
        for name, fd in fds.items():
            if name != "exit" and name != "logdir":
                os.close(fd)
        # pid 1 keeps what it needs to signal the container's processes, nothing more.
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        libc.capset(effective=_CAP_KILL, permitted=_CAP_KILL, inheritable=0)
    except BaseException as e:  # noqa: BLE001
        fail(report, e)
    Init(workload, sfd, fds.get("exit"), spec, logs).run()


def _workload_process(spec, fds: dict[str, int], stdio: tuple[int, int, int]):
    """The workload's process before its exec: the filesystem, the hostname, the exec."""
    report = fds["report"]
    try:
        libc.set_process_name("nsv-setup")
        os.setsid()  # first: the init may signal the workload's group from now on
        if "mount" in spec.namespaces:
            sources = rootfs.Sources({name[4:]: fd for name, fd in fds.items()
                                      if name.startswith("src:")})
            rootfs.build(spec, sources)
        if "uts" in spec.namespaces:
            with step("sethostname"):
                libc.sethostname(spec.effective_hostname)
                if spec.domainname:
                    libc.setdomainname(spec.domainname)
        if "net" in spec.namespaces:
            with step("set lo up"):
                libc.interface_up("lo")
        if spec.hold:
            send(report, created=True)
            if b'"go"' not in os.read(report, 65536):
                os._exit(1)  # the caller gave up on us
        try:
            _exec(spec, stdio, report)
        except OSError as e:  # the init records this process's exit as the workload's
            code = 127 if e.errno == errno.ENOENT else 126
            error = (f"exec {spec.command[0]}: {e.strerror} "
                     f"({errno.errorcode.get(e.errno or 0, '')})")
            _note_in_log(spec, stdio, error)
            send(report, error=error, errno=e.errno or 0, step="exec", exit_code=code)
            os._exit(code)
    except BaseException as e:  # noqa: BLE001
        _note_in_log(spec, stdio, failure(e)["error"])
        fail(report, e)


def _note_in_log(spec, stdio: tuple[int, int, int], error: str) -> None:
    """A start that failed in the workload's process says why in the container's stderr
    log too, where an operator reading the log of a container that will not start
    looks first."""
    if spec.log is not None:
        try:
            os.write(stdio[2], f"nsvisor: the workload did not start: {error}\n".encode())
        except OSError:
            pass


def _exec(spec, stdio: tuple[int, int, int], report: int) -> NoReturn:
    """Take the workload's identity, report "exec" and exec: the identity (uid, gid,
    groups, capabilities, no_new_privs, working directory), ``stdio`` on fds 0-2, and
    the signal dispositions and mask a program expects. Returns only by raising: OSError
    from the exec itself, SetupError naming any step before."""
    with step("take the workload's identity"):
        set_identity(spec.capabilities, spec.groups, spec.uid, spec.gid, spec.no_new_privs)
        libc.prctl(libc.PR_SET_DUMPABLE, 0)  # a uid change resets it
    env = _environment(spec)
    with step(f"chdir {spec.workdir}"):  # as the workload's user, so after the identity
        os.chdir(spec.workdir)
    for i, fd in enumerate(stdio):
        if fd == i:
            os.set_inheritable(i, True)
        else:
            os.dup2(fd, i)
    # Every fd >= 3 is close-on-exec: only stdio reaches the workload (CVE-2024-21626).
    libc.close_range_cloexec(3)
    default_signals()
    send(report, exec=os.getpid())
    # Unblocked last: a signal the init forwarded during the setup is pending, and now
    # ends this process (default dispositions) or reaches the workload.
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
    execvpe(spec.command, env)


def _environment(spec) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": spec.effective_hostname,
           "HOME": "/root" if spec.uid == 0 else "/"}
    env.update(spec.env)
    return env
