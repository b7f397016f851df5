"""The daemon's TOML config: schema, validation, defaults and reload diffs.

Validation is declarative: each table is a ``_Table`` (a dataclass plus a
``key -> parser`` map and an optional cross-field check), so new sections
(``[networks.X]``) and keys (``networks``, ``ports``, ``limits``) are one entry
each.  Every problem raises ``ConfigError`` located by file and key path, e.g.
``demo.toml: containers.web.backoff.max: "10x" is not a duration (...)``.

Pure apart from ``load_config`` reading its one file: the daemon, the CLI
(``nsvisorctl check``-style tools) and tests all drive ``parse_config``.
"""

from __future__ import annotations

import binascii
import ipaddress
import json
import re
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from os import PathLike
from typing import Any

from supervisor.model.deps import find_cycle
from supervisor.model.networks import (
    Attachment,
    NetworkConfig,
    PortConfig,
    parse_attachments,
    parse_networks,
    parse_ports,
)
from supervisor.model.networks import check as check_networks
from supervisor.model.units import ConfigError, parse_duration, parse_size, toml_type_name

__all__ = [
    "CAPABILITIES",
    "NAMESPACES",
    "RESTART_POLICIES",
    "BackoffConfig",
    "Config",
    "ConfigDiff",
    "ConfigError",
    "ContainerConfig",
    "LogConfig",
    "MountConfig",
    "SupervisorConfig",
    "config_from_dict",
    "diff_configs",
    "load_config",
    "parse_config",
]

NAMESPACES: tuple[str, ...] = ("mount", "uts", "ipc", "pid", "net", "user", "cgroup")
"""Namespace names accepted in ``namespaces``, in canonical order (the default: all)."""

RESTART_POLICIES: tuple[str, ...] = ("no", "on-failure", "always", "unless-stopped")
"""Docker's restart policy names; see ``supervisor.model.policy`` for the semantics."""

CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
"""Linux capability names; the index is the capability number (CAP_CHOWN = 0)."""

