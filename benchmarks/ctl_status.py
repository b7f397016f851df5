"""``nsvisorctl status`` against ``supervisorctl status``, 200 programs each, one run.

    sudo .venv/bin/python benchmarks/ctl_status.py [--n 200] [--runs 25] [--json]

nsvisord supervises N containers and supervisord 4.3.0 N programs, all ``/bin/sleep
1000`` with ``startsecs = 0``, both daemons running at the same time (state, logs and
sockets in one temp dir). Once every one is RUNNING, each command is run R times through
``subprocess.run`` (output captured, after 3 warm-ups), the commands taking turns so that
both see the same machine:

- ``nsvisorctl -s SOCK status`` and ``nsvisorctl -s SOCK --json status`` (the venv's
  entry-point script), and ``python -m supervisor.cli.main -s SOCK status``;
- ``supervisorctl -c CONF status`` (the entry-point script of its own venv);
- ``python -c pass`` of each venv, the interpreter's own start-up, for scale.

Every timed run must exit 0 and list N RUNNING lines (N objects for ``--json``).

Bytecode: this environment may set PYTHONDONTWRITEBYTECODE, and a CLI whose modules have
no ``.pyc`` compiles them on every run. So before timing, ``supervisor/cli`` (and the
package's ``__init__``) are compiled with compileall into their ``__pycache__`` (which
git ignores), supervisord's package likewise, and every timed command runs with
PYTHONDONTWRITEBYTECODE removed from its environment: both sides run from bytecode.

supervisord is installed with pip into its own venv outside the repo (``--sv-venv``,
created if missing; our import package is also called ``supervisor``, so supervisord
and supervisorctl only ever run as subprocesses of that venv).

At the end both daemons get SIGTERM (SIGKILL after a timeout); the run then kills, by
pid, any container init or program it saw that is still alive, and removes the temp dir.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import glob
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchlib import (
    DEFAULT_SV_VENV,
    BenchError,
    ensure_supervisord,
    in_container_of,
    summarize,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
WARMUP = 3
TARGET_RATIO = 0.5
START_TIMEOUT = 120.0
CMD_TIMEOUT = 60.0
RUN = secrets.token_hex(2)


# ---------------------------------------------------------------- set-up


def compile_bytecode(sv_venv: str) -> list[str]:
    """Bytecode for both CLIs' own modules, where an import would otherwise compile."""
    done = []
    ours = os.path.join(REPO, "supervisor")
    ok = compileall.compile_dir(os.path.join(ours, "cli"), quiet=1) and \
        compileall.compile_file(os.path.join(ours, "__init__.py"), quiet=1)
    done.append(f"supervisor/cli + supervisor/__init__.py: {'ok' if ok else 'FAILED'}")
    for pkg in glob.glob(os.path.join(sv_venv, "lib", "python*", "site-packages",
                                      "supervisor")):
        ok = compileall.compile_dir(pkg, quiet=1)
        done.append(f"supervisord's package: {'ok' if ok else 'FAILED'}")
    return done


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# ---------------------------------------------------------------- the daemons


