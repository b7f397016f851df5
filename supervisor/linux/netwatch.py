"""Link events from the kernel (RTM_NEWLINK / RTM_DELLINK), for an anyio event loop.

The daemon needs to notice when a container's veth or a network bridge disappears or goes
down behind its back (an operator's ``ip link del``, a dying namespace) so it can report
the network as degraded and re-wire. Polling would be late and costly; the kernel pushes
these changes to netlink sockets subscribed to ``RTMGRP_LINK``.

One plain ``NETLINK_ROUTE`` socket, read with :func:`anyio.wait_readable` (no pyroute2
event loop, no thread), decoded here with ``struct``: only the fixed header and four
attributes are needed, and pyroute2 decodes every statistic of every message (~0.4 ms
each), which matters during a burst.

**Lost events.** If the process falls behind, the kernel drops notifications and reports
``ENOBUFS`` once. The socket's queue may then hold events older than the gap, so the
watcher discards it, subscribes a fresh socket and yields :class:`Resync`: the caller
calls :func:`dump_links` and replaces its view. Subscribing *before* the dump means no
change can fall between the two (a change may show up in both, which is harmless).

**Bridge-port noise.** The bridge driver also sends ``AF_BRIDGE`` RTM_NEWLINK/RTM_DELLINK
messages to the same group when a port joins or leaves a bridge; an RTM_DELLINK of that
family does not mean the link is gone, so only ``AF_UNSPEC`` messages become events.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import anyio

from supervisor.linux.netlink import netns_socket

__all__ = [
    "DEFAULT_RCVBUF",
    "LinkEvent",
    "LinkState",
    "LinkWatcher",
    "Resync",
    "dump_links",
    "parse_link_messages",
]

DEFAULT_RCVBUF = 1 << 20
"""1 MiB asked (the kernel doubles it, capped by net.core.rmem_max): ~500 link messages."""

RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
IFF_UP = 0x1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_RTA = struct.Struct("=HH")
_OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
_BUFSIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class LinkState:
    """What one link looks like now (from a dump or the latest event)."""

    ifindex: int
    up: bool
    """Administratively up (IFF_UP): what ``ip link set X up/down`` changes."""
    master: int | None
    """ifindex of the bridge (or bond) it is enslaved to."""
    operstate: str
    """RFC 2863 state: "up", "down", "lowerlayerdown" (e.g. veth peer down), "unknown"..."""
    link_kind: str | None
    """Driver kind from IFLA_LINKINFO: "veth", "bridge"; None for lo and physical NICs."""


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A link appeared or changed (``"new"``), or disappeared from this netns (``"del"``)."""

    kind: Literal["new", "del"]
    ifname: str
    ifindex: int
    up: bool
    master: int | None
    operstate: str = "unknown"
    link_kind: str | None = None

    @property
    def state(self) -> LinkState:
        return LinkState(self.ifindex, self.up, self.master, self.operstate, self.link_kind)


@dataclass(frozen=True, slots=True)
class Resync:
    """Events were lost: rebuild the view from :func:`dump_links`."""

    reason: str


def parse_link_messages(data: bytes | bytearray | memoryview) -> list[LinkEvent]:
    """Decode the RTM_NEWLINK/RTM_DELLINK messages (``AF_UNSPEC`` only) in one datagram."""
    events: list[LinkEvent] = []
    offset, end = 0, len(data)
    while offset + _HDR.size <= end:
        length, mtype, _flags, _seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size or offset + length > end:
            break
        body = offset + _HDR.size
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and length >= _HDR.size + _IFI.size:
            family, _type, index, flags, _change = _IFI.unpack_from(data, body)
            if family == socket.AF_UNSPEC:
                events.append(_link_event(data, mtype, index, flags, body + _IFI.size,
                                          offset + length))
        offset += (length + 3) & ~3
    return events


def _link_event(data: bytes | bytearray | memoryview, mtype: int, index: int, flags: int,
                pos: int, end: int) -> LinkEvent:
    name, master, oper, kind = "", None, 0, None
    for atype, start, stop in _attrs(data, pos, end):
        if atype == IFLA_IFNAME:
            name = _cstr(data, start, stop)
        elif atype == IFLA_MASTER and stop - start >= 4:
            master = struct.unpack_from("=I", data, start)[0] or None
        elif atype == IFLA_OPERSTATE and stop > start:
            oper = data[start]
        elif atype == IFLA_LINKINFO:
            for itype, istart, istop in _attrs(data, start, stop):
                if itype == IFLA_INFO_KIND:
                    kind = _cstr(data, istart, istop)
    return LinkEvent(
        kind="new" if mtype == RTM_NEWLINK else "del",
        ifname=name,
        ifindex=index,
        up=bool(flags & IFF_UP),
        master=master,
        operstate=_OPERSTATES[oper] if oper < len(_OPERSTATES) else "unknown",
        link_kind=kind,
    )


