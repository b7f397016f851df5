"""nsvisord's /metrics with real containers: families, labels, values, removal, OOM kills,
the HTTP edge (bad requests, slow clients, loopback only) and promtool's lint."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.daemon.metrics import parse_listen, terminated_reason
from supervisor.model.config import load_config

from .conftest import RUN_ID
from .daemon_harness import Daemon, wait_for
from .netns_helpers import icmp_echo

_counter = iter(range(10_000))

# family (as the text format names its samples) -> label names
RESOURCE = {
    "container_cpu_usage_seconds_total": {"name", "cpu"},
    "container_cpu_user_seconds_total": {"name"},
    "container_cpu_system_seconds_total": {"name"},
    "container_memory_usage_bytes": {"name"},
    "container_memory_working_set_bytes": {"name"},
    "container_memory_rss": {"name"},
    "container_spec_memory_limit_bytes": {"name"},
    "container_processes": {"name"},
    "container_oom_events_total": {"name"},
    "container_start_time_seconds": {"name"},
}
NETWORK = {f"container_network_{d}_{q}_total": {"name", "interface"}
           for d in ("receive", "transmit") for q in ("bytes", "packets", "errors")}
SUPERVISION = {
    "nsvisor_container_state": {"name", "state"},
    "nsvisor_container_restarts_total": {"name"},
    "nsvisor_container_last_exit_code": {"name"},
    "nsvisor_container_last_terminated_reason": {"name", "reason"},
    "nsvisor_container_info": {"name", "rootfs", "restart_policy", "group"},
}
CORE = {
    "nsvisor_link_up": {"name", "interface"},
    "nsvisor_netlink_events_total": {"event"},
    "nsvisor_netlink_resyncs_total": set(),
    "nsvisor_reaped_total": set(),
    "nsvisor_signals_forwarded_total": set(),
    "nsvisor_log_lines_dropped_total": set(),
    "nsvisor_scrape_duration_seconds": set(),
    "nsvisor_container_start_duration_seconds_count": set(),
    "nsvisor_container_start_duration_seconds_sum": set(),
    "process_resident_memory_bytes": set(),
    "process_cpu_seconds_total": set(),
    "python_info": {"implementation", "major", "minor", "patchlevel", "version"},
}
STATES = {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL"}


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def scrape_text(port: int) -> str:
    status, headers, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    return body.decode()


class Samples(list):
    """(sample name, labels, value) of one scrape."""

    def get(self, sample: str, /, **labels: str) -> list[float]:
        return [v for n, lb, v in self if n == sample
                and all(lb.get(k) == want for k, want in labels.items())]

    def one(self, sample: str, /, **labels: str) -> float:
        values = self.get(sample, **labels)
        assert len(values) == 1, f"{sample}{labels}: {values}"
        return values[0]

    def names(self) -> set[str]:
        return {n for n, _, _ in self}

    def mentioning(self, container: str) -> list[tuple[str, dict, float]]:
        return [s for s in self if s[1].get("name") == container]


def scrape(port: int) -> Samples:
    out = Samples()
    for family in text_string_to_metric_families(scrape_text(port)):
        for s in family.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, f"m{RUN_ID}{next(_counter)}")
    try:
        yield d
    finally:
        d.cleanup()


def start(daemon: Daemon, containers: str) -> int:
    port = free_port()
    daemon.write_config(containers, metrics_listen=f"127.0.0.1:{port}")
    daemon.start()
    wait_for(lambda: _answers(port), 20, "the metrics endpoint")
    return port


def _answers(port: int) -> bool:
    try:
        scrape_text(port)
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ pure


def test_terminated_reason_mapping() -> None:
    assert terminated_reason(0, "exit status 0") == "Completed"
    assert terminated_reason(3, "exit status 3") == "Error"
    assert terminated_reason(143, "killed by SIGTERM") == "Signaled"
    assert terminated_reason(137, "OOMKilled") == "OOMKilled"
    assert terminated_reason(None, "exec /nope: No such file or directory") == "Error"


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:9477") == ("::1", 9477)
    with pytest.raises(ValueError):
        parse_listen("9477")


# ------------------------------------------------------------------ real daemon

CONTAINERS = """
[networks.{p}-net]
driver = "veth"
subnet = "10.231.7.0/24"

