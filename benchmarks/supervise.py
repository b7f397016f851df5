"""Supervision cost: nsvisord side by side with supervisord 4.3.0, N programs each, one run.

    sudo .venv/bin/python benchmarks/supervise.py [--n 200] [--json]

Both daemons supervise N equivalent programs, ``/bin/sleep 1000``, restarted at once when
they die (supervisord: ``startsecs=0``, ``autorestart=true``; nsvisord: ``startsecs = 0``,
``restart = "always"``, backoff 1 ms, the smallest it accepts: a zero ``initial`` is
rejected by the config). Each nsvisord container keeps the default isolation, all seven
namespaces; a second nsvisord pass drops the user namespace (``--no-variant`` skips it).
The daemons run one after the other, never together, and each is measured for:

1. cold start: from launching the daemon to every program RUNNING; the polled supervisord
   and nsvisord are cold-started ``--cold-runs`` times (3), alternating, and the table
   compares their medians;
2. crash to RUNNING: SIGKILL one program's workload 20 times (20 programs), to the
   replacement RUNNING; the median;
3. idle cost with all N running: the daemon's RSS; the PSS of the daemon and its fork
   server together (the fork server shares most of its pages with the containers' inits,
   so adding RSSes would count those pages twice); CPU over 10 s (utime+stime, % of one
   core).

Times come from each daemon's own log lines (supervisord's log file, nsvisord's JSON
lines on stderr), so polling does not add to them; the bench confirms each result through
the daemon's own view (supervisord's XML-RPC on its unix socket, nsvisord's state files).
supervisord is driven as a subprocess from its own venv (our package is also called
``supervisor``), created on first use at ``--sv-venv`` (outside the repo) with pip.
nsvisor is byte-compiled first, as pip compiles supervisord; nsvisord keeps its state
files under /run, where its default ``state_dir`` is (a tmpfs on a systemd host; this
VM's /run is on its root ext4), its logs in the temp dir.

At the end every daemon is stopped with SIGTERM (SIGKILL after a timeout) and the run
checks that nothing it started is left: processes (by pid and start time, by supervisord's
environment marker, by nsvisor cgroup), cgroup dirs, the temp dirs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from benchlib import DEFAULT_SV_VENV, BenchError, ensure_supervisord

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_NS = ("mount", "uts", "ipc", "pid", "net", "user", "cgroup")
CRASHES = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
START_TIMEOUT = 180.0  # cold start of N programs
RESTART_TIMEOUT = 10.0  # one crash to RUNNING
STOP_TIMEOUT = 90.0  # graceful stop of a daemon and its N programs
SETTLE = 11.0  # before the idle window: past any crash-test follow-up (cgroup rmdir retries 5 s)
RUN_DIR = "/run"  # where nsvisord's default state_dir is
TARGET = {"cold": 1.0, "crash": 3.0, "rss": 1.0, "idle_cpu_pct": 0.5}
# supervisord's WARN/CRIT lines that this bench causes on purpose: not problems.
SV_NOISE = ("running without any HTTP authentication checking",
            "(terminated by SIGKILL; not expected)", "received SIGTERM indicating exit request",
            "(terminated by SIGTERM)")


# ---------------------------------------------------------------- /proc


def _read(path: str, mode: str = "r") -> Any:
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if text else None


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return None if not fields or fields[0] in ("Z", "X") else int(fields[19])


def cpu_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else None


def rss_kib(pid: int) -> int | None:
    text = _read(f"/proc/{pid}/statm")
    return int(text.split()[1]) * PAGE_KIB if text else None


def pss_kib(pid: int) -> int | None:
    text = _read(f"/proc/{pid}/smaps_rollup") or ""
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match[1]) if match else None


def busy_ticks() -> int:
    """Clock ticks all CPUs spent not idle since boot (/proc/stat)."""
    values = [int(x) for x in (_read("/proc/stat") or "cpu 0").splitlines()[0].split()[1:]]
    return sum(values) - sum(values[3:5])  # minus idle and iowait


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        out += [int(p) for p in (_read(task) or "").split()]
    return out


def comm(pid: int) -> str:
    return (_read(f"/proc/{pid}/comm") or "").strip()


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def alive_same(pid: int, started: int | None) -> bool:
    return started is not None and start_time(pid) == started


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             step: float = 0.002, check: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class LogTail:
    """The complete lines appended to a file since the last call."""

    def __init__(self, path: str) -> None:
        self.path, self.pos, self.rest = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        *done, self.rest = (self.rest + data).split(b"\n")
        return [line.decode(errors="replace") for line in done]


# ---------------------------------------------------------------- contenders


class Contender:
    """One daemon with N programs, observed through its log; subclasses parse and probe."""

    label = ""

    def __init__(self, workdir: str, names: list[str], timeout: float) -> None:
        self.dir = workdir
        self.names = names
        self.timeout = timeout
        self.log_path = os.path.join(workdir, "daemon.log")
        self.tail = LogTail(self.log_path)
        self.watching: str | None = None
        self.proc: subprocess.Popen | None = None
        self.first_log: float | None = None
        self.spawned: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
        self.running: dict[str, list[float]] = {n: [] for n in names}
        self.exited: dict[str, list[float]] = {n: [] for n in names}
        self.problems: list[str] = []
        self.problem_count = 0
        self.seen: dict[int, int | None] = {}  # every pid we saw: its start time
        self.result: dict[str, Any] = {"label": self.label}

    # subclass interface
    def command(self) -> list[str]:
        raise NotImplementedError

    def parse(self, line: str) -> None:
        raise NotImplementedError

    def kill_target(self, name: str) -> int:
        raise NotImplementedError

    def confirm_running(self, names: list[str], not_pids: dict[str, int]) -> None:
        raise NotImplementedError

    def daemon_pids(self) -> dict[str, int]:
        assert self.proc is not None
        return {"daemon": self.proc.pid}

    def leftovers(self) -> list[int]:
        return [p for p, st in self.seen.items() if alive_same(p, st)]

    def leftover_dirs(self) -> list[str]:
        return []

    # common
    def note_pid(self, pid: int) -> None:
        if pid not in self.seen or self.seen[pid] is None:
            self.seen[pid] = start_time(pid)

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 10:
            self.problems.append(text[:300])

    def pump(self) -> None:
        for line in self.tail.lines():
            if line.strip():
                self.parse(line)

    def alive_check(self) -> None:
        self.pump()
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with {self.proc.returncode}; log "
                             f"{self.log_path}: {self.problems[-3:]}")

    def pid(self, name: str) -> int | None:
        return self.spawned[name][-1][1] if self.spawned[name] else None

    def output_path(self) -> str:
        return self.log_path

    def launch(self) -> None:
        log = open(self.output_path(), "ab")  # noqa: SIM115 - the child keeps it
        self.busy0 = busy_ticks()
        self.t0, self.t0_mono = time.time(), time.monotonic()
        self.proc = subprocess.Popen(self.command(), cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()

    def cold_start(self) -> None:
        self.launch()
        wait_for(lambda: all(self.running[n] for n in self.names), self.timeout,
                 f"{self.label}: {len(self.names)} programs RUNNING", step=0.005,
                 check=self.alive_check)
        observed = time.monotonic() - self.t0_mono
        busy = (busy_ticks() - self.busy0) / CLK_TCK / observed
        cpu = {k: cpu_ticks(p) for k, p in self.daemon_pids().items()}
        self.confirm_running(self.names, {})
        first_spawn = min(self.spawned[n][0][0] for n in self.names)
        last_spawn = max(self.spawned[n][0][0] for n in self.names)
        last_running = max(self.running[n][0] for n in self.names)
        assert self.first_log is not None
        self.result["cold"] = {
            "seconds": last_running - self.t0,
            "observed_seconds": observed,
            "startup_to_first_log": self.first_log - self.t0,
            "first_log_to_first_spawn": first_spawn - self.first_log,
            "first_to_last_spawn": last_spawn - first_spawn,
            "per_spawn_ms": (last_spawn - first_spawn) / max(1, len(self.names) - 1) * 1e3,
            "last_spawn_to_all_running": last_running - last_spawn,
            "cpu_seconds": {k: (v or 0) / CLK_TCK for k, v in cpu.items()},
            "machine_busy_cpus": busy,
        }

    def crashes(self, count: int, kill_init: bool = False) -> None:
        n = len(self.names)
        victims = [self.names[i * n // count] if n >= count else self.names[i % n]
                   for i in range(count)]
        latencies: list[float] = []
        phases: list[tuple[float, float, float]] = []  # kill to exit seen, to spawn, to RUNNING
        for name in victims:
            old = self.pid(name)
            assert old is not None
            target = old if kill_init else self.kill_target(name)
            self.watching = name
            self.note_pid(target)
            before = len(self.running[name])
            t_kill = time.time()
            os.kill(target, signal.SIGKILL)
            wait_for(lambda name=name, before=before, old=old:
                     len(self.running[name]) > before and self.pid(name) != old,
                     RESTART_TIMEOUT, f"{self.label}: {name} RUNNING again", step=0.001,
                     check=self.alive_check)
            latencies.append((self.running[name][-1] - t_kill) * 1e3)
            exited = next((t for t in self.exited[name] if t >= t_kill - 0.002), t_kill)
            spawned = self.spawned[name][-1][0]
            phases.append((exited - t_kill, spawned - exited, self.running[name][-1] - spawned))
            self.confirm_running([name], {name: old})
            time.sleep(0.1)  # let the restart's follow-up work finish before the next kill
        ordered = sorted(latencies)
        self.result["crash"] = {
            "median_ms": statistics.median(ordered), "min_ms": ordered[0],
            "p90_ms": ordered[int(0.9 * (len(ordered) - 1))], "max_ms": ordered[-1],
            "all_ms": [round(x, 2) for x in latencies],
            "killed": "the container's init" if kill_init else self.killed_what,
            "phases_median_ms": {
                k: statistics.median(p[i] for p in phases) * 1e3
                for i, k in enumerate(("kill_to_exit_logged", "exit_to_spawned",
                                       "spawned_to_running"))},
        }

    killed_what = "the program's process"

    def idle(self, seconds: float) -> None:
        pids = self.daemon_pids()
        time.sleep(SETTLE)
        before = {k: cpu_ticks(p) for k, p in pids.items()}
        t = time.monotonic()
        time.sleep(seconds)
        after = {k: cpu_ticks(p) for k, p in pids.items()}
        elapsed = time.monotonic() - t
        self.alive_check()
        cpu = {k: ((after[k] or 0) - (before[k] or 0)) / CLK_TCK / elapsed * 100 for k in pids}
        rss = {k: (rss_kib(p) or 0) / 1024 for k, p in pids.items()}
        pss = {k: (pss_kib(p) or 0) / 1024 for k, p in pids.items()}
        self.result["idle"] = {
            "seconds": elapsed, "pids": pids,
            "cpu_pct": cpu, "cpu_pct_total": sum(cpu.values()),
            "rss_mib": rss, "rss_mib_total": sum(rss.values()),
            "pss_mib": pss, "pss_mib_total": sum(pss.values()),
        }

    def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        pids: dict[str, int] = {}
        with contextlib.suppress(BenchError):
            pids = self.daemon_pids() if self.proc.poll() is None else {}
        for p in pids.values():
            self.note_pid(p)
        t = time.monotonic()
        how = "SIGTERM"
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            how = f"SIGKILL after {STOP_TIMEOUT:g} s"
            self.proc.kill()
            self.proc.wait(10)
        self.pump()
        self.result["stop"] = {"seconds": time.monotonic() - t, "how": how,
                               "exit_code": self.proc.returncode}

    def sweep(self) -> dict[str, Any]:
        """After stop: what is left of this daemon; kill it (by pid) and say so."""
        with contextlib.suppress(BenchError):
            wait_for(lambda: not self.leftovers(), 5.0, "nothing left", step=0.05)
        left = self.leftovers()
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        dirs = self.leftover_dirs()
        for d in dirs:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        out = {"processes_left": left, "dirs_left": dirs,
               "log_problems": self.problem_count, "log_problem_samples": self.problems}
        self.result["cleanup"] = out
        return out


class Supervisord(Contender):
    label = "supervisord"
    LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) (.*)")
    SPAWNED = re.compile(r"spawned: '([^']+)' with pid (\d+)")
    RUNNING = re.compile(r"success: (\S+) entered RUNNING state")
    EXITED = re.compile(r"exited: (\S+) \(")

    def __init__(self, workdir: str, names: list[str], timeout: float, venv: str,
                 polled: bool = False) -> None:
        super().__init__(workdir, names, timeout)
        self.venv = venv
        self.polled = polled
        if polled:
            self.label = self.result["label"] = "supervisord (polled)"
        self.out_path = os.path.join(workdir, "supervisord.out")
        self._proxy: Any = None
        self.sock = os.path.join(workdir, "sv.sock")
        self.conf = os.path.join(workdir, "supervisord.conf")
        self.marker = ("SUPERVISOR_PROCESS_NAME=" + names[0].rsplit("-", 1)[0]).encode()
        logs = os.path.join(workdir, "childlogs")
        os.makedirs(logs)
        parts = [
            f"[unix_http_server]\nfile={self.sock}\nchmod=0700\n",
            f"[supervisord]\nlogfile={self.log_path}\npidfile={workdir}/supervisord.pid\n"
            f"logfile_maxbytes=0\nchildlogdir={logs}\nnodaemon=true\nuser=root\n"
            "loglevel=info\n"
            f"minfds={max(1024, 8 * len(names) + 64)}\n",
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
            f"[supervisorctl]\nserverurl=unix://{self.sock}\n",
        ]
        parts += [f"[program:{n}]\ncommand=/bin/sleep 1000\nstartsecs=0\nautorestart=true\n"
                  for n in names]
        with open(self.conf, "w") as f:
            f.write("\n".join(parts))

    def command(self) -> list[str]:
        return [os.path.join(self.venv, "bin", "supervisord"), "-n", "-c", self.conf]

    def output_path(self) -> str:
        return self.out_path  # with -n it also copies its log to stdout

    def alive_check(self) -> None:
        super().alive_check()
        if self.polled:  # what an XML-RPC client polling for the state does to supervisord
            with contextlib.suppress(OSError, xmlrpc.client.Error, http.client.HTTPException):
                if self.watching:
                    self.rpc().supervisor.getProcessInfo(self.watching)
                else:
                    self.rpc().supervisor.getAllProcessInfo()

    def parse(self, line: str) -> None:
        match = self.LINE.match(line)
        if not match:
            self.problem(line)
            return
        ts = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        level, msg = match[2], match[3]
        if self.first_log is None:
            self.first_log = ts
        if level in ("CRIT", "ERRO", "WARN") and not any(s in msg for s in SV_NOISE):
            self.problem(line)
        if m := self.SPAWNED.search(msg):
            if m[1] in self.spawned:
                self.spawned[m[1]].append((ts, int(m[2])))
                self.note_pid(int(m[2]))
        elif (m := self.RUNNING.search(msg)) and m[1] in self.running:
            self.running[m[1]].append(ts)
        elif (m := self.EXITED.search(msg)) and m[1] in self.exited:
            self.exited[m[1]].append(ts)

    def rpc(self) -> Any:
        if self._proxy is not None:
            return self._proxy
        sock_path = self.sock

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(30)
                s.connect(sock_path)
                self.sock = s

        class Transport(xmlrpc.client.Transport):
            def make_connection(self, host: Any) -> http.client.HTTPConnection:
                return Conn("localhost", timeout=30)

        self._proxy = xmlrpc.client.ServerProxy("http://localhost", transport=Transport())
        return self._proxy

    def confirm_running(self, names: list[str], not_pids: dict[str, int]) -> None:
        """Through XML-RPC: RUNNING, with the pid of the log's last "spawned"."""
        info = {p["name"]: p for p in self.rpc().supervisor.getAllProcessInfo()}
        for n in names:
            p = info[n]
            if p["statename"] != "RUNNING" or p["pid"] != self.pid(n) or \
                    p["pid"] == not_pids.get(n):
                raise BenchError(f"supervisord: {n}: XML-RPC says {p['statename']} pid "
                                 f"{p['pid']}, its log says RUNNING pid {self.pid(n)}")
        if len(names) > 1:  # once, after the cold start: supervisorctl agrees too
            t = time.monotonic()
            out = subprocess.run([os.path.join(self.venv, "bin", "supervisorctl"), "-c",
                                  self.conf, "status"], capture_output=True, text=True,
                                 timeout=60)
            running = sum(" RUNNING " in line for line in out.stdout.splitlines())
            self.result["supervisorctl_status_seconds"] = time.monotonic() - t
            if running != len(names):
                raise BenchError(f"supervisorctl status: {running} RUNNING of {len(names)}")

    def kill_target(self, name: str) -> int:
        pid = self.pid(name)
        assert pid is not None
        return pid

    def leftovers(self) -> list[int]:
        left = set(super().leftovers())
        for p in all_pids():  # anything still carrying supervisord's marker for our names
            env = _read(f"/proc/{p}/environ", "rb") or b""
            if self.marker in env and p != os.getpid():
                left.add(p)
        return sorted(left)


