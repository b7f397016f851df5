"""The sans-I/O lifecycle state machine, driven with a fake clock (plain floats)."""

from __future__ import annotations

import json
import signal

import pytest

from supervisor.model.config import BackoffConfig, ContainerConfig
from supervisor.model.policy import (
    ContainerPolicy,
    Kill,
    PolicySettings,
    Spawn,
    WakeAt,
    backoff_delay,
)
from supervisor.model.states import NOT_RUNNING_STATES, RUNNING_STATES, State

FAST = BackoffConfig(initial=0.1, factor=2.0, max=1.0, reset_after=10.0)


def make(**kw: object) -> ContainerPolicy:
    kw.setdefault("backoff", FAST)
    return ContainerPolicy(**kw)


def running(p: ContainerPolicy, now: float = 0.0) -> float:
    """Drive a fresh policy to RUNNING; return the time it got there."""
    assert p.start(now) == [Spawn("start")]
    actions = p.spawned(now)
    if p.settings.startsecs > 0:
        assert actions == [WakeAt(now + p.settings.startsecs)]
        now += p.settings.startsecs
        assert p.tick(now) == []
    assert p.state is State.RUNNING
    return now


def fail_start(p: ContainerPolicy, now: float) -> list[object]:
    """A start attempt that spawns and dies at once (before startsecs)."""
    assert p.state is State.STARTING
    p.spawned(now)
    return p.exited(now, 1, "exited with code 1")


# --------------------------------------------------------------------------- states


def test_state_values_and_groups() -> None:
    assert [s.value for s in State] == [0, 10, 20, 30, 40, 100, 200]
    assert {State.STARTING, State.RUNNING, State.BACKOFF, State.STOPPING} == RUNNING_STATES
    assert {State.STOPPED, State.EXITED, State.FATAL} == NOT_RUNNING_STATES
    assert State.BACKOFF.is_running and not State.FATAL.is_running


# --------------------------------------------------------------------------- backoff formula


