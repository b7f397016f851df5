"""structlog for the daemon: JSON lines when the output is not a terminal, readable when
it is. Every line carries ``event`` and, for container events, ``container``.

With ``--log-file`` the daemon appends to that file and reopens it on SIGUSR2, so
logrotate can move it away (the same contract as supervisord's SIGUSR2).
"""

from __future__ import annotations

import logging
import os


class LogSink:
    """Where the daemon's log lines go: stderr, or a file appended to and reopened at the
    same path (SIGUSR2). One ``write`` per line, straight to the fd: nothing is buffered,
    so nothing is half written or written twice.

    A line that cannot be written (the reader of a pipe went away, the disk is full) is
    dropped and counted, never raised: the daemon's own log must not stop it supervising
    (Python's logging module makes the same choice).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.fd = 2 if path is None else self._open(path)
        self.dropped = 0

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, text: str) -> int:
        data = memoryview(text.encode(errors="backslashreplace"))
        try:
            while data:  # a pipe may take a long line in parts
                data = data[os.write(self.fd, data):]
        except OSError:
            self.dropped += 1
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def reopen(self) -> bool:
        """Reopen the log file at its path (after logrotate moved it); False for stderr.
        OSError if it cannot be opened: the old file stays in use."""
        if self.path is None:
            return False
        new = self._open(self.path)
        old, self.fd = self.fd, new
        os.close(old)
        return True


_sink = LogSink()


def configure(level: str = "info", log_file: str | None = None) -> None:
    import structlog  # here, so the module is cheap to import for reopen()

    global _sink
    _sink = LogSink(log_file)
    renderer = (structlog.dev.ConsoleRenderer() if _sink.isatty()
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
        logger_factory=structlog.WriteLoggerFactory(_sink),  # type: ignore[arg-type]  # file-like
        cache_logger_on_first_use=True,
    )


def to_file() -> bool:
    """Whether the log goes to a --log-file (else to stderr)."""
    return _sink.path is not None


def dropped() -> int:
    """How many log lines could not be written (a metric)."""
    return _sink.dropped


def reopen() -> bool:
    """Reopen the log file (SIGUSR2); False when logging to stderr."""
    return _sink.reopen()
