"""The daemon's log sink against a real FIFO: a reader that stalls must not stall the
writer, and what is written arrives whole and in order."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.daemon.logs import LogSink

from .conftest import run_python


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[str, int]]:
    path = str(tmp_path / "log.fifo")
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # first, so a writer may open
    try:
        yield path, reader
    finally:
        os.close(reader)


def _read_all(reader: int, until: float) -> bytes:
    """Everything the FIFO holds, polling until ``until`` (monotonic) passes quietly."""
    chunks: list[bytes] = []
    while time.monotonic() < until:
        try:
            chunk = os.read(reader, 1 << 16)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_stalled_reader_costs_the_writer_nothing_and_loses_no_queued_line(
        fifo: tuple[str, int]) -> None:
    path, reader = fifo
    sink = LogSink(path)
    lines = 3 * LogSink.MAX_PENDING

    def write_lines() -> None:
        for i in range(lines):  # far more than the FIFO holds: nobody reads yet
            sink.write(f'{{"n": {i}, "pad": "{"x" * 100}"}}\n')

    writing = threading.Thread(target=write_lines, daemon=True)
    writing.start()
    writing.join(10)
    # A sink that blocks in os.write at the first full FIFO would still be writing.
    assert not writing.is_alive(), "write() blocked on a stalled reader"
    assert not sink.drain(timeout=0.2)  # the reader stalls: lines stay queued
    assert sink.dropped > 0  # with MAX_PENDING lines queued, a new one is dropped

    got: list[bytes] = []
    reading = threading.Thread(target=lambda: got.append(
        _read_all(reader, time.monotonic() + 10)))
    reading.start()
    assert sink.drain(timeout=10)
    os.close(sink.fd)  # the reader sees EOF
    reading.join(15)
    received = got[0].split(b"\n")
    assert received[-1] == b""  # ends with a whole line
    numbers = [int(line.split(b",")[0].removeprefix(b'{"n": ')) for line in received[:-1]]
    # In order; a line is dropped only while MAX_PENDING are queued, and counted.
    assert numbers == sorted(set(numbers))
    assert numbers[:LogSink.MAX_PENDING] == list(range(LogSink.MAX_PENDING))
    assert len(numbers) + sink.dropped == lines


def test_reopen_switches_files_in_line_order(tmp_path: Path) -> None:
    path = tmp_path / "nsvisord.log"
    sink = LogSink(str(path))
    for i in range(100):
        sink.write(f"before {i}\n")
    moved = tmp_path / "nsvisord.log.1"
    path.rename(moved)  # logrotate
    assert sink.reopen()
    sink.write("after\n")
    assert sink.drain(timeout=10)
    assert moved.read_text() == "".join(f"before {i}\n" for i in range(100))
    assert path.read_text() == "after\n"
    assert sink.dropped == 0


def test_what_asyncio_reports_is_a_json_line_in_the_daemons_log(tmp_path: Path) -> None:
    # A callback that raises inside the event loop: asyncio's default handler would
    # print a bare traceback on stderr, among the daemon's JSON lines.
    code = (
        "import asyncio, json, sys\n"
        "from supervisor.daemon import logs\n"
        "from supervisor.daemon.serve import _log_loop_error\n"
        f"logs.configure('info', {str(tmp_path / 'd.log')!r})\n"
        "async def main():\n"
        "    asyncio.get_running_loop().set_exception_handler(_log_loop_error)\n"
        "    future = asyncio.get_running_loop().create_future()\n"
        "    future.cancel()\n"
        "    asyncio.get_running_loop().call_soon(future.set_result, None)\n"
        "    await asyncio.sleep(0.05)\n"
        "asyncio.run(main())\n"
        "logs.drain()\n")
    done = run_python(code)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = [json.loads(line) for line in (tmp_path / "d.log").read_text().splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [("event loop error", "warning")]
    assert "InvalidStateError" in lines[0]["error"] and "set_result" in lines[0]["where"]
