"""A JSON writer for the report messages the container side sends to the caller.

The caller parses them with :mod:`json`; the fork server and the inits only ever write
flat objects of str, int, float, bool and None, and importing json (with re) there would
cost every container init memory. Non-ASCII is escaped, as ``json.dumps`` does.
"""


def _string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}")
    return '"' + "".join(out) + '"'


def _value(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(**msg: object) -> bytes:
    """``{"key": value, ...}`` as UTF-8 JSON bytes."""
    return ("{" + ", ".join(f"{_string(k)}: {_value(v)}" for k, v in msg.items())
            + "}").encode()
