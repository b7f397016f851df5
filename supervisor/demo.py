"""A tour of the runtime: run each container of a config once and show what it sees.

``python -m supervisor.demo [config/tour.toml]`` - the runtime alone, no daemon: each
container runs to completion in its own namespaces; its output is printed under its
name, with the exit status and launch time. For people learning what a container is.
"""

from __future__ import annotations

import os
import sys
import time

from .model.config import ConfigError, load_config
from .runtime import LaunchError, Runtime, SpecError
from .specs import spec_from_config


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "config/tour.toml"
    if os.geteuid() != 0:
        print("demo: run as root (containers need namespaces and mounts)", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
    except (ConfigError, OSError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    failed = 0
    with Runtime() as runtime:
        for cfg in config.containers.values():
            out_r, out_w = os.pipe()
            started = time.perf_counter()
            try:
                container = runtime.start(spec_from_config(cfg), stdout=out_w, stderr=out_w)
            except (LaunchError, SpecError) as e:
                print(f"== {cfg.name}: could not start: {e}\n")
                failed += 1
                continue
            finally:
                os.close(out_w)
            launch_ms = (time.perf_counter() - started) * 1000
            with os.fdopen(out_r, "rb") as out:
                output = out.read().decode(errors="replace")
            status = container.wait(timeout=30)
            container.close()
            print(f"== {cfg.name} (pid {container.pid} on the host, started in "
                  f"{launch_ms:.1f} ms, {status.describe()})")
            print("   " + output.rstrip().replace("\n", "\n   ") + "\n")
            failed += status.exit_code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
