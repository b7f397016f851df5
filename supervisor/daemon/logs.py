"""structlog for the daemon: JSON lines when the output is not a terminal, readable when
it is. Every line carries ``event`` and, for container events, ``container``.

With ``--log-file`` the daemon appends to that file and reopens it on SIGUSR2, so
logrotate can move it away (the same contract as supervisord's SIGUSR2).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import threading


class LogSink:
    """Where the daemon's log lines go: stderr, or a file appended to and reopened at the
    same path (SIGUSR2).

    :meth:`write` never blocks: it queues the line for a writer thread, which writes each
    one whole (``os.write`` until done). A reader that stalls - a full pipe nobody
    drains, journald stuck, a hung disk - stalls only that thread; the daemon goes on
    supervising and answering. A line that cannot be written (the reader went away, the
    disk is full), or that finds :data:`MAX_PENDING` lines queued already, is dropped and
    counted, never raised: the daemon's own log must not stop it supervising (Python's
    logging module makes the same choice).
    """

    MAX_PENDING = 10_000  # ~2-3 MB of lines at most, held while the reader stalls

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.fd = 2 if path is None else self._open(path)
        self.dropped = 0
        self._pending: collections.deque[bytes | int] = collections.deque()
        self._lock = threading.Condition(threading.Lock())
        self._writing = False  # the writer holds a line it has not finished
        self._writer: threading.Thread | None = None

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, text: str) -> int:
        self._enqueue(text.encode(errors="backslashreplace"), capped=True)
        return len(text)

    def flush(self) -> None:
        """structlog's WriteLogger calls this after every line: nothing to do (and no
        waiting) here; :meth:`drain` waits."""

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line is written (or dropped); False after ``timeout``
        seconds with lines still queued (a reader that stalls for good)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._writing,
                                       timeout)

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def reopen(self) -> bool:
        """Reopen the log file at its path (after logrotate moved it); False for stderr.
        OSError if it cannot be opened: the old file stays in use. Lines queued before
        go to the old file, later ones to the new: the writer switches in order."""
        if self.path is None:
            return False
        self._enqueue(self._open(self.path), capped=False)
        return True

    def _enqueue(self, item: bytes | int, *, capped: bool) -> None:
        """Queue a line (``capped``: dropped when MAX_PENDING are queued) or a new fd."""
        with self._lock:
            if capped and len(self._pending) >= self.MAX_PENDING:
                self.dropped += 1
                return
            self._pending.append(item)
            self._lock.notify()
        if self._writer is None:
            self._start_writer()

    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is not None:
                return
            # Born with every signal blocked: the daemon reads its signals from a
            # signalfd, and a thread that could take one would steal it.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                self._writer = threading.Thread(target=self._write_lines, daemon=True,
                                                name="nsvisord-log")
                self._writer.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _write_lines(self) -> None:
        while True:
            with self._lock:
                self._writing = False
                self._lock.notify_all()  # for drain()
                self._lock.wait_for(lambda: self._pending)
                item = self._pending.popleft()
                self._writing = True
            if isinstance(item, int):  # reopen(): later lines go to the new file
                old, self.fd = self.fd, item
                os.close(old)
                continue
            data = memoryview(item)
            try:
                while data:  # a pipe may take a long line in parts
                    data = data[os.write(self.fd, data):]
            except OSError:
                with self._lock:
                    self.dropped += 1


_sink = LogSink()


def configure(level: str = "info", log_file: str | None = None) -> None:
    import structlog  # here, so the module is cheap to import for reopen()

    global _sink
    _sink.drain()
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


@atexit.register
def drain(timeout: float = 5.0) -> bool:
    """Write out the queued log lines (at exit too, so the last ones are not lost); False
    if the reader stalled for ``timeout`` seconds."""
    return _sink.drain(timeout)
