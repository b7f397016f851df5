"""A tiny HTTP/1.1 client for nsvisord's API over an AF_UNIX socket.

One request per connection (``Connection: close``). Bodies are read by Content-Length,
chunked transfer coding, or until EOF; NDJSON streams are yielded line by line as they
arrive. File descriptors can ride along with the request bytes (SCM_RIGHTS), as
``POST /v1/containers/{name}/exec`` wants. Only stdlib ``socket`` and ``json``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/nsvisor/nsvisor.sock"
ENV_SOCKET = "NSVISOR_SOCKET"
CONNECT_TIMEOUT = 10.0
MAX_LINE = 1024 * 1024

# Exit codes: supervisorctl's (LSB init-script) values.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4  # daemon unreachable, or no such container
EXIT_FAILED = 7  # an operation failed: spawn error, not running


class CliError(Exception):
    """Ends the command: ``message`` is one line for stderr, ``code`` the exit status."""

    code = EXIT_ERROR

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UsageError(CliError):
    code = EXIT_USAGE


class Unreachable(CliError):
    code = EXIT_UNKNOWN


class ProtocolError(CliError):
    """The daemon answered something that is not the HTTP/JSON the API promises."""


class ApiError(CliError):
    """A 4xx/5xx answer: ``{"error": "...", "code": "..."}``."""

    def __init__(self, status: int, kind: str, message: str, body: Any = None) -> None:
        super().__init__(message, _API_EXIT.get(status, EXIT_ERROR))
        self.status = status
        self.kind = kind
        self.body = body


_API_EXIT = {404: EXIT_UNKNOWN, 409: EXIT_FAILED}


# --------------------------------------------------------------------------- discovery


def find_socket(option: str | None = None, config: str | None = None,
                environ: dict[str, str] | None = None) -> str:
    """``-s SOCKET``, else ``-c CONFIG``'s ``[supervisor].socket``, else
    ``$NSVISOR_SOCKET``, else the default."""
    if option:
        return option
    if config:
        found = config_socket(config)
        if found:
            return found
    env = os.environ if environ is None else environ
    return env.get(ENV_SOCKET) or DEFAULT_SOCKET


def config_socket(path: str) -> str | None:
    """Only ``[supervisor].socket`` of a TOML config; the rest is the daemon's business."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror} (check -c)") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {path} is not valid TOML: {e} (check -c)") from None
    table = data.get("supervisor")
    value = table.get("socket") if isinstance(table, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{path}: [supervisor].socket must be a path string (check -c)")
    return value


def quote(part: str) -> str:
    """Percent-encode one path segment (no urllib: it costs import time)."""
    safe = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    return "".join(c if c in safe else "".join(f"%{b:02X}" for b in c.encode())
                   for c in part)


# --------------------------------------------------------------------------- transport


class _Reader:
    """Buffered reads from a socket: lines for the head, then the body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def readline(self) -> bytes | None:
        """One line with its ending; None at EOF before any byte; partial line at EOF."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise ProtocolError("nsvisord sent a line longer than 1 MiB")
            start = len(self.buf)
            if not self._fill():
                if not self.buf:
                    return None
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, at least one unless at EOF."""
        if not self.buf and not self._fill():
            return b""
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data


class Response:
    """Status and headers of an answer; the body is read through ``chunks()``."""

    def __init__(self, conn: Connection, status: int, reason: str,
                 headers: dict[str, str]) -> None:
        self.conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self._consumed = False

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives (Content-Length, chunked, or until EOF)."""
        if self._consumed:
            return
        self._consumed = True
        reader = self.conn.reader
        if self.conn.method == "HEAD" or self.status in (204, 304) or self.status < 200:
            return
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            yield from self._chunked(reader)
            return
        length = self.headers.get("content-length")
        if length is not None:
            try:
                left = int(length)
            except ValueError:
                raise ProtocolError(f"nsvisord sent a bad Content-Length: {length!r}") from None
            while left > 0:
                data = reader.read_some(min(left, 65536))
                if not data:
                    raise ProtocolError("nsvisord closed the connection in the middle of an "
                                        "answer (see its log)")
                left -= len(data)
                yield data
            return
        while data := reader.read_some(65536):
            yield data

    @staticmethod
    def _chunked(reader: _Reader) -> Iterator[bytes]:
        while True:
            line = reader.readline()
            if line is None or not line.endswith(b"\n"):
                raise ProtocolError("nsvisord closed the connection in the middle of an "
                                    "answer (see its log)")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"nsvisord sent a bad chunk size: {line[:40]!r}") from None
            if size == 0:
                while (line := reader.readline()) not in (None, b"\r\n", b"\n"):
                    pass  # trailers
                return
            left = size
            while left > 0:
                data = reader.read_some(left)
                if not data:
                    raise ProtocolError("nsvisord closed the connection in the middle of a "
                                        "chunk (see its log)")
                left -= len(data)
                yield data
            if reader.readline() not in (b"\r\n", b"\n"):
                raise ProtocolError("nsvisord sent a chunk without its CRLF")

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def json(self) -> Any:
        data = self.read()
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise ProtocolError(f"nsvisord sent an answer that is not JSON: "
                                f"{_preview(data)}") from None

    def lines(self) -> Iterator[Any]:
        """NDJSON: one decoded JSON value per line, as each line arrives."""
        pending = b""
        for data in self.chunks():
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                if line.strip():
                    yield _decode_line(line)
        if pending.strip():
            yield _decode_line(pending)

    def raise_for_status(self) -> None:
        if self.status < 400:
            return
        body = None
        try:
            body = self.json()
        except CliError:
            pass
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            message = body["error"].splitlines()[0] if body["error"] else self.reason
            kind = str(body.get("code", ""))
        else:
            message = f"nsvisord answered {self.status} {self.reason}"
            kind = ""
        raise ApiError(self.status, kind, message, body)


