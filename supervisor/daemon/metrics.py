"""Prometheus metrics of nsvisord: ``GET /metrics`` on ``[supervisor].metrics_listen``.

One custom collector over the supervisor (``SupervisorCollector``) builds fresh metric
families at every scrape, so a removed container's series simply stop being reported
(no stale label sets to remove, and no explicit timestamps: Prometheus marks the series
stale on the next scrape). Families:

- resource usage under cAdvisor's names and label ``name`` (the container's name), so
  existing cAdvisor dashboards and PromQL work: ``container_cpu_*``, ``container_memory_*``,
  ``container_spec_memory_limit_bytes``, ``container_processes``,
  ``container_oom_events_total``, ``container_network_*_total{interface}``,
  ``container_start_time_seconds``;
- supervision state, prefixed ``nsvisor_container_``: ``state`` (one series per state, 1
  for the current one), ``restarts_total``, ``last_exit_code``,
  ``last_terminated_reason{reason}``, ``info{rootfs,restart_policy,group}`` and the
  ``start_duration_seconds`` histogram;
- the daemon: ``nsvisor_link_up``, ``nsvisor_netlink_events_total``,
  ``nsvisor_netlink_resyncs_total``, ``nsvisor_reaped_total``,
  ``nsvisor_signals_forwarded_total``, ``nsvisor_log_lines_dropped_total`` (the daemon's
  own log lines it could not write), ``nsvisor_scrape_duration_seconds``, and the client
  library's ``process_*`` / ``python_*`` collectors.

A scrape is two steps. On the event loop, :meth:`SupervisorCollector.snapshot` copies
what it needs from the units (no I/O, a few microseconds per unit), so every series of
one scrape describes the same moment of supervision. In a worker thread, the cgroup files
and ``/proc/<pid>/net/dev`` of that snapshot are read and the text is serialised, so a
slow read never blocks the loop. Scrapes have their own thread limiter and never take
the worker threads container launches need.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import SocketStream
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..linux.cgroups import Cgroup, CgroupError, CgroupStats
from ..linux.netstats import LinkCounters, link_stats
from ..model.states import State
from ..model.units import ConfigError
from . import logs
from .http import HTTPError, read_request, response

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = structlog.get_logger("nsvisord")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""What ``generate_latest`` writes, and what prometheus-client's own handler answers a
scraper that does not negotiate a newer format with."""

