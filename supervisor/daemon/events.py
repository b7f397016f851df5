"""State changes and link events as they happen, for ``events -f`` and the log.

Subscribers get a bounded queue; one that falls behind by more than its buffer is
dropped (its stream ends) rather than slowing the daemon or growing its memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


class EventBus:
    def __init__(self, keep: int = 1000, buffer: int = 1000) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._buffer = buffer
        self._subscribers: set[MemoryObjectSendStream[dict[str, Any]]] = set()

    def publish(self, type: str, **fields: Any) -> None:
        event = {"time": time.time(), "type": type, **fields}
        self.recent.append(event)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(send)
                send.close()

    def last(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` most recent events kept (all of them when fewer), oldest first."""
        return list(self.recent)[max(0, len(self.recent) - n):]

    @contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[dict[str, Any]]]:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](self._buffer)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()
