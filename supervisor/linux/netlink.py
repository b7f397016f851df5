"""Container network wiring over rtnetlink, without helper processes or files.

The daemon calls these while a container's init is held before exec: the container's
network namespace is named by that init's host pid (``/proc/<pid>/ns/net``), so nothing is
ever bind-mounted under ``/run/netns`` and nothing outlives the container -- when its last
process exits, the kernel destroys the namespace and every interface in it, which also
removes the host end of each veth.

**How a namespace is entered.** pyroute2's ``IPRoute(netns=...)`` forks a helper process
per socket (about 9 ms here, and fork in a multithreaded daemon can deadlock). A netlink
socket, though, stays in the namespace it was *created* in, and namespace membership is
per thread: so a throw-away thread ``setns()``-es into the container's namespace, creates
the socket and ends (:func:`netns_socket`), and the calling thread then talks to the
container's namespace through it without ever changing namespace itself.

**How messages are sent.** pyroute2's message classes (``ifinfmsg``, ``ifaddrmsg``,
``rtmsg``) encode and decode; :class:`Rtnl` only sends them on a plain blocking socket and
reads the kernel's acknowledgement. pyroute2's ``IPRoute`` adds an asyncio loop per
instance (0.7 ms to open) and ~0.2 ms per request, which made one container's wiring cost
5-6 ms; this way it is about 2 ms, works from any thread (``IPRoute`` refuses to run in a
thread whose event loop is running) and shows the kernel's extended-ack text in errors.

**Fewer steps, less to undo.** Container-side interfaces are created *directly inside* the
target namespace (``IFLA_NET_NS_FD`` on the veth peer) under their final name: there is no
temporary host-side name to collide, rename or leak if the daemon dies half way.

Every failure is a :class:`NetlinkError` naming the operation, the links and the reason,
and whatever the failing call created is removed before it raises. Calls block for about
a millisecond; the daemon may still prefer ``anyio.to_thread.run_sync`` for them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, TypeVar

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    nlmsg,
)
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from supervisor.linux import libc

__all__ = [
    "IFNAMSIZ",
    "NETNS_TIMEOUT",
    "OWNER_ALIAS",
    "LinkCounters",
    "NetlinkError",
    "Rtnl",
    "attach_container",
    "check_ifname",
    "connect_pair",
    "delete_link",
    "detach",
    "ensure_bridge",
    "link_stats",
    "loopback_up",
    "netns_socket",
    "parse_net_dev",
    "veth_name",
]

IFNAMSIZ = 16
"""The kernel's interface-name buffer: 15 characters and the NUL."""

OWNER_ALIAS = "nsvisor"
"""The ``ifalias`` of bridges we create: :func:`delete_link` refuses bridges without it,
so a config typo naming a host bridge can never delete it."""

NETNS_TIMEOUT = 10.0
"""Upper bound for entering a namespace or waiting for one kernel answer."""

_T = TypeVar("_T")

_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # errors carry only the request's header, not the whole request
_NETLINK_EXT_ACK = 11  # ... plus the kernel's explanation ("Master device not found")
_NLM_F_ACK_TLVS = 0x200
_NLMSGERR_ATTR_MSG = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_HDR = struct.Struct("=IHHII")
_SIOCGIFMTU = 0x8921
_AF_INET = socket.AF_INET
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RTN_UNICAST = 1


class NetlinkError(OSError):
    """A failed network operation; ``str()`` names the step, ``errno`` is the kernel's."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


class _KernelError(OSError):
    """An NLMSG_ERROR answer, with the extended-ack text when the kernel gave one."""

    def __init__(self, code: int, detail: str | None) -> None:
        super().__init__(code, os.strerror(code))
        self.detail = detail


def _reason(exc: BaseException) -> tuple[str, int | None]:
    if isinstance(exc, _KernelError) and exc.detail:
        return f"{os.strerror(exc.errno)} ({exc.detail})", exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno), exc.errno
    return f"{type(exc).__name__}: {exc}", None


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Turn any failure inside into ``NetlinkError("netlink: <what>: <reason>")``."""
    try:
        yield
    except NetlinkError:
        raise
    except Exception as exc:
        reason, code = _reason(exc)
        raise NetlinkError(f"netlink: {what}: {reason}", code) from exc


