"""Log capture by the container's init: whole lines, rotation, no loss, no caller needed."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import termios
import time

import pytest

from supervisor.linux import libc
from supervisor.runtime import ContainerSpec, LaunchError, LogSpec, Runtime, SpecError
from supervisor.runtime.consts import LOG_LINE_MAX
from supervisor.runtime.logs import LogFile, Stream

from .conftest import Runner

pytestmark = pytest.mark.root

NO_USER = ("mount", "uts", "ipc", "pid", "net", "cgroup")


def log_files(d, name: str, kind: str = "out") -> list[str]:
    """The retained files of one stream, oldest first."""
    base = f"{name}.{kind}.log"
    found = sorted((int(f.rsplit(".", 1)[1]) for f in os.listdir(d)
                    if f.startswith(base + ".")), reverse=True)
    return [str(d / f"{base}.{n}") for n in found] + [str(d / base)]


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_all(d, name: str, kind: str = "out") -> bytes:
    return b"".join(read_bytes(p) for p in log_files(d, name, kind))


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


@pytest.mark.parametrize("namespaces", [NO_USER, NO_USER + ("user",)], ids=["host-ids",
                                                                           "userns"])
def test_every_line_arrives_once_in_order_across_rotations(runner: Runner, tmp_path,
                                                          namespaces) -> None:
    # 200k lines "%06d\n" (1.4 MB) in 64 KiB files: 22 files, all retained (30 backups).
    spec = runner.spec(["/usr/bin/seq", "-f", "%06g", "0", "199999"], namespaces=namespaces,
                       log=LogSpec(dir=str(tmp_path), max_bytes=65536, backups=30))
    c = runner.start(spec)
    assert c.wait(30).exit_code == 0
    files = log_files(tmp_path, spec.name)
    assert len(files) > 20
    for path in files:
        size = os.path.getsize(path)
        assert size <= 65536
        data = read_bytes(path)
        assert data.endswith(b"\n"), f"{path} ends mid-line"
    lines = read_all(tmp_path, spec.name).split(b"\n")
    assert lines[-1] == b""
    assert lines[:-1] == [b"%06d" % i for i in range(200000)]
    assert os.stat(files[-1]).st_uid == 0  # host root's, also through the idmap
    assert read_all(tmp_path, spec.name, "err") == b""


def test_rotation_keeps_the_newest_files_contiguous(runner: Runner, tmp_path) -> None:
    spec = runner.spec(["/usr/bin/seq", "-f", "%06g", "0", "99999"],
                       log=LogSpec(dir=str(tmp_path), max_bytes=16384, backups=3))
    c = runner.start(spec)
    assert c.wait(30).exit_code == 0
    files = log_files(tmp_path, spec.name)
    assert [os.path.basename(p) for p in files] == [
        f"{spec.name}.out.log.3", f"{spec.name}.out.log.2", f"{spec.name}.out.log.1",
        f"{spec.name}.out.log"]
    numbers = [int(x) for x in read_all(tmp_path, spec.name).split()]
    assert numbers[-1] == 99999
    assert numbers == list(range(numbers[0], 100000))


def test_long_lines_stay_whole_and_huge_ones_are_split(runner: Runner, tmp_path) -> None:
    # A 20000-byte line with max_bytes 8192: alone in its file. A 150000-byte line:
    # split beyond LOG_LINE_MAX, nothing lost.
    script = ("head -c 3000 /dev/zero | tr '\\0' a; echo; "
              "head -c 20000 /dev/zero | tr '\\0' b; echo; "
              "echo short; head -c 150000 /dev/zero | tr '\\0' c; echo; echo end")
    spec = runner.spec(["/bin/sh", "-c", script],
                       log=LogSpec(dir=str(tmp_path), max_bytes=8192, backups=50))
    c = runner.start(spec)
    assert c.wait(20).exit_code == 0
    data = read_all(tmp_path, spec.name)
    assert data.split(b"\n") == [b"a" * 3000, b"b" * 20000, b"short", b"c" * 150000, b"end",
                                 b""]
    contents = [read_bytes(p) for p in log_files(tmp_path, spec.name)]
    assert b"b" * 20000 + b"\n" in contents, "the long line is not alone in one file"
    assert all(len(x) <= LOG_LINE_MAX + 1 for x in contents if x.startswith(b"c"))


def test_a_long_line_whose_end_comes_with_the_next_lines_is_still_split(tmp_path) -> None:
    # The reads a pipe may give for the line above: its end arrives in the same read as
    # the lines after it, 84464 bytes of it still pending. It must not go in whole.
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(r, False)
    stream = Stream(r, LogFile(dir_fd, "x.out.log", 8192, 50))
    try:
        for chunk in (b"short\n" + b"c" * 65530, b"c" * 65536, b"c" * 18934 + b"\nend\n"):
            assert len(chunk) <= 65536  # one pipe's worth: one read each
            os.write(w, chunk)
            assert stream.feed()
        os.close(w)
        w = -1
        assert not stream.feed()
    finally:
        for fd in (r, w, dir_fd):
            if fd >= 0:
                os.close(fd)
        stream.file.close()
    assert read_all(tmp_path, "x").split(b"\n") == [b"short", b"c" * 150000, b"end", b""]
    sizes = [len(read_bytes(p)) for p in log_files(tmp_path, "x")]
    assert max(sizes) <= LOG_LINE_MAX + 1, sizes


def test_separate_and_merged_streams(runner: Runner, tmp_path) -> None:
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2"
    a = runner.start(runner.spec(["/bin/sh", "-c", script], log=LogSpec(dir=str(tmp_path))))
    b = runner.start(runner.spec(["/bin/sh", "-c", script],
                                 log=LogSpec(dir=str(tmp_path), merge=True)))
    assert a.wait(10).exit_code == 0 and b.wait(10).exit_code == 0
    assert read_all(tmp_path, a.name) == b"out1\nout2\n"
    assert read_all(tmp_path, a.name, "err") == b"err1\nerr2\n"
    assert read_all(tmp_path, b.name) == b"out1\nerr1\nout2\nerr2\n"
    assert not os.path.exists(tmp_path / f"{b.name}.err.log")


def test_partial_last_line_and_exit_record_after_exit(runner: Runner, tmp_path) -> None:
    exit_file = str(tmp_path / "exit")
    logs = tmp_path / "logs"
    logs.mkdir()
    spec = runner.spec(["/bin/sh", "-c", "echo one; printf two; exit 3"],
                       log=LogSpec(dir=str(logs)))
    c = runner.start(spec, exit_file=exit_file)
    assert c.wait(10).exit_code == 3
    assert read_all(logs, spec.name) == b"one\ntwo\n"
    from supervisor.runtime.status import read_exit_file
    assert read_exit_file(exit_file).exit_code == 3


def test_capture_goes_on_without_the_caller(unique, tmp_path) -> None:
    """The Runtime and every fd of the handle are closed: the workload keeps writing
    (no SIGPIPE, no blocking) and its lines keep arriving."""
    name = unique("orphan")
    rt = Runtime()
    c = rt.start(ContainerSpec(
        name=name, command=["/bin/sh", "-c", "i=0; while [ $i -lt 400 ]; do "
                                             "echo line $i; i=$((i+1)); sleep 0.005; done"],
        log=LogSpec(dir=str(tmp_path))))
    pid = c.pid
    rt.close()
    c.close()
    try:
        wait_for(lambda: read_all(tmp_path, name).endswith(b"line 399\n"))
        assert read_all(tmp_path, name).split(b"\n")[:-1] == [
            b"line %d" % i for i in range(400)]
        statuses = []

        def exited() -> bool:
            reaped, status = os.waitpid(pid, os.WNOHANG)
            statuses.append(status)
            return reaped == pid

        wait_for(exited)  # by itself, with the workload's status: no SIGPIPE (141)
        assert os.waitstatus_to_exitcode(statuses[-1]) == 0
        pid = -1
    finally:
        if pid > 0:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def test_file_removed_from_outside_is_recreated(runner: Runner, tmp_path) -> None:
    c = runner.start(runner.spec(
        ["/bin/sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done"],
        log=LogSpec(dir=str(tmp_path))))
    path = tmp_path / f"{c.name}.out.log"
    wait_for(lambda: path.exists() and path.stat().st_size > 0)
    os.unlink(path)
    wait_for(lambda: path.exists() and path.stat().st_size > 0, timeout=5)
    first = int(path.read_bytes().split(b"\n")[0].split()[1])
    assert first > 0
    c.kill()
    c.wait(10)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, unmounted at the end whatever happens."""
    path = tmp_path / "small-disk"
    path.mkdir()
    libc.mount("tmpfs", str(path), "tmpfs", 0, "size=256k,mode=755")
    try:
        yield path
    finally:
        libc.umount2(str(path), libc.MNT_DETACH)


