"""The syscalls Python 3.11's ``os`` module lacks, through ctypes on libc.

Each wrapper raises ``OSError`` with errno set, like the ``os`` functions do, so callers
can name the failing step and errno in one message. Nothing here keeps state beyond the
loaded libc handle, so the module is safe to import in the fork server and its children.
It uses ``_signal``, not ``signal`` (which imports enum), to keep the fork server small.
"""

from __future__ import annotations

import _signal
import _socket
import ctypes
import fcntl  # imported here: after a pivot the host's library is out of reach
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# clone(2) / unshare(2) flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# The flag of each namespace, by the names specs use (clone, unshare and setns take it).
NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC, "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET, "cgroup": CLONE_NEWCGROUP, "user": CLONE_NEWUSER,
}

# mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>; the socket module does not name it

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
_SYS_SETNS = {"x86_64": 308, "aarch64": 268}
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}
_SYS_CLOSE_RANGE = 436  # the same on every architecture
_SYS_CLONE3 = 435  # the same on every architecture
CLONE_INTO_CGROUP = 0x200000000  # clone3 only (Linux >= 5.7)
CLOSE_RANGE_CLOEXEC = 1 << 2
_SYS_OPEN_TREE = 428  # the same on every architecture
_SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
CLONE_PARENT = 0x00008000
_MACHINE = os.uname().machine

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
# prctl(PR_SET_NAME, name) with its own prototype, so that bytes pass as they are: a
# ctypes string buffer would make a new array type in each forked init (0.2 ms).
_prctl_name = _libc["prctl"]
_prctl_name.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str = "") -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what or None)
    return result