def check_ifname(name: str) -> str:
    """Reject names the kernel would refuse, before any link is created (``ValueError``)."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise ValueError(f"interface name {name!r} contains '/', ':' or whitespace")
    return name


def veth_name(*parts: str, prefix: str = "nsv") -> str:
    """A stable 15-character host interface name for e.g. ``(container, network)``.

    Host ends must be unique on the host and short, and the same container+network must map
    to the same name after a daemon restart (to find and delete a stale link), hence a hash.
    """
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return check_ifname(prefix + digest[: IFNAMSIZ - 1 - len(prefix)])


# --- entering a namespace -------------------------------------------------------------


def _open_netns(pid: int) -> int:
    with _step(f"opening the network namespace of pid {pid}"):
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _in_netns_thread(nsfd: int, pid: int, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in a new thread that first joins the namespace behind ``nsfd``.

    setns(CLONE_NEWNET) changes only the calling thread, and the thread ends right after,
    so no other code ever runs in the container's namespace by accident.
    """
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            with _step(f"entering the network namespace of pid {pid}"):
                libc.setns(nsfd, libc.CLONE_NEWNET)
            box["value"] = fn()
        except BaseException as exc:  # handed over to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=worker, name=f"nsvisor-netns-{pid}", daemon=True)
    thread.start()
    thread.join(NETNS_TIMEOUT)
    if thread.is_alive():
        raise NetlinkError(f"netlink: entering the network namespace of pid {pid}: no "
                           f"answer within {NETNS_TIMEOUT:g}s", errno.ETIMEDOUT)
    if "error" in box:
        raise box["error"]
    return box["value"]


def netns_socket(pid: int | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket living in ``pid``'s network namespace (the caller's for ``None``).

    A socket keeps the namespace it was created in: this is how the wiring, the link
    watcher and tests reach "inside" a container without moving any long-lived thread.
    """
    if pid is None:
        return socket.socket(family, type_ | socket.SOCK_CLOEXEC, proto)
    nsfd = _open_netns(pid)
    try:
        return _in_netns_thread(
            nsfd, pid, lambda: socket.socket(family, type_ | socket.SOCK_CLOEXEC, proto))
    finally:
        os.close(nsfd)


# --- a minimal blocking rtnetlink client ----------------------------------------------


class Rtnl:
    """Blocking rtnetlink requests on one socket: pyroute2 encodes, the kernel answers.

    ``Rtnl()`` talks to the caller's namespace, ``Rtnl(pid)`` to ``pid``'s. Not thread
    safe (one request at a time); cheap to open (a socket), so open one per operation.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.where = "the host" if pid is None else f"pid {pid}"
        self.sock = netns_socket(pid, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            with contextlib.suppress(OSError):  # older kernels: errors lose their detail
                self.sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
            self.sock.bind((0, 0))
            self.sock.settimeout(NETNS_TIMEOUT)
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: nlmsg, msg_type: int, flags: int = 0) -> list[bytes]:
        """Send ``msg`` and wait for the kernel's ack; returns the raw reply messages
        (for a GET) and raises :class:`OSError` (errno, kernel text) for an error."""
        self._seq += 1
        seq = self._seq
        header = msg["header"]
        header["type"] = msg_type
        header["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        header["sequence_number"] = seq
        msg.encode()
        self.sock.send(msg.data)
        replies: list[bytes] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, mflags, mseq, _ = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if mseq == seq:
                    if mtype == _NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + 16)[0]
                        if code:
                            raise _KernelError(code, _ext_ack_text(data, offset, length,
                                                                   mflags))
                        return replies
                    if mtype == _NLMSG_DONE:
                        return replies
                    replies.append(data[offset:offset + length])
                offset += (length + 3) & ~3

    def _link_reply(self, name: str) -> bytes | None:
        """The raw RTM_NEWLINK answer for ``name``, or None if there is no such link."""
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            replies = self.request(msg, RTM_GETLINK)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        return replies[0] if replies else None

    def ifindex(self, name: str) -> int | None:
        """The index of ``name`` in this socket's namespace (None if there is none).

        Only the fixed header of the reply is read: pyroute2 would decode every attribute
        and statistic, which costs about half a millisecond.
        """
        reply = self._link_reply(name)
        return struct.unpack_from("=i", reply, 20)[0] if reply else None

    def link_flags(self, name: str) -> int | None:
        """The IFF_* flags of ``name`` now (None if there is no such link); read from the
        reply's fixed header, like :meth:`ifindex`."""
        reply = self._link_reply(name)
        return struct.unpack_from("=I", reply, 24)[0] if reply else None

    def get_link(self, name: str) -> ifinfmsg | None:
        """The decoded RTM_NEWLINK for ``name`` (attributes by pyroute2 name), or None."""
        reply = self._link_reply(name)
        if reply is None:
            return None
        link = ifinfmsg(reply)
        link.decode()
        return link

    def set_link(self, index: int = 0, *, up: bool | None = None, name: str | None = None,
                 **attrs: Any) -> None:
        """RTM_NEWLINK on an existing link (by ``index``, else by ``name``)."""
        msg = ifinfmsg()
        msg["index"] = index
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        nlas = [("IFLA_IFNAME", name)] if name and not index else []
        nlas += [(ifinfmsg.name2nla(k), v) for k, v in attrs.items()]
        msg["attrs"] = nlas
        self.request(msg, RTM_NEWLINK)

    def add_link(self, name: str, kind: str, *, up: bool = False, info_data: list | None = None,
                 **attrs: Any) -> None:
        """RTM_NEWLINK create-exclusive; ``attrs`` by pyroute2 name (``mtu``, ``master``,
        ``net_ns_fd``, ``address``...), ``info_data`` inside IFLA_LINKINFO."""
        msg = ifinfmsg()
        if up:
            msg["flags"] = msg["change"] = IFF_UP
        linkinfo: list[Any] = [("IFLA_INFO_KIND", kind)]
        if info_data:
            linkinfo.append(("IFLA_INFO_DATA", {"attrs": info_data}))
        msg["attrs"] = [("IFLA_IFNAME", name),
                        *((ifinfmsg.name2nla(k), v) for k, v in attrs.items()),
                        ("IFLA_LINKINFO", {"attrs": linkinfo})]
        self.request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def del_link(self, index: int = 0, *, name: str | None = None) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        if name and not index:
            msg["attrs"] = [("IFLA_IFNAME", name)]
        self.request(msg, RTM_DELLINK)

    def add_address(self, index: int, iface: IPv4Interface, *, replace: bool = False) -> None:
        """Add an IPv4 address; ``replace`` makes it idempotent (no EEXIST)."""
        msg = ifaddrmsg()
        msg["family"] = _AF_INET
        msg["prefixlen"] = iface.network.prefixlen
        msg["index"] = index
        attrs = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
        if iface.network.prefixlen < 31:
            attrs.append(("IFA_BROADCAST", str(iface.network.broadcast_address)))
        msg["attrs"] = attrs
        self.request(msg, RTM_NEWADDR,
                     NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL))

    def add_default_route(self, index: int, gateway: IPv4Address) -> None:
        msg = rtmsg()
        msg["family"] = _AF_INET
        msg["table"] = _RT_TABLE_MAIN
        msg["proto"] = _RTPROT_BOOT
        msg["type"] = _RTN_UNICAST
        msg["attrs"] = [("RTA_GATEWAY", str(gateway)), ("RTA_OIF", index)]
        self.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)