_LINE = re.compile(rb"line (\d{5}) x{60}")
_NOTE = re.compile(rb"nsvisor: (\d+) lines? lost here \(No space left on device\)")


def test_a_full_disk_loses_whole_lines_and_says_how_many(runner: Runner, small_disk) -> None:
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # all but ~16 KiB of the disk
        f.write(b"\0" * (256 - 16) * 1024)
    # 1000 lines (~70 KB) into ~16 KiB of room; then, on SIGUSR1, 200 more.
    script = ("import signal, sys\n"
              "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
              "for i in range(1000): print(f'line {i:05d} ' + 'x' * 60)\n"
              "sys.stdout.flush()\n"
              "signal.sigwait({signal.SIGUSR1})\n"
              "for i in range(1000, 1200): print(f'line {i:05d} ' + 'x' * 60)\n")
    c = runner.start(runner.spec(["/usr/bin/python3", "-c", script],
                                 log=LogSpec(dir=str(small_disk))))
    log = small_disk / f"{c.name}.out.log"

    def first_thousand_met_the_full_disk() -> bool:
        children = read_bytes(f"/proc/{c.pid}/task/{c.pid}/children").split()
        if not children:
            return False
        workload = int(children[0])
        with open(f"/proc/{workload}/wchan") as f:
            if not f.read().startswith("do_sigtimedwait"):
                return False  # still writing them
        pipe = os.open(f"/proc/{workload}/fd/1", os.O_WRONLY | os.O_NONBLOCK)
        try:
            unread = fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0")
        finally:
            os.close(pipe)
        return struct.unpack("i", unread)[0] == 0  # and the init took them all
    wait_for(first_thousand_met_the_full_disk, 20)
    filler.unlink()
    c.signal(signal.SIGUSR1)
    assert c.wait(20).exit_code == 0
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    numbers, lost = [], []
    for line in lines[:-1]:
        if m := _LINE.fullmatch(line):
            numbers.append(int(m.group(1)))
        else:
            m = _NOTE.fullmatch(line)
            assert m, f"not a whole line: {line[:80]!r}"
            lost.append((len(numbers), int(m.group(1))))
    assert len(lost) == 1 and lost[0][1] > 500  # most of the first 1000
    at, count = lost[0]
    assert numbers[:at] == list(range(at))
    assert numbers[at:] == list(range(at + count, 1200))  # the note's count is exact


