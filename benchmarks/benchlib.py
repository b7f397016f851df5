"""What several benchmarks need: statistics, reaping strays, supervisord's venv.

The benchmarks run as scripts (``python benchmarks/NAME.py``), so this directory is on
``sys.path`` and they ``import benchlib``.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys

SV_VERSION = "4.3.0"  # the supervisord the benchmarks compare with
DEFAULT_SV_VENV = f"/var/tmp/nsvisor-bench/supervisor-{SV_VERSION}-venv"


class BenchError(RuntimeError):
    """A benchmark cannot go on: the message says what went wrong."""


def summarize(values: list[float]) -> dict:
    """Median, p95, min, max and count of ``values`` ({"n": 0} for none)."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {"median": statistics.median(ordered), "p95": p95, "min": ordered[0],
            "max": ordered[-1], "n": len(ordered)}


def in_container_of(pid: int, prefix: str) -> bool:
    """Whether ``pid`` runs in the cgroup of a container named ``prefix...``: a pid
    remembered from a state file is only killed when it is still one of ours."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f"/nsvisor/{prefix}" in f.read()
    except OSError:
        return False


def reap_strays() -> int:
    """Reap children nobody waited for (orphans adopted by us as a subreaper); how many.
    The callers have put the repository on ``sys.path``."""
    from supervisor.runtime.reaper import Reaper  # the project's one waitpid loop

    return len(Reaper().reap_all())


def ensure_supervisord(venv: str = DEFAULT_SV_VENV, quiet: bool = False) -> str:
    """supervisord SV_VERSION in its own venv (our import package is also called
    ``supervisor``: it is only ever run, never imported), made with pip on first use;
    returns its version."""
    exe = os.path.join(venv, "bin", "supervisord")
    if not os.path.exists(exe):
        if not quiet:
            print(f"creating a venv for supervisord {SV_VERSION} at {venv} (pip install)",
                  file=sys.stderr)
        os.makedirs(os.path.dirname(venv), exist_ok=True)
        base_python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base_python, "-m", "venv", venv], check=True, timeout=300)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q",
                        f"supervisor=={SV_VERSION}"], check=True, timeout=600,
                       stdout=subprocess.DEVNULL if quiet else None)
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    version = out.stdout.strip()
    if version != SV_VERSION:
        raise BenchError(f"{exe} is version {version!r}, not {SV_VERSION}")
    return version
