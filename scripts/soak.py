"""Soak nsvisord: random config edits, reloads, commands, kill -9s and handovers at once.

    sudo .venv/bin/python scripts/soak.py [--rounds 40] [--seed N] [--no-crashes]

One nsvisord on a generated config (up to 12 `sleep` containers, a bridge network, a
veth pair, published ports, dependencies), rewritten at random; three clients send
SIGHUPs, `update`, `reload`, `start`, `stop`, `restart` and SIGKILLs to workloads, while
the daemon itself is killed with SIGKILL, or shut down with `--leave-running`, and
started again every few seconds (live restore). At the end it must still answer, hold one
init per running container, log no internal error, finish a SIGTERM with status 0 and
leave no process, cgroup, link or file of the run. Exits 1 naming what went wrong. The
bugs it found are regression tests in tests/test_daemon.py, tests/test_network.py and
tests/test_daemon_cli.py; run it after touching the supervisor.

Traffic: none (containers only sleep); links and subnets are the run's own (10.254.x).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CTL_TIMEOUT = 120  # no command may take longer: that is a hang
def host_links() -> list[str]:
    """The host's nsv* links (bridges and host ends of veths)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = (line.split(":")[1].strip().split("@")[0] for line in out.splitlines())
    return [n for n in names if n.startswith("nsv")]


def free_ports(n: int) -> list[int]:
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


