"""Per-interface counters of a container, read from /proc: for metrics, without netlink
(so the daemon needs no netlink library to export them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """Interface counters as the container sees them (rx = received by the container)."""

    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str, *, include_lo: bool = False) -> dict[str, LinkCounters]:
    """Parse ``/proc/net/dev`` (two header lines, then ``name: 8 rx fields 8 tx fields``)."""
    out: dict[str, LinkCounters] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or (name == "lo" and not include_lo):
            continue
        f = [int(x) for x in rest.split()]
        out[name] = LinkCounters(rx_bytes=f[0], rx_packets=f[1], rx_errors=f[2],
                                 rx_dropped=f[3], tx_bytes=f[8], tx_packets=f[9],
                                 tx_errors=f[10], tx_dropped=f[11])
    return out


def link_stats(pid: int, *, include_lo: bool = False) -> dict[str, LinkCounters]:
    """Per-interface counters inside the network namespace of ``pid``, for metrics.

    Read from ``/proc/<pid>/net/dev``, which shows the namespace of that process: no
    namespace switch, no netlink decoding (about 0.1 ms against milliseconds for an
    RTM_GETLINK dump decoded by pyroute2), 64-bit counters, and already the container's
    direction (host veth ends would need rx and tx swapped).
    """
    with open(f"/proc/{pid}/net/dev") as f:
        text = f.read()
    return parse_net_dev(text, include_lo=include_lo)
