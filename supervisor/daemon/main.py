"""``nsvisord -c FILE``: load the config, then supervise until SIGTERM or SIGINT."""

from __future__ import annotations

import getopt
import os
import resource
import signal
import sys
from typing import NamedTuple

import anyio
import structlog

from ..linux.cgroups import CgroupError, CgroupManager, detect
from ..model.config import ConfigError, load_config
from ..runtime import Runtime
from ..runtime.reaper import DEFAULT_REAPER, Reaper
from . import logs
from .api import ApiServer
from .signals import SignalReader
from .store import StateDirBusy, lock_state_dir
from .supervisor import Supervisor

DEFAULT_CONFIG = "/etc/nsvisor/nsvisor.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")
USAGE = "usage: nsvisord [-c FILE] [--check] [--log-level LEVEL] [--log-file PATH]"
HELP = f"""{USAGE}

nsvisor's daemon: supervises the containers of a TOML config until SIGTERM or SIGINT.

options:
  -c, --config FILE  the TOML config (default {DEFAULT_CONFIG})
  -t, --check        check the config file and exit: 0 if it is valid
  --log-level LEVEL  {", ".join(LOG_LEVELS)} (default info)
  --log-file PATH    append the daemon's log here (reopened on SIGUSR2) instead of stderr
  -h, --help         show this help and exit
"""
log = structlog.get_logger("nsvisord")


class Options(NamedTuple):
    config: str = DEFAULT_CONFIG
    log_level: str = "info"
    log_file: str | None = None
    check: bool = False


class UsageError(Exception):
    """A bad command line; the message names what is wrong."""


def parse_args(argv: list[str]) -> Options | None:
    """The command line's options, None for ``--help``; UsageError if it is wrong.

    getopt, not argparse: argparse's help formatter imports shutil, and shutil zlib, bz2
    and lzma - 0.8 MiB the daemon would carry for as long as it runs.
    """
    try:
        pairs, rest = getopt.getopt(argv, "hc:t", ["help", "config=", "check", "log-level=",
                                                   "log-file="])
    except getopt.GetoptError as e:
        raise UsageError(str(e)) from None
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r}")
    options = Options()
    for name, value in pairs:
        if name in ("-h", "--help"):
            return None
        if name in ("-c", "--config"):
            options = options._replace(config=value)
        elif name in ("-t", "--check"):
            options = options._replace(check=True)
        elif name == "--log-level":
            if value not in LOG_LEVELS:
                raise UsageError(f"--log-level {value!r}: choose {', '.join(LOG_LEVELS)}")
            options = options._replace(log_level=value)
        else:
            options = options._replace(log_file=value)
    return options


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"nsvisord: {e}\n{USAGE} (nsvisord --help tells more)", file=sys.stderr)
        return 2
    if args is None:
        print(HELP, end="")
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"nsvisord: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"nsvisord: cannot read {args.config}: {e.strerror} (use -c FILE)",
              file=sys.stderr)
        return 2
    if args.check:  # what the file alone decides; the host (ports, rootfs) is for a start
        print(f"nsvisord: {args.config}: valid, {_count(len(config.containers), 'container')}"
              f", {_count(len(config.networks), 'network')}")
        return 0
    if os.geteuid() != 0:
        print("nsvisord: must run as root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 1
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
        logs.configure(args.log_level, args.log_file)
    except OSError as e:
        print(f"nsvisord: cannot open --log-file {args.log_file}: {e.strerror}",
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


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


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
            supervisor.leave()  # what is in flight is cancelled below, as a kill -9 would
        else:
            await supervisor.shutdown()
        tg.cancel_scope.cancel()


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


if __name__ == "__main__":
    sys.exit(main())
