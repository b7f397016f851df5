"""nsvisord: the daemon. Its services run as tasks in one anyio task group.

- ``signals``    the daemon's own signals, read from a signalfd in the event loop
- ``store``      per-container state files in ``state_dir`` (live restore)
- ``supervisor`` supervision: units, the restart policy's actions, dependencies, reload
- ``main``       the command line entry point: options, the config, ``--check``
- ``serve``      the running daemon: lock, log, signals, fork server, the task group
"""
