"""The per-container state machine and restart policy, sans I/O.

The daemon feeds events (``start``, ``spawned``, ``spawn_failed``, ``spawn_cancelled``,
``exited``, ``stop``, ``tick``) with an explicit monotonic ``now`` and performs the actions
returned (``Spawn``, ``Kill``, ``WakeAt``).  The policy never sleeps or reads a
clock, so every timing rule is testable with plain floats.

Semantics (supervisord's states, Docker's restart policies and backoff):

- STOPPED --start--> STARTING + Spawn.  After ``spawned`` it stays STARTING
  until ``startsecs`` have passed (WakeAt), then RUNNING on the tick;
  ``startsecs == 0`` is RUNNING at ``spawned``.
- A *failed start* is ``spawn_failed`` or an exit while STARTING, whatever the
  exit code.  It is retried after a backoff delay (state BACKOFF) under every
  policy except ``"no"``; after ``max_retries`` failed retries (max_retries+1
  tries) the state is FATAL.  ``max_retries == 0`` retries forever.  With
  ``restart = "no"`` a failed start goes straight to FATAL (Docker's "no" never
  restarts anything; the user must start it again).
- An exit from RUNNING goes to EXITED, then: "no" never restarts; "on-failure"
  restarts when the code is not in ``exitcodes``; "always"/"unless-stopped"
  always restart.  A restart waits in BACKOFF (what supervisorctl users expect
  for "waiting to restart"), then Spawns.  Exits from RUNNING never lead to
  FATAL (only failed starts count against ``max_retries``).
- The delay is ``initial * factor**(n-1)`` capped at ``max``, n counting
  consecutive delayed restarts.  n resets to 0 on a manual start, and at an
  exit after the container was RUNNING for at least ``reset_after`` (measured
  from the moment it became RUNNING), so the next delay is ``initial``.
- ``stop``: STARTING/RUNNING -> STOPPING + Kill(stop_signal) + WakeAt(now +
  stop_timeout); the tick at the deadline sends Kill(SIGKILL) once (the state
  stays STOPPING until the exit, like supervisord); the exit -> STOPPED, never
  restarted.  BACKOFF -> STOPPED at once (pending restart cancelled).  A stop
  while the spawn is pending waits for its outcome, or for ``spawn_cancelled``
  (the daemon had not begun it: STOPPED at once).
  STOPPED/EXITED/FATAL: no-op.  A stop sets ``manually_stopped``.
- ``start`` in STOPPED/EXITED/FATAL/BACKOFF resets the failure and backoff
  counters, clears ``manually_stopped`` and Spawns at once (in BACKOFF it
  skips the wait).  In STARTING/RUNNING it is a no-op (``start_error()`` says
  "already started").  In STOPPING it is queued: the container is spawned
  again as soon as the old process exits (``restart`` = stop + start).
- Events that do not fit the state (an exit with no live process, ``spawned``
  with no spawn pending, an early or late ``tick``) are ignored; an early tick
  re-arms its WakeAt.

Timer contract: keep one timer per container; each WakeAt replaces the
previous one.  Stale ticks are harmless.  ``wake_at`` is the deadline pending
now (use it to re-arm the timer after a live restore).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from supervisor.model.config import RESTART_POLICIES, BackoffConfig, ContainerConfig
from supervisor.model.states import NOT_RUNNING_STATES, State

__all__ = [
    "Action",
    "ContainerPolicy",
    "Kill",
    "PolicySettings",
    "Spawn",
    "WakeAt",
    "backoff_delay",
]

SNAPSHOT_VERSION = 1


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Spawn:
    """Launch the container's process; report back with ``spawned`` or ``spawn_failed``.

    ``reason`` is "start" (manual start or autostart) or "restart" (automatic).
    """

    reason: str = "start"


@dataclass(frozen=True)
class Kill:
    """Send ``signal`` to the container's process (its pid 1)."""

    signal: int


@dataclass(frozen=True)
class WakeAt:
    """Call ``tick`` at monotonic time ``when`` (replaces any earlier WakeAt)."""

    when: float


