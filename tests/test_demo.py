"""The README's main job (nsvisord on config/demo.toml) and the runtime tour."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from supervisor import demo
from supervisor.model.config import load_config

from .conftest import RUN_ID
from .daemon_harness import Daemon

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
    """The demo's containers, renamed with this run's prefix, all come up as designed."""
    text = Path("config/demo.toml").read_text()
    containers = text[text.index("[containers."):]
    names = re.findall(r"^\[containers\.([\w.-]+)\]", containers, re.M)
    for name in names:
        containers = re.sub(rf'(\[containers\.|")({re.escape(name)})(\]|")',
                            r"\1{p}-\2\3", containers)
    d = Daemon(tmp_path, f"demo{RUN_ID}")
    d.write_config(containers)
    try:
        d.start()
        for name in names:
            if name != "crashy":
                d.wait_state(name, "RUNNING", timeout=20)
        d.wait_state("crashy", "BACKOFF", timeout=20)  # it crashed and waits to restart
        assert "tick 1" in (d.log_dir / f"{d.name('ticker')}.out.log").read_text()
        assert d.stop() == 0
        exited = [e["container"] for e in d.events("exited")]
        assert exited.index(d.name("app")) < exited.index(d.name("db"))
    finally:
        d.cleanup()