def _attrs(data: bytes | bytearray | memoryview, pos: int,
           end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each rtattr in ``data[pos:end]``."""
    while pos + _RTA.size <= end:
        alen, atype = _RTA.unpack_from(data, pos)
        if alen < _RTA.size or pos + alen > end:
            return
        yield atype & 0x3FFF, pos + _RTA.size, pos + alen
        pos += (alen + 3) & ~3


def _cstr(data: bytes | bytearray | memoryview, start: int, stop: int) -> str:
    return bytes(data[start:stop]).split(b"\0", 1)[0].decode(errors="replace")


def _socket(netns_pid: int | None, groups: int, rcvbuf: int) -> socket.socket:
    sock = netns_socket(netns_pid, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, groups))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class LinkWatcher:
    """``async with LinkWatcher() as w: async for event in w: ...``

    Yields :class:`LinkEvent` and, after lost notifications, :class:`Resync`. The socket
    lives exactly as long as the ``async with`` block, so cancelling the task that reads
    (an anyio cancel scope around it) closes it. ``netns_pid`` watches a container's
    namespace instead of the host's (its socket is made by a short-lived thread that
    joins that namespace, ~0.1 ms); ``rcvbuf`` is the socket buffer to ask for (tests make
    it tiny to force ``ENOBUFS``).
    """

    def __init__(self, *, rcvbuf: int = DEFAULT_RCVBUF, netns_pid: int | None = None) -> None:
        self.rcvbuf = rcvbuf
        self.netns_pid = netns_pid
        self.resyncs = 0
        self._sock: socket.socket | None = None
        self._pending: collections.deque[LinkEvent | Resync] = collections.deque()
        self._buf = bytearray(_BUFSIZE)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def open(self) -> None:
        """Subscribe now (``async with`` does this): events from here on are queued by the
        kernel even before the first read, which is what makes subscribe-then-dump safe."""
        if self._sock is None:
            self._sock = _socket(self.netns_pid, RTMGRP_LINK, self.rcvbuf)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                anyio.notify_closing(sock)  # wakes a reader in another task, if any
            sock.close()
        self._pending.clear()

    async def __aenter__(self) -> LinkWatcher:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> LinkWatcher:
        return self

    async def __anext__(self) -> LinkEvent | Resync:
        while not self._pending:
            if self._sock is None:
                raise StopAsyncIteration
            try:
                await anyio.wait_readable(self._sock)
            except (anyio.ClosedResourceError, OSError):
                if self._sock is None:  # closed by another task: the iteration just ends
                    raise StopAsyncIteration from None
                raise
            self._receive()
        return self._pending.popleft()

    def _receive(self) -> None:
        """Read every datagram queued now (without blocking) into ``_pending``."""
        while self._sock is not None:
            try:
                nbytes, _, flags, _ = self._sock.recvmsg_into([self._buf])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._resync("the kernel dropped link notifications (ENOBUFS)")
                return
            if flags & socket.MSG_TRUNC:
                self._resync(f"a notification was larger than {_BUFSIZE} bytes")
                return
            self._pending.extend(parse_link_messages(memoryview(self._buf)[:nbytes]))

    def _resync(self, reason: str) -> None:
        # What is still queued predates the gap: applying it after the caller's fresh dump
        # could resurrect stale state, so drop it with the socket and start clean.
        self.close()
        self.resyncs += 1
        self.open()
        self._pending.append(Resync(reason))


async def dump_links(netns_pid: int | None = None, *, timeout: float = 10.0,
                     attempts: int = 5) -> dict[str, LinkState]:
    """Every link in the host's (or ``netns_pid``'s) namespace: name -> :class:`LinkState`.

    Retries when the kernel flags the dump as interrupted (links changed while it was
    being read), so the result is one consistent snapshot.
    """
    with anyio.fail_after(timeout):
        for _ in range(attempts):
            links, consistent = await _dump_once(netns_pid)
            if consistent:
                return links
    raise OSError(errno.EAGAIN, f"link dump kept changing after {attempts} attempts")


async def _dump_once(netns_pid: int | None) -> tuple[dict[str, LinkState], bool]:
    sock = _socket(netns_pid, 0, DEFAULT_RCVBUF)
    try:
        seq = int.from_bytes(os.urandom(4), "little") or 1
        request = _HDR.pack(_HDR.size + _IFI.size, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                            seq, 0) + _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(request)
        links: dict[str, LinkState] = {}
        consistent = True
        buf = bytearray(_BUFSIZE)
        while True:
            await anyio.wait_readable(sock)
            try:
                nbytes = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                continue
            view = memoryview(buf)[:nbytes]
            offset = 0
            while offset + _HDR.size <= nbytes:
                length, mtype, flags, mseq, _ = _HDR.unpack_from(view, offset)
                if length < _HDR.size:
                    raise OSError(errno.EPROTO, "malformed netlink message in link dump")
                if mseq == seq:
                    if flags & NLM_F_DUMP_INTR:
                        consistent = False
                    if mtype == NLMSG_DONE:
                        return links, consistent
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", view, offset + _HDR.size)[0]
                        raise OSError(code, f"link dump: {os.strerror(code)}")
                offset += (length + 3) & ~3
            for event in parse_link_messages(view):
                links[event.ifname] = event.state
    finally:
        sock.close()