def test_backoff_delay_sequence_is_exact() -> None:
    assert [backoff_delay(FAST, n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff_delay(FAST, 0) == 0.0


def test_backoff_delay_docker_defaults_and_overflow() -> None:
    docker = BackoffConfig()
    assert [backoff_delay(docker, n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff_delay(docker, 11) == 60.0
    assert backoff_delay(docker, 100_000) == 60.0  # no OverflowError with unlimited retries
    assert backoff_delay(BackoffConfig(initial=5, factor=1, max=60), 50) == 5


# --------------------------------------------------------------------------- start


def test_start_spawned_then_running_after_startsecs() -> None:
    p = make(startsecs=1.0)
    assert p.state is State.STOPPED
    assert p.start(10.0) == [Spawn("start")]
    assert p.state is State.STARTING and p.spawn_pending
    assert p.spawned(10.2) == [WakeAt(11.2)]
    assert p.started_at == 10.2 and p.wake_at == 11.2
    assert p.tick(11.0) == [WakeAt(11.2)]  # early tick re-arms
    assert p.state is State.STARTING
    assert p.tick(11.2) == []  # at the deadline counts
    assert p.state is State.RUNNING
    assert p.running_since == 11.2
    assert p.last_transitions == [(State.STARTING, State.RUNNING)]
    assert p.tick(50.0) == []  # stale tick is harmless


def test_startsecs_zero_is_running_at_spawned() -> None:
    p = make(startsecs=0)
    p.start(0.0)
    assert p.spawned(0.5) == []
    assert p.state is State.RUNNING and p.running_since == 0.5


def test_start_when_already_started_is_noop() -> None:
    p = make()
    p.start(0.0)
    assert p.start_error() == "already started"
    assert p.start(0.1) == []
    p.spawned(0.1)
    p.tick(1.1)
    assert p.state is State.RUNNING
    assert p.start(2.0) == [] and p.start_error() == "already started"


def test_stale_spawned_and_spawn_failed_ignored() -> None:
    p = make()
    assert p.spawned(0.0) == [] and p.spawn_failed(0.0, "x") == []
    assert p.state is State.STOPPED


# --------------------------------------------------------------------------- failed starts


def test_failed_start_retries_with_exact_backoff_then_fatal() -> None:
    p = make(max_retries=3, restart="always")
    now = 0.0
    p.start(now)
    delays = []
    for _ in range(3):
        actions = fail_start(p, now)
        assert p.state is State.BACKOFF
        (wake,) = actions
        delays.append(round(wake.when - now, 9))
        assert p.tick(wake.when) == [Spawn("restart")]
        now = wake.when
    assert delays == [0.1, 0.2, 0.4]
    assert p.restarts == 3
    assert fail_start(p, now) == []  # 4th try = 3 retries used up
    assert p.state is State.FATAL
    assert p.last_transitions == [(State.STARTING, State.FATAL)]
    assert p.tick(now + 100) == []  # FATAL never restarts by itself
    assert p.state is State.FATAL


def test_exit_while_starting_with_expected_code_is_still_a_failure() -> None:
    p = make(restart="on-failure", exitcodes=frozenset({0}))
    p.start(0.0)
    p.spawned(0.0)
    assert p.exited(0.5, 0, "exited with code 0") == [WakeAt(0.6)]
    assert p.state is State.BACKOFF and p.start_failures == 1


def test_spawn_failed_is_a_failed_start() -> None:
    p = make(max_retries=1)
    p.start(0.0)
    assert p.spawn_failed(0.0, "exec: no such file") == [WakeAt(0.1)]
    assert p.state is State.BACKOFF
    assert p.last_exit_code is None and p.last_exit_reason == "exec: no such file"
    assert p.tick(0.1) == [Spawn("restart")]
    assert p.spawn_failed(0.1, "exec: no such file") == []
    assert p.state is State.FATAL


def test_unlimited_retries() -> None:
    p = make(max_retries=0)
    p.start(0.0)
    now = 0.0
    for i in range(50):
        (wake,) = fail_start(p, now)
        assert p.state is State.BACKOFF
        assert wake.when - now == pytest.approx(min(0.1 * 2**i, 1.0))
        now = wake.when
        p.tick(now)
    assert p.start_failures == 50 and p.restarts == 50


def test_restart_no_failed_start_goes_straight_to_fatal() -> None:
    p = make(restart="no")
    p.start(0.0)
    assert fail_start(p, 0.2) == []
    assert p.state is State.FATAL


def test_reaching_running_resets_start_failures() -> None:
    p = make(max_retries=1, restart="always")
    p.start(0.0)
    (wake,) = fail_start(p, 0.0)
    p.tick(wake.when)
    p.spawned(wake.when)
    p.tick(wake.when + 1.0)
    assert p.state is State.RUNNING and p.start_failures == 0


def test_exit_after_startsecs_before_tick_counts_as_running() -> None:
    p = make(startsecs=1.0, restart="on-failure")
    p.start(0.0)
    p.spawned(0.0)
    assert p.exited(1.5, 0, "exited with code 0") == []  # the tick was late
    assert p.state is State.EXITED
    assert p.last_transitions == [(State.STARTING, State.RUNNING), (State.RUNNING, State.EXITED)]
    assert p.start_failures == 0


# --------------------------------------------------------------------------- exits from RUNNING


@pytest.mark.parametrize(
    ("policy", "code", "restarts"),
    [
        ("no", 0, False),
        ("no", 1, False),
        ("on-failure", 0, False),
        ("on-failure", 1, True),
        ("on-failure", 137, True),
        ("always", 0, True),
        ("always", 1, True),
        ("unless-stopped", 0, True),
        ("unless-stopped", 3, True),
    ],
)
def test_exit_from_running_per_policy(policy: str, code: int, restarts: bool) -> None:
    p = make(restart=policy)
    t = running(p)
    actions = p.exited(t + 2.0, code, f"exited with code {code}")
    assert p.last_exit_code == code and p.last_exit_at == t + 2.0
    if restarts:
        assert actions == [WakeAt(t + 2.0 + 0.1)]
        assert p.state is State.BACKOFF and p.next_start_at == t + 2.1
        assert p.last_transitions == [(State.RUNNING, State.EXITED), (State.EXITED, State.BACKOFF)]
        assert p.tick(t + 2.1) == [Spawn("restart")]
        assert p.state is State.STARTING and p.restarts == 1
    else:
        assert actions == []
        assert p.state is State.EXITED
        assert p.tick(t + 100) == []


def test_on_failure_respects_custom_exitcodes() -> None:
    p = make(restart="on-failure", exitcodes=frozenset({0, 2}))
    t = running(p)
    assert p.exited(t + 2, 2, "exited with code 2") == []
    assert p.state is State.EXITED


def test_crash_loop_after_running_doubles_and_caps() -> None:
    p = make(restart="always", startsecs=1.0)
    now = running(p)
    delays = []
    for _ in range(6):
        now += 2.0  # runs 2 s (past startsecs, short of reset_after)
        (wake,) = p.exited(now, 1, "exited with code 1")
        delays.append(round(wake.when - now, 9))
        now = wake.when
        p.tick(now)
        p.spawned(now)
        now += 1.0
        p.tick(now)
        assert p.state is State.RUNNING
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert p.restarts == 6


def test_backoff_resets_after_running_reset_after() -> None:
    p = make(restart="always")
    now = running(p)
    for _ in range(4):  # build the delay up to 0.8
        (wake,) = p.exited(now + 2.0, 1, "x")
        now = wake.when
        p.tick(now)
        p.spawned(now)
        now += 1.0
        p.tick(now)
    assert p.backoff_attempt == 4
    # RUNNING for exactly reset_after (10 s): the next delay is initial again.
    (wake,) = p.exited(now + 10.0, 1, "x")
    assert wake.when - (now + 10.0) == pytest.approx(0.1)
    assert p.backoff_attempt == 1


def test_backoff_not_reset_just_below_reset_after() -> None:
    p = make(restart="always")
    now = running(p)
    (wake,) = p.exited(now + 2.0, 1, "x")
    now = wake.when
    p.tick(now)
    p.spawned(now)
    now += 1.0
    p.tick(now)
    (wake,) = p.exited(now + 9.9, 1, "x")
    assert wake.when - (now + 9.9) == pytest.approx(0.2)
    assert p.backoff_attempt == 2


def test_exits_from_running_never_go_fatal() -> None:
    p = make(restart="always", max_retries=1)
    now = running(p)
    for _ in range(5):
        (wake,) = p.exited(now + 2.0, 1, "x")
        now = wake.when
        p.tick(now)
        p.spawned(now)
        now += 1.0
        p.tick(now)
    assert p.state is State.RUNNING


def test_exit_code_range_checked() -> None:
    p = make()
    running(p)
    with pytest.raises(ValueError):
        p.exited(5.0, 256, "x")


# --------------------------------------------------------------------------- stop


def test_stop_running_escalates_to_sigkill_at_stop_timeout() -> None:
    p = make(stop_signal=signal.SIGINT, stop_timeout=10.0, restart="always")
    t = running(p)
    assert p.stop(t + 1) == [Kill(signal.SIGINT), WakeAt(t + 11)]
    assert p.state is State.STOPPING and p.manually_stopped
    assert p.tick(t + 5) == [WakeAt(t + 11)]
    assert p.tick(t + 11) == [Kill(signal.SIGKILL)]
    assert p.state is State.STOPPING  # until the exit arrives
    assert p.tick(t + 12) == []  # SIGKILL is sent once
    assert p.exited(t + 12, 137, "killed by SIGKILL") == []
    assert p.state is State.STOPPED
    assert p.tick(t + 20) == []  # never restarted, even with "always"


def test_stop_before_deadline_no_sigkill() -> None:
    p = make()
    t = running(p)
    p.stop(t)
    assert p.exited(t + 0.5, 0, "exited with code 0") == []
    assert p.state is State.STOPPED
    assert p.tick(t + 10) == []


def test_stop_while_starting() -> None:
    p = make()
    p.start(0.0)
    p.spawned(0.0)
    assert p.stop(0.5) == [Kill(signal.SIGTERM), WakeAt(10.5)]
    assert p.tick(1.0) == [WakeAt(10.5)]  # the startsecs timer does not promote it
    assert p.state is State.STOPPING
    p.exited(0.7, 143, "killed by SIGTERM")
    assert p.state is State.STOPPED


def test_stop_while_spawn_pending_kills_once_spawned() -> None:
    p = make()
    p.start(0.0)
    assert p.stop(0.1) == []
    assert p.state is State.STOPPING
    assert p.spawned(0.2) == [Kill(signal.SIGTERM), WakeAt(10.2)]
    p.exited(0.3, 143, "x")
    assert p.state is State.STOPPED


def test_stop_while_spawn_pending_and_spawn_fails() -> None:
    p = make()
    p.start(0.0)
    p.stop(0.1)
    assert p.spawn_failed(0.2, "boom") == []
    assert p.state is State.STOPPED


def test_stop_before_the_launch_began_cancels_it() -> None:
    p = make()
    p.start(0.0)
    assert p.spawn_cancelled(0.1) == []  # not stopped: the launch goes on
    assert p.state is State.STARTING and p.spawn_pending
    assert p.stop(0.1) == []
    assert p.spawn_cancelled(0.2) == []
    assert p.state is State.STOPPED and not p.spawn_pending and p.manually_stopped
    assert p.last_exit_reason is None and p.restarts == 0  # nothing ran, nothing exited
    assert p.spawned(0.3) == [] and p.spawn_failed(0.3, "late") == []  # stale


def test_a_start_while_a_cancelled_launch_stops_starts_again() -> None:
    p = make()
    p.start(0.0)
    p.stop(0.1)
    assert p.start(0.2) == []  # queued behind the stop
    assert p.spawn_cancelled(0.3) == [Spawn("start")]
    assert p.state is State.STARTING and p.spawn_pending


def test_stop_during_backoff_cancels_pending_restart() -> None:
    p = make(restart="always")
    t = running(p)
    (wake,) = p.exited(t + 2, 1, "x")
    assert p.stop(t + 2.05) == []
    assert p.state is State.STOPPED and p.next_start_at is None and p.manually_stopped
    assert p.tick(wake.when) == []  # the old timer fires: nothing happens
    assert p.state is State.STOPPED


@pytest.mark.parametrize("final", ["stopped", "exited", "fatal"])
def test_stop_when_not_running_is_noop(final: str) -> None:
    p = make(restart="no")
    if final == "exited":
        t = running(p)
        p.exited(t + 1, 0, "x")
    elif final == "fatal":
        p.start(0.0)
        fail_start(p, 0.0)
    before = p.to_dict()
    assert p.stop_error() == "not running"
    assert p.stop(50.0) == []
    assert p.to_dict() == before


def test_stop_twice_is_noop() -> None:
    p = make()
    t = running(p)
    p.stop(t)
    assert p.stop(t + 1) == []
    assert p.stop_deadline == t + 10


def test_stale_exit_ignored() -> None:
    p = make(restart="always")
    t = running(p)
    p.exited(t + 2, 1, "x")  # -> BACKOFF
    assert p.exited(t + 2.01, 1, "dup") == []
    assert p.state is State.BACKOFF and p.last_exit_reason == "x"
    p.stop(t + 3)
    assert p.exited(t + 3, 1, "dup") == [] and p.state is State.STOPPED


# --------------------------------------------------------------------------- manual start


@pytest.mark.parametrize("final", ["stopped", "exited", "fatal"])
def test_manual_start_resets_counters(final: str) -> None:
    p = make(restart="on-failure", max_retries=1)
    if final == "fatal":
        p.start(0.0)
        (wake,) = fail_start(p, 0.0)
        p.tick(wake.when)
        fail_start(p, wake.when)
        assert p.state is State.FATAL
    elif final == "exited":
        t = running(p)
        p.exited(t + 1, 0, "x")
        assert p.state is State.EXITED
    else:
        t = running(p)
        p.stop(t)
        p.exited(t, 0, "x")
    restarts = p.restarts
    assert p.start(100.0) == [Spawn("start")]
    assert p.start_failures == 0 and p.backoff_attempt == 0 and not p.manually_stopped
    assert p.restarts == restarts  # a monotonic counter of automatic restarts
    (wake,) = fail_start(p, 100.0)
    assert wake.when == pytest.approx(100.1)


def test_manual_start_in_backoff_retries_now() -> None:
    p = make(restart="always")
    t = running(p)
    p.exited(t + 1, 1, "x")
    assert p.start(t + 1.01) == [Spawn("start")]
    assert p.state is State.STARTING and p.next_start_at is None and p.backoff_attempt == 0


def test_start_during_stopping_restarts_after_exit() -> None:
    p = make()
    t = running(p)
    p.stop(t)
    assert p.start(t + 0.1) == []
    assert p.exited(t + 0.2, 143, "x") == [Spawn("start")]
    assert p.state is State.STARTING and not p.manually_stopped
    assert p.last_transitions == [(State.STOPPING, State.STOPPED), (State.STOPPED, State.STARTING)]


def test_stop_after_queued_start_cancels_it() -> None:
    p = make()
    t = running(p)
    p.stop(t)
    p.start(t + 0.1)
    p.stop(t + 0.2)
    assert p.exited(t + 0.3, 143, "x") == []
    assert p.state is State.STOPPED and p.manually_stopped


# --------------------------------------------------------------------------- autostart


@pytest.mark.parametrize(
    ("restart", "autostart", "manually_stopped", "expected"),
    [
        ("unless-stopped", True, False, True),
        ("unless-stopped", True, True, False),
        ("always", True, True, True),
        ("on-failure", True, True, True),
        ("no", False, False, False),
    ],
)
def test_should_autostart(
    restart: str, autostart: bool, manually_stopped: bool, expected: bool
) -> None:
    p = make(restart=restart, autostart=autostart)
    if manually_stopped:
        t = running(p)
        p.stop(t)
        p.exited(t, 0, "x")
    assert p.should_autostart() is expected


def test_should_autostart_false_when_restored_active() -> None:
    p = make()
    running(p)
    assert not p.should_autostart()


def test_manual_start_clears_manually_stopped() -> None:
    p = make(restart="unless-stopped")
    t = running(p)
    p.stop(t)
    p.exited(t, 0, "x")
    p.start(t + 1)
    assert not p.manually_stopped


# --------------------------------------------------------------------------- snapshot


def test_snapshot_round_trip_preserves_counters_and_deadlines() -> None:
    settings = PolicySettings(restart="unless-stopped", backoff=FAST)
    p = ContainerPolicy(settings)
    t = running(p)
    for _ in range(3):
        (wake,) = p.exited(t + 2, 1, "exited with code 1")
        t = wake.when
        p.tick(t)
        p.spawned(t)
        t += 1
        p.tick(t)
    (wake,) = p.exited(t + 2, 1, "exited with code 1")
    data = json.loads(json.dumps(p.to_dict()))
    assert data["state"] == "BACKOFF" and data["version"] == 1
    q = ContainerPolicy.from_dict(data, settings)
    assert q.to_dict() == p.to_dict()
    assert q.state is State.BACKOFF and q.restarts == 3 and q.backoff_attempt == 4
    assert q.wake_at == wake.when
    assert q.tick(wake.when) == [Spawn("restart")]
    assert q.restarts == 4


def test_snapshot_keeps_manually_stopped() -> None:
    p = make(restart="unless-stopped")
    t = running(p)
    p.stop(t)
    p.exited(t, 0, "x")
    q = ContainerPolicy.from_dict(p.to_dict(), p.settings)
    assert q.manually_stopped and not q.should_autostart()


def test_snapshot_rejects_bad_data() -> None:
    with pytest.raises(ValueError):
        ContainerPolicy.from_dict({"version": 99, "state": "RUNNING"})
    with pytest.raises(ValueError):
        ContainerPolicy.from_dict({"version": 1, "state": "DANCING"})


def test_from_config_and_settings_validation() -> None:
    cfg = ContainerConfig(
        name="w", command=("x",), restart="always", exitcodes=(0, 3), startsecs=0.0
    )
    p = ContainerPolicy.from_config(cfg)
    assert p.settings.restart == "always" and p.settings.exitcodes == {0, 3}
    assert p.settings.startsecs == 0.0 and p.settings.stop_signal == signal.SIGTERM
    with pytest.raises(ValueError):
        PolicySettings(restart="sometimes")
