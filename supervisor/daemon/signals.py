"""The daemon's own signals, read from a signalfd inside the event loop.

The signals are blocked in the main thread before any other thread exists, so every
thread inherits the mask and the kernel queues them for the signalfd: no handler runs
at an arbitrary point, and SIGCHLD can never be lost or reaped behind our back.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

from ..linux import libc

HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


def block() -> None:
    """Block the signals nsvisord handles: they wait, queued, for the signalfd. The
    daemon's main() calls it before its heavier imports (so this module imports anyio
    only where it reads), for a SIGHUP or SIGTERM that comes while it starts."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


class SignalReader:
    """Call :meth:`open` in the main thread before starting threads or the event loop."""

    def __init__(self) -> None:
        self.fd = -1

    def open(self) -> None:
        block()
        # An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.fd = libc.signalfd(HANDLED, libc.SFD_CLOEXEC | libc.SFD_NONBLOCK)

    def close(self) -> None:
        """Close the signalfd. The signals stay blocked: nsvisord is ending, and one
        that came meanwhile (a second SIGTERM, a SIGHUP) would otherwise end it at once,
        before its error and its last log lines are written."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def __aiter__(self) -> AsyncIterator[int]:
        import anyio  # see block()

        size = libc.SIGNALFD_SIGINFO_SIZE
        while True:
            await anyio.wait_readable(self.fd)
            try:
                data = os.read(self.fd, size * 32)
            except BlockingIOError:
                continue
            for off in range(0, len(data) - size + 1, size):
                yield libc.read_siginfo(data[off:off + size])[0]
