"""Network namespaces held by child processes, and links with a per-run prefix.

A namespace here is ``/proc/<pid>/ns/net`` of a forked child that unshared it and then
blocks reading a pipe: nothing under ``/run/netns``, and killing the child (by pid) makes
the kernel destroy the namespace with every interface in it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from pyroute2 import IPRoute

from supervisor.linux import libc

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

PREFIX = "nt" + secrets.token_hex(2)
"""Every host link a test creates starts with this (6 chars, leaving 9 for the rest)."""


class Holder:
    """A child process sitting in its own network namespace until killed.

    util-linux's ``unshare`` running ``cat`` on a pipe: spawned, not forked, since the
    test process has threads (a forked child could inherit a lock one of them held).
    """

    def __init__(self, flags: int = CLONE_NEWNET) -> None:
        argv = ["unshare", "--net"] + (["--user"] if flags & CLONE_NEWUSER else [])
        proc = subprocess.Popen([*argv, "--", "cat"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = proc.pid
        self._proc = proc
        try:
            ours = os.stat("/proc/self/ns/net").st_ino
            deadline = time.monotonic() + 10
            while True:  # ready once cat runs: the namespace is made before the exec
                if proc.poll() is not None:
                    raise OSError(errno.EIO, "unshare in the holder failed: "
                                  + proc.stderr.read().decode().strip())
                with contextlib.suppress(OSError):
                    if os.stat(self.netns_path).st_ino != ours and \
                            os.readlink(f"/proc/{self.pid}/exe").endswith("/cat"):
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"holder {self.pid} did not start")
                time.sleep(0.002)
        except BaseException:
            self.kill()
            raise

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL by pid and reap, bounded (stdin's EOF alone is not enough: a later
        spawn may have inherited the write end)."""
        if self.pid <= 0:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"holder {self.pid} was not reaped") from None
        finally:
            for pipe in (self._proc.stdin, self._proc.stderr):
                pipe.close()
        self.pid = -1


def in_netns(pid: int, fn: Callable[[], object]) -> object:
    """Run ``fn`` in a thread inside ``pid``'s netns (bounded); returns its result."""
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        raise TimeoutError("in_netns: thread did not finish")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def links(pid: int | None = None) -> dict[str, dict]:
    """name -> {index, up, master, kind, mtu} in the host (or ``pid``'s) namespace."""
    def dump() -> dict[str, dict]:
        with IPRoute() as ipr:
            return {
                m.get("ifname"): {
                    "index": m["index"], "up": bool(m["flags"] & 1), "master": m.get("master"),
                    "kind": m.get(("linkinfo", "kind")), "mtu": m.get("mtu"),
                }
                for m in ipr.link("dump")
            }
    return dump() if pid is None else in_netns(pid, dump)  # type: ignore[return-value]


def addrs(pid: int) -> dict[str, list[str]]:
    def dump() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        with IPRoute() as ipr:
            names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
            for a in ipr.addr("dump", family=socket.AF_INET):
                out.setdefault(names[a["index"]], []).append(
                    f"{a.get('address')}/{a['prefixlen']}")
        return out
    return in_netns(pid, dump)  # type: ignore[return-value]


def prefixed_links() -> list[str]:
    return sorted(n for n in links() if n.startswith(PREFIX))


def delete_prefixed_links() -> None:
    with IPRoute() as ipr:
        for m in ipr.link("dump"):
            if (m.get("ifname") or "").startswith(PREFIX):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=m["index"])


def ns_socket(pid: int | None, type_: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    if pid is None:
        return socket.socket(socket.AF_INET, type_, proto)
    return in_netns(pid, lambda: socket.socket(socket.AF_INET, type_, proto))  # type: ignore


@contextlib.contextmanager
def listener(pid: int | None, addr: str, port: int = 0) -> Iterator[tuple[socket.socket, int]]:
    """A TCP listener bound in ``pid``'s netns (the host's for ``None``)."""
    s = ns_socket(pid)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(8)
        yield s, s.getsockname()[1]
    finally:
        s.close()


def tcp_reaches(pid: int | None, addr: str, port: int, timeout: float = 2.0,
                source: str | None = None) -> bool:
    """Does a TCP connect from ``pid``'s netns to ``addr:port`` complete within ``timeout``?"""
    s = ns_socket(pid)
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((addr, port))
        return True
    except (TimeoutError, ConnectionRefusedError, OSError):
        return False
    finally:
        s.close()


def icmp_echo(pid: int | None, dst: str, timeout: float = 1.0) -> bool:
    """One ICMP echo request/reply from ``pid``'s netns (the host's for ``None``) over a
    raw socket (root), so the test does not depend on a ``ping`` binary."""
    s = ns_socket(pid, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        ident = os.getpid() & 0xFFFF
        payload = b"nsvisor-test"
        header = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + (1).to_bytes(2, "big")
        csum = _checksum(header + payload)
        packet = header[:2] + csum.to_bytes(2, "big") + header[4:] + payload
        s.settimeout(timeout)
        try:
            s.sendto(packet, (dst, 0))
        except OSError:  # no route (yet): an interface being (re)made
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, (src, _) = s.recvfrom(2048)
            except TimeoutError:
                return False
            ihl = (data[0] & 0x0F) * 4
            icmp = data[ihl:]
            if src == dst and icmp[0] == 0 and int.from_bytes(icmp[4:6], "big") == ident:
                return True
        return False
    finally:
        s.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def child_pids() -> list[int]:
    from .conftest import process_table

    return sorted(pid for pid, _state, ppid in process_table() if ppid == os.getpid())


def run_netns_entries() -> list[str]:
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
