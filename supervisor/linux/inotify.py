"""inotify(7) through ctypes: the event that a file changed, instead of polling it."""

from __future__ import annotations

import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY = 0x002
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


def init() -> int:
    fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "inotify_init1")
    return fd


def watch(fd: int, path: str, mask: int) -> int:
    wd = _libc.inotify_add_watch(fd, os.fsencode(path), ctypes.c_uint32(mask))
    if wd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return wd


def read_names(fd: int) -> list[str]:
    """The names of the entries the queued events are about ('' for the watched file)."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return []
    names, off = [], 0
    while off + _EVENT.size <= len(data):
        _wd, _mask, _cookie, length = _EVENT.unpack_from(data, off)
        raw = data[off + _EVENT.size: off + _EVENT.size + length]
        names.append(raw.split(b"\0", 1)[0].decode(errors="replace"))
        off += _EVENT.size + length
    return names
