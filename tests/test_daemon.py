"""nsvisord with real containers: policies, reload, shutdown order, escalation, live restore."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.daemon.supervisor import LAUNCH_SLOTS

from .conftest import RUN_ID
from .daemon_harness import Daemon, alive, wait_for

pytestmark = pytest.mark.root
_counter = iter(range(10_000))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, f"d{RUN_ID}{next(_counter)}")
    try:
        yield d
    finally:
        d.cleanup()


def ts(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


def test_bad_config_exits_2_naming_file_and_key(daemon: Daemon) -> None:
    daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/true"]\n'
                        'backoff = { max = "10x" }\n')
    proc = daemon.start()
    assert proc.wait(20) == 2
    err = daemon.log_text()
    assert str(daemon.config) in err
    assert f"containers.{daemon.name('a')}.backoff.max" in err
    assert not daemon.state_dir.exists(), "a bad config must change nothing"


@pytest.mark.parametrize("shared", ["socket", "state_dir", "both"])
def test_a_second_daemon_on_the_same_socket_or_state_is_one_error_and_harms_none(
        daemon: Daemon, shared: str) -> None:
    # A second nsvisord on the same state_dir (another socket) used to re-adopt the
    # first one's containers: two supervisors, each stopping and restarting them.
    daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "1000"]\n'
                        'startsecs = 0\n')
    daemon.start()
    pid = daemon.wait_state("a", "RUNNING")["pid"]
    config = daemon.config.read_text()
    if shared == "socket":
        config = config.replace(str(daemon.state_dir), f"{daemon.tmp}/other-state")
    elif shared == "state_dir":
        config = config.replace(f"{daemon.tmp}/nsvisor.sock", f"{daemon.tmp}/other.sock")
    second_config = daemon.tmp / "second.toml"
    second_config.write_text(config)
    second = subprocess.run(
        [sys.executable, "-m", "supervisor.daemon.main", "-c", str(second_config)],
        capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"nsvisord: {daemon.tmp}/nsvisor.sock is in use: is another nsvisord running?"
        if shared == "socket" else
        f"nsvisord: state_dir {daemon.state_dir} is in use by nsvisord pid "
        f"{daemon.proc.pid}: one nsvisord per state_dir (stop that one first, or give "
        "this one its own state_dir)"]
    assert not (daemon.tmp / "other.sock").exists()
    assert daemon.state("a")["pid"] == pid and daemon.state("a")["state"] == "RUNNING"
    assert daemon.api("GET", "/v1/containers")[0] == 200  # the first still serves
    assert daemon.stop() == 0
    assert alive(pid) is False


def test_a_socket_group_that_does_not_exist_is_a_config_error(daemon: Daemon) -> None:
    daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "1000"]\n')
    daemon.config.write_text(daemon.config.read_text().replace(
        "[supervisor]\n", '[supervisor]\nsocket_group = "nsv-no-such-group"\n', 1))
    assert daemon.start().wait(20) == 2
    log = daemon.log_text()
    assert "Traceback" not in log
    assert log.splitlines()[-1] == (
        f"nsvisord: {daemon.config}: supervisor.socket_group: no such group "
        "'nsv-no-such-group' on this host")
    assert not list(daemon.state_dir.glob("containers/*.json")), "nothing may have started"


def test_on_failure_retries_with_backoff_then_fatal(daemon: Daemon) -> None:
    daemon.write_config('[containers.{p}-f]\ncommand = ["/bin/sh", "-c", "exit 3"]\n'
                        'startsecs = "500ms"\nmax_retries = 2\nrestart = "on-failure"\n'
                        'backoff = { initial = "200ms", factor = 2.0, max = "5s" }\n')
    daemon.start()
    state = daemon.wait_state("f", "FATAL")
    assert state["last_exit_code"] == 3
    spawns = [ts(e) for e in daemon.events("spawned", "f")]
    assert len(spawns) == 3  # 1 try + 2 retries
    gaps = [b - a for a, b in zip(spawns, spawns[1:], strict=False)]
    # Each gap is the backoff delay (0.2 s, then 0.4 s) plus the launch time.
    assert 0.2 <= gaps[0] < 0.2 + 0.25, gaps
    assert 0.4 <= gaps[1] < 0.4 + 0.25, gaps


def test_always_restarts_a_clean_exit_and_no_never_does(daemon: Daemon) -> None:
    daemon.write_config(
        '[containers.{p}-always]\ncommand = ["/bin/sh", "-c", "sleep 0.3"]\n'
        'startsecs = "100ms"\nrestart = "always"\nbackoff = { initial = "100ms" }\n\n'
        '[containers.{p}-never]\ncommand = ["/bin/sh", "-c", "sleep 0.3"]\n'
        'startsecs = "100ms"\nrestart = "no"\n')
    daemon.start()
    wait_for(lambda: daemon.state("always").get("restarts", 0) >= 2, 15, "two restarts")
    never = daemon.wait_state("never", "EXITED")
    assert never["last_exit_code"] == 0
    time.sleep(1.0)
    assert daemon.state("never")["state"] == "EXITED"
    assert daemon.state("never")["restarts"] == 0


def test_dependencies_start_in_order_and_stop_in_reverse(daemon: Daemon) -> None:
    daemon.write_config(
        '[containers.{p}-db]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = "300ms"\n\n'
        '[containers.{p}-app]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = "300ms"\n'
        'depends_on = ["{p}-db"]\n\n'
        '[containers.{p}-web]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = "300ms"\n'
        'depends_on = ["{p}-app"]\n')
    daemon.start()
    for name in ("db", "app", "web"):
        daemon.wait_state(name, "RUNNING")
    spawned = {e["container"]: ts(e) for e in daemon.events("spawned")}
    running = {e["container"]: ts(e) for e in daemon.events("state") if e["new"] == "RUNNING"}
    n = daemon.name
    assert spawned[n("app")] >= running[n("db")]
    assert spawned[n("web")] >= running[n("app")]
    assert daemon.stop() == 0
    exited = [e["container"] for e in daemon.events("exited")]
    assert exited == [n("web"), n("app"), n("db")]
    for name in ("db", "app", "web"):
        assert daemon.state(name)["state"] == "STOPPED"


def test_a_start_held_by_a_dependency_says_which_one(daemon: Daemon) -> None:
    # It used to read "STARTING  Not started" for as long as db was not RUNNING.
    daemon.write_config(
        '[containers.{p}-db]\ncommand = ["/bin/sh", "-c", "exit 1"]\nstartsecs = "1s"\n'
        'max_retries = 1\nbackoff = { initial = "100ms" }\n\n'
        '[containers.{p}-app]\ncommand = ["/bin/sleep", "1000"]\n'
        'depends_on = ["{p}-db"]\n')
    daemon.start()
    daemon.wait_state("db", "FATAL")
    status, listed = daemon.api("GET", "/v1/containers")
    app = next(c for c in listed if c["name"] == daemon.name("app"))
    assert (app["state"], app["description"]) == (
        "STARTING", f"waiting for {daemon.name('db')} (FATAL)")
    # Stopped while it waits, it is not launched at all (it used to stay STOPPING until
    # the stop timed out).
    assert daemon.api("POST", "/v1/stop", {"names": [daemon.name("app")]})[0] == 200
    assert daemon.state("app")["state"] == "STOPPED"
    assert not daemon.events("spawned", "app")
    # A start (which starts db again) answers once db is FATAL again, naming it, instead
    # of after startsecs + 60 s with a stale reason.
    status, answer = daemon.api("POST", "/v1/start", {"names": [daemon.name("app")]})
    assert answer["results"] == [{"name": daemon.name("app"), "ok": False,
                                  "error": f"waiting for {daemon.name('db')} (FATAL)"}]
    assert daemon.state("db")["restarts"] > 1  # it was tried again
    daemon.api("POST", "/v1/stop", {"names": [daemon.name("app")]})
    ctl = subprocess.run(
        [sys.executable, "-m", "supervisor.cli.main", "-s", f"{daemon.tmp}/nsvisor.sock",
         "start", daemon.name("app")], capture_output=True, text=True, timeout=60)
    assert ctl.stdout == f"{daemon.name('app')}: ERROR (waiting for {daemon.name('db')} " \
                         "(FATAL))\n"
    assert ctl.stderr == f"nsvisorctl: start failed for {daemon.name('app')} " \
                         "(see 'nsvisorctl status')\n"
    assert daemon.stop() == 0


def test_a_restart_brings_back_the_dependents_it_took_down(daemon: Daemon) -> None:
    # `restart db` stops app first (it depends on db), and used to leave it STOPPED.
    daemon.write_config(
        '[containers.{p}-db]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
        '[containers.{p}-app]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
        'depends_on = ["{p}-db"]\n\n'
        '[containers.{p}-idle]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
        'depends_on = ["{p}-db"]\nautostart = false\n')
    daemon.start()
    before = {n: daemon.wait_state(n, "RUNNING")["pid"] for n in ("db", "app")}
    status, answer = daemon.api("POST", "/v1/restart", {"names": [daemon.name("db")]})
    assert status == 200
    assert answer["results"] == [{"name": daemon.name("db"), "ok": True, "error": None},
                                 {"name": daemon.name("app"), "ok": True, "error": None}]
    after = {n: daemon.state(n) for n in ("db", "app")}
    assert all(after[n]["state"] == "RUNNING" and after[n]["pid"] != before[n]
               for n in after), after
    started = [e["container"] for e in daemon.events("spawned")]
    assert started[-2:] == [daemon.name("db"), daemon.name("app")]  # in dependency order
    assert daemon.name("idle") not in started  # it was not running: it stays down
    assert daemon.stop() == 0


def test_a_restart_whose_container_a_reload_removes_meanwhile_says_so(
        daemon: Daemon) -> None:
    # Found by random reloads and commands: the restart's start found the container gone
    # and answered "internal error: KeyError".
    slow = '[containers.{p}-slow]\ncommand = ["/bin/sh", "-c", "trap \'\' TERM; sleep 1000"]\n' \
           'startsecs = 0\nstop_timeout = "1s"\n\n'
    daemon.write_config(slow + '[containers.{p}-gone]\ncommand = ["/bin/sleep", "1000"]\n'
                        'startsecs = 0\n')
    daemon.start()
    for name in ("slow", "gone"):
        daemon.wait_state(name, "RUNNING")
    answers: list = []
    restart = threading.Thread(target=lambda: answers.append(daemon.api(
        "POST", "/v1/restart", {"names": [daemon.name("slow"), daemon.name("gone")]})))
    restart.start()
    daemon.wait_state("gone", "STOPPED")  # slow is still stopping: 1 s
    daemon.write_config(slow)
    daemon.signal(signal.SIGHUP)
    restart.join(30)
    status, answer = answers[0]
    assert status == 200, answer
    assert answer["results"] == [
        {"name": daemon.name("slow"), "ok": True, "error": None},
        {"name": daemon.name("gone"), "ok": False,
         "error": "changed or removed by a config reload meanwhile"}]
    assert daemon.state("slow")["state"] == "RUNNING"
    assert daemon.stop() == 0


def _stops_slowly(name: str, seconds: float, loop: str = "0.1", extra: str = "") -> str:
    """The config of a container that takes ``seconds`` to end after its SIGTERM."""
    return (f'[containers.{{p}}-{name}]\n'
            f'command = ["/bin/sh", "-c", "trap \'sleep {seconds}; exit 0\' TERM; '
            f'while :; do sleep {loop}; done"]\nstartsecs = 0\n{extra}')


def test_a_stop_answers_when_done_though_a_start_came_meanwhile(daemon: Daemon) -> None:
    # A start while it was STOPPING restarts the container the moment it stops; the stop
    # waited for a STOPPED it never saw, its full stop_timeout + 10 s.
    daemon.write_config(_stops_slowly("a", 0.5, extra='stop_timeout = "3s"\n'))
    daemon.start()
    first = daemon.wait_state("a", "RUNNING")["pid"]
    answers: list = []

    def stop() -> None:
        started = time.monotonic()
        answers.append((daemon.api("POST", "/v1/stop", {"names": [daemon.name("a")]}),
                        time.monotonic() - started))

    stopping = threading.Thread(target=stop)
    stopping.start()
    daemon.wait_state("a", "STOPPING")
    assert daemon.api("POST", "/v1/start", {"names": [daemon.name("a")]})[0] == 200
    stopping.join(30)
    (status, _), took = answers[0]
    assert status == 200 and took < 10, took  # ~0.5 s; with the bug, 13 s
    again = daemon.wait_state("a", "RUNNING")
    assert again["pid"] != first
    assert daemon.stop() == 0


def test_a_start_during_a_reload_that_replaces_the_container_starts_nothing_old(
        daemon: Daemon) -> None:
    # Found by random reloads and commands: a start that came while a reload was stopping
    # the container it replaces restarted the old one the moment it stopped; the reload
    # then dropped it still running - a container no unit owned - and started the new
    # one in the same cgroup, where the old one's cleanup killed it.
    def config(version: int) -> None:
        daemon.write_config(_stops_slowly("a", 0.5, loop=f"0.{version}"))

    config(1)
    daemon.start()
    old = daemon.wait_state("a", "RUNNING")["pid"]
    config(2)
    daemon.signal(signal.SIGHUP)
    daemon.wait_state("a", "STOPPING")
    status, answer = daemon.api("POST", "/v1/start", {"names": [daemon.name("a")]})
    assert answer["results"] == [{"name": daemon.name("a"), "ok": False,
                                  "error": "changed or removed by a config reload meanwhile"}]
    wait_for(lambda: daemon.events("reload"), 10, "the reload")
    new = wait_for(lambda: (st := daemon.state("a")).get("state") == "RUNNING"
                   and st["pid"] != old and st["pid"], 10, "the new a")
    time.sleep(0.5)  # what a second container would need to show itself
    with open(f"/sys/fs/cgroup/pids/nsvisor/{daemon.name('a')}/cgroup.procs") as f:
        inits = [p for p in f.read().split() if _comm(int(p)) == "nsv-init"]
    assert inits == [str(new)] and not alive(old)
    assert daemon.state("a")["pid"] == new
    assert daemon.stop() == 0


def test_a_start_cut_short_by_a_stop_says_so(daemon: Daemon) -> None:
    # It answered "spawn error (stopped: killed by SIGTERM)", and nsvisorctl sent the
    # operator to the container's own (empty) stderr log.
    daemon.write_config('[containers.{p}-slow]\ncommand = ["/bin/sleep", "1000"]\n'
                        'startsecs = "5s"\nautostart = false\n')
    daemon.start()
    wait_for(lambda: daemon.events("started"), 15, "nsvisord to start")
    ctl = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli.main", "-s", f"{daemon.tmp}/nsvisor.sock",
         "start", daemon.name("slow")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        daemon.wait_state("slow", "STARTING")
        assert daemon.api("POST", "/v1/stop", {"names": [daemon.name("slow")]})[0] == 200
        out, err = ctl.communicate(timeout=30)
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
    assert ctl.returncode == 7
    assert out == f"{daemon.name('slow')}: ERROR (stopped by a stop request before it " \
                  "was running)\n"
    assert err == f"nsvisorctl: start failed for {daemon.name('slow')} " \
                  "(see 'nsvisorctl status')\n"
    assert daemon.stop() == 0


def test_stop_escalates_to_sigkill_and_nothing_survives(daemon: Daemon) -> None:
    daemon.write_config(
        '[containers.{p}-stubborn]\n'
        'command = ["/bin/sh", "-c", "trap \'\' TERM; sleep 1000 & sleep 1000 & wait"]\n'
        'startsecs = "200ms"\nstop_timeout = "1s"\n')
    daemon.start()
    daemon.wait_state("stubborn", "RUNNING")
    procs = Path(f"/sys/fs/cgroup/pids/nsvisor/{daemon.name('stubborn')}/cgroup.procs")
    pids = wait_for(lambda: [int(p) for p in procs.read_text().split()] if procs.exists()
                    and len(procs.read_text().split()) >= 4 else None, 10, "4 processes")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started >= 1.0  # the stop signal was ignored until SIGKILL
    kills = [e["signal"] for e in daemon.events("signal", "stubborn")]
    assert kills == ["SIGTERM", "SIGKILL"]
    assert not [p for p in pids if alive(p)]
    assert not procs.parent.exists()


def test_sigkill_and_an_immediate_restart_do_not_race(daemon: Daemon) -> None:
    # SIGKILL also clears the container's cgroup, in a worker thread; a restart 1 ms
    # later must wait for that, or the clearing kills the new container - and the fork
    # server, which steps into the cgroup to clone the init there.
    daemon.write_config('[containers.{p}-k]\ncommand = ["/bin/sleep", "1000"]\n'
                        'startsecs = 0\nrestart = "always"\n'
                        'backoff = { initial = "1ms", factor = 1.0, max = "1ms" }\n')
    daemon.start()
    pid = daemon.wait_state("k", "RUNNING")["pid"]
    [fork_server] = wait_for(lambda: [p for p in _children(daemon.proc.pid)
                                      if _comm(p) == "nsv-zygote"], 5, "the fork server")
    for _ in range(25):
        status, body = daemon.api("POST", "/v1/signal",
                                  {"names": [daemon.name("k")], "signal": "KILL"})
        assert status == 200, body
        pid = wait_for(lambda old=pid: (s := daemon.state("k")).get("state") == "RUNNING"
                       and s["pid"] != old and s["pid"], 10, "a new RUNNING pid")
    assert not daemon.events("spawn failed")
    assert _comm(fork_server) == "nsv-zygote"
    assert fork_server in _children(daemon.proc.pid)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_more_containers_than_launch_slots_all_start_once(daemon: Daemon) -> None:
    # Launches beyond LAUNCH_SLOTS queue for a slot; every one of them still starts,
    # exactly once, and the queue follows the start order (priority).
    count = LAUNCH_SLOTS + 8
    daemon.write_config("".join(
        f'[containers.{{p}}-s{i:02d}]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
        f'priority = {1000 - i}\n' for i in range(count)))
    daemon.start()
    wait_for(lambda: len([e for e in daemon.events("state") if e["new"] == "RUNNING"])
             >= count, 60, f"{count} containers RUNNING")
    spawned = [e["container"] for e in daemon.events("spawned")]
    assert sorted(spawned) == sorted(daemon.name(f"s{i:02d}") for i in range(count))
    # The lowest priority number starts first: the first slots went to s{count-1} down
    # to s08, and s00, last in line, got one only after 8 of them had finished.
    first_wave = {daemon.name(f"s{i:02d}") for i in range(count - LAUNCH_SLOTS, count)}
    assert spawned[0] in first_wave
    assert spawned.index(daemon.name("s00")) >= count - LAUNCH_SLOTS
    assert daemon.stop() == 0


def test_more_containers_than_the_open_files_limit_allows(daemon: Daemon) -> None:
    # Started with a soft limit of 64 open files (a service gets 1024), nsvisord needs 2
    # per running container: it raises its own soft limit to the hard one, and its
    # containers still get the 64 it was started with.
    count = 40
    daemon.write_config("".join(
        f'[containers.{{p}}-f{i}]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
        for i in range(count)))
    daemon.start(wrapper=("prlimit", "--nofile=64:4096", "--"))
    wait_for(lambda: len([e for e in daemon.events("state") if e["new"] == "RUNNING"])
             >= count, 60, f"{count} containers RUNNING")
    assert not daemon.events("spawn failed")
    with open(f"/proc/{daemon.proc.pid}/limits") as f:
        assert [line.split()[3:5] for line in f if line.startswith("Max open files")] == \
            [["4096", "4096"]]
    init = daemon.state("f0")["pid"]
    [workload] = wait_for(lambda: _children(init), 5, "the workload")
    with open(f"/proc/{workload}/limits") as f:
        assert [line.split()[3:5] for line in f if line.startswith("Max open files")] == \
            [["64", "4096"]]
    assert daemon.stop() == 0


def test_a_leftover_cgroup_is_emptied_and_made_afresh(daemon: Daemon) -> None:
    # A cgroup by the container's name with a process in it (left by a crash, say): the
    # container's first start kills that process and starts in a cgroup of its own.
    leftover = f"/sys/fs/cgroup/pids/nsvisor/{daemon.name('web')}"
    if not os.path.isdir("/sys/fs/cgroup/pids"):
        pytest.skip("needs the cgroup v1 pids hierarchy")
    os.makedirs(leftover)
    stray = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        with open(f"{leftover}/cgroup.procs", "w") as f:
            f.write(str(stray.pid))
        daemon.write_config('[containers.{p}-web]\ncommand = ["/bin/sleep", "1000"]\n'
                            'startsecs = 0\n')
        daemon.start()
        init = daemon.wait_state("web", "RUNNING")["pid"]
        assert stray.wait(10) == -signal.SIGKILL
        with open(f"{leftover}/cgroup.procs") as f:
            assert init in [int(p) for p in f.read().split()]
        assert daemon.stop() == 0
        assert not os.path.exists(leftover)
    finally:
        stray.kill()
        stray.wait(10)
        with contextlib.suppress(OSError):
            os.rmdir(leftover)


def test_a_full_state_dir_does_not_stop_supervision(daemon: Daemon) -> None:
    # /run full: a state file that cannot be written is an error in the log, once, and
    # supervision goes on (it used to end nsvisord with ENOSPC).
    os.makedirs(daemon.state_dir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", f"{daemon.prefix}-state",
                    str(daemon.state_dir)], check=True, timeout=10)
    try:
        daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "1000"]\n'
                            'startsecs = 0\n')
        daemon.start()
        daemon.wait_state("a", "RUNNING")
        filler = daemon.state_dir / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            f.write(b"\0" * 128 * 1024)  # ENOSPC once the 64 KiB are used up
        daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "1000"]\n'
                            'startsecs = 0\n\n'
                            '[containers.{p}-b]\ncommand = ["/bin/sleep", "1000"]\n'
                            'startsecs = 0\n')
        daemon.signal(signal.SIGHUP)
        b = daemon.name("b")
        wait_for(lambda: [e for e in daemon.events("state", "b") if e["new"] == "RUNNING"],
                 10, "b RUNNING, its state file unwritable")
        assert daemon.proc.poll() is None
        failed = daemon.events("state file not written")
        assert [e["path"] for e in failed] == [
            str(daemon.state_dir / "containers" / f"{b}.json")]  # once, for b's file
        assert "free space in state_dir" in failed[0]["hint"]
        filler.unlink()
        [spawned] = daemon.events("spawned", "b")
        os.kill(_children(spawned["pid"])[0], signal.SIGKILL)  # a change to save, now it can
        wait_for(lambda: daemon.events("state file written again"), 10, "b's file written")
        daemon.wait_state("b", "RUNNING")  # its state file is written again
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
        subprocess.run(["umount", str(daemon.state_dir)], check=True, timeout=10)


def test_sigterm_while_containers_start_leaves_nothing(daemon: Daemon) -> None:
    # A shutdown during the start wave: the launches in flight finish (or fail), those
    # queued for a slot too, and every container is stopped; no process or cgroup of
    # any of them is left.
    daemon.write_config("".join(
        f'[containers.{{p}}-s{i}]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
        for i in range(LAUNCH_SLOTS + 8)))
    daemon.start()
    wait_for(lambda: daemon.events("supervising"), 20, "the start wave")
    assert daemon.stop() == 0
    assert not [e for e in daemon.events() if e.get("level") in ("error", "critical")]
    cgroups = [p for root in ("/sys/fs/cgroup/pids/nsvisor", "/sys/fs/cgroup/nsvisor")
               if os.path.isdir(root) for p in os.listdir(root)
               if p.startswith(daemon.prefix + "-")]
    assert cgroups == []
    daemon.remember_pids()
    assert not [p for p in daemon.seen_pids if alive(p)]
    mine = [p for p in os.listdir("/proc") if p.isdigit()
            and _in_cgroup_of(int(p), daemon.prefix)]
    assert mine == []


def _in_cgroup_of(pid: int, prefix: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f"/nsvisor/{prefix}-" in f.read()
    except OSError:
        return False


def test_sighup_applies_only_the_difference(daemon: Daemon) -> None:
    base = ('[containers.{p}-same]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
            '[containers.{p}-changed]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
            '[containers.{p}-removed]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    daemon.write_config(base)
    daemon.start()
    before = {n: daemon.wait_state(n, "RUNNING")["pid"] for n in ("same", "changed", "removed")}
    # A bad file first: rejected, nothing changes.
    daemon.write_config(base + "[containers.{p}-bad]\ncommand = []\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("reload rejected"), 10, "the rejection")
    assert {n: daemon.state(n)["pid"] for n in before} == before
    daemon.write_config(
        '[containers.{p}-same]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
        '[containers.{p}-changed]\ncommand = ["/bin/sleep", "999"]\nstartsecs = 0\n\n'
        '[containers.{p}-added]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    daemon.signal(signal.SIGHUP)
    added = daemon.wait_state("added", "RUNNING")
    changed = wait_for(lambda: (s := daemon.state("changed")).get("state") == "RUNNING"
                       and s["pid"] != before["changed"] and s, 10, "changed restarted")
    assert daemon.state("same")["pid"] == before["same"]
    assert alive(before["same"])
    assert changed["pid"] != before["changed"] and not alive(before["changed"])
    assert daemon.state("removed") == {} and not alive(before["removed"])
    assert added["pid"]


def test_supervisor_settings_changed_on_reload_wait_for_a_restart_and_say_so(
        daemon: Daemon, tmp_path: Path) -> None:
    # [supervisor] applies at start: a reload says which keys wait for a restart, and
    # the daemon goes on with the directories it started with.
    body = '[containers.{p}-a]\ncommand = ["/bin/sh", "-c", "echo hi; exec sleep 1000"]\n'
    daemon.write_config(body)
    daemon.start()
    first = daemon.wait_state("a", "RUNNING")["pid"]
    moved = tmp_path / "other-logs"
    daemon.config.write_text(daemon.config.read_text().replace(
        f'log_dir = "{daemon.log_dir}"', f'log_dir = "{moved}"'))
    reread = subprocess.run(
        [sys.executable, "-m", "supervisor.cli.main", "-s", f"{daemon.tmp}/nsvisor.sock",
         "reread"], capture_output=True, text=True, timeout=30)
    assert reread.returncode == 0
    assert reread.stdout.splitlines() == [
        "No config updates to containers",
        "supervisor.log_dir: changed, applies when nsvisord restarts (containers keep "
        "running)"]
    daemon.signal(signal.SIGHUP)
    [warned] = wait_for(lambda: daemon.events("settings need a restart"), 10, "a warning")
    assert warned["keys"] == ["supervisor.log_dir"] and "restart nsvisord" in warned["hint"]
    assert daemon.state("a")["pid"] == first  # the container was not touched
    daemon.api("POST", "/v1/restart", {"names": [daemon.name("a")]})
    wait_for(lambda: daemon.state("a").get("pid") not in (None, first)
             and daemon.state("a")["state"] == "RUNNING", 15, "a restarted")
    log = daemon.log_dir / f"{daemon.name('a')}.out.log"
    wait_for(lambda: log.exists() and log.read_text() == "hi\nhi\n", 10, "both runs' output")
    assert not moved.exists()
    assert daemon.stop() == 0


def test_a_full_reload_with_a_bad_file_stops_nothing(daemon: Daemon) -> None:
    # nsvisorctl reload (stop all, reread, start all) stopped everything before reading
    # the file: a bad one then left every container stopped.
    daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "1000"]\n'
                        'startsecs = 0\n')
    daemon.start()
    pid = daemon.wait_state("a", "RUNNING")["pid"]
    daemon.config.write_text(daemon.config.read_text() + "stop_timeout = 'soon'\n")
    status, body = daemon.api("POST", "/v1/reload")
    assert status == 400 and f"containers.{daemon.name('a')}.stop_timeout" in body["error"]
    assert daemon.state("a")["pid"] == pid and daemon.state("a")["state"] == "RUNNING"
    assert alive(pid)
    assert daemon.stop() == 0


def test_live_restore_after_kill_9(daemon: Daemon) -> None:
    daemon.write_config(
        '[containers.{p}-steady]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
        '[containers.{p}-flaky]\ncommand = ["/bin/sh", "-c", "sleep 0.5; exit 9"]\n'
        'startsecs = "100ms"\nrestart = "on-failure"\nbackoff = { initial = "100ms" }\n\n'
        '[containers.{p}-dies]\ncommand = ["/bin/sh", "-c", "sleep 1.5; exit 7"]\n'
        'startsecs = "100ms"\nrestart = "on-failure"\nbackoff = { initial = "100ms" }\n')
    daemon.start()
    steady = daemon.wait_state("steady", "RUNNING")
    wait_for(lambda: daemon.state("flaky").get("restarts", 0) >= 1, 10, "a flaky restart")
    dies = daemon.wait_state("dies", "RUNNING")
    daemon.crash()
    flaky_restarts = daemon.state("flaky")["restarts"]
    assert alive(steady["pid"]) and alive(dies["pid"]), "containers must outlive the daemon"
    wait_for(lambda: not alive(dies["pid"]), 10, "dies to exit while the daemon is down")
    daemon.start()
    wait_for(lambda: daemon.events("re-adopted", "steady"), 10, "re-adoption")
    assert daemon.state("steady")["pid"] == steady["pid"], "re-adopted, not restarted"
    assert daemon.state("steady")["restarts"] == 0
    assert not daemon.events("spawned", "steady")[1:], "steady was started twice"
    assert daemon.state("flaky")["restarts"] >= flaky_restarts, "counters survive"
    # The one that died while we were away: its exact status, and its policy applied.
    down = wait_for(lambda: daemon.events("exited while nsvisord was down", "dies"), 10)
    assert down[0]["status"] == "exit status 7"
    restarted = wait_for(lambda: (s := daemon.state("dies")).get("restarts", 0) >= 1 and s, 10)
    assert restarted["last_exit_code"] in (7, None) or restarted["state"] in ("RUNNING",
                                                                              "STARTING")
    # A daemon that was stopped properly leaves nothing to restore.
    assert daemon.stop() == 0
    assert not alive(steady["pid"])


def test_a_config_edited_while_the_daemon_was_down_applies_at_its_start(
        daemon: Daemon) -> None:
    # Re-adopting with the config as it is now used to keep the old process running
    # under the new config's name, and no later reread could see the difference.
    kept = '[containers.{p}-kept]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
    daemon.write_config(kept + '[containers.{p}-edited]\ncommand = ["/bin/sleep", "1000"]\n'
                               'startsecs = 0\n')
    daemon.start()
    before = {n: daemon.wait_state(n, "RUNNING")["pid"] for n in ("kept", "edited")}
    daemon.crash()
    daemon.write_config(kept + '[containers.{p}-edited]\ncommand = ["/bin/sleep", "999"]\n'
                               'startsecs = 0\n')
    daemon.start()
    wait_for(lambda: daemon.events("config changed while nsvisord was down", "edited"), 10,
             "the edit noticed")
    now = wait_for(lambda: (st := daemon.state("edited")).get("state") == "RUNNING"
                   and st["pid"] != before["edited"] and st, 15, "edited restarted")
    assert not alive(before["edited"])
    [workload] = _children(now["pid"])
    with open(f"/proc/{workload}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"/bin/sleep", b"999"]
    assert daemon.state("kept")["pid"] == before["kept"]  # re-adopted, untouched
    assert not daemon.events("config changed while nsvisord was down", "kept")
    assert daemon.api("POST", "/v1/reread")[1]["changed"] == []
    assert daemon.stop() == 0


def test_a_shutdown_of_the_other_kind_than_the_one_begun_is_refused(daemon: Daemon) -> None:
    daemon.write_config(_stops_slowly("slow", 1))
    daemon.start()
    pid = daemon.wait_state("slow", "RUNNING")["pid"]
    assert daemon.api("POST", "/v1/shutdown")[0] == 200  # stops everything: takes ~1 s
    daemon.wait_state("slow", "STOPPING")
    status, answer = daemon.api("POST", "/v1/shutdown", {"leave_running": True})
    assert status == 409
    assert answer["error"] == "nsvisord is already shutting down, stopping its containers"
    assert daemon.api("POST", "/v1/shutdown")[1]["ok"]  # the same again: fine
    assert daemon.proc.wait(30) == 0 and not alive(pid)


def test_a_shutdown_leaving_containers_running_during_a_cold_start(daemon: Daemon) -> None:
    # Launches under way finish and are handed over, the others are started by the next
    # nsvisord: each container once, and no internal error (a launch that ended after
    # the exit watcher closed was one, seen by scripts/soak.py).
    names = [f"c{i:02d}" for i in range(30)]
    daemon.write_config("".join(f'[containers.{{p}}-{n}]\ncommand = ["/bin/sleep", "1000"]\n'
                                f'startsecs = 0\n\n' for n in names))
    daemon.start()
    wait_for(lambda: (daemon.tmp / "nsvisor.sock").exists() and
             daemon.api("POST", "/v1/shutdown", {"leave_running": True})[0] == 200, 15,
             "the shutdown request taken")
    assert daemon.proc.wait(30) == 0
    daemon.start()
    wait_for(lambda: len(daemon.events("started")) == 2, 15, "the second nsvisord up")
    pids = {n: daemon.wait_state(n, "RUNNING", timeout=30)["pid"] for n in names}
    for n in names:
        with open(f"/sys/fs/cgroup/pids/nsvisor/{daemon.name(n)}/cgroup.procs") as f:
            inits = [p for p in f.read().split() if _comm(int(p)) == "nsv-init"]
        assert inits == [str(pids[n])], n
    assert "internal error" not in daemon.log_text() and "Traceback" not in daemon.log_text()
    assert daemon.stop() == 0


def test_daemon_as_pid1_reaps_orphans(daemon: Daemon, tmp_path: Path) -> None:
    daemon.write_config('[containers.{p}-x]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    # nsvisord as pid 1 of a fresh PID namespace (with its own /proc).
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m",
         "supervisor.daemon.main", "-c", str(daemon.config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(daemon.stderr_path, "a"))  # noqa: SIM115
    try:
        daemon.wait_state("x", "RUNNING")
        ns_pid = wait_for(lambda: _child_of(proc.pid), 10, "nsvisord inside unshare")
        # Make orphans inside its PID namespace: they are re-parented to nsvisord.
        subprocess.run(["nsenter", "-t", str(ns_pid), "-p", "-m", "--", "/bin/sh", "-c",
                        "for i in 1 2 3 4 5; do (sleep 0.1 &) ; done"], check=True, timeout=10)
        # Gone once they exited and nsvisord reaped them (a zombie keeps its comm).
        wait_for(lambda: not [p for p in _children(ns_pid) if _comm(p) == "sleep"], 10,
                 "the orphans reaped")
        assert alive(ns_pid)
    finally:
        # nsvisord itself: unshare ignores SIGTERM while it waits for its child.
        inner = _child_of(proc.pid)
        if inner is not None:
            os.kill(inner, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _child_of(pid: int) -> int | None:
    kids = _children(pid)
    return kids[0] if kids else None


def test_containers_are_in_their_own_session(daemon: Daemon) -> None:
    daemon.write_config('[containers.{p}-s]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    daemon.start()
    pid = daemon.wait_state("s", "RUNNING")["pid"]
    assert os.getsid(pid) != os.getsid(daemon.proc.pid)


def test_sigusr2_reopens_the_log_file(daemon: Daemon, tmp_path: Path) -> None:
    log_file = tmp_path / "nsvisord.json"
    daemon.write_config('[containers.{p}-l]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    daemon.start("--log-file", str(log_file))
    daemon.wait_state("l", "RUNNING")
    wait_for(lambda: log_file.exists() and '"started"' in log_file.read_text(), 10)
    rotated = tmp_path / "nsvisord.json.1"
    log_file.rename(rotated)  # what logrotate does
    daemon.signal(signal.SIGUSR2)
    wait_for(lambda: log_file.exists() and "log file reopened" in log_file.read_text(), 10,
             "a fresh log file")
    assert daemon.stop() == 0
    assert '"all stopped"' in log_file.read_text()
    assert '"all stopped"' not in rotated.read_text()


def _always_restarted_a(daemon: Daemon) -> int:
    """Config: container "a", restarted at once whenever it dies; the metrics port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "1000"]\n'
                        'startsecs = 0\nrestart = "always"\n'
                        'backoff = { initial = "1ms", factor = 1.0, max = "1ms" }\n',
                        metrics_listen=f"127.0.0.1:{port}")
    return port


