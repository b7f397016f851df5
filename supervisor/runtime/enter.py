"""Run a command inside a running container (``nsvisorctl exec``), the way nsenter does it.

The daemon is multi-threaded, so it never forks itself for this: it starts this module
as a small process (``python -I -S``, see :func:`enter_argv` and :func:`spawn_enter`)
and waits for it through its pidfd and reaper. That process's exit status *is* the
command's: its exit code, 128+N when killed by signal N, 127/126 when the command is
missing/not executable, and 125 (with one line ``nsvisor exec: <step>: <reason>`` on
stderr) when entering the container failed (container gone, setns refused...).

What the process does, in order:

1. ``pidfd_open`` the container's init (or use the pidfd the daemon passed along) and
   check it is alive. Every later read of ``/proc/<pid>`` is followed by another look at
   the pidfd: if the init is still alive then, the pid was not reused meanwhile.
2. Copy the init's rlimits, umask and oom_score_adj (raising a hard limit needs host
   privilege, so before any setns), then join the init's cgroups by writing our pid to
   the same ``cgroup.procs`` files (v1 hierarchies and v2, mapped through our
   mountinfo), before the cgroup namespace is entered: the exec is accounted and limited
   with the container and dies with its cgroup.
3. Open ``/proc/<pid>/root`` as a directory fd and check which namespaces the init
   really has (those whose inode differs from ours): one the request does not list is
   refused, so a stale request cannot run a command half confined.
4. ``setns(pidfd, flags)`` with every namespace flag in one call (Linux >= 5.8: the user
   namespace is entered first and the rest is checked against it, atomically). Older
   kernels (EINVAL) fall back to ``/proc/<pid>/ns/*`` fds opened up front, joined one by
   one in nsenter's order (user first, mnt last). The request key ``"setns": "files"``
   forces the fallback (tests, diagnostics).
5. ``fchdir(rootfd); chroot(".")``: the init's pivoted root (nsenter -r). A setns into a
   mount namespace leaves us at that namespace's root, not necessarily the container's.
6. Fork: a PID namespace applies to children only. The child takes the controlling
   terminal (tty mode), the workload's identity (bounding set, groups, gid, uid,
   capabilities with an empty inheritable set and no ambient ones, no_new_privs), the
   working directory, default signal dispositions and an empty mask, marks every fd >= 3
   close-on-exec and ``execvpe``s the command. The parent keeps only CAP_KILL and
   forwards HUP/INT/QUIT/TERM/USR1/USR2/WINCH to it until it exits. The command has
   PDEATHSIG=SIGKILL: it does not outlive the enter process the daemon tracks. (Killed
   that way, it is reparented to the daemon, the subreaper, which must reap it: a zombie
   of a PID namespace keeps the namespace's init from finishing its exit.)

Import set: this runs under ``python -S`` for every exec, so it imports only ``os``,
``json``, C modules and the container-side ``libc``/``caps``/``consts``/``become`` - all
at the top: after the chroot the host's standard library is out of reach, so nothing may
be imported lazily past that point (``os.execvpe`` would: hence :func:`.become.execvpe`,
shared with the workload's own process, as is the identity it takes).

The request (JSON)::

    {"pid": 1234, "namespaces": ["mount", "uts", ...], "command": ["sh"], "env": {...},
     "uid": 0, "gid": 0, "groups": [], "capabilities": ["CHOWN", ...],
     "no_new_privs": true, "workdir": "/", "tty": false}

:func:`exec_request` builds one from a container spec as the workload gets it (PATH,
HOSTNAME and HOME defaults as in :mod:`.init`, then the container's env, then the
exec's).
"""

from __future__ import annotations

import _signal
import errno
import fcntl
import json
import os
import resource
import sys

from ..linux import caps, libc, mountinfo
from ..linux.fdwait import readable
from .become import DEFAULT_PATH, default_signals, execvpe, set_identity
from .consts import NAMESPACES, NS_PROC_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

