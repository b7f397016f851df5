"""The container's filesystem, built inside its new mount namespace (runc's order).

1. make every mount private, so nothing we do leaks to the host;
2. attach the rootfs (or build the "host" tmpfs root) at a staging mount point;
3. mount /proc, a minimal /dev, /sys read-only and the user's mounts inside it;
4. ``pivot_root(".", ".")`` and detach the old root — never chroot alone;
5. read-only and masked paths, then an optional read-only root.

Runs in the workload's own process, before its exec. Bind sources
are opened as detached mount trees (``open_tree``) by the caller, as host root, before the
init is cloned (a user namespace's root could not traverse a 0700 host directory), and
attached with ``move_mount``, so a mount cannot be redirected by what happens to the
paths afterwards.
"""

from __future__ import annotations

import os
import stat

from ..linux import libc
from ..linux.libc import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
    MS_STRICTATIME,
)
from .consts import DEVICES, MASKED_PATHS, READONLY_PATHS
from .errors import SetupError, step

TYPE_CHECKING = False
if TYPE_CHECKING:  # the container side gets the spec as plain attributes, not this class
    from .spec import ContainerSpec

# Where the container's root is assembled before the pivot. It exists on every host, and
# the mount is only ever visible inside the container's own mount namespace.
ROOT_STAGE = "/tmp"
HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The dynamic linker's cache of the host's libraries, for a "host" rootfs: without it a
# program's libraries are looked up by probing the default directories (~20 failed
# lookups for one library), and those in directories listed in /etc/ld.so.conf.d are
# not found at all.
LD_SO_CACHE = "/etc/ld.so.cache"
_LD_SO_CACHE_KEY = "host:" + LD_SO_CACHE  # not a path: a user mount may bind that one

_STATVFS_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, libc.MS_NOATIME), (os.ST_NODIRATIME, libc.MS_NODIRATIME),
)


def _locked_flags(path: str) -> int:
    """The flags a bind remount must keep (a user namespace may not clear them)."""
    f_flag = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_FLAGS if f_flag & st)


def _remount_readonly(path: str) -> None:
    libc.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _locked_flags(path))


def _inside(root: str, target: str) -> str:
    """``root``+``target``, refusing any symlink on the way (it could point outside)."""
    path = root
    for part in target.strip("/").split("/"):
        if not part:
            continue
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise SetupError(f"mount target {target}", 40, f"{path} is a symlink")
    return path


def _make_target(path: str, is_dir: bool) -> None:
    where = "/" + os.path.relpath(path, ROOT_STAGE) if path.startswith(ROOT_STAGE) else path
    with step(f"create mount point {where}"):
        if is_dir:
            os.makedirs(path, exist_ok=True)
        elif not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _bind_fd(fd: int, target: str, readonly: bool, recursive: bool = True) -> None:
    libc.move_mount_fd(fd, target)
    if readonly:
        _remount_readonly(target)


