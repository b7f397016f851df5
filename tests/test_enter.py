"""``nsvisorctl exec``'s enter process against real containers: confinement, status, stdio."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from supervisor.runtime import Container
from supervisor.runtime.enter import (
    _ENTER_CODE,
    _PACKAGE_PARENT,
    enter_argv,
    exec_request,
    spawn_enter,
)
from supervisor.runtime.spec import NAMESPACES, NS_PROC_NAME

from .conftest import RUN_ID, Runner

pytestmark = pytest.mark.root

SLEEP = ["/bin/sleep", "30"]
TIMEOUT = 20.0


@dataclass
class Exec:
    code: int
    out: str
    err: str


class Enters:
    """Enter processes started by a test; any still running at its end is killed."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def spawn(self, request: dict, stdio: tuple[int, int, int], tty: bool = False,
              **kw: object) -> int:
        pid = spawn_enter(request, stdio, tty, **kw)
        self.pids.append(pid)
        return pid

    def wait(self, pid: int, timeout: float = TIMEOUT) -> int:
        """The exit code (negative for a signal) of one of ours; kills it after timeout."""
        fd = os.pidfd_open(pid)
        try:
            if not select.select([fd], [], [], timeout)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"enter process {pid} still running after {timeout}s")
        finally:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def cleanup(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)


@pytest.fixture
def enters() -> Iterator[Enters]:
    e = Enters()
    try:
        yield e
    finally:
        e.cleanup()


