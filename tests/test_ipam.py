"""IPAM: deterministic allocation, static addresses, release and the state round trip."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest

from supervisor.model.ipam import Ipam, IpamError, Subnet, SubnetExhausted


def test_bridge_subnet_reserves_gateway_and_allocates_lowest_first() -> None:
    ipam = Ipam("10.123.0.0/24")
    assert ipam.gateway == IPv4Address("10.123.0.1")
    assert ipam.subnet.gateway_cidr() == "10.123.0.1/24"
    assert ipam.subnet.capacity == 253
    assert ipam.allocate("a") == IPv4Address("10.123.0.2")
    assert ipam.allocate("b") == IPv4Address("10.123.0.3")
    assert ipam.allocate("c") == IPv4Address("10.123.0.4")
    assert ipam.cidr_of("b") == "10.123.0.3/24"
    assert list(ipam.allocations()) == ["a", "b", "c"]


def test_allocate_is_idempotent_per_owner() -> None:
    ipam = Ipam("10.123.0.0/24")
    first = ipam.allocate("web")
    assert ipam.allocate("web") == first
    assert ipam.allocate("web", str(first)) == first
    with pytest.raises(IpamError, match="already holds 10.123.0.2"):
        ipam.allocate("web", "10.123.0.9")
    assert len(ipam) == 1


def test_static_address_and_dynamic_allocation_skip_it() -> None:
    ipam = Ipam("10.123.0.0/24")
    assert ipam.allocate("db", "10.123.0.2") == IPv4Address("10.123.0.2")
    assert ipam.allocate("web") == IPv4Address("10.123.0.3")
    assert ipam.owner_of("10.123.0.2") == "db"
    assert ipam.owner_of(IPv4Address("10.123.0.3")) == "web"
    assert ipam.owner_of("10.123.0.77") is None


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ("10.124.0.5", "not in subnet 10.123.0.0/24"),
        ("10.123.0.0", "network address"),
        ("10.123.0.255", "broadcast address"),
        ("10.123.0.1", "gateway"),
        ("10.123.0.300", "not an IPv4 address"),
        ("fe80::1", "not an IPv4 address"),
    ],
)
def test_static_address_rejections(requested: str, message: str) -> None:
    ipam = Ipam("10.123.0.0/24")
    with pytest.raises(IpamError, match=message):
        ipam.allocate("x", requested)
    assert len(ipam) == 0
    assert issubclass(IpamError, ValueError)


def test_duplicate_static_address_names_the_holder() -> None:
    ipam = Ipam("10.123.0.0/24")
    ipam.allocate("db", "10.123.0.10")
    with pytest.raises(IpamError, match="already held by 'db'"):
        ipam.allocate("other", "10.123.0.10")
    assert ipam.address_of("other") is None


def test_release_and_reuse_lowest() -> None:
    ipam = Ipam("10.123.0.0/24")
    for name in "abcd":
        ipam.allocate(name)
    assert ipam.release("b") == IPv4Address("10.123.0.3")
    assert ipam.release("b") is None
    assert ipam.owner_of("10.123.0.3") is None
    assert ipam.allocate("e") == IPv4Address("10.123.0.3")
    assert ipam.allocate("f") == IPv4Address("10.123.0.6")


def test_exhaustion_on_a_slash_30() -> None:
    ipam = Ipam("10.9.9.0/30")  # .0 network, .1 gateway, .2 the only container, .3 broadcast
    assert ipam.subnet.capacity == 1
    assert ipam.allocate("only") == IPv4Address("10.9.9.2")
    with pytest.raises(SubnetExhausted, match="10.9.9.0/30 is exhausted"):
        ipam.allocate("second")
    ipam.release("only")
    assert ipam.allocate("second") == IPv4Address("10.9.9.2")


def test_point_to_point_network_reserves_no_gateway() -> None:
    ipam = Ipam("11.11.11.0/30", gateway=False)
    assert ipam.gateway is None and ipam.subnet.gateway_cidr() is None
    assert ipam.allocate("red") == IPv4Address("11.11.11.1")
    assert ipam.allocate("blue") == IPv4Address("11.11.11.2")
    with pytest.raises(SubnetExhausted):
        ipam.allocate("green")
    # /31: both addresses usable (RFC 3021), statics in either order.
    p2p = Ipam("11.11.12.0/31", gateway=False)
    assert p2p.allocate("b", "11.11.12.1") == IPv4Address("11.11.12.1")
    assert p2p.allocate("a") == IPv4Address("11.11.12.0")
    assert p2p.cidr_of("a") == "11.11.12.0/31"


def test_bad_subnets() -> None:
    with pytest.raises(IpamError, match="has host bits set"):
        Ipam("10.123.0.5/24")
    with pytest.raises(IpamError, match="too small for a gateway"):
        Ipam("10.0.0.0/31")
    with pytest.raises(IpamError):
        Subnet("not-a-net")
    with pytest.raises(IpamError, match="non-empty owner"):
        Ipam("10.0.0.0/24").allocate("")


def test_round_trip_through_json() -> None:
    ipam = Ipam("10.123.0.0/24")
    ipam.allocate("a")
    ipam.allocate("db", "10.123.0.50")
    ipam.allocate("b")
    ipam.release("a")
    state = json.loads(json.dumps(ipam.to_dict()))
    assert state == {"subnet": "10.123.0.0/24", "gateway": True,
                     "allocations": {"b": "10.123.0.3", "db": "10.123.0.50"}}
    back = Ipam.from_dict(state)
    assert back.allocations() == ipam.allocations()
    assert back.allocate("b") == IPv4Address("10.123.0.3")
    assert back.allocate("new") == IPv4Address("10.123.0.2")

    p2p = Ipam("11.11.11.0/24", gateway=False)
    p2p.allocate("red", "11.11.11.2")
    assert Ipam.from_dict(p2p.to_dict()).gateway is None


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"subnet": "10.0.0.0/24", "gateway": True}, "missing or malformed"),
        ({"subnet": "10.0.0.0/24", "gateway": "yes", "allocations": {}}, "must be a bool"),
        ({"subnet": "10.0.0.0/24", "gateway": True, "allocations": {"a": "10.0.0.1"}},
         "gateway"),
        ({"subnet": "10.0.0.0/24", "gateway": True,
          "allocations": {"a": "10.0.0.2", "b": "10.0.0.2"}}, "already held by 'a'"),
    ],
)
def test_from_dict_rejects_bad_state(state: dict, message: str) -> None:
    with pytest.raises(IpamError, match=message):
        Ipam.from_dict(state)
