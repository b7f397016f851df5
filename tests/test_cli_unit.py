"""nsvisorctl without a daemon: parsing, socket discovery, the HTTP client against a fake
server on a temporary Unix socket, exit codes and output formatting."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.cli import client as cl
from supervisor.cli import main as cli
from supervisor.cli.client import Client, Connection, ProtocolError
from supervisor.cli.shell import Shell

from .conftest import run_python

# --------------------------------------------------------------------------- fake server


class FakeServer:
    """Serves one scripted answer per connection on a temp Unix socket, in a thread.

    ``handler(request_bytes, fds) -> list[bytes | float]``: the pieces to send (a float
    is a pause in seconds); the connection is closed after them."""

    def __init__(self, path: str, handler: Callable[[bytes, list[int]], list]) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[tuple[bytes, list[int]]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data, fds = b"", []
            try:
                while b"\r\n\r\n" not in data:
                    chunk, more, _flags, _addr = socket.recv_fds(conn, 65536, 3)
                    if not chunk:
                        return
                    data += chunk
                    fds += more
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append((head + b"\r\n\r\n" + body, fds))
                for piece in self.handler(data, fds):
                    if isinstance(piece, float):
                        time.sleep(piece)
                    else:
                        conn.sendall(piece)
            except OSError:
                pass
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def close(self) -> None:
        self.stopping = True
        self.sock.close()
        self.thread.join(5)


def http(status: int, body: object, reason: str = "OK", extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n").encode() + data


def error(status: int, message: str, code: str) -> bytes:
    return http(status, {"error": message, "code": code}, "Error")


@pytest.fixture
def sock_path() -> Iterator[str]:
    # AF_UNIX paths are short: not pytest's deep tmp_path.
    import tempfile

    d = tempfile.mkdtemp(prefix="nsvctl-", dir="/tmp")
    yield os.path.join(d, "s.sock")
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


@pytest.fixture
def serve(sock_path: str) -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Callable[[bytes, list[int]], list]) -> FakeServer:
        s = FakeServer(sock_path, handler)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def route(table: dict[str, object]) -> Callable[[bytes, list[int]], list]:
    """``{"GET /v1/containers": pieces-or-json}`` -> a handler."""

    def handler(data: bytes, fds: list[int]) -> list:
        method, target = data.split(b" ", 2)[:2]
        key = f"{method.decode()} {target.decode().split('?')[0]}"
        answer = table.get(key)
        if answer is None:
            return [error(404, f"no such route: {key}", "not_found")]
        if isinstance(answer, list) and answer and isinstance(answer[0], bytes | float):
            return answer
        return [http(200, answer)]

    return handler


def run(argv: list[str]) -> tuple[int, str, str]:
    """nsvisorctl in this process, with captured stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = cli.run(argv)
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


