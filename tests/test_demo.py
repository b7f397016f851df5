"""The README's main job: the demo config is valid and every container in it runs."""

from __future__ import annotations

import pytest

from supervisor import demo
from supervisor.model.config import load_config

DEMO = "config/demo.toml"


def test_demo_config_is_valid() -> None:
    config = load_config(DEMO)
    assert {"isolated", "host-network", "locked-down"} <= set(config.containers)


@pytest.mark.root
def test_demo_runs_every_container(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main([DEMO]) == 0
    out = capsys.readouterr().out
    assert "hostname:   isolated" in out
    assert "root: read-only" in out
    assert "user: 1000:1000, effective caps 0000000000000000" in out
