"""What a container is made of: the runtime's input, validated before anything is created.

A :class:`ContainerSpec` is plain data. It crosses from the caller to the container's init
as a ``marshal``-ed dict (:meth:`ContainerSpec.to_wire`), so every field is a plain type.
This module is for the caller only: the container side never imports it.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass, field

from ..linux import caps

# The constants live in a module the container side can import without this one.
from .consts import (
    DEVICES,
    ID_RANGE_SIZE,
    MASKED_PATHS,
    NAMESPACES,
    NS_PROC_NAME,
    READONLY_PATHS,
)

__all__ = ["DEVICES", "ID_RANGE_SIZE", "MASKED_PATHS", "NAMESPACES", "NS_PROC_NAME",
           "READONLY_PATHS", "RLIMITS", "ContainerSpec", "IdMapping", "LogSpec", "Mount",
           "SpecError", "validate"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
RLIMITS: dict[str, int] = {
    name[len("RLIMIT_"):].lower(): getattr(resource, name)
    for name in dir(resource) if name.startswith("RLIMIT_")
}


class SpecError(ValueError):
    """The spec is wrong; the message names the field."""


@dataclass(frozen=True)
class Mount:
    """A bind mount (``source`` set) or a tmpfs (``type="tmpfs"``) inside the container."""

    target: str
    source: str | None = None
    type: str = "bind"
    readonly: bool = False
    size: int | None = None  # tmpfs size in bytes


@dataclass(frozen=True)
class IdMapping:
    """One line of /proc/PID/uid_map or gid_map: ``inside outside count``."""

    inside: int
    outside: int
    count: int


@dataclass(frozen=True)
class LogSpec:
    """Capture of the workload's stdout and stderr into rotated files, by the init.

    Files ``<dir>/<name>.out.log`` and ``<name>.err.log`` (with ``merge``, stderr goes to
    the ``.out.log`` too), each rotated before a write would take it past ``max_bytes``
    (0: never) to ``.log.1`` ... ``.log.<backups>``, always at a line boundary. The init
    holds the pipes' read ends and writes the files itself, so the capture goes on while
    the caller is gone.
    """

    dir: str
    max_bytes: int = 50 * 2**20
    backups: int = 10
    merge: bool = False


@dataclass
class ContainerSpec:
    """Everything the runtime needs to launch one container."""

    name: str
    command: list[str]
    rootfs: str = "host"  # a directory, or "host": tmpfs root with the host's /usr etc. ro
    hostname: str | None = None  # default: name
    domainname: str | None = None
    namespaces: tuple[str, ...] = NAMESPACES
    # None: the runtime allocates a fresh ID_RANGE_SIZE host range (when "user" is set).
    uid_map: tuple[IdMapping, ...] | None = None
    gid_map: tuple[IdMapping, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    capabilities: tuple[str, ...] = caps.DEFAULT_CAPABILITIES
    no_new_privs: bool = True
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    readonly_rootfs: bool = False
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (address, name) lines for /etc/hosts
    signal_process_group: bool = False  # the init forwards signals to -pgid
    kill_grace: float = 2.0  # after the workload exits: SIGTERM the rest, SIGKILL after this
    # cgroup.procs files the init is in before it runs a line (v1: it is born there)
    cgroup_procs: tuple[str, ...] = ()
    hold: bool = False  # stop before exec until the caller says go (to wire networks)
    # Capture stdout/stderr to rotated files, written by the init (Runtime.start's stdout
    # and stderr are then ignored).
    log: LogSpec | None = None

    @property
    def effective_hostname(self) -> str:
        return self.hostname or self.name

    def to_wire(self) -> dict:
        """What the container side reads: plain values, the hostname resolved."""
        data = dict(vars(self))  # shallow (asdict's deep copy cost 0.3 ms a launch)
        data["mounts"] = tuple(dict(vars(m)) for m in self.mounts)
        for key in ("uid_map", "gid_map"):
            if data[key] is not None:
                data[key] = tuple(dict(vars(m)) for m in data[key])
        if self.log is not None:
            data["log"] = dict(vars(self.log))
        data["effective_hostname"] = self.effective_hostname
        return data


def validate(spec: ContainerSpec) -> None:
    """Check everything that can be checked before a process exists; SpecError if wrong.

    Paths are checked on the host as they are now (rootfs is a directory, mount sources
    exist); the launcher re-checks what it opens, so a race only turns into a launch error.
    """
    if not _NAME_RE.match(spec.name):
        raise SpecError(f"name: {spec.name!r} must match {_NAME_RE.pattern}")
    if not spec.command or not all(isinstance(a, str) and a for a in spec.command):
        raise SpecError("command: must be a non-empty list of non-empty strings")
    unknown = set(spec.namespaces) - set(NAMESPACES)
    if unknown:
        raise SpecError(f"namespaces: unknown {sorted(unknown)}; known: {list(NAMESPACES)}")
    if spec.rootfs != "host":
        if not os.path.isabs(spec.rootfs):
            raise SpecError(f"rootfs: {spec.rootfs!r} must be an absolute path or \"host\"")
        if not os.path.isdir(spec.rootfs):
            raise SpecError(f"rootfs: {spec.rootfs} is not a directory")
        if "mount" not in spec.namespaces:
            raise SpecError("rootfs: a rootfs needs the mount namespace")
    if not os.path.isabs(spec.workdir):
        raise SpecError(f"workdir: {spec.workdir!r} must be an absolute path")
    for i, m in enumerate(spec.mounts):
        where = f"mounts[{i}]"
        if not os.path.isabs(m.target) or ".." in m.target.split("/"):
            raise SpecError(f"{where}.target: {m.target!r} must be absolute, without '..'")
        if m.type == "bind":
            if not m.source or not os.path.isabs(m.source):
                raise SpecError(f"{where}.source: a bind mount needs an absolute source")
            if not os.path.exists(m.source):
                raise SpecError(f"{where}.source: {m.source} does not exist")
        elif m.type != "tmpfs":
            raise SpecError(f"{where}.type: {m.type!r} is not \"bind\" or \"tmpfs\"")
        if m.target.startswith(("/proc", "/sys", "/dev")) and m.target != "/dev/shm":
            raise SpecError(f"{where}.target: mounts over {m.target} are not allowed")
    if spec.mounts and "mount" not in spec.namespaces:
        raise SpecError("mounts: need the mount namespace")
    for key in ("uid_map", "gid_map"):
        mapping = getattr(spec, key)
        if mapping is None:
            continue
        if "user" not in spec.namespaces:
            raise SpecError(f"{key}: only with the user namespace")
        _validate_map(key, mapping)
        if not any(m.inside == 0 for m in mapping):
            raise SpecError(f"{key}: must map id 0 (the container's init runs as root)")
    for name in spec.capabilities:
        if name not in caps.CAPABILITIES:
            raise SpecError(f"capabilities: unknown capability {name!r}")
    for name, (soft, hard) in spec.rlimits.items():
        if name not in RLIMITS:
            raise SpecError(f"rlimits: unknown limit {name!r}; known: {sorted(RLIMITS)}")
        if soft > hard and hard != resource.RLIM_INFINITY:
            raise SpecError(f"rlimits.{name}: soft {soft} exceeds hard {hard}")
    for key in ("uid", "gid"):
        if not 0 <= getattr(spec, key) < 2**32 - 1:
            raise SpecError(f"{key}: {getattr(spec, key)} is out of range")
    if spec.kill_grace < 0:
        raise SpecError("kill_grace: must be >= 0")
    if spec.log is not None:
        if not os.path.isabs(spec.log.dir) or not os.path.isdir(spec.log.dir):
            raise SpecError(f"log.dir: {spec.log.dir!r} must be an existing absolute directory")
        if spec.log.max_bytes < 0:
            raise SpecError("log.max_bytes: must be >= 0 (0: never rotate)")
        if not 0 <= spec.log.backups <= 1000:
            raise SpecError("log.backups: must be between 0 and 1000")


def _validate_map(key: str, mapping: tuple[IdMapping, ...]) -> None:
    if not mapping:
        raise SpecError(f"{key}: must have at least one line")
    if len(mapping) > 340:
        raise SpecError(f"{key}: at most 340 lines")
    spans_in: list[tuple[int, int]] = []
    spans_out: list[tuple[int, int]] = []
    for i, m in enumerate(mapping):
        if m.count <= 0 or m.inside < 0 or m.outside < 0:
            raise SpecError(f"{key}[{i}]: inside, outside >= 0 and count > 0 required")
        if m.inside + m.count > 2**32 - 1 or m.outside + m.count > 2**32 - 1:
            raise SpecError(f"{key}[{i}]: range exceeds 32-bit ids")
        spans_in.append((m.inside, m.inside + m.count))
        spans_out.append((m.outside, m.outside + m.count))
    for spans, side in ((spans_in, "inside"), (spans_out, "outside")):
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            if start < end:
                raise SpecError(f"{key}: {side} ranges overlap")