STATUS = [
    {"name": "web", "group": "front", "state": "RUNNING", "pid": 120, "restarts": 2,
     "exit_code": None, "uptime_seconds": 14.0, "description": "pid 120, uptime 0:00:14"},
    {"name": "api", "group": "front", "state": "STARTING", "pid": 121, "restarts": 0,
     "exit_code": None, "uptime_seconds": None, "description": ""},
    {"name": "db", "group": "db", "state": "EXITED", "pid": None, "restarts": 1,
     "exit_code": 3, "uptime_seconds": None,
     "description": "exit status 3 at 2026-11-29 04:12:01"},
]

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("argv", [
    ["bogus"], ["start"], ["stop"], ["restart"], ["signal", "HUP"], ["tail"],
    ["tail", "web", "stdin"], ["tail", "-n", "x", "web"], ["status", "--bogus"],
    ["inspect"], ["top"], ["exec", "web"], ["exec"], ["-s"], ["clear"], ["add"],
    ["remove"], ["signal", "NOPE", "web"], ["signal", "99", "web"], ["--wait"],
    ["exec", "-e", "NOEQUALS", "web", "--", "true"], ["start", "--wait", "--no-wait", "x"],
])
def test_usage_errors_exit_2_with_one_line(argv: list[str]) -> None:
    code, out, err = run(["-s", "/nonexistent/s.sock", *argv])
    assert code == 2, (argv, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("nsvisorctl: "), err
    assert "see '" in err


def test_help_lists_exit_codes_and_exits_0() -> None:
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for needle in ("exit status", " 3  status", " 4  nsvisord unreachable", " 7  an operation",
                   "NSVISOR_SOCKET", "exec"):
        assert needle in proc.stdout
    sub = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "tail", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert sub.returncode == 0 and "--follow" in sub.stdout


def test_parse_forms() -> None:
    a = cli.parse(["-s", "/x", "--json", "status", "web", "front:*"])
    assert (a.socket, a.json, a.command, a.names) == ("/x", True, "status", ["web", "front:*"])
    a = cli.parse(["status", "--json"])
    assert a.json is True
    a = cli.parse(["--socket=/y", "start", "--no-wait", "all"])
    assert (a.socket, a.wait, a.names) == ("/y", False, ["all"])
    assert cli.parse(["stop", "web"]).wait is True
    a = cli.parse(["tail", "-100", "web", "stderr"])
    assert (a.lines, a.name, a.stream, a.follow) == (100, "web", "stderr", False)
    a = cli.parse(["tail", "-f", "web"])
    assert (a.lines, a.stream, a.follow) == (10, "stdout", True)
    a = cli.parse(["exec", "-t", "web", "--", "sh", "-c", "echo -n x"])
    assert (a.tty, a.name) == (True, "web")
    assert [w for w in a.argv if w != "--"] == ["sh", "-c", "echo -n x"]
    a = cli.parse(["exec", "web", "ls", "-l"])
    assert a.argv == ["ls", "-l"] and a.tty is False
    assert cli.parse(["signal", "SIGHUP", "web"]).signal == "SIGHUP"
    assert cli.parse(["pid"]).name is None
    assert cli.parse(["events", "-f"]).follow is True
    assert cli.parse([]).command is None


def test_command_word_skips_global_options() -> None:
    assert cli.command_of(["-s", "/x", "-c", "/y", "--json", "status"]) == "status"
    assert cli.command_of(["-s/x", "--config=/y", "stop", "a"]) == "stop"
    assert cli.command_of(["--help"]) is None
    assert cli.command_of([]) is None


def test_check_signal() -> None:
    assert cli.check_signal("hup") == "HUP"
    assert cli.check_signal("SIGTERM") == "TERM"
    assert cli.check_signal("9") == "9"
    for bad in ("NOPE", "0", "999", "SIG_DFL", "DFL"):
        with pytest.raises(cl.UsageError):
            cli.check_signal(bad)


# --------------------------------------------------------------------------- discovery


def test_socket_discovery_order(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[supervisor]\nsocket = "/from/config.sock"\n[containers.a]\n'
                   'command = ["/bin/true"]\n')
    env = {"NSVISOR_SOCKET": "/from/env.sock"}
    assert cl.find_socket("/from/option.sock", str(cfg), env) == "/from/option.sock"
    assert cl.find_socket(None, str(cfg), env) == "/from/config.sock"
    assert cl.find_socket(None, None, env) == "/from/env.sock"
    assert cl.find_socket(None, None, {}) == "/run/nsvisor/nsvisor.sock"
    bare = tmp_path / "bare.toml"
    bare.write_text("[containers.a]\ncommand = [\"/bin/true\"]\n")
    assert cl.find_socket(None, str(bare), env) == "/from/env.sock"


def test_bad_config_file_is_usage_error(tmp_path: Path) -> None:
    code, _, err = run(["-c", str(tmp_path / "missing.toml"), "status"])
    assert code == 2 and "cannot read config" in err and "-c" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor\n")
    code, _, err = run(["-c", str(bad), "status"])
    assert code == 2 and "not valid TOML" in err and err.count("\n") == 1
    typed = tmp_path / "typed.toml"
    typed.write_text("[supervisor]\nsocket = 3\n")
    code, _, err = run(["-c", str(typed), "status"])
    assert code == 2 and "[supervisor].socket" in err


def test_env_socket_used_by_the_command(sock_path: str, serve: Callable,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    serve(route({"GET /v1/version": {"version": "9.9", "api": 1}}))
    monkeypatch.setenv("NSVISOR_SOCKET", sock_path)
    assert run(["version"])[:2] == (0, "9.9\n")


def test_quote() -> None:
    assert cl.quote("web-1.a_b") == "web-1.a_b"
    assert cl.quote("a b/c?") == "a%20b%2Fc%3F"
    assert cl.quote("é") == "%C3%A9"


# --------------------------------------------------------------------------- client


def test_content_length_answer_and_request_shape(sock_path: str, serve: Callable) -> None:
    s = serve(route({"POST /v1/start": {"results": [{"name": "web", "ok": True,
                                                     "error": None}]}}))
    answer = Client(sock_path).post("/v1/start", {"names": ["web"], "wait": True})
    assert answer["results"][0]["ok"] is True
    raw, fds = s.requests[0]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/start HTTP/1.1"
    assert "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {"names": ["web"], "wait": True}
    assert fds == []


def test_chunked_answer(sock_path: str, serve: Callable) -> None:
    payload = json.dumps({"lines": ["a", "b" * 5000]}).encode()
    parts = [payload[:7], payload[7:4000], payload[4000:]]
    body = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in parts)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    serve(lambda d, f: [head, body[:10], 0.05, body[10:], b"0\r\nX-Trailer: 1\r\n\r\n"])
    assert Client(sock_path).get("/v1/x") == {"lines": ["a", "b" * 5000]}


def test_body_until_eof(sock_path: str, serve: Callable) -> None:
    serve(lambda d, f: [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b'{"pid":',
                        0.05, b" 42}"])
    assert Client(sock_path).get("/v1/pid") == {"pid": 42}


def test_ndjson_stream_yields_lines_as_they_arrive(sock_path: str, serve: Callable) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
    serve(lambda d, f: [head, b'{"line": "one"}\n{"li', 0.05, b'ne": "two"}\n', 0.5,
                        b'{"line": "three"}\n'])
    seen = []
    t0 = time.monotonic()
    for item in Client(sock_path).stream("/v1/containers/web/logs?follow=1"):
        seen.append((item["line"], time.monotonic() - t0))
    assert [s[0] for s in seen] == ["one", "two", "three"]
    assert seen[1][1] < 0.4 <= seen[2][1], "lines must not wait for the end of the stream"


def test_server_that_closes_early(sock_path: str, serve: Callable) -> None:
    serve(lambda d, f: [])
    with pytest.raises(ProtocolError, match="without answering"):
        Client(sock_path).get("/v1/version")


def test_truncated_body(sock_path: str, serve: Callable) -> None:
    serve(lambda d, f: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\": 1"])
    with pytest.raises(ProtocolError, match="middle of an answer"):
        Client(sock_path).get("/v1/version")