def test_a_log_reader_that_goes_away_does_not_stop_supervision(daemon: Daemon) -> None:
    # `nsvisord | head`, a journal that died: every later log line meets EPIPE. It used
    # to end nsvisord at its next line, leaving the containers unsupervised.
    port = _always_restarted_a(daemon)
    r, w = os.pipe()
    try:
        daemon.start(stderr=w)
    finally:
        os.close(w)
    first = daemon.wait_state("a", "RUNNING")
    os.close(r)  # the reader goes away
    os.kill(_children(first["pid"])[0], signal.SIGKILL)  # logged: exited, state changes
    again = wait_for(lambda: (st := daemon.state("a")).get("state") == "RUNNING"
                     and st.get("pid") != first["pid"] and st, 10, "a restart")
    assert daemon.proc.poll() is None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        dropped = [line for line in resp.read().decode().splitlines()
                   if line.startswith("nsvisor_log_lines_dropped_total ")]
    assert len(dropped) == 1 and float(dropped[0].split()[1]) >= 3  # exited, 2 states
    assert daemon.stop() == 0  # a graceful stop, every line of it into the broken pipe
    assert not alive(first["pid"]) and not alive(again["pid"])
    cgroups = [p for root in ("/sys/fs/cgroup/pids/nsvisor", "/sys/fs/cgroup/nsvisor")
               if os.path.isdir(root) for p in os.listdir(root)
               if p.startswith(daemon.prefix + "-")]
    assert cgroups == []


