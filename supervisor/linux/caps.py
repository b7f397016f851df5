"""Linux capability names and the policy a container gets by default."""

from __future__ import annotations

from . import libc

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: the fork server and the inits import this module
    from collections.abc import Iterable

# From <linux/capability.h>.
CAPABILITIES: dict[str, int] = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
    "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
    "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18,
    "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28,
    "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37,
    "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

# Docker's default set (moby oci/caps/defaults.go): bounding, permitted and effective;
# the inheritable set stays empty (CVE-2022-24769).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)


def normalize(name: str) -> str:
    """``"cap_net_admin"`` / ``"NET_ADMIN"`` -> ``"NET_ADMIN"``; ValueError if unknown."""
    upper = name.upper()
    short = upper[4:] if upper.startswith("CAP_") else upper
    if short not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}")
    return short


def resolve(add: Iterable[str] = (), drop: Iterable[str] = ()) -> tuple[str, ...]:
    """Docker's default set with ``add`` and ``drop`` applied ("ALL" works in both)."""
    add = [a.upper() for a in add]
    drop = [d.upper() for d in drop]
    caps = set(CAPABILITIES) if "ALL" in add else set(DEFAULT_CAPABILITIES)
    caps |= {normalize(a) for a in add if a != "ALL"}
    if "ALL" in drop:
        caps = {normalize(a) for a in add if a != "ALL"}
    else:
        caps -= {normalize(d) for d in drop}
    return tuple(sorted(caps, key=CAPABILITIES.__getitem__))


def mask(names: Iterable[str]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << CAPABILITIES[name]
    return bits


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def limit_bounding_set(keep: int, last: int) -> None:
    """Drop every capability not in the ``keep`` mask from the bounding set."""
    for cap in range(last + 1):
        if not keep & (1 << cap):
            libc.prctl(libc.PR_CAPBSET_DROP, cap)
