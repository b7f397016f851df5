"""Cost of nsvisord's ``/metrics``: scrape latency and size with N running containers, and
the daemon's memory per container.

    sudo .venv/bin/python benchmarks/scrape.py [--sizes 10,100,200] [--scrapes 50] [--json]

For each N (and N = 0 as the memory baseline) one nsvisord runs N containers
``/bin/sleep 100000`` (``startsecs = 0``, default isolation: all seven namespaces) with
the metrics endpoint on a free loopback port. Once every container is RUNNING and the
daemon has been idle for a moment:

1. the daemon's RSS (``VmRSS`` of its own pid, not the fork server or the inits) is read
   before any scrape: (RSS(N) - RSS(0)) / N is the per-container cost of its bookkeeping
   (unit, policy, container handle, cgroup handle, state file cache, tasks);
2. ``GET /metrics`` is timed ``--scrapes`` times, sequentially, from connect to the last
   byte (median and p95), with the body's size and series count, and the part of it the
   daemon spent reading cgroup and ``/proc/<pid>/net/dev`` files
   (``nsvisor_scrape_duration_seconds``); the rest is snapshot, serialisation and HTTP.

Target (issue 6): a scrape with 200 running containers under 100 ms.
Daemons run one after the other; each is stopped with SIGTERM and the harness of the tests
checks that no process, cgroup or temp dir is left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.daemon_harness import Daemon, wait_for  # noqa: E402

TARGET_MS = 100.0
SETTLE = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, timeout: float = 10.0) -> bytes:
    """One GET /metrics; the body (raises on a non-200 answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"scrape failed: {head[:80]!r}")
    return body


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def running(body: bytes) -> int:
    return sum(1 for line in body.splitlines()
               if line.startswith(b"nsvisor_container_state{") and b'state="RUNNING"' in line
               and line.endswith(b" 1.0"))


def measure(n: int, scrapes: int, prefix: str) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="nsvisor-scrape-"))
    daemon = Daemon(tmp, prefix)
    port = free_port()
    containers = "".join(
        f'[containers.{{p}}-{i}]\ncommand = ["/bin/sleep", "100000"]\nstartsecs = "0"\n'
        for i in range(n))
    daemon.write_config(containers, metrics_listen=f"127.0.0.1:{port}")
    try:
        proc = daemon.start()
        wait_for(lambda: _try_get(port), 30, "the metrics endpoint")
        wait_for(lambda: running(get(port)) == n, 60 + n, f"{n} containers RUNNING")
        time.sleep(SETTLE)
        rss = rss_kib(proc.pid)
        times, body = [], b""
        get(port)  # warm-up
        for _ in range(scrapes):
            began = time.perf_counter()
            body = get(port)
            times.append(time.perf_counter() - began)
        reads = [float(line.split()[1]) for line in body.splitlines()
                 if line.startswith(b"nsvisor_scrape_duration_seconds ")]
        times.sort()
        return {
            "containers": n, "rss_kib": rss,
            "median_ms": statistics.median(times) * 1000,
            "p95_ms": times[min(len(times) - 1, int(len(times) * 0.95))] * 1000,
            "read_ms": reads[0] * 1000 if reads else float("nan"),
            "size_kib": len(body) / 1024,
            "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        }
    finally:
        daemon.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def _try_get(port: int) -> bool:
    try:
        get(port, timeout=2)
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,200")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("scrape.py: run as root (namespaces, cgroups)", file=sys.stderr)
        return 1
    sizes = [int(x) for x in args.sizes.split(",")]
    tag = f"bs{os.getpid() % 10000}"
    results = [measure(n, args.scrapes, f"{tag}n{n}") for n in [0, *sizes]]
    base = results[0]["rss_kib"]
    for r in results:
        r["rss_per_container_kib"] = ((r["rss_kib"] - base) / r["containers"]
                                      if r["containers"] else float("nan"))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"Python {platform.python_version()}, {args.scrapes} scrapes per size")
    print()
    print("| containers | series | size | scrape median | p95 | of which file reads "
          "| daemon RSS | RSS per container |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        per = ("-" if not r["containers"] else f"{r['rss_per_container_kib']:.0f} KiB")
        print(f"| {r['containers']} | {r['series']} | {r['size_kib']:.0f} KiB "
              f"| {r['median_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['read_ms']:.1f} ms "
              f"| {r['rss_kib'] / 1024:.1f} MiB | {per} |")
    worst = max(r["p95_ms"] for r in results)
    largest = max(results, key=lambda r: r["containers"])
    verdict = "meets" if largest["median_ms"] < TARGET_MS else "MISSES"
    print(f"\n{largest['containers']} containers: median {largest['median_ms']:.1f} ms "
          f"{verdict} the {TARGET_MS:.0f} ms target (worst p95 {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