[containers.{p}-busy]
command = ["/bin/sh", "-c", "while :; do :; done"]
limits = { memory = "96M" }
startsecs = "0"
networks = { {p}-net = "10.231.7.2" }

[containers.{p}-idle]
command = ["/bin/sleep", "100000"]
startsecs = "0"
restart = "always"
group = "{p}-pair"
networks = { {p}-net = "10.231.7.3" }

[containers.{p}-done]
command = ["/bin/sh", "-c", "exit 3"]
startsecs = "0"
restart = "no"
"""


@pytest.mark.root
def test_every_family_with_labels_and_sane_values(daemon: Daemon) -> None:
    port = start(daemon, CONTAINERS)
    busy, idle, done = daemon.name("busy"), daemon.name("idle"), daemon.name("done")
    daemon.wait_state("busy", "RUNNING")
    daemon.wait_state("idle", "RUNNING")
    daemon.wait_state("done", "EXITED")
    # Traffic over the pair (network series exist for interfaces other than lo; a veth
    # network between two containers never shows on the host, so no test can collide).
    assert wait_for(lambda: icmp_echo(daemon.state("idle")["pid"], "10.231.7.2"), 10, "ping")

    first = scrape(port)
    time.sleep(1.0)
    text = scrape_text(port)
    second = scrape(port)

    names = second.names()
    for family, labels in {**RESOURCE, **NETWORK, **SUPERVISION, **CORE}.items():
        assert family in names, f"{family} missing"
        for n, lb, _ in second:
            if n == family:
                assert set(lb) == labels, f"{family}: {sorted(lb)}"
    assert {n for n in names if n.startswith("nsvisor_container_start_duration_seconds")} \
        >= {"nsvisor_container_start_duration_seconds_bucket"}
    assert "# TYPE container_cpu_usage_seconds_total counter" in text
    assert "# TYPE nsvisor_container_start_duration_seconds histogram" in text

    # resource usage of running containers
    cpu = "container_cpu_usage_seconds_total"
    assert second.one(cpu, name=busy, cpu="total") > first.one(cpu, name=busy, cpu="total")
    assert second.one(cpu, name=busy, cpu="total") - first.one(cpu, name=busy, cpu="total") \
        > 0.1, "a busy loop burns CPU (most of a core; less on a loaded machine)"
    for c in (busy, idle):
        assert second.one("container_memory_usage_bytes", name=c) > 0
        assert second.one("container_memory_working_set_bytes", name=c) > 0
        assert second.one("container_memory_rss", name=c) > 0
        assert second.one("container_processes", name=c) >= 2  # init + workload
        assert abs(second.one("container_start_time_seconds", name=c) - time.time()) < 120
        assert second.one("container_oom_events_total", name=c) == 0
    config = load_config(str(daemon.config))
    assert second.one("container_spec_memory_limit_bytes", name=busy) \
        == config.containers[busy].limits.memory == 96 * 1024 * 1024
    assert second.one("container_spec_memory_limit_bytes", name=idle) == 0  # unlimited
    # network: the container's view; lo is not reported
    for c in (busy, idle):
        assert {lb["interface"] for n, lb, _ in second.mentioning(c)
                if n.startswith("container_network_")} == {"eth0"}
        assert second.one("container_network_receive_packets_total", name=c,
                          interface="eth0") >= 1
        assert second.one("container_network_transmit_bytes_total", name=c,
                          interface="eth0") > 0
        assert second.one("container_network_receive_errors_total", name=c,
                          interface="eth0") == 0
    # the exited container: supervision series only
    assert {n for n, _, _ in second.mentioning(done)} == {
        "container_oom_events_total", "nsvisor_container_state",
        "nsvisor_container_restarts_total", "nsvisor_container_last_exit_code",
        "nsvisor_container_last_terminated_reason", "nsvisor_container_info"}

    # supervision
    for c, state in ((busy, "RUNNING"), (idle, "RUNNING"), (done, "EXITED")):
        series = {lb["state"]: v for n, lb, v in second.mentioning(c)
                  if n == "nsvisor_container_state"}
        assert set(series) == STATES
        assert series == {s: (1.0 if s == state else 0.0) for s in STATES}, c
        assert second.one("nsvisor_container_restarts_total", name=c) == 0
    assert second.one("nsvisor_container_last_exit_code", name=done) == 3
    assert second.get("nsvisor_container_last_terminated_reason", name=done) == [1]
    assert second.one("nsvisor_container_last_terminated_reason", name=done,
                      reason="Error") == 1
    assert not second.get("nsvisor_container_last_exit_code", name=busy)
    assert second.one("nsvisor_container_info", name=idle, rootfs="host",
                      restart_policy="always", group=daemon.name("pair")) == 1
    assert second.one("nsvisor_container_info", name=done, restart_policy="no",
                      group=done) == 1
    # start latency: three launches observed (drained at the first scrape)
    assert second.one("nsvisor_container_start_duration_seconds_count") == 3
    assert 0 < second.one("nsvisor_container_start_duration_seconds_sum") < 30
    assert second.one("nsvisor_container_start_duration_seconds_bucket", le="+Inf") == 3
    # core counters
    assert second.one("nsvisor_reaped_total") >= 1  # the exited one
    assert second.one("nsvisor_signals_forwarded_total") == 0
    assert second.one("nsvisor_log_lines_dropped_total") == 0
    assert second.one("nsvisor_netlink_resyncs_total") == 0
    assert second.one("nsvisor_netlink_events_total", event="link_down") == 0
    for c in (busy, idle):
        assert second.one("nsvisor_link_up", name=c, interface="eth0") == 1
    assert not second.get("nsvisor_link_up", name=done)
    assert second.one("process_resident_memory_bytes") > 10e6
    # no explicit timestamps anywhere
    for family in text_string_to_metric_families(text):
        assert all(s.timestamp is None for s in family.samples), family.name

    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                              capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.root
def test_removed_container_series_disappear(daemon: Daemon) -> None:
    keep = '[containers.{p}-keep]\ncommand = ["/bin/sleep", "100000"]\nstartsecs = "0"\n'
    gone = '[containers.{p}-gone]\ncommand = ["/bin/sleep", "100000"]\nstartsecs = "0"\n'
    port = start(daemon, keep + gone)
    daemon.wait_state("keep", "RUNNING")
    daemon.wait_state("gone", "RUNNING")
    assert len(scrape(port).mentioning(daemon.name("gone"))) > 15
    daemon.write_config(keep, metrics_listen=f"127.0.0.1:{port}")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: not scrape(port).mentioning(daemon.name("gone")), 20,
             "the removed container's series to disappear")
    after = scrape(port)
    assert after.one("nsvisor_container_state", name=daemon.name("keep"), state="RUNNING") == 1
    assert after.one("nsvisor_signals_forwarded_total") >= 1  # the stop signal


@pytest.mark.root
def test_oom_killed_container_is_counted_and_restarted(daemon: Daemon) -> None:
    port = start(daemon, """