def _decode_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise ProtocolError(f"nsvisord sent a stream line that is not JSON: "
                            f"{_preview(line)}") from None


def _preview(data: bytes) -> str:
    text = data[:60].decode("utf-8", "replace").replace("\n", " ").strip()
    return repr(text + ("..." if len(data) > 60 else ""))


class Connection:
    """One request on one connection to the daemon's socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.reader: _Reader | None = None
        self.method = "GET"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise unreachable(self.path, e) from None
        sock.settimeout(None)
        self.sock = sock
        self.reader = _Reader(sock)

    def send(self, method: str, target: str, body: Any = None,
             fds: list[int] | None = None) -> None:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.method = method
        payload = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {target} HTTP/1.1\r\nHost: nsvisord\r\nConnection: close\r\n"
                "Accept: application/json, application/x-ndjson\r\n")
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if body is not None or method in ("POST", "PUT"):
            head += f"Content-Length: {len(payload)}\r\n"
        data = head.encode() + b"\r\n" + payload
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data], fds)
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            raise ProtocolError("nsvisord closed the connection before reading the request "
                                "(see its log)") from None

    def response(self) -> Response:
        assert self.reader is not None
        try:
            line = self.reader.readline()
            if not line:
                raise ProtocolError("nsvisord closed the connection without answering "
                                    "(see its log)")
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"nsvisord sent a bad status line: {_preview(line)}")
            headers: dict[str, str] = {}
            while True:
                h = self.reader.readline()
                if h is None or not h.endswith(b"\n"):
                    raise ProtocolError("nsvisord closed the connection in the middle of "
                                        "its answer's headers (see its log)")
                if h in (b"\r\n", b"\n"):
                    break
                name, sep, value = h.decode("latin-1").partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
        except ConnectionResetError:
            raise ProtocolError("nsvisord reset the connection without answering "
                                "(see its log)") from None
        return Response(self, int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


def unreachable(path: str, e: OSError) -> CliError:
    import errno

    if e.errno == errno.EACCES or isinstance(e, PermissionError):
        return Unreachable(f"permission denied on {path} (run as root or as a member "
                           "of its socket_group)")
    if isinstance(e, FileNotFoundError):
        why = "no such socket"
    elif isinstance(e, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(e, TimeoutError):
        why = "timed out connecting"
    else:
        why = (e.strerror or str(e)).lower()
    return Unreachable(f"cannot reach nsvisord at {path}: {why} (is it running? try -s)")


# --------------------------------------------------------------------------- calls


class Client:
    """The API's calls, each on its own connection."""

    def __init__(self, path: str) -> None:
        self.path = path

    def open(self, method: str, target: str, body: Any = None,
             fds: list[int] | None = None) -> tuple[Connection, Response]:
        conn = Connection(self.path)
        try:
            conn.send(method, target, body, fds)
            resp = conn.response()
            resp.raise_for_status()
        except BaseException:
            conn.close()
            raise
        return conn, resp

    def call(self, method: str, target: str, body: Any = None) -> Any:
        conn, resp = self.open(method, target, body)
        with conn:
            return resp.json()

    def get(self, target: str) -> Any:
        return self.call("GET", target)

    def post(self, target: str, body: Any = None) -> Any:
        return self.call("POST", target, {} if body is None else body)

    def stream(self, target: str) -> Iterator[Any]:
        """GET an NDJSON stream; items are yielded as they are written."""
        conn, resp = self.open("GET", target)
        with conn:
            yield from resp.lines()