class Nsvisord:
    def __init__(self, base: str, names: list[str]) -> None:
        self.dir = os.path.join(base, "nsvisord")
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "nsvisor.sock")
        self.state_dir = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "nsvisord.log")
        self.names = names
        self.conf = os.path.join(self.dir, "nsvisor.toml")
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()
        with open(self.conf, "w") as f:
            f.write(f'[supervisor]\nsocket = "{self.sock}"\nstate_dir = "{self.state_dir}"\n'
                    f'log_dir = "{self.dir}/logs"\nmetrics_listen = ""\n\n')
            for n in names:
                f.write(f'[containers.{n}]\ncommand = ["/bin/sleep", "1000"]\n'
                        "startsecs = 0\n\n")

    def start(self) -> None:
        with open(self.log_path, "a") as err:
            self.proc = subprocess.Popen(
                [os.path.join(VENV_BIN, "python"), "-m", "supervisor.daemon.main", "-c",
                 self.conf], cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    def api(self, path: str) -> Any:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(CMD_TIMEOUT)
        try:
            s.connect(self.sock)
            s.sendall(f"GET {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        finally:
            s.close()
        return json.loads(b"".join(chunks).partition(b"\r\n\r\n")[2])

    def running(self) -> int:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"nsvisord exited {self.proc.returncode}")
        try:
            rows = self.api("/v1/containers")
        except (OSError, ValueError):
            return 0
        for r in rows:
            if r.get("pid"):
                self.pids.add(r["pid"])
        return sum(r.get("state") == "RUNNING" for r in rows)

    def stop(self) -> int | None:
        with contextlib.suppress(BenchError):
            self.running()  # the last pids
        return _stop(self.proc)

    def problems(self) -> list[str]:
        """The daemon's warning and error lines (its log is JSON, one event a line)."""
        out = []
        with contextlib.suppress(OSError), open(self.log_path) as f:
            for line in f:
                with contextlib.suppress(ValueError, AttributeError):
                    e = json.loads(line)
                    if e.get("level") in ("warning", "error", "critical"):
                        out.append(f"{e.get('event')}: {e.get('error', '')}".strip())
        return out


class Supervisord:
    def __init__(self, base: str, names: list[str], venv: str) -> None:
        self.dir = os.path.join(base, "supervisord")
        os.makedirs(os.path.join(self.dir, "childlogs"))
        self.venv = venv
        self.sock = os.path.join(self.dir, "supervisor.sock")
        self.conf = os.path.join(self.dir, "supervisord.conf")
        self.log_path = os.path.join(self.dir, "supervisord.log")
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()
        parts = [
            f"[unix_http_server]\nfile={self.sock}\nchmod=0700\n",
            f"[supervisord]\nlogfile={self.log_path}\npidfile={self.dir}/supervisord.pid\n"
            f"childlogdir={self.dir}/childlogs\nnodaemon=true\nuser=root\nloglevel=info\n"
            f"minfds={max(1024, 8 * len(names) + 64)}\n",
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
            f"[supervisorctl]\nserverurl=unix://{self.sock}\n",
        ]
        parts += [f"[program:{n}]\ncommand=/bin/sleep 1000\nstartsecs=0\n" for n in names]
        with open(self.conf, "w") as f:
            f.write("\n".join(parts))

    def ctl(self) -> list[str]:
        return [os.path.join(self.venv, "bin", "supervisorctl"), "-c", self.conf]

    def start(self) -> None:
        with open(os.path.join(self.dir, "stdout.log"), "a") as out:
            self.proc = subprocess.Popen(
                [os.path.join(self.venv, "bin", "supervisord"), "-n", "-c", self.conf],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=clean_env())

    def running(self) -> int:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"supervisord exited {self.proc.returncode}")
        if not os.path.exists(self.sock):
            return 0
        out = subprocess.run([*self.ctl(), "status"], capture_output=True, text=True,
                             timeout=CMD_TIMEOUT)
        count = 0
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[1] == "RUNNING" and fields[2] == "pid":
                count += 1
                with contextlib.suppress(ValueError):
                    self.pids.add(int(fields[3].rstrip(",")))
        return count

    def stop(self) -> int | None:
        with contextlib.suppress(BenchError, OSError, subprocess.TimeoutExpired):
            self.running()
        return _stop(self.proc)


def _stop(proc: subprocess.Popen | None, timeout: float = 60) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)
    return proc.returncode


def wait_all(daemons: list[Any], n: int) -> float:
    t0 = time.monotonic()
    pending = list(daemons)
    while pending:
        pending = [d for d in pending if d.running() < n]
        if not pending:
            break
        if time.monotonic() - t0 > START_TIMEOUT:
            raise BenchError(f"not all {n} RUNNING after {START_TIMEOUT:.0f}s: "
                             + ", ".join(type(d).__name__ for d in pending))
        time.sleep(0.2)
    return time.monotonic() - t0


