"""Turn a container spec into an isolated, running workload.

Public API: :class:`Runtime`, :class:`Container`, :class:`ContainerSpec`,
:class:`Mount`, :class:`IdMapping`, :class:`ExitStatus`, :class:`LaunchError`,
:class:`SpecError`. The fork server imports the submodules directly, never this package's
client, so its import path stays small.
"""

from .client import Container, Runtime
from .errors import LaunchError
from .spec import ContainerSpec, IdMapping, Mount, SpecError
from .status import ExitStatus

__all__ = ["Container", "ContainerSpec", "ExitStatus", "IdMapping", "LaunchError", "Mount",
           "Runtime", "SpecError"]
