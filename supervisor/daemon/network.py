"""Container networks: addresses (IPAM), bridges, veth pairs, published ports, repairs.

Wiring happens while a container's init is held before exec, so the workload starts with
its network in place. The netlink watcher compares every link event about a link we own
with what should be, and repairs the difference at once: a host veth deleted or set down
from outside, a bridge deleted. A buffer overflow (ENOBUFS) means events were lost: then
every running container's links are checked against a full dump.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import SocketListener, SocketStream, TaskGroup

from ..model.config import ContainerConfig
from ..model.ipam import Ipam
from ..model.networks import NetworkConfig, PortConfig, default_bridge_name
from ..model.units import ConfigError
from ..runtime import LaunchError
from .store import write_state

if TYPE_CHECKING:
    from ..linux.netwatch import LinkEvent

log = structlog.get_logger("nsvisord.net")


def _nl() -> Any:
    """The netlink layer. pyroute2 costs ~20 MiB resident: it is loaded only once a
    config has networks."""
    from ..linux import netlink

    return netlink


@dataclass(frozen=True)
class Link:
    """One interface of a running container, as it should be."""

    network: str
    ifname: str  # inside the container: eth0, eth1...
    cidr: str
    host_ifname: str | None  # the end on the host (None for a pair between containers)
    bridge: str | None
    gateway: str | None  # default route via this (the first bridge network only)


class NetworkManager:
    def __init__(self, state_dir: str, on_event: Callable[..., None]) -> None:
        self.state_path = os.path.join(state_dir, "networks.json")
        self.networks: dict[str, NetworkConfig] = {}
        self.ipam: dict[str, Ipam] = {}
        self.members: dict[str, ContainerConfig] = {}
        self.running: dict[str, tuple[int, list[Link]]] = {}  # name -> (init pid, links)
        self.bridges: set[str] = set()
        self.sockets: dict[tuple[str, int], socket.socket] = {}  # bound published ports
        self._port_scopes: dict[tuple[str, int], anyio.CancelScope] = {}
        self.port_owner: dict[tuple[str, int], tuple[str, PortConfig]] = {}
        self._on_event = on_event  # (kind, **fields): counts, logs and publishes
        # Wiring runs in worker threads; the two ends of a veth network must not be
        # wired at the same time (each would take the other's parked end).
        self._pair_lock = threading.RLock()
        self.closing = False
        self._networks_wanted = anyio.Event()  # the watcher starts with the first network
        self._tg: TaskGroup | None = None
        self._saved = self._load()  # allocations of the previous daemon, until configure()
        # Bridges a previous nsvisord of this state_dir made (it may have been killed):
        # ours to remove at shutdown too, whether the config still has them or not.
        self._inherited: set[str] = {b for b in self._saved.get("_bridges", ())
                                     if isinstance(b, str)}
        self._save_lock = threading.Lock()  # configure() on the loop, bridges in threads

    # ------------------------------------------------------------------ configuration

    def configure(self, networks: Mapping[str, NetworkConfig],
                  containers: Mapping[str, ContainerConfig]) -> None:
        """Adopt a (new) config: addresses for every member, kept for those that had one;
        published ports bound (ConfigError naming the key if a port is taken)."""
        self._bind_ports(containers)
        old_ipam, self.ipam = self.ipam, {}
        for name, net in networks.items():
            ipam = Ipam(net.subnet, gateway=net.driver == "bridge")
            previous = old_ipam.get(name) if self.networks.get(name) == net else None
            saved = (previous.to_dict() if previous else self._saved.get(name)
                     if self._saved.get("_subnets", {}).get(name) == net.subnet else None)
            members = {c for c, cfg in containers.items()
                       if any(a.network == name for a in cfg.networks)}
            statics = {c: a.address for c, cfg in containers.items() for a in cfg.networks
                       if a.network == name and a.address}
            for owner, addr in _allocations(saved).items():
                if owner in members and statics.get(owner, addr) == addr:
                    ipam.allocate(owner, addr)  # keep what a running container has
            for owner, addr in statics.items():
                if ipam.address_of(owner) is None:
                    ipam.allocate(owner, addr)
            for owner in sorted(members):
                if ipam.address_of(owner) is None:
                    ipam.allocate(owner)
            self.ipam[name] = ipam
        self.networks = dict(networks)
        self.members = dict(containers)
        if networks:
            self._networks_wanted.set()
        self._saved = {}
        self._save()

    def _bind_ports(self, containers: Mapping[str, ContainerConfig]) -> None:
        """Bind every new published port first; only when all could be bound, close the
        ones no longer wanted. A taken port changes nothing."""
        wanted = {(p.host_ip, p.host_port): (name, p, i) for name, cfg in containers.items()
                  for i, p in enumerate(cfg.ports)}
        fresh: dict[tuple[str, int], socket.socket] = {}
        for key, (name, _port, i) in wanted.items():
            if key in self.sockets:
                continue
            try:
                fresh[key] = socket.create_server(key, backlog=128)
            except OSError as e:
                for sock in fresh.values():
                    sock.close()
                # create_server's strerror repeats the address: the errno says it all.
                reason = os.strerror(e.errno) if e.errno else str(e)
                raise ConfigError(f"{key[0]}:{key[1]} cannot be published: {reason}",
                                  f"containers.{name}.ports[{i}]") from None
        for key in [k for k in self.sockets if k not in wanted]:
            self._close_port(key)
        for key, sock in fresh.items():
            sock.setblocking(False)
            self.sockets[key] = sock
            if self._tg is not None:
                self._tg.start_soon(self._serve_port, key)
        self.port_owner = {key: (name, port) for key, (name, port, _i) in wanted.items()}

    def _close_port(self, key: tuple[str, int]) -> None:
        sock = self.sockets.pop(key)
        scope = self._port_scopes.pop(key, None)
        if scope is not None:
            scope.cancel()  # its task closes the listener on the way out
        else:
            sock.close()

    def address(self, name: str, network: str) -> str | None:
        ipam = self.ipam.get(network)
        addr = ipam.address_of(name) if ipam else None
        return str(addr) if addr else None

    def extra_hosts(self, name: str) -> tuple[tuple[str, str], ...]:
        """/etc/hosts lines for the containers that share a network with ``name``."""
        cfg = self.members.get(name)
        out: list[tuple[str, str]] = []
        for att in cfg.networks if cfg else ():
            for other, other_cfg in self.members.items():
                if other != name and any(a.network == att.network for a in other_cfg.networks):
                    addr = self.address(other, att.network)
                    if addr and (addr, other) not in out:
                        out.append((addr, other))
        return tuple(out)

    def bridge_name(self, net: NetworkConfig) -> str:
        return net.bridge_name or default_bridge_name(net.name)

    # ------------------------------------------------------------------ wiring

    def wire(self, cfg: ContainerConfig, pid: int) -> list[Link]:
        """Blocking (a worker thread): give the held container its interfaces."""
        pairs = any(net.driver == "veth" for a in cfg.networks
                    if (net := self.networks.get(a.network)) is not None)
        # Both ends of a veth network must see each other's state whole: from the first
        # netlink call to the registration in self.running, one container at a time.
        with self._pair_lock if pairs else contextlib.nullcontext():
            links = self._wire(cfg, pid)
            self.running[cfg.name] = (pid, links)
        return links

    def _wire(self, cfg: ContainerConfig, pid: int) -> list[Link]:
        links: list[Link] = []
        gateway_given = False
        try:
            for i, att in enumerate(cfg.networks):
                net = self.networks.get(att.network)
                addr = self.address(cfg.name, att.network)
                if net is None or addr is None:  # a reload took it off while it started
                    raise LaunchError(f"{cfg.name}: no longer on network {att.network} "
                                      "(the config changed while it started)",
                                      step="wire networks")
                cidr = f"{addr}/{net.network.prefixlen}"
                ifname = f"eth{i}"
                if net.driver == "bridge":
                    gateway = None if gateway_given else str(next(net.network.hosts()))
                    gateway_given = True
                    link = Link(att.network, ifname, cidr,
                                _nl().veth_name(cfg.name, att.network), self.bridge_name(net),
                                gateway)
                    self._ensure_bridge(net)
                    self._attach(pid, link)
                else:
                    link = self._wire_pair(cfg, pid, att.network, ifname, cidr)
                links.append(link)
        except BaseException:
            for link in links:
                if link.host_ifname:
                    with contextlib.suppress(OSError):
                        _nl().detach(link.host_ifname)
            raise
        return links

    def adopt(self, cfg: ContainerConfig, pid: int) -> list[Link]:
        """A running container re-adopted after a daemon restart: its links are as
        wire() made them (same names, addresses, routes); watch and serve them again."""
        links: list[Link] = []
        gateway_given = False
        parked_now = set(_host_links())
        for i, att in enumerate(cfg.networks):
            net = self.networks[att.network]
            cidr = f"{self.address(cfg.name, att.network)}/{net.network.prefixlen}"
            if net.driver == "bridge":
                gateway = None if gateway_given else str(next(net.network.hosts()))
                gateway_given = True
                self.bridges.add(self.bridge_name(net))
                links.append(Link(att.network, f"eth{i}", cidr,
                                  _nl().veth_name(cfg.name, att.network),
                                  self.bridge_name(net), gateway))
            else:
                parked = _nl().veth_name("parked", att.network)
                links.append(Link(att.network, f"eth{i}", cidr,
                                  parked if parked in parked_now else None, None, None))
        with self._pair_lock:
            self.running[cfg.name] = (pid, links)
        return links

    def _wire_pair(self, cfg: ContainerConfig, pid: int, network: str, ifname: str,
                   cidr: str) -> Link:
        """The point-to-point network: straight to the peer if it runs, else the far end
        waits on the host (down) until the peer comes."""
        peer = next((n for n, c in self.members.items() if n != cfg.name and
                     any(a.network == network for a in c.networks)), None)
        parked = _nl().veth_name("parked", network)
        if peer is not None and peer in self.running:
            peer_pid, peer_links = self.running[peer]
            peer_link = next(lk for lk in peer_links if lk.network == network)
            # The peer's end waiting on the host goes, and with it the peer's interface:
            # mark it first, so the watcher does not "repair" it, then make a fresh pair.
            self.running[peer] = (peer_pid, [replace_link(lk, None) if lk.network == network
                                             else lk for lk in peer_links])
            _nl().detach(parked)
            _nl().connect_pair(pid, ifname, cidr, peer_pid, peer_link.ifname, peer_link.cidr)
            return Link(network, ifname, cidr, None, None, None)
        _nl().detach(parked)
        link = Link(network, ifname, cidr, parked, None, None)
        self._attach(pid, link)
        return link

    def _ensure_bridge(self, net: NetworkConfig, *, check: bool = False) -> None:
        """Create the bridge once; after that only a repair (``check``) looks again, so a
        container start does not pay three netlink round trips for it."""
        name = self.bridge_name(net)
        if name in self.bridges and not check:
            return
        gateway = next(net.network.hosts())
        _nl().ensure_bridge(name, f"{gateway}/{net.network.prefixlen}")
        if name not in self.bridges:
            self.bridges.add(name)
            self._save()  # before a kill -9 can forget it

    @staticmethod
    def _attach(pid: int, link: Link) -> None:
        assert link.host_ifname is not None
        _nl().attach_container(pid, link.host_ifname, link.ifname, link.cidr,
                                 bridge=link.bridge, gateway=link.gateway)

    def unwire(self, name: str) -> None:
        """The container stopped: its links go (most died with its namespace already)."""
        with self._pair_lock:
            _, links = self.running.pop(name, (0, []))
        for link in links:
            if link.host_ifname:
                with contextlib.suppress(OSError):
                    _nl().detach(link.host_ifname)

    async def close(self) -> None:
        """Shutdown: stop publishing ports and remove the links and bridges we made."""
        self.closing = True  # from here on, link events are our own doing: no repairs
        for key in list(self.sockets):
            self._close_port(key)  # cancel scopes: on the event loop, never from a thread
        await anyio.to_thread.run_sync(self._teardown)

    def _teardown(self) -> None:
        for name in list(self.running):
            self.unwire(name)
        bridges = sorted(self.bridges | self._inherited)
        self.bridges, self._inherited = set(), set()
        for bridge in bridges:  # (no bridges: no netlink needed)
            with contextlib.suppress(OSError):
                _nl().delete_link(bridge)
        self._save()

    def forget(self, name: str) -> None:
        """A container removed from the config: release its addresses."""
        for ipam in self.ipam.values():
            ipam.release(name)
        self.members.pop(name, None)
        self._save()

    # ------------------------------------------------------------------ watching and repair

    async def run(self, tg: TaskGroup, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Serves the published ports; runs the netlink watcher once there are networks."""
        self._tg = tg
        for key in list(self.sockets):
            tg.start_soon(self._serve_port, key)
        task_status.started()
        await self._networks_wanted.wait()
        from ..linux.netwatch import LinkWatcher, Resync

        async with LinkWatcher() as watcher:
            async for event in watcher:
                if isinstance(event, Resync):
                    self._on_event("resync", reason=event.reason)
                    await self._resync()
                else:
                    await self._on_link(event)

    async def _on_link(self, event: LinkEvent) -> None:
        if self.closing:
            return
        if event.ifname in self.bridges and event.kind == "del":
            self._on_event("bridge_deleted", interface=event.ifname)
            await anyio.to_thread.run_sync(self._repair_bridge, event.ifname)
            return
        for name, (pid, links) in list(self.running.items()):
            for link in links:
                if link.host_ifname != event.ifname:
                    continue
                if event.kind == "del":
                    self._on_event("link_deleted", container=name, interface=event.ifname)
                    await anyio.to_thread.run_sync(self._repair_link, name, pid, link)
                elif not event.up and await anyio.to_thread.run_sync(self._set_up, link):
                    self._on_event("link_down", container=name, interface=event.ifname)

    def _repair_link(self, name: str, pid: int, link: Link) -> None:
        if self.running.get(name, (0,))[0] != pid or not os.path.exists(f"/proc/{pid}/ns/net"):
            return  # the container is gone: nothing to repair
        try:
            if link.bridge:
                self._ensure_bridge(self.networks[link.network], check=True)
            # The pair died with its host end: recreate it with the same names, address
            # and route. The container's end may survive a half-done change: drop it.
            with _nl().Rtnl(pid) as rt, contextlib.suppress(OSError):
                rt.del_link(name=link.ifname)
            self._attach(pid, link)
        except OSError as e:
            log.warning("link repair failed", container=name, interface=link.host_ifname,
                        error=str(e))
            return
        self._on_event("repaired", container=name, interface=link.host_ifname)

    def _set_up(self, link: Link) -> bool:
        """Set a link that went down up again; False when there was nothing to do: it is
        gone (a deletion sends a "down" first: the "del" that follows is the real event),
        or up already (the event was stale, e.g. the link's own creation, read after a
        busy spell of the event loop)."""
        try:
            with _nl().Rtnl() as rt:
                flags = rt.link_flags(link.host_ifname)
                if flags is None or flags & _nl().IFF_UP:
                    return False
                rt.set_link(name=link.host_ifname, up=True)
        except OSError:
            return False
        return True

    def _repair_bridge(self, bridge: str) -> None:
        net = next((n for n in self.networks.values()
                    if n.driver == "bridge" and self.bridge_name(n) == bridge), None)
        if net is None:
            return
        self._ensure_bridge(net, check=True)
        with _nl().Rtnl() as rt:
            index = rt.ifindex(bridge)
            for _, links in self.running.values():
                for link in links:
                    if link.bridge == bridge and link.host_ifname:
                        with contextlib.suppress(OSError):
                            rt.set_link(name=link.host_ifname, master=index, up=True)
        self._on_event("repaired", interface=bridge)

    async def _resync(self) -> None:
        if self.closing:
            return
        from ..linux.netwatch import dump_links

        links_now = await dump_links()
        for name, (pid, links) in list(self.running.items()):
            for link in links:
                if link.host_ifname is None:
                    continue
                state = links_now.get(link.host_ifname)
                if state is None:
                    await anyio.to_thread.run_sync(self._repair_link, name, pid, link)
                elif not state.up:
                    await anyio.to_thread.run_sync(self._set_up, link)

    # ------------------------------------------------------------------ published ports

    async def _serve_port(self, key: tuple[str, int]) -> None:
        sock = self.sockets.get(key)
        if sock is None or key in self._port_scopes:
            return
        with anyio.CancelScope() as scope:
            self._port_scopes[key] = scope
            listener = await SocketListener.from_socket(sock)
            async with listener, anyio.create_task_group() as tg:
                while True:
                    try:
                        client = await listener.accept()
                    except (anyio.ClosedResourceError, OSError):
                        return
                    tg.start_soon(self._proxy, key, client)

    async def _proxy(self, key: tuple[str, int], client: SocketStream) -> None:
        """Relay one connection to the container's current address (it may have
        restarted since the last one)."""
        async with client:
            owner = self.port_owner.get(key)
            if owner is None or owner[0] not in self.running:
                return
            name, port = owner
            cfg = self.members[name]
            bridged = [a for a in cfg.networks if self.networks[a.network].driver == "bridge"]
            addr = self.address(name, bridged[0].network)
            try:
                with anyio.fail_after(5):
                    upstream = await anyio.connect_tcp(addr, port.container_port)
            except (OSError, TimeoutError):
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(_pump, client, upstream, tg)
                tg.start_soon(_pump, upstream, client, tg)

    # ------------------------------------------------------------------ persistence

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.state_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        with self._save_lock:
            data: dict[str, Any] = {n: ipam.to_dict() for n, ipam in self.ipam.items()}
            data["_subnets"] = {n: net.subnet for n, net in self.networks.items()}
            data["_bridges"] = sorted(self.bridges | self._inherited)
            write_state(self.state_path, data)


async def _pump(src: SocketStream, dst: SocketStream, tg: TaskGroup) -> None:
    try:
        async for chunk in src:
            await dst.send(chunk)
        with contextlib.suppress(Exception):
            await dst.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        tg.cancel_scope.cancel()


def _host_links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def replace_link(link: Link, host_ifname: str | None) -> Link:
    return Link(link.network, link.ifname, link.cidr, host_ifname, link.bridge, link.gateway)


def _allocations(saved: Mapping[str, Any] | None) -> dict[str, str]:
    """owner -> address from a saved Ipam.to_dict(), tolerant of its exact shape."""
    if not saved:
        return {}
    try:
        ipam = Ipam.from_dict(saved)
    except (ValueError, KeyError, TypeError):
        return {}
    return {owner: str(addr) for owner, addr in ipam.allocations().items()}