class Soak:
    def __init__(self, seed: int, rounds: int, crashes: bool) -> None:
        self.rnd = random.Random(seed)
        self.seed, self.rounds, self.crashes = seed, rounds, crashes
        self.tag = secrets.token_hex(3)  # networks and links of this run only
        self.tmp = tempfile.mkdtemp(prefix=f"nsv-soak-{self.tag}-", dir="/var/tmp")
        self.run_dir = f"/run/nsv-soak-{self.tag}"
        self.config = os.path.join(self.tmp, "nsvisor.toml")
        self.log = os.path.join(self.tmp, "nsvisord.log")
        self.ports = free_ports(4)
        self.problems: list[str] = []
        self.write_lock = threading.Lock()
        self.daemon: subprocess.Popen | None = None
        # Set once the daemon answers: the first ~50 ms of a Python process, before it runs
        # nsvisord's code, no program can keep SIGHUP from ending it (README, known limits).
        self.up = threading.Event()
        self.names = [f"s{self.tag}c{i}" for i in range(12)]  # cgroups of this run only
        self.links_before = set(host_links())

    # ------------------------------------------------------------ config and daemon

    def write_config(self, rnd: random.Random) -> None:
        bridge, pair = f"sb{self.tag}", f"sp{self.tag}"
        out = [f'[supervisor]\nsocket = "{self.run_dir}/nsvisor.sock"\n'
               f'state_dir = "{self.run_dir}/state"\nlog_dir = "{self.tmp}/logs"\n'
               'metrics_listen = ""\n']
        nets = []
        if rnd.random() < 0.8:
            nets.append(bridge)
            out.append(f'[networks.{bridge}]\ndriver = "bridge"\n'
                       f'subnet = "10.254.{rnd.randint(0, 1)}.0/24"\n')
        if rnd.random() < 0.5:
            nets.append(pair)
            out.append(f'[networks.{pair}]\ndriver = "veth"\nsubnet = "10.254.9.0/30"\n')
        names = rnd.sample(self.names, rnd.randint(2, 10))
        ports = list(self.ports)
        for i, name in enumerate(names):
            lines = [f"[containers.{name}]",
                     f'command = ["/bin/sleep", "{rnd.choice([1000, 2000])}"]',
                     f'startsecs = "{rnd.choice(["0", "50ms", "200ms"])}"',
                     f'restart = "{rnd.choice(["always", "on-failure", "no", "unless-stopped"])}"']
            on = [bridge] if bridge in nets and rnd.random() < 0.6 else []
            if pair in nets and i < 2:
                on.append(pair)
            if on:
                lines.append("networks = [" + ", ".join(f'"{n}"' for n in on) + "]")
            if bridge in on and ports and rnd.random() < 0.3:
                port = ports.pop()
                lines.append(f'ports = ["127.0.0.1:{port}:{port}"]')
            deps = [d for d in names[:i] if rnd.random() < 0.15]
            if deps:
                lines.append("depends_on = [" + ", ".join(f'"{d}"' for d in deps) + "]")
            out.append("\n".join(lines) + "\n")
        with self.write_lock:  # whole files only: a half-written one is not the test
            tmp = self.config + ".new"
            with open(tmp, "w") as f:
                f.write("\n".join(out))
            os.replace(tmp, self.config)

    def start_daemon(self) -> None:
        self.up.clear()
        with open(self.log, "ab") as err:
            self.daemon = subprocess.Popen(
                [PY, "-m", "supervisor.daemon.main", "-c", self.config], stderr=err,
                stdin=subprocess.DEVNULL, cwd=REPO)

    def wait_up(self) -> None:
        """Until nsvisord answers (it re-adopts, then listens); a problem after 30 s."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = self.ctl("version")
            if done is not None and done.returncode == 0:
                self.up.set()
                return
            time.sleep(0.05)
        self.problems.append("nsvisord did not answer within 30 s of its start")

    def ctl(self, *args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(
                [PY, "-m", "supervisor.cli.main", "-s", f"{self.run_dir}/nsvisor.sock",
                 *args], capture_output=True, text=True, timeout=CTL_TIMEOUT, cwd=REPO)
        except subprocess.TimeoutExpired:
            self.problems.append(f"nsvisorctl {' '.join(args)}: no answer in {CTL_TIMEOUT}s")
            return None

    def status(self) -> list[dict]:
        done = self.ctl("--json", "status")
        try:
            return json.loads(done.stdout) if done and done.stdout.strip() else []
        except ValueError:
            return []

    # ------------------------------------------------------------ the storm

    def client(self, k: int) -> None:
        rnd = random.Random(self.seed * 100 + k)
        for _ in range(self.rounds):
            roll = rnd.random()
            target = rnd.choice([*self.names, "all"])
            if roll < 0.25:
                self.write_config(rnd)
                if self.daemon is not None and self.up.is_set():
                    self.daemon.send_signal(signal.SIGHUP)
            elif roll < 0.4:
                self.write_config(rnd)
                self.ctl("update")
            elif roll < 0.85:
                self.ctl(rnd.choice(["restart", "stop", "start"]), target)
            elif roll < 0.9:
                self.ctl("reload")
            else:
                self.kill_a_workload(rnd)
            time.sleep(rnd.random() * 0.3)

    def kill_a_workload(self, rnd: random.Random) -> None:
        running = [c for c in self.status() if c["state"] == "RUNNING" and c["pid"]]
        if running:
            init = rnd.choice(running)["pid"]
            try:
                with open(f"/proc/{init}/task/{init}/children") as f:
                    kids = f.read().split()
                if kids:
                    os.kill(int(kids[0]), signal.SIGKILL)
            except OSError:
                pass  # it exited meanwhile

    def leave_running(self) -> None:
        """``nsvisorctl shutdown --leave-running``: nsvisord must exit 0, at once."""
        assert self.daemon is not None
        for _ in range(50):  # a daemon started a moment ago may not listen yet
            done = self.ctl("shutdown", "--leave-running")
            if done is None or done.returncode != 4:
                break
            time.sleep(0.1)
        try:
            code = self.daemon.wait(CTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.problems.append(f"shutdown --leave-running: nsvisord still ran after "
                                 f"{CTL_TIMEOUT}s")
            self.daemon.kill()
            self.daemon.wait()
            return
        if done is None or done.returncode != 0 or code != 0:
            said = done.stderr.strip() if done else "no answer"
            self.problems.append(f"shutdown --leave-running: nsvisorctl "
                                 f"{done.returncode if done else '-'} ({said}), "
                                 f"nsvisord exit {code}")

    def run(self) -> int:
        print(f"soak seed {self.seed}, {self.rounds} rounds x 3 clients, run {self.tag}, "
              f"{'with' if self.crashes else 'without'} kill -9s of nsvisord", flush=True)
        self.write_config(self.rnd)
        self.start_daemon()
        self.wait_up()
        clients = [threading.Thread(target=self.client, args=(k,)) for k in range(3)]
        for c in clients:
            c.start()
        crashes = handovers = 0
        while self.crashes and any(c.is_alive() for c in clients):
            time.sleep(self.rnd.uniform(2, 5))
            assert self.daemon is not None
            if self.rnd.random() < 0.5:
                self.daemon.kill()
                self.daemon.wait()
                crashes += 1
            else:
                self.leave_running()
                handovers += 1
            self.start_daemon()
            self.wait_up()
        for c in clients:
            c.join()
        time.sleep(3)  # restarts and backoffs settle
        self.check_running()
        self.stop_and_check_clean()
        with open(self.log) as f:
            internal = [line for line in f if '"internal error"' in line
                        or "Traceback" in line or '"api handler failed"' in line]
        if internal:
            self.problems.append(f"{len(internal)} internal errors in the log, first: "
                                 f"{internal[0][:300]}")
        print(f"{crashes} kill -9s of nsvisord, {handovers} shutdowns leaving the containers "
              f"running; problems: {len(self.problems)}")
        for p in self.problems:
            print(f"  - {p}")
        if not self.problems:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"kept for a look: {self.tmp} (nsvisord.log)")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if self.problems else 0

    # ------------------------------------------------------------ checks

    def cgroups(self) -> list[str]:
        root = "/sys/fs/cgroup/pids/nsvisor"
        names = set(self.names)
        return [d for d in os.listdir(root) if d in names] if os.path.isdir(root) else []

    def inits(self) -> list[int]:
        """Live nsv-init processes in this run's cgroups (zombies are not listed)."""
        found = []
        for name in self.cgroups():
            with open(f"/sys/fs/cgroup/pids/nsvisor/{name}/cgroup.procs") as f:
                for pid in f.read().split():
                    try:
                        with open(f"/proc/{pid}/comm") as c:
                            if c.read().strip() == "nsv-init":
                                found.append(int(pid))
                    except OSError:
                        pass
        return found

    def check_running(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            self.problems.append("nsvisord died during the storm")
            return
        listed = self.status()
        if not listed:
            self.problems.append("nsvisord answers no status")
        pids = sorted(c["pid"] for c in listed if c["pid"])
        inits = sorted(self.inits())
        if pids != inits:
            self.problems.append(f"containers' pids {pids} but inits in their cgroups {inits}")

    def stop_and_check_clean(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        try:
            code = self.daemon.wait(120)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            code = "a hang"
        if code != 0:
            self.problems.append(f"SIGTERM: nsvisord ended with {code}")
        deadline = time.monotonic() + 15  # veths go with their netns, a moment later
        while time.monotonic() < deadline:
            links = sorted(set(host_links()) - self.links_before)
            left = (self.inits(), self.cgroups(), links)
            if not any(left):
                return
            time.sleep(0.5)
        self.problems.append(f"left after the stop: inits {left[0]}, cgroups {left[1]}, "
                             f"links {left[2]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="commands per client (40)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (random)")
    parser.add_argument("--no-crashes", action="store_true",
                        help="never kill -9 or restart nsvisord itself")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("soak: run as root (nsvisord needs it)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    return Soak(seed, args.rounds, not args.no_crashes).run()


if __name__ == "__main__":
    sys.exit(main())