@pytest.mark.parametrize(("kw", "reason"), [
    ({"command": ["/no/such/cmd"]},
     "exec /no/such/cmd: No such file or directory (ENOENT)"),
    ({"command": ["/bin/true"], "workdir": "/no/such/dir"},
     "chdir /no/such/dir: No such file or directory (ENOENT)"),
])
def test_a_start_that_fails_says_why_in_the_stderr_log(runner: Runner, tmp_path, kw,
                                                       reason) -> None:
    # The operator's first stop is the log of a container that will not start; it was
    # empty, the reason only in the daemon's answer and log.
    spec = runner.spec(kw.pop("command"), log=LogSpec(dir=str(tmp_path)), **kw)
    with pytest.raises(LaunchError):
        runner.start(spec)
    assert read_all(tmp_path, spec.name, "err") == (
        f"nsvisor: the workload did not start: {reason}\n").encode()
    assert read_all(tmp_path, spec.name) == b""


def test_bad_log_spec_is_refused(runner: Runner, tmp_path) -> None:
    with pytest.raises(SpecError, match=r"log\.dir"):
        runner.runtime.start(runner.spec(["/bin/true"], log=LogSpec(dir="relative")))
    with pytest.raises(SpecError, match=r"log\.max_bytes"):
        runner.runtime.start(runner.spec(["/bin/true"],
                                         log=LogSpec(dir=str(tmp_path), max_bytes=-1)))