def _ext_ack_text(data: bytes, offset: int, length: int, flags: int) -> str | None:
    """NLMSGERR_ATTR_MSG from an error message sent with NETLINK_CAP_ACK."""
    if not flags & _NLM_F_ACK_TLVS:
        return None
    pos, end = offset + 16 + 4 + 16, offset + length  # header, error, echoed header
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        if atype & 0x3FFF == _NLMSGERR_ATTR_MSG:
            return data[pos + 4:pos + alen].split(b"\0", 1)[0].decode(errors="replace")
        pos += (alen + 3) & ~3
    return None


def _ifmtu(name: str) -> int:
    """MTU of host link ``name`` (SIOCGIFMTU: no netlink decode needed for one number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16s24x", name.encode())
        return struct.unpack_from("16xi", fcntl.ioctl(s, _SIOCGIFMTU, ifreq))[0]


# --- bridges and links on the host ----------------------------------------------------


def ensure_bridge(name: str, gateway_cidr: str, *, mtu: int | None = None) -> int:
    """Create (if missing) the Linux bridge ``name`` with ``gateway_cidr``, up; its ifindex.

    Idempotent, so the daemon can call it for every network on every start: an existing
    bridge (ours from a previous run, or one an operator made) is adopted and only gets
    the gateway address and ``up`` if it lacks them; a non-bridge of that name is an error.
    A new bridge gets a fixed random MAC: otherwise it takes the lowest port MAC and
    changes it whenever containers come and go, which breaks the neighbours' ARP caches.
    """
    check_ifname(name)
    gw = IPv4Interface(gateway_cidr)
    with Rtnl() as rt:
        with _step(f"looking up bridge {name}"):
            link = rt.get_link(name)
        if link is not None and link.get(("linkinfo", "kind")) != "bridge":
            kind = link.get(("linkinfo", "kind")) or "device"
            raise NetlinkError(f"netlink: creating bridge {name}: a {kind} of that name "
                               "already exists", errno.EEXIST)
        created = False
        try:
            if link is None:
                mac = ":".join(f"{b:02x}" for b in [0x02, *os.urandom(5)])
                extra = {"mtu": mtu} if mtu else {}
                with _step(f"creating bridge {name}"):
                    rt.add_link(name, "bridge", address=mac, **extra)
                    created = True
                    index = rt.ifindex(name)
                    if index is None:
                        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
                with _step(f"marking bridge {name} as ours"):
                    rt.set_link(index, ifalias=OWNER_ALIAS)
            else:
                index = link["index"]
            with _step(f"adding {gateway_cidr} to bridge {name}"):
                rt.add_address(index, gw, replace=True)
            with _step(f"setting bridge {name} up"):
                rt.set_link(index, up=True)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    rt.del_link(name=name)
            raise
        return index


def delete_link(name: str) -> bool:
    """Delete the host link ``name``; False if it did not exist (idempotent).

    Bridges are deleted only if :func:`ensure_bridge` created them (``ifalias``), so that
    removing a network can never take down a bridge the host relies on.
    """
    check_ifname(name)
    with Rtnl() as rt:
        with _step(f"looking up link {name}"):
            link = rt.get_link(name)
        if link is None:
            return False
        if link.get(("linkinfo", "kind")) == "bridge" and link.get("ifalias") != OWNER_ALIAS:
            raise NetlinkError(f"netlink: deleting bridge {name}: not created by nsvisor "
                               f"(ifalias is not {OWNER_ALIAS!r}); left alone", errno.EPERM)
        with _step(f"deleting link {name}"):
            try:
                rt.del_link(link["index"])
            except OSError as exc:
                if exc.errno == errno.ENODEV:  # went away meanwhile (its netns died)
                    return False
                raise
        return True


def detach(host_ifname: str) -> bool:
    """Remove a container's veth by its host end (the kernel removes the pair)."""
    return delete_link(host_ifname)


