"""``nsvisord -c FILE``: the command line and the config; then :mod:`.serve` runs it.

Only what that needs is imported here, so that the daemon blocks the signals it handles
before its heavier imports (see :func:`main`); ``--check`` and usage errors stay light.
"""

from __future__ import annotations

import getopt
import os
import sys
from typing import NamedTuple

from ..model.config import ConfigError, load_config

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
    # From here on nsvisord runs. The signals it handles wait blocked until its signalfd
    # reads them: one that came while it starts (a SIGHUP from logrotate, a SIGTERM) would
    # otherwise end it half started. Its imports take most of that time: they come after.
    from .signals import block

    block()
    from .serve import run

    return run(config, args.log_level, args.log_file)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


if __name__ == "__main__":
    sys.exit(main())