def _b(path: str | bytes | None) -> bytes | None:
    return os.fsencode(path) if path is not None else None


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``os.unshare`` arrived in 3.12)."""
    _check(_libc.unshare(flags))


# The GIL stays held across this call (PyDLL), as os.fork holds it across fork(2).
_pylibc = ctypes.PyDLL(None, use_errno=True)
_pylibc.syscall.restype = ctypes.c_long


class _CloneArgs(ctypes.Structure):
    """struct clone_args up to ``cgroup`` (CLONE_ARGS_SIZE_VER2, Linux >= 5.7)."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone_fork(flags: int, cgroup_fd: int | None = None) -> int:
    """fork(2) with extra clone flags: new namespaces, CLONE_PARENT. Returns like fork.

    With ``cgroup_fd`` (a cgroup v2 directory), the child is born in that cgroup
    (clone3's CLONE_INTO_CGROUP): nobody has to move it there, which takes the kernel's
    global threadgroup lock and waits for an RCU grace period. An OSError with ENOSYS or
    E2BIG says the kernel is older than 5.7.

    Does what ``os.fork`` does around the syscall (CPython's before/after-fork hooks), so
    the child is a sound Python process. Only for single-threaded callers.
    """
    api = ctypes.pythonapi
    if cgroup_fd is None:
        args = None
    else:  # no stack: the child runs on a copy of ours, as after fork
        # clone3 refuses an exit signal with CLONE_PARENT: the child then signals our
        # parent with the one we would (SIGCHLD, for a process it spawned).
        signal_ = 0 if flags & CLONE_PARENT else _signal.SIGCHLD
        args = _CloneArgs(flags=flags | CLONE_INTO_CGROUP, exit_signal=signal_,
                          cgroup=cgroup_fd)
    api.PyOS_BeforeFork()
    if args is None:
        pid = _pylibc.syscall(_SYS_CLONE[_MACHINE], ctypes.c_ulong(flags | _signal.SIGCHLD),
                              None, None, None, None)
    else:
        pid = _pylibc.syscall(_SYS_CLONE3, ctypes.byref(args),
                              ctypes.c_size_t(ctypes.sizeof(args)))
    err = ctypes.get_errno()
    if pid == 0:
        api.PyOS_AfterFork_Child()
    else:
        api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, os.strerror(err), "clone")
    return pid


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace behind ``fd`` (a /proc/PID/ns/* file or a pidfd)."""
    _check(_libc.syscall(_SYS_SETNS[_MACHINE], ctypes.c_int(fd), ctypes.c_int(nstype)))


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= ``first`` close-on-exec (Linux 5.11), so an exec leaks none."""
    _check(_libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                         ctypes.c_uint(CLOSE_RANGE_CLOEXEC)), "close_range")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), target)


def open_tree_clone(path: str, recursive: bool = True) -> int:
    """A detached copy of the mount at ``path`` (Linux 5.2), attachable in any mount
    namespace with :func:`move_mount_fd` - a bind whose source is resolved now."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_libc.syscall(_SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), _b(path),
                                ctypes.c_uint(flags)), path)


def move_mount_fd(tree_fd: int, target: str) -> None:
    """Attach a detached mount tree at ``target``."""
    _check(_libc.syscall(_SYS_MOVE_MOUNT, ctypes.c_int(tree_fd), b"", ctypes.c_int(AT_FDCWD),
                         _b(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), target)


_SYS_MOUNT_SETATTR = 442  # the same on every architecture
MOUNT_ATTR_IDMAP = 0x00100000
AT_EMPTY_PATH = 0x1000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def idmap_tree(tree_fd: int, userns_fd: int) -> None:
    """Make a detached mount tree idmapped through a user namespace (Linux 5.12): its
    files' owners appear mapped as that namespace maps ids, for access and creation."""
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(tree_fd), b"",
                         ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT[_MACHINE], _b(new_root), _b(put_old)), new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5))


# glibc's internal signals (SIGCANCEL, SIGSETXID): not in valid_signals(), and glibc's
# sigaction refuses them.
_GLIBC_INTERNAL_SIGNALS = (32, 33)
_SigactionDefault = ctypes.c_ulong * 4  # handler SIG_DFL, flags, restorer, mask: all zero


def default_internal_signals() -> None:
    """Default dispositions for glibc's internal signals, through the raw syscall:
    glibc's posix_spawn leaves them ignored in the child, and an ignored disposition
    survives exec."""
    number = _SYS_RT_SIGACTION.get(_MACHINE)
    if number is None:
        return
    act = _SigactionDefault()
    for sig in _GLIBC_INTERNAL_SIGNALS:
        _libc.syscall(number, ctypes.c_int(sig), ctypes.byref(act), None, ctypes.c_size_t(8))


def set_process_name(name: str) -> None:
    """Name the calling thread (``ps -o comm``), as runc names its helper stages."""
    _check(_prctl_name(PR_SET_NAME, name.encode()[:15], 0, 0, 0))


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sh22x")  # struct ifreq: name, then ifr_flags in the union


def malloc_trim() -> None:
    """Give the C heap's free pages back to the kernel (glibc keeps them otherwise)."""
    trim = getattr(_libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def interface_up(name: str = "lo") -> None:
    """Set a network interface up in the caller's network namespace (an ioctl: no
    netlink library needed, so the container side stays small)."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, _IFREQ.pack(name.encode(), 0))
        flags = _IFREQ.unpack(raw)[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))
    finally:
        sock.close()


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)))


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)))


# --- capabilities -------------------------------------------------------------------

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


# Array types made once, at import: made at first use, they would be made again in each
# container's init and workload process, forked from the fork server (~0.1 ms each).
_CapDataPair = _CapData * 2
_Sigset = ctypes.c_ulong * 16  # the kernel's sigset is 64 bits; glibc's is 1024


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_SYS_CAPSET[_MACHINE], ctypes.byref(header), ctypes.byref(data)),
           "capset")


# --- signals ------------------------------------------------------------------------

SFD_CLOEXEC = 0o2000000
SFD_NONBLOCK = 0o4000
SIGNALFD_SIGINFO_SIZE = 128
# struct signalfd_siginfo starts with: u32 signo, s32 errno, s32 code, u32 pid, u32 uid,
# s32 fd, u32 tid, u32 band, u32 overrun, u32 trapno, s32 status, s32 int, ...
_SIGINFO_HEAD = struct.Struct("=IiiIIiIIIIi")


def _sigset(signals: set[int] | list[int]) -> ctypes.Array:
    buf = _Sigset()
    for sig in signals:
        bit = sig - 1
        buf[bit // 64] |= 1 << (bit % 64)
    return buf


def signalfd(signals: set[int] | list[int], flags: int = SFD_CLOEXEC) -> int:
    """A new signalfd that reads the given (blocked) signals."""
    mask = _sigset(signals)
    return _check(_libc.signalfd(-1, ctypes.byref(mask), flags), "signalfd")


def read_siginfo(data: bytes) -> tuple[int, int, int, int]:
    """(signo, code, pid, status) from one ``signalfd_siginfo`` record."""
    signo, _errno, code, pid, _uid, _fd, _tid, _band, _ovr, _trap, status = (
        _SIGINFO_HEAD.unpack_from(data))
    return signo, code, pid, status


def all_signals() -> set[int]:
    """Every signal the C library lets a program block (not its internal 32 and 33)."""
    return set(_signal.valid_signals())
