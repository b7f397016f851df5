"""Shared fixtures: a runtime, unique names per run, and a check that the host stays clean."""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from supervisor.runtime import Container, ContainerSpec, ExitStatus, Runtime
from supervisor.runtime.reaper import DEFAULT_REAPER

RUN_ID = secrets.token_hex(2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: real namespaces, mounts and netlink")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reap_strays() -> Iterator[None]:
    """The test process is a child subreaper (a Runtime made it one): inits orphaned by a
    killed daemon, or commands of a killed exec, end up its children. Reap them after
    each test, as a daemon would, so no test sees another's zombies."""
    yield
    for pid, _status in DEFAULT_REAPER.reap_all():
        DEFAULT_REAPER.forget(pid)


@pytest.fixture(scope="session")
def runtime() -> Iterator[Runtime]:
    rt = Runtime()
    yield rt
    rt.close()


@pytest.fixture
def unique() -> Iterator[callable]:
    """``unique("web")`` -> a container name no other test or run uses."""
    counter = iter(range(10_000))

    def make(base: str = "c") -> str:
        return f"t{RUN_ID}-{base}-{next(counter)}"

    yield make


@dataclass
class Ran:
    status: ExitStatus
    stdout: str
    stderr: str


def run_python(code: str, *, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (this one), its output captured; bounded."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=check)


def read_until_eof(fd: int, timeout: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("output did not end in time")
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


class Runner:
    """Runs containers for a test and guarantees they are gone when it ends."""

    def __init__(self, runtime: Runtime, unique: callable) -> None:
        self.runtime = runtime
        self.unique = unique
        self.started: list[Container] = []

    def spec(self, command: list[str], **kw: object) -> ContainerSpec:
        name = kw.pop("name", None) or self.unique()
        return ContainerSpec(name=name, command=command, **kw)

    def start(self, spec: ContainerSpec, **kw: object) -> Container:
        c = self.runtime.start(spec, **kw)
        self.started.append(c)
        return c

    def run(self, command: list[str], timeout: float = 20, **kw: object) -> Ran:
        """Run to completion, capturing stdout and stderr."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            c = self.start(self.spec(command, **kw), stdout=out_w, stderr=err_w)
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            out = read_until_eof(out_r, timeout)
            err = read_until_eof(err_r, timeout)
            return Ran(c.wait(timeout), out.decode(), err.decode())
        finally:
            os.close(out_r)
            os.close(err_r)

    def sh(self, script: str, **kw: object) -> Ran:
        return self.run(["/bin/sh", "-c", script], **kw)

    def cleanup(self) -> None:
        for c in self.started:
            if c.pidfd is not None and c.poll() is None:
                c.kill()
                with contextlib.suppress(TimeoutError):
                    c.wait(10)
            c.close()


@pytest.fixture
def runner(runtime: Runtime, unique: callable) -> Iterator[Runner]:
    r = Runner(runtime, unique)
    try:
        yield r
    finally:
        r.cleanup()


def process_table() -> list[tuple[int, str, int]]:
    """(pid, state, ppid) of every process now, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(entry), fields[0], int(fields[1])))
    return out


def host_state() -> dict[str, object]:
    """What a failed or finished launch must leave exactly as it was."""
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split(" ", 4)[4] for line in f)
    table = process_table()
    children = [pid for pid, _state, ppid in table if ppid == os.getpid()]
    zombies = [pid for pid, state, _ppid in table if state == "Z"]
    return {"mounts": mounts, "children": sorted(children), "zombies": sorted(zombies),
            "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []}


@pytest.fixture
def high_fd() -> Iterator[int]:
    """A free descriptor number above select()'s FD_SETSIZE (1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is below 1600")
    if soft != resource.RLIM_INFINITY and soft < 1600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1600, hard))
    fd = 1500
    while fd < 1600 and _is_open(fd):
        fd += 1
    try:
        yield fd
    finally:
        if _is_open(fd):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