class Nsvisord(Contender):
    label = "nsvisord"
    killed_what = "the container's workload (the child of its init)"

    def __init__(self, workdir: str, names: list[str], timeout: float, state_dir: str,
                 namespaces: tuple[str, ...] | None = None, label: str = "nsvisord") -> None:
        super().__init__(workdir, names, timeout)
        self.label = self.result["label"] = label
        self.prefix = names[0].rsplit("-", 1)[0]
        self.state_dir = state_dir
        self.conf = os.path.join(workdir, "nsvisor.toml")
        self.zygote: int | None = None
        ns = "" if namespaces is None else \
            "namespaces = [" + ", ".join(f'"{x}"' for x in namespaces) + "]\n"
        parts = [f'[supervisor]\nsocket = "{workdir}/nsvisor.sock"\n'
                 f'state_dir = "{self.state_dir}"\nlog_dir = "{workdir}/logs"\n'
                 'metrics_listen = ""\n']
        parts += [f'[containers.{n}]\ncommand = ["/bin/sleep", "1000"]\nstartsecs = 0\n'
                  'restart = "always"\n'
                  'backoff = { initial = "1ms", factor = 1.0, max = "1ms" }\n' + ns
                  for n in names]
        with open(self.conf, "w") as f:
            f.write("\n".join(parts))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "supervisor.daemon.main", "-c", self.conf]

    def parse(self, line: str) -> None:
        try:
            item = json.loads(line)
            ts = datetime.datetime.fromisoformat(item["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            self.problem(line)
            return
        if self.first_log is None:
            self.first_log = ts
        if item.get("level") not in ("info", "debug"):
            self.problem(line)
        name, event = item.get("container"), item.get("event")
        if name not in self.spawned:
            return
        if event == "spawned":
            self.spawned[name].append((ts, int(item["pid"])))
            self.note_pid(int(item["pid"]))
        elif event == "state" and item.get("new") == "RUNNING":
            self.running[name].append(ts)
        elif event == "exited":
            self.exited[name].append(ts)

    def state(self, name: str) -> dict[str, Any]:
        text = _read(os.path.join(self.state_dir, "containers", f"{name}.json"))
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return {}

    def confirm_running(self, names: list[str], not_pids: dict[str, int]) -> None:
        """Through the state files: RUNNING, with the pid of the log's last "spawned"."""
        for n in names:
            s = self.state(n)
            if s.get("policy", {}).get("state") != "RUNNING" or s.get("pid") != self.pid(n) \
                    or s.get("pid") == not_pids.get(n):
                raise BenchError(f"nsvisord: {n}: state file says "
                                 f"{s.get('policy', {}).get('state')} pid {s.get('pid')}, "
                                 f"its log says RUNNING pid {self.pid(n)}")
        if len(names) > 1:  # remember every workload, to check it is gone at the end
            for n in names:
                for p in children(self.pid(n) or 0):
                    self.note_pid(p)

    def kill_target(self, name: str) -> int:
        init = self.pid(name)
        assert init is not None
        kids = wait_for(lambda: children(init), 5.0, f"{name}: the init's child")
        if len(kids) != 1 or comm(kids[0]) != "sleep":
            raise BenchError(f"{name}: init {init} has children {kids}, not one sleep")
        return kids[0]

    def daemon_pids(self) -> dict[str, int]:
        assert self.proc is not None
        if self.zygote is None:
            kids = [p for p in children(self.proc.pid) if comm(p) == "nsv-zygote"]
            if len(kids) != 1:
                raise BenchError(f"nsvisord: fork servers among its children: {kids}")
            self.zygote = kids[0]
            self.note_pid(self.zygote)
        return {"daemon": self.proc.pid, "fork server": self.zygote}

    def leftovers(self) -> list[int]:
        left = set(super().leftovers())
        mark = f"/nsvisor/{self.prefix}-"
        for p in all_pids():  # anything still in one of our containers' cgroups
            if mark in (_read(f"/proc/{p}/cgroup") or ""):
                left.add(p)
        return sorted(left)

    def leftover_dirs(self) -> list[str]:
        return sorted(glob.glob(f"/sys/fs/cgroup/*/nsvisor/{self.prefix}-*")
                      + glob.glob(f"/sys/fs/cgroup/nsvisor/{self.prefix}-*"))


# ---------------------------------------------------------------- setup and report


def run_contender(c: Contender, idle_secs: float, kill_init: bool,
                  cold_only: bool = False) -> dict[str, Any]:
    """Cold start, then (unless ``cold_only``) the crash test and the idle window; then
    stop the daemon and check that nothing of it is left."""
    try:
        c.cold_start()
        if not cold_only:
            c.crashes(CRASHES, kill_init=kill_init and isinstance(c, Nsvisord))
            if not getattr(c, "polled", False):
                c.idle(idle_secs)
    except BenchError as e:
        c.result["error"] = str(e)
    finally:
        c.stop()
        c.sweep()
    return c.result


def _get(r: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def rows_for(sv: dict[str, Any], svp: dict[str, Any] | None,
             ns: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows; ``svp``: the supervisord pass polled by an XML-RPC client."""

    def row(metric: str, path: tuple[str, ...], fmt: str, target: str = "",
            ok: Callable[[float, float], bool] | None = None,
            base: dict[str, Any] | None = sv) -> dict[str, Any]:
        a = _get(base, *path) if base is not None else None
        b = _get(ns, *path)
        a = a if isinstance(a, int | float) else None
        b = b if isinstance(b, int | float) else None
        ratio = b / a if a and b is not None else None
        met = None
        if ok is not None and b is not None:
            met = ok(b, ratio if ratio is not None else float("inf"))
        return {"metric": metric, "supervisord": a, "nsvisord": b, "ratio": ratio,
                "target": target, "met": met, "fmt": fmt}

    cold_ok = f"ratio <= {TARGET['cold']:g}"
    crash_ok = f"ratio <= {TARGET['crash']:g} (aim 1)"
    rows = [
        row("cold start to all RUNNING (s)", ("cold", "seconds"), ".3f", cold_ok,
            lambda b, r: r <= TARGET["cold"]),
    ]
    if svp is not None:
        rows.append(row("  the same, supervisord polled by XML-RPC (s) *", ("cold", "seconds"),
                        ".3f", cold_ok, lambda b, r: r <= TARGET["cold"], base=svp))
    rows += [
        row("  launch to first log line (s)", ("cold", "startup_to_first_log"), ".3f"),
        row("  first to last spawn (s)", ("cold", "first_to_last_spawn"), ".3f"),
        row("  daemon CPU until all RUNNING (s)", ("cold", "cpu_seconds", "daemon"), ".2f"),
        row(f"crash to RUNNING, median of {CRASHES} (ms)", ("crash", "median_ms"), ".1f",
            crash_ok, lambda b, r: r <= TARGET["crash"]),
    ]
    if svp is not None:
        rows += [
            row("  the same, supervisord polled by XML-RPC (ms)", ("crash", "median_ms"),
                ".1f", crash_ok, lambda b, r: r <= TARGET["crash"], base=svp),
            row("  p90, supervisord polled (ms)", ("crash", "p90_ms"), ".1f", base=svp),
        ]
    rows += [
        row("RSS, daemon (MiB)", ("idle", "rss_mib", "daemon"), ".1f",
            f"ratio <= {TARGET['rss']:g}", lambda b, r: r <= TARGET["rss"]),
        row("  RSS, fork server nsv-zygote (MiB)", ("idle", "rss_mib", "fork server"), ".1f",
            base=None),
        row("  PSS, daemon + fork server (MiB)", ("idle", "pss_mib_total"), ".1f",
            f"ratio <= {TARGET['rss']:g}", lambda b, r: r <= TARGET["rss"]),
        row("idle CPU over 10 s, % of one core", ("idle", "cpu_pct_total"), ".2f",
            f"< {TARGET['idle_cpu_pct']:g} %", lambda b, r: b < TARGET["idle_cpu_pct"]),
        row("graceful stop of all (s)", ("stop", "seconds"), ".2f"),
    ]
    return rows


def table(rows: list[dict[str, Any]], ns_label: str) -> str:
    head = ["metric", "supervisord", ns_label, "ratio", "target", "met?"]
    body = []
    for r in rows:
        def num(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        body.append([r["metric"], num(r["supervisord"], r["fmt"]),
                     num(r["nsvisord"], r["fmt"]), num(r["ratio"], ".2f"), r["target"], met])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
             for line in [head, *body]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.*)$", _read("/proc/cpuinfo") or "", re.M)
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu": cpu[1] if cpu else "?", "python": platform.python_version(),
            "loadavg_before": (_read("/proc/loadavg") or "").split()[:3],
            "commit": _commit()}


def _commit() -> str:
    """The nsvisor tree measured: HEAD, "+dirty" when the work tree has changes."""
    try:
        head = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty=+dirty"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = ""
    return head or "?"


def mounts_under(path: str) -> list[str]:
    text = _read("/proc/self/mountinfo") or ""
    return [f.split()[4] for f in text.splitlines()
            if f.split()[4] == path or f.split()[4].startswith(path + "/")]


def compile_package() -> None:
    """Byte-compile nsvisor as pip does for an installed package (supervisord's venv got
    its .pyc files from pip): an editable install would otherwise compile at every start
    when PYTHONDONTWRITEBYTECODE is set."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "supervisor")],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="programs per daemon (200)")
    parser.add_argument("--idle-secs", type=float, default=10.0, help="idle window (10 s)")
    parser.add_argument("--sv-venv", default=DEFAULT_SV_VENV,
                        help=f"supervisord's venv, created if missing ({DEFAULT_SV_VENV})")
    parser.add_argument("--no-variant", action="store_true",
                        help="skip the nsvisord pass without the user namespace")
    parser.add_argument("--kill-init", action="store_true",
                        help="crash test: SIGKILL the container's init, not its workload")
    parser.add_argument("--cold-runs", type=int, default=3,
                        help="cold starts of the polled supervisord and of nsvisord, "
                             "alternating; the table takes their medians (3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("supervise.py: must run as root (namespaces, cgroups)", file=sys.stderr)
        return 1
    if args.n < 1:
        parser.error("--n must be >= 1")
    if args.cold_runs < 1:
        parser.error("--cold-runs must be >= 1")
    info = machine()
    info["supervisord"] = ensure_supervisord(args.sv_venv, args.json)
    prefix = f"bench{secrets.token_hex(2)}"
    compile_package()
    tmp = tempfile.mkdtemp(prefix=f"nsv-supervise-{prefix}-")
    # nsvisord's state files where its default state_dir (/run/nsvisor) has them.
    run_tmp = tempfile.mkdtemp(prefix=f"nsv-supervise-{prefix}-", dir=RUN_DIR)
    timeout = START_TIMEOUT + args.n * 0.2
    results: dict[str, Any] = {"n": args.n, "machine": info, "prefix": prefix,
                               "sv_venv": args.sv_venv}
    cold_runs: list[tuple[str, dict[str, Any]]] = []  # the extra cold starts
    passes: list[tuple[str, Callable[[str], Contender]]] = [
        ("supervisord", lambda d: Supervisord(
            d, [f"{prefix}s-{i:03d}" for i in range(args.n)], timeout, args.sv_venv)),
        ("supervisord_polled", lambda d: Supervisord(
            d, [f"{prefix}p-{i:03d}" for i in range(args.n)], timeout, args.sv_venv,
            polled=True)),
        ("nsvisord", lambda d: Nsvisord(
            d, [f"{prefix}n-{i:03d}" for i in range(args.n)], timeout,
            os.path.join(run_tmp, "nsvisord"))),
    ]
    if not args.no_variant:
        passes.append(("nsvisord_no_userns", lambda d: Nsvisord(
            d, [f"{prefix}u-{i:03d}" for i in range(args.n)], timeout,
            os.path.join(run_tmp, "nsvisord_no_userns"),
            tuple(x for x in ALL_NS if x != "user"), "nsvisord (no userns)")))
    try:
        for key, make in passes:
            workdir = os.path.join(tmp, key)
            os.makedirs(workdir)
            if not args.json:
                print(f"{key}: N={args.n} ...", file=sys.stderr)
            results[key] = run_contender(make(workdir), args.idle_secs, args.kill_init)
        # More cold starts of the two the target compares, alternating, so that the ratio
        # is of medians: one cold start on a shared VM moves by tens of percent.
        for run in range(1, args.cold_runs):
            for key in ("supervisord_polled", "nsvisord"):
                workdir = os.path.join(tmp, f"{key}-cold{run}")
                os.makedirs(workdir)
                if not args.json:
                    print(f"{key}: cold start {run + 1} of {args.cold_runs} ...",
                          file=sys.stderr)
                names = [f"{prefix}{'qm'[key == 'nsvisord']}{run}-{i:03d}"
                         for i in range(args.n)]
                extra: Contender = (
                    Nsvisord(workdir, names, timeout, os.path.join(run_tmp, f"{key}-cold{run}"))
                    if key == "nsvisord" else
                    Supervisord(workdir, names, timeout, args.sv_venv, polled=True))
                cold_runs.append((key, run_contender(extra, 0, False, cold_only=True)))
    finally:
        left_mounts = mounts_under(tmp) + mounts_under(run_tmp)
        if not left_mounts:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(run_tmp, ignore_errors=True)
        results["cleanup"] = {
            "tmp": tmp, "tmp_removed": not os.path.exists(tmp) and not os.path.exists(run_tmp),
            "mounts_left": left_mounts,
            "processes_left": sorted({p for r in [*(results.get(k, {}) for k, _ in passes),
                                                   *(r for _, r in cold_runs)]
                                      for p in _get(r, "cleanup", "processes_left") or []}),
            "cgroup_dirs_left": sorted({d for r in [*(results.get(k, {}) for k, _ in passes),
                                                     *(r for _, r in cold_runs)]
                                        for d in _get(r, "cleanup", "dirs_left") or []}),
        }
    for key in ("supervisord_polled", "nsvisord"):
        cold = _get(results, key, "cold")
        if cold:
            runs = [cold["seconds"]] + [s for k, r in cold_runs if k == key
                                        if (s := _get(r, "cold", "seconds")) is not None]
            cold["first_run_seconds"] = cold["seconds"]
            cold["runs_seconds"] = runs
            cold["seconds"] = statistics.median(runs)
    sv = results["supervisord"]
    results["rows"] = {k: rows_for(sv, results.get("supervisord_polled"), results[k])
                       for k, _ in passes if k.startswith("nsvisord")}
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    print_report(results)
    return 0


def print_report(results: dict[str, Any]) -> None:
    info = results["machine"]
    print(f"supervise.py N={results['n']}  {info['date']}  {info['cpus']} x {info['cpu']}, "
          f"kernel {info['kernel']}, Python {info['python']}, supervisord "
          f"{info['supervisord']}, load before {' '.join(info['loadavg_before'])}, nsvisor "
          f"{info['commit']}")
    for key, rows in results["rows"].items():
        print()
        print(table(rows, results[key]["label"]))
    runs = {k: _get(results, k, "cold", "runs_seconds") for k in ("supervisord_polled", "nsvisord")}
    if all(runs.values()):
        print("\n* cold starts, alternating, medians in the table: supervisord polled "
              + " ".join(f"{x:.3f}" for x in runs["supervisord_polled"]) + " s; nsvisord "
              + " ".join(f"{x:.3f}" for x in runs["nsvisord"])
              + " s (supervisord alone and the other nsvisord passes: one run; "
              "the breakdown rows: each daemon's first run)")
    for key in ("supervisord", "supervisord_polled", *results["rows"]):
        r = results[key]
        if "error" in r:
            print(f"\n{r['label']}: ERROR: {r['error']}")
        cold, crash = r.get("cold", {}), r.get("crash", {})
        if cold:
            print(f"\n{r['label']} cold start: launch to first log line "
                  f"{cold['startup_to_first_log']:.3f} s, to first spawn "
                  f"{cold['first_log_to_first_spawn']:.3f} s, first to last spawn "
                  f"{cold['first_to_last_spawn']:.3f} s ({cold['per_spawn_ms']:.2f} ms/spawn), "
                  f"last spawn to all RUNNING {cold['last_spawn_to_all_running']:.3f} s; "
                  f"observed by polling {cold['observed_seconds']:.3f} s; busy CPUs "
                  f"{cold['machine_busy_cpus']:.2f} of {os.cpu_count()}; CPU time "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in cold["cpu_seconds"].items()))
        if crash:
            print(f"{r['label']} crash: killed {crash['killed']}; medians: kill to exit "
                  "logged {kill_to_exit_logged:.1f} ms, to spawned {exit_to_spawned:.1f} ms, "
                  "to RUNNING {spawned_to_running:.1f} ms; all (ms): ".format(
                      **crash["phases_median_ms"])
                  + " ".join(f"{x:.1f}" for x in crash["all_ms"]))
        cl = r.get("cleanup", {})
        if cl.get("log_problems"):
            print(f"{r['label']} log: {cl['log_problems']} warning/error lines, e.g.:")
            for line in cl["log_problem_samples"][:3]:
                print("   ", line)
    cl = results["cleanup"]
    ok = cl["tmp_removed"] and not cl["processes_left"] and not cl["cgroup_dirs_left"]
    print(f"\ncleanup: {'nothing left' if ok else 'LEFTOVERS'} (temp dir removed: "
          f"{cl['tmp_removed']}, processes left and killed: {cl['processes_left']}, cgroup "
          f"dirs left: {cl['cgroup_dirs_left']}, mounts: {cl['mounts_left']})")


if __name__ == "__main__":
    sys.exit(main())