def test_garbage_answers(sock_path: str, serve: Callable) -> None:
    answers = iter([[b"SSH-2.0-OpenSSH\r\n"], [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"],
                    [b"HTTP/1.1 200 OK\r\nContent-Le"]])
    serve(lambda d, f: next(answers))
    for pattern in ("bad status line", "not JSON", "headers"):
        code, out, err = run(["-s", sock_path, "version"])
        assert code == 1 and out == "" and pattern in err and err.count("\n") == 1


def test_fds_ride_with_the_request(sock_path: str, serve: Callable, tmp_path: Path) -> None:
    seen: list[bytes] = []

    def handler(data: bytes, fds: list[int]) -> list:
        for fd in fds:
            os.write(fd, b"via fd\n") if fd == fds[1] else None
        seen.append(data)
        return [http(200, {"exit_code": 0})]

    serve(handler)
    target = tmp_path / "out"
    with open(target, "wb") as f, Connection(sock_path) as conn:
        conn.send("POST", "/v1/containers/web/exec", {"command": ["true"]},
                  [0, f.fileno(), 2])
        assert conn.response().json() == {"exit_code": 0}
    assert target.read_bytes() == b"via fd\n"
    assert seen[0].startswith(b"POST /v1/containers/web/exec HTTP/1.1\r\n")


# --------------------------------------------------------------------------- exit codes


def test_unreachable_is_4_for_every_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    for argv in (["status"], ["start", "web"], ["version"], ["pid"], ["tail", "-f", "x"]):
        code, out, err = run(["-s", missing, *argv])
        assert code == 4, argv
        assert err == f"nsvisorctl: cannot reach nsvisord at {missing}: no such socket " \
                      "(is it running? try -s)\n"
    # a socket file nobody listens on: connection refused
    refused = str(tmp_path / "r.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(refused)
    s.close()
    code, _, err = run(["-s", refused, "stop", "all"])
    assert code == 4 and "connection refused" in err


def test_status_exit_codes(sock_path: str, serve: Callable) -> None:
    serve(route({"GET /v1/containers": STATUS}))
    assert run(["-s", sock_path, "status", "web"])[0] == 0
    assert run(["-s", sock_path, "status", "api"])[0] == 0  # STARTING counts as running
    assert run(["-s", sock_path, "status", "front:*"])[0] == 0
    assert run(["-s", sock_path, "status", "db"])[0] == 3
    assert run(["-s", sock_path, "status"])[0] == 3
    code, out, err = run(["-s", sock_path, "status", "web", "nope"])
    assert code == 4 and out.startswith("web ")
    assert err == "nsvisorctl: no such container: nope (see 'nsvisorctl avail')\n"


def test_status_json(sock_path: str, serve: Callable) -> None:
    serve(route({"GET /v1/containers": STATUS}))
    code, out, _ = run(["-s", sock_path, "status", "--json", "db", "web"])
    rows = json.loads(out)
    assert code == 3 and [r["name"] for r in rows] == ["web", "db"]  # config order
    for key in ("name", "state", "pid", "restarts", "exit_code", "uptime_seconds"):
        assert key in rows[0]


def results(*items: tuple[str, str | None]) -> dict:
    return {"results": [{"name": n, "ok": e is None, "error": e} for n, e in items]}


@pytest.mark.parametrize(("argv", "answer", "code", "lines"), [
    (["start", "web"], results(("web", None)), 0, ["web: started"]),
    (["start", "--no-wait", "web"], results(("web", None)), 0, ["web: starting"]),
    (["start", "web"], results(("web", "already started")), 0,
     ["web: ERROR (already started)"]),
    (["start", "all"], results(("web", None), ("db", "spawn error (exec /x: ENOENT)")), 7,
     ["web: started", "db: ERROR (spawn error (exec /x: ENOENT))"]),
    (["stop", "web"], results(("web", "not running")), 0, ["web: ERROR (not running)"]),
    (["stop", "web"], results(("web", None)), 0, ["web: stopped"]),
    (["restart", "web"], results(("web", None)), 0, ["web: restarted"]),
    (["restart", "web"], results(("web", "spawn error (x)")), 7, ["web: ERROR (spawn error (x))"]),
    (["signal", "HUP", "web"], results(("web", None)), 0, ["web: signalled"]),
    (["signal", "HUP", "web"], results(("web", "not running")), 7, ["web: ERROR (not running)"]),
])
def test_lifecycle_output_and_codes(sock_path: str, serve: Callable, argv: list[str],
                                    answer: dict, code: int, lines: list[str]) -> None:
    verb = argv[0]
    s = serve(route({f"POST /v1/{verb}": answer}))
    got, out, err = run(["-s", sock_path, *argv])
    assert (got, out.splitlines()) == (code, lines)
    assert (err == "") == (code == 0)
    body = json.loads(s.requests[0][0].partition(b"\r\n\r\n")[2])
    assert body["names"] == argv[-1:]
    if verb == "signal":
        assert body["signal"] == "HUP"
    else:
        assert body["wait"] is ("--no-wait" not in argv)


def test_many_failures_fit_one_line(sock_path: str, serve: Callable) -> None:
    names = [f"web{i:03d}" for i in range(120)]
    serve(route({"POST /v1/start": results(*((n, "spawn error (x)") for n in names))}))
    code, out, err = run(["-s", sock_path, "start", "all"])
    assert (code, len(out.splitlines())) == (7, 120)
    assert err == ("nsvisorctl: start failed for web000, web001, web002 and 117 more "
                   "(see 'nsvisorctl tail web000 stderr')\n")


def test_unknown_name_is_4(sock_path: str, serve: Callable) -> None:
    serve(route({"POST /v1/start": [error(404, "no such container: foo", "not_found")]}))
    code, out, err = run(["-s", sock_path, "start", "foo"])
    assert (code, out) == (4, "")
    assert err == "nsvisorctl: no such container: foo (see 'nsvisorctl avail')\n"


def test_daemon_errors_are_one_line(sock_path: str, serve: Callable) -> None:
    serve(route({
        "POST /v1/remove": [error(409, "web: still running (stop it first)", "conflict")],
        "POST /v1/reread": [error(400, "/etc/x.toml: containers.a.command: bad\nmore",
                                  "bad_request")],
        "GET /v1/version": [b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\n"
                            b"oops"],
    }))
    code, _, err = run(["-s", sock_path, "remove", "web"])
    assert code == 1 and "still running" in err and "nsvisorctl stop web" in err
    code, _, err = run(["-s", sock_path, "reread"])
    assert code == 1 and err.count("\n") == 1 and "containers.a.command" in err
    code, _, err = run(["-s", sock_path, "version"])
    assert code == 1 and err == "nsvisorctl: nsvisord answered 500 Internal Server Error\n"


def test_pid_commands(sock_path: str, serve: Callable) -> None:
    serve(route({"GET /v1/pid": {"pid": 77}, "GET /v1/containers": STATUS}))
    assert run(["-s", sock_path, "pid"])[:2] == (0, "77\n")
    assert run(["-s", sock_path, "pid", "web"])[:2] == (0, "120\n")
    code, out, err = run(["-s", sock_path, "pid", "db"])
    assert (code, out) == (7, "0\n") and "not running" in err
    assert run(["-s", sock_path, "pid", "all"])[:2] == (0, "120\n121\n0\n")
    assert run(["-s", sock_path, "pid", "nope"])[0] == 4


def test_exec_exit_code_and_refusals(sock_path: str, serve: Callable) -> None:
    answers = iter([[http(200, {"exit_code": 5})],
                    [error(409, "web is not running (STOPPED): start it first", "conflict")],
                    [http(200, {"exit_code": 0})]])
    s = serve(lambda d, f: next(answers))
    assert run(["-s", sock_path, "exec", "web", "--", "sh", "-c", "exit 5"])[0] == 5
    code, _, err = run(["-s", sock_path, "exec", "web", "--", "true"])
    assert code == 7 and "not running" in err
    assert run(["-s", sock_path, "exec", "-e", "A=1", "web", "env"])[0] == 0
    raw, fds = s.requests[0]
    assert len(fds) == 3
    assert json.loads(raw.partition(b"\r\n\r\n")[2]) == \
        {"command": ["sh", "-c", "exit 5"], "tty": False, "env": {}}
    assert json.loads(s.requests[2][0].partition(b"\r\n\r\n")[2])["env"] == {"A": "1"}


def test_reread_update_add_avail_output(sock_path: str, serve: Callable) -> None:
    serve(route({
        "POST /v1/reread": {"added": ["new"], "changed": ["web"], "removed": ["old"]},
        "POST /v1/update": {"added": [], "changed": [], "removed": []},
        "POST /v1/add": results(("new", None), ("web", "already active")),
        "GET /v1/avail": [{"name": "web", "in_use": True, "autostart": True,
                           "priority": 999, "group": "web"},
                          {"name": "new", "in_use": False, "autostart": False,
                           "priority": 5, "group": "new"}],
    }))
    assert run(["-s", sock_path, "reread"])[:2] == \
        (0, "new: available\nold: disappeared\nweb: changed\n")
    assert run(["-s", sock_path, "update"])[:2] == (0, "No config updates to containers\n")
    assert run(["-s", sock_path, "add", "new", "web"])[:2] == \
        (0, "new: added process group\nweb: ERROR (already active)\n")
    code, out, _ = run(["-s", sock_path, "avail"])
    assert code == 0 and out.split("\n")[0].split() == ["web", "in", "use", "auto", "999"]
    assert out.split("\n")[1].split() == ["new", "avail", "manual", "5"]


def test_tail_and_events(sock_path: str, serve: Callable) -> None:
    nd = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
    s = serve(route({
        "GET /v1/containers/web/logs": {"lines": ["a", "b"]},
        "GET /v1/events": {"events": [{"time": 0, "type": "state", "container": "web",
                                       "old": "RUNNING", "new": "EXITED"}]},
    }))
    assert run(["-s", sock_path, "tail", "-5", "web", "stderr"])[:2] == (0, "a\nb\n")
    target = s.requests[0][0].split(b" ")[1].decode()
    assert target == "/v1/containers/web/logs?stream=stderr&lines=5&follow=0"
    code, out, _ = run(["-s", sock_path, "events"])
    assert code == 0 and "web state RUNNING -> EXITED" in out
    s.handler = lambda d, f: [nd, b'{"line": "x"}\n{"line": "y"}\n']
    # The daemon ended the stream (stopped, restarted): said so, not a silent success.
    assert run(["-s", sock_path, "tail", "-f", "web"]) == (
        1, "x\ny\n", "nsvisorctl: nsvisord ended the stream: it stopped or restarted, or "
        "this reader fell behind (run 'nsvisorctl tail -f web' again)\n")
    assert b"follow=1" in s.requests[-1][0]
    long = {"time": 0, "type": "exited", "container": "w" * 60, "reason": "exit status 3"}
    s.handler = lambda d, f: [nd, json.dumps(long).encode() + b'\n'
                              b'{"time": 0, "type": "reload", "ok": true}\n']
    code, out, err = run(["-s", sock_path, "events", "-f"])
    assert [len(line) <= 80 for line in out.splitlines()] == [True, True]  # a terminal's
    assert out.splitlines()[0].endswith("...")
    assert (code, err) == (1, "nsvisorctl: nsvisord ended the stream: it stopped or "
                              "restarted, or this reader fell behind (run 'nsvisorctl "
                              "events -f' again)\n")


# --------------------------------------------------------------------------- formatting


def test_status_table_fits_80_columns_and_aligns() -> None:
    rows = [dict(r) for r in STATUS]
    rows.append({"name": "a" * 30, "state": "BACKOFF", "restarts": 1234,
                 "description": "Exited too quickly (process log may have details) " * 3})
    lines = cli.format_status(rows, 80)
    assert len(lines) == 4
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split()[:2] == ["web", "RUNNING"]
    assert lines[0].endswith("2 restarts")
    assert lines[3].endswith("1234 restarts") and "..." in lines[3]
    state_cols = {line.index(r["state"]) for line, r in zip(lines, rows, strict=True)}
    assert len(state_cols) == 1, "states must line up"
    assert len({len(line) for line in lines}) == 1, "restarts must line up on the right"
    # a name longer than any terminal still gets its own line, within the width
    huge = cli.format_status([{"name": "n" * 90, "state": "RUNNING", "restarts": 0,
                               "description": "pid 1"}], 80)
    assert len(huge[0]) <= 80


def test_status_table_other_widths() -> None:
    rows = [{"name": f"c{i}", "state": "RUNNING", "restarts": i,
             "description": f"pid {i}, uptime 0:00:0{i}"} for i in range(3)]
    for width in (40, 80, 200):
        assert all(len(line) <= width for line in cli.format_status(rows, width))
    assert cli.format_status([], 80) == []


def test_top_table_and_inspect_lines() -> None:
    lines = cli.format_table(["HOST PID", "PID", "USER", "COMMAND"],
                             [["123", "1", "0", "nsv-init"], ["124", "2", "0", "x" * 200]], 80)
    assert lines[0].split() == ["HOST", "PID", "PID", "USER", "COMMAND"]
    assert all(len(line) <= 80 for line in lines)
    info = {"status": STATUS[0], "config": {"command": ["/bin/sh", "-c", "x"]},
            "namespaces": {"mnt": 1, "pid": 2}, "cgroup": ["/a", "/b"],
            "logs": {"stdout": "/l/o", "stderr": "/l/e"},
            "history": [{"exit_code": 3, "reason": "exit status 3", "at": 0}]}
    text = "\n".join(cli.format_inspect(info, 80))
    assert "state:       RUNNING" in text and "namespaces:  mnt:1 pid:2" in text
    assert "cgroup:      /a /b" in text and "exit status 3" in text


def test_truncate() -> None:
    assert cli.truncate("abcdef", 10) == "abcdef"
    assert cli.truncate("abcdefghijkl", 8) == "abcde..."
    assert len(cli.truncate("x" * 100, 2)) == 2


def test_no_traceback_on_unexpected_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object) -> None:
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "version", (boom, "x"))
    code, out, err = run(["-s", "/nonexistent", "version"])
    assert code == 1 and out == ""
    assert err == "nsvisorctl: unexpected RuntimeError: kaboom second line (please report it)\n"


