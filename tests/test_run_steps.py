"""nsvisord's driver of runtime launch steps: timeouts and cancellation reach the steps."""

from __future__ import annotations

import socket
from collections.abc import Generator

import anyio
import pytest

from supervisor.daemon.supervisor import _run_steps
from supervisor.runtime import LaunchError


def steps(sock: socket.socket, seen: list[str]) -> Generator[socket.socket, None, str]:
    """Like a launch: waits twice on ``sock``, records what was thrown into it."""
    try:
        yield sock
        sock.recv(16)
        yield sock
        sock.recv(16)
        return "done"
    except BaseException as e:
        seen.append(type(e).__name__)
        raise


def test_steps_run_to_their_result() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        b.send(b"1")
        b.send(b"2")
        assert anyio.run(_run_steps, steps(a, []), 5.0, "c", backend="asyncio") == "done"


def test_a_timeout_is_thrown_into_the_steps_and_named() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seen: list[str] = []
    with a, b:
        b.send(b"1")  # the first wait ends, the second never does
        with pytest.raises(LaunchError) as e:
            anyio.run(_run_steps, steps(a, seen), 0.2, "web", backend="asyncio")
    assert e.value.step == "timeout" and "web: no answer" in str(e.value)
    assert seen == ["CancelledError"]  # the steps cleaned up, as when cancelled


def test_a_cancellation_is_thrown_into_the_steps() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seen: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_run_steps, steps(a, seen), 30.0, "c")
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    with a, b:
        anyio.run(main, backend="asyncio")
    assert seen == ["CancelledError"]
