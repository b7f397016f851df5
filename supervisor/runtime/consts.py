"""Constants shared by the client and the container side, with no imports at all.

The fork server and every container init load this module; keeping it (and everything
else on the container side) free of dataclasses, typing, json, re or enum keeps the fork
server small, and the pages every init shares with it untouched.
"""

NAMESPACES = ("mount", "uts", "ipc", "pid", "net", "user", "cgroup")
# The kernel's short names, as /proc/PID/ns/* and lsns spell them.
NS_PROC_NAME = {
    "mount": "mnt", "uts": "uts", "ipc": "ipc", "pid": "pid", "net": "net", "user": "user",
    "cgroup": "cgroup",
}

# Masked and read-only paths, as Docker and runc set them (runtimes.md §1.6, §7 items 16-17).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# An unprivileged host id range of this size backs each user namespace.
ID_RANGE_SIZE = 65536

# The largest spec a launch carries to the init, in one packet: env and argv up to what an
# exec takes (ARG_MAX is 2 MiB with the usual 8 MiB stack), with room for the rest.
SPEC_MAX = 4 << 20

# Log lines longer than this are split; shorter ones always reach the file whole.
LOG_LINE_MAX = 65536
