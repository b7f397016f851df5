"""The shipped Grafana dashboards and Prometheus config against the real thing.

Offline: the dashboards' JSON models (structure, datasource references, variables), their
PromQL through ``promtool check rules``, ``promtool check config`` on config/prometheus.yml
and on the file_sd example. Live (root): Debian's ``prometheus`` scrapes a running nsvisord
with real containers every second, on loopback only, and every expression of every panel
and every variable query of both dashboards must return data through the HTTP API; a
CPU-burning container shows rising CPU; a memory hog with a limit is OOM-killed, counted
and restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import RUN_ID
from .daemon_harness import Daemon, wait_for
from .netns_helpers import icmp_echo

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
PROVISIONING = REPO / "grafana" / "provisioning"
_counter = iter(range(10_000))
RATE_INTERVAL = "10s"  # what Grafana makes of $__rate_interval at 1 s scrapes, roughly


# ------------------------------------------------------------------ dashboard model


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest theirs


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) of every target of every panel."""
    return [(f"{p['title']} / {t['refId']}", t["expr"])
            for p in panels(dashboard) for t in p.get("targets", [])]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append((v["name"], q["query"] if isinstance(q, dict) else q))
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables and macros -> concrete text; unknown ones fail the test."""
    values = {"__rate_interval": RATE_INTERVAL, "__interval": "2s", "__range": "1m",
              **values}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", one, expr)


def test_dashboards_are_provisionable_json_models() -> None:
    assert [p.name for p in DASHBOARDS] == ["nsvisor-container.json", "nsvisor-overview.json"]
    ds_yaml = (PROVISIONING / "datasources" / "nsvisor.yml").read_text()
    ds_uid = re.search(r"^\s+uid:\s*(\S+)", ds_yaml, re.M).group(1)
    uids = set()
    for path in DASHBOARDS:
        d = load(path)
        assert d.get("id") is None, "provisioned dashboards carry no id"
        assert d["uid"] and d["uid"] not in uids and len(d["uid"]) <= 40
        uids.add(d["uid"])
        assert 36 <= d["schemaVersion"] <= 42
        assert d["title"] and "nsvisor" in d["tags"]
        names = [v["name"] for v in d["templating"]["list"]]
        assert names[:1] == ["datasource"] and {"instance", "name"} <= set(names)
        ds_var = d["templating"]["list"][0]
        assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
        assert ds_var["current"]["value"] == ds_uid
        ids = set()
        for p in panels(d):
            assert p["id"] not in ids
            ids.add(p["id"])
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
            if p["type"] == "row":
                continue
            assert p["title"] and p["datasource"] == {"type": "prometheus",
                                                      "uid": "${datasource}"}
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs) and all(refs)
            for t in p["targets"]:
                assert t["expr"].strip() and t["datasource"] == p["datasource"]
                if "rate(" in t["expr"] or "increase(" in t["expr"]:
                    assert "[$__rate_interval]" in t["expr"] or "[1h]" in t["expr"], t["expr"]
        for _, expr in exprs(d):
            if d["uid"] == "nsvisor-container":
                assert 'name="$name"' in expr or "name=" not in expr
            assert 'instance=~"$instance"' in expr, expr  # every query follows the host
    overview = load(REPO / "grafana" / "dashboards" / "nsvisor-overview.json")
    titles = " ".join(p["title"] for p in panels(overview)).lower()
    for word in ("running", "restarts", "cpu", "memory", "received", "top"):
        assert word in titles
    provider = (PROVISIONING / "dashboards" / "nsvisor.yml").read_text()
    assert re.search(r"^\s+path:\s*/var/lib/grafana/dashboards/nsvisor\s*$", provider, re.M)
    assert re.search(r"^\s+type:\s*file\s*$", provider, re.M)
    readme = (REPO / "grafana" / "README.md").read_text()
    assert "/var/lib/grafana/dashboards/nsvisor" in readme
    assert "/etc/grafana/provisioning" in readme


def test_dashboard_promql_parses() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (./scripts/bootstrap installs it)")
    rules = []
    for path in DASHBOARDS:
        d = load(path)
        values = {"instance": ".*", "name": ".*", "datasource": "x"}
        for i, (_, expr) in enumerate(exprs(d)):
            rules.append({"record": f"nsvisor:check:{path.stem.replace('-', '_')}:{i}",
                          "expr": substitute(expr, values)})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        json.dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)  # JSON is YAML
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


def test_promtool_check_config_on_the_shipped_config_and_example() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (./scripts/bootstrap installs it)")
    shipped = REPO / "config" / "prometheus.yml"
    r = subprocess.run([promtool, "check", "config", str(shipped)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = shipped.read_text()
    assert not re.search(r"^\s*(remote_write|remote_read|alerting|rule_files):", text, re.M)
    assert '"127.0.0.1:9477"' in text
    # the file_sd example is what promtool accepts as targets
    with tempfile.TemporaryDirectory() as tmp:
        example = REPO / "config" / "nsvisor-targets.example.yml"
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text("scrape_configs:\n  - job_name: fleet\n    file_sd_configs:\n"
                       f"      - files: ['{example}']\n")
        r = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr
        bad = Path(tmp) / "bad.yml"
        bad.write_text("- targets: ['a:1']\n  unknown: 1\n")
        cfg.write_text("scrape_configs:\n  - job_name: fleet\n    file_sd_configs:\n"
                       f"      - files: ['{bad}']\n")
        r = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0, "promtool must be checking the target files"


# ------------------------------------------------------------------ live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # Not installed: bootstrap installs it (Debian's package), as CI does.
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([str(REPO / "scripts" / "bootstrap")], timeout=900, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus is not installed and could not be installed")
    return found


class Prometheus:
    """A private Prometheus on 127.0.0.1 scraping one nsvisord every second."""

    def __init__(self, binary: str, target: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nsvisor-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: nsvisor\n    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.log = open(self.dir / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                data = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} {params}: {e.code} {e.read()[:500]!r}") from None
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str, at: float | None = None) -> list[Any]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [data["result"]]
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def target_up(self) -> bool:
        assert self.proc.poll() is None, (self.dir / "prometheus.log").read_text()
        try:  # 503 until the TSDB is open
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
                r.read()
        except OSError:
            return False
        targets = self.api("targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, f"p{RUN_ID}{next(_counter)}")
    try:
        yield d
    finally:
        d.cleanup()


CONTAINERS = """
[networks.{p}-net]
driver = "veth"
subnet = "10.232.9.0/24"

