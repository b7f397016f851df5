"""Wait for one file descriptor to turn readable, whatever its number.

``select()`` refuses descriptors from 1024 up (FD_SETSIZE), and nsvisord holds two per
running container (a pidfd and the exit file): past ~500 containers the next pidfd
is one select() cannot take. ``poll()`` has no such limit.
"""

from __future__ import annotations

import errno
import math
import os
import select


def readable(fd: int, timeout: float | None = 0.0) -> bool:
    """Wait up to ``timeout`` seconds (None: for ever, 0: not at all) until ``fd`` is
    readable or hung up - a pidfd whose process exited, a socket with data or closed.
    Raises OSError(EBADF) for a descriptor that is not open."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    events = poller.poll(ms)
    if events and events[0][1] & select.POLLNVAL:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF), fd)
    return bool(events)
