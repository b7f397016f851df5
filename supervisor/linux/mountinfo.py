"""Where things are mounted: proc(5) mountinfo, and where a cgroup lives in our tree.

The one parser of mountinfo for the daemon (cgroup detection), the fork server (its own
cgroups) and the enter process (the container's cgroups). Those last two load as little
as they can, so this module imports only ``os``.
"""

from __future__ import annotations

import os


class Mount:
    """One mountinfo line: the device, the subtree of it mounted (``root``), where, how."""

    __slots__ = ("dev", "root", "mount_point", "fstype", "super_options")

    def __init__(self, dev: int, root: str, mount_point: str, fstype: str,
                 super_options: tuple[str, ...]) -> None:
        self.dev = dev
        self.root = root
        self.mount_point = mount_point
        self.fstype = fstype
        self.super_options = super_options

    def __repr__(self) -> str:
        return f"<Mount {self.fstype} {self.root} on {self.mount_point}>"


def unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash in paths as \ooo."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all("0" <= c <= "7" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[Mount]:
    """The mounts of a mountinfo text; malformed lines are skipped. Optional fields end
    at the lone "-" separator."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = fields[2].split(":")
            dev = os.makedev(int(major), int(minor))
        except ValueError:
            continue
        if len(fields) < sep + 4:
            continue
        mounts.append(Mount(dev, unescape(fields[3]), unescape(fields[4]), fields[sep + 1],
                            tuple(fields[sep + 3].split(","))))
    return mounts


def read(path: str = "/proc/self/mountinfo") -> list[Mount]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def cgroup_dir(controllers: str, path: str, mounts: list[Mount]) -> str | None:
    """Where the cgroup ``path`` of one hierarchy is in our mount tree, or None when no
    mount shows it.

    ``controllers`` and ``path`` are the 2nd and 3rd fields of a ``/proc/PID/cgroup``
    line: "" for the v2 hierarchy, else its v1 controllers (or ``name=``). ``path`` is
    relative to the reader's cgroup namespace, as a mount's ``root`` is.
    """
    wanted = set(controllers.split(",")) if controllers else None
    for m in mounts:
        if wanted is None:
            if m.fstype != "cgroup2":
                continue
        elif m.fstype != "cgroup" or not wanted <= set(m.super_options):
            continue
        if path != m.root and not path.startswith(m.root.rstrip("/") + "/"):
            continue  # this mount shows another subtree of the hierarchy
        return os.path.join(m.mount_point, path[len(m.root):].lstrip("/")).rstrip("/") or "/"
    return None
