"""Turn a container spec into an isolated, running workload.

Public API: :class:`Runtime`, :class:`Container`, :class:`ContainerSpec`,
:class:`Mount`, :class:`IdMapping`, :class:`LogSpec`, :class:`ExitStatus`,
:class:`LaunchError`, :class:`SpecError`, :class:`Reaper`. The names are loaded on first
use (PEP 562): the fork server imports the container-side submodules through this
package and must not pull in the client (json, socket, threading, dataclasses...).
"""

from __future__ import annotations

_EXPORTS = {
    "Container": "client", "Runtime": "client", "LaunchError": "errors",
    "ContainerSpec": "spec", "IdMapping": "spec", "LogSpec": "spec", "Mount": "spec",
    "SpecError": "spec", "ExitStatus": "status", "Reaper": "reaper",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