def test_a_log_reader_that_stalls_does_not_stop_supervision(daemon: Daemon) -> None:
    # journald stuck, `nsvisord 2>&1 | less` left at a prompt: a full pipe nobody
    # drains. nsvisord used to block in its next log write, supervising nothing and
    # answering no one until the reader woke up.
    port = _always_restarted_a(daemon)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # a page: full after ~20 lines
    received: list[bytes] = []
    try:
        daemon.start(stderr=w)
        os.close(w)
        w = -1
        pid = daemon.wait_state("a", "RUNNING")["pid"]
        for _ in range(15):  # each restart logs 3 lines: the pipe is full
            os.kill(_children(pid)[0], signal.SIGKILL)
            pid = wait_for(lambda old=pid: (st := daemon.state("a")).get("state") == "RUNNING"
                           and st.get("pid") != old and st["pid"], 10, "a restart")
        # Full (a line is written whole or waits): the writer stalls meanwhile.
        received.append(os.read(r, 8192))
        assert len(received[0]) > 4096 - 300
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert b"nsvisor_container_restarts_total" in resp.read()
        reading = threading.Thread(target=lambda: received.append(_read_to_end(r)))
        reading.start()  # the reader wakes up: what was queued follows
        assert daemon.stop() == 0
        reading.join(15)
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)
    lines = b"".join(received).decode().splitlines()
    events = [json.loads(line)["event"] for line in lines]  # every line whole
    assert events.count("exited") >= 15 and events[-1] == "exit"


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_sigusr2_with_the_log_path_gone_keeps_the_old_file(daemon: Daemon,
                                                         tmp_path: Path) -> None:
    logs = tmp_path / "daemon-logs"
    logs.mkdir()
    daemon.write_config('[containers.{p}-l]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    daemon.start("--log-file", str(logs / "nsvisord.json"))
    daemon.wait_state("l", "RUNNING")
    moved = tmp_path / "daemon-logs.old"
    logs.rename(moved)  # the directory is gone from the path: the reopen cannot work
    daemon.signal(signal.SIGUSR2)
    old = moved / "nsvisord.json"
    wait_for(lambda: "log file not reopened" in old.read_text(), 10, "a warning")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert '"all stopped"' in old.read_text()


def test_limits_apply_and_an_oom_kill_is_recognised(daemon: Daemon) -> None:
    daemon.write_config(
        '[containers.{p}-hog]\n'
        'command = ["/usr/bin/python3", "-c", "import time; time.sleep(0.3); '
        'x = bytearray(200 * 2**20); time.sleep(5)"]\n'
        'startsecs = "100ms"\nrestart = "on-failure"\nbackoff = { initial = "100ms" }\n'
        'limits = { memory = "64M", cpus = 0.5, pids = 50 }\n')
    daemon.start()
    daemon.wait_state("hog", "RUNNING")
    cg = f"/sys/fs/cgroup/%s/nsvisor/{daemon.name('hog')}/%s"
    with open(cg % ("memory", "memory.limit_in_bytes")) as f:
        assert int(f.read()) == 64 * 2**20
    with open(cg % ("pids", "pids.max")) as f:
        assert f.read().strip() == "50"
    with open(cg % ("cpu", "cpu.cfs_quota_us")) as f:
        assert int(f.read()) == 50_000
    exited = wait_for(lambda: daemon.events("exited", "hog"), 20, "the OOM kill")
    assert exited[0]["status"] == "OOMKilled"
    restarted = wait_for(lambda: (s := daemon.state("hog")).get("restarts", 0) >= 1 and s, 20)
    assert restarted["last_exit_reason"] == "OOMKilled"
    assert restarted["last_exit_code"] == 137


def test_logs_are_rotated_and_every_line_kept(daemon: Daemon) -> None:
    daemon.write_config(
        '[containers.{p}-talk]\n'
        'command = ["/bin/sh", "-c", "seq 1 30000; echo done >&2"]\n'
        'startsecs = 0\nrestart = "no"\nlog = { max_bytes = "32K", backups = 20 }\n')
    daemon.start()
    daemon.wait_state("talk", "EXITED")
    log_dir, name = daemon.log_dir, daemon.name("talk")
    files = sorted(log_dir.glob(f"{name}.out.log.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(files) >= 5  # 170 KiB of output in 32 KiB files
    text = "".join(p.read_text() for p in [*files, log_dir / f"{name}.out.log"])
    assert text.split() == [str(i) for i in range(1, 30001)]  # in order, none lost
    assert all(p.stat().st_size <= 32 * 1024 for p in files)
    assert (log_dir / f"{name}.err.log").read_text() == "done\n"


def test_output_flows_while_the_daemon_is_down(daemon: Daemon) -> None:
    daemon.write_config(
        '[containers.{p}-steady]\n'
        'command = ["/bin/sh", "-c", '
        '"i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo line $i; sleep 0.05; done"]\n'
        'startsecs = 0\nrestart = "no"\n')
    daemon.start()
    pid = daemon.wait_state("steady", "RUNNING")["pid"]
    daemon.crash()  # kill -9: nobody reads anything from the daemon's side now
    log = daemon.log_dir / f"{daemon.name('steady')}.out.log"
    wait_for(lambda: not alive(pid), 20, "the workload to finish on its own")
    lines = log.read_text().splitlines()
    assert lines == [f"line {i}" for i in range(1, 61)]
    daemon.start()
    exited = wait_for(lambda: daemon.events("exited while nsvisord was down", "steady"), 10)
    assert exited[0]["status"] == "exit status 0"  # no SIGPIPE, no error


def test_a_stale_state_dir_is_not_trusted(daemon: Daemon) -> None:
    """State files naming pids that now belong to another process, or to nobody, or that
    make no sense: nothing is adopted, nothing foreign is touched, all start afresh."""
    daemon.write_config(
        '[containers.{p}-reused]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
        '[containers.{p}-gone]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n\n'
        '[containers.{p}-garbled]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    daemon.start()
    old = {n: daemon.wait_state(n, "RUNNING")["pid"] for n in ("reused", "gone", "garbled")}
    daemon.crash()
    for pid in old.values():  # the containers die while no daemon watches
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in old.values()), 10)
    stranger = subprocess.Popen(["/bin/sleep", "60"])
    try:
        states = daemon.state_dir / "containers"
        reused = json.loads((states / f"{daemon.name('reused')}.json").read_text())
        reused["pid"] = stranger.pid  # as if the kernel had given its pid to another process
        (states / f"{daemon.name('reused')}.json").write_text(json.dumps(reused))
        garbled = json.loads((states / f"{daemon.name('garbled')}.json").read_text())
        garbled["policy"] = {"version": 1, "state": "RUNNING", "process_alive": True}
        (states / f"{daemon.name('garbled')}.json").write_text(json.dumps(garbled))
        daemon.start()
        for name in ("reused", "gone", "garbled"):
            fresh = wait_for(lambda n=name: (s := daemon.state(n)).get("state") == "RUNNING"
                             and s.get("pid") not in (stranger.pid, old[n]) and s, 15, name)
            assert fresh["pid"]
        assert stranger.poll() is None, "the daemon touched a process that is not its own"
        assert not daemon.events("re-adopted")
    finally:
        stranger.kill()
        stranger.wait(10)


def test_a_state_saved_before_a_reboot_names_no_process(daemon: Daemon) -> None:
    """After a reboot the same pid and start time may well be another process's (boot
    order is much the same every time): with a state_dir on disk, nsvisord adopted such
    a stranger as a container, or SIGKILLed it as one removed from the config."""
    daemon.write_config(
        '[containers.{p}-rebooted]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n')
    daemon.start()
    old = daemon.wait_state("rebooted", "RUNNING")["pid"]
    assert daemon.stop() == 0
    strangers = [subprocess.Popen(["/bin/sleep", "60"]) for _ in range(2)]
    try:
        states = daemon.state_dir / "containers"
        saved = json.loads((states / f"{daemon.name('rebooted')}.json").read_text())
        assert "boot_id" in saved
        for name, stranger in zip(("rebooted", "removed"), strangers, strict=True):
            with open(f"/proc/{stranger.pid}/stat") as f:
                start = int(f.read().rsplit(")", 1)[1].split()[19])
            saved.update(pid=stranger.pid, pid_start=start, boot_id="0" * 32)
            saved["policy"]["state"], saved["policy"]["process_alive"] = "RUNNING", True
            (states / f"{daemon.name(name)}.json").write_text(json.dumps(saved))
        daemon.start()
        fresh = wait_for(lambda: (st := daemon.state("rebooted")).get("state") == "RUNNING"
                         and st.get("pid") not in (old, strangers[0].pid) and st, 15)
        assert fresh["pid"]
        assert not daemon.events("re-adopted")
        assert daemon.events("state saved before a reboot: not re-adopted", "rebooted")
        assert not (states / f"{daemon.name('removed')}.json").exists()
        assert daemon.stop() == 0
        assert [s.poll() for s in strangers] == [None, None], "a stranger was touched"
    finally:
        for stranger in strangers:
            stranger.kill()
            stranger.wait(10)


def test_readopted_containers_keep_their_id_range(daemon: Daemon) -> None:
    one = '[containers.{p}-a]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
    daemon.write_config(one)
    daemon.start()
    a = daemon.wait_state("a", "RUNNING")["pid"]
    daemon.crash()
    daemon.write_config(one + '\n[containers.{p}-b]\ncommand = ["/bin/sleep", "1000"]\n'
                              'startsecs = 0\n')
    daemon.start()
    b = daemon.wait_state("b", "RUNNING")["pid"]
    assert daemon.state("a")["pid"] == a

    def outside(pid: int) -> int:
        with open(f"/proc/{pid}/uid_map") as f:
            return int(f.read().split()[1])

    assert abs(outside(a) - outside(b)) >= 65536, "two containers share a uid range"
