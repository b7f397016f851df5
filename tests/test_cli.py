"""nsvisorctl against a real nsvisord with real containers: every command, its output and
its exit code, exec (pipes and a pty), follow modes, config edits, concurrent clients."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import RUN_ID
from .daemon_harness import Daemon, alive, wait_for

pytestmark = pytest.mark.root
_counter = iter(range(10_000))

CONFIG = (
    '[containers.{p}-db]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
    'group = "{p}-back"\n\n'
    '[containers.{p}-web]\ncommand = ["/bin/sh", "-c", '
    '"i=0; while :; do i=$((i+1)); echo line $i; sleep 0.1; done"]\nstartsecs = 0\n\n'
    '[containers.{p}-idle]\ncommand = ["/bin/sleep", "1000"]\nautostart = false\n'
    'startsecs = 0\n\n'
    '[containers.{p}-bad]\ncommand = ["/nonexistent/cmd"]\nautostart = false\n'
    'startsecs = "200ms"\nmax_retries = 1\nrestart = "no"\n'
    'backoff = { initial = "100ms" }\n'
)


class Ctl:
    """Runs nsvisorctl as a subprocess against one daemon's socket."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.sock = str(daemon.tmp / "nsvisor.sock")

    def n(self, base: str) -> str:
        return self.d.name(base)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "supervisor.cli.main", "-s", self.sock,
                *(a.replace("{p}", self.d.prefix) for a in args)]

    def __call__(self, *args: str, input: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), input=input, capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, *args: str, **kw: object) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kw)

    def status(self, base: str) -> dict:
        out = self("--json", "status", self.n(base))
        return json.loads(out.stdout)[0]


def start_daemon(tmp: Path, config: str = CONFIG) -> tuple[Daemon, Ctl]:
    d = Daemon(tmp, f"c{RUN_ID}{next(_counter)}")
    d.write_config(config)
    d.start()
    ctl = Ctl(d)
    wait_for(lambda: os.path.exists(ctl.sock), 15, "the socket")
    d.wait_state("web", "RUNNING")
    d.wait_state("db", "RUNNING")
    return d, ctl


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctl]:
    """One daemon for the tests that leave it as they found it."""
    d, ctl = start_daemon(tmp_path_factory.mktemp("cli"))
    try:
        yield ctl
    finally:
        d.cleanup()


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Ctl]:
    """A daemon of the test's own (config edits, shutdown)."""
    d, ctl = start_daemon(tmp_path)
    try:
        yield ctl
    finally:
        d.cleanup()


def one_error_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("nsvisorctl: "), stderr
    assert "Traceback" not in stderr
    return stderr


