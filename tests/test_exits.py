"""The daemon's exit watcher: one epoll set of pidfds, one task, real processes."""

from __future__ import annotations

import os
import signal
import subprocess

import anyio
import pytest

from supervisor.daemon.exits import ExitWatcher

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sleepers():
    """Start ``sleep`` processes; every one is killed and reaped at the end."""
    started: list[subprocess.Popen] = []

    def start(seconds: float = 60) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen(["sleep", str(seconds)])
        started.append(proc)
        return proc, os.pidfd_open(proc.pid)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


async def _collect(watcher: ExitWatcher, heard: list, want: int, timeout: float = 5) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        with anyio.move_on_after(timeout):
            while len(heard) < want:
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # anything reported twice would arrive now
        tg.cancel_scope.cancel()


async def test_reports_each_exit_once_and_only_the_exited(sleepers) -> None:
    heard: list[str] = []
    watcher = ExitWatcher[str](heard.append)
    procs = {}
    for name in ("a", "b", "c"):
        procs[name] = sleepers()
        watcher.watch(procs[name][1], name)
    procs["a"][0].send_signal(signal.SIGKILL)
    procs["c"][0].send_signal(signal.SIGTERM)
    await _collect(watcher, heard, want=2)
    assert sorted(heard) == ["a", "c"]  # b still runs: not reported
    assert procs["b"][0].poll() is None
    for _proc, fd in procs.values():
        os.close(fd)


async def test_an_exit_before_watching_is_reported_at_once(sleepers) -> None:
    heard: list[str] = []
    watcher = ExitWatcher[str](heard.append)
    proc, fd = sleepers()
    proc.kill()
    proc.wait(timeout=5)  # reaped even: the pidfd stays readable
    watcher.watch(fd, "gone")
    await _collect(watcher, heard, want=1)
    assert heard == ["gone"]
    os.close(fd)


async def test_unwatched_exit_is_not_reported(sleepers) -> None:
    heard: list[str] = []
    watcher = ExitWatcher[str](heard.append)
    (kept, kept_fd), (dropped, dropped_fd) = sleepers(), sleepers()
    watcher.watch(kept_fd, "kept")
    watcher.watch(dropped_fd, "dropped")
    watcher.unwatch(dropped_fd)
    watcher.unwatch(dropped_fd)  # twice is harmless
    assert len(watcher) == 1
    dropped.kill()
    kept.kill()
    await _collect(watcher, heard, want=1)
    assert heard == ["kept"]
    os.close(kept_fd)
    os.close(dropped_fd)


async def test_the_epoll_set_is_closed_when_the_task_ends(sleepers) -> None:
    watcher = ExitWatcher[str](lambda _item: None)
    _proc, fd = sleepers()
    watcher.watch(fd, "x")
    await _collect(watcher, [], want=0, timeout=0)
    assert watcher._epoll.closed and len(watcher) == 0
    os.close(fd)