class Sources:
    """Detached mount trees (open_tree) of every host path the setup binds, by path: made
    by the caller before the init exists (:meth:`open`), attached inside with move_mount."""

    def __init__(self, fds: dict[str, int]) -> None:
        self.fds = fds

    @classmethod
    def open(cls, spec: ContainerSpec) -> Sources:
        paths = [f"/dev/{d}" for d in DEVICES]
        if spec.rootfs == "host":
            paths += [d for d in HOST_DIRS if _is_real_dir(d)]
        else:
            paths.append(spec.rootfs)
        paths += [m.source for m in spec.mounts if m.type == "bind" and m.source]
        sources = cls({})
        try:
            for path in paths:
                if path not in sources.fds:
                    with step(f"open {path}"):
                        sources.fds[path] = libc.open_tree_clone(
                            path, recursive=not path.startswith("/dev/"))
            if spec.rootfs == "host" and os.path.isfile(LD_SO_CACHE):
                with step(f"open {LD_SO_CACHE}"):
                    sources.fds[_LD_SO_CACHE_KEY] = libc.open_tree_clone(LD_SO_CACHE,
                                                                         recursive=False)
        except BaseException:
            sources.close()
            raise
        return sources

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _is_real_dir(path: str) -> bool:
    """A directory, not a symlink to one (merged-/usr hosts link /bin and friends)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def build(spec: ContainerSpec, sources: Sources) -> None:
    """Build the container's root and pivot into it. The caller is in new namespaces;
    ``sources`` were opened before, outside them (with the host's permissions)."""
    try:
        with step("make / private"):
            libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
        root = _host_root(spec, sources) if spec.rootfs == "host" else _bind_root(spec, sources)
        _mount_proc(root, spec)
        _mount_dev(root, spec, sources)
        _mount_sys(root, spec)
        _user_mounts(root, spec, sources)
    finally:
        sources.close()
    _pivot(root)
    _protect_paths()
    if spec.readonly_rootfs:
        with step("remount / read-only"):
            _remount_readonly("/")


def _bind_root(spec: ContainerSpec, sources: Sources) -> str:
    # Attached at the stage, not on itself: the path may not be reachable from inside a
    # user namespace.
    with step(f"bind rootfs {spec.rootfs}"):
        _bind_fd(sources.fds[spec.rootfs], ROOT_STAGE, readonly=False)
    return ROOT_STAGE


def _host_root(spec: ContainerSpec, sources: Sources) -> str:
    root = ROOT_STAGE
    with step("mount tmpfs root"):
        libc.mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=16m")
    for d in HOST_DIRS:
        target = root + d
        if os.path.islink(d):
            os.symlink(os.readlink(d), target)
        elif d in sources.fds:
            os.mkdir(target)
            with step(f"bind {d} read-only"):
                _bind_fd(sources.fds[d], target, readonly=True)
    for d, mode in (("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("run", 0o755),
                    ("var", 0o755), ("home", 0o755)):
        os.mkdir(f"{root}/{d}", mode)
        os.chmod(f"{root}/{d}", mode)  # mkdir's mode is cut by the umask
    _write_etc(f"{root}/etc", spec)
    ld_cache = sources.fds.get(_LD_SO_CACHE_KEY)
    if ld_cache is not None:
        target = root + LD_SO_CACHE
        with step(f"bind {LD_SO_CACHE} read-only"):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o644))
            _bind_fd(ld_cache, target, readonly=True)
    return root