# --- container side -------------------------------------------------------------------


def _configure_inside(rt: Rtnl, pid: int, ifname: str, iface: IPv4Interface,
                      gateway: IPv4Address | None) -> None:
    """``lo`` and ``ifname`` up, ``ifname`` gets its address, default route via
    ``gateway`` if given (the order the kernel needs: the gateway must be on-link)."""
    with _step(f"setting lo up in pid {pid}"):
        rt.set_link(name="lo", up=True)
    with _step(f"setting {ifname} up in pid {pid}"):
        index = rt.ifindex(ifname)
        if index is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        rt.set_link(index, up=True)
    with _step(f"adding {iface} to {ifname} in pid {pid}"):
        rt.add_address(index, iface)
    if gateway is not None:
        with _step(f"adding a default route via {gateway} on {ifname} in pid {pid}"):
            rt.add_default_route(index, gateway)


def _exists_error(what: str, host_name: str, inside: str, pid: int) -> NetlinkError:
    """EEXIST from a veth add does not say which end; name the one that exists."""
    with Rtnl() as rt:
        host_taken = rt.ifindex(host_name) is not None
    reason = (f"host link {host_name} already exists" if host_taken
              else f"pid {pid} already has an interface named {inside}")
    return NetlinkError(f"netlink: {what}: {os.strerror(errno.EEXIST)} ({reason})",
                        errno.EEXIST)


