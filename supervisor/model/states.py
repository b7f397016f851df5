"""Container lifecycle states, with supervisord's names, meanings and numeric codes.

Reusing supervisord's vocabulary (and its codes as enum values) means users'
supervisorctl habits and scripts keep working against ``nsvisorctl status``.
"""

from __future__ import annotations

import enum

__all__ = [
    "NOT_RUNNING_STATES",
    "RUNNING_STATES",
    "SIGNALLABLE_STATES",
    "State",
]


class State(enum.Enum):
    """Where a container is in its lifecycle (values are supervisord's state codes)."""

    STOPPED = 0
    """Stopped by the user, or never started."""
    STARTING = 10
    """Spawn requested or process up for less than ``startsecs``."""
    RUNNING = 20
    """Process up for at least ``startsecs``."""
    BACKOFF = 30
    """Waiting to restart: after a failed start, or after an exit the policy restarts."""
    STOPPING = 40
    """Stop signal sent, waiting for the process to exit."""
    EXITED = 100
    """Exited on its own from RUNNING and the restart policy does not restart it."""
    FATAL = 200
    """Gave up after ``max_retries`` failed starts; only a manual start revives it."""

    @property
    def is_running(self) -> bool:
        """True for the states supervisorctl status reports as running (exit code 0)."""
        return self in RUNNING_STATES


RUNNING_STATES: frozenset[State] = frozenset(
    {State.STARTING, State.RUNNING, State.BACKOFF, State.STOPPING}
)
"""States that count as "running" for status and for "stop all" (something is in flight)."""

NOT_RUNNING_STATES: frozenset[State] = frozenset({State.STOPPED, State.EXITED, State.FATAL})
"""States with no process and nothing pending: a manual start is needed."""

SIGNALLABLE_STATES: frozenset[State] = frozenset({State.STARTING, State.RUNNING, State.STOPPING})
"""States in which a process may exist and can be sent a signal."""
