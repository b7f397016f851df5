"""The control API (docs/api.md): HTTP/1.1 + JSON on the daemon's Unix socket.

Each connection is served in its own task; a handler that fails answers with one JSON
error and the daemon goes on serving everyone else. Streams (``logs?follow=1``,
``events?follow=1``) end when the client goes away: a task watches the connection for
EOF and cancels the stream, so a vanished client costs nothing.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from anyio.abc import SocketStream

from .. import __version__
from ..model.units import ConfigError
from .http import (
    MAX_HEAD,
    HTTPError,
    Request,
    error_response,
    ndjson,
    read_request,
    response,
    stream_head,
)
from .inspect import inspect, top
from .logtail import follow_lines, last_lines
from .openapi import document
from .supervisor import ExecRefused, Supervisor

log = structlog.get_logger("nsvisord.api")
Handler = Callable[..., Awaitable[Any]]


_ALL = 1_000_000  # a count of events larger than the bus ever keeps


class ApiServer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        for method, path, handler in (
            ("GET", "/v1/version", self.version),
            ("GET", "/v1/pid", self.pid),
            ("GET", "/v1/openapi.json", self.openapi),
            ("GET", "/v1/containers", self.list_containers),
            ("GET", "/v1/containers/{name}", self.get_container),
            ("GET", "/v1/containers/{name}/inspect", self.inspect),
            ("GET", "/v1/containers/{name}/top", self.top),
            ("GET", "/v1/containers/{name}/logs", self.logs),
            ("POST", "/v1/containers/{name}/logs/clear", self.clear_logs),
            ("POST", "/v1/containers/{name}/exec", self.exec),
            ("POST", "/v1/start", self.start),
            ("POST", "/v1/stop", self.stop),
            ("POST", "/v1/restart", self.restart),
            ("POST", "/v1/signal", self.signal),
            ("GET", "/v1/events", self.events),
            ("POST", "/v1/reread", self.reread),
            ("POST", "/v1/update", self.update),
            ("POST", "/v1/add", self.add),
            ("POST", "/v1/remove", self.remove),
            ("GET", "/v1/avail", self.avail),
            ("POST", "/v1/reload", self.reload),
            ("POST", "/v1/shutdown", self.shutdown),
        ):
            pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
            self.routes.append((method, pattern, handler))

    # ------------------------------------------------------------------ serving

    async def serve(self, path: str, group: str = "", *, task_status: Any = None) -> None:
        listener = await _listen(path, group)
        log.info("api listening", socket=path)
        if task_status is not None:
            task_status.started()
        try:
            async with listener:
                await listener.serve(self._connection)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _connection(self, stream: SocketStream) -> None:
        async with stream:
            fds: list[int] = []
            try:
                try:
                    first, fds = await stream.receive_fds(MAX_HEAD, 3)
                    if not first:
                        return
                    request = await read_request(stream, first, fds)
                    await self._dispatch(stream, request)
                except HTTPError as e:
                    await stream.send(error_response(e.status, e.message))
                except (anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError):
                    return
                except Exception as e:  # noqa: BLE001 - one request must not kill the daemon
                    log.exception("api handler failed")
                    with contextlib.suppress(Exception):
                        await stream.send(error_response(500, f"internal error: {e!r}"))
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    async def _dispatch(self, stream: SocketStream, request: Request) -> None:
        allowed = []
        for method, pattern, handler in self.routes:
            match = pattern.match(request.path)
            if not match:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            args = match.groupdict()
            if "name" in args:
                self._unit(args["name"])
            result = await handler(request, stream, **args)
            if result is not None:
                await stream.send(response(200, result))
            return
        if allowed:
            raise HTTPError(405, f"{request.method} is not allowed on {request.path} "
                                 f"(use {', '.join(allowed)})")
        raise HTTPError(404, f"no such route: {request.method} {request.path} "
                             "(see GET /v1/openapi.json)")

    def _unit(self, name: str) -> Any:
        if name not in self.sup.units:
            raise HTTPError(404, f"no such container: {name}")
        return self.sup.units[name]

    def _names(self, body: dict[str, Any], key: str = "names",
               allow_empty: bool = False) -> list[str]:
        names = body.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise HTTPError(400, f"{key}: must be a list of strings")
        if not names and not allow_empty:
            raise HTTPError(400, f"{key}: name at least one container (or \"all\")")
        try:
            return self.sup.resolve(names)
        except KeyError as e:
            raise HTTPError(404, f"no such container: {e.args[0]}") from None

    @staticmethod
    def _wait(body: dict[str, Any]) -> bool:
        wait = body.get("wait", True)
        if not isinstance(wait, bool):
            raise HTTPError(400, "wait: must be true or false")
        return wait

    @staticmethod
    def _results(errors: dict[str, str | None]) -> dict[str, Any]:
        return {"results": [{"name": n, "ok": e is None, "error": e}
                            for n, e in errors.items()]}

    # ------------------------------------------------------------------ routes

    async def version(self, request: Request, stream: SocketStream) -> Any:
        return {"version": __version__, "api": 1}

    async def pid(self, request: Request, stream: SocketStream) -> Any:
        return {"pid": os.getpid()}

    async def openapi(self, request: Request, stream: SocketStream) -> Any:
        return document(self.routes)

    async def list_containers(self, request: Request, stream: SocketStream) -> Any:
        return [self.sup.status(name) for name in self.sup.units]

    async def get_container(self, request: Request, stream: SocketStream, name: str) -> Any:
        return self.sup.status(name)

    async def inspect(self, request: Request, stream: SocketStream, name: str) -> Any:
        return await anyio.to_thread.run_sync(inspect, self.sup, name)

    async def top(self, request: Request, stream: SocketStream, name: str) -> Any:
        return {"processes": await anyio.to_thread.run_sync(top, self.sup, name)}

    async def start(self, request: Request, stream: SocketStream) -> Any:
        body = request.json()
        names, wait = self._names(body), self._wait(body)
        return self._results(await self.sup.start(names, wait=wait))

    async def stop(self, request: Request, stream: SocketStream) -> Any:
        body = request.json()
        names, wait = self._names(body), self._wait(body)
        if not wait:
            errors = {n: self.sup.units[n].policy.stop_error() for n in names}
            self.sup.spawn_task(self.sup.stop, names)
            return self._results(errors)
        return self._results(await self.sup.stop(names))

    async def restart(self, request: Request, stream: SocketStream) -> Any:
        body = request.json()
        names, wait = self._names(body), self._wait(body)
        return self._results(await self.sup.restart(names, wait=wait))

    async def signal(self, request: Request, stream: SocketStream) -> Any:
        body = request.json()
        names = self._names(body)
        sig = _parse_signal(body.get("signal"))
        return self._results(await self.sup.signal(names, sig))

    async def logs(self, request: Request, stream: SocketStream, name: str) -> Any:
        which = request.query.get("stream", "stdout")
        if which not in ("stdout", "stderr"):
            raise HTTPError(400, f"stream={which!r}: use stdout or stderr")
        lines = request.count("lines", 10, 100_000)
        path = self.sup.log_path(name, which)
        if not request.flag("follow"):
            return {"lines": await anyio.to_thread.run_sync(last_lines, path, lines)}
        await stream.send(stream_head())

        async def pump() -> None:
            async for line in follow_lines(path, lines):
                await stream.send(ndjson({"line": line}))

        await _until_disconnect(stream, pump)
        return None

    async def clear_logs(self, request: Request, stream: SocketStream, name: str) -> Any:
        for which in ("stdout", "stderr"):
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.sup.log_path(name, which), 0)
        return {"ok": True}

    async def exec(self, request: Request, stream: SocketStream, name: str) -> Any:
        body = request.json()
        command = body.get("command")
        if not isinstance(command, list) or not command or \
                not all(isinstance(a, str) for a in command):
            raise HTTPError(400, "command: must be a non-empty list of strings")
        env = body.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise HTTPError(400, "env: must be an object of strings")
        tty = body.get("tty", False)
        if not isinstance(tty, bool):
            raise HTTPError(400, "tty: must be true or false")
        if len(request.fds) != 3:
            raise HTTPError(400, "send exactly 3 fds (stdin, stdout, stderr) with the request "
                                 f"(SCM_RIGHTS); got {len(request.fds)}")
        try:
            code = await self.sup.exec(name, command, env, tuple(request.fds), tty)
        except ExecRefused as e:
            raise HTTPError(409, f"{e}: start it first") from None
        return {"exit_code": code}

    async def events(self, request: Request, stream: SocketStream) -> Any:
        bus = self.sup.events
        # More than are kept means all of them: a client need not know how many that is.
        if not request.flag("follow"):
            return {"events": bus.last(request.count("recent", _ALL, _ALL))}
        n = request.count("recent", 0, _ALL)
        # Subscribed before the head is sent, and the recent ones taken in the same step:
        # a client that has read the head misses no event, and sees none twice.
        with bus.subscribe() as receive:
            await stream.send(stream_head() + b"".join(ndjson(e) for e in bus.last(n)))

            async def pump() -> None:
                async for event in receive:
                    await stream.send(ndjson(event))

            await _until_disconnect(stream, pump)
        return None

    async def reread(self, request: Request, stream: SocketStream) -> Any:
        try:
            return await self.sup.reread()
        except (OSError, ValueError) as e:
            raise HTTPError(400, str(e)) from None

    async def update(self, request: Request, stream: SocketStream) -> Any:
        body = request.json()
        names = body.get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise HTTPError(400, "names: must be a list of strings")
        try:
            return await self.sup.update([] if names in ([], ["all"]) else names)
        except (OSError, ValueError) as e:
            raise HTTPError(400, str(e)) from None

    async def add(self, request: Request, stream: SocketStream) -> Any:
        body = request.json()
        names = body.get("names", [])
        if not isinstance(names, list) or not names or \
                not all(isinstance(n, str) for n in names):
            raise HTTPError(400, "names: must be a non-empty list of strings")
        try:
            return self._results(await self.sup.add(names))
        except (OSError, ValueError) as e:
            raise HTTPError(400, str(e)) from None

    async def remove(self, request: Request, stream: SocketStream) -> Any:
        names = self._names(request.json())
        results = await self.sup.remove(names)
        if any(results.values()):
            raise HTTPError(409, "; ".join(f"{n}: {e}" for n, e in results.items() if e))
        return self._results(results)

    async def avail(self, request: Request, stream: SocketStream) -> Any:
        try:
            return await self.sup.avail()
        except (OSError, ValueError) as e:
            raise HTTPError(400, str(e)) from None

    async def reload(self, request: Request, stream: SocketStream) -> Any:
        try:
            await self.sup.restart_all()
        except (OSError, ValueError) as e:
            raise HTTPError(400, str(e)) from None
        return {"ok": True}

    async def shutdown(self, request: Request, stream: SocketStream) -> Any:
        leave = request.json().get("leave_running", False)
        if not isinstance(leave, bool):
            raise HTTPError(400, "leave_running: must be true or false")
        if self.sup.shutdown_requested.is_set():
            if leave != self.sup.leave_running:  # a stop of everything has begun, or not
                raise HTTPError(409, "nsvisord is already shutting down, "
                                + ("leaving" if self.sup.leave_running else "stopping")
                                + " its containers")
            return {"ok": True, "leave_running": leave}
        self.sup.leave_running = leave
        # Answered before the request takes effect: leaving exits at once, and would
        # otherwise cancel this answer on its way. A caller gone meanwhile changes nothing.
        try:
            await stream.send(response(200, {"ok": True, "leave_running": leave}))
        finally:
            self.sup.shutdown_requested.set()
        return None


async def _until_disconnect(stream: SocketStream, pump: Callable[[], Awaitable[None]]) -> None:
    """Run ``pump`` until it ends or the client hangs up, whichever comes first."""
    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            with contextlib.suppress(Exception):
                while await stream.receive(4096):
                    pass  # a streaming client has nothing more to say
            tg.cancel_scope.cancel()

        async def run() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await pump()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run)


def _parse_signal(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 < value < signal.NSIG:
            return value
    elif isinstance(value, str) and value:
        name = value.upper()
        if name.isdigit() and 0 < int(name) < signal.NSIG:
            return int(name)
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal.Signals, name):
            return int(signal.Signals[name])
    raise HTTPError(400, f"signal: {value!r} is not a signal (e.g. \"HUP\", \"SIGTERM\", 15)")


async def _listen(path: str, group: str) -> Any:
    """Bind the socket: 0600 root-only, or 0660 for ``group``; refuse a live socket."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its daemon is gone
        else:
            raise OSError(f"{path} is in use: is another nsvisord running?")
        finally:
            probe.close()
    try:
        gid = grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        raise ConfigError(f"no such group {group!r} on this host",
                          "supervisor.socket_group") from None
    old_umask = os.umask(0o177 if gid is None else 0o117)
    try:
        listener = await anyio.create_unix_listener(path)
    finally:
        os.umask(old_umask)
    if gid is not None:
        os.chown(path, 0, gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    return listener