def attach_container(
    pid: int,
    host_ifname: str,
    container_ifname: str,
    address_cidr: str,
    *,
    bridge: str | None = None,
    gateway: str | None = None,
    mtu: int | None = None,
) -> int:
    """Give the container of ``pid`` an interface on ``bridge``; returns the host end's index.

    A veth pair is created with its peer directly inside the container's namespace as
    ``container_ifname`` (e.g. ``eth0``), with the bridge's MTU (or ``mtu``); the host end
    ``host_ifname`` is enslaved to ``bridge`` and set up in the same request. Inside: ``lo``
    up, ``address_cidr`` on the interface, up, and a default route via ``gateway`` if given
    (pass it for one network per container only: a second default route is EEXIST).
    On any failure the pair is deleted again (deleting the host end removes both).
    """
    check_ifname(host_ifname)
    check_ifname(container_ifname)
    iface = IPv4Interface(address_cidr)
    gw = IPv4Address(gateway) if gateway else None
    what = f"creating veth {host_ifname}/{container_ifname} for pid {pid}"
    nsfd = _open_netns(pid)
    try:
        with Rtnl() as host:
            attrs: dict[str, Any] = {}
            if bridge is not None:
                with _step(f"{what}: looking up bridge {bridge}"):
                    br_index = host.ifindex(bridge)
                    if br_index is None:
                        raise OSError(errno.ENODEV, f"no bridge named {bridge}")
                    attrs["master"] = br_index
                    mtu = mtu or _ifmtu(bridge)
            peer: list[Any] = [("IFLA_IFNAME", container_ifname), ("IFLA_NET_NS_FD", nsfd)]
            if mtu:
                attrs["mtu"] = mtu
                peer.append(("IFLA_MTU", mtu))
            try:
                # The host end comes up last, once the container's end has its address:
                # an ARP request sent into a half-made link would go unanswered and the
                # kernel retries only a second later.
                host.add_link(host_ifname, "veth", up=False, **attrs,
                              info_data=[("VETH_INFO_PEER", {"attrs": peer})])
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise _exists_error(what, host_ifname, container_ifname, pid) from exc
                with _step(what):
                    raise
            try:
                with _step(f"{what}: looking up the host end"):
                    index = host.ifindex(host_ifname)
                    if index is None:  # the container died meanwhile, taking the pair
                        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
                with Rtnl(pid) as inside:
                    _configure_inside(inside, pid, container_ifname, iface, gw)
                with _step(f"{what}: setting {host_ifname} up"):
                    host.set_link(index, up=True)
            except BaseException:
                with contextlib.suppress(OSError):
                    host.del_link(name=host_ifname)
                raise
            return index
    finally:
        os.close(nsfd)


def connect_pair(
    pid_a: int,
    ifname_a: str,
    cidr_a: str,
    pid_b: int,
    ifname_b: str,
    cidr_b: str,
    *,
    mtu: int | None = None,
) -> None:
    """Join two containers with one veth pair (the point-to-point "veth" network).

    Both ends are created directly in their namespaces (``ifname_a`` in ``pid_a``'s,
    ``ifname_b`` in ``pid_b``'s), so the pair never appears on the host at all, and each
    end gets its address and goes up. On failure the pair is deleted.
    """
    check_ifname(ifname_a)
    check_ifname(ifname_b)
    iface_a, iface_b = IPv4Interface(cidr_a), IPv4Interface(cidr_b)
    what = f"creating veth {ifname_a}/{ifname_b} between pid {pid_a} and pid {pid_b}"
    with contextlib.ExitStack() as stack:
        fd_a = _open_netns(pid_a)
        stack.callback(os.close, fd_a)
        fd_b = _open_netns(pid_b)
        stack.callback(os.close, fd_b)
        peer: list[Any] = [("IFLA_IFNAME", ifname_b), ("IFLA_NET_NS_FD", fd_b)]
        attrs: dict[str, Any] = {"net_ns_fd": fd_a}
        if mtu:
            attrs["mtu"] = mtu
            peer.append(("IFLA_MTU", mtu))
        with Rtnl() as host:
            try:
                host.add_link(ifname_a, "veth", **attrs,
                              info_data=[("VETH_INFO_PEER", {"attrs": peer})])
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    # which namespace has the name is not worth two lookups: say both
                    raise NetlinkError(f"netlink: {what}: {os.strerror(errno.EEXIST)} "
                                       f"({ifname_a} in pid {pid_a} or {ifname_b} in pid "
                                       f"{pid_b})", errno.EEXIST) from exc
                with _step(what):
                    raise
        try:
            with Rtnl(pid_b) as side_b:
                _configure_inside(side_b, pid_b, ifname_b, iface_b, None)
            with Rtnl(pid_a) as side_a:
                _configure_inside(side_a, pid_a, ifname_a, iface_a, None)
        except BaseException:
            with contextlib.suppress(OSError), Rtnl(pid_a) as rt:
                rt.del_link(name=ifname_a)
            raise


def loopback_up(pid: int) -> None:
    """Set ``lo`` up in the container of ``pid`` (a private netns with no networks):
    the kernel creates it down, and many programs expect 127.0.0.1 to work."""
    with _step(f"setting lo up in pid {pid}"), Rtnl(pid) as rt:
        rt.set_link(name="lo", up=True)


# --- statistics -----------------------------------------------------------------------


# Interface counters live in netstats (no pyroute2 needed); kept importable from here.
from .netstats import LinkCounters, link_stats, parse_net_dev  # noqa: E402, F401