Action = Spawn | Kill | WakeAt


# --------------------------------------------------------------------------- settings


def backoff_delay(backoff: BackoffConfig, attempt: int) -> float:
    """The delay before restart number ``attempt`` (1-based): initial*factor**(n-1), capped."""
    if attempt <= 0:
        return 0.0
    try:
        delay = backoff.initial * backoff.factor ** (attempt - 1)
    except OverflowError:  # unlimited retries can push the exponent past float range
        return backoff.max
    return min(delay, backoff.max) if math.isfinite(delay) else backoff.max


@dataclass(frozen=True)
class PolicySettings:
    """The config values the policy needs (defaults are the config defaults)."""

    restart: str = "on-failure"
    exitcodes: frozenset[int] = frozenset({0})
    startsecs: float = 1.0
    max_retries: int = 3
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    autostart: bool = True

    def __post_init__(self) -> None:
        if self.restart not in RESTART_POLICIES:
            raise ValueError(f"unknown restart policy {self.restart!r}")
        object.__setattr__(self, "exitcodes", frozenset(self.exitcodes))

    @classmethod
    def from_config(cls, cfg: ContainerConfig) -> PolicySettings:
        """Pick the policy's values out of a container's config."""
        return cls(
            restart=cfg.restart,
            exitcodes=frozenset(cfg.exitcodes),
            startsecs=cfg.startsecs,
            max_retries=cfg.max_retries,
            backoff=cfg.backoff,
            stop_signal=cfg.stop_signal,
            stop_timeout=cfg.stop_timeout,
            autostart=cfg.autostart,
        )


# --------------------------------------------------------------------------- the machine

# Snapshot fields: everything that must survive a daemon restart (times are monotonic).
_SNAPSHOT_FIELDS = (
    "restarts",
    "start_failures",
    "backoff_attempt",
    "last_exit_code",
    "last_exit_reason",
    "last_exit_at",
    "started_at",
    "running_since",
    "next_start_at",
    "stop_deadline",
    "killed",
    "spawn_pending",
    "process_alive",
    "manually_stopped",
    "start_requested",
)