START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Launch latency buckets (seconds): a start is ~5-50 ms on an idle machine."""

REQUEST_TIMEOUT = 10.0  # a client gets this long to send its request head
SCRAPE_THREADS = 2  # concurrent scrapes reading files; more wait their turn
OOM_KILLED = "OOMKilled"
REASONS = ("Completed", "Error", "Signaled", OOM_KILLED)
NETLINK_EVENTS = ("bridge_deleted", "link_deleted", "link_down", "repaired", "resync")
"""What the network manager reports (``Supervisor._link_event``), exported from 0 on so a
first event is an increase rather than a new series."""


def terminated_reason(exit_code: int | None, reason: str | None) -> str:
    """kube-state-metrics' last terminated reason of an exit the supervisor recorded.

    ``OOMKilled`` when the kernel's OOM killer ended it, ``Signaled`` when a signal did
    (the runtime describes it as ``killed by SIGTERM``), ``Completed`` for exit status 0,
    ``Error`` for anything else (a non-zero status or a failed launch).
    """
    if reason == OOM_KILLED:
        return OOM_KILLED
    if reason is not None and reason.startswith("killed by"):
        return "Signaled"
    if exit_code == 0:
        return "Completed"
    return "Error"


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True, slots=True)
class UnitView:
    """What a scrape needs of one unit, copied on the event loop."""

    name: str
    state: str
    restarts: int
    last_exit_code: int | None
    last_exit_reason: str | None
    rootfs: str
    restart_policy: str
    group: str
    pid: int | None  # host pid of the container's init while it has one
    started_at: float | None
    own_netns: bool
    cgroup: Cgroup | None
    oom_kills: int
    links: tuple[tuple[str, bool], ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    units: tuple[UnitView, ...]
    reaped: int
    signals_forwarded: int
    log_lines_dropped: int
    netlink_events: tuple[tuple[str, int], ...]
    netlink_resyncs: int
    start_buckets: tuple[int, ...]  # per START_BUCKETS bound, then +Inf (not cumulative)
    start_sum: float


@dataclass(frozen=True, slots=True)
class Reading:
    """What the files said about one unit (None: nothing to read, or it vanished)."""

    stats: CgroupStats | None
    links: dict[str, LinkCounters] | None


def read_unit(unit: UnitView) -> Reading:
    """Blocking: the unit's cgroup counters and interface counters, now.

    A container that exits while it is read just loses its resource series for this
    scrape. The init's pid cannot be reused under us: it is the daemon's child and stays
    a zombie until the daemon's own reaper collects it, after which the next scrape's
    snapshot no longer has it.
    """
    stats = None
    if unit.cgroup is not None:
        with contextlib.suppress(OSError, CgroupError):
            stats = unit.cgroup.stats()
    links = None
    if unit.pid is not None and unit.own_netns:
        with contextlib.suppress(OSError, ValueError):
            links = link_stats(unit.pid)
    return Reading(stats, links)


# --------------------------------------------------------------------------- collector


class SupervisorCollector(Collector):
    """The supervisor's metric families; :meth:`collect` is a whole scrape in one call.

    The daemon's server splits it instead: :meth:`snapshot` on the event loop, then
    :meth:`families` (or :meth:`render`) in a worker thread.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._start_buckets = [0] * (len(START_BUCKETS) + 1)
        self._start_sum = 0.0
        self._library = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)

    def snapshot(self) -> Snapshot:
        """On the event loop: copy the units and counters, and drain the launch latencies
        the supervisor recorded since the last scrape into the histogram."""
        sup = self.supervisor
        pending, sup.start_durations[:] = list(sup.start_durations), []
        for seconds in pending:
            self._start_buckets[bisect.bisect_left(START_BUCKETS, seconds)] += 1
            self._start_sum += seconds
        units = []
        for unit in list(sup.units.values()):
            cfg, policy, container = unit.cfg, unit.policy, unit.container
            units.append(UnitView(
                name=unit.name, state=policy.state.name, restarts=policy.restarts,
                last_exit_code=policy.last_exit_code,
                last_exit_reason=policy.last_exit_reason,
                rootfs=cfg.rootfs, restart_policy=cfg.restart, group=cfg.group or unit.name,
                pid=container.pid if container is not None else None,
                started_at=container.started_at if container is not None else None,
                # The cgroup outlives a run (it is reused by the next): only a running
                # container has resource usage to report.
                own_netns="net" in cfg.namespaces,
                cgroup=unit.cgroup if container is not None else None,
                oom_kills=unit.oom_kills, links=tuple(unit.links.items())))
        return Snapshot(
            units=tuple(units), reaped=sup.reaper.reaped_total,
            signals_forwarded=sup.signals_forwarded, log_lines_dropped=logs.dropped(),
            netlink_events=tuple(sup.netlink_events.items()),
            netlink_resyncs=sup.netlink_resyncs,
            start_buckets=tuple(self._start_buckets), start_sum=self._start_sum)

    def collect(self) -> Iterator[Metric]:
        # Direct use (REGISTRY.register, tests): call it where snapshot() may run.
        yield from self.families(self.snapshot())

    def families(self, snap: Snapshot) -> list[Metric]:
        """Blocking (reads files): every family of the snapshot."""
        began = time.perf_counter()
        readings = [read_unit(u) for u in snap.units]
        out = _resource_families(snap.units, readings)
        out += _supervision_families(snap)
        out += _core_families(snap)
        took = GaugeMetricFamily(
            "nsvisor_scrape_duration_seconds",
            "Time this scrape spent reading the containers' cgroup and network counters.")
        took.add_metric([], time.perf_counter() - began)
        out.append(took)
        return out

    def render(self, snap: Snapshot) -> bytes:
        """Blocking: the text exposition of the snapshot plus the process collectors."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self.families(snap)))
        for collector in self._library:
            registry.register(collector)
        return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


NET_FIELDS = (
    ("receive_bytes", "rx_bytes", "Cumulative count of bytes received"),
    ("transmit_bytes", "tx_bytes", "Cumulative count of bytes transmitted"),
    ("receive_packets", "rx_packets", "Cumulative count of packets received"),
    ("transmit_packets", "tx_packets", "Cumulative count of packets transmitted"),
    ("receive_errors", "rx_errors", "Cumulative count of errors encountered while receiving"),
    ("transmit_errors", "tx_errors",
     "Cumulative count of errors encountered while transmitting"),
)


def _resource_families(units: tuple[UnitView, ...], readings: list[Reading]) -> list[Metric]:
    n = ["name"]
    cpu = _counter("container_cpu_usage_seconds_total",
                   "Cumulative cpu time consumed in seconds.", ["name", "cpu"])
    user = _counter("container_cpu_user_seconds_total",
                    "Cumulative user cpu time consumed in seconds.", n)
    system = _counter("container_cpu_system_seconds_total",
                      "Cumulative system cpu time consumed in seconds.", n)
    usage = _gauge("container_memory_usage_bytes",
                   "Current memory usage in bytes, including all memory regardless of when "
                   "it was accessed.", n)
    working = _gauge("container_memory_working_set_bytes",
                     "Current working set in bytes (usage minus inactive page cache).", n)
    rss = _gauge("container_memory_rss", "Size of RSS in bytes.", n)
    limit = _gauge("container_spec_memory_limit_bytes",
                   "Memory limit for the container in bytes (0: unlimited).", n)
    procs = _gauge("container_processes",
                   "Number of tasks in the container's cgroup (pids.current when the pids "
                   "controller is there, else the processes in cgroup.procs).", n)
    oom = _counter("container_oom_events_total",
                   "Count of out of memory kills in the container: the larger of the OOM "
                   "kills in its current cgroup and the exits the OOM killer caused.", n)
    start = _gauge("container_start_time_seconds",
                   "Start time of the container's current process since unix epoch in "
                   "seconds.", n)
    net = {field: _counter(f"container_network_{metric}_total", f"{doc}.",
                           ["name", "interface"])
           for metric, field, doc in NET_FIELDS}
    for unit, reading in zip(units, readings, strict=True):
        name = [unit.name]
        if unit.started_at is not None:
            start.add_metric(name, unit.started_at)
        s = reading.stats
        if s is not None:
            if s.cpu_usage_seconds is not None:
                cpu.add_metric([unit.name, "total"], s.cpu_usage_seconds)
            if s.cpu_user_seconds is not None:
                user.add_metric(name, s.cpu_user_seconds)
            if s.cpu_system_seconds is not None:
                system.add_metric(name, s.cpu_system_seconds)
            if s.memory_usage_bytes is not None:
                usage.add_metric(name, s.memory_usage_bytes)
            if s.memory_working_set_bytes is not None:
                working.add_metric(name, s.memory_working_set_bytes)
            if s.memory_rss_bytes is not None:
                rss.add_metric(name, s.memory_rss_bytes)
            limit.add_metric(name, s.memory_limit_bytes or 0)  # None: unlimited, as cAdvisor
            if s.processes is not None:
                procs.add_metric(name, s.processes)
        # The cgroup is recreated at every start, so its oom_kill count restarts at 0, and
        # it is gone once the container exits; unit.oom_kills counts the exits the OOM
        # killer caused, over the container's whole life (persisted for live restore).
        # Their max never misses an OOM exit, and while the container runs it also shows
        # kills of processes the workload survived. It is reported for every configured
        # container, 0 included, so a first OOM kill is an increase, not a new series.
        cg = s.oom_events if s is not None and s.oom_events is not None else 0
        oom.add_metric(name, max(cg, unit.oom_kills))
        if reading.links:
            for ifname, counters in sorted(reading.links.items()):
                for _metric, field, _doc in NET_FIELDS:
                    net[field].add_metric([unit.name, ifname], getattr(counters, field))
    return [cpu, user, system, usage, working, rss, limit, procs, oom, start, *net.values()]


def _supervision_families(snap: Snapshot) -> list[Metric]:
    n = ["name"]
    state = _gauge("nsvisor_container_state",
                   "Supervision state of the container: 1 for the current state, 0 for the "
                   "others (supervisord's states).", ["name", "state"])
    restarts = _counter("nsvisor_container_restarts_total",
                        "Times the restart policy restarted the container.", n)
    code = _gauge("nsvisor_container_last_exit_code",
                  "Exit status of the container's last exit (128+N when killed by signal N).",
                  n)
    reason = _gauge("nsvisor_container_last_terminated_reason",
                    "Why the container's last run ended (1 for that reason): Completed, "
                    "Error, Signaled or OOMKilled.", ["name", "reason"])
    info = _gauge("nsvisor_container_info", "Static facts of the container's config (1).",
                  ["name", "rootfs", "restart_policy", "group"])
    states = [s.name for s in State]
    for unit in snap.units:
        name = [unit.name]
        for s in states:
            state.add_metric([unit.name, s], 1 if s == unit.state else 0)
        restarts.add_metric(name, unit.restarts)
        if unit.last_exit_code is not None:
            code.add_metric(name, unit.last_exit_code)
        if unit.last_exit_code is not None or unit.last_exit_reason is not None:
            reason.add_metric([unit.name, terminated_reason(unit.last_exit_code,
                                                            unit.last_exit_reason)], 1)
        info.add_metric([unit.name, unit.rootfs, unit.restart_policy, unit.group], 1)
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*START_BUCKETS, float("inf")), snap.start_buckets, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    start = HistogramMetricFamily(
        "nsvisor_container_start_duration_seconds",
        "Launch latency of containers: from the spawn request to the init running.",
        buckets=buckets, sum_value=snap.start_sum)
    return [state, restarts, code, reason, info, start]


def _core_families(snap: Snapshot) -> list[Metric]:
    link = _gauge("nsvisor_link_up",
                  "Whether a container's network interface is up (1) or down (0).",
                  ["name", "interface"])
    for unit in snap.units:
        for ifname, up in unit.links:
            link.add_metric([unit.name, ifname], 1 if up else 0)
    events = _counter("nsvisor_netlink_events_total",
                      "Netlink events about the daemon's links that needed action.", ["event"])
    for event, count in sorted({**dict.fromkeys(NETLINK_EVENTS, 0),
                                **dict(snap.netlink_events)}.items()):
        events.add_metric([event], count)
    resyncs = _counter("nsvisor_netlink_resyncs_total",
                       "Full link dumps after the netlink socket overflowed.", [])
    resyncs.add_metric([], snap.netlink_resyncs)
    reaped = _counter("nsvisor_reaped_total", "Child processes the daemon reaped.", [])
    reaped.add_metric([], snap.reaped)
    forwarded = _counter("nsvisor_signals_forwarded_total",
                         "Signals the daemon sent to containers.", [])
    forwarded.add_metric([], snap.signals_forwarded)
    dropped = _counter("nsvisor_log_lines_dropped_total",
                       "Lines of the daemon's own log it could not write (a closed pipe, "
                       "a full disk).", [])
    dropped.add_metric([], snap.log_lines_dropped)
    return [link, events, resyncs, reaped, forwarded, dropped]


# --------------------------------------------------------------------------- server


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9477"`` / ``"[::1]:9477"`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"metrics_listen {listen!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class MetricsServer:
    """``GET /metrics`` over TCP; one request per connection, like the control API."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.collector = SupervisorCollector(supervisor)
        self._limiter = anyio.CapacityLimiter(SCRAPE_THREADS)

    async def scrape(self) -> bytes:
        snap = self.collector.snapshot()  # on the loop: one consistent moment
        return await anyio.to_thread.run_sync(self.collector.render, snap,
                                              limiter=self._limiter)

    async def serve(self, listen: str, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_listen(listen)
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as e:
            raise ConfigError(f"cannot listen on {listen}: {e.strerror or e}",
                              "supervisor.metrics_listen") from None
        log.info("metrics listening", address=listen, path="/metrics")
        task_status.started()
        async with listener:
            await listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT):
                    request = await read_request(stream, b"", [])
                if request.path != "/metrics":
                    raise HTTPError(404, f"no such path {request.path[:80]!r}: try /metrics")
                if request.method not in ("GET", "HEAD"):
                    raise HTTPError(405, f"{request.method[:16]} not allowed: use GET")
                body = await self.scrape()
                answer = response(200, body, CONTENT_TYPE)
                if request.method == "HEAD":
                    answer = answer[:answer.index(b"\r\n\r\n") + 4]
                await stream.send(answer)
            except HTTPError as e:
                with contextlib.suppress(Exception):
                    await stream.send(response(e.status, f"{e.message}\n".encode(),
                                               "text/plain; charset=utf-8"))
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError,
                    anyio.ClosedResourceError, ConnectionError):
                return
            except Exception as e:  # noqa: BLE001 - one scrape must not kill the daemon
                log.exception("metrics scrape failed")
                with contextlib.suppress(Exception):
                    await stream.send(response(500, f"scrape failed: {e!r}\n".encode(),
                                               "text/plain; charset=utf-8"))
