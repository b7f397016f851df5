"""Container start latency and per-container init memory: nsvisor against crun, runc,
bwrap, ``unshare`` + chroot and tini, on the same machine in the same run.

    sudo .venv/bin/python benchmarks/start_latency.py [--n 200] [--json]

Latency: N sequential ``/true`` containers per contender (after 3 warm-ups), each timed
from the start request to the observed exit *and* cleanup, with crun's default isolation
(pid, net, ipc, uts and mount namespaces, pivot_root, fresh /proc) in one minimal rootfs
shared by every contender. External tools are driven through ``subprocess.run``, whose own
cost is printed as a baseline. Contenders that are not installed, or fail here, are listed
with the reason instead of a number.

Memory: 20 idle containers (``sleep 1000``); the PSS of each container's init process
(``/proc/PID/smaps_rollup``), against ``tini -s -- sleep 1000`` started 20 times.

Everything started is killed and reaped by pid; the temp rootfs is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import reap_strays, summarize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

WARMUP = 3
MEM_COUNT = 20
RUN_TIMEOUT = 10.0  # per container start, wait or external command
CRUN_NS = ("mount", "uts", "ipc", "pid", "net")  # crun's default spec
ALL_NS = ("mount", "uts", "ipc", "pid", "net", "user", "cgroup")
HYBRID_CONTROLLERS = "/sys/fs/cgroup/unified/cgroup.controllers"
TARGET_RATIO, AIM_RATIO, TARGET_PSS_MIB = 1.0, 0.5, 1.5
CONTAINER_ID = f"nsvbench-{os.getpid()}"


# ---------------------------------------------------------------- statistics


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:120] if lines else "no output"


# ---------------------------------------------------------------- rootfs


def _is_static(path: str) -> bool:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return "not a dynamic executable" in out.stdout + out.stderr or "statically" in out.stdout


def _copy_with_libs(binary: str, root: str, name: str) -> None:
    shutil.copy2(binary, os.path.join(root, name))
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    for line in out.stdout.splitlines():
        parts = line.split()
        lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
        if lib.startswith("/") and os.path.exists(lib):
            dest = os.path.join(root, lib.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)


def build_rootfs(base: str) -> tuple[str, str]:
    """A minimal rootfs with /true and /sleep; returns (path, description)."""
    root = os.path.join(base, "rootfs")
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(os.path.join(root, d))
    busybox = shutil.which("busybox")
    if busybox and _is_static(busybox):
        shutil.copy2(busybox, os.path.join(root, "busybox"))
        os.symlink("busybox", os.path.join(root, "true"))
        os.symlink("busybox", os.path.join(root, "sleep"))
        kind = "static busybox"
    else:
        _copy_with_libs(shutil.which("true") or "/bin/true", root, "true")
        _copy_with_libs(shutil.which("sleep") or "/bin/sleep", root, "sleep")
        kind = "/bin/true + /bin/sleep with their ldd libs"
    # Readable by the unprivileged ids of a user namespace (mkdtemp makes base 0700).
    for d in (base, root):
        os.chmod(d, 0o755)
    return root, kind


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f
                if line.split()[4] == path or line.split()[4].startswith(path + "/")]


# ---------------------------------------------------------------- external contenders


def measure_command(cmd: list[str], n: int, warmup: int = WARMUP) -> dict:
    """Time ``subprocess.run(cmd)`` n times after a probe and warm-ups."""
    try:
        probe = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=RUN_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"[:120]}
    if probe.returncode != 0:
        return {"error": f"exit {probe.returncode}: {last_line(probe.stderr + probe.stdout)}"}
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=RUN_TIMEOUT)
        elapsed = (time.perf_counter() - t0) * 1000
        if r.returncode != 0:
            return {"error": f"run {i}: exit {r.returncode}"}
        if i >= warmup:
            times.append(elapsed)
    return {"times": times}


def oci_bundle(tool: str, base: str, root: str) -> str:
    """A bundle from ``<tool> spec``: terminal off, args /true, readonly root."""
    bundle = os.path.join(base, f"{tool}-bundle")
    os.makedirs(bundle)
    subprocess.run([tool, "spec"], cwd=bundle, check=True, capture_output=True,
                   timeout=RUN_TIMEOUT)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/true"]
    config["root"] = {"path": root, "readonly": True}
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return bundle


def _force_delete(tool: str, extra: list[str]) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run([tool, *extra, "delete", "-f", CONTAINER_ID], capture_output=True,
                       timeout=RUN_TIMEOUT)


def measure_crun(base: str, root: str, n: int) -> tuple[dict, str]:
    crun = shutil.which("crun")
    if not crun:
        return {"error": "not installed"}, ""
    bundle = oci_bundle("crun", base, root)
    cmd = [crun, "--cgroup-manager=disabled", "run", "-b", bundle, CONTAINER_ID]
    try:
        result = measure_command(cmd, n)
        if "error" not in result or not os.path.exists(HYBRID_CONTROLLERS):
            return result, "cgroups disabled"
        # crun 1.8 refuses the hybrid cgroup layout ("drop all controllers from
        # cgroupv2"): hide the v2 controllers in a private mount namespace and run the
        # whole timed loop in there, reporting back as JSON.
        empty = os.path.join(base, "empty")
        open(empty, "w").close()
        wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", empty,
                   HYBRID_CONTROLLERS, sys.executable, os.path.abspath(__file__),
                   "--_loop", json.dumps({"cmd": cmd, "n": n})]
        try:
            out = subprocess.run(wrapper, capture_output=True, text=True,
                                 timeout=RUN_TIMEOUT * (n + WARMUP + 1))
            wrapped = json.loads(out.stdout) if out.returncode == 0 else {
                "error": f"wrapper exit {out.returncode}: {last_line(out.stderr)}"}
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            wrapped = {"error": f"wrapper: {type(e).__name__}: {e}"[:120]}
        if "error" in wrapped:
            return {"error": f"{result['error']}; in unshare -m: {wrapped['error']}"}, ""
        return wrapped, "cgroups disabled, v2 controllers hidden (hybrid host)"
    finally:
        _force_delete(crun, ["--cgroup-manager=disabled"])


def measure_runc(base: str, root: str, n: int) -> tuple[dict, str]:
    runc = shutil.which("runc")
    if not runc:
        return {"error": "not installed"}, ""
    bundle = oci_bundle("runc", base, root)
    try:
        return measure_command([runc, "run", "-b", bundle, CONTAINER_ID], n), \
            "default spec, runc's own cgroups"
    finally:
        _force_delete(runc, [])


# ---------------------------------------------------------------- nsvisor


def measure_nsvisor(rt, n: int, tag: str, **spec_args) -> dict:
    from supervisor.runtime import ContainerSpec, LaunchError

    times = []
    for i in range(WARMUP + n):
        name = f"bench-{tag}-{i}"
        t0 = time.perf_counter()
        try:
            c = rt.start(ContainerSpec(name=name, **spec_args), timeout=RUN_TIMEOUT)
        except (LaunchError, OSError) as e:
            return {"error": f"start {i}: {e}"[:120]}
        try:
            status = c.wait(timeout=RUN_TIMEOUT)
        except TimeoutError as e:
            c.kill()
            c.wait(timeout=RUN_TIMEOUT)
            return {"error": str(e)}
        finally:
            c.close()
        elapsed = (time.perf_counter() - t0) * 1000
        rt.ids.release(name)
        if status.exit_code != 0:
            return {"error": f"run {i}: exit {status.exit_code}"}
        if i >= WARMUP:
            times.append(elapsed)
    return {"times": times}


# ---------------------------------------------------------------- memory


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss line for pid {pid}")


def mem_summary(kib: list[int]) -> dict:
    return {"count": len(kib), "median_mib": statistics.median(kib) / 1024,
            "sum_mib": sum(kib) / 1024, "max_mib": max(kib) / 1024}


def memory_nsvisor(rt, root: str) -> dict:
    from supervisor.runtime import ContainerSpec

    containers = []
    try:
        for i in range(MEM_COUNT):
            spec = ContainerSpec(name=f"bench-mem-{i}", command=["/sleep", "1000"],
                                 rootfs=root, namespaces=CRUN_NS, readonly_rootfs=True)
            containers.append(rt.start(spec, timeout=RUN_TIMEOUT))
        time.sleep(0.3)  # let every init settle in its wait loop
        result = mem_summary([pss_kib(c.pid) for c in containers])
        zygote = getattr(rt, "_zygote_pid", None)
        if zygote:
            result["fork_server_mib"] = pss_kib(zygote) / 1024
        return result
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {"error": f"{type(e).__name__}: {e}"[:120]}
    finally:
        for c in containers:
            c.kill()
        for c in containers:
            with contextlib.suppress(TimeoutError):
                c.wait(timeout=RUN_TIMEOUT)
            c.close()


def memory_tini() -> dict:
    tini = shutil.which("tini")
    if not tini:
        return {"error": "not installed"}
    sleep = shutil.which("sleep") or "/bin/sleep"
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(MEM_COUNT):
            procs.append(subprocess.Popen([tini, "-s", "--", sleep, "1000"],
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        time.sleep(0.3)
        return mem_summary([pss_kib(p.pid) for p in procs])
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {"error": f"{type(e).__name__}: {e}"[:120]}
    finally:
        for p in procs:
            # tini forwards SIGTERM to sleep and exits with it; its session is ours alone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=RUN_TIMEOUT)


# ---------------------------------------------------------------- report

ORDER = [
    ("baseline", 'subprocess.run(["/bin/true"]) (no isolation)'),
    ("unshare", "unshare -fpmuin --mount-proc + chroot"),
    ("bwrap", "bwrap --unshare-all --ro-bind ROOT /"),
    ("crun", "crun run"),
    ("runc", "runc run"),
    ("nsvisor_a", "nsvisor (a) pid,net,ipc,uts,mount"),
    ("nsvisor_b", "nsvisor (b) = (a) + user"),
    ("nsvisor_c", 'nsvisor (c) all 7 ns, rootfs="host"'),
]
OURS = ("nsvisor_a", "nsvisor_b", "nsvisor_c")
ANCHORS = ("unshare", "bwrap", "crun", "runc")


def ratios(latency: dict) -> dict:
    out = {}
    for ours in OURS:
        for anchor in ANCHORS:
            a, b = latency.get(ours, {}), latency.get(anchor, {})
            if "median" in a and "median" in b:
                out[f"{ours}/{anchor}"] = a["median"] / b["median"]
    return out


def print_report(res: dict) -> None:
    m = res["machine"]
    print(f"nsvisor start latency - {m['date']}, {m['cpus']} vCPU, kernel {m['kernel']}, "
          f"Python {m['python']}")
    print(f"N={res['n']} sequential /true containers after {WARMUP} warm-ups; "
          f"rootfs: {res['rootfs']}; start request -> exit + cleanup, ms")
    print(f"{'contender':44} {'median':>7} {'p95':>7} {'min':>7}  a/x   b/x   c/x")
    lat, rat = res["latency"], res["ratios"]
    for key, label in ORDER:
        r = lat.get(key, {"error": "not run"})
        if "error" in r:
            print(f"{label:44} {'-':>7} {'-':>7} {'-':>7}  ({r['error']})")
            continue
        cells = "".join(f" {rat[f'{o}/{key}']:5.2f}" if f"{o}/{key}" in rat else "     -"
                        for o in OURS) if key in ANCHORS else ""
        print(f"{label:44} {r['median']:7.2f} {r['p95']:7.2f} {r['min']:7.2f} {cells}".rstrip())
        if r.get("note"):
            print(f"{'':46}({r['note']})")
    print("a/x, b/x, c/x: median of nsvisor (a), (b), (c) over the row's median.")
    crun_ratio = rat.get("nsvisor_a/crun")
    if crun_ratio is None:
        print("target nsvisor/crun <= 1.0 (aim 0.5): n/a (crun or nsvisor did not run)")
    else:
        verdict = "met" if crun_ratio <= TARGET_RATIO else "MISSED"
        aim = "reached" if crun_ratio <= AIM_RATIO else "not reached"
        print(f"target nsvisor/crun = {crun_ratio:.2f} <= {TARGET_RATIO} (aim {AIM_RATIO}): "
              f"{verdict}, aim {aim}; with user ns: "
              f"{rat.get('nsvisor_b/crun', float('nan')):.2f}")
    print()
    print(f"memory: {MEM_COUNT} idle containers (sleep 1000), PSS of each init, MiB")
    print(f"{'init':44} {'median':>7} {'max':>7} {'sum':>7}")
    for key, label in (("nsvisor", "nsvisor init (crun namespaces)"),
                       ("tini", "tini -s -- sleep 1000 (no namespaces)")):
        r = res["memory"].get(key, {"error": "not run"})
        if "error" in r:
            print(f"{label:44} {'-':>7} {'-':>7} {'-':>7}  ({r['error']})")
            continue
        print(f"{label:44} {r['median_mib']:7.2f} {r['max_mib']:7.2f} {r['sum_mib']:7.2f}")
    ours = res["memory"].get("nsvisor", {})
    if "fork_server_mib" in ours:
        print(f"{'nsvisor fork server (one per runtime)':44} {ours['fork_server_mib']:7.2f}")
    if "median_mib" in ours:
        verdict = "met" if ours["median_mib"] <= TARGET_PSS_MIB else "MISSED"
        print(f"target init PSS <= {TARGET_PSS_MIB} MiB: {ours['median_mib']:.2f}, {verdict}")
    print()
    print(f"leftovers: stray children reaped {res['leftovers']['stray_children']}, "
          f"mounts under the temp dir {res['leftovers']['mounts']}; total "
          f"{res['elapsed_s']:.0f} s")


# ---------------------------------------------------------------- main


def run(n: int) -> dict:
    from supervisor.runtime import Runtime

    started = time.monotonic()
    base = tempfile.mkdtemp(prefix="nsvbench-")
    latency: dict[str, dict] = {}
    memory: dict[str, dict] = {}
    notes: dict[str, str] = {}
    leftover_mounts: list[str] = []
    try:
        root, kind = build_rootfs(base)
        latency["baseline"] = measure_command(["/bin/true"], n)
        if shutil.which("unshare") and shutil.which("chroot"):
            latency["unshare"] = measure_command(
                ["unshare", "-fpmuin", f"--mount-proc={root}/proc", "chroot", root, "/true"], n)
        else:
            latency["unshare"] = {"error": "unshare or chroot not installed"}
        if shutil.which("bwrap"):
            latency["bwrap"] = measure_command(
                ["bwrap", "--unshare-all", "--ro-bind", root, "/", "--proc", "/proc",
                 "--dev", "/dev", "/true"], n)
        else:
            latency["bwrap"] = {"error": "not installed"}
        latency["crun"], notes["crun"] = measure_crun(base, root, n)
        latency["runc"], notes["runc"] = measure_runc(base, root, n)
        rt = Runtime()
        try:
            latency["nsvisor_a"] = measure_nsvisor(rt, n, "a", command=["/true"], rootfs=root,
                                                   namespaces=CRUN_NS, readonly_rootfs=True)
            latency["nsvisor_b"] = measure_nsvisor(rt, n, "b", command=["/true"], rootfs=root,
                                                   namespaces=(*CRUN_NS, "user"),
                                                   readonly_rootfs=True)
            latency["nsvisor_c"] = measure_nsvisor(rt, n, "c", command=["/bin/true"],
                                                   rootfs="host", namespaces=ALL_NS)
            memory["nsvisor"] = memory_nsvisor(rt, root)
        finally:
            rt.close()
        memory["tini"] = memory_tini()
    finally:
        stray = reap_strays()
        leftover_mounts = mounts_under(base)
        if leftover_mounts:  # never rmtree through a mount
            print(f"warning: mounts left under {base}, not removed: {leftover_mounts}",
                  file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    for key, r in latency.items():
        if "times" in r:
            latency[key] = summarize(r.pop("times"))
        if notes.get(key):
            latency[key]["note"] = notes[key]
    return {
        "n": n, "rootfs": kind,
        "machine": {"date": time.strftime("%Y-%m-%d"), "kernel": platform.release(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "latency": latency, "ratios": ratios(latency), "memory": memory,
        "targets": {"nsvisor/crun": TARGET_RATIO, "aim": AIM_RATIO,
                    "init_pss_mib": TARGET_PSS_MIB},
        "leftovers": {"stray_children": stray, "mounts": len(leftover_mounts)},
        "elapsed_s": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="containers per contender")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--_loop", help=argparse.SUPPRESS)  # internal: timed loop helper
    args = parser.parse_args(argv)
    if args._loop:
        job = json.loads(args._loop)
        print(json.dumps(measure_command(job["cmd"], job["n"])))
        return 0
    if os.geteuid() != 0:
        print("start_latency.py must run as root (it creates namespaces and mounts):\n"
              "  sudo .venv/bin/python benchmarks/start_latency.py", file=sys.stderr)
        return 2
    if args.n < 1:
        parser.error("--n must be >= 1")
    result = run(args.n)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