[containers.{p}-hog]
command = ["/usr/bin/python3", "-c", "x = b'x' * (200 << 20)"]
limits = { memory = "64M" }
startsecs = "0"
restart = "on-failure"
backoff = { initial = "200ms" }
""")
    hog = daemon.name("hog")

    def oom_seen() -> Samples | None:
        s = scrape(port)
        ok = (s.get("container_oom_events_total", name=hog) and
              s.one("container_oom_events_total", name=hog) >= 1 and
              s.get("nsvisor_container_last_terminated_reason", name=hog,
                    reason="OOMKilled") == [1] and
              s.one("nsvisor_container_restarts_total", name=hog) >= 1)
        return s if ok else None

    s = wait_for(oom_seen, 30, "an OOM kill, counted, and a restart")
    assert s.get("nsvisor_container_last_terminated_reason", name=hog) == [1]
    assert s.one("nsvisor_container_last_exit_code", name=hog) == 137  # SIGKILL


@pytest.mark.root
def test_http_edge_cases_never_disturb_the_daemon(daemon: Daemon) -> None:
    port = start(daemon, '[containers.{p}-a]\ncommand = ["/bin/sleep", "100000"]\n'
                         'startsecs = "0"\n')
    daemon.wait_state("a", "RUNNING")
    assert http(port, b"GET / HTTP/1.1\r\n\r\n")[0] == 404
    assert http(port, b"GET /metricsx HTTP/1.1\r\n\r\n")[0] == 404
    assert http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")[0] == 405
    assert http(port, b"GARBAGE\r\n\r\n")[0] == 400
    assert http(port, b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n")[0] == 400
    assert http(port, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n")[0] == 431
    status, headers, body = http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
    assert http(port, b"GET /metrics?debug=1 HTTP/1.1\r\n\r\n")[0] == 200
    # clients that connect and say nothing, or hang up mid-request, hold nothing up
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        for s in idle[:10]:
            s.sendall(b"GET /met")
        for s in idle[10:15]:
            s.close()
        began = time.monotonic()
        assert scrape(port).one("nsvisor_container_state", name=daemon.name("a"),
                                state="RUNNING") == 1
        assert time.monotonic() - began < 5
    finally:
        for s in idle:
            s.close()
    # concurrent scrapes all succeed
    results = []

    def one() -> None:
        results.append(len(scrape_text(port)))

    import threading
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 and min(results) > 1000
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert daemon.state("a")["state"] == "RUNNING"
    assert "metrics scrape failed" not in daemon.log_text()


@pytest.mark.root
def test_listens_on_exactly_the_configured_address(daemon: Daemon) -> None:
    port = start(daemon, "")
    assert daemon.proc is not None
    listening = []
    with open(f"/proc/{daemon.proc.pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                listening.append(local.split(":")[0])
    assert listening == ["0100007F"]  # 127.0.0.1, nothing else
    with open(f"/proc/{daemon.proc.pid}/net/tcp6") as f:
        assert not [line for line in f.readlines()[1:]
                    if int(line.split()[1].split(":")[1], 16) == port
                    and line.split()[3] == "0A"]


@pytest.mark.root
def test_metrics_disabled_when_listen_is_empty(daemon: Daemon) -> None:
    daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "100000"]\n'
                        'startsecs = "0"\n')
    daemon.start()
    daemon.wait_state("a", "RUNNING")
    assert "metrics listening" not in daemon.log_text()
    assert "api listening" in daemon.log_text()


@pytest.mark.root
def test_port_in_use_is_a_clean_startup_error(daemon: Daemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        daemon.write_config('[containers.{p}-a]\ncommand = ["/bin/sleep", "100000"]\n',
                            metrics_listen=f"127.0.0.1:{port}")
        proc = daemon.start()
        assert proc.wait(30) == 2  # as for a published port: the config asks for it
    log = daemon.log_text()
    assert "Traceback" not in log
    assert log.splitlines()[-1] == (
        f"nsvisord: {daemon.config}: supervisor.metrics_listen: cannot listen on "
        f"127.0.0.1:{port}: Address already in use")
    assert not list(daemon.state_dir.glob("containers/*.json")), "nothing may have started"
