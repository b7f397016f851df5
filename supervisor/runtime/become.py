"""How a process inside a container becomes its workload: identity, then exec.

Shared by the workload's own process (:mod:`.launcher`) and ``nsvisorctl exec``
(:mod:`.enter`), so both run a command the same way. Container-side code: it runs after
the pivot or chroot, where the host's standard library is out of reach, so it imports
only modules both processes hold already and nothing lazily.
"""

from __future__ import annotations

import _signal
import errno
import os

from ..linux import caps, libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import NoReturn

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What glibc's execvp skips to try the next PATH entry (EACCES is remembered).
_EXEC_NEXT = {errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.ENODEV, errno.ETIMEDOUT}


def set_identity(capabilities: Iterable[str], groups: Iterable[int], uid: int, gid: int,
                 no_new_privs: bool) -> None:
    """Groups, gid, uid, then ``capabilities`` as the effective and permitted sets, with
    an empty inheritable set and no ambient ones (a uid change would clear them all
    without KEEPCAPS), and ``no_new_privs``."""
    keep = caps.mask(capabilities)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    libc.capset(effective=keep, permitted=keep, inheritable=0)
    if no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)


def default_signals() -> None:
    """Default dispositions for every signal that would stay ignored across an exec
    (handlers reset themselves): Python ignores SIGPIPE and SIGXFSZ, the fork server
    SIGINT, glibc's posix_spawn its two internal signals."""
    for sig in _signal.valid_signals() - {_signal.SIGKILL, _signal.SIGSTOP}:
        if _signal.getsignal(sig) == _signal.SIG_IGN:
            _signal.signal(sig, _signal.SIG_DFL)
    libc.default_internal_signals()


def execvpe(command: list[str], env: dict[str, str]) -> NoReturn:
    """execvp's search in ``env``'s PATH (glibc's rules). Not ``os.execvpe``: it imports
    ``warnings`` lazily, and past the pivot the host's standard library is out of reach."""
    name = command[0]
    if "/" in name:
        os.execve(name, command, env)
    denied = last = None
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        try:
            os.execve(f"{directory or '.'}/{name}", command, env)
        except OSError as e:
            if e.errno == errno.EACCES:
                denied = e
            elif e.errno not in _EXEC_NEXT:
                raise
            last = e
    raise denied or last or OSError(errno.ENOENT, os.strerror(errno.ENOENT), name)
