"""Which containers have exited: every running container's pidfd in one epoll set.

A pidfd turns readable when its process exits, whether or not it is our child (an init
adopted after a daemon restart is not). Rather than a task per container waiting on its
own pidfd - a task, its coroutine, its cancel scope and a selector registration, ~5 KiB
of Python objects for each running container - the pidfds go into one epoll set, which
is itself readable when any of them is, and one task waits on that.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

T = TypeVar("T")


class ExitWatcher(Generic[T]):
    """Calls ``on_exit(item)`` once for each watched pidfd that turns readable."""

    def __init__(self, on_exit: Callable[[T], None]) -> None:
        self._on_exit = on_exit
        self._epoll = select.epoll()
        self._items: dict[int, T] = {}

    def watch(self, pidfd: int, item: T) -> None:
        """Report ``item`` when ``pidfd``'s process exits (at once if it has)."""
        self._epoll.register(pidfd, select.EPOLLIN)
        self._items[pidfd] = item

    def unwatch(self, pidfd: int) -> None:
        """Stop watching ``pidfd``; call before closing it if it may still be watched."""
        if self._items.pop(pidfd, None) is not None:
            try:
                self._epoll.unregister(pidfd)
            except OSError:  # closed already: the kernel dropped it from the set
                pass

    def __len__(self) -> int:
        return len(self._items)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Wait for exits and report them, until cancelled; then close the epoll set."""
        task_status.started()
        try:
            while True:
                await anyio.wait_readable(self._epoll.fileno())
                for fd, _events in self._epoll.poll(0):
                    item = self._items.pop(fd, None)
                    # Level-triggered: an exited pidfd stays readable, so it leaves the
                    # set before anyone hears of it.
                    self._epoll.unregister(fd)
                    if item is not None:
                        self._on_exit(item)
        finally:
            self._items.clear()
            self._epoll.close()