EXIT_SETUP = 125  # entering the container failed (as docker exec / runc)
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# -I: no PYTHON* variables, no user site, and no cwd on sys.path (a root process that
# enters containers must not import from wherever the daemon happens to stand).
_ENTER_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from supervisor.runtime.enter import main; main(sys.argv[2:])"
)

# nsenter's order for one-by-one setns: user first (it grants the rights for the rest),
# mnt last (it moves our root and cwd).
_SETNS_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "mount")
_FORWARDED = {_signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM,
              _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGWINCH}
_UNCATCHABLE = {_signal.SIGKILL, _signal.SIGSTOP}
_CAP_KILL = 1 << caps.CAPABILITIES["KILL"]
_TIOCSCTTY = 0x540E  # the same on x86_64 and aarch64 (asm-generic)
_REQUEST_FD = 3  # where spawn_enter puts the request (a memfd) ...
_PIDFD_FD = 4  # ... and the init's pidfd, when the caller has one


# --- the daemon's side ----------------------------------------------------------------

def exec_request(spec, pid: int, command: list[str], *, env: dict[str, str] | None = None,
                 tty: bool = False, **overrides: object) -> dict:
    """The request to run ``command`` in the container of ``spec`` whose init is ``pid``.

    ``spec`` is a :class:`~supervisor.runtime.spec.ContainerSpec` (or anything with its
    attributes); ``overrides`` replace uid, gid, groups, capabilities, no_new_privs,
    workdir. The environment is the workload's (PATH, HOSTNAME and HOME defaults, then
    the spec's env) updated with ``env``.
    """
    request = {
        "pid": pid, "namespaces": list(spec.namespaces), "command": list(command),
        "uid": spec.uid, "gid": spec.gid, "groups": list(spec.groups),
        "capabilities": list(spec.capabilities), "no_new_privs": spec.no_new_privs,
        "workdir": spec.workdir, "tty": tty,
    }
    unknown = set(overrides) - set(request) - {"setns"}
    if unknown:
        raise TypeError(f"exec_request: unknown fields {sorted(unknown)}")
    request.update(overrides)
    hostname = spec.hostname or spec.name
    request["env"] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname,
                      "HOME": "/root" if request["uid"] == 0 else "/",
                      **spec.env, **(env or {})}
    return request


def enter_argv(request: dict) -> list[str]:
    """The argv of an enter process for ``request`` (to ``posix_spawn`` with no env).

    The request travels in argv here, so it is readable in ``/proc/<pid>/cmdline`` by
    every host user, env included: :func:`spawn_enter` passes it in a memfd instead.
    """
    return [sys.executable, "-I", "-S", "-c", _ENTER_CODE, _PACKAGE_PARENT,
            json.dumps(request, separators=(",", ":"))]


def spawn_enter(request: dict, stdio: tuple[int, int, int], tty: bool, *,
                pidfd: int | None = None) -> int:
    """Start an enter process for ``request`` with ``stdio`` as its 0, 1, 2; its pid.

    ``tty``: ``stdio`` is a terminal's slave, which the command takes as its controlling
    terminal (the enter process always gets a session of its own). ``pidfd``: the caller's pidfd of
    the init, used instead of the pid (no pid-reuse race at all). The request goes
    through a memfd, not argv (env values are not for every host user to read).
    The caller reaps the process; its exit status is the command's.
    """
    request = dict(request, tty=bool(tty))
    data = json.dumps(request, separators=(",", ":")).encode()
    memfd = os.memfd_create("nsv-exec-request", os.MFD_CLOEXEC)
    extra = []
    try:
        os.write(memfd, data)
        os.lseek(memfd, 0, os.SEEK_SET)
        # Above 4 so that the stdio dup2s cannot clobber them (nor they the stdio).
        mine = _fcntl_dupfd(memfd)
        extra.append(mine)
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(stdio)]
        actions.append((os.POSIX_SPAWN_DUP2, mine, _REQUEST_FD))
        argv = enter_argv({})[:-1] + [f"fd:{_REQUEST_FD}"]
        if pidfd is not None:
            theirs = _fcntl_dupfd(pidfd)
            extra.append(theirs)
            actions.append((os.POSIX_SPAWN_DUP2, theirs, _PIDFD_FD))
            argv.append(f"pidfd:{_PIDFD_FD}")
        # Its own session even without a tty: what reaches the daemon's process group (a
        # terminal's ^C, a shell's job control) must not reach the command. A clean mask
        # and default dispositions: the daemon blocks what its signalfd reads.
        return os.posix_spawn(
            sys.executable, argv, {}, file_actions=actions, setsid=True,
            setsigmask=(), setsigdef=_signal.valid_signals() - _UNCATCHABLE)
    finally:
        os.close(memfd)
        for fd in extra:
            os.close(fd)


