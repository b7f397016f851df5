"""IPv4 address management for container networks: who holds which address.

Pure bookkeeping, no I/O: the daemon asks for an address before it wires a container
(:mod:`supervisor.linux.netlink` takes the ``cidr`` string this module produces), releases
it when the container is removed, and saves :meth:`Ipam.to_dict` in its state file so a
restarted daemon hands every live container the address it already has.

Two shapes of network share one class:

- **bridge** networks (``gateway=True``, the default): the first host address is the
  bridge's own (the containers' default gateway) and is never handed out;
- **point-to-point veth** networks (``gateway=False``): two members, usually both with a
  static address, and nothing reserved besides the network and broadcast addresses
  (``/31`` and ``/32`` have neither, as RFC 3021 allows).

Allocation is deterministic (lowest free address first), so the same config started on a
fresh host gives the same addresses, which keeps logs and tests readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

__all__ = ["Ipam", "IpamError", "SubnetExhausted", "Subnet"]


class IpamError(ValueError):
    """A request the subnet cannot satisfy (outside it, reserved, taken, bad state)."""


class SubnetExhausted(IpamError):
    """Every assignable address of the subnet is held."""


class Subnet:
    """An IPv4 network and which of its addresses may be given to containers."""

    __slots__ = ("network", "gateway", "_first", "_last")

    def __init__(self, cidr: str | IPv4Network, *, gateway: bool = True) -> None:
        try:
            net = cidr if isinstance(cidr, IPv4Network) else IPv4Network(cidr, strict=True)
        except ValueError as exc:
            # strict: "10.1.2.3/24" is almost always a typo for 10.1.2.0/24 or an address.
            raise IpamError(f"subnet {cidr!r}: {exc}") from None
        if net.prefixlen >= 31:
            first, last = int(net.network_address), int(net.broadcast_address)
        else:
            first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
        gw: IPv4Address | None = None
        if gateway:
            if net.prefixlen > 30:
                raise IpamError(f"subnet {net}: too small for a gateway and a container "
                                "(a bridge network needs at least a /30)")
            gw = IPv4Address(first)
            first += 1
        self.network = net
        self.gateway = gw
        self._first, self._last = first, last

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def capacity(self) -> int:
        """How many addresses can be handed out (the gateway excluded)."""
        return self._last - self._first + 1

    def gateway_cidr(self) -> str | None:
        """The bridge's address as ``a.b.c.d/len`` (what ``ensure_bridge`` wants)."""
        return None if self.gateway is None else f"{self.gateway}/{self.prefixlen}"

    def cidr(self, addr: IPv4Address) -> str:
        """``addr`` with this subnet's prefix length, e.g. ``10.123.0.2/24``."""
        return f"{addr}/{self.prefixlen}"

    def check_assignable(self, addr: IPv4Address) -> None:
        """Raise :class:`IpamError` saying why ``addr`` cannot be a container's address."""
        net = self.network
        if addr not in net:
            raise IpamError(f"{addr} is not in subnet {net}")
        if net.prefixlen < 31 and addr == net.network_address:
            raise IpamError(f"{addr} is the network address of {net}")
        if net.prefixlen < 31 and addr == net.broadcast_address:
            raise IpamError(f"{addr} is the broadcast address of {net}")
        if addr == self.gateway:
            raise IpamError(f"{addr} is the gateway of {net}")

    def __repr__(self) -> str:
        return f"Subnet({str(self.network)!r}, gateway={self.gateway is not None})"


