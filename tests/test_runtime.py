"""The runtime against the real kernel: isolation, the init, security probes, bad specs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import select
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from supervisor.linux import caps, libc, mountinfo
from supervisor.linux.cgroups import detect
from supervisor.runtime import ContainerSpec, LaunchError, Mount, Runtime, SpecError
from supervisor.runtime.spec import MASKED_PATHS, NAMESPACES, NS_PROC_NAME

from .conftest import Runner, host_state, read_until_eof

pytestmark = pytest.mark.root

SLEEP = ["/bin/sleep", "30"]


def ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{NS_PROC_NAME[kind]}").st_ino


# --- namespaces -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", NAMESPACES)
def test_isolated_namespace_differs_from_host(runner: Runner, kind: str) -> None:
    c = runner.start(runner.spec(SLEEP, namespaces=(kind,) + (("mount",) if kind == "pid"
                                                              else ())))
    assert ns_inode(c.pid, kind) != ns_inode("self", kind)
    for other in NAMESPACES:
        if other not in c.spec.namespaces:
            assert ns_inode(c.pid, other) == ns_inode("self", other)


def test_kill_without_pid_namespace_leaves_no_workload(runner: Runner) -> None:
    c = runner.start(runner.spec(SLEEP, namespaces=("uts",)))
    assert c.workload_pid is not None and os.path.exists(f"/proc/{c.workload_pid}")
    workload = c.workload_pid
    c.kill()
    c.wait(10)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{workload}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{workload}")


@pytest.mark.parametrize("kind", NAMESPACES)
def test_shared_namespace_equals_host(runner: Runner, kind: str) -> None:
    others = tuple(n for n in NAMESPACES if n != kind)
    if kind == "mount":  # a private /proc needs the mount namespace: share pid with it
        others = tuple(n for n in others if n != "pid")
    c = runner.start(runner.spec(SLEEP, namespaces=others))
    assert ns_inode(c.pid, kind) == ns_inode("self", kind)
    for other in others:
        assert ns_inode(c.pid, other) != ns_inode("self", other)


def test_hostname_is_the_containers_and_host_unchanged(runner: Runner) -> None:
    before = socket.gethostname()
    ran = runner.run(["/bin/hostname"], name=runner.unique("uts"))
    assert ran.stdout.strip() == runner.started[-1].name
    ran = runner.run(["/bin/hostname"], hostname="custom-host")
    assert ran.stdout.strip() == "custom-host"
    assert socket.gethostname() == before


def test_a_host_rootfs_gets_its_own_etc(runner: Runner) -> None:
    ran = runner.run(["/bin/sh", "-c",
                      "stat -c '%n %a %s' /etc/hostname /etc/hosts /etc/passwd /etc/group "
                      "/etc/resolv.conf; cat /etc/hostname /etc/hosts /etc/resolv.conf"],
                     hostname="etc-host", extra_hosts=(("10.9.8.7", "db"),))
    assert ran.status.exit_code == 0, ran.stderr
    lines = ran.stdout.splitlines()
    try:
        with open("/etc/resolv.conf", "rb") as f:
            resolv = f.read().decode()
    except OSError:
        resolv = ""
    assert [line.split()[:2] for line in lines[:5]] == [
        [f"/etc/{n}", "644"] for n in ("hostname", "hosts", "passwd", "group", "resolv.conf")]
    assert lines[4].split()[2] == str(len(resolv.encode()))
    assert ran.stdout.split("\n", 5)[5] == (
        "etc-host\n127.0.0.1\tlocalhost etc-host\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n10.9.8.7\tdb\n" + resolv)


def test_a_host_rootfs_gets_the_hosts_loader_cache_read_only(runner: Runner) -> None:
    # The host's libraries are the container's (its /usr), and so is their loader cache:
    # without it, libraries in /etc/ld.so.conf.d directories are not found.
    if not os.path.isfile("/etc/ld.so.cache"):
        pytest.skip("this host has no /etc/ld.so.cache")
    with open("/etc/ld.so.cache", "rb") as f:
        host = hashlib.sha256(f.read()).hexdigest()
    ran = runner.run(["/bin/sh", "-c",
                      "sha256sum /etc/ld.so.cache; "
                      "(: > /etc/ld.so.cache) 2>/dev/null || echo read-only"])
    assert ran.status.exit_code == 0, ran.stderr
    assert ran.stdout.split() == [host, "/etc/ld.so.cache", "read-only"]


def test_ipc_objects_are_invisible_to_other_containers(runner: Runner) -> None:
    r, w = os.pipe()
    a = runner.start(runner.spec(["/bin/sh", "-c", "ipcmk -M 4096 >/dev/null && ipcs -m "
                                  "| grep -c 0x; exec sleep 30"]), stdout=w)
    os.close(w)
    try:
        assert os.read(r, 100).strip() == b"1", "container A should see its own segment"
    finally:
        os.close(r)
    assert a.poll() is None
    seen_by_b = runner.sh("ipcs -m | grep -c 0x || true").stdout.strip()
    assert seen_by_b == "0"


def test_pid_namespace_shows_only_container_processes(runner: Runner) -> None:
    ran = runner.sh("cat /proc/1/comm; for p in /proc/[0-9]*; do echo ${p#/proc/}; done")
    lines = ran.stdout.split()
    assert lines[0] == "nsv-init"
    pids = {int(p) for p in lines[1:]}
    assert 1 in pids
    assert max(pids) < 10, f"host processes visible: {sorted(pids)}"


def test_mount_inside_does_not_appear_on_host(runner: Runner) -> None:
    with_admin = (*caps.DEFAULT_CAPABILITIES, "SYS_ADMIN")
    r, w = os.pipe()
    c = runner.start(runner.spec(
        ["/bin/sh", "-c", "mount -t tmpfs nsvprobe /mnt-probe && echo mounted; exec sleep 30"],
        capabilities=with_admin, mounts=(Mount(target="/mnt-probe", type="tmpfs"),)),
        stdout=w)
    os.close(w)
    try:
        assert os.read(r, 100).strip() == b"mounted"
    finally:
        os.close(r)
    assert c.poll() is None
    with open("/proc/self/mountinfo") as f:
        assert "nsvprobe" not in f.read()
    with open(f"/proc/{c.pid}/mountinfo") as f:
        assert "nsvprobe" in f.read()


def test_user_namespace_root_is_unprivileged_on_host(runner: Runner) -> None:
    r, w = os.pipe()
    c = runner.start(runner.spec(["/bin/sh", "-c", "id -u; exec sleep 30"]), stdout=w)
    os.close(w)
    try:
        assert os.read(r, 100).strip() == b"0"
    finally:
        os.close(r)
    with open(f"/proc/{c.pid}/status") as f:
        uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert all(int(u) >= 65536 for u in uids), uids
    with open(f"/proc/{c.pid}/uid_map") as f:
        inside, outside, count = map(int, f.read().split())
    assert (inside, count) == (0, 65536) and outside >= 65536


def test_user_namespace_ranges_do_not_overlap(runner: Runner) -> None:
    starts = []
    for _ in range(3):
        c = runner.start(runner.spec(SLEEP))
        with open(f"/proc/{c.pid}/uid_map") as f:
            starts.append(int(f.read().split()[1]))
    starts.sort()
    assert all(b - a >= 65536 for a, b in zip(starts, starts[1:], strict=False))


def test_net_namespace_has_only_loopback(runner: Runner) -> None:
    ran = runner.sh("ls /sys/class/net")
    assert ran.stdout.split() == ["lo"]


# --- the init -------------------------------------------------------------------------

def test_thousand_orphans_are_reaped(runner: Runner) -> None:
    before = host_state()
    zombie_children_before = set(before["zombies"]) & set(before["children"])
    ran = runner.sh(
        "i=0; while [ $i -lt 1000 ]; do (sleep 0.01 &); i=$((i+1)); done; sleep 1; "
        "z=0; for s in /proc/[0-9]*/stat; do read -r l < $s 2>/dev/null || continue; "
        "case \"${l##*) }\" in Z*) z=$((z+1));; esac; done; echo zombies=$z",
        timeout=60)
    assert ran.status.exit_code == 0, ran.stderr
    assert ran.stdout.strip() == "zombies=0"
    state = host_state()
    leftover = set(state["zombies"]) & set(state["children"]) - zombie_children_before
    assert not leftover, "a zombie child is left"


def _start_trapping(runner: Runner, script: str):
    r, w = os.pipe()
    c = runner.start(runner.spec(["/bin/sh", "-c", script]), stdout=w)
    os.close(w)
    assert os.read(r, 100) == b"ready\n"
    return c, r


def test_signals_reach_the_workload(runner: Runner) -> None:
    c, r = _start_trapping(runner, "trap 'echo HUP' HUP; trap 'echo USR1' USR1; "
                                   "trap 'echo TERM; exit 3' TERM; echo ready; "
                                   "while :; do sleep 0.05; done")
    try:
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
            time.sleep(0.1)
            c.signal(sig)
        out = read_until_eof(r, 10).decode().split()
    finally:
        os.close(r)
    assert out == ["HUP", "USR1", "TERM"]
    assert c.wait(10).exit_code == 3


def test_stop_signals_are_ignored_by_the_init(runner: Runner) -> None:
    c, r = _start_trapping(runner, "echo ready; exec sleep 30")
    os.close(r)
    c.signal(signal.SIGTSTP)
    time.sleep(0.2)
    with open(f"/proc/{c.pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "R")
    assert c.poll() is None


@pytest.mark.parametrize(("script", "code", "sig"), [
    ("exit 0", 0, None), ("exit 3", 3, None), ("kill -9 $$", 137, 9), ("kill -15 $$", 143, 15),
])
def test_exit_status_is_exact(runner: Runner, script: str, code: int, sig: int | None) -> None:
    status = runner.sh(script).status
    assert status.exit_code == code
    assert status.signal == sig


def test_exit_status_is_recorded_in_the_exit_file(runner: Runner, tmp_path) -> None:
    path = str(tmp_path / "exit")
    c = runner.start(runner.spec(["/bin/sh", "-c", "exit 7"]), exit_file=path)
    assert c.wait(10).exit_code == 7
    from supervisor.runtime.status import read_exit_file
    recorded = read_exit_file(path)
    assert recorded is not None and recorded.exit_code == 7


def test_command_not_found_exits_127(runner: Runner) -> None:
    before = host_state()
    with pytest.raises(LaunchError, match=r"exec /no/such/cmd: No such file") as err:
        runner.start(runner.spec(["/no/such/cmd"]))
    assert err.value.exit_code == 127
    assert host_state() == before


def test_not_executable_exits_126(runner: Runner) -> None:
    with pytest.raises(LaunchError, match=r"exec /etc/hostname: Permission denied") as err:
        runner.start(runner.spec(["/etc/hostname"]))
    assert err.value.exit_code == 126


def test_missing_workdir_is_named_not_blamed_on_the_command(runner: Runner) -> None:
    with pytest.raises(LaunchError, match=r"chdir /nonexistent: No such file") as err:
        runner.start(runner.spec(["/bin/true"], workdir="/nonexistent"))
    assert err.value.step == "chdir /nonexistent"


def test_workload_gets_clean_signal_mask_and_default_dispositions(runner: Runner) -> None:
    ran = runner.sh("grep -E '^Sig(Blk|Ign)' /proc/self/status")
    fields = dict(line.split(":\t") for line in ran.stdout.splitlines())
    assert int(fields["SigBlk"], 16) == 0
    # Nothing ignored: not SIGPIPE (Python's), SIGINT (the fork server's), nor glibc's
    # internal 32 and 33 (which its posix_spawn leaves ignored).
    assert int(fields["SigIgn"], 16) == 0


def test_init_terminates_what_the_workload_left_behind(runner: Runner) -> None:
    ran = runner.sh("sleep 300 & exit 5", kill_grace=1.0)
    assert ran.status.exit_code == 5


# --- security probes from inside --------------------------------------------------------

PROBES = r"""
mount -t tmpfs none /tmp 2>/dev/null && echo mount=yes || echo mount=no
kill -0 %(host_pid)d 2>/dev/null && echo signal_host=yes || echo signal_host=no
[ -e /proc/%(host_pid)d ] && echo see_host=yes || echo see_host=no
(echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo write_sys=yes || echo write_sys=no
(echo h > /proc/sysrq-trigger) 2>/dev/null && echo sysrq=yes || echo sysrq=no
for p in %(masked)s; do echo "masked:$p=$(cat $p 2>/dev/null | wc -c)"; done
grep -E '^(CapInh|CapBnd|CapEff|NoNewPrivs)' /proc/self/status | tr -d '\t' | tr ':' '='
cd /tmp && cd ../../.. && echo escape=$(pwd)
ls -di / | cut -d' ' -f1 | sed 's/^/root_ino=/'
ls -di ../../.. | cut -d' ' -f1 | sed 's/^/up_ino=/'
"""


@pytest.mark.parametrize("user_ns", [True, False])
def test_security_probes(runner: Runner, user_ns: bool) -> None:
    namespaces = NAMESPACES if user_ns else tuple(n for n in NAMESPACES if n != "user")
    masked = [p for p in MASKED_PATHS if os.path.isfile(p)]  # /proc/kcore is absent here
    assert masked, "no masked file exists on this kernel to probe"
    ran = runner.sh(PROBES % {"host_pid": os.getpid(), "masked": " ".join(masked)},
                    namespaces=namespaces, workdir="/tmp")
    probes = dict(line.split("=", 1) for line in ran.stdout.split())
    assert probes["mount"] == "no"
    assert probes["signal_host"] == "no"
    assert probes["see_host"] == "no"
    assert probes["write_sys"] == "no"
    assert probes["sysrq"] == "no"
    for path in masked:
        assert probes[f"masked:{path}"] == "0", f"{path} is readable"
    policy = caps.mask(caps.DEFAULT_CAPABILITIES)
    assert int(probes["CapInh"], 16) == 0
    assert int(probes["CapBnd"], 16) == policy
    assert int(probes["CapEff"], 16) == policy
    assert probes["NoNewPrivs"] == "1"
    assert probes["escape"] == "/"
    assert probes["root_ino"] == probes["up_ino"]


def test_capabilities_follow_the_policy(runner: Runner) -> None:
    wanted = caps.resolve(add=["NET_ADMIN"], drop=["CHOWN", "KILL"])
    ran = runner.sh("grep -E '^Cap(Bnd|Eff)' /proc/self/status", capabilities=wanted)
    for line in ran.stdout.splitlines():
        assert int(line.split()[1], 16) == caps.mask(wanted)


def test_non_root_user_has_no_effective_capabilities(runner: Runner) -> None:
    ran = runner.sh("id -u; id -g; grep CapEff /proc/self/status", uid=1000, gid=1000)
    uid, gid, capeff = ran.stdout.split("\n")[:3]
    assert (uid, gid) == ("1000", "1000")
    assert int(capeff.split()[1], 16) == 0


def test_env_workdir_and_rlimits(runner: Runner) -> None:
    ran = runner.sh("echo $MODE; pwd; ulimit -n", env={"MODE": "prod"}, workdir="/tmp",
                    rlimits={"nofile": (321, 321)})
    assert ran.stdout.split() == ["prod", "/tmp", "321"]


def test_an_env_as_large_as_exec_takes_reaches_the_workload(runner: Runner) -> None:
    # 12 variables of 100 KB: 1.2 MB, under exec's 2 MiB. The spec crosses to the init in
    # one packet, which a socket's default send buffer (~208 KiB) refused: EMSGSIZE.
    env = {f"V{i}": chr(ord("a") + i) * 100_000 for i in range(12)}
    ran = runner.sh('for v in "$V0" "$V11"; do echo ${#v} $(echo "$v" | head -c 1); done',
                    env=env)
    assert (ran.status.exit_code, ran.stdout) == (0, "100000 a\n100000 l\n")
    # Past what any exec takes, a launch says what is too big and leaves nothing.
    env = {f"V{i}": "x" * 100_000 for i in range(50)}
    with pytest.raises(LaunchError, match=r"its spec is \d+ bytes, more than the 4194304 a "
                                          "launch carries: shrink its env or command"):
        runner.start(runner.spec(["/bin/true"], env=env))


def test_readonly_rootfs_and_user_mounts(runner: Runner, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("hi\n")
    ran = runner.sh(
        "cat /data/hello; (echo x > /data/new) 2>/dev/null && echo data_rw || echo data_ro; "
        "(echo x > /etc/probe) 2>/dev/null && echo root_rw || echo root_ro; "
        "echo y > /scratch/f && echo scratch_rw",
        readonly_rootfs=True, namespaces=tuple(n for n in NAMESPACES if n != "user"),
        mounts=(Mount(target="/data", source=str(data), readonly=True),
                Mount(target="/scratch", type="tmpfs")))
    assert ran.stdout.split() == ["hi", "data_ro", "root_ro", "scratch_rw"]


def test_directory_rootfs(runner: Runner, tmp_path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    # A rootfs of its own: the host's /usr bound in, so /bin/sh works.
    ran = runner.sh("test -e /marker && echo own-root", rootfs=str(root),
                    mounts=(Mount(target="/usr", source="/usr", readonly=True),
                            Mount(target="/lib", source="/lib", readonly=True),
                            Mount(target="/lib64", source="/lib64", readonly=True),
                            Mount(target="/bin", source="/bin", readonly=True)),
                    namespaces=tuple(n for n in NAMESPACES if n != "user"),
                    ) if (root / "marker").touch() is None else None
    assert ran.stdout.strip() == "own-root"


# --- bad specs --------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rootfs": "/no/such/rootfs"}, r"rootfs: /no/such/rootfs is not a directory"),
    ({"rootfs": "relative"}, r"rootfs: 'relative' must be an absolute path"),
    ({"mounts": (Mount(target="/x", source="/no/such/source"),)},
     r"mounts\[0\]\.source: /no/such/source does not exist"),
    ({"mounts": (Mount(target="/proc/x", source="/tmp"),)}, r"mounts\[0\]\.target"),
    ({"uid_map": ()}, r"uid_map: must have at least one line"),
    ({"uid_map": (__import__("supervisor.runtime").runtime.IdMapping(0, 1000, 0),)},
     r"uid_map\[0\]: inside, outside >= 0 and count > 0"),
    ({"namespaces": ("mount", "time")}, r"namespaces: unknown \['time'\]"),
    ({"capabilities": ("FLY",)}, r"capabilities: unknown capability 'FLY'"),
    ({"name": "Bad Name"}, r"name: 'Bad Name' must match"),
])
def test_bad_spec_is_refused_before_anything_runs(runner: Runner, kwargs, message) -> None:
    before = host_state()
    spec = ContainerSpec(**({"name": runner.unique(), "command": ["/bin/true"]} | kwargs))
    with pytest.raises(SpecError, match=message):
        runner.runtime.start(spec)
    assert host_state() == before


def test_failure_inside_the_launch_names_the_step_and_leaves_nothing(runner: Runner,
                                                                     tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to("/etc")  # a mount target that points out of the rootfs
    before = host_state()
    # No user namespace: its root could not create /proc in a root-owned 0700 rootfs.
    spec = runner.spec(["/bin/true"], rootfs=str(root),
                       namespaces=tuple(n for n in NAMESPACES if n != "user"),
                       mounts=(Mount(target="/data", source=str(tmp_path)),))
    with pytest.raises(LaunchError, match=r"mount target /data: .*is a symlink"):
        runner.runtime.start(spec)
    assert host_state() == before


def test_rootfs_removed_after_validation_is_a_launch_error(runner: Runner, tmp_path) -> None:
    before = host_state()
    spec = runner.spec(["/bin/true"], rootfs=str(tmp_path / "gone"))
    (tmp_path / "gone").mkdir()
    spec = runner.runtime.prepare(spec)
    (tmp_path / "gone").rmdir()
    with pytest.raises((LaunchError, SpecError), match=r"rootfs"):
        runner.runtime.start(spec)
    assert host_state() == before


# --- held start and the daemon's reaping path --------------------------------------------

def test_held_container_runs_nothing_until_go(runner: Runner) -> None:
    r, w = os.pipe()
    c = runner.start(runner.spec(["/bin/sh", "-c", "echo running"], hold=True), stdout=w)
    os.close(w)
    try:
        # The init's one child is the workload's process, held before its exec.
        with open(f"/proc/{c.pid}/task/{c.pid}/children") as f:
            children = f.read().split()
        assert len(children) == 1
        with open(f"/proc/{children[0]}/comm") as f:
            assert f.read().strip() == "nsv-setup"
        with open(f"/proc/{children[0]}/task/{children[0]}/children") as f:
            assert f.read().strip() == "", "the workload started before go()"
        assert c.poll() is None and c.workload_pid is None
        c.go()
        assert c.workload_pid is not None
        assert read_until_eof(r, 10) == b"running\n"
    finally:
        os.close(r)
    assert c.wait(10).exit_code == 0


def test_held_container_whose_exec_fails_reports_it_at_go(runner: Runner) -> None:
    c = runner.start(runner.spec(["/nonexistent"], hold=True))
    with pytest.raises(LaunchError, match=r"exec /nonexistent: No such file") as err:
        c.go()
    assert err.value.step == "exec" and err.value.exit_code == 127
    assert c.wait(10).exit_code == 127


def test_reap_all_hands_statuses_to_waiting_containers(unique) -> None:
    from supervisor.runtime import Runtime
    from supervisor.runtime.reaper import Reaper

    reaper = Reaper()
    with Runtime(reaper=reaper) as rt:
        c = rt.start(ContainerSpec(name=unique("reap"), command=["/bin/sh", "-c", "exit 4"]))
        try:
            deadline = time.monotonic() + 10
            reaped: list[tuple[int, int]] = []
            while c.pid not in [pid for pid, _ in reaped] and time.monotonic() < deadline:
                time.sleep(0.01)
                reaped += reaper.reap_all()  # what the daemon does on SIGCHLD
            assert c.pid in [pid for pid, _ in reaped]
            assert c.wait(1).exit_code == 4  # the status reached the container's handle
        finally:
            c.kill()
            c.close()


# --- cgroups ---------------------------------------------------------------------------

def _own_cgroups(pid: int | str) -> dict[str, str]:
    """controllers -> cgroup path, from /proc/PID/cgroup."""
    with open(f"/proc/{pid}/cgroup") as f:
        return {c: path for _n, c, path in (line.rstrip("\n").split(":", 2) for line in f)}


def _only_child(pid: int, comm: str, timeout: float = 5.0) -> int:
    """The one child of ``pid``, once it is ``comm`` (the workload's process has exec'd)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
        if len(kids) == 1:
            with open(f"/proc/{kids[0]}/comm") as f:
                if f.read().strip() == comm:
                    return kids[0]
        assert time.monotonic() < deadline, f"children of {pid}: {kids}"
        time.sleep(0.01)


def _remove_test_cgroup(d: str) -> None:
    """Kill what is in a cgroup this test made (only its own processes), then rmdir it."""
    deadline = time.monotonic() + 10
    while os.path.isdir(d):
        with open(f"{d}/cgroup.procs") as f:
            for pid in f.read().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            os.rmdir(d)
        except OSError:  # EBUSY until the kernel has let go of the killed tasks
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def v1_cgroups(unique: callable) -> Iterator[dict[str, str]]:
    """A fresh cgroup in the v1 pids and memory hierarchies: controller -> directory."""
    layout = detect()
    if layout.version != 1 or not {"pids", "memory"} <= layout.controllers:
        pytest.skip("needs cgroup v1 pids and memory hierarchies")
    dirs = {c: os.path.join(layout.v1_mounts[c], unique("cg")) for c in ("pids", "memory")}
    for d in dirs.values():
        os.mkdir(d)
    yield dirs
    for d in dirs.values():
        _remove_test_cgroup(d)


def test_init_is_born_in_its_v1_cgroups(runner: Runner, runtime: Runtime,
                                        v1_cgroups: dict[str, str]) -> None:
    home = _own_cgroups(runtime.fork_server_pid)
    c = runner.start(runner.spec(SLEEP, cgroup_procs=tuple(
        f"{d}/cgroup.procs" for d in v1_cgroups.values())))
    workload = _only_child(c.pid, "sleep")
    for controller, d in v1_cgroups.items():
        with open(f"{d}/cgroup.procs") as f:
            members = {int(p) for p in f.read().split()}
        assert {c.pid, workload} <= members, controller
    # The fork server stepped into the container's cgroups for the clone and back out.
    assert _own_cgroups(runtime.fork_server_pid) == home


def test_failed_clone_inside_a_cgroup_leaves_the_fork_server_home(
        runner: Runner, runtime: Runtime, v1_cgroups: dict[str, str]) -> None:
    home = _own_cgroups(runtime.fork_server_pid)
    with open(f"{v1_cgroups['pids']}/pids.max", "w") as f:
        f.write("1")  # the fork server itself fills it: the init cannot be cloned there
    before = host_state()
    with pytest.raises(LaunchError) as e:
        runner.start(runner.spec(SLEEP, cgroup_procs=tuple(
            f"{d}/cgroup.procs" for d in v1_cgroups.values())))
    assert e.value.step == "clone" and "Resource temporarily unavailable" in str(e.value)
    assert _own_cgroups(runtime.fork_server_pid) == home
    assert host_state() == before
    for d in v1_cgroups.values():
        with open(f"{d}/cgroup.procs") as f:
            assert f.read() == ""
    assert runner.run(["/bin/true"]).status.exit_code == 0  # and it still serves


def test_missing_cgroup_is_named(runner: Runner, v1_cgroups: dict[str, str]) -> None:
    gone = v1_cgroups["pids"] + "-gone"
    with pytest.raises(LaunchError) as e:
        runner.start(runner.spec(SLEEP, cgroup_procs=(f"{gone}/cgroup.procs",)))
    assert e.value.step == f"join cgroup {gone}"
    assert gone in str(e.value) and "No such file or directory" in str(e.value)


def test_launch_given_up_midway_leaves_nothing(runtime: Runtime, unique: callable,
                                               v2_cgroup: str) -> None:
    # Born in a frozen cgroup, the init cannot answer its spec however fast this machine
    # is, so the steps must come to wait for the workload's exec: the caller gives up
    # there, with the init alive and holding its spec.
    with open(f"{v2_cgroup}/cgroup.freeze", "w") as f:
        f.write("1")
    before = host_state()
    steps = runtime.launch(ContainerSpec(name=unique(), command=SLEEP,
                                         cgroup_procs=(f"{v2_cgroup}/cgroup.procs",)))
    sock = next(steps)
    for _ in range(10):
        waiting_in = steps.gi_yieldfrom.gi_yieldfrom.gi_code.co_name  # type: ignore[union-attr]
        if waiting_in == "_exec_of":
            break
        assert select.select([sock], [], [], 10)[0], f"no answer while in {waiting_in}"
        sock = steps.send(None)
    assert waiting_in == "_exec_of"
    with open(f"{v2_cgroup}/cgroup.procs") as f:
        assert len(f.read().split()) == 1  # the init, frozen
    with pytest.raises(KeyboardInterrupt):
        steps.throw(KeyboardInterrupt())
    assert host_state() == before
    with open(f"{v2_cgroup}/cgroup.procs") as f:
        assert f.read() == ""  # the init was killed and reaped, frozen as it was


def test_a_dead_fork_server_is_replaced(unique: callable) -> None:
    rt = Runtime()
    try:
        old = rt.fork_server_pid
        os.kill(old, signal.SIGKILL)  # our own child
        time.sleep(0.1)
        c = rt.start(ContainerSpec(name=unique(), command=["/bin/true"]))
        assert c.wait(10).exit_code == 0
        c.close()
        assert rt.fork_server_pid != old
        assert not os.path.exists(f"/proc/{old}")  # and the old one was reaped
    finally:
        rt.close()
    assert not os.path.exists(f"/proc/{rt.fork_server_pid}")


@pytest.fixture
def v2_cgroup(unique: callable) -> Iterator[str]:
    """A fresh cgroup in the cgroup2 hierarchy (on a v1 host: the empty unified one)."""
    mounts = [m for m in mountinfo.read() if m.fstype == "cgroup2" and m.root == "/"]
    if not mounts:
        pytest.skip("no cgroup2 hierarchy mounted")
    d = os.path.join(mounts[0].mount_point, unique("cg2"))
    os.mkdir(d)
    yield d
    _remove_test_cgroup(d)


def test_clone_into_a_v2_cgroup_is_born_there(v2_cgroup: str) -> None:
    r, w = os.pipe()
    fd = os.open(v2_cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pid = libc.clone_fork(0, fd)
        if pid == 0:  # the child's very first look at its cgroup
            with open("/proc/self/cgroup", "rb") as f:
                os.write(w, f.read())
            os._exit(0)
    finally:
        os.close(fd)
        os.close(w)
    seen = read_until_eof(r, 10).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert f"0::/{os.path.basename(v2_cgroup)}\n" in seen


def test_init_is_born_in_its_v2_cgroup(runner: Runner, runtime: Runtime,
                                       v2_cgroup: str) -> None:
    home = _own_cgroups(runtime.fork_server_pid)
    c = runner.start(runner.spec(SLEEP, cgroup_procs=(f"{v2_cgroup}/cgroup.procs",)))
    workload = _only_child(c.pid, "sleep")
    with open(f"{v2_cgroup}/cgroup.procs") as f:
        assert {c.pid, workload} <= {int(p) for p in f.read().split()}
    assert _own_cgroups(runtime.fork_server_pid) == home


def _open_files_limit_in_a_container(rt: Runtime, name: str) -> str:
    r, w = os.pipe()
    try:
        c = rt.start(ContainerSpec(name=name, command=[
            "/bin/sh", "-c", 'echo "$(ulimit -n) $(ulimit -Hn)"']), stdout=w)
    finally:
        os.close(w)
    try:
        out = read_until_eof(r, 10).decode().strip()
        assert c.wait(10).exit_code == 0
    finally:
        os.close(r)
        c.close()
    return out


def test_containers_keep_the_open_files_limit_the_runtime_was_made_with(
        unique: callable) -> None:
    # nsvisord raises its own limit once its runtime exists: its containers must not get
    # the raised one, from the first fork server or from one that replaced it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 512 if soft == resource.RLIM_INFINITY else min(512, soft)
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        rt = Runtime()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert _open_files_limit_in_a_container(rt, unique()) == f"{low} {hard_text}"
        os.kill(rt.fork_server_pid, signal.SIGKILL)  # replaced, by a caller at `soft`
        time.sleep(0.1)
        assert _open_files_limit_in_a_container(rt, unique()) == f"{low} {hard_text}"
    finally:
        rt.close()


def test_wait_and_poll_take_a_pidfd_above_1024(runner: Runner, high_fd: int) -> None:
    # A daemon with ~500 containers holds pidfds that select() refuses.
    c = runner.start(runner.spec(["/bin/sleep", "30"]))
    os.dup2(c.pidfd, high_fd, inheritable=False)
    os.close(c.pidfd)
    c.pidfd = high_fd
    with pytest.raises(TimeoutError):
        c.wait(0.05)
    c.kill()
    assert c.wait(5).signal == signal.SIGKILL
    c.close()  # before the fixture closes fd high_fd