CONTAINER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
"""Container (and group) names: they become hostnames, file names and link-name prefixes."""

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # HOST_NAME_MAX = 64
_MAX_ID = 2**32 - 2  # (uid_t)-1 is reserved
_TUPLE_FIELDS = (
    "command",
    "namespaces",
    "mounts",
    "depends_on",
    "exitcodes",
    "cap_add",
    "cap_drop",
)
_NAME_RULE = '1-63 characters: lowercase letters, digits, "_", ".", "-"; first a letter or digit'


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class SupervisorConfig:
    """The ``[supervisor]`` table: where the daemon listens and keeps its files.

    Defaults: socket ``/run/nsvisor/nsvisor.sock``, state_dir ``/run/nsvisor``
    (runtime state for live restore), log_dir ``/var/log/nsvisor``,
    metrics_listen ``127.0.0.1:9477`` (``""`` disables the metrics endpoint).
    """

    socket: str = "/run/nsvisor/nsvisor.sock"
    state_dir: str = "/run/nsvisor"
    log_dir: str = "/var/log/nsvisor"
    metrics_listen: str = "127.0.0.1:9477"
    socket_group: str = ""  # a group allowed on the socket (mode 0660); "" = root only

    def to_dict(self) -> dict[str, Any]:
        """Plain values in the TOML schema's shape."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class MountConfig:
    """One ``mounts`` entry: a bind mount (``source`` required) or a tmpfs (no source).

    Defaults: type ``"bind"``, readonly false, size None (tmpfs only: the
    kernel default, half of RAM).
    """

    target: str
    source: str | None = None
    type: str = "bind"
    readonly: bool = False
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values in the TOML schema's shape (unset optional keys left out)."""
        out: dict[str, Any] = {"type": self.type, "target": self.target}
        if self.source is not None:
            out["source"] = self.source
        out["readonly"] = self.readonly
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class LimitsConfig:
    """Resource limits of the container's cgroup: ``memory`` (hard limit, bytes),
    ``cpus`` (CPU quota as a fraction of cores, e.g. 0.5), ``pids`` (max tasks).
    None (the default) leaves that resource unlimited.
    """

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class BackoffConfig:
    """Restart delays: ``initial * factor**(n-1)`` capped at ``max`` (seconds).

    Docker's defaults: initial 100 ms, factor 2, max 60 s; the counter resets
    when a run lasted at least ``reset_after`` (10 s).
    """

    initial: float = 0.1
    factor: float = 2.0
    max: float = 60.0
    reset_after: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values in the TOML schema's shape (seconds as numbers)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class LogConfig:
    """Per-container log rotation, like supervisord's stdout_logfile_maxbytes/backups.

    Defaults: max_bytes 50 MiB (0 = never rotate), 10 backups, merge false
    (true sends stderr into the stdout log, like redirect_stderr).
    """

    max_bytes: int = 50 * 1024 * 1024
    backups: int = 10
    merge: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain values in the TOML schema's shape (bytes as integers)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ContainerConfig:
    """One ``[containers.NAME]`` table, validated and with defaults filled in.

    Defaults: rootfs ``"host"``, hostname and group = the name, all seven
    namespaces, env {}, workdir ``/``, user ``0:0``, no mounts, autostart true,
    priority 999, no dependencies, restart ``on-failure``, exitcodes [0],
    startsecs 1 s, max_retries 3, backoff 100ms x2 up to 60s (reset after 10s),
    stop_signal SIGTERM, stop_timeout 10 s, log 50M x 10, readonly_rootfs false,
    no capability changes, no_new_privs true.  Lists are stored as tuples;
    ``stop_signal`` is a signal number (a ``signal.Signals`` member when named);
    capabilities are normalised to ``CAP_X``.  Treat ``env`` as read-only.
    """

    name: str
    command: tuple[str, ...]
    rootfs: str = "host"
    hostname: str = ""
    namespaces: tuple[str, ...] = NAMESPACES
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "0:0"
    mounts: tuple[MountConfig, ...] = ()
    group: str = ""
    autostart: bool = True
    priority: int = 999
    depends_on: tuple[str, ...] = ()
    restart: str = "on-failure"
    exitcodes: tuple[int, ...] = (0,)
    startsecs: float = 1.0
    max_retries: int = 3
    backoff: BackoffConfig = BackoffConfig()
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    log: LogConfig = LogConfig()
    limits: LimitsConfig = LimitsConfig()
    networks: tuple[Attachment, ...] = ()
    ports: tuple[PortConfig, ...] = ()
    readonly_rootfs: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    no_new_privs: bool = True

    def __post_init__(self) -> None:
        # Accept lists from code that builds configs directly; keep the stored form canonical.
        for name in _TUPLE_FIELDS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "env", dict(self.env))
        if not self.hostname:
            object.__setattr__(self, "hostname", self.name)
        if not self.group:
            object.__setattr__(self, "group", self.name)

    @property
    def uid(self) -> int:
        """The uid from ``user`` ("uid:gid")."""
        return int(self.user.partition(":")[0])

    @property
    def gid(self) -> int:
        """The gid from ``user`` ("uid:gid")."""
        return int(self.user.partition(":")[2])

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able values in the TOML schema's shape (``name`` left out).

        ``config_from_dict`` accepts the result again, so the daemon can persist
        the config it is running with (for live restore) and compare it later.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "name":
                continue
            if f.name == "stop_signal":
                value = value.name if isinstance(value, signal.Signals) else int(value)
            elif f.name == "mounts":
                value = [m.to_dict() for m in value]
            elif f.name == "networks":
                value = {a.network: a.address or "" for a in value}
            elif f.name == "ports":
                value = [str(p) for p in value]
            elif isinstance(value, BackoffConfig | LogConfig | LimitsConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class Config:
    """A whole config file: ``[supervisor]`` plus ``[containers.*]`` in file order."""

    supervisor: SupervisorConfig = SupervisorConfig()
    containers: dict[str, ContainerConfig] = field(default_factory=dict)
    source: str = ""
    networks: dict[str, NetworkConfig] = field(default_factory=dict)

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group name -> member container names (file order), for ``group:*`` commands."""
        out: dict[str, list[str]] = {}
        for name, c in self.containers.items():
            out.setdefault(c.group, []).append(name)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able values in the TOML schema's shape (``source`` left out)."""
        return {
            "supervisor": self.supervisor.to_dict(),
            "networks": {n: net.to_dict() for n, net in self.networks.items()},
            "containers": {n: c.to_dict() for n, c in self.containers.items()},
        }


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload changes: container names per category, each in file order.

    ``added``/``unchanged``/``changed`` follow the new file's order, ``removed``
    the old one's.  ``supervisor_changed`` lists the ``[supervisor]`` keys that differ
    (as ``supervisor.KEY``): they take effect when nsvisord restarts, not on a reread.
    """

    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]
    supervisor_changed: list[str] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        """True if applying the new config would do anything."""
        return bool(self.added or self.changed or self.removed or self.supervisor_changed)


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs for SIGHUP reload / ``reread``: any field change means changed."""
    added, changed, unchanged = [], [], []
    for name, cfg in new.containers.items():
        if name not in old.containers:
            added.append(name)
        elif old.containers[name] != cfg or any(
                old.networks.get(a.network) != new.networks.get(a.network)
                for a in cfg.networks):
            changed.append(name)
        else:
            unchanged.append(name)
    removed = [name for name in old.containers if name not in new.containers]
    return ConfigDiff(added, changed, removed, unchanged,
                      supervisor_changes(old.supervisor, new.supervisor))


def fingerprint(cfg: ContainerConfig, networks: Mapping[str, NetworkConfig]) -> str:
    """A short digest of what a container runs with: its table and the networks it is
    on. Kept with its running state, it tells a restarted daemon which re-adopted
    containers were started from a config that has changed since."""
    attached = {a.network: networks[a.network].to_dict() for a in cfg.networks
                if a.network in networks}
    text = json.dumps([cfg.to_dict(), attached], sort_keys=True)
    return f"{binascii.crc32(text.encode()):08x}"


def supervisor_changes(old: SupervisorConfig, new: SupervisorConfig) -> list[str]:
    """The ``[supervisor]`` keys that differ, as ``supervisor.KEY``."""
    return [f"supervisor.{f.name}" for f in fields(SupervisorConfig)
            if getattr(old, f.name) != getattr(new, f.name)]


# --------------------------------------------------------------------------- value parsers

Parser = Callable[[Any, str], Any]


def _join(where: str, key: str) -> str:
    """Extend a key path, quoting keys that are not TOML bare keys (like ``"my.app"``)."""
    shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'
    return f"{where}.{shown}" if where else shown


def _show(value: object) -> str:
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return ""


def _type_error(expected: str, value: object, where: str) -> ConfigError:
    shown = _show(value)
    got = f"{toml_type_name(value)} {shown}" if shown else toml_type_name(value)
    return ConfigError(f"expected {expected}, got {got}", where)


def _suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    import difflib  # only a bad config needs it

    match = difflib.get_close_matches(word, list(options), n=1)
    return f' (did you mean "{match[0]}"?)' if match else ""


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _type_error("a string", value, where)
    if "\0" in value:
        raise ConfigError("must not contain NUL characters", where)
    return value


# The kernel's MAX_ARG_STRLEN: the longest argument or "NAME=value" an exec takes.
_EXEC_STRING_MAX = 131072


def _exec_string(value: Any, where: str, prefix: str = "") -> str:
    """A string that reaches the workload's exec (an argument, an env value)."""
    _string(value, where)
    size = len(prefix.encode()) + len(value.encode()) + 1
    if size > _EXEC_STRING_MAX:
        what = "variable (NAME=value)" if prefix else "argument"
        raise ConfigError(f"{size - 1} bytes: exec takes at most {_EXEC_STRING_MAX - 1} "
                          f"per {what}", where)
    return value


def _nonempty_string(value: Any, where: str) -> str:
    if not _string(value, where):
        raise ConfigError("must not be empty", where)
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _type_error("a boolean (true or false)", value, where)
    return value


def _integer(lo: int | None = None, hi: int | None = None, noun: str = "") -> Parser:
    def parse(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(f"{noun} (an integer)" if noun else "an integer", value, where)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                raise ConfigError(f"{value} is too small (must be >= {lo})", where)
            if noun:
                raise ConfigError(f"{value} is not {noun} ({lo}..{hi})", where)
            raise ConfigError(f"{value} is out of range ({lo}..{hi})", where)
        return value

    return parse


def _number(lo: float) -> Parser:
    def parse(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error("a number", value, where)
        if not value >= lo or value == float("inf"):
            raise ConfigError(f"{value!r} is out of range (must be >= {lo} and finite)", where)
        return float(value)

    return parse


def _duration(positive: bool = False) -> Parser:
    def parse(value: Any, where: str) -> float:
        seconds = parse_duration(value, where)
        if positive and seconds <= 0:
            raise ConfigError(f"{_show(value)} must be greater than zero", where)
        return seconds

    return parse


def _abs_path(value: Any, where: str) -> str:
    if not _string(value, where).startswith("/"):
        raise ConfigError(f"{_show(value)} is not an absolute path", where)
    return value


def _choice(options: tuple[str, ...], what: str) -> Parser:
    def parse(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise _type_error(f"a {what} name (string)", value, where)
        if value not in options:
            allowed = ", ".join(f'"{o}"' for o in options)
            raise ConfigError(f"{_show(value)} is not a {what} (allowed: {allowed})", where)
        return value

    return parse


def _array(item: Parser, *, what: str, unique: bool = False, nonempty: bool = False) -> Parser:
    def parse(value: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _type_error(what, value, where)
        if nonempty and not value:
            raise ConfigError("must not be empty", where)
        out = tuple(item(v, f"{where}[{i}]") for i, v in enumerate(value))
        if unique:
            for i, v in enumerate(out):
                if v in out[:i]:
                    raise ConfigError(f"{_show(value[i])} is listed twice", f"{where}[{i}]")
        return out

    return parse


def _env(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _type_error("a table of strings", value, where)
    for key, val in value.items():
        if not key or "=" in key or "\0" in key:
            raise ConfigError(f'{_show(key)} is not a valid variable name (no "=")', where)
        _exec_string(val, _join(where, key), prefix=f"{key}=")
    return dict(value)


def _signal(value: Any, where: str) -> int:
    members = signal.Signals.__members__
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _type_error('a signal name or number (e.g. "SIGTERM", "TERM", 15)', value, where)
    if isinstance(value, int):
        if not 1 <= value < signal.NSIG:
            raise ConfigError(f"{value} is not a signal number (1..{signal.NSIG - 1})", where)
        try:
            return signal.Signals(value)
        except ValueError:
            return value  # a real-time signal without a name
    name = value.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in members:
        raise ConfigError(f"unknown signal {_show(value)}{_suggest(name, list(members))}", where)
    return members[name]


def _user(value: Any, where: str) -> str:
    match = re.fullmatch(r"(\d+):(\d+)", _string(value, where))
    if not match or max(int(match[1]), int(match[2])) > _MAX_ID:
        raise ConfigError(f'{_show(value)} is not "uid:gid" (numbers, e.g. "1000:1000")', where)
    return f"{int(match[1])}:{int(match[2])}"


def _capability(value: Any, where: str) -> str:
    name = _string(value, where).strip().upper()
    if name == "ALL":
        return name
    name = name if name.startswith("CAP_") else "CAP_" + name
    if name not in CAPABILITIES:
        raise ConfigError(f"unknown capability {_show(value)}{_suggest(name, CAPABILITIES)}", where)
    return name


def _hostname(value: Any, where: str) -> str:
    if not _HOSTNAME_RE.fullmatch(_string(value, where)):
        raise ConfigError(
            f'{_show(value)} is not a valid hostname (1-64 letters, digits, "_", ".", "-")',
            where,
        )
    return value


def _name(what: str) -> Parser:
    def parse(value: Any, where: str) -> str:
        if not CONTAINER_NAME_RE.fullmatch(_string(value, where)):
            raise ConfigError(f"invalid {what} name {_show(value)} (use {_NAME_RULE})", where)
        return value

    return parse


def _listen(value: Any, where: str) -> str:
    if _string(value, where) == "":
        return value
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", value)
    ok = bool(match) and 1 <= int(match[2]) <= 65535
    if ok and match[1].startswith("["):
        try:
            ipaddress.IPv6Address(match[1][1:-1])
        except ValueError:
            ok = False
    if not ok:
        raise ConfigError(
            f'{_show(value)} is not "host:port" (e.g. "127.0.0.1:9477", "[::1]:9477"; "" disables)',
            where,
        )
    return value


# --------------------------------------------------------------------------- tables


def _reject_unknown(table: Mapping[str, Any], allowed: Mapping[str, Any], where: str) -> None:
    for key in table:
        if key not in allowed:
            hint = _suggest(key, list(allowed))
            if not hint and len(allowed) <= 10:
                hint = " (allowed: " + ", ".join(allowed) + ")"
            raise ConfigError(f"unknown key{hint}", _join(where, key))


Check = Callable[[Any, str, Mapping[str, Any]], None]


@dataclass(frozen=True)
class _Table:
    """A table schema: the dataclass to build, a parser per key, a cross-field check.

    Keys map 1:1 to dataclass fields; keys whose field has no default are
    required.  Missing keys take the dataclass default, so defaults live in one
    place.  ``check(obj, where, raw)`` sees the raw table to tell set from default.
    """

    cls: type
    keys: Mapping[str, Parser]
    check: Check | None = None

    def __call__(self, value: Any, where: str, **extra: Any) -> Any:
        if not isinstance(value, dict):
            raise _type_error("a table", value, where)
        _reject_unknown(value, self.keys, where)
        kwargs = dict(extra)
        required = {
            f.name
            for f in fields(self.cls)
            if f.default is MISSING and f.default_factory is MISSING
        }
        for key, parse in self.keys.items():
            if key in value:
                kwargs[key] = parse(value[key], _join(where, key))
            elif key in required:
                raise ConfigError("required key is missing", _join(where, key))
        obj = self.cls(**kwargs)
        if self.check is not None:
            self.check(obj, where, value)
        return obj


def _check_mount(mount: MountConfig, where: str, raw: Mapping[str, Any]) -> None:
    if mount.type == "bind" and mount.source is None:
        raise ConfigError("required for a bind mount", _join(where, "source"))
    if mount.type != "bind" and mount.source is not None:
        raise ConfigError(f"not allowed for a {mount.type} mount", _join(where, "source"))
    if mount.type != "tmpfs" and mount.size is not None:
        raise ConfigError("only allowed for a tmpfs mount", _join(where, "size"))
    if ".." in mount.target.split("/"):
        raise ConfigError(f'{_show(mount.target)} must not contain ".."', _join(where, "target"))
    if mount.target.rstrip("/") == "":
        raise ConfigError('"/" cannot be a mount target (use rootfs)', _join(where, "target"))


def _check_backoff(backoff: BackoffConfig, where: str, raw: Mapping[str, Any]) -> None:
    if backoff.max < backoff.initial:
        raise ConfigError(
            f"{_show(raw.get('max', backoff.max))} is less than initial ({backoff.initial}s)",
            _join(where, "max"),
        )


def _check_container(c: ContainerConfig, where: str, raw: Mapping[str, Any]) -> None:
    if "hostname" in raw and "uts" not in c.namespaces:
        raise ConfigError(
            'needs the "uts" namespace (it would rename the host)', _join(where, "hostname")
        )
    if "mount" not in c.namespaces:
        for key, used in (
            ("rootfs", c.rootfs != "host"),
            ("mounts", bool(c.mounts)),
            ("readonly_rootfs", c.readonly_rootfs),
        ):
            if used:
                raise ConfigError('needs the "mount" namespace', _join(where, key))
    targets: dict[str, int] = {}
    for i, m in enumerate(c.mounts):
        target = m.target.rstrip("/")
        if target in targets:
            raise ConfigError(
                f"{_show(m.target)} is already a target of mounts[{targets[target]}]",
                f"{_join(where, 'mounts')}[{i}].target",
            )
        targets[target] = i
    for i, cap in enumerate(c.cap_drop):
        if cap in c.cap_add and cap != "ALL":
            raise ConfigError(f'"{cap}" is also in cap_add', f"{_join(where, 'cap_drop')}[{i}]")


def _rootfs(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _type_error('"host" or an absolute path', value, where)
    if value != "host" and not value.startswith("/"):
        raise ConfigError(f'{_show(value)} is not "host" or an absolute path', where)
    return _string(value, where)


_SUPERVISOR = _Table(
    SupervisorConfig,
    {
        "socket": _abs_path,
        "state_dir": _abs_path,
        "log_dir": _abs_path,
        "metrics_listen": _listen,
        "socket_group": _string,
    },
)

_MOUNT = _Table(
    MountConfig,
    {
        "type": _choice(("bind", "tmpfs"), "mount type"),
        "source": _abs_path,
        "target": _abs_path,
        "readonly": _boolean,
        "size": parse_size,
    },
    _check_mount,
)

_BACKOFF = _Table(
    BackoffConfig,
    {
        "initial": _duration(positive=True),
        "factor": _number(1.0),
        "max": _duration(),
        "reset_after": _duration(),
    },
    _check_backoff,
)

_LOG = _Table(
    LogConfig,
    {"max_bytes": parse_size, "backups": _integer(0), "merge": _boolean},
)


def _cpus(value: Any, where: str) -> float:
    cpus = _number(0.01)(value, where)
    if cpus > 1024:
        raise ConfigError(f"{_show(value)} is more CPUs than any machine has", where)
    return cpus


def _memory_limit(value: Any, where: str) -> int:
    size = parse_size(value, where)
    if size < 4 * 1024 * 1024:
        raise ConfigError(f"{_show(value)} is below the 4M a container needs to start", where)
    return size


_any_integer = _integer()


def _pids_limit(value: Any, where: str) -> int:
    count = _any_integer(value, where)
    if count < 2:
        raise ConfigError(f"{count} is below the 2 tasks a container needs to start (its "
                          "init and its workload)", where)
    return count


_LIMITS = _Table(
    LimitsConfig,
    {"memory": _memory_limit, "cpus": _cpus, "pids": _pids_limit},
)

_STRINGS = "an array of strings"
_CONTAINER = _Table(
    ContainerConfig,
    {
        "command": _array(_exec_string, what=_STRINGS + " (argv; no shell)", nonempty=True),
        "rootfs": _rootfs,
        "hostname": _hostname,
        "namespaces": _array(
            _choice(NAMESPACES, "namespace"), what="an array of namespace names", unique=True
        ),
        "env": _env,
        "workdir": _abs_path,
        "user": _user,
        "mounts": _array(_MOUNT, what="an array of tables"),
        "group": _name("group"),
        "autostart": _boolean,
        "priority": _integer(-(2**31), 2**31 - 1),
        "depends_on": _array(_nonempty_string, what=_STRINGS, unique=True),
        "restart": _choice(RESTART_POLICIES, "restart policy"),
        "exitcodes": _array(_integer(0, 255, "an exit code"), what="an array of exit codes"),
        "startsecs": _duration(),
        "max_retries": _integer(0),
        "backoff": _BACKOFF,
        "stop_signal": _signal,
        "stop_timeout": _duration(),
        "log": _LOG,
        "limits": _LIMITS,
        "readonly_rootfs": _boolean,
        "cap_add": _array(_capability, what=_STRINGS, unique=True),
        "cap_drop": _array(_capability, what=_STRINGS, unique=True),
        "no_new_privs": _boolean,
        "networks": parse_attachments,
        "ports": parse_ports,
    },
    _check_container,
)


def _containers(value: Any, where: str) -> dict[str, ContainerConfig]:
    if not isinstance(value, dict):
        raise _type_error("a table of [containers.NAME] tables", value, where)
    out: dict[str, ContainerConfig] = {}
    for name, table in value.items():
        path = _join(where, name)
        if not CONTAINER_NAME_RE.fullmatch(name):
            raise ConfigError(f'invalid container name "{name}" (use {_NAME_RULE})', path)
        out[name] = _CONTAINER(table, path, name=name)
    return out


_TOP_KEYS: dict[str, Parser] = {"supervisor": _SUPERVISOR, "networks": parse_networks,
                                 "containers": _containers}


def _check_dependencies(containers: Mapping[str, ContainerConfig]) -> None:
    names = list(containers)
    for name, c in containers.items():
        for dep in c.depends_on:
            if dep not in containers:
                raise ConfigError(
                    f'unknown container "{dep}"{_suggest(dep, names)}',
                    _join(_join("containers", name), "depends_on"),
                )
    cycle = find_cycle({n: c.depends_on for n, c in containers.items()})
    if cycle:
        raise ConfigError(
            "depends_on cycle: " + " -> ".join(cycle),
            _join(_join("containers", cycle[0]), "depends_on"),
        )


# --------------------------------------------------------------------------- entry points


def config_from_dict(data: Mapping[str, Any], source: str = "") -> Config:
    """Validate already-parsed TOML (or ``Config.to_dict()`` output) into a ``Config``."""
    try:
        if not isinstance(data, dict):
            raise _type_error("a table", data, "")
        _reject_unknown(data, _TOP_KEYS, "")
        parsed = {k: parse(data[k], k) for k, parse in _TOP_KEYS.items() if k in data}
        config = Config(**parsed, source=source)
        _check_dependencies(config.containers)
        check_networks(config.networks, config.containers)
    except ConfigError as err:
        raise err.with_source(source) from None
    return config


_TOML_POS = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; ``source`` (usually the path) prefixes every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        detail = str(err)
        pos = _TOML_POS.search(detail)
        line = column = None
        where = "at end of file"
        if pos:
            detail = detail[: pos.start()]
            if pos[1]:
                line, column = int(pos[1]), int(pos[2])
                where = f"at line {line}, column {column}"
        declared = re.fullmatch(r"Cannot declare \((.*)\) twice", detail)
        if declared:
            table = ".".join(part.strip().strip("'\"") for part in declared[1].split(","))
            detail = f"[{table.rstrip('.')}] is defined twice (each table may appear only once)"
        elif detail == "Cannot overwrite a value":
            detail = "a key or table is defined twice (Cannot overwrite a value)"
        raise ConfigError(
            f"invalid TOML {where}: {detail}", source=source, line=line, column=column
        ) from None
    return config_from_dict(data, source)


def load_config(path: str | PathLike[str]) -> Config:
    """Read and parse one config file (the only I/O in the model)."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise ConfigError(f"cannot read config: {err.strerror or err}", source=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not valid UTF-8 (byte offset {err.start})", source=source) from None
    return parse_config(text, source)