# --------------------------------------------------------------------------- shell


def test_shell_completion(sock_path: str, serve: Callable) -> None:
    serve(route({"GET /v1/containers": STATUS}))
    sh = Shell(cli.Context(Client(sock_path)))
    assert sh.candidates([], "st") == ["start ", "status ", "stop "]
    assert sh.candidates(["start"], "") == ["all ", "api ", "db ", "front:* ", "web "]
    assert sh.candidates(["start", "web"], "d") == ["db "]
    assert sh.candidates(["tail", "web"], "std") == ["stderr ", "stdout "]
    assert sh.candidates(["tail", "-f"], "w") == ["web "]
    assert sh.candidates(["reread"], "") == []
    assert sh.candidates(["help"], "re") == ["reload ", "remove ", "reread ", "restart "]
    assert sh.candidates(["exec", "web", "--"], "") == []


def test_shell_runs_commands_and_survives_errors(sock_path: str, serve: Callable) -> None:
    serve(route({"GET /v1/containers": STATUS, "GET /v1/version": {"version": "1.2"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.cli.main", "-s", sock_path],
        input="version\nbogus\nstatus nope\nstart\nhelp stop\n'unclosed\nstatus web\nquit\n"
              "version\n",
        capture_output=True, text=True, timeout=30, env={**os.environ, "HOME": "/tmp"})
    assert proc.returncode == 0
    assert proc.stdout.startswith("nsvisorctl> 1.2\n")
    assert "web  " in proc.stdout and "RUNNING" in proc.stdout
    assert "usage: nsvisorctl stop" in proc.stdout
    assert proc.stdout.count("1.2\n") == 1, "quit ends the shell"
    errs = proc.stderr.splitlines()
    assert len(errs) == 4 and all(e.startswith("nsvisorctl: ") for e in errs)
    assert "Traceback" not in proc.stderr


def test_shell_ends_on_eof(sock_path: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "-s", sock_path],
                          input="", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "nsvisorctl> \n"


# --------------------------------------------------------------------------- weight


def test_import_path_stays_light() -> None:
    code = ("import sys; import supervisor.cli.main as m; m.parse(['status']); "
            "print(' '.join(sorted(sys.modules)))")
    out = run_python(code, check=True).stdout.split()
    for heavy in ("anyio", "structlog", "pyroute2", "prometheus_client", "readline",
                  "supervisor.daemon", "supervisor.runtime", "supervisor.model", "asyncio",
                  "shutil", "urllib.request", "http.client", "termios"):
        assert heavy not in out, heavy
