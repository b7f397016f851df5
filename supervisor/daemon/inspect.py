"""``inspect`` and ``top``: a container's configuration and live state, read from /proc.

Both run in a worker thread (they read many small /proc files).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..runtime.spec import NS_PROC_NAME

if TYPE_CHECKING:
    from .supervisor import Supervisor


def namespaces(pid: int, kinds: tuple[str, ...]) -> dict[str, int]:
    """``{type: inode}`` of the container's own namespaces (the lsns view)."""
    out = {}
    for kind in kinds:
        short = NS_PROC_NAME[kind]
        try:
            out[short] = os.stat(f"/proc/{pid}/ns/{short}").st_ino
        except OSError:
            pass
    return out


def inspect(sup: Supervisor, name: str) -> dict[str, Any]:
    unit = sup.units[name]
    container = unit.container
    return {
        "status": sup.status(name),
        "config": unit.cfg.to_dict() | {"name": name},
        "namespaces": namespaces(container.pid, unit.cfg.namespaces) if container else {},
        "cgroup": unit.cgroup.paths if unit.cgroup is not None else None,
        "limits": unit.cfg.limits.to_dict(),
        "logs": {"stdout": sup.log_path(name, "stdout"), "stderr": sup.log_path(name, "stderr")},
        "addresses": {a.network: sup.network.address(name, a.network)
                      for a in unit.cfg.networks},
        "history": unit.history,
    }


def top(sup: Supervisor, name: str) -> list[dict[str, Any]]:
    """The processes of the container: those in its init's PID namespace (or, without
    one, the init and its descendants), with host and container pids."""
    unit = sup.units[name]
    if unit.container is None:
        return []
    init = unit.container.pid
    try:
        pidns = os.stat(f"/proc/{init}/ns/pid").st_ino
    except OSError:
        return []
    own_pidns = "pid" in unit.cfg.namespaces
    procs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if own_pidns and os.stat(f"/proc/{pid}/ns/pid").st_ino != pidns:
                continue
            info = _status(pid)
        except OSError:
            continue
        if not own_pidns and not _descends_from(pid, init, info):
            continue
        # The init is a fork of the fork server: its command line is the server's.
        command = info["name"] if pid == init else _cmdline(pid) or f"[{info['name']}]"
        procs.append({"host_pid": pid, "pid": info["nspid"], "user": info["uid"],
                      "command": command})
    return sorted(procs, key=lambda p: p["pid"])


def _status(pid: int) -> dict[str, Any]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {"name": fields.get("Name", "?"), "uid": fields.get("Uid", "?").split()[0],
            "ppid": int(fields.get("PPid", "0")),
            "nspid": int(fields.get("NSpid", str(pid)).split()[-1])}


def _descends_from(pid: int, ancestor: int, info: dict[str, Any]) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        pid = info["ppid"]
        if pid <= 1:
            return False
        try:
            info = _status(pid)
        except OSError:
            return False
    return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
