"""The workload's stdout and stderr, captured by the init into rotated files.

The init holds the read ends of the workload's pipes and writes complete lines to
``<name>.out.log`` / ``<name>.err.log`` in the log directory, which it reaches through a
directory fd the caller opened on the host (close-on-exec, and the init is non-dumpable:
nothing in the container sees it). The capture depends on nothing outside the container,
so a workload never blocks or gets SIGPIPE because its supervisor is down.

Rotation happens before a write that would take the file past ``max_bytes``, and only at
a line boundary: ``.log.<N-1>`` -> ``.log.<N>`` ... ``.log`` -> ``.log.1``, then a fresh
``.log``. A line longer than ``max_bytes`` gets a file of its own; a line is only split
beyond LOG_LINE_MAX bytes. At most every 0.5 s of writing, the init checks that the name
still leads to its file and reopens it if someone moved or removed it (``clear``,
logrotate). A full disk loses whole lines, never parts of one, and the first line written
after it says how many were lost. Container-side code: plain ``os`` calls, no imports
beyond the loaded ones.
"""

from __future__ import annotations

import os
import time

from .consts import LOG_LINE_MAX

_READ_SIZE = 65536
_CHECK_EVERY = 0.5  # seconds between checks that the name still leads to our file
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


class LogFile:
    """One rotated log file, written through ``dir_fd``."""

    __slots__ = ("dir_fd", "name", "max_bytes", "backups", "fd", "size", "ident", "checked",
                 "done", "lost", "lost_reason")

    def __init__(self, dir_fd: int, name: str, max_bytes: int, backups: int) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.max_bytes = max_bytes
        self.backups = backups
        self.fd = -1
        self.size = 0
        self.ident = (0, 0)
        self.checked = time.monotonic()
        self.done = 0  # bytes of the current write() in the file
        self.lost = 0  # lines dropped since the last write that worked
        self.lost_reason = ""
        self.open()  # raises OSError: a launch error, when the init opens it first

    def open(self) -> None:
        fd = os.open(self.name, _OPEN_FLAGS, 0o640, dir_fd=self.dir_fd)
        st = os.fstat(fd)
        self.fd, self.size, self.ident = fd, st.st_size, (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines, or a piece of an over-long one); never raises.

        What cannot be written (a full disk, a vanished directory) is dropped a whole
        line at a time - a line cut short is cut out of the file again - and counted:
        the next write that works starts with a line saying how many were lost and why.
        """
        note = b""
        if self.lost:
            note = (f"nsvisor: {self.lost} line{'s' if self.lost > 1 else ''} lost here "
                    f"({self.lost_reason})\n").encode()
        self.done = 0
        try:
            self._append(note + data)
        except OSError as e:
            if note and self.done >= len(note):
                self.lost = 0  # the note got in: a new count starts after it
            rest = data[max(0, self.done - len(note)):]
            if rest:
                self.lost += rest.count(b"\n") + (not rest.endswith(b"\n"))
            self.lost_reason = e.strerror or str(e)
        else:
            self.lost = 0

    def _append(self, data: bytes) -> None:
        now = time.monotonic()
        if self.fd < 0 or now - self.checked >= _CHECK_EVERY:
            self.checked = now
            self._reopen_if_moved()
        limit = self.max_bytes
        while data:
            room = limit - self.size
            if limit <= 0 or len(data) <= room:
                self._write(data)
                return
            # Up to the end of the last whole line that fits.
            cut = data.rfind(b"\n", 0, room) + 1 if room > 0 else 0
            if cut == 0 and self.size == 0:  # one line longer than max_bytes: alone
                cut = data.find(b"\n") + 1 or len(data)
            if cut:
                self._write(data[:cut])
                data = data[cut:]
            if data:
                self.rotate()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                self.size += n
                self.done += n
                view = view[n:]
        except OSError:
            written = len(data) - len(view)
            tail = written - (data.rfind(b"\n", 0, written) + 1)
            if tail and self.fd >= 0:  # a line cut short: out of the file with it
                try:
                    os.ftruncate(self.fd, self.size - tail)
                    self.size -= tail
                    self.done -= tail
                except OSError:
                    pass
            raise

    def _reopen_if_moved(self) -> None:
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            same = (st.st_dev, st.st_ino) == self.ident
        except FileNotFoundError:
            same = False
        if not same or self.fd < 0:
            self.close()
            self.open()

    def rotate(self) -> None:
        self.close()
        name, d = self.name, self.dir_fd
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                try:
                    os.rename(f"{name}.{i}", f"{name}.{i + 1}", src_dir_fd=d, dst_dir_fd=d)
                except FileNotFoundError:
                    pass
            os.rename(name, f"{name}.1", src_dir_fd=d, dst_dir_fd=d)
        else:
            os.unlink(name, dir_fd=d)
        self.open()


class Stream:
    """A pipe from the workload and the file its lines go to."""

    __slots__ = ("fd", "file", "pending")

    def __init__(self, fd: int, file: LogFile) -> None:
        self.fd = fd  # the read end, non-blocking
        self.file = file
        self.pending = b""  # the start of a line whose end has not arrived yet

    def feed(self) -> bool:
        """Read what the pipe holds and write the complete lines; False at EOF."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.flush()
            return False
        self._take(data)
        return True

    def _take(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        # An over-long line goes in pieces of LOG_LINE_MAX. Only the line the pending
        # start belongs to can be longer than one read, so only the first needs cutting.
        while len(data) >= LOG_LINE_MAX and data.find(b"\n", 0, LOG_LINE_MAX + 1) < 0:
            self.file.write(data[:LOG_LINE_MAX])
            data = data[LOG_LINE_MAX:]
        end = data.rfind(b"\n") + 1
        if end:
            self.file.write(data if end == len(data) else data[:end])
        self.pending = data[end:]

    def drain(self) -> None:
        """Everything left in the pipe, then the partial line, when the init exits."""
        for _ in range(1024):  # bounded: a writer outside the namespace may still be there
            try:
                data = os.read(self.fd, _READ_SIZE)
            except OSError:
                break
            if not data:
                break
            self._take(data)
        self.flush()

    def flush(self) -> None:
        if self.pending:
            self.file.write(self.pending + b"\n")  # the line ends here: keep the next whole
            self.pending = b""


class Logs:
    """The init's log capture: one stream per pipe (one when stderr is merged)."""

    def __init__(self, dir_fd: int, name: str, max_bytes: int, backups: int,
                 merge: bool) -> None:
        self.dir_fd = dir_fd
        self.streams: list[Stream] = []
        self.write_ends: list[int] = []
        try:
            for kind in ("out",) if merge else ("out", "err"):
                file = LogFile(dir_fd, f"{name}.{kind}.log", max_bytes, backups)
                r, w = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(r, False)
                self.streams.append(Stream(r, file))
                self.write_ends.append(w)
        except BaseException:
            self.close()
            raise

    def stdio(self) -> tuple[int, int]:
        """The workload's stdout and stderr: the pipes' write ends."""
        return self.write_ends[0], self.write_ends[-1]

    def close_write_ends(self) -> None:
        for fd in self.write_ends:
            os.close(fd)
        self.write_ends = []

    def by_fd(self) -> dict[int, Stream]:
        return {s.fd: s for s in self.streams}

    def close(self) -> None:
        """Drain every pipe, flush partial lines and close everything."""
        self.close_write_ends()
        for s in self.streams:
            s.drain()
            os.close(s.fd)
            s.file.close()
        self.streams = []