def _fcntl_dupfd(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


# --- the enter process ----------------------------------------------------------------

class _Fail(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")


def _reason(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0)
    return f"{e.strerror} ({name})" if name else str(e)


class _Step:
    """Turn an OSError inside the block into a _Fail naming the step."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> None:
        if isinstance(error, OSError):
            raise _Fail(self.name, _reason(error)) from None


def _say(line: str) -> None:
    try:
        os.write(2, f"nsvisor exec: {line}\n".encode(errors="replace"))
    except OSError:
        pass


def main(argv: list[str]) -> NoReturn:
    """Entry point of the enter process: ``argv`` is ``[<request JSON> | fd:N, [pidfd:M]]``."""
    try:
        request, pidfd = _read_args(argv)
        libc.set_process_name("nsv-exec")
        # Nothing in the container may ptrace us or open our /proc files before the exec
        # (the child's pre-exec image is host Python holding host fds: CVE-2019-5736).
        libc.prctl(libc.PR_SET_DUMPABLE, 0)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        # Blocked from now on: the parent reads them with sigwaitinfo, the child unblocks
        # them right before exec, so nothing is lost or acted on too early.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, _FORWARDED | {_signal.SIGCHLD})
        child = _enter(request, pidfd)
    except _Fail as e:
        _say(str(e))
        os._exit(EXIT_SETUP)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        _say(f"internal error: {e!r}")
        os._exit(EXIT_SETUP)
    os._exit(_supervise(child))


def _read_args(argv: list[str]) -> tuple[dict, int | None]:
    if not argv:
        raise _Fail("request", "missing (argv: <json> | fd:N [pidfd:M])")
    pidfd = None
    try:
        if argv[0].startswith("fd:"):
            fd = int(argv[0][3:])
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            os.close(fd)
            text = b"".join(chunks).decode()
        else:
            text = argv[0]
        request = json.loads(text)
        for arg in argv[1:]:
            if arg.startswith("pidfd:"):
                pidfd = int(arg[6:])
    except (ValueError, OSError) as e:
        raise _Fail("request", f"unreadable: {e}") from None
    # Whatever else the daemon left open (an inheritable fd) is not ours to carry along.
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) > 2 and int(fd) != pidfd:
            try:
                os.close(int(fd))
            except OSError:
                pass
    _check_request(request)
    return request, pidfd


def _check_request(r: object) -> None:
    def bad(field: str, what: str) -> _Fail:
        return _Fail("request", f"{field}: {what}")

    if not isinstance(r, dict):
        raise bad("request", "must be an object")
    if not isinstance(r.get("pid"), int) or r["pid"] <= 0:
        raise bad("pid", "must be a positive integer")
    command = r.get("command")
    if not isinstance(command, list) or not command or not all(
            isinstance(a, str) and a for a in command):
        raise bad("command", "must be a non-empty list of non-empty strings")
    namespaces = r.setdefault("namespaces", list(NAMESPACES))
    if not isinstance(namespaces, list) or set(namespaces) - set(NAMESPACES):
        raise bad("namespaces", f"must be a list of {list(NAMESPACES)}")
    env = r.setdefault("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k
            for k, v in env.items()):
        raise bad("env", "must map names to strings")
    for key in ("uid", "gid"):
        if not isinstance(r.setdefault(key, 0), int) or not 0 <= r[key] < 2**32 - 1:
            raise bad(key, "must be an id")
    groups = r.setdefault("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, int) and g >= 0 for g in groups):
        raise bad("groups", "must be a list of ids")
    capabilities = r.setdefault("capabilities", list(caps.DEFAULT_CAPABILITIES))
    if not isinstance(capabilities, list) or set(capabilities) - set(caps.CAPABILITIES):
        raise bad("capabilities", "unknown capability names")
    r.setdefault("no_new_privs", True)
    workdir = r.setdefault("workdir", "/")
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        raise bad("workdir", "must be an absolute path")
    r.setdefault("tty", False)
    if r.setdefault("setns", "auto") not in ("auto", "pidfd", "files"):
        raise bad("setns", 'must be "auto", "pidfd" or "files"')


def _enter(request: dict, pidfd: int | None) -> int:
    """Steps 1 to 6 of the module docstring; returns the child's pid (in the parent)."""
    pid = request["pid"]
    where = f"container init {pid}"
    if pidfd is None:
        with _Step(where):
            pidfd = os.pidfd_open(pid)
    else:
        with _Step(f"read the pidfd of {where}"):
            owner = _pidfd_pid(pidfd)
        if owner == -1:
            raise _Fail(where, "has exited")
        if owner != pid:
            raise _Fail(where, f"the pidfd passed along is process {owner}'s")

    def check_alive() -> None:
        if readable(pidfd):
            raise _Fail(where, "has exited")

    check_alive()
    last_cap = caps.last_cap()
    with _Step(f"copy rlimits, umask and oom_score_adj of {where}"):
        _copy_limits(pid)
    _join_cgroups(pid)
    with _Step(f"open /proc/{pid}/root"):
        rootfd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    own = _own_namespaces(pid, request["namespaces"])
    ns_fds = {}
    if request["setns"] == "files":
        ns_fds = _open_ns_files(pid, own)
    check_alive()  # so far every /proc/<pid> we opened was the init's

    flags = 0
    for name in own:
        flags |= libc.NAMESPACE_FLAGS[name]
    if flags and not ns_fds:
        try:
            libc.setns(pidfd, flags)
        except OSError as e:
            if e.errno != 22 or request["setns"] == "pidfd":  # EINVAL: before Linux 5.8
                raise _Fail(f"setns {_names(own)} through the init's pidfd",
                            _reason(e)) from None
            ns_fds = _open_ns_files(pid, own)
            check_alive()
    for name in _SETNS_ORDER:
        if name in ns_fds:
            with _Step(f"setns {NS_PROC_NAME[name]} (/proc/{pid}/ns/{NS_PROC_NAME[name]})"):
                libc.setns(ns_fds[name], libc.NAMESPACE_FLAGS[name])
            os.close(ns_fds[name])
    with _Step("chroot to the container's root"):
        os.fchdir(rootfd)
        os.chroot(".")
    os.close(rootfd)

    parent_fd = os.pidfd_open(os.getpid())  # the child watches it (PDEATHSIG race)
    try:
        child = os.fork()
    except OSError as e:
        check_alive()
        raise _Fail("fork into the container", _reason(e)) from None
    if child == 0:
        _child(request, last_cap, parent_fd)
    os.close(parent_fd)
    os.close(pidfd)
    # The parent only waits and forwards signals: it keeps just the right to signal.
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    libc.capset(effective=_CAP_KILL, permitted=_CAP_KILL, inheritable=0)
    return child


def _names(namespaces) -> str:
    return ",".join(NS_PROC_NAME[n] for n in namespaces)


def _pidfd_pid(pidfd: int) -> int | None:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return None


def _copy_limits(pid: int) -> None:
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            which = getattr(resource, name)
            resource.setrlimit(which, resource.prlimit(pid, which))
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                os.umask(int(line.split()[1], 8))
                break
    with open(f"/proc/{pid}/oom_score_adj") as f:
        adj = f.read()
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(adj)


def _join_cgroups(pid: int) -> None:
    """Write our pid to the cgroup.procs of every hierarchy the init is in.

    ``/proc/<pid>/cgroup`` names each hierarchy (v2: ``0::/path``; v1: its controllers
    or ``name=``) and the cgroup's path relative to our cgroup namespace's root; our
    mountinfo says where each hierarchy is mounted and which of its subtrees. A
    hierarchy mounted nowhere cannot be joined and is skipped; any other failure is
    fatal: an exec outside the container's cgroups would escape its limits.
    """
    with _Step(f"read /proc/{pid}/cgroup"), open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    mounts = mountinfo.read()
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        found = mountinfo.cgroup_dir(controllers, path, mounts)
        if found is not None:
            with _Step(f"join cgroup {found}"), open(f"{found}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))


def _own_namespaces(pid: int, requested: list[str]) -> list[str]:
    """The namespaces the init does not share with us; all must be in the request."""
    own = []
    for name in NAMESPACES:
        proc = NS_PROC_NAME[name]
        with _Step(f"stat /proc/{pid}/ns/{proc}"):
            theirs = os.stat(f"/proc/{pid}/ns/{proc}")
            ours = os.stat(f"/proc/self/ns/{proc}")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            own.append(name)
    missing = [n for n in own if n not in requested]
    if missing:
        raise _Fail("namespaces", f"the container has its own {_names(missing)} namespace "
                    f"but the request does not enter it (it lists {_names(requested)})")
    return own


def _open_ns_files(pid: int, names: list[str]) -> dict[str, int]:
    fds = {}
    for name in names:
        path = f"/proc/{pid}/ns/{NS_PROC_NAME[name]}"
        with _Step(f"open {path}"):
            fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return fds


def _child(request: dict, last_cap: int, parent_fd: int) -> NoReturn:
    """In the container's PID namespace: become the workload's like and exec."""
    command = request["command"]
    try:
        if request["tty"]:
            with _Step("take the terminal"):
                os.setsid()
                fcntl.ioctl(0, _TIOCSCTTY, 0)
        with _Step("take the workload's identity"):
            caps.limit_bounding_set(caps.mask(request["capabilities"]), last_cap)
            set_identity(request["capabilities"], request["groups"], request["uid"],
                         request["gid"], request["no_new_privs"])
        with _Step(f"chdir {request['workdir']}"):
            os.chdir(request["workdir"])
        # Our life is the enter process's: the daemon tracks it, not us. (After the
        # identity: a uid change clears the death signal.) Then: was it already gone?
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
        if readable(parent_fd):
            os._exit(EXIT_SETUP)
        libc.close_range_cloexec(3)  # only stdio reaches the command (CVE-2024-21626)
        env = dict(request["env"])
        env.setdefault("PATH", DEFAULT_PATH)
        default_signals()
    except _Fail as e:
        _say(str(e))
        os._exit(EXIT_SETUP)
    except BaseException as e:  # noqa: BLE001
        _say(f"internal error: {e!r}")
        os._exit(EXIT_SETUP)
    # Signals the parent forwarded meanwhile are delivered here, with default actions.
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
    try:
        execvpe(command, env)
    except OSError as e:
        _say(f"{command[0]}: {e.strerror}")
        os._exit(EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE)
    except BaseException as e:  # noqa: BLE001
        _say(f"{command[0]}: {e!r}")
        os._exit(EXIT_NOT_EXECUTABLE)


def _supervise(child: int) -> int:
    """Forward signals to the child until it exits; its status as an exit code."""
    waited = _FORWARDED | {_signal.SIGCHLD}
    while True:
        signo = _signal.sigwaitinfo(waited).si_signo
        if signo == _signal.SIGCHLD:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code
        else:
            try:
                os.kill(child, signo)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