class ContainerPolicy:
    """Lifecycle and restart policy of one container (see the module docstring).

    Public attributes (read them; only the event methods change them):
    ``state``; ``restarts`` (automatic spawns so far, retries included; never
    reset, so it works as a metrics counter); ``start_failures`` (consecutive
    failed starts, for FATAL); ``backoff_attempt`` (n in the delay formula);
    ``last_exit_code`` (None after a spawn failure), ``last_exit_reason``,
    ``last_exit_at``; ``started_at`` (when the current/last process was
    spawned); ``running_since``; ``next_start_at`` (BACKOFF only);
    ``stop_deadline`` (when SIGKILL is due); ``manually_stopped``;
    ``last_transitions`` (the (old, new) state changes made by the latest
    event, for events/logs; EXITED may appear only there when a restart follows
    at once).
    """

    def __init__(self, settings: PolicySettings | None = None, **overrides: Any) -> None:
        base = settings or PolicySettings()
        self.settings: PolicySettings = replace(base, **overrides) if overrides else base
        self.state: State = State.STOPPED
        self.restarts = 0
        self.start_failures = 0
        self.backoff_attempt = 0
        self.last_exit_code: int | None = None
        self.last_exit_reason: str | None = None
        self.last_exit_at: float | None = None
        self.started_at: float | None = None
        self.running_since: float | None = None
        self.next_start_at: float | None = None
        self.stop_deadline: float | None = None
        self.killed = False
        self.spawn_pending = False
        self.process_alive = False
        self.manually_stopped = False
        self.start_requested = False
        self.last_transitions: list[tuple[State, State]] = []

    @classmethod
    def from_config(cls, cfg: ContainerConfig) -> ContainerPolicy:
        """A fresh policy (STOPPED) for a container's config."""
        return cls(PolicySettings.from_config(cfg))

    # ----------------------------------------------------------------- queries

    @property
    def wake_at(self) -> float | None:
        """The pending deadline the daemon's timer should fire at, if any."""
        if self.state is State.STARTING and self.process_alive and self.started_at is not None:
            return self.started_at + self.settings.startsecs
        if self.state is State.BACKOFF:
            return self.next_start_at
        if self.state is State.STOPPING and self.process_alive and not self.killed:
            return self.stop_deadline
        return None

    def should_autostart(self) -> bool:
        """Whether the daemon should start this container when the daemon itself starts.

        False for a container restored in an active state (live restore resumes
        it instead) and for an "unless-stopped" container the user stopped.
        """
        if not self.settings.autostart or self.state not in NOT_RUNNING_STATES:
            return False
        return not (self.settings.restart == "unless-stopped" and self.manually_stopped)

    def start_error(self) -> str | None:
        """Why ``start`` would be a no-op ("already started"), or None if it acts."""
        if self.state in (State.STARTING, State.RUNNING):
            return "already started"
        return None

    def stop_error(self) -> str | None:
        """Why ``stop`` would be a no-op ("not running"), or None if it acts."""
        return "not running" if self.state in NOT_RUNNING_STATES else None

    def is_expected_exit(self, exit_code: int) -> bool:
        """True when ``exit_code`` is listed in ``exitcodes`` (the "on-failure" test)."""
        return exit_code in self.settings.exitcodes

    # ----------------------------------------------------------------- events

    def start(self, now: float) -> list[Action]:
        """Manual start or autostart."""
        self.last_transitions = []
        if self.state in (State.STARTING, State.RUNNING):
            return []
        self.manually_stopped = False
        if self.state is State.STOPPING:
            self.start_requested = True
            return []
        return self._manual_spawn()

    def spawned(self, now: float) -> list[Action]:
        """The daemon's launch of the process succeeded (the process now exists)."""
        self.last_transitions = []
        if not self.spawn_pending:
            return []
        self.spawn_pending = False
        self.process_alive = True
        self.started_at = now
        if self.state is State.STOPPING:  # stopped while it was being launched
            return self._send_stop(now)
        if self.settings.startsecs <= 0:
            self._became_running(now)
            return []
        return [WakeAt(now + self.settings.startsecs)]

    def spawn_failed(self, now: float, reason: str) -> list[Action]:
        """The launch failed (no process was created): a failed start."""
        self.last_transitions = []
        if not self.spawn_pending:
            return []
        self.spawn_pending = False
        self._record_exit(now, None, reason)
        if self.state is State.STOPPING:
            return self._stopped()
        return self._start_failed(now)

    def spawn_cancelled(self, now: float) -> list[Action]:
        """The daemon dropped a launch it had not begun, because a stop came first (the
        container was still waiting for its dependencies): no process, no exit."""
        self.last_transitions = []
        if not self.spawn_pending or self.state is not State.STOPPING:
            return []
        self.spawn_pending = False
        return self._stopped()

    def exited(self, now: float, exit_code: int, reason: str = "") -> list[Action]:
        """The process exited (``exit_code`` 0..255; 128+N when killed by signal N)."""
        if not 0 <= exit_code <= 255:
            raise ValueError(f"exit code {exit_code} is out of range (0..255)")
        self.last_transitions = []
        if not self.process_alive:
            return []  # stale: nothing of ours is running
        self.process_alive = False
        self._record_exit(now, exit_code, reason)
        if self.state is State.STOPPING:
            return self._stopped()
        if self.state is State.STARTING:
            assert self.started_at is not None
            up_since = self.started_at + self.settings.startsecs
            if now < up_since:
                return self._start_failed(now)
            # It did survive startsecs; the tick just had not arrived yet.
            self._became_running(up_since)
        return self._exited_from_running(now, exit_code)

    def stop(self, now: float) -> list[Action]:
        """Manual stop (cancels any pending restart; never restarted afterwards)."""
        self.last_transitions = []
        if self.state in NOT_RUNNING_STATES:
            return []
        self.manually_stopped = True
        self.start_requested = False
        if self.state is State.BACKOFF:
            self.next_start_at = None
            self._set(State.STOPPED)
            return []
        if self.state is State.STOPPING:
            return []
        self._set(State.STOPPING)
        if self.spawn_pending:
            return []  # Kill is sent when ``spawned`` arrives
        return self._send_stop(now)

    def tick(self, now: float) -> list[Action]:
        """A WakeAt fired: promote to RUNNING, restart after backoff, or escalate to SIGKILL."""
        self.last_transitions = []
        due = self.wake_at
        if due is None:
            return []
        if now < due:
            return [WakeAt(due)]  # early (or coalesced) timer: re-arm
        if self.state is State.STARTING:
            self._became_running(due)
            return []
        if self.state is State.BACKOFF:
            self.next_start_at = None
            self.restarts += 1
            return self._spawn("restart")
        # STOPPING past the deadline
        self.killed = True
        return [Kill(signal.SIGKILL)]

    # ----------------------------------------------------------------- internals

    def _set(self, new: State) -> None:
        if new is not self.state:
            self.last_transitions.append((self.state, new))
            self.state = new

    def _record_exit(self, now: float, code: int | None, reason: str) -> None:
        self.last_exit_code = code
        self.last_exit_reason = reason
        self.last_exit_at = now

    def _manual_spawn(self) -> list[Action]:
        self.start_failures = 0
        self.backoff_attempt = 0
        self.next_start_at = None
        return self._spawn("start")

    def _spawn(self, reason: str) -> list[Action]:
        self._set(State.STARTING)
        self.spawn_pending = True
        self.started_at = None
        self.running_since = None
        return [Spawn(reason)]

    def _became_running(self, when: float) -> None:
        self._set(State.RUNNING)
        self.running_since = when
        self.start_failures = 0

    def _send_stop(self, now: float) -> list[Action]:
        self.killed = False
        self.stop_deadline = now + self.settings.stop_timeout
        return [Kill(self.settings.stop_signal), WakeAt(self.stop_deadline)]

    def _stopped(self) -> list[Action]:
        self.stop_deadline = None
        self.killed = False
        self._set(State.STOPPED)
        if self.start_requested:
            self.start_requested = False
            return self._manual_spawn()
        return []

    def _start_failed(self, now: float) -> list[Action]:
        self.start_failures += 1
        retries = self.settings.max_retries
        if self.settings.restart == "no" or (retries and self.start_failures > retries):
            self._set(State.FATAL)
            return []
        return self._backoff(now)

    def _exited_from_running(self, now: float, exit_code: int) -> list[Action]:
        self._set(State.EXITED)
        assert self.running_since is not None
        if now >= self.running_since + self.settings.backoff.reset_after:
            self.backoff_attempt = 0
        policy = self.settings.restart
        if policy == "no" or (policy == "on-failure" and self.is_expected_exit(exit_code)):
            return []
        return self._backoff(now)

    def _backoff(self, now: float) -> list[Action]:
        self.backoff_attempt += 1
        self.next_start_at = now + backoff_delay(self.settings.backoff, self.backoff_attempt)
        self._set(State.BACKOFF)
        return [WakeAt(self.next_start_at)]

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot for live restore; settings come from the config.

        Times are monotonic: valid across daemon restarts within one boot.
        """
        out: dict[str, Any] = {"version": SNAPSHOT_VERSION, "state": self.state.name}
        out.update((name, getattr(self, name)) for name in _SNAPSHOT_FIELDS)
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], settings: PolicySettings | None = None, **overrides: Any
    ) -> ContainerPolicy:
        """Rebuild a policy from ``to_dict()`` output and the (current) settings.

        If a spawn was pending when the daemon died, report ``spawn_failed``; if
        the process is gone, report ``exited``; then re-arm the timer from ``wake_at``.
        """
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported policy snapshot version {data.get('version')!r}")
        policy = cls(settings, **overrides)
        try:
            policy.state = State[data["state"]]
        except KeyError:
            raise ValueError(f"unknown state {data.get('state')!r} in snapshot") from None
        for name in _SNAPSHOT_FIELDS:
            setattr(policy, name, data.get(name, getattr(policy, name)))
        return policy