class Ipam:
    """The allocations of one network: owner (a container name) -> address."""

    def __init__(self, subnet: str | IPv4Network | Subnet, *, gateway: bool = True) -> None:
        self.subnet = subnet if isinstance(subnet, Subnet) else Subnet(subnet, gateway=gateway)
        self._by_owner: dict[str, IPv4Address] = {}
        self._owners: dict[int, str] = {}

    @property
    def gateway(self) -> IPv4Address | None:
        return self.subnet.gateway

    def allocate(self, owner: str, requested: str | IPv4Address | None = None) -> IPv4Address:
        """The address of ``owner``: ``requested`` if given (a static address), else the
        lowest free one.

        Idempotent for an owner that already holds an address (a container restarted by
        its policy keeps its address); asking that owner for a *different* static address
        is an error rather than a silent move, because peers may have it configured.
        """
        if not owner:
            raise IpamError("an allocation needs a non-empty owner")
        held = self._by_owner.get(owner)
        want = self._parse(requested) if requested is not None else None
        if held is not None:
            if want is not None and want != held:
                raise IpamError(f"{owner!r} already holds {held} in {self.subnet.network}; "
                                f"release it before requesting {want}")
            return held
        if want is not None:
            self.subnet.check_assignable(want)
            holder = self._owners.get(int(want))
            if holder is not None:
                raise IpamError(f"{want} in {self.subnet.network} is already held by "
                                f"{holder!r}")
            return self._take(owner, want)
        candidate = self.subnet._first
        while candidate in self._owners:  # skips only taken addresses: O(allocations)
            candidate += 1
        if candidate > self.subnet._last:
            raise SubnetExhausted(f"subnet {self.subnet.network} is exhausted: all "
                                  f"{self.subnet.capacity} addresses are held")
        return self._take(owner, IPv4Address(candidate))

    def release(self, owner: str) -> IPv4Address | None:
        """Give ``owner``'s address back; returns it (None if it held none)."""
        addr = self._by_owner.pop(owner, None)
        if addr is not None:
            del self._owners[int(addr)]
        return addr

    def owner_of(self, addr: str | IPv4Address) -> str | None:
        return self._owners.get(int(self._parse(addr)))

    def address_of(self, owner: str) -> IPv4Address | None:
        return self._by_owner.get(owner)

    def cidr_of(self, owner: str) -> str | None:
        """``owner``'s address with the prefix length, ready for interface setup."""
        addr = self._by_owner.get(owner)
        return None if addr is None else self.subnet.cidr(addr)

    def allocations(self) -> dict[str, IPv4Address]:
        """A copy of owner -> address, ordered by address."""
        return {o: self._by_owner[o] for _, o in sorted(self._owners.items())}

    def __len__(self) -> int:
        return len(self._by_owner)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state, so a restarted daemon keeps every container's address."""
        return {
            "subnet": str(self.subnet.network),
            "gateway": self.gateway is not None,
            "allocations": {o: str(a) for o, a in self.allocations().items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ipam:
        """Rebuild from :meth:`to_dict`, re-checking every address (the file may be stale
        or hand-edited, and a conflict must surface now, not as a duplicate on the wire)."""
        try:
            subnet, gateway, allocations = data["subnet"], data["gateway"], data["allocations"]
        except (KeyError, TypeError) as exc:
            raise IpamError(f"ipam state: missing or malformed field {exc}") from None
        if not isinstance(gateway, bool) or not isinstance(allocations, Mapping):
            raise IpamError("ipam state: 'gateway' must be a bool, 'allocations' a table")
        ipam = cls(subnet, gateway=gateway)
        for owner, addr in allocations.items():
            ipam.allocate(str(owner), addr)
        return ipam

    def _parse(self, addr: str | IPv4Address) -> IPv4Address:
        if isinstance(addr, IPv4Address):
            return addr
        try:
            return IPv4Address(addr)
        except ValueError as exc:
            raise IpamError(f"{addr!r} is not an IPv4 address ({exc})") from None

    def _take(self, owner: str, addr: IPv4Address) -> IPv4Address:
        self._by_owner[owner] = addr
        self._owners[int(addr)] = owner
        return addr

    def __repr__(self) -> str:
        return f"Ipam({str(self.subnet.network)!r}, {len(self)} allocated)"