def read_lines(proc: subprocess.Popen, count: int, timeout: float,
               until: str | None = None) -> list[tuple[float, str]]:
    """Lines of ``proc``'s stdout with their arrival times, bounded by ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    got: list[tuple[float, str]] = []
    pending = b""
    deadline = time.monotonic() + timeout
    while len(got) < count and not (until and any(until in line for _, line in got)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(got)} lines in {timeout}s: {got}")
        if not select.select([fd], [], [], left)[0]:
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        now = time.monotonic()
        got += [(now, line.decode()) for line in lines]
    return got


def stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


# --------------------------------------------------------------------------- status, pid


def test_status_lines_and_exit_codes(shared: Ctl) -> None:
    out = shared("status")
    assert out.returncode == 3, "idle and bad are STOPPED"
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [shared.n(b) for b in
                                                   ("db", "web", "idle", "bad")]
    assert all(len(line) <= 80 for line in lines)
    web = lines[1].split()
    assert web[1] == "RUNNING" and web[2] == "pid" and "uptime" in lines[1]
    assert lines[2].split()[1:4] == ["STOPPED", "Not", "started"]
    assert lines[1].index("RUNNING") == lines[2].index("STOPPED")

    assert shared("status", "{p}-web", "{p}-db").returncode == 0
    assert shared("status", "{p}-back:*").returncode == 0
    assert shared("status", "{p}-idle").returncode == 3
    assert shared("status", "all").returncode == 3
    nope = shared("status", "{p}-nope")
    assert nope.returncode == 4
    assert one_error_line(nope.stderr) == \
        f"nsvisorctl: no such container: {shared.n('nope')} (see 'nsvisorctl avail')\n"

    rows = json.loads(shared("status", "--json", "{p}-web").stdout)
    assert len(rows) == 1
    for key in ("name", "state", "pid", "restarts", "exit_code", "uptime_seconds"):
        assert key in rows[0]
    assert rows[0]["state"] == "RUNNING" and rows[0]["pid"] > 0


def test_daemon_unreachable_is_4(shared: Ctl, tmp_path: Path) -> None:
    for argv in (["status"], ["start", "x"], ["stop", "all"], ["version"]):
        out = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "-s",
                              str(tmp_path / "gone.sock"), *argv],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 4, argv
        assert "cannot reach nsvisord" in one_error_line(out.stderr)
    # -c finds the socket in the daemon's own config
    out = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "-c",
                          str(shared.d.config), "status", shared.n("web")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "RUNNING" in out.stdout


def test_pid_version_avail(shared: Ctl) -> None:
    out = shared("pid")
    assert out.returncode == 0 and int(out.stdout) == shared.d.proc.pid
    out = shared("pid", "{p}-web")
    assert out.returncode == 0 and int(out.stdout) == shared.status("web")["pid"]
    out = shared("pid", "{p}-idle")
    assert (out.returncode, out.stdout) == (7, "0\n")
    assert "not running" in one_error_line(out.stderr)
    assert shared("pid", "{p}-nope").returncode == 4
    out = shared("version")
    assert out.returncode == 0 and out.stdout.strip() == "0.1.0"
    out = shared("avail")
    assert out.returncode == 0
    rows = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "in use" in rows[shared.n("web")] and "manual" in rows[shared.n("idle")]


# --------------------------------------------------------------------------- lifecycle


def test_start_stop_signal_and_their_exit_codes(shared: Ctl) -> None:
    out = shared("start", "{p}-idle")
    assert (out.returncode, out.stdout) == (0, f"{shared.n('idle')}: started\n")
    assert shared("status", "{p}-idle").returncode == 0
    out = shared("start", "{p}-idle")
    assert (out.returncode, out.stdout) == (0, f"{shared.n('idle')}: ERROR (already started)\n")
    out = shared("signal", "CONT", "{p}-idle")
    assert (out.returncode, out.stdout) == (0, f"{shared.n('idle')}: signalled\n")
    out = shared("stop", "{p}-idle")
    assert (out.returncode, out.stdout) == (0, f"{shared.n('idle')}: stopped\n")
    assert shared.status("idle")["state"] == "STOPPED"
    out = shared("stop", "{p}-idle")
    assert (out.returncode, out.stdout) == (0, f"{shared.n('idle')}: ERROR (not running)\n")
    out = shared("signal", "HUP", "{p}-idle")
    assert (out.returncode, out.stdout) == (7, f"{shared.n('idle')}: ERROR (not running)\n")
    one_error_line(out.stderr)
    out = shared("signal", "NOSUCH", "{p}-web")
    assert out.returncode == 2 and "no such signal" in one_error_line(out.stderr)
    out = shared("start", "{p}-nope")
    assert out.returncode == 4 and "no such container" in one_error_line(out.stderr)
    out = shared("start")
    assert out.returncode == 2


def test_spawn_error_is_7(shared: Ctl) -> None:
    out = shared("start", "{p}-bad")
    assert out.returncode == 7
    assert out.stdout.startswith(f"{shared.n('bad')}: ERROR (spawn error")
    assert "tail" in one_error_line(out.stderr)
    wait_for(lambda: shared.status("bad")["state"] in ("FATAL", "STOPPED", "EXITED"), 15)
    shared("stop", "{p}-bad")


def test_restart_seen_by_events_follow(shared: Ctl) -> None:
    old_pid = shared.status("web")["pid"]
    events = shared.popen("events", "-f", "-n", "1", "--json")
    try:
        read_lines(events, 1, 20)  # the last kept event: the stream is open
        out = shared("restart", "{p}-web")
        assert (out.returncode, out.stdout) == (0, f"{shared.n('web')}: restarted\n")
        got = read_lines(events, 100, 20, until='"RUNNING"')
        seen = [json.loads(line) for _, line in got if line.strip()]
        mine = [e for e in seen if e.get("container") == shared.n("web")]
        states = [(e["old"], e["new"]) for e in mine if e.get("type") == "state"]
        assert ("RUNNING", "STOPPING") in states and states[-1][1] == "RUNNING", states
    finally:
        stop_proc(events)
    assert events.returncode == 0
    assert shared.status("web")["pid"] != old_pid
    recent = shared("events")
    assert recent.returncode == 0 and f"{shared.n('web')} state RUNNING -> STOPPING" \
        in recent.stdout
    last_two = json.loads(shared("events", "-n", "2", "--json").stdout)["events"]
    everything = json.loads(shared("events", "--json").stdout)["events"]
    assert len(last_two) == 2 and last_two[0] in everything  # events may come between
    assert everything[everything.index(last_two[0]) + 1] == last_two[1]


# --------------------------------------------------------------------------- logs


def test_tail_and_tail_follow_as_written(shared: Ctl) -> None:
    wait_for(lambda: len(shared("tail", "{p}-web").stdout.splitlines()) >= 3, 10)
    out = shared("tail", "-n", "3", "{p}-web")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 3
    assert all(line.startswith("line ") for line in lines)
    assert shared("tail", "-2", "{p}-web", "stderr").returncode == 0
    assert shared("tail", "{p}-nope").returncode == 4

    proc = shared.popen("tail", "-f", "-n", "1", "{p}-web")
    try:
        got = read_lines(proc, 8, 15)
    finally:
        stop_proc(proc)
    numbers = [int(line.split()[1]) for _, line in got]
    assert numbers == list(range(numbers[0], numbers[0] + 8)), numbers
    spread = got[-1][0] - got[1][0]
    assert spread >= 0.4, f"lines must arrive as written (0.1 s apart), not at once: {spread}"


def test_clear(shared: Ctl) -> None:
    out = shared("clear", "{p}-web")
    assert (out.returncode, out.stdout) == (0, f"{shared.n('web')}: cleared\n")
    log = shared.d.log_dir / f"{shared.n('web')}.out.log"
    assert log.stat().st_size < 200
    assert shared("clear", "{p}-nope").returncode == 4


# --------------------------------------------------------------------------- inspect, top


def test_inspect_and_top(shared: Ctl) -> None:
    out = shared("inspect", "--json", "{p}-web")
    info = json.loads(out.stdout)
    assert out.returncode == 0 and info["status"]["state"] == "RUNNING"
    assert {"mnt", "pid", "net", "user"} <= set(info["namespaces"])
    out = shared("inspect", "{p}-web")
    assert out.returncode == 0
    assert "state:       RUNNING" in out.stdout and "namespaces:" in out.stdout
    assert all(len(line) <= 80 for line in out.stdout.splitlines())
    assert shared("inspect", "{p}-nope").returncode == 4

    out = shared("top", "{p}-web")
    rows = out.stdout.splitlines()
    assert out.returncode == 0 and rows[0].split() == ["HOST", "PID", "PID", "USER", "COMMAND"]
    inits = [r.split() for r in rows[1:] if r.split()[1] == "1"]
    assert inits and int(inits[0][0]) == shared.status("web")["pid"]
    assert any("sh" in r for r in rows[1:])


# --------------------------------------------------------------------------- exec


def test_exec_output_status_and_stdin(shared: Ctl) -> None:
    out = shared("exec", "{p}-web", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (out.returncode, out.stdout, out.stderr) == (5, "out\n", "err\n")
    out = shared("exec", "{p}-web", "--", "cat", input="hello\nworld\n")
    assert (out.returncode, out.stdout) == (0, "hello\nworld\n")
    out = shared("exec", "{p}-web", "--", "sh", "-c", "test -t 0 && echo tty || echo notty")
    assert out.stdout == "notty\n"
    out = shared("exec", "-e", "GREETING=hi", "{p}-web", "--", "sh", "-c", "echo $GREETING")
    assert (out.returncode, out.stdout) == (0, "hi\n")
    out = shared("exec", "{p}-idle", "--", "true")
    assert out.returncode == 7 and "not running" in one_error_line(out.stderr)
    out = shared("exec", "{p}-nope", "--", "true")
    assert out.returncode == 4 and "no such container" in one_error_line(out.stderr)


def run_on_pty(argv: list[str], feed: bytes = b"", timeout: float = 30) -> tuple[int, bytes,
                                                                                  list, list]:
    """``argv`` with a fresh pty as its stdin/stdout/stderr: (status, output, terminal
    attributes before, after)."""
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    output = b""
    try:
        if feed:
            os.write(master, feed)  # typed ahead: most likely before the command is ready
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no end in {timeout}s; output so far {output!r}")
            if select.select([master], [], [], min(left, 0.1))[0]:
                try:
                    output += os.read(master, 65536)
                except OSError:
                    pass
            elif proc.poll() is not None:
                break
        after = termios.tcgetattr(slave)
        return proc.returncode, output, before, after
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
        os.close(slave)


def test_exec_tty(shared: Ctl) -> None:
    code, output, before, after = run_on_pty(
        shared.argv("exec", "-t", "{p}-web", "--", "sh", "-c",
                    "test -t 0 && test -t 1 && echo tty; exit 3"))
    assert code == 3, output
    assert b"tty" in output
    assert after == before, "the local terminal must be restored"

    # keystrokes go through (the local terminal is raw; the remote pty does the echo),
    # also those typed before it was raw
    code, output, before, after = run_on_pty(
        shared.argv("exec", "-t", "{p}-web", "--", "sh", "-c", "read x; echo got:$x"),
        feed=b"abc\r")
    assert code == 0, output
    assert b"got:abc" in output
    assert after == before


# --------------------------------------------------------------------------- clients


def test_concurrent_clients(shared: Ctl) -> None:
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(lambda _: shared("status", "{p}-web", "{p}-db"), range(20)))
    assert [o.returncode for o in outs] == [0] * 20
    assert all(len(o.stdout.splitlines()) == 2 and o.stderr == "" for o in outs)


def test_interactive_shell(shared: Ctl, tmp_path: Path) -> None:
    out = subprocess.run(shared.argv(), capture_output=True, text=True, timeout=60,
                         input=f"status {shared.n('web')}\nversion\nbogus\nquit\nversion\n",
                         env={**os.environ, "HOME": str(tmp_path)})
    assert out.returncode == 0
    assert out.stdout.startswith("nsvisorctl> ")
    assert "RUNNING" in out.stdout and out.stdout.count("0.1.0") == 1
    assert "no such command: bogus" in one_error_line(out.stderr)


# --------------------------------------------------------------------------- config edits


def test_reread_update_add_remove(own: Ctl) -> None:
    out = own("reread")
    assert (out.returncode, out.stdout) == (0, "No config updates to containers\n")
    config = CONFIG.replace('"/bin/sleep", "1000"]\nautostart = false',
                            '"/bin/sleep", "2000"]\nautostart = false')
    config = config.replace("[containers.{p}-bad]", '[containers.{p}-new]\n'
                            'command = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
                            "[containers.{p}-bad]")
    config = config.replace('[containers.{p}-db]\ncommand = ["/bin/sleep", "1000"]\n'
                            'startsecs = 0\ngroup = "{p}-back"\n\n', "")
    config = config.replace('depends_on = ["{p}-db"]\n', "")
    own.d.write_config(config)
    out = own("reread")
    assert out.returncode == 0
    assert out.stdout.splitlines() == sorted([f"{own.n('new')}: available",
                                              f"{own.n('idle')}: changed",
                                              f"{own.n('db')}: disappeared"])
    assert own.status("db")["state"] == "RUNNING", "reread applies nothing"

    out = own("update", "{p}-new")
    assert (out.returncode, out.stdout) == (0, f"{own.n('new')}: added process group\n")
    own.d.wait_state("new", "RUNNING")
    assert own.status("db")["state"] == "RUNNING", "update NAME touches only NAME"

    out = own("update")
    assert out.returncode == 0
    assert sorted(out.stdout.splitlines()) == [f"{own.n('db')}: removed process group",
                                               f"{own.n('idle')}: updated process group"]
    assert own("status", "{p}-db").returncode == 4

    out = own("remove", "{p}-new")
    assert out.returncode == 1 and "stop" in one_error_line(out.stderr)
    assert own("stop", "{p}-new").returncode == 0
    out = own("remove", "{p}-new")
    assert (out.returncode, out.stdout) == (0, f"{own.n('new')}: removed process group\n")
    avail = own("avail").stdout
    assert any(line.split()[:2] == [own.n("new"), "avail"] for line in avail.splitlines())
    out = own("add", "{p}-new")
    assert (out.returncode, out.stdout) == (0, f"{own.n('new')}: added process group\n")
    assert own("status", "{p}-new").returncode in (0, 3)

    own.d.write_config("[containers.{p}-broken]\ncommand = 3\n")
    out = own("reread")
    assert out.returncode == 1 and "command" in one_error_line(out.stderr)


def test_reload_then_shutdown(own: Ctl) -> None:
    old = own.status("web")["pid"]
    out = own("reload")
    assert (out.returncode, out.stdout) == (0, "Restarted nsvisord\n")
    own.d.wait_state("web", "RUNNING")
    assert own.status("web")["pid"] != old
    out = own("shutdown")
    assert (out.returncode, out.stdout) == (0, "Shut down\n")
    assert own.d.proc.wait(30) == 0
    out = own("status")
    assert out.returncode == 4 and "cannot reach" in one_error_line(out.stderr)
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.connect(own.sock)
        pytest.fail("nothing may answer on the socket after shutdown")


def test_shutdown_leave_running_then_a_new_nsvisord_takes_over(own: Ctl) -> None:
    pid = own.status("web")["pid"]
    out = own("shutdown", "--leave-running")
    assert (out.returncode, out.stdout) == (0, "Shut down; containers left running\n")
    assert own.d.proc.wait(30) == 0 and alive(pid)
    assert own("status").returncode == 4
    own.d.start()
    wait_for(lambda: own.d.events("re-adopted", "web"), 10, "re-adoption")
    assert own.status("web")["pid"] == pid
