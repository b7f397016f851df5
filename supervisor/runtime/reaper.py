"""The one place in a process that calls ``waitpid``.

A runtime makes its caller a child subreaper, so every container init becomes the
caller's child when its launcher exits. Whoever reaps must hand the status to whoever
waits for that container: a daemon calls :meth:`Reaper.reap_all` on SIGCHLD (orphans
included, for when it runs as pid 1), and a :class:`~supervisor.runtime.Container`
collects its own status through :meth:`Reaper.collect`.
"""

from __future__ import annotations

import os


class Reaper:
    def __init__(self) -> None:
        self._statuses: dict[int, int] = {}
        self.reaped_total = 0  # every child reaped through this reaper (a metric)

    def reap_all(self) -> list[tuple[int, int]]:
        """Reap every exited child now; keep the statuses for :meth:`collect`."""
        reaped = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._statuses[pid] = status
            self.reaped_total += 1
            reaped.append((pid, status))
        return reaped

    def collect(self, pid: int) -> int | None:
        """The wait status of ``pid`` once it exited, else None.

        Raises ChildProcessError when ``pid`` is not (or no longer) our child, as for a
        container adopted after a daemon restart.
        """
        if pid in self._statuses:
            return self._statuses.pop(pid)
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped != pid:
            return None
        self.reaped_total += 1
        return status

    def forget(self, pid: int) -> None:
        self._statuses.pop(pid, None)


DEFAULT_REAPER = Reaper()
