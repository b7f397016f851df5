"""readable(): poll() on one descriptor, including those select() refuses (>= 1024)."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from supervisor.linux.fdwait import readable


def test_a_pipe_above_1024_turns_readable(high_fd: int) -> None:
    r, w = os.pipe()
    os.dup2(r, high_fd)
    os.close(r)
    try:
        assert not readable(high_fd)
        started = time.monotonic()
        assert not readable(high_fd, 0.05)
        assert time.monotonic() - started >= 0.04  # the timeout was waited for
        os.write(w, b"x")
        assert readable(high_fd, None)
    finally:
        os.close(w)


def test_a_hang_up_counts_as_readable() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        assert readable(r)
    finally:
        os.close(r)


def test_a_pidfd_turns_readable_when_its_process_exits(high_fd: int) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        pidfd = os.pidfd_open(proc.pid)
        os.dup2(pidfd, high_fd)
        os.close(pidfd)
        assert not readable(high_fd)
        proc.kill()
        assert readable(high_fd, 5)
    finally:
        proc.kill()
        proc.wait(5)


def test_a_closed_descriptor_is_ebadf(high_fd: int) -> None:
    with pytest.raises(OSError) as caught:
        readable(high_fd)
    assert caught.value.errno == errno.EBADF
