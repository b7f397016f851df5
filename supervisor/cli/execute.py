"""``nsvisorctl exec``: our stdin, stdout and stderr (or a pty's slave, with ``-t``) go to
nsvisord with the request (SCM_RIGHTS, same sendmsg); the answer comes when the command
ends. With a pty, this process relays between the master and the terminal meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from typing import Any

from .client import Client, quote

DRAIN_SECONDS = 0.2  # after the answer: output still in the pty's buffer


def _std_fds() -> tuple[list[int], list[int]]:
    """fds 0, 1, 2; a closed one is replaced by /dev/null (returned to close later)."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            opened.append(null)
            fds.append(null)
    return fds, opened


def run_exec(client: Client, name: str, argv: list[str], env: dict[str, str],
             tty: bool) -> Any:
    path = f"/v1/containers/{quote(name)}/exec"
    body = {"command": argv, "tty": tty, "env": env}
    if not tty:
        fds, opened = _std_fds()
        try:
            conn, resp = client.open("POST", path, body, fds)
        finally:
            for fd in opened:
                os.close(fd)
        with conn:
            return resp.json()
    return _run_pty(client, path, body)


def _winsize(fd: int) -> bytes | None:
    import fcntl
    import termios

    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def _set_winsize(fd: int, size: bytes | None) -> None:
    import fcntl
    import termios

    if size:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


def _run_pty(client: Client, path: str, body: dict[str, Any]) -> Any:
    import termios
    import tty

    from .client import Connection

    master, slave = os.openpty()
    stdin_tty = os.isatty(0)
    saved = None
    old_winch = None
    conn = Connection(client.path)
    try:
        term = 0 if stdin_tty else (1 if os.isatty(1) else None)
        if term is not None:
            _set_winsize(slave, _winsize(term))
            old_winch = signal.signal(
                signal.SIGWINCH, lambda *_: _set_winsize(master, _winsize(term)))
        try:
            conn.send("POST", path, body, [slave, slave, slave])
        finally:
            os.close(slave)  # the daemon has its copy: EIO on the master once all close
        if stdin_tty:
            saved = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSADRAIN)  # as ssh does: what was typed ahead goes too
        return _relay(conn, master, stdin_tty)
    finally:
        conn.close()
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        os.close(master)


def _relay(conn: Any, master: int, stdin_tty: bool) -> Any:
    """Copy stdin -> master and master -> stdout until nsvisord answers."""
    sock = conn.sock.fileno()
    stdin_open = True
    master_open = True
    while True:
        watch = [sock] + ([master] if master_open else []) + ([0] if stdin_open else [])
        try:
            ready, _, _ = select.select(watch, [], [])
        except InterruptedError:
            continue
        if master in ready:
            master_open = _pump_master(master)
        if 0 in ready:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if data and master_open:
                _write_all(master, data)
            elif not data:
                stdin_open = False
                if not stdin_tty and master_open:  # a pipe ended: ^D for the pty's reader
                    with contextlib.suppress(OSError):
                        _write_all(master, b"\x04")
        if sock in ready:
            resp = conn.response()
            resp.raise_for_status()
            answer = resp.json()
            if master_open:
                _drain(master)
            return answer


def _pump_master(master: int) -> bool:
    try:
        data = os.read(master, 65536)
    except OSError:  # EIO: every slave is closed
        return False
    if not data:
        return False
    _write_all(1, data)
    return True


def _drain(master: int) -> None:
    while select.select([master], [], [], DRAIN_SECONDS)[0]:
        if not _pump_master(master):
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
