"""The running nsvisord: its state_dir lock, log, signals, fork server and services.

``main`` hands over here once the command line and the config are good; everything the
daemon needs beyond them is imported from here, after its signals are blocked.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from typing import Any

import anyio
import structlog

from ..linux.cgroups import CgroupError, CgroupManager, detect
from ..model.config import Config, ConfigError
from ..runtime import Runtime
from ..runtime.reaper import DEFAULT_REAPER, Reaper
from . import logs
from .api import ApiServer
from .signals import SignalReader
from .store import StateDirBusy, lock_state_dir
from .supervisor import Supervisor

log = structlog.get_logger("nsvisord")


def run(config: Config, log_level: str, log_file: str | None) -> int:
    """Supervise ``config``'s containers until SIGTERM, SIGINT or a shutdown request;
    the exit status (1: cannot start, 2: a config error only the host could find)."""
    try:
        _held = lock_state_dir(config.supervisor.state_dir)  # until we exit
    except StateDirBusy as e:
        print(f"nsvisord: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"nsvisord: cannot use state_dir {config.supervisor.state_dir}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    try:
        logs.configure(log_level, log_file)
    except OSError as e:
        print(f"nsvisord: cannot open --log-file {log_file}: {e.strerror}",
              file=sys.stderr)
        return 2
    signals = SignalReader()
    signals.open()  # before any thread exists, so every thread inherits the mask
    runtime = Runtime(reaper=DEFAULT_REAPER)
    _raise_fd_limit()  # after the runtime: the containers keep the limit we were given
    try:
        anyio.run(_serve, config, runtime, DEFAULT_REAPER, _cgroups(), signals,
                  backend="asyncio")
    except (ConfigError, OSError, BaseExceptionGroup) as raised:
        # A task group wraps what its tasks raise: the one error inside is the news.
        e = _only_error(raised)
        logs.drain()  # the log lines before it come first
        if isinstance(e, ConfigError):  # a published port or metrics_listen taken...
            print(f"nsvisord: {e.with_source(config.source) if not e.source else e}",
                  file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # e.g. the control socket is taken by a running nsvisord
            if logs.to_file():  # the log file keeps a record; stderr gets the line below
                log.error("fatal", error=str(e))
            print(f"nsvisord: {e}", file=sys.stderr)
            return 1
        raise
    finally:
        runtime.close()
        signals.close()
    log.info("exit")
    return 0


def _only_error(error: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups, or ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _raise_fd_limit() -> None:
    """Raise our soft limit of open files to the hard one. nsvisord holds two per running
    container (its pidfd and its exit file), and a service starts with 1024 (systemd's
    default soft limit): too few for the thousand containers a host may run."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open files limit", soft=soft, hard=hard,
                        error=str(e))


def _cgroups() -> CgroupManager | None:
    try:
        return CgroupManager(detect(), parent="nsvisor")
    except (CgroupError, OSError) as e:
        log.warning("no cgroups: containers without a PID namespace may leave processes",
                    error=str(e))
        return None


async def _serve(config, runtime: Runtime, reaper: Reaper, cgroups: CgroupManager | None,
                 signals: SignalReader) -> None:
    # What asyncio itself reports (a callback that raised, a task nobody awaited) goes
    # to the daemon's log as a JSON line like the rest, not as a bare traceback on
    # stderr. One known case: anyio's UNIX socket streams can run a read's callback after
    # the read was cancelled (an API client connecting as nsvisord exits): harmless.
    asyncio.get_running_loop().set_exception_handler(_log_loop_error)
    supervisor = Supervisor(config, runtime=runtime, reaper=reaper, cgroups=cgroups)
    api = ApiServer(supervisor)
    async with anyio.create_task_group() as tg:
        await tg.start(api.serve, config.supervisor.socket, config.supervisor.socket_group)
        if config.supervisor.metrics_listen:
            from .metrics import MetricsServer  # prometheus-client only when it is used

            await tg.start(MetricsServer(supervisor).serve, config.supervisor.metrics_listen)
        await supervisor.run(tg)
        tg.start_soon(_handle_signals, signals, supervisor, reaper)
        log.info("started", pid=os.getpid(), config=config.source)
        await supervisor.shutdown_requested.wait()
        if supervisor.leave_running:
            await supervisor.leave()
        else:
            await supervisor.shutdown()
        tg.cancel_scope.cancel()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.warning("event loop error", message=context.get("message", ""),
                error=repr(error) if error is not None else None,
                where=repr(context.get("handle") or context.get("future") or "")[:200])


async def _handle_signals(signals: SignalReader, supervisor: Supervisor,
                          reaper: Reaper) -> None:
    async for signo in signals:
        if signo == signal.SIGCHLD:
            # The one place that reaps: statuses of children someone waits for stay in
            # the reaper for them; anything else (orphans, when we are pid 1) is dropped.
            owned = supervisor.owned_pids()
            for pid, _status in reaper.reap_all():
                if pid not in owned:
                    reaper.forget(pid)
        elif signo in (signal.SIGTERM, signal.SIGINT):
            log.info("shutting down", signal=signal.Signals(signo).name)
            supervisor.shutdown_requested.set()
        elif signo == signal.SIGHUP:
            supervisor.spawn_task(supervisor.reload)
        elif signo == signal.SIGUSR2:
            try:
                if logs.reopen():
                    log.info("log file reopened")
            except OSError as e:  # the old file stays in use: nothing is lost
                log.warning("log file not reopened", error=str(e),
                            hint="the log goes on in the old file; check the --log-file "
                                 "path, then send SIGUSR2 again")