def is_sleeper(pid: int) -> bool:
    """Still alive as one of supervisord's programs here: a ``sleep 1000``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and b"sleep\x001000" in cmd


# ---------------------------------------------------------------- timing


def check_output(key: str, out: subprocess.CompletedProcess, n: int) -> str | None:
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip()[-200:]}"
    if key == "nsvisorctl_json":
        rows = json.loads(out.stdout)
        running = sum(r.get("state") == "RUNNING" for r in rows)
    elif key.startswith(("nsvisorctl", "python_m", "supervisorctl")):
        running = sum(" RUNNING " in line for line in out.stdout.splitlines())
    else:
        return None
    return None if running == n else f"{running} RUNNING lines, expected {n}"


def time_commands(cmds: dict[str, list[str]], runs: int, n: int) -> dict[str, dict]:
    env = clean_env()
    times: dict[str, list[float]] = {k: [] for k in cmds}
    errors: dict[str, str] = {}
    keys = list(cmds)
    for i in range(WARMUP + runs):
        order = keys[i % len(keys):] + keys[:i % len(keys)]  # take turns
        for key in order:
            if key in errors:
                continue
            t0 = time.perf_counter()
            out = subprocess.run(cmds[key], capture_output=True, text=True, env=env,
                                 stdin=subprocess.DEVNULL, cwd="/", timeout=CMD_TIMEOUT)
            elapsed = (time.perf_counter() - t0) * 1000
            problem = check_output(key, out, n)
            if problem:
                errors[key] = f"run {i}: {problem}"
            elif i >= WARMUP:
                times[key].append(elapsed)
    return {k: ({"error": errors[k]} if k in errors else summarize(times[k])) for k in cmds}


# ---------------------------------------------------------------- report

ROWS = [
    ("nsvisorctl", "nsvisorctl status"),
    ("nsvisorctl_json", "nsvisorctl --json status"),
    ("python_m", "python -m supervisor.cli.main status"),
    ("supervisorctl", "supervisorctl status (4.3.0)"),
    ("python_ours", "python -c pass (nsvisor's .venv)"),
    ("python_sv", "python -c pass (supervisord's venv)"),
]


PYTHON_ROWS = ("python_ours", "python_sv")


def print_report(res: dict) -> None:
    m = res["machine"]
    print(f"status with {res['n']} programs - {m['date']}, {m['cpus']} vCPU, kernel "
          f"{m['kernel']}, Python {m['python']}, supervisor {res['supervisord']}; "
          f"load avg {m['load_before']:.1f} -> {m['load_after']:.1f}")
    print(f"{res['runs']} runs each after {WARMUP} warm-ups, taking turns; subprocess.run with "
          "output captured; ms")
    print(f"{'command':40} {'median':>7} {'p95':>7} {'min':>7}  {'x/sv':>5}")
    t = res["timings"]
    sv = t.get("supervisorctl", {}).get("median")
    for key, label in ROWS:
        r = t.get(key, {"error": "not run"})
        if "error" in r:
            print(f"{label:40} {'-':>7} {'-':>7} {'-':>7}  ({r['error']})")
            continue
        ratio = f"{r['median'] / sv:5.2f}" if sv and key not in PYTHON_ROWS else ""
        print(f"{label:40} {r['median']:7.2f} {r['p95']:7.2f} {r['min']:7.2f}  "
              f"{ratio}".rstrip())
    r = res["ratios"]
    if r.get("status") is not None:
        verdict = "met" if r["status"] <= TARGET_RATIO else "MISSED"
        print(f"target nsvisorctl/supervisorctl <= {TARGET_RATIO}: {r['status']:.2f}, "
              f"{verdict}; net of each venv's bare interpreter start: "
              f"{r['net_of_python']:.2f}; --json: {r['json']:.2f}")
    print(f"all RUNNING after {res['startup_s']:.1f} s (both daemons started together)")
    print(f"bytecode: PYTHONDONTWRITEBYTECODE={res['bytecode']['env_value'] or '(unset)'} "
          "in this environment; removed from every timed command's environment; compiled "
          "first: " + "; ".join(res["bytecode"]["compiled"]))
    warnings = res.get("nsvisord_warnings", [])
    print(f"nsvisord warnings/errors in its log: {len(warnings)}"
          + (f" {sorted(set(warnings))[:5]}" if warnings else ""))
    c = res["cleanup"]
    print(f"cleanup: nsvisord exited {c['nsvisord_exit']}, supervisord exited "
          f"{c['supervisord_exit']}; still alive after them and killed by pid: "
          f"{c['killed'] or 'none'}; total {res['elapsed_s']:.0f} s")


# ---------------------------------------------------------------- main


def run(n: int, runs: int, sv_venv: str) -> dict:
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    version = ensure_supervisord(sv_venv)
    compiled = compile_bytecode(sv_venv)
    base = tempfile.mkdtemp(prefix="nsvbench-ctl-")
    os.chmod(base, 0o755)
    ns = Nsvisord(base, [f"cs{RUN}-{i:03d}" for i in range(n)])
    sv = Supervisord(base, [f"cs{RUN}-{i:03d}" for i in range(n)], sv_venv)
    res: dict[str, Any] = {"n": n, "runs": runs, "supervisord": version}
    killed: list[int] = []
    try:
        ns.start()
        sv.start()
        res["startup_s"] = wait_all([ns, sv], n)
        python = os.path.join(VENV_BIN, "python")
        cmds = {
            "nsvisorctl": [os.path.join(VENV_BIN, "nsvisorctl"), "-s", ns.sock, "status"],
            "nsvisorctl_json": [os.path.join(VENV_BIN, "nsvisorctl"), "-s", ns.sock,
                                "--json", "status"],
            "python_m": [python, "-m", "supervisor.cli.main", "-s", ns.sock, "status"],
            "supervisorctl": [*sv.ctl(), "status"],
            "python_ours": [python, "-c", "pass"],
            "python_sv": [os.path.join(sv_venv, "bin", "python"), "-c", "pass"],
        }
        # python -m needs the repo importable from cwd "/": the editable install does it.
        res["timings"] = time_commands(cmds, runs, n)
    finally:
        res["cleanup"] = {"nsvisord_exit": ns.stop(), "supervisord_exit": sv.stop()}
        res["nsvisord_warnings"] = ns.problems()
        for pid in sorted(ns.pids | sv.pids):
            if in_container_of(pid, f"cs{RUN}-") if pid in ns.pids else is_sleeper(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        res["cleanup"]["killed"] = killed
        for path in glob.glob(f"/sys/fs/cgroup/*/nsvisor/cs{RUN}-*") + \
                glob.glob(f"/sys/fs/cgroup/nsvisor/cs{RUN}-*"):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        shutil.rmtree(base, ignore_errors=True)
    t = res["timings"]

    def med(key: str) -> float | None:
        return t.get(key, {}).get("median")

    ratios: dict[str, float | None] = {"status": None}
    if med("nsvisorctl") and med("supervisorctl"):
        ratios = {
            "status": med("nsvisorctl") / med("supervisorctl"),
            "json": med("nsvisorctl_json") / med("supervisorctl")
            if med("nsvisorctl_json") else None,
            "python_m": med("python_m") / med("supervisorctl") if med("python_m") else None,
            "net_of_python": (med("nsvisorctl") - med("python_ours"))
            / (med("supervisorctl") - med("python_sv"))
            if med("python_ours") and med("python_sv") else None,
        }
    res["ratios"] = ratios
    res["bytecode"] = {"env_value": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
                       "compiled": compiled, "timed_env": "PYTHONDONTWRITEBYTECODE removed"}
    res["machine"] = {"date": time.strftime("%Y-%m-%d"), "kernel": platform.release(),
                      "cpus": os.cpu_count(), "python": platform.python_version(),
                      "load_before": load_before, "load_after": os.getloadavg()[0]}
    res["target"] = {"nsvisorctl/supervisorctl": TARGET_RATIO}
    res["elapsed_s"] = time.monotonic() - started
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="programs per daemon")
    parser.add_argument("--runs", type=int, default=25, help="timed runs per command")
    parser.add_argument("--sv-venv", default=DEFAULT_SV_VENV,
                        help=f"supervisord's venv, created if missing ({DEFAULT_SV_VENV})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("ctl_status.py must run as root (nsvisord creates namespaces):\n"
              "  sudo .venv/bin/python benchmarks/ctl_status.py", file=sys.stderr)
        return 2
    if args.n < 1 or args.runs < 1:
        parser.error("--n and --runs must be >= 1")
    try:
        result = run(args.n, args.runs, os.path.abspath(args.sv_venv))
    except BenchError as e:
        print(f"ctl_status.py: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
