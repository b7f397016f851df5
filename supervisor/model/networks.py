"""Container networks in the config: ``[networks.NAME]``, a container's ``networks`` and
``ports``. Pure: parsing and the cross-checks that need the whole file.

```toml
[networks.redblue]
driver = "veth"              # point-to-point pair between exactly two containers
subnet = "11.11.11.0/24"
[networks.lab]
driver = "bridge"            # a Linux bridge nsvisord creates and owns
subnet = "10.123.0.0/24"     # the bridge takes the first address, the gateway
# bridge_name = "nsv-lab"    # default derived from the name, <= 15 chars
[containers.red]
networks = { redblue = "11.11.11.2" }        # static address
[containers.web]
networks = ["lab"]                            # address from IPAM
ports = ["127.0.0.1:8080:8080/tcp"]           # host address:port -> container port
```
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .units import ConfigError

DRIVERS = ("veth", "bridge")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    driver: str
    subnet: str  # normalised, e.g. "10.123.0.0/24"
    bridge_name: str = ""  # bridge driver only; derived when not set

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    def to_dict(self) -> dict[str, Any]:
        out = {"driver": self.driver, "subnet": self.subnet}
        if self.bridge_name:
            out["bridge_name"] = self.bridge_name
        return out


@dataclass(frozen=True)
class Attachment:
    """A container's membership of a network, with its static address if any."""

    network: str
    address: str | None = None


@dataclass(frozen=True)
class PortConfig:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.container_port}/{self.protocol}"


def default_bridge_name(network: str) -> str:
    """``nsv-<name>`` when it fits in 15 chars, else ``nsv-`` + a hash of the name."""
    name = f"nsv-{network}"
    if IFNAME_RE.fullmatch(name):
        return name
    import hashlib  # here: most names fit, and the module costs the daemon ~1 MiB

    return "nsv-" + hashlib.sha1(network.encode()).hexdigest()[:11]


