"""Run a real nsvisord for a test, observe it through its state files and JSON log lines,
and make sure nothing of it (processes, containers, cgroups) outlives the test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.runtime.reaper import DEFAULT_REAPER

from .conftest import process_table

CGROUP_ROOTS = [f"/sys/fs/cgroup/{c}/nsvisor" for c in ("memory", "pids", "cpu", "cpuacct",
                                                         "freezer")]


def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Daemon:
    def __init__(self, tmp: Path, prefix: str) -> None:
        self.tmp = tmp
        self.prefix = prefix
        self.config = tmp / "nsvisor.toml"
        self.state_dir = tmp / "state"
        self.log_dir = tmp / "log"
        self.proc: subprocess.Popen | None = None
        self.stderr_path = tmp / "nsvisord.log"
        self.seen_pids: set[int] = set()

    def name(self, base: str) -> str:
        return f"{self.prefix}-{base}"

    def write_config(self, containers: str, *, metrics_listen: str = "") -> None:
        """``containers``: TOML with ``{p}`` standing for this test's name prefix.
        ``metrics_listen``: the metrics endpoint's host:port (default: disabled)."""
        self.config.write_text(
            "[supervisor]\n"
            f'socket = "{self.tmp}/nsvisor.sock"\n'
            f'state_dir = "{self.state_dir}"\n'
            f'log_dir = "{self.log_dir}"\n'
            f'metrics_listen = "{metrics_listen}"\n\n' + containers.replace("{p}", self.prefix))

    def start(self, *extra: str, wrapper: tuple[str, ...] = (),
              stderr: int | None = None) -> subprocess.Popen:
        """Start nsvisord (``extra``: its options; ``wrapper``: a command that execs it,
        e.g. ``prlimit ... --``, so that ``proc.pid`` is still the daemon's; ``stderr``:
        an fd for its log instead of the file :meth:`events` reads)."""
        err = open(self.stderr_path, "a")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "supervisor.daemon.main", "-c", str(self.config),
             *extra],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err if stderr is None else stderr)
        err.close()
        return self.proc

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def crash(self) -> None:
        """kill -9: the containers must survive."""
        assert self.proc is not None
        self.remember_pids()
        self.proc.kill()
        self.proc.wait(10)

    # --- observation -------------------------------------------------------------

    def state(self, base: str) -> dict[str, Any]:
        path = self.state_dir / "containers" / f"{self.name(base)}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        flat = dict(data["policy"])
        flat["pid"] = data.get("pid")
        if flat["pid"]:
            self.seen_pids.add(flat["pid"])
        return flat

    def wait_state(self, base: str, state: str, timeout: float = 15) -> dict[str, Any]:
        return wait_for(lambda: (s := self.state(base)).get("state") == state and s,
                        timeout, f"{base} to be {state}")

    def events(self, event: str | None = None, container: str | None = None) -> list[dict]:
        out = []
        with contextlib.suppress(OSError), open(self.stderr_path) as f:
            for line in f:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if event and item.get("event") != event:
                    continue
                if container and item.get("container") != self.name(container):
                    continue
                out.append(item)
        return out

    def log_text(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def remember_pids(self) -> None:
        for path in (self.state_dir / "containers").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = json.loads(path.read_text())["pid"]
                if pid:
                    self.seen_pids.add(pid)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """Call the daemon's control API; returns (status, decoded JSON body)."""
        data = b"" if body is None else json.dumps(body).encode()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.tmp / "nsvisor.sock"))
            s.sendall(f"{method} {path} HTTP/1.1\r\nContent-Length: {len(data)}\r\n\r\n"
                      .encode() + data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        finally:
            s.close()
        head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), json.loads(payload) if payload.strip() else None

    # --- cleanup -----------------------------------------------------------------

    def _in_my_cgroups(self, pid: int) -> bool:
        try:
            return f"/nsvisor/{self.prefix}-" in Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.remember_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.remember_pids()
        # Inits a crashed daemon left behind: killed if in this test's cgroups, reaped if
        # they are ours. A pid in a state file may be another process's now, or a number
        # from another PID namespace (a daemon run inside one records the pids it sees).
        running = [pid for pid in self.seen_pids if self._in_my_cgroups(pid)]
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mine = {pid for pid, _state, ppid in process_table() if ppid == os.getpid()}
        left = running + [pid for pid in self.seen_pids if pid in mine]
        deadline = time.monotonic() + 10
        for pid in left:
            # Orphaned inits come to this process (the tests' runtime made it a
            # subreaper): reap them, else they stay zombies.
            while time.monotonic() < deadline:
                try:
                    if DEFAULT_REAPER.collect(pid) is not None:
                        break
                except ChildProcessError:
                    if not os.path.exists(f"/proc/{pid}"):
                        break
                time.sleep(0.01)
        for root in CGROUP_ROOTS:
            for d in Path(root).glob(f"{self.prefix}-*") if os.path.isdir(root) else ():
                # Whatever still runs in this test's cgroups is this test's, even what no
                # state file named (a container a buggy daemon lost track of).
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                for _ in range(100):
                    try:
                        d.rmdir()
                        break
                    except OSError:
                        time.sleep(0.05)
