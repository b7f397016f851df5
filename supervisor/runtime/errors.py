"""Errors of the runtime, each naming the step that failed.

Loaded on the container side too, so it imports nothing heavy (no contextlib).
"""

from __future__ import annotations

import errno as errno_names
import os


class LaunchError(Exception):
    """A container could not be started. ``step`` names what failed, ``errno`` why.

    ``exit_code`` is set when the container's init got as far as running and exited
    (127/126 for an exec failure).
    """

    def __init__(self, message: str, *, errno: int = 0, step: str = "",
                 exit_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.step = step
        self.exit_code = exit_code


class SetupError(Exception):
    """Raised inside the launcher and the init; travels to the caller as a LaunchError."""

    def __init__(self, step: str, err: int, detail: str = "") -> None:
        name = errno_names.errorcode.get(err, str(err))
        reason = detail or f"{os.strerror(err)} ({name})"
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.errno = err


class step:  # lower case: used like a function, ``with step("mount proc"): ...``
    """Turn an OSError inside the block into a SetupError that names the step."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> bool:
        if kind is not None and issubclass(kind, OSError):
            raise SetupError(self.name, error.errno or 0) from None  # type: ignore[union-attr]
        return False
