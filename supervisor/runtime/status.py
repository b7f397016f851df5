"""How a container ended, and the durable record of it its init writes.

The init writes the workload's status to the exit file (opened on the host before the
pivot) the moment it reaps the workload, so a supervisor that was not running at that
moment - crashed, restarting - still learns the exact status later.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitStatus:
    """``exit_code`` follows the shell: the code, or 128+N when killed by signal N."""

    exit_code: int
    signal: int | None = None
    finished_at: float | None = None  # wall clock, when known

    @classmethod
    def from_wait_status(cls, status: int, finished_at: float | None = None) -> ExitStatus:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return cls(128 + sig, sig, finished_at)
        return cls(os.WEXITSTATUS(status), None, finished_at)

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exit status {self.exit_code}"



def parse_exit_record(raw: bytes) -> ExitStatus | None:
    """The status in an exit record, or None when it is empty or torn."""
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("exit_code"), int):
        return None
    return ExitStatus(data["exit_code"], data.get("signal"), data.get("finished_at"))


def read_exit_file(path: str) -> ExitStatus | None:
    """The status recorded at ``path``, or None when it is missing, empty or torn."""
    try:
        with open(path, "rb") as f:
            return parse_exit_record(f.read(4096))
    except OSError:
        return None