def parse_networks(value: Any, where: str) -> dict[str, NetworkConfig]:
    if not isinstance(value, dict):
        raise ConfigError("expected a table of [networks.NAME] tables", where)
    out = {}
    for name, table in value.items():
        path = f"{where}.{name}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,30}", name):
            raise ConfigError(f'invalid network name "{name}" (use a-z, 0-9, _ and -, '
                              "at most 31 characters)", path)
        if not isinstance(table, dict):
            raise ConfigError("expected a table", path)
        unknown = set(table) - {"driver", "subnet", "bridge_name"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError("unknown key (known: driver, subnet, bridge_name)",
                              f"{path}.{key}")
        for key, example in (("driver", 'use "veth" or "bridge"'),
                             ("subnet", 'e.g. "10.123.0.0/24"')):
            if key not in table:
                raise ConfigError(f"required key is missing ({example})", f"{path}.{key}")
        driver = table["driver"]
        if driver not in DRIVERS:
            raise ConfigError(f"{driver!r} is not a driver (use \"veth\" or \"bridge\")",
                              f"{path}.driver")
        try:
            subnet = ipaddress.IPv4Network(table["subnet"], strict=False)
        except (ValueError, TypeError):
            raise ConfigError(f"{table.get('subnet')!r} is not an IPv4 subnet "
                              "(e.g. \"10.123.0.0/24\")", f"{path}.subnet") from None
        if subnet.prefixlen > 30 and driver == "bridge":
            raise ConfigError("a bridge network needs at least a /30", f"{path}.subnet")
        bridge = table.get("bridge_name", "")
        if bridge and (driver != "bridge" or not IFNAME_RE.fullmatch(str(bridge))):
            raise ConfigError("only for a bridge network, at most 15 characters of "
                              "A-Z a-z 0-9 _ . -", f"{path}.bridge_name")
        out[name] = NetworkConfig(name, driver, str(subnet), bridge or "")
    return out


def parse_attachments(value: Any, where: str) -> tuple[Attachment, ...]:
    """``["lab"]`` or ``{ redblue = "11.11.11.2", lab = "" }`` ("" = any address)."""
    if isinstance(value, list):
        if not all(isinstance(v, str) and v for v in value):
            raise ConfigError("expected an array of network names", where)
        if len(set(value)) != len(value):
            raise ConfigError("a network is listed twice", where)
        return tuple(Attachment(v) for v in value)
    if isinstance(value, dict):
        out = []
        for name, address in value.items():
            if not isinstance(address, str):
                raise ConfigError("expected an address string (\"\" for any)",
                                  f"{where}.{name}")
            if address:
                try:
                    ipaddress.IPv4Address(address)
                except ValueError:
                    raise ConfigError(f"{address!r} is not an IPv4 address",
                                      f"{where}.{name}") from None
            out.append(Attachment(name, address or None))
        return tuple(out)
    raise ConfigError("expected an array of network names or a table of addresses", where)


_PORT_RE = re.compile(r"^(?:(?P<ip>[0-9.]+):)?(?P<host>\d+):(?P<cport>\d+)(?:/(?P<proto>\w+))?$")


def parse_ports(value: Any, where: str) -> tuple[PortConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError("expected an array like [\"127.0.0.1:8080:80/tcp\"]", where)
    out = []
    for i, item in enumerate(value):
        path = f"{where}[{i}]"
        m = _PORT_RE.fullmatch(item) if isinstance(item, str) else None
        if not m:
            raise ConfigError(f"{item!r} is not [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp]", path)
        proto = m["proto"] or "tcp"
        if proto != "tcp":
            raise ConfigError(f"protocol {proto!r} is not supported (tcp only)", path)
        ip = m["ip"] or "127.0.0.1"
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise ConfigError(f"{ip!r} is not an IPv4 address", path) from None
        host, cport = int(m["host"]), int(m["cport"])
        if not (0 < host < 65536 and 0 < cport < 65536):
            raise ConfigError("ports must be between 1 and 65535", path)
        out.append(PortConfig(ip, host, cport, proto))
    return tuple(out)


def check(networks: Mapping[str, NetworkConfig], containers: Mapping[str, Any]) -> None:
    """Cross-checks over the whole file; ConfigError naming the offending key."""
    members: dict[str, list[str]] = {n: [] for n in networks}
    used: dict[tuple[str, str], str] = {}
    published: dict[tuple[str, int], str] = {}
    for name, c in containers.items():
        where = f"containers.{name}"
        if c.networks and "net" not in c.namespaces:
            raise ConfigError("networks need the \"net\" namespace", f"{where}.networks")
        for att in c.networks:
            key = f"{where}.networks"
            net = networks.get(att.network)
            if net is None:
                known = ", ".join(networks) or "none defined"
                raise ConfigError(f'unknown network "{att.network}" (known: {known})', key)
            members[att.network].append(name)
            if att.address is None:
                continue
            key = f"{key}.{att.network}"
            addr = ipaddress.IPv4Address(att.address)
            subnet = net.network
            if addr not in subnet:
                raise ConfigError(f"{addr} is outside {net.name}'s subnet {subnet}", key)
            if subnet.prefixlen < 31 and addr in (subnet.network_address,
                                                  subnet.broadcast_address):
                raise ConfigError(f"{addr} is the network or broadcast address of {subnet}",
                                  key)
            if net.driver == "bridge" and addr == next(subnet.hosts()):
                raise ConfigError(f"{addr} is the bridge's own address (the gateway)", key)
            holder = used.get((net.name, att.address))
            if holder:
                raise ConfigError(f"{addr} is already {holder}'s", key)
            used[(net.name, att.address)] = name
        bridged = [a for a in c.networks if networks[a.network].driver == "bridge"]
        for i, port in enumerate(c.ports):
            key = f"{where}.ports[{i}]"
            if not bridged:
                raise ConfigError("publishing a port needs a bridge network (the host "
                                  "reaches containers through the bridge)", key)
            holder = published.get((port.host_ip, port.host_port))
            if holder:
                raise ConfigError(f"{port.host_ip}:{port.host_port} is already published "
                                  f"by {holder}", key)
            published[(port.host_ip, port.host_port)] = name
    bridges: dict[str, str] = {}
    for net in networks.values():
        if net.driver == "veth" and len(members[net.name]) not in (0, 2):
            raise ConfigError(f"a veth network joins exactly two containers; "
                              f"{len(members[net.name])} use it "
                              f"({', '.join(members[net.name])})", f"networks.{net.name}")
        if net.driver == "bridge":
            bridge = net.bridge_name or default_bridge_name(net.name)
            if bridge in bridges:
                raise ConfigError(f"bridge {bridge} is also {bridges[bridge]}'s",
                                  f"networks.{net.name}.bridge_name")
            bridges[bridge] = net.name
    nets = list(networks.values())
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a.network.overlaps(b.network):
                raise ConfigError(f"{a.subnet} overlaps {b.name}'s {b.subnet}",
                                  f"networks.{a.name}.subnet")
