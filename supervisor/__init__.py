"""nsvisor: a Linux container supervisor.

Layout (each layer only imports the ones below it):

- ``supervisor.model``   pure models: config schema, state machine, restart policy. No I/O.
- ``supervisor.linux``   thin Linux layer: syscalls through ctypes, capabilities, signalfd.
- ``supervisor.runtime`` turns a container spec into an isolated running workload
  (fork server, launcher, pid-1 init).
"""

__version__ = "0.1.0"