def _write_etc(etc: str, spec: ContainerSpec) -> None:
    host = spec.effective_hostname
    hosts = [f"127.0.0.1\tlocalhost {host}", "::1\tlocalhost ip6-localhost ip6-loopback"]
    hosts += [f"{addr}\t{name}" for addr, name in spec.extra_hosts]
    files = {
        "hostname": (host + "\n").encode(),
        "hosts": ("\n".join(hosts) + "\n").encode(),
        "passwd": b"root:x:0:0:root:/root:/bin/sh\n"
                  b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": b"root:x:0:\nnogroup:x:65534:\n",
        "resolv.conf": _read_host_file("/etc/resolv.conf"),
    }
    # os-level I/O: Python's text files cost a codec lookup and buffers per file, which
    # showed in every container's start.
    for name, data in files.items():
        fd = os.open(f"{etc}/{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _read_host_file(path: str, limit: int = 1 << 16) -> bytes:
    """Up to ``limit`` bytes of a small host file; empty if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _mount_proc(root: str, spec: ContainerSpec) -> None:
    target = _inside(root, "/proc")
    _make_target(target, True)
    if "pid" in spec.namespaces:
        with step("mount proc"):
            libc.mount("proc", target, "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV)
    else:
        # The host's PID namespace: a user namespace may not mount its proc afresh.
        with step("bind /proc"):
            libc.mount("/proc", target, None, MS_BIND | MS_REC)


def _mount_dev(root: str, spec: ContainerSpec, sources: Sources) -> None:
    dev = _inside(root, "/dev")
    _make_target(dev, True)
    with step("mount tmpfs /dev"):
        libc.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=64k")
    # Device nodes are binds of the host's: mknod is not allowed in a user namespace, and
    # a bind works the same with or without one (bubblewrap's --dev).
    for name in DEVICES:
        target = f"{dev}/{name}"
        with step(f"create mount point /dev/{name}"):  # in the fresh tmpfs: no checks
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o644))
        with step(f"bind /dev/{name}"):
            _bind_fd(sources.fds[f"/dev/{name}"], target, readonly=False, recursive=False)
    os.mkdir(f"{dev}/pts")
    pts_opts = "newinstance,ptmxmode=0666,mode=0620"
    if _gid_mapped(spec, 5):
        pts_opts += ",gid=5"
    with step("mount devpts /dev/pts"):
        libc.mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, pts_opts)
    os.mkdir(f"{dev}/shm")
    with step("mount tmpfs /dev/shm"):
        libc.mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "mode=1777,size=65536k")
    if "ipc" in spec.namespaces:
        os.mkdir(f"{dev}/mqueue")
        with step("mount mqueue /dev/mqueue"):
            libc.mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for link, to in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                     ("core", "/proc/kcore")):
        os.symlink(to, f"{dev}/{link}")


def _gid_mapped(spec: ContainerSpec, gid: int) -> bool:
    if "user" not in spec.namespaces:
        return True
    return any(m.inside <= gid < m.inside + m.count for m in spec.gid_map or ())


def _mount_sys(root: str, spec: ContainerSpec) -> None:
    target = _inside(root, "/sys")
    _make_target(target, True)
    flags = MS_RDONLY | MS_NOSUID | MS_NOEXEC | MS_NODEV
    if "net" in spec.namespaces:
        with step("mount sysfs /sys"):
            libc.mount("sysfs", target, "sysfs", flags)
    else:
        # A fresh sysfs needs a network namespace of our own; bind the host's instead.
        with step("bind /sys read-only"):
            libc.mount("/sys", target, None, MS_BIND | MS_REC)
            _remount_readonly(target)


def _user_mounts(root: str, spec: ContainerSpec, sources: Sources) -> None:
    for m in spec.mounts:
        target = _inside(root, m.target)
        if m.type == "tmpfs":
            _make_target(target, True)
            data = "mode=1777" + (f",size={m.size}" if m.size else "")
            with step(f"mount tmpfs {m.target}"):
                flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if m.readonly else 0)
                libc.mount("tmpfs", target, "tmpfs", flags, data)
            continue
        assert m.source is not None
        fd = sources.fds[m.source]
        _make_target(target, stat.S_ISDIR(os.stat(fd).st_mode))
        with step(f"bind {m.source} to {m.target}"):
            _bind_fd(fd, target, m.readonly)


def _pivot(root: str) -> None:
    with step(f"pivot_root into {root}"):
        os.chdir(root)
        old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.pivot_root(".", ".")
            # "/" is now the new root and the old root is stacked on top of it: detach it.
            os.fchdir(old_root)
            libc.mount(None, ".", None, MS_SLAVE | MS_REC)
            libc.umount2(".", MNT_DETACH)
        finally:
            os.close(old_root)
        os.chdir("/")


def _protect_paths() -> None:
    for path in READONLY_PATHS:
        if not os.path.exists(path):
            continue
        with step(f"read-only {path}"):
            libc.mount(path, path, None, MS_BIND | MS_REC)
            _remount_readonly(path)
    for path in MASKED_PATHS:
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            continue
        with step(f"mask {path}"):
            if is_dir:
                libc.mount("tmpfs", path, "tmpfs", MS_RDONLY, "nr_blocks=1,nr_inodes=2")
            else:
                libc.mount("/dev/null", path, None, MS_BIND)
