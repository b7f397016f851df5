"""Reading container logs for ``tail`` and ``tail -f``.

``follow_lines`` waits on inotify events of the log directory: it wakes when the file
grows, and reopens it when it is replaced (rotated, cleared by rename) or truncated.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio

from ..linux import inotify

CHUNK = 65536


def last_lines(path: str, count: int) -> list[str]:
    """The last ``count`` complete lines of ``path`` (none if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n") <= count:
                step = min(CHUNK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines[-count:] if count else []


async def follow_lines(path: str, backlog: int) -> AsyncIterator[str]:
    """The last ``backlog`` lines, then every line appended, as it is written."""
    for line in await anyio.to_thread.run_sync(last_lines, path, backlog):
        yield line
    directory, name = os.path.split(path)
    fd = inotify.init()
    try:
        inotify.watch(fd, directory, inotify.IN_MODIFY | inotify.IN_CREATE
                      | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE)
        f = _open_at_end(path)
        partial = b""
        while True:
            await anyio.wait_readable(fd)
            if name not in inotify.read_names(fd):
                continue
            if f is None or _replaced(f, path):
                if f is not None:
                    f.close()
                f = _open_at_start(path)
                partial = b""
            if f is None:
                continue
            data = f.read()
            if not data:
                continue
            data = partial + data
            *complete, partial = data.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
    finally:
        os.close(fd)


def _open_at_end(path: str):  # noqa: ANN202 - a binary file or None
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None
    f.seek(0, os.SEEK_END)
    return f


def _open_at_start(path: str):  # noqa: ANN202
    try:
        return open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None


def _replaced(f, path: str) -> bool:  # noqa: ANN001
    """The name now points to another file, or ours was truncated under our position."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev) or st.st_size < f.tell()
