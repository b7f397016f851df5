"""The fork server: a small single-threaded Python process that forks each container.

Started once per runtime (``python -S``, importing only the launch path), it never runs
threads, so forking it is safe - unlike forking the daemon - and a container costs a
fork instead of a new interpreter (~10 ms and several MiB each).

Protocol on the control socket (SOCK_SEQPACKET, one request per packet): a JSON object
``{"spec": {...}, "fds": ["report", "stdin", "stdout", "stderr", "exit"?]}`` with those
fds attached (SCM_RIGHTS). Replies go to the request's own report socket: the fork
server sends ``{"pid": N}`` (the init's host pid) or the error it met, the init then
sends ``{"ready": true}`` or its own error.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import resource
import signal
import socket
import sys

from ..linux import caps, libc
from . import rootfs
from .errors import SetupError
from .launcher import clone_flags, run_init
from .spec import RLIMITS, ContainerSpec, IdMapping

MAX_REQUEST = 1 << 20


def main(control_fd: int, parent_pid: int) -> None:
    libc.set_process_name("nsv-zygote")
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        sys.exit(0)  # our caller died before PDEATHSIG was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    last_cap = caps.last_cap()
    gc.collect()
    gc.freeze()  # keep the heap's pages shared with every forked container
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, MAX_REQUEST, 8,
                                                          socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            continue
        if not data:
            return  # the caller closed the socket: shut down
        _serve(control, data, fds, last_cap)


def _serve(control: socket.socket, data: bytes, fds: list[int], last_cap: int) -> None:
    try:
        request = json.loads(data)
        named = dict(zip(request["fds"], fds, strict=True))
        spec = ContainerSpec.from_json(request["spec"])
    except Exception as e:  # noqa: BLE001 - a bad request must not kill the server
        if fds:
            _report_error(fds[0], f"fork server: bad request: {e!r}")
        for fd in fds:
            os.close(fd)
        return
    try:
        sources = rootfs.Sources(spec) if "mount" in spec.namespaces else None
    except SetupError as e:
        _report_error(named["report"], str(e), e.errno, e.step)
        for fd in fds:
            os.close(fd)
        return
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = libc.clone_fork(clone_flags(spec))
    except OSError as e:
        _report_error(named["report"], f"clone: {e.strerror}", e.errno or 0, "clone")
        pid = -1
    if pid == 0:
        control.close()
        os.close(go_w)
        run_init(spec, named, sources, go_r, last_cap)
    os.close(go_r)
    if sources is not None:
        sources.close()
    try:
        if pid > 0:
            _report(named["report"], pid=pid)
            error = _prepare(pid, spec)
            if error:
                _report(named["report"], **error)
                os.kill(pid, signal.SIGKILL)
            else:
                os.write(go_w, b"go")
    finally:
        os.close(go_w)
        for fd in fds:
            os.close(fd)


def _prepare(pid: int, spec: ContainerSpec) -> dict | None:
    """From outside, before the init may run: cgroups, rlimits, id maps (runc's order).

    Returns the error to report, or None.
    """
    for path in spec.cgroup_procs:
        try:
            with open(path, "w") as f:
                f.write(str(pid))
        except OSError as e:
            return _error(f"join cgroup {os.path.dirname(path)}", e)
    for name, limits in spec.rlimits.items():
        try:
            resource.prlimit(pid, RLIMITS[name], limits)
        except OSError as e:
            return _error(f"setrlimit {name} {limits}", e)
    if "user" in spec.namespaces:
        # gid_map before uid_map, as crun does; setgroups stays "allow": we are privileged.
        for kind, mapping in (("gid_map", spec.gid_map), ("uid_map", spec.uid_map)):
            text = _map_text(mapping or ())
            try:
                with open(f"/proc/{pid}/{kind}", "w") as f:
                    f.write(text)
            except OSError as e:
                return _error(f"{kind}: writing {text.strip()!r}", e)
    return None


def _error(step: str, e: OSError) -> dict:
    name = errno.errorcode.get(e.errno or 0, "")
    return {"error": f"{step}: {e.strerror} ({name})", "errno": e.errno, "step": step}


def _map_text(mapping: tuple[IdMapping, ...]) -> str:
    return "".join(f"{m.inside} {m.outside} {m.count}\n" for m in mapping)


def _report(fd: int, **msg: object) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(msg).encode())


def _report_error(fd: int, message: str, err: int = 0, step: str = "") -> None:
    _report(fd, error=message, errno=err, step=step)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