def read_both(out_fd: int, err_fd: int, timeout: float = TIMEOUT) -> tuple[bytes, bytes]:
    """Read two pipes to EOF together (no deadlock on a full one); bounded."""
    data: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    open_fds = {out_fd, err_fd}
    deadline = time.monotonic() + timeout
    while open_fds:
        left = deadline - time.monotonic()
        ready = select.select(list(open_fds), [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            raise TimeoutError("output did not end in time")
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                data[fd].append(chunk)
            else:
                open_fds.discard(fd)
    return b"".join(data[out_fd]), b"".join(data[err_fd])


def run_exec(enters: Enters, c: Container, command: list[str], **kw: object) -> Exec:
    """Run ``command`` in ``c`` through an enter process, with pipes as its stdio."""
    pidfd = kw.pop("pidfd", None)
    request = kw.pop("request", None) or exec_request(c.spec, c.pid, command, **kw)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = enters.spawn(request, (stdin, out_w, err_w), pidfd=pidfd)
    finally:
        for fd in (stdin, out_w, err_w):
            os.close(fd)
    try:
        out, err = read_both(out_r, err_r)
    finally:
        os.close(out_r)
        os.close(err_r)
    return Exec(enters.wait(pid), out.decode(), err.decode())


def start_sleeping(runner: Runner, **kw: object) -> Container:
    return runner.start(runner.spec(SLEEP, **kw))


def wait_for_line(fd: int, want: bytes, timeout: float = TIMEOUT) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while want not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no {want!r} in {seen!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError(f"no {want!r} in {seen!r}")
        seen += chunk
    return seen


def status_fields(text: str) -> dict[str, str]:
    keep = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
            "NoNewPrivs", "Seccomp")
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in keep:
            fields[key] = " ".join(value.split())
    return fields


def kill_enter(enters: Enters, pid: int, command: int) -> None:
    """SIGKILL an enter process; its command dies with it and, reparented to us (the
    subreaper), must be reaped: a zombie of the container's PID namespace would keep
    its init from finishing its exit."""
    fd = os.pidfd_open(command)
    try:
        os.kill(pid, signal.SIGKILL)
        assert enters.wait(pid) == -signal.SIGKILL
        assert select.select([fd], [], [], TIMEOUT)[0], "the command outlived its enter"
    finally:
        os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(command, 0)


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


# --- status and stdio -----------------------------------------------------------------

def test_output_and_exit_status(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    ran = run_exec(enters, c, ["sh", "-c", "echo hi; echo oops >&2; exit 3"])
    assert (ran.code, ran.out, ran.err) == (3, "hi\n", "oops\n")
    assert run_exec(enters, c, ["/bin/true"]).code == 0


def test_enter_argv_carries_the_request_inline(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    argv = enter_argv(exec_request(c.spec, c.pid, ["/bin/echo", "inline"]))
    assert argv[:5] == [sys.executable, "-I", "-S", "-c", _ENTER_CODE]
    r, w = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, {}, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)],
                             setsid=True)
        enters.pids.append(pid)
    finally:
        os.close(w)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        out, _ = read_both(r, null)
    finally:
        os.close(r)
        os.close(null)
    assert (enters.wait(pid), out) == (0, b"inline\n")


def test_enter_process_imports_little() -> None:
    code = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
            "import supervisor.runtime.enter; print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True, timeout=TIMEOUT).stdout.split()
    for heavy in ("threading", "socket", "subprocess", "dataclasses", "signal",
                  "supervisor.runtime.client", "supervisor.runtime.spec",
                  "supervisor.runtime.init", "supervisor.runtime.launcher"):
        assert heavy not in out


def test_fds_beyond_stdio_are_closed(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    r, w = os.pipe()
    os.set_inheritable(w, True)  # a careless caller's inheritable fd must not get in
    try:
        ran = run_exec(enters, c, ["/bin/ls", "/proc/self/fd"])
    finally:
        os.close(r)
        os.close(w)
    assert set(ran.out.split()) <= {"0", "1", "2", "3"}  # 3: ls's own directory fd


# --- confinement ----------------------------------------------------------------------

READ_NS = ["sh", "-c", "for n in " + " ".join(NS_PROC_NAME[n] for n in NAMESPACES)
           + "; do readlink /proc/self/ns/$n; done"]


@pytest.mark.parametrize("namespaces,via", [
    (NAMESPACES, "pidfd"),  # this kernel takes every flag in one setns on a pidfd
    (NAMESPACES, "files"),
    (("uts", "ipc", "net"), "auto"),
    (("mount", "pid"), "auto"),
    (("user", "uts"), "auto"),
    (("cgroup", "net"), "files"),
])
def test_namespaces_are_the_inits(runner: Runner, enters: Enters,
                                  namespaces: tuple[str, ...], via: str) -> None:
    c = start_sleeping(runner, namespaces=namespaces)
    ran = run_exec(enters, c, READ_NS, setns=via)
    assert ran.code == 0, ran.err
    expected = [os.readlink(f"/proc/{c.pid}/ns/{NS_PROC_NAME[n]}") for n in NAMESPACES]
    assert ran.out.split() == expected


def test_hostname_is_the_containers(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner, hostname="exec-host")
    assert run_exec(enters, c, ["hostname"]).out == "exec-host\n"


def test_files_are_the_containers(runner: Runner, enters: Enters) -> None:
    r, w = os.pipe()
    c = runner.start(runner.spec(["sh", "-c", "echo from-workload > /wl; echo ready; "
                                  "exec sleep 30"]), stdout=w)
    os.close(w)
    try:
        wait_for_line(r, b"ready")
    finally:
        os.close(r)
    assert run_exec(enters, c, ["cat", "/wl"]).out == "from-workload\n"
    probe = f"/exec-probe-{RUN_ID}"
    assert run_exec(enters, c, ["sh", "-c", f"echo from-exec > {probe}"]).code == 0
    assert run_exec(enters, c, ["cat", probe]).out == "from-exec\n"
    with open(f"/proc/{c.pid}/root{probe}") as f:  # the workload's root holds it ...
        assert f.read() == "from-exec\n"
    assert not os.path.exists(probe)  # ... the host's does not


def test_sees_only_container_processes(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    ran = run_exec(enters, c, ["sh", "-c", "cat /proc/1/comm; "
                               "for p in /proc/[0-9]*; do echo ${p#/proc/}; done"])
    lines = ran.out.split()
    assert lines[0] == "nsv-init"
    pids = {int(p) for p in lines[1:]}
    assert 1 in pids and max(pids) < 20, f"host processes visible: {sorted(pids)}"
    me = os.getpid()  # far above any of the container's pids (checked above)
    ran = run_exec(enters, c, ["sh", "-c", f"kill -0 {me} 2>/dev/null && echo seen; "
                               f"test -e /proc/{me} && echo seen; true"])
    assert me >= 20 and ran.out == ""


@pytest.mark.parametrize("identity", [{}, {"uid": 1000, "gid": 1000, "groups": (1000, 44)}])
def test_identity_is_the_workloads(runner: Runner, enters: Enters, identity: dict) -> None:
    c = start_sleeping(runner, **identity)
    ran = run_exec(enters, c, ["sh", "-c", "cat /proc/self/status; echo ===; "
                               f"cat /proc/{c.workload_pid}/status"])
    assert ran.code == 0, ran.err
    mine, workload = (status_fields(part) for part in ran.out.split("==="))
    assert mine == workload
    assert mine["CapInh"] == mine["CapAmb"] == "0000000000000000"
    assert mine["NoNewPrivs"] == "1"
    uid = identity.get("uid", 0)
    assert mine["Uid"] == f"{uid} {uid} {uid} {uid}"
    with open(f"/proc/{c.pid}/status") as f:
        init_bounding = status_fields(f.read())["CapBnd"]
    assert mine["CapBnd"] == init_bounding


def test_signal_mask_and_dispositions_are_clean(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    ran = run_exec(enters, c, ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
    assert ran.out.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16]


def test_env_workdir_and_rlimits(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner, env={"FOO": "from-spec", "BAR": "spec"},
                       rlimits={"nofile": (100, 200)})
    ran = run_exec(enters, c, ["sh", "-c", 'echo "$PATH $HOSTNAME $HOME $FOO $BAR"; pwd; '
                               "ulimit -n; ulimit -Hn"],
                   env={"BAR": "from-exec"}, workdir="/tmp")
    path, hostname, home, foo, bar, cwd, soft, hard = ran.out.split()
    assert path.startswith("/usr/local/sbin:") and hostname == c.name and home == "/root"
    assert (foo, bar, cwd, soft, hard) == ("from-spec", "from-exec", "/tmp", "100", "200")


def test_cgroups_are_the_inits(runner: Runner, enters: Enters) -> None:
    made = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype, options = fields[fields.index("-") + 1], fields[fields.index("-") + 3]
            if fstype == "cgroup2" or (fstype == "cgroup" and "pids" in options.split(",")):
                path = f"{fields[4]}/nsvtest-{RUN_ID}-enter"
                os.makedirs(path, exist_ok=True)
                made.append(path)
    if not made:
        pytest.skip("no cgroup2 or v1 pids hierarchy mounted")
    try:
        r, w = os.pipe()
        c = runner.start(runner.spec(SLEEP, cgroup_procs=tuple(f"{p}/cgroup.procs"
                                                               for p in made)))
        request = exec_request(c.spec, c.pid, ["sh", "-c", "echo ready; exec sleep 30"])
        pid = enters.spawn(request, (0, w, 2))
        os.close(w)
        try:
            wait_for_line(r, b"ready")
        finally:
            os.close(r)
        [command] = children_of(pid)
        with open(f"/proc/{c.pid}/cgroup") as f:
            expected = f.read()
        for who in (pid, command):
            with open(f"/proc/{who}/cgroup") as f:
                assert f.read() == expected
        for path in made:
            with open(f"{path}/cgroup.procs") as f:
                assert {pid, command} <= {int(p) for p in f.read().split()}
        kill_enter(enters, pid, command)
        c.kill()
        c.wait(TIMEOUT)
    finally:
        runner.cleanup()
        for path in made:
            for _ in range(100):
                try:
                    os.rmdir(path)
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.05)


# --- failures -------------------------------------------------------------------------

def test_missing_command_exits_127(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    for command in ("/no/such/cmd", "no-such-cmd"):
        ran = run_exec(enters, c, [command])
        assert ran.code == 127
        assert ran.err == f"nsvisor exec: {command}: No such file or directory\n"


def test_not_executable_exits_126(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    ran = run_exec(enters, c, ["/dev/null"])
    assert (ran.code, ran.err) == (126, "nsvisor exec: /dev/null: Permission denied\n")


def test_dead_container_exits_125(runner: Runner, enters: Enters) -> None:
    c = runner.start(runner.spec(["/bin/true"]))
    c.wait(TIMEOUT)  # exited and reaped: the pid is gone
    ran = run_exec(enters, c, ["/bin/true"])
    assert ran.code == 125
    assert ran.err == f"nsvisor exec: container init {c.pid}: No such process (ESRCH)\n"

    d = start_sleeping(runner)
    kept = os.dup(d.pidfd)
    try:
        d.kill()
        d.wait(TIMEOUT)
        ran = run_exec(enters, d, ["/bin/true"], pidfd=kept)
    finally:
        os.close(kept)
    assert (ran.code, ran.err) == (125, f"nsvisor exec: container init {d.pid}: has exited\n")


def test_passed_pidfd_is_used_and_checked(runner: Runner, enters: Enters) -> None:
    a, b = start_sleeping(runner), start_sleeping(runner, hostname="bee")
    assert run_exec(enters, b, ["hostname"], pidfd=b.pidfd).out == "bee\n"
    ran = run_exec(enters, b, ["hostname"], pidfd=a.pidfd)
    assert ran.code == 125 and f"is process {a.pid}'s" in ran.err


def test_unlisted_namespace_is_refused(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    request = exec_request(c.spec, c.pid, ["/bin/true"])
    request["namespaces"] = [n for n in NAMESPACES if n != "net"]
    ran = run_exec(enters, c, [], request=request)
    assert ran.code == 125
    assert ran.err.startswith("nsvisor exec: namespaces: the container has its own net ")


def test_missing_workdir_exits_125(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    ran = run_exec(enters, c, ["/bin/true"], workdir="/no/such/dir")
    assert ran.code == 125
    assert ran.err == ("nsvisor exec: chdir /no/such/dir: No such file or directory "
                       "(ENOENT)\n")


def test_bad_request_exits_125(enters: Enters) -> None:
    r, w = os.pipe()
    try:
        pid = enters.spawn({"pid": 1, "command": []}, (0, 1, w))
    finally:
        os.close(w)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        _, err = read_both(null, r)
    finally:
        os.close(r)
        os.close(null)
    assert enters.wait(pid) == 125
    assert err.decode().startswith("nsvisor exec: request: command: must be a non-empty")


# --- tty and signals ------------------------------------------------------------------

def test_tty_becomes_the_controlling_terminal(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    master, slave = os.openpty()
    try:
        request = exec_request(c.spec, c.pid, ["sh", "-c", "test -t 0 && echo tty-yes; "
                                               ": </dev/tty && echo ctty-yes"], tty=True)
        pid = enters.spawn(request, (slave, slave, slave), tty=True)
        os.close(slave)
        slave = -1
        out = b""
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([master], [], [], left)[0]:
                raise TimeoutError(f"tty output did not end: {out!r}")
            try:
                chunk = os.read(master, 4096)
            except OSError as e:  # EIO: every slave fd is closed
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            out += chunk
        assert enters.wait(pid) == 0
        assert out.split() == [b"tty-yes", b"ctty-yes"]
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)

    ran = run_exec(enters, c, ["sh", "-c", "test -t 0 || echo no-tty"])
    assert ran.out == "no-tty\n"


def spawn_ready(enters: Enters, c: Container, script: str) -> tuple[int, int]:
    """An enter process running ``script`` (which prints ready); (pid, its stdout)."""
    r, w = os.pipe()
    try:
        pid = enters.spawn(exec_request(c.spec, c.pid, ["sh", "-c", script]), (0, w, 2))
    finally:
        os.close(w)
    wait_for_line(r, b"ready")
    return pid, r


def test_sigterm_reaches_the_command(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    pid, r = spawn_ready(enters, c, 'trap "echo got-term; exit 7" TERM; echo ready; '
                         "while :; do sleep 0.05; done")
    try:
        os.kill(pid, signal.SIGTERM)
        assert enters.wait(pid) == 7
        assert b"got-term" in os.read(r, 4096)
    finally:
        os.close(r)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_command_killed_by_signal_exits_128_plus_n(runner: Runner, enters: Enters,
                                                   sig: int) -> None:
    c = start_sleeping(runner)
    pid, r = spawn_ready(enters, c, "echo ready; exec sleep 30")
    os.close(r)
    os.kill(pid, sig)
    assert enters.wait(pid) == 128 + sig


def test_command_dies_with_its_enter_process(runner: Runner, enters: Enters) -> None:
    c = start_sleeping(runner)
    pid, r = spawn_ready(enters, c, "echo ready; exec sleep 30")
    os.close(r)
    [command] = children_of(pid)
    kill_enter(enters, pid, command)
    assert c.poll() is None  # the container itself goes on
