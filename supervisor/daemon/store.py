"""Per-container state files in ``state_dir``: what a restarted daemon needs to re-adopt.

One small JSON file per container, written atomically (write, fsync-free rename: the
state dir is normally a tmpfs, and what matters is surviving the daemon, not the host)
on every change of that container, so a ``kill -9`` at any moment leaves every file
either old or new, never torn.
"""

from __future__ import annotations

import json
import os
from typing import Any


class StateStore:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "containers")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def path(self, name: str, suffix: str = ".json") -> str:
        return os.path.join(self.dir, name + suffix)

    def exit_file(self, name: str) -> str:
        """Where the container's init records its workload's exit status."""
        return self.path(name, ".exit")

    def save(self, name: str, data: dict[str, Any]) -> None:
        final = self.path(name)
        tmp = final + ".tmp"
        text = json.dumps(data).encode()  # one write: this runs on every state change
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:  # someone removed the state dir: make it again
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        os.replace(tmp, final)

    def load(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self.path(name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def names(self) -> list[str]:
        return sorted(f[:-5] for f in os.listdir(self.dir) if f.endswith(".json"))

    def remove(self, name: str) -> None:
        for suffix in (".json", ".exit"):
            try:
                os.unlink(self.path(name, suffix))
            except FileNotFoundError:
                pass


def process_start_time(pid: int) -> int | None:
    """The live process's start time in clock ticks since boot (/proc/PID/stat field 22).

    With the pid, it identifies a process across a daemon restart: a pid reused by
    another process has another start time. None when the process is gone or a zombie
    (it has exited; its new parent has not reaped it yet).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])
