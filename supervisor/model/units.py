"""Duration and size parsing for the config file, and the config error type.

Both parsers take ``where`` (the key path being parsed) so that every error can
point the user at the exact key, e.g. ``containers.web.backoff.max``.  They are
pure functions: the config loader, the CLI and tests share them.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["ConfigError", "parse_duration", "parse_size", "toml_type_name"]


class ConfigError(ValueError):
    """A config problem, located by file (``source``) and key path (``key``).

    ``str()`` gives the one-line form ``<source>: <key>: <message>`` (empty parts
    are left out) so the CLI and the daemon can print it as is.  It lives here,
    at the bottom of the model, so the unit parsers can raise it too.
    """

    def __init__(
        self,
        message: str,
        key: str = "",
        source: str = "",
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.key = key
        self.source = source
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.key, self.message) if part)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the attributes when pickled (the default would replay str(self) as message).
        return (
            _rebuild_config_error,
            (self.message, self.key, self.source, self.line, self.column),
        )

    def with_source(self, source: str) -> ConfigError:
        """The same error, attributed to ``source`` (parsers don't know the file name)."""
        return ConfigError(self.message, self.key, source, line=self.line, column=self.column)


def _rebuild_config_error(
    message: str, key: str, source: str, line: int | None, column: int | None
) -> ConfigError:
    return ConfigError(message, key, source, line=line, column=column)


def toml_type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "datetime" if hasattr(value, "isoformat") else type(value).__name__


def _show(value: object) -> str:
    """A short, quoted rendering of a bad value for error messages."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_FULL = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|s|m|h))+")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION_HINT = '(use e.g. "250ms", "10s", "5m" or a number of seconds)'


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``10`` / ``1.5`` / ``"250ms"`` / ``"10s"`` / ``"5m"`` / ``"1h"`` / ``"1m30s"``.

    Strings allow ms, s, m, h units and Go-style compounds; a bare number
    (string or not) is seconds.  Negative, NaN and infinite values are errors.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(
            f"expected a duration {_DURATION_HINT}, got {toml_type_name(value)}", where
        )
    if isinstance(value, str):
        text = value.strip()
        if _PLAIN_NUMBER.fullmatch(text):
            return float(text)
        if not _DURATION_FULL.fullmatch(text):
            raise ConfigError(f"{_show(value)} is not a duration {_DURATION_HINT}", where)
        total = 0.0
        for number, unit in _DURATION_PART.findall(text):
            # Divide for ms so "100ms" is exactly the float 0.1.
            total += float(number) / 1000 if unit == "ms" else float(number) * _DURATION_UNITS[unit]
        return total
    if not math.isfinite(value):
        raise ConfigError(f"{value!r} is not a duration {_DURATION_HINT}", where)
    if value < 0:
        raise ConfigError(f"{value!r} is negative (durations must be >= 0)", where)
    return float(value)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_HINT = '(use e.g. "512K", "64M", "1G" or a number of bytes)'


def parse_size(value: Any, where: str) -> int:
    """Bytes from ``100`` / ``"100"`` / ``"512K"`` / ``"64M"`` / ``"1G"`` / ``"1.5G"``.

    Multiples are binary (K = 1024) whatever the spelling ("64M", "64MB",
    "64MiB"), as for supervisord's logfile_maxbytes.  Fractions round down.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"expected a size {_SIZE_HINT}, got {toml_type_name(value)}", where)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{value!r} is negative (sizes must be >= 0)", where)
        return value
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ConfigError(f"{_show(value)} is not a size {_SIZE_HINT}", where)
    number, unit = match.groups()
    multiple = _SIZE_UNITS[unit.lower()]
    if "." in number:
        whole, _, frac = number.partition(".")
        # Exact integer arithmetic: "1.5G" must not pick up float rounding error.
        scale = 10 ** len(frac)
        return (int(whole or "0") * scale + int(frac or "0")) * multiple // scale
    return int(number) * multiple
