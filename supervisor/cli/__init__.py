"""nsvisorctl: a thin client of nsvisord's HTTP/JSON API on its Unix socket.

Kept light on purpose (stdlib ``socket``, ``json`` and ``argparse`` only): a status call
must cost little more than the interpreter's own start.
"""
