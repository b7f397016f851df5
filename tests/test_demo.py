"""The README's main job (nsvisord on config/demo.toml) and the runtime tour."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from supervisor import demo
from supervisor.model.config import load_config

from .conftest import RUN_ID
from .daemon_harness import Daemon, wait_for

pytestmark = pytest.mark.root


def test_demo_and_tour_configs_are_valid() -> None:
    assert len(load_config("config/demo.toml").containers) >= 5
    assert load_config("config/tour.toml").containers


def test_tour_runs_every_container(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["config/tour.toml"]) == 0
    out = capsys.readouterr().out
    assert "hostname:   isolated" in out
    assert "root: read-only" in out
    assert "user: 1000:1000, effective caps 0000000000000000" in out


def test_demo_config_runs_under_nsvisord(tmp_path: Path) -> None:
    """The demo's own file, its names, subnets and port made unique for this run: every
    container comes up as designed, RED pings BLUE, the web server answers on the host."""
    text = Path("config/demo.toml").read_text()
    body = text[text.index("[networks."):]
    names = re.findall(r"^\[containers\.([\w.-]+)\]", body, re.M)
    for name in names:
        body = re.sub(rf'(\[containers\.|")({re.escape(name)})(\]|")', r"\1{p}-\2\3", body)
    third = 100 + int(RUN_ID, 16) % 100
    body = (body.replace("redblue", f"rb{RUN_ID}").replace("lab", f"lab{RUN_ID}")
            .replace("11.11.11.", f"10.{third}.211.").replace("10.123.0.", f"10.{third}.212."))
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    body = body.replace("127.0.0.1:8080:8080", f"127.0.0.1:{port}:8080")
    d = Daemon(tmp_path, f"demo{RUN_ID}")
    d.write_config(body)
    try:
        d.start()
        for name in names:
            if name != "crashy":
                d.wait_state(name, "RUNNING", timeout=30)
        d.wait_state("crashy", "BACKOFF", timeout=20)  # it crashed and waits to restart
        assert "tick 1" in (d.log_dir / f"{d.name('ticker')}.out.log").read_text()
        ping = subprocess.run(
            [sys.executable, "-m", "supervisor.cli.main", "-s", str(tmp_path / "nsvisor.sock"),
             "exec", d.name("red"), "--", "ping", "-c", "3", "-W", "2", f"10.{third}.211.3"],
            capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "3 received" in ping.stdout
        page = wait_for(lambda: _get(f"http://127.0.0.1:{port}/"), 15, "the web container")
        assert page == 200
        assert d.stop() == 0
        exited = [e["container"] for e in d.events("exited")]
        assert exited.index(d.name("app")) < exited.index(d.name("db"))
    finally:
        d.cleanup()


def _get(url: str) -> int | None:
    try:
        return urllib.request.urlopen(url, timeout=3).status
    except OSError:
        return None
