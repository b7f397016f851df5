"""Just enough HTTP/1.1 for a local control API: one request per connection, JSON bodies,
NDJSON streams. Strict limits, so a malformed or hostile request costs one 4xx answer and
nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from anyio.abc import ByteStream

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}
CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
         411: "bad_request", 413: "too_large", 414: "too_large", 431: "too_large",
         500: "internal", 503: "unavailable"}


class HTTPError(Exception):
    """An error answer: ``status`` and a one-line message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    fds: list[int] = field(default_factory=list)  # SCM_RIGHTS that came with the request

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); 400 if it is anything else."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "body must be a JSON object")
        return data

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.query.get(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise HTTPError(400, f"query parameter {name}={value!r} is not a boolean")

    def count(self, name: str, default: int, most: int) -> int:
        """A query parameter that counts something: an integer from 0 to ``most``."""
        value = self.query.get(name)
        if value is None:
            return default
        try:
            n = int(value)
        except ValueError:
            raise HTTPError(400, f"{name}: must be a number") from None
        if not 0 <= n <= most:
            raise HTTPError(400, f"{name}: must be between 0 and {most}")
        return n


async def read_request(stream: ByteStream, first: bytes, fds: list[int]) -> Request:
    """Parse one request; ``first`` is what was already read (with its fds)."""
    buf = bytearray(first)
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise HTTPError(431, f"request head larger than {MAX_HEAD} bytes")
        chunk = await stream.receive(65536)
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise HTTPError(431, f"request head larger than {MAX_HEAD} bytes")
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise HTTPError(400, "request head is not ASCII") from None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, f"bad request line {lines[0][:80]!r}")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HTTPError(411, "chunked request bodies are not supported: send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HTTPError(400, "Content-Length is not a number") from None
    if length < 0:
        raise HTTPError(400, "Content-Length is negative")
    if length > MAX_BODY:
        raise HTTPError(413, f"body larger than {MAX_BODY} bytes")
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive(65536)
        body += chunk
    url = urlsplit(target)
    if not url.path.startswith("/"):
        raise HTTPError(400, f"bad request target {target[:80]!r}")
    return Request(method, unquote(url.path), dict(parse_qsl(url.query)), headers,
                   bytes(body[:length]), fds)


def response(status: int, body: Any, content_type: str = "application/json") -> bytes:
    data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + data


def error_response(status: int, message: str) -> bytes:
    return response(status, {"error": message, "code": CODES.get(status, "error")})


def stream_head(content_type: str = "application/x-ndjson") -> bytes:
    """Headers of a stream that ends when the connection closes."""
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            "Connection: close\r\n\r\n").encode()


def ndjson(item: Any) -> bytes:
    return (json.dumps(item) + "\n").encode()