[containers.{p}-burner]
command = ["/bin/sh", "-c", "while :; do :; done"]
startsecs = "0"
networks = { {p}-net = "10.232.9.2" }

[containers.{p}-web]
command = ["/bin/sleep", "100000"]
limits = { memory = "128M" }
startsecs = "0"
restart = "on-failure"
backoff = { initial = "100ms" }
networks = { {p}-net = "10.232.9.3" }

[containers.{p}-hog]
command = ["/usr/bin/python3", "-c", "x = b'x' * (200 << 20)"]
limits = { memory = "64M" }
startsecs = "0"
restart = "on-failure"
backoff = { initial = "300ms", max = "1s" }
"""


@pytest.mark.root
def test_dashboards_show_live_data_from_a_real_prometheus(daemon: Daemon) -> None:
    binary = prometheus_binary()
    metrics_port = free_port()
    target = f"127.0.0.1:{metrics_port}"
    daemon.write_config(CONTAINERS, metrics_listen=target)
    daemon.start()
    daemon.wait_state("burner", "RUNNING")
    web_pid = daemon.wait_state("web", "RUNNING")["pid"]
    # web exits once (SIGTERM, forwarded to its workload) and is restarted: it then has a
    # last exit code and reason, and is running again with its network rewired.
    os.kill(web_pid, signal.SIGTERM)
    wait_for(lambda: (s := daemon.state("web")).get("state") == "RUNNING"
             and s.get("restarts") == 1, 20, "web restarted")
    wait_for(lambda: daemon.state("hog").get("restarts", 0) >= 1, 30, "hog OOM-killed")

    prom = Prometheus(binary, target)
    try:
        wait_for(prom.target_up, 60, "Prometheus to scrape nsvisord")
        web_now = daemon.state("web")["pid"]
        deadline = time.monotonic() + 8  # a few scrapes, with traffic between the two
        while time.monotonic() < deadline:
            icmp_echo(web_now, "10.232.9.2", timeout=0.5)
            time.sleep(0.5)
        # rate() over RATE_INTERVAL needs two samples in it: ask for three good scrapes
        # (a loaded machine may have missed some of the last ones).
        wait_for(lambda: prom.value(f'sum_over_time(up{{instance="{target}"}}'
                                    f'[{RATE_INTERVAL}])') >= 3, 30, "three recent scrapes")

        # every panel's expressions and every variable query return data
        web, burner, hog = daemon.name("web"), daemon.name("burner"), daemon.name("hog")
        empty = []
        for path in DASHBOARDS:
            d = load(path)
            values = ({"instance": target, "name": web}
                      if d["uid"] == "nsvisor-container" else {"instance": ".*", "name": ".*"})
            for where, expr in exprs(d):
                concrete = substitute(expr, values)
                if not prom.query(concrete):
                    empty.append(f"{path.stem}: {where}: {concrete}")
            for var, query in variable_queries(d):
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", substitute(query, values))
                assert m, query
                found = prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
                if not found:
                    empty.append(f"{path.stem}: variable {var}: {query}")
                elif var == "name":
                    assert {web, burner, hog} <= set(found)
                elif var == "instance":
                    assert found == [target]
        assert not empty, "queries without data:\n" + "\n".join(empty)

        # a CPU burner: rising counter, a rate of most of a core
        now = time.time()
        sel = f'container_cpu_usage_seconds_total{{name="{burner}"}}'
        assert prom.value(sel, now) > prom.value(sel, now - 3) + 0.3  # even on a busy VM
        assert prom.value(f"rate({sel}[5s])", now) > 0.1
        assert prom.value(f'rate(container_cpu_usage_seconds_total{{name="{web}"}}[5s])',
                          now) < 0.1
        # the hog: OOM-killed, counted, restarted
        assert prom.value(f'container_oom_events_total{{name="{hog}"}}') >= 1
        assert prom.value(f'nsvisor_container_restarts_total{{name="{hog}"}}') >= 1
        wait_for(lambda: prom.query(f'nsvisor_container_last_terminated_reason'
                                    f'{{name="{hog}", reason="OOMKilled"}} == 1'), 10,
                 "OOMKilled as the hog's last reason")
        # web: the SIGTERM exit as the panels show it, and its network traffic
        assert prom.value(f'nsvisor_container_last_exit_code{{name="{web}"}}') == 143
        assert prom.value(f'nsvisor_container_last_terminated_reason{{name="{web}"}}') == 1
        assert prom.query(f'nsvisor_container_last_terminated_reason{{name="{web}", '
                          'reason="Signaled"}')
        assert prom.value(f'container_network_transmit_packets_total'
                          f'{{name="{web}", interface="eth0"}}') >= 1
        assert prom.value(f'container_spec_memory_limit_bytes{{name="{web}"}}') \
            == 128 * 1024 * 1024
        assert prom.value(f'nsvisor_link_up{{name="{web}", interface="eth0"}}') == 1
    finally:
        prom.stop()
    assert prom.proc.returncode is not None and not prom.dir.exists()
