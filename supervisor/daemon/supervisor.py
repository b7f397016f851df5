"""Supervision: every container as a unit driven by its restart policy.

The policy model (``supervisor.model.policy``) decides; this module performs its actions
(Spawn, Kill, WakeAt) with the runtime and a timer per unit, and feeds the outcomes back
as events. Everything runs in one anyio task group; nothing polls: a container's exit is
its pidfd becoming readable (one epoll set for all, see ``exits``), a timer is a sleep
in a cancel scope, a dependency becoming RUNNING wakes whoever waits for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup

from ..linux import libc
from ..linux.cgroups import Cgroup, CgroupError, CgroupManager, Limits
from ..model.config import (
    Config,
    ConfigError,
    ContainerConfig,
    diff_configs,
    fingerprint,
    load_config,
    supervisor_changes,
)
from ..model.deps import DependencyGraph
from ..model.policy import ContainerPolicy, Kill, PolicySettings, Spawn, WakeAt
from ..model.states import NOT_RUNNING_STATES, SIGNALLABLE_STATES, State
from ..runtime import Container, ExitStatus, LaunchError, Runtime, SpecError
from ..runtime.client import Steps
from ..runtime.reaper import Reaper
from ..runtime.spec import LogSpec
from ..runtime.status import read_exit_file
from ..specs import spec_from_config
from .events import EventBus
from .exits import ExitWatcher
from .network import NetworkManager
from .store import (
    StateStore,
    boot_id,
    init_left_running,
    process_start_time,
    saved_before_a_reboot,
)

log = structlog.get_logger("nsvisord")
T = TypeVar("T")
HISTORY = 10  # exits remembered per container (inspect's restart history)
RELOADED = "changed or removed by a config reload meanwhile"
OOM_KILLED = "OOMKilled"  # the exit reason of a container the OOM killer ended
START_DURATIONS_KEPT = 4096  # launch latencies kept for the next scrape
LAUNCH_TIMEOUT = 10.0  # from the launch request to the workload's exec
LEAVE_WAIT = LAUNCH_TIMEOUT + 2  # a leave-running shutdown waits this long for launches
EXIT_STATUS_TIMEOUT = 5.0  # from a pidfd turning readable to its exit status
# Launches in flight at once; the others queue (in start order). A launch is mostly
# waiting - for the fork server, for its container's setup - so a few dozen keep the
# daemon, the fork server and the containers busy on any host; more only hold more
# buffers, sockets and fds at once: with 200 at once nsvisord kept 1.4 MiB more after a
# cold start, its heap fragmented by their short-lived objects (benchmarks/README.md).
LAUNCH_SLOTS = 32


class ExecRefused(Exception):
    """exec into a container that is not running."""


@dataclass
class Unit:
    """One configured container: its config, its policy and, while it runs, its handle."""

    cfg: ContainerConfig
    policy: ContainerPolicy
    container: Container | None = None
    cgroup: Cgroup | None = None
    pid_start: int | None = None  # start time of the init, to recognise it after a restart
    fingerprint: str = ""  # of cfg and its networks (model.config.fingerprint)
    launched_with: str | None = None  # the fingerprint the running container started with
    history: list[dict[str, Any]] = field(default_factory=list)  # last exits, newest last
    oom_kills: int = 0  # exits the kernel's OOM killer caused
    oom_baseline: int = 0  # the cgroup's OOM count when the current run started
    links: dict[str, bool] = field(default_factory=dict)  # container ifname -> up (networks)
    clearing: set[anyio.Event] = field(default_factory=set)  # cgroup kills in progress
    timer: anyio.CancelScope | None = None
    changed: anyio.Event | None = None  # made by the first waiter, set by the next change
    # Times it came to rest (STOPPED, EXITED, FATAL): a stop waits for one more, not for
    # the state, which a concurrent start may have changed again before it looks.
    rests: int = 0
    # Being removed or replaced by a reload: stopped for good, never started again - a
    # start in between would leave a container no unit owns, in a cgroup the
    # replacement is about to reuse.
    retiring: bool = False

    @property
    def name(self) -> str:
        return self.cfg.name

    def notify(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    async def wait_until(self, predicate: Callable[[Unit], bool], timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            while not predicate(self):
                if self.changed is None:
                    self.changed = anyio.Event()
                await self.changed.wait()
            return True
        return False


class Supervisor:
    """The daemon's supervision service. ``await run()`` inside a task group."""

    def __init__(self, config: Config, *, runtime: Runtime, reaper: Reaper,
                 cgroups: CgroupManager | None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.runtime = runtime
        self.reaper = reaper
        self.cgroups = cgroups
        self.clock = clock
        self.store = StateStore(config.supervisor.state_dir)
        os.makedirs(config.supervisor.log_dir, exist_ok=True)
        self.units: dict[str, Unit] = {}
        self.graph = DependencyGraph.from_containers(config.containers)
        self._tg: TaskGroup | None = None
        # Set at every state transition, then replaced: launches waiting for their
        # dependencies and starts waiting for a container to settle look again.
        self._transition = anyio.Event()
        self._reload_lock = anyio.Lock()
        self._launching = 0  # launches in flight or queued for a slot
        self._launch_slots = anyio.Semaphore(LAUNCH_SLOTS)
        self._trim_due = False  # give memory back once they are done (see _launched)
        self.shutting_down = False
        self.shutdown_requested = anyio.Event()
        self.leave_running = False  # the shutdown asked for leaves the containers be
        self.events = EventBus()
        self.exits = ExitWatcher[tuple[Unit, Container]](self._on_exit)
        self._exec_pids: set[int] = set()
        self.signals_forwarded = 0  # signals sent to containers (a metric)
        self.netlink_events: dict[str, int] = {}  # link event kind -> count (a metric)
        self.netlink_resyncs = 0  # full link dumps after a netlink buffer overflow
        self.network = NetworkManager(config.supervisor.state_dir, self._link_event)
        self.network.configure(config.networks, config.containers)  # ConfigError: port taken
        # Launch latencies not yet observed by a scrape; bounded, so a daemon nobody
        # scrapes does not grow (a scrape more than 4096 starts late loses the oldest).
        self.start_durations: list[float] = []

    # ------------------------------------------------------------------ lifecycle

    async def run(self, tg: TaskGroup) -> None:
        """Restore what survived the last daemon, then start what should run."""
        self._tg = tg
        await tg.start(self.exits.run)
        await tg.start(self.network.run, tg)
        for cfg in self.config.containers.values():
            self._restore(cfg)
        for name in self.store.names():
            if name not in self.config.containers:
                await self._discard_stale(name)
        for name in self._start_order(self.units):
            unit = self.units[name]
            if unit.policy.should_autostart():
                self._apply(unit, unit.policy.start(self.clock()))
        outdated = [name for name, unit in self.units.items()
                    if unit.container is not None
                    and unit.launched_with not in (None, unit.fingerprint)]
        if outdated:
            tg.start_soon(self._relaunch_outdated, outdated)
        self._trim_due = True
        log.info("supervising", containers=len(self.units))

    async def _relaunch_outdated(self, names: list[str]) -> None:
        """Re-adopted containers whose config changed while no daemon ran: applied as a
        reload would (stopped, then started again if they autostart)."""
        async with self._reload_lock:
            names = [n for n in names if n in self.units]
            for name in names:
                log.info("config changed while nsvisord was down", container=name,
                         hint="restarting it with the config as it is now")
            await self._apply_diff(self.config, [], names, [])

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop every container, dependents before their dependencies."""
        self.shutting_down = True
        await self.stop(list(self.units), save_manual=False, timeout=timeout)
        await self.network.close()
        for unit in self.units.values():
            await self._cleared(unit)  # a SIGKILL's cgroup kill may still be running
        await anyio.to_thread.run_sync(self._destroy_cgroups, list(self.units.values()))
        log.info("all stopped")

    async def leave(self) -> None:
        """Stop supervising and leave every container, network and cgroup as it is, for
        the next nsvisord on this state_dir to re-adopt: what a ``kill -9`` leaves, with
        a clean exit (an upgrade of nsvisord without touching the services).

        Launches under way finish first, so that their containers are saved and watched;
        those still waiting for a launch slot are left to the next nsvisord to start."""
        self.shutting_down = True
        with anyio.move_on_after(LEAVE_WAIT):
            while self._launching:
                await anyio.sleep(0.01)
        running = sorted(n for n, u in self.units.items() if u.container is not None)
        log.info("leaving containers running", count=len(running),
                 containers=running[:20], hint="the next nsvisord with this state_dir "
                 "re-adopts them; until then nothing restarts them or serves their ports")

    # ------------------------------------------------------------------ operations

    async def start(self, names: Iterable[str], wait: bool = True) -> dict[str, str | None]:
        """Start containers (and what they depend on); errors per name, None if ok."""
        names = list(names)
        # A caller that awaited since it resolved the names (restart) may find some gone.
        errors: dict[str, str | None] = {n: RELOADED for n in names
                                         if n not in self.units or self.units[n].retiring}
        wanted: list[str] = []
        for name in names:
            if name in errors:
                continue
            for dep in [*self.graph.dependencies_of(name), name]:
                # The graph catches up with a reload only once it is applied.
                if dep not in wanted and dep in self.units and not self.units[dep].retiring:
                    wanted.append(dep)
        units = {name: self.units[name] for name in wanted}
        for name, unit in units.items():
            errors[name] = unit.policy.start_error()
            self._apply(unit, unit.policy.start(self.clock()))
        if wait:
            # One deadline for all: a start of many waits as long as its slowest, not
            # as long as all of them one after the other.
            deadline = self.clock() + max((u.cfg.startsecs for u in units.values()),
                                          default=0) + 60
            for name in names:
                if name not in units:
                    continue
                unit = units[name]
                settled = await self._settled(unit, timeout=deadline - self.clock())
                if errors.get(name) is not None or unit.policy.state is State.RUNNING:
                    continue
                if self.units.get(name) is not unit:
                    errors[name] = RELOADED
                elif settled and self._waiting_for(unit):  # a dependency will not run
                    errors[name] = self._waiting_for(unit)
                elif unit.policy.state is State.STOPPED:  # only a stop leads there
                    errors[name] = "stopped by a stop request before it was running"
                else:
                    errors[name] = f"spawn error ({unit.policy.state.name.lower()}: " \
                                   f"{unit.policy.last_exit_reason or 'did not start'})"
        return {name: errors.get(name) for name in names}

    async def restart(self, names: Iterable[str], wait: bool = True) -> dict[str, str | None]:
        """Stop, then start ``names``. The stop takes down what depends on them first;
        those of them that were running come back too, after them, and are answered
        for: a restart of db leaves the app on it running, as it found it."""
        names = list(names)
        dependents = [d for n in names for d in self.graph.dependents_of(n)]
        taken_down = [d for d in dict.fromkeys(dependents) if d not in names
                      and d in self.units
                      and self.units[d].policy.state not in NOT_RUNNING_STATES]
        await self.stop(names)
        errors = await self.start([*names, *taken_down], wait=wait)
        return {n: e if e != "already started" else None for n, e in errors.items()}

    async def _settled(self, unit: Unit, timeout: float) -> bool:
        """Wait until ``unit`` is neither STARTING nor STOPPING, or waits for a
        dependency that stopped or failed; False after ``timeout``."""
        with anyio.move_on_after(timeout):
            while unit.policy.state in (State.STARTING, State.STOPPING):
                if self.units.get(unit.name) is not unit:  # replaced or removed
                    return True
                if any(self.units[d].policy.state in NOT_RUNNING_STATES
                       for d in self._held_by(unit)):
                    return True
                await self._transition.wait()
            return True
        return False

    async def stop(self, names: Iterable[str], *, save_manual: bool = True,
                   timeout: float | None = None) -> dict[str, str | None]:
        """Stop containers and, first, whatever depends on them, in dependency waves."""
        names = list(names)
        targets: list[str] = []
        for name in names:
            for dep in [*self.graph.dependents_of(name), name]:
                if dep not in targets and dep in self.units:
                    targets.append(dep)
        errors = {name: self.units[name].policy.stop_error() if name in self.units
                  else RELOADED for name in names}
        for wave in self.graph.stop_waves(targets):
            units = [self.units[n] for n in wave if n in self.units]
            manual = {u.name: u.policy.manually_stopped for u in units}
            rests = {u.name: u.rests for u in units}
            for unit in units:
                self._apply(unit, unit.policy.stop(self.clock()))
                if not save_manual:
                    unit.policy.manually_stopped = manual[unit.name]
            async with anyio.create_task_group() as tg:
                for unit in units:
                    limit = timeout if timeout is not None else unit.cfg.stop_timeout + 10
                    tg.start_soon(unit.wait_until,
                                  lambda u, before=rests[unit.name]: (
                                      u.rests > before or u.policy.state in NOT_RUNNING_STATES),
                                  limit)
            for unit in units:
                self._save(unit)
        return errors

    async def reload(self) -> None:
        """Reread the config; apply only the difference. A bad file changes nothing."""
        async with self._reload_lock:
            await self._reload()

    async def _reload(self) -> None:
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config.source)
        except (OSError, ValueError) as e:
            log.error("reload rejected", error=str(e))
            self.events.publish("reload", ok=False, error=str(e))
            return
        diff = diff_configs(self._active_config(), new)
        self._trim_due = True
        try:
            await self._apply_diff(new, diff.added, diff.changed, diff.removed)
        except ConfigError as e:  # a port to publish is taken: checked before any change
            log.error("reload rejected", error=str(e.with_source(new.source)))
            self.events.publish("reload", ok=False, error=str(e.with_source(new.source)))
            return
        log.info("reload", added=diff.added, changed=diff.changed, removed=diff.removed)
        self.events.publish("reload", ok=True, added=diff.added, changed=diff.changed,
                            removed=diff.removed)

    async def signal(self, names: Iterable[str], sig: int) -> dict[str, str | None]:
        """Send ``sig`` to each container's init, which forwards it to the workload."""
        errors: dict[str, str | None] = {}
        for name in names:
            unit = self.units[name]
            if unit.container is None or unit.policy.state not in SIGNALLABLE_STATES:
                errors[name] = "not running"
                continue
            self._kill(unit, sig)
            errors[name] = None
        return errors

    def resolve(self, specs: Iterable[str], pool: Iterable[str] | None = None) -> list[str]:
        """``NAME``, ``GROUP:*`` or ``all`` to names, in config order; KeyError naming
        the unknown ones."""
        known = list(self.units if pool is None else pool)
        out: list[str] = []
        unknown: list[str] = []
        for spec in specs:
            if spec == "all":
                matched = known
            elif spec.endswith(":*") or spec.endswith(":"):
                group = spec.rsplit(":", 1)[0]
                matched = [n for n in known if self._group_of(n) == group]
            else:
                matched = [spec] if spec in known else []
            if not matched:
                unknown.append(spec)
            out.extend(n for n in matched if n not in out)
        if unknown:
            raise KeyError(", ".join(unknown))
        return out

    def _group_of(self, name: str) -> str:
        cfg = self.units[name].cfg if name in self.units else self.config.containers[name]
        return cfg.group or name

    async def reread(self) -> dict[str, list[str]]:
        """What the config file would change, applied to nothing (ValueError if bad)."""
        new = await anyio.to_thread.run_sync(load_config, self.config.source)
        self._pending = new
        diff = diff_configs(self._active_config(), new)
        return {"added": diff.added, "changed": diff.changed, "removed": diff.removed,
                "restart_needed": diff.supervisor_changed}

    async def update(self, names: Iterable[str] = ()) -> dict[str, list[str]]:
        """Apply the config file's difference (all of it, or for ``names`` only)."""
        async with self._reload_lock:
            new = await anyio.to_thread.run_sync(load_config, self.config.source)
            diff = diff_configs(self._active_config(), new)
            only = set(names)
            pick = (lambda ns: [n for n in ns if n in only]) if only else list
            await self._apply_diff(new, pick(diff.added), pick(diff.changed),
                                   pick(diff.removed))
            return {"added": pick(diff.added), "changed": pick(diff.changed),
                    "removed": pick(diff.removed), "restart_needed": diff.supervisor_changed}

    async def add(self, names: Iterable[str]) -> dict[str, str | None]:
        """Activate containers the config file has and the daemon does not run yet."""
        new = await anyio.to_thread.run_sync(load_config, self.config.source)
        errors: dict[str, str | None] = {}
        for name in names:
            if name in self.units:
                errors[name] = "already active"
            elif name not in new.containers:
                errors[name] = "not in the config file (reread first?)"
            else:
                await self._apply_diff(new, [name], [], [])
                errors[name] = None
        return errors

    async def remove(self, names: Iterable[str]) -> dict[str, str | None]:
        """Deactivate stopped containers (they stay in the file: see ``avail``)."""
        errors: dict[str, str | None] = {}
        for name in names:
            unit = self.units.get(name)
            if unit is None:  # a reload, while an earlier name was being removed
                errors[name] = RELOADED
                continue
            if unit.policy.state not in NOT_RUNNING_STATES:
                errors[name] = "still running (stop it first)"
                continue
            await self._forget(name)
            errors[name] = None
        self.graph = DependencyGraph.from_containers(self._active_containers())
        return errors

    async def avail(self) -> list[dict[str, Any]]:
        new = await anyio.to_thread.run_sync(load_config, self.config.source)
        names = list(new.containers) + [n for n in self.units if n not in new.containers]
        out = []
        for name in names:
            cfg = new.containers.get(name) or self.units[name].cfg
            out.append({"name": name, "in_use": name in self.units, "autostart": cfg.autostart,
                        "priority": cfg.priority, "group": cfg.group or name})
        return out

    async def restart_all(self) -> None:
        """supervisorctl's ``reload``: stop everything, reread, start what autostarts."""
        async with self._reload_lock:
            # Read first: a bad file must leave every container as it was.
            new = await anyio.to_thread.run_sync(load_config, self.config.source)
            old = self._active_config()
            self._retire(list(self.units))
            await self.stop(list(self.units), save_manual=False)
            for name in list(self.units):
                await self._forget(name, keep_ids=True)
            try:
                await self._apply_diff(new, list(new.containers), [], [])
            except ConfigError:  # a port it publishes is taken: what ran before runs again
                await self._apply_diff(old, list(old.containers), [], [])
                raise

    def status(self, name: str) -> dict[str, Any]:
        unit = self.units[name]
        policy, container = unit.policy, unit.container
        now_mono, now = self.clock(), time.time()
        uptime = None
        if policy.state is State.RUNNING and policy.running_since is not None:
            uptime = max(0.0, now_mono - policy.running_since)
        return {
            "name": name, "group": unit.cfg.group or name, "state": policy.state.name,
            "pid": container.pid if container else None, "restarts": policy.restarts,
            "exit_code": policy.last_exit_code, "uptime_seconds": uptime,
            "description": self._waiting_for(unit) or _description(policy, container, uptime,
                                                                   now_mono, now),
            "last_exit_reason": policy.last_exit_reason,
            "started_at": container.started_at if container else None,
        }

    def _active_config(self) -> Config:
        """What runs: the settings nsvisord started with, the networks and containers it
        applied last."""
        return Config(self.config.supervisor, self._active_containers(), self.config.source,
                      self.config.networks)

    def _active_containers(self) -> dict[str, ContainerConfig]:
        return {name: unit.cfg for name, unit in self.units.items()}

    async def _apply_diff(self, new: Config, added: list[str], changed: list[str],
                          removed: list[str]) -> None:
        containers = self._active_containers()
        for name in removed:
            containers.pop(name, None)
        for name in [*changed, *added]:
            containers[name] = new.containers[name]
        # Ports and addresses first: a port that cannot be bound rejects the whole change.
        self.network.configure(new.networks, containers)
        gone = [*removed, *changed]
        self._retire(gone)
        await self.stop([n for n in gone if n in self.units])
        for name in gone:
            await self._forget(name, keep_ids=name in changed)
        pending = supervisor_changes(self.config.supervisor, new.supervisor)
        if pending:
            log.warning("settings need a restart", keys=pending,
                        hint="restart nsvisord to apply them; its containers keep "
                             "running across the restart")
        # [supervisor] applies at start only: the socket, state_dir and log_dir in use stay.
        self.config = replace(new, supervisor=self.config.supervisor)
        containers = self._active_containers()
        for name in [*changed, *added]:
            containers[name] = new.containers[name]
        self.graph = DependencyGraph.from_containers(
            {n: c for n, c in containers.items() if all(d in containers for d in c.depends_on)})
        for name in [*changed, *added]:
            self.units[name] = self._new_unit(new.containers[name])
        for name in self._start_order([*changed, *added]):
            unit = self.units[name]
            if unit.policy.should_autostart():
                self._apply(unit, unit.policy.start(self.clock()))

    # ------------------------------------------------------------------ actions

    def _apply(self, unit: Unit, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                if not self.shutting_down:
                    self._task(self._spawn, unit)
            elif isinstance(action, Kill):
                self._kill(unit, action.signal)
            elif isinstance(action, WakeAt):
                self._arm(unit, action.when)
        for old, new in unit.policy.last_transitions:
            if new in NOT_RUNNING_STATES:
                unit.rests += 1
            log.info("state", container=unit.name, old=old.name, new=new.name,
                     restarts=unit.policy.restarts, exit_code=unit.policy.last_exit_code)
            self.events.publish("state", container=unit.name, old=old.name, new=new.name,
                                restarts=unit.policy.restarts,
                                exit_code=unit.policy.last_exit_code)
        if unit.policy.last_transitions:
            self._transition.set()
            self._transition = anyio.Event()
        unit.policy.last_transitions = []
        self._save(unit)
        unit.notify()

    def _task(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._tg is not None
        self._tg.start_soon(_contained, fn, *args, name=getattr(fn, "__name__", None))

    async def _spawn(self, unit: Unit) -> None:
        # A container starts only once everything it depends on is RUNNING; stopped
        # meanwhile, it is not launched at all.
        while unit.policy.spawn_pending and not self._dependencies_running(unit):
            if unit.policy.state is State.STOPPING:
                self._apply(unit, unit.policy.spawn_cancelled(self.clock()))
                return
            await self._transition.wait()
        if unit.retiring or self.units.get(unit.name) is not unit:
            self._drop_spawn(unit)
            return
        if not unit.policy.spawn_pending:
            return
        started = time.perf_counter()
        self._launching += 1
        try:
            async with self._launch_slots:
                if unit.retiring or self.units.get(unit.name) is not unit:  # a reload
                    self._drop_spawn(unit)
                    return
                if self.leave_running:  # handed over as it is: the next nsvisord starts it
                    return
                container, cgroup = await self._launch(unit)
        except (LaunchError, SpecError, CgroupError, OSError) as e:
            log.warning("spawn failed", container=unit.name, error=str(e))
            self._apply(unit, unit.policy.spawn_failed(self.clock(), str(e)))
            return
        except Exception as e:  # a bug of ours: this start fails, supervision goes on
            log.exception("spawn failed: internal error", container=unit.name)
            self._apply(unit, unit.policy.spawn_failed(self.clock(),
                                                       f"internal error: {e!r}"))
            return
        finally:
            self._launched()
        unit.container, unit.cgroup = container, cgroup
        unit.launched_with = unit.fingerprint
        unit.links = {link.ifname: True for link in self.network.running.get(unit.name,
                                                                              (0, []))[1]}
        self.start_durations.append(time.perf_counter() - started)
        del self.start_durations[:-START_DURATIONS_KEPT]
        unit.pid_start = process_start_time(container.pid)
        log.info("spawned", container=unit.name, pid=container.pid)
        self.events.publish("spawned", container=unit.name, pid=container.pid)
        self._apply(unit, unit.policy.spawned(self.clock()))
        self._watch(unit, container)

    def _retire(self, names: Iterable[str]) -> None:
        """Mark units a reload is about to stop and drop (see ``Unit.retiring``)."""
        for name in names:
            if name in self.units:
                self.units[name].retiring = True

    def _drop_spawn(self, unit: Unit) -> None:
        """A unit a reload replaced or removed will not be launched: settle its policy
        (STOPPED), so that whoever waits on it - a stop, a start - hears it at once."""
        now = self.clock()
        if unit.policy.spawn_pending:
            self._apply(unit, unit.policy.stop(now))
            self._apply(unit, unit.policy.spawn_cancelled(now))

    def _launched(self) -> None:
        """A launch ended. After a wave of them (start-up, a reload), the C heap holds
        megabytes of freed garbage (config parsing, launch buffers) that glibc would keep
        for good: hand it back once the wave is over."""
        self._launching -= 1
        if self._launching == 0 and self._trim_due:
            self._trim_due = False
            libc.malloc_trim()

    async def _launch(self, unit: Unit) -> tuple[Container, Cgroup | None]:
        """cgroup, runtime start, networks. On the event loop: the runtime's steps are
        short syscalls between waits; only netlink (networks) goes to a worker thread."""
        cfg = unit.cfg
        # A kill of the cgroup still in progress would take the new container with it,
        # and the fork server too, which steps into the cgroup for the clone.
        await self._cleared(unit)
        extra: dict[str, Any] = {}
        cgroup = await self._cgroup_for(unit)
        if cgroup is not None:
            extra["cgroup_procs"] = tuple(cgroup.procs_files())
        # The init captures stdout and stderr into rotated files itself, so nothing is
        # lost and nothing blocks while the daemon is down or restarting.
        extra["log"] = LogSpec(self.config.supervisor.log_dir, max_bytes=cfg.log.max_bytes,
                               backups=cfg.log.backups, merge=cfg.log.merge)
        # With networks, the init waits before exec while its links are made (lo alone
        # the runtime brings up itself).
        hold = bool(cfg.networks)
        extra["hold"] = hold
        extra["extra_hosts"] = self.network.extra_hosts(cfg.name)
        container = None
        try:
            container = await _run_steps(self.runtime.launch(
                spec_from_config(cfg, **extra), exit_file=self.store.exit_file(cfg.name)),
                LAUNCH_TIMEOUT, cfg.name)
            if hold:
                await anyio.to_thread.run_sync(self.network.wire, cfg, container.pid)
                await _run_steps(container.go_steps(), LAUNCH_TIMEOUT, cfg.name)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon(unit, container, cgroup)
            raise
        return container, cgroup

    async def _cgroup_for(self, unit: Unit) -> Cgroup | None:
        """The container's cgroup, made (or emptied) for a new run."""
        cfg = unit.cfg
        limits = Limits(memory_bytes=cfg.limits.memory, cpus=cfg.limits.cpus,
                        pids=cfg.limits.pids)
        if self.cgroups is None:
            if limits != Limits():
                raise CgroupError(f"{cfg.name}: limits need cgroups, and this host has none "
                                  "usable (see the daemon's start-up warning)")
            return None
        # The cgroup of the previous run is reused (it is empty: its processes died with
        # the init); anything else by that name is a leftover and dies here.
        cgroup = unit.cgroup
        if cgroup is not None and not cgroup.pids():
            unit.oom_baseline = cgroup.oom_kills() or 0
            return cgroup
        if cgroup is not None:  # killing what is in it can take seconds: not on the loop
            await anyio.to_thread.run_sync(self._destroy_cgroup, cgroup)
        try:
            cgroup = self.cgroups.create(cfg.name, limits)
        except CgroupError as e:
            if e.errno != errno.EEXIST:
                raise
            stale = self.cgroups.open(cfg.name)  # a leftover: a crash, a removed daemon
            if stale is not None:
                await anyio.to_thread.run_sync(self._destroy_cgroup, stale)
            cgroup = self.cgroups.create(cfg.name, limits)
        unit.cgroup = cgroup
        unit.oom_baseline = 0  # a new cgroup
        return cgroup

    async def _abandon(self, unit: Unit, container: Container | None,
                       cgroup: Cgroup | None) -> None:
        """A failed launch: nothing of it stays (the runtime cleaned up its own part)."""
        if container is not None:
            if container.poll() is None:
                container.kill()
                with anyio.move_on_after(10):
                    while container.poll() is None:
                        await _readable_or_sleep(container.pidfd)
            container.close()
        await anyio.to_thread.run_sync(self.network.unwire, unit.cfg.name)
        if cgroup is not None:
            unit.cgroup = None
            await anyio.to_thread.run_sync(self._destroy_cgroup, cgroup)

    def _watch(self, unit: Unit, container: Container) -> None:
        """Hear of the container's exit (:meth:`_exited`)."""
        assert container.pidfd is not None
        self.exits.watch(container.pidfd, (unit, container))

    def _on_exit(self, item: tuple[Unit, Container]) -> None:
        self._task(self._exited, *item)

    async def _exited(self, unit: Unit, container: Container) -> None:
        """The container's pidfd turned readable: collect its status and report it."""
        status = container.poll()
        with anyio.move_on_after(EXIT_STATUS_TIMEOUT):
            while status is None:  # exited, not yet reapable: SIGCHLD is on its way
                await anyio.sleep(0.001)
                status = container.poll()
        if status is None:
            log.warning("exit status lost", container=unit.name, pid=container.pid)
            status = ExitStatus(255)
        oom = unit.cgroup is not None and unit.cgroup.oom_killed_since(unit.oom_baseline)
        reason = OOM_KILLED if oom else status.describe()
        if oom:
            unit.oom_kills += 1
        await self._cleanup(unit, container)
        log.info("exited", container=unit.name, pid=container.pid, status=reason)
        self._record_exit(unit, status, container.pid, reason)
        self._apply(unit, unit.policy.exited(self.clock(), status.exit_code, reason))

    async def _cleanup(self, unit: Unit, container: Container) -> None:
        container.close()
        unit.links = {}
        if unit.name in self.network.running:  # netlink: a worker thread
            await anyio.to_thread.run_sync(self.network.unwire, unit.name)
        if unit.container is container:
            unit.container = None
            unit.pid_start = None
        if unit.cgroup is not None and "pid" not in unit.cfg.namespaces:
            # Kept for the next run. With a PID namespace everything in it died with the
            # init; without one, whatever left the workload's session is killed now.
            await anyio.to_thread.run_sync(unit.cgroup.kill_all)

    def _kill(self, unit: Unit, sig: int) -> None:
        container = unit.container
        if container is None:
            return
        log.info("signal", container=unit.name, signal=signal.Signals(sig).name)
        self.signals_forwarded += 1
        if sig == signal.SIGKILL:
            container.kill()
            if unit.cgroup is not None:  # what escaped the init's session or namespace
                self._task(self._clear_cgroup, unit, unit.cgroup)
        else:
            with contextlib.suppress(ProcessLookupError):
                container.signal(sig)

    async def _clear_cgroup(self, unit: Unit, cgroup: Cgroup) -> None:
        """Kill whatever is left in the cgroup, until it is empty. The next launch into
        it and its removal wait for this (:meth:`_cleared`)."""
        done = anyio.Event()
        unit.clearing.add(done)
        try:
            await anyio.to_thread.run_sync(cgroup.kill_all)
        except CgroupError as e:  # a task of ours: it must not take the daemon down
            log.warning("cgroup kill failed", container=unit.name, error=str(e))
        finally:
            unit.clearing.discard(done)
            done.set()

    @staticmethod
    async def _cleared(unit: Unit) -> None:
        """Wait for the unit's cgroup kills in progress (:meth:`_clear_cgroup`)."""
        for clearing in list(unit.clearing):
            await clearing.wait()

    def _arm(self, unit: Unit, when: float) -> None:
        if unit.timer is not None:
            unit.timer.cancel()
        scope = anyio.CancelScope()
        unit.timer = scope
        self._task(self._timer, unit, scope, when)

    async def _timer(self, unit: Unit, scope: anyio.CancelScope, when: float) -> None:
        with scope:
            await anyio.sleep(max(0.0, when - self.clock()))
            unit.timer = None
            self._apply(unit, unit.policy.tick(self.clock()))

    # ------------------------------------------------------------------ live restore

    def _new_unit(self, cfg: ContainerConfig) -> Unit:
        # A unit's config never changes: a reload that changes it makes a new unit.
        return Unit(cfg, ContainerPolicy.from_config(cfg),
                    fingerprint=fingerprint(cfg, self.config.networks))

    def _restore(self, cfg: ContainerConfig) -> None:
        """Re-adopt the container a previous daemon left running, or learn how it ended."""
        unit = self._new_unit(cfg)
        self.units[cfg.name] = unit
        data = self.store.load(cfg.name)
        if not data:
            return
        unit.history = list(data.get("history") or [])[-HISTORY:]
        unit.oom_kills = int(data.get("oom_kills") or 0)
        try:
            unit.policy = ContainerPolicy.from_dict(data["policy"],
                                                    PolicySettings.from_config(cfg))
        except (KeyError, ValueError, TypeError) as e:
            log.warning("state unreadable; starting afresh", container=cfg.name, error=str(e))
            return
        pid, pid_start = data.get("pid"), data.get("pid_start")
        now = self.clock()
        if pid and saved_before_a_reboot(data):
            log.info("state saved before a reboot: not re-adopted", container=cfg.name,
                     pid=pid)
        if init_left_running(data):
            try:
                unit.container = Container(spec_from_config(cfg), pid, reaper=self.reaper,
                                           exit_file=self.store.exit_file(cfg.name))
            except ProcessLookupError:
                unit.container = None
        if unit.container is not None:
            unit.pid_start = pid_start
            unit.launched_with = data.get("config")
            self._claim_ids(cfg.name, pid)
            if self.cgroups is not None:
                unit.cgroup = self.cgroups.open(cfg.name)
            if cfg.networks:
                unit.links = {link.ifname: True
                              for link in self.network.adopt(cfg, pid)}
            log.info("re-adopted", container=cfg.name, pid=pid,
                     state=unit.policy.state.name, restarts=unit.policy.restarts)
            self._watch(unit, unit.container)
            if unit.policy.wake_at is not None:
                self._arm(unit, unit.policy.wake_at)
            return
        actions: list[Any] = []
        try:
            if unit.policy.spawn_pending:
                actions = unit.policy.spawn_failed(now, "nsvisord died while starting it")
            elif unit.policy.process_alive:
                status = read_exit_file(self.store.exit_file(cfg.name)) or ExitStatus(255)
                log.info("exited while nsvisord was down", container=cfg.name, pid=pid,
                         status=status.describe())
                self._record_exit(unit, status, pid)
                actions = unit.policy.exited(now, status.exit_code, status.describe())
        except Exception as e:  # noqa: BLE001 - a snapshot we cannot follow is not trusted
            log.warning("state inconsistent; starting afresh", container=cfg.name,
                        error=repr(e))
            unit.policy, actions = ContainerPolicy.from_config(cfg), []
        if self.cgroups is not None:
            self._remove_cgroup(cfg.name)
        self._apply(unit, actions)
        if unit.policy.wake_at is not None and not any(isinstance(a, WakeAt) for a in actions):
            self._arm(unit, unit.policy.wake_at)

    async def _discard_stale(self, name: str) -> None:
        """A container the config no longer has, left running by a previous daemon."""
        data = self.store.load(name) or {}
        pid = init_left_running(data)
        if pid:
            log.info("stopping container removed from the config", container=name, pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.cgroups is not None:
            await anyio.to_thread.run_sync(self._remove_cgroup, name)
        self.store.remove(name)

    async def _forget(self, name: str, *, keep_ids: bool = False) -> None:
        """Drop a unit. A container that is only being replaced keeps its user-namespace
        id range, so the files it wrote stay its own."""
        unit = self.units.pop(name, None)
        if unit is not None:
            unit.retiring = True
            if unit.timer is not None:
                unit.timer.cancel()
            await self._cleared(unit)
            await anyio.to_thread.run_sync(self._destroy_cgroups, [unit])
        self.store.remove(name)
        if not keep_ids:
            self.runtime.ids.release(name)
            self.network.forget(name)

    def _save(self, unit: Unit) -> None:
        if self.units.get(unit.name) is not unit:
            return
        container = unit.container
        self.store.save(unit.name, {
            "policy": unit.policy.to_dict(),
            "pid": container.pid if container else None,
            "pid_start": unit.pid_start if container else None,
            "boot_id": boot_id(),
            "config": unit.launched_with if container else None,
            "history": unit.history,
            "oom_kills": unit.oom_kills,
        })

    def _record_exit(self, unit: Unit, status: ExitStatus, pid: int | None,
                     reason: str | None = None) -> None:
        at = status.finished_at or time.time()
        reason = reason or status.describe()
        unit.history = [*unit.history, {"exit_code": status.exit_code, "reason": reason,
                                        "at": at}][-HISTORY:]
        self.events.publish("exited", container=unit.name, pid=pid,
                            exit_code=status.exit_code, reason=reason)

    def _claim_ids(self, name: str, pid: int) -> None:
        """A re-adopted container keeps its user-namespace id range: no other container
        may be given it."""
        try:
            with open(f"/proc/{pid}/uid_map") as f:
                first = f.readline().split()
            self.runtime.ids.claim(name, int(first[1]))
        except (OSError, IndexError, ValueError) as e:
            log.warning("id range of a re-adopted container unknown", container=name,
                        error=str(e))

    def _link_event(self, kind: str, **fields: Any) -> None:
        """A netlink event about one of our links (from the network manager)."""
        self.netlink_events[kind] = self.netlink_events.get(kind, 0) + 1
        if kind == "resync":
            self.netlink_resyncs += 1
        unit = self.units.get(fields.get("container", ""))
        if unit is not None and kind in ("link_down", "link_deleted", "repaired"):
            for ifname in unit.links:
                unit.links[ifname] = kind == "repaired"
        (log.info if kind == "repaired" else log.warning)("link", kind=kind, **fields)
        self.events.publish("link", kind=kind, **fields)

    # ------------------------------------------------------------------ helpers

    def owned_pids(self) -> set[int]:
        """Children someone waits for: container inits and running execs."""
        pids = {u.container.pid for u in self.units.values() if u.container is not None}
        return pids | self._exec_pids

    def log_path(self, name: str, stream: str) -> str:
        unit = self.units[name]
        suffix = "out" if stream == "stdout" or unit.cfg.log.merge else "err"
        return os.path.join(self.config.supervisor.log_dir, f"{name}.{suffix}.log")

    def spawn_task(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the daemon's task group (e.g. a stop nobody waits for)."""
        self._task(fn, *args)

    async def exec(self, name: str, command: list[str], env: dict[str, str],
                   stdio: tuple[int, int, int], tty: bool) -> int:
        """Run ``command`` inside the running container ``name``; its exit code."""
        from ..runtime.enter import spawn_enter  # only the exec path needs it

        unit = self.units[name]
        if unit.container is None or unit.policy.state not in SIGNALLABLE_STATES:
            raise ExecRefused(f"{name} is not running ({unit.policy.state.name})")
        spec = spec_from_config(unit.cfg)
        request = {
            "pid": unit.container.pid, "namespaces": list(spec.namespaces),
            "command": command, "env": {**spec.env, **env}, "uid": spec.uid, "gid": spec.gid,
            "groups": list(spec.groups), "capabilities": list(spec.capabilities),
            "no_new_privs": spec.no_new_privs, "workdir": spec.workdir, "tty": tty,
        }
        pid = await anyio.to_thread.run_sync(spawn_enter, request, stdio, tty)
        self._exec_pids.add(pid)
        log.info("exec", container=name, pid=pid, command=command[0])
        try:
            pidfd = os.pidfd_open(pid)
            try:
                raw = self.reaper.collect(pid)
                while raw is None:
                    await anyio.wait_readable(pidfd)
                    raw = self.reaper.collect(pid)
            finally:
                os.close(pidfd)
        finally:
            self._exec_pids.discard(pid)
        return ExitStatus.from_wait_status(raw).exit_code

    def _held_by(self, unit: Unit) -> list[str]:
        """The dependencies, not RUNNING, that a pending launch of ``unit`` waits for."""
        if unit.container is not None or not unit.policy.spawn_pending:
            return []
        return [d for d in unit.cfg.depends_on
                if d in self.units and self.units[d].policy.state is not State.RUNNING]

    def _waiting_for(self, unit: Unit) -> str:
        """``waiting for db (FATAL)``: a start held back by dependencies not RUNNING."""
        held = [f"{d} ({self.units[d].policy.state.name})" for d in self._held_by(unit)]
        return "waiting for " + ", ".join(held) if held else ""

    def _dependencies_running(self, unit: Unit) -> bool:
        return all(self.units[d].policy.state is State.RUNNING
                   for d in unit.cfg.depends_on if d in self.units)

    def _start_order(self, names: Iterable[str]) -> list[str]:
        return self.graph.start_order(list(names))

    def _remove_cgroup(self, name: str) -> None:
        assert self.cgroups is not None
        cgroup = self.cgroups.open(name)
        if cgroup is not None:
            self._destroy_cgroup(cgroup)

    def _destroy_cgroups(self, units: list[Unit]) -> None:
        for unit in units:
            if unit.cgroup is not None and unit.container is None:
                cgroup, unit.cgroup = unit.cgroup, None
                self._destroy_cgroup(cgroup)

    @staticmethod
    def _destroy_cgroup(cgroup: Cgroup) -> None:
        # Never raises: a cleanup that fails must not abort the reload or stop around it.
        try:
            cgroup.kill_all()
            cgroup.destroy()
        except (CgroupError, OSError) as e:
            log.warning("cgroup cleanup failed", cgroup=cgroup.name, error=str(e))


async def _contained(fn: Callable[..., Any], *args: Any) -> None:
    """Run a background task of the supervisor; an exception it did not expect (a bug)
    is logged with its traceback instead of ending the task group, and with it the
    supervision of every container."""
    try:
        await fn(*args)
    except Exception:
        log.exception("internal error", task=getattr(fn, "__name__", repr(fn)))


async def _run_steps(steps: Steps[T], timeout: float, name: str) -> T:
    """Drive a runtime launch (:meth:`Runtime.launch`) on the event loop. A timeout or a
    cancellation is thrown into the steps, which clean up and raise it."""
    try:
        sock = next(steps)
        with anyio.move_on_after(timeout):
            while True:
                try:
                    await anyio.wait_readable(sock.fileno())
                except BaseException as error:  # cancelled (or timed out) while waiting
                    steps.throw(error)
                    raise
                sock = steps.send(None)
        # The timeout: the steps have cleaned up already; tell the caller what happened.
        steps.throw(LaunchError(f"{name}: no answer from the launcher in {timeout}s",
                                step="timeout"))
        raise AssertionError("unreachable: a finished generator raises what is thrown in")
    except StopIteration as done:
        return done.value


async def _readable_or_sleep(fd: int | None) -> None:
    if fd is None:
        await anyio.sleep(0.01)
    else:
        await anyio.wait_readable(fd)
        await anyio.sleep(0.001)  # readable before reaped: SIGCHLD is on its way


def _description(policy: ContainerPolicy, container: Container | None, uptime: float | None,
                 now_mono: float, now: float) -> str:
    """supervisorctl's status description: ``pid 123, uptime 0:00:14`` and friends."""
    if policy.state is State.RUNNING and container is not None:
        seconds = int(uptime or 0)
        return f"pid {container.pid}, uptime {seconds // 3600}:{seconds // 60 % 60:02d}:" \
               f"{seconds % 60:02d}"
    if policy.state in (State.STARTING, State.STOPPING) and container is not None:
        return f"pid {container.pid}"
    if policy.state is State.BACKOFF and policy.next_start_at is not None:
        return f"{policy.last_exit_reason or 'exited'}; retry in " \
               f"{max(0.0, policy.next_start_at - now_mono):.1f}s"
    if policy.state is State.FATAL:
        return f"Exited too quickly ({policy.last_exit_reason or 'spawn error'})"
    if policy.last_exit_at is not None:
        at = time.strftime("%Y-%m-%d %H:%M:%S",
                           time.localtime(now - (now_mono - policy.last_exit_at)))
        return f"{policy.last_exit_reason or 'exited'} at {at}"
    return "Not started"
