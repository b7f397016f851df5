"""structlog for the daemon: JSON lines when the output is not a terminal, readable when
it is. Every line carries ``event`` and, for container events, ``container``.

With ``--log-file`` the daemon appends to that file and reopens it on SIGUSR2, so
logrotate can move it away (the same contract as supervisord's SIGUSR2).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO


class ReopenableFile:
    """A line-buffered append-only file that can be reopened at the same path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO = open(path, "a", buffering=1)  # noqa: SIM115

    def write(self, text: str) -> int:
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def reopen(self) -> None:
        new = open(self.path, "a", buffering=1)  # noqa: SIM115
        old, self._file = self._file, new
        old.close()


_output: TextIO | ReopenableFile = sys.stderr


def configure(level: str = "info", log_file: str | None = None) -> None:
    import structlog  # here, so the module is cheap to import for reopen()

    global _output
    _output = ReopenableFile(log_file) if log_file else sys.stderr
    renderer = (structlog.dev.ConsoleRenderer() if _output.isatty()
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(_output),  # a line, one write
        cache_logger_on_first_use=True,
    )


def reopen() -> bool:
    """Reopen the log file (SIGUSR2); False when logging to stderr."""
    if isinstance(_output, ReopenableFile):
        _output.reopen()
        return True
    return False
