"""nsvisorctl: control nsvisord the way supervisorctl drives supervisord.

``nsvisorctl [-s SOCKET | -c CONFIG] [--json] COMMAND [ARGS]``; no command: an interactive
shell. Every error is one line on stderr; exit codes are supervisorctl's (see EPILOG).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable

from .client import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_UNKNOWN,
    ApiError,
    Client,
    CliError,
    UsageError,
    find_socket,
    quote,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROG = "nsvisorctl"
NOT_RUNNING_STATES = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})
STATE_WIDTH = 8  # the longest state names: STARTING, STOPPING

EPILOG = """\
names: NAME, GROUP:* (every container of a group) or all.

exit status (supervisorctl's):
  0  success
  1  error (the daemon refused the request, or an unexpected failure)
  2  bad usage (unknown command or option, missing argument, bad -c file)
  3  status: a named or matched container is not running (STOPPED, EXITED, FATAL;
     STARTING, BACKOFF and STOPPING count as running)
  4  nsvisord unreachable (for every command: no socket, connection refused,
     permission denied), or no such container
  7  an operation failed: spawn error, not running (signal, exec, pid of a stopped
     container); "already started" on start and "not running" on stop are success
exec exits with the command's own exit status.

socket: -s SOCKET, else -c CONFIG's [supervisor].socket, else $NSVISOR_SOCKET,
else /run/nsvisor/nsvisor.sock.
"""


# --------------------------------------------------------------------------- parsing


class Parser(argparse.ArgumentParser):
    """Usage errors are one line (and an exception, so the shell survives them)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("argument COMMAND: invalid choice:"):
            word = message.split(":", 2)[2].split("(choose")[0].strip().strip("'")
            raise UsageError(f"no such command: {word} (see '{PROG} help')")
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """A width of our own: argparse's default imports shutil (and bz2, lzma) for it."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width or terminal_width(sys.stdout) - 2)


class _Exit(Exception):
    """argparse's own exit (after --help): a status, no message."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


COMMANDS: dict[str, tuple[Callable[[Context, argparse.Namespace], int], str]] = {}


def command(name: str, summary: str) -> Callable:
    def register(fn: Callable[[Context, argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = (fn, summary)
        return fn

    return register


def _names(sp: Parser, required: bool = True) -> None:
    sp.add_argument("names", nargs="+" if required else "*", metavar="NAME",
                    help="NAME, GROUP:* or all")


def _wait_names(sp: Parser) -> None:
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--wait", dest="wait", action="store_true", default=True,
                   help="answer once each is done or failed (default)")
    g.add_argument("--no-wait", dest="wait", action="store_false", help="answer at once")
    _names(sp)


def _setup_signal(sp: Parser) -> None:
    sp.add_argument("signal", metavar="SIG", help="name (HUP, SIGHUP) or number")
    _names(sp)


def _setup_tail(sp: Parser) -> None:
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    sp.add_argument("-n", "--lines", type=_lines, default=10, metavar="LINES",
                    help="how many of the last lines (default 10; also -LINES)")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("stream", nargs="?", default="stdout", choices=("stdout", "stderr"))


def _setup_pid(sp: Parser) -> None:
    sp.add_argument("name", nargs="?", metavar="NAME",
                    help="a container, GROUP:* or all; none: nsvisord's own pid")


def _setup_shutdown(sp: Parser) -> None:
    sp.add_argument("--no-wait", dest="wait", action="store_false", default=True,
                    help="do not wait for nsvisord to exit")
    sp.add_argument("--leave-running", action="store_true",
                    help="exit without stopping the containers (the next nsvisord "
                         "re-adopts them: to upgrade nsvisord)")


def _setup_exec(sp: Parser) -> None:
    sp.add_argument("-t", "--tty", action="store_true",
                    help="run the command on a pseudo-terminal")
    sp.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set an environment variable (repeatable)")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")


def _setup_name(sp: Parser) -> None:
    sp.add_argument("name", metavar="NAME")


def _setup_events(sp: Parser) -> None:
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing new ones")
    sp.add_argument("-n", "--lines", type=_lines, default=None, metavar="N",
                    help="how many of the recent ones (default: all kept; with -f, 10)")


def _setup_help(sp: Parser) -> None:
    sp.add_argument("topic", nargs="?", metavar="COMMAND")


def _no_args(sp: Parser) -> None:
    pass


SETUP: dict[str, Callable[[Parser], None]] = {
    "status": lambda sp: _names(sp, required=False),
    "start": _wait_names, "stop": _wait_names, "restart": _wait_names,
    "signal": _setup_signal, "tail": _setup_tail, "clear": _names, "reread": _no_args,
    "update": lambda sp: _names(sp, required=False), "add": _names, "remove": _names,
    "avail": _no_args, "pid": _setup_pid, "version": _no_args,
    "shutdown": _setup_shutdown, "reload": _no_args, "exec": _setup_exec,
    "inspect": _setup_name, "top": _setup_name, "events": _setup_events,
    "help": _setup_help, "quit": _no_args, "exit": _no_args,
}
GLOBAL_WITH_VALUE = ("-s", "--socket", "-c", "--config")


def build_parser(interactive: bool = False, only: str | None = None) -> Parser:
    """The command line; ``only``: just that command's subparser (argparse is slow to
    build 20 of them, and a status call should not pay for that). In the shell, only
    the commands (no -s/-c)."""
    p = Parser(prog=PROG, add_help=not interactive,
               description="Control nsvisord, the nsvisor container supervisor. "
                           "Without a command: an interactive shell.",
               epilog=EPILOG, formatter_class=Formatter)
    if not interactive:
        p.add_argument("-s", "--socket", metavar="SOCKET", help="nsvisord's Unix socket")
        p.add_argument("-c", "--config", metavar="CONFIG",
                       help="read the socket path from this nsvisord config")
        p.add_argument("--json", action="store_true", default=False,
                       help="machine output: the API's JSON")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    shell_only = () if interactive else ("quit", "exit")
    for name, setup in SETUP.items():
        if (only and name != only) or name in shell_only:
            continue
        summary = COMMANDS[name][1] if name in COMMANDS else "leave the shell"
        sp = sub.add_parser(name, help=summary, description=summary,
                            prog=f"{PROG} {name}", formatter_class=Formatter)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine output: the API's JSON")
        setup(sp)
    return p


def command_of(argv: list[str]) -> str | None:
    """The command word, skipping the global options before it (None: none, or -h)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in GLOBAL_WITH_VALUE:
            i += 2
            continue
        if arg == "--json" or arg.startswith(("--socket=", "--config=")) or (
                arg[:2] in ("-s", "-c") and len(arg) > 2):
            i += 1
            continue
        if arg.startswith("-"):
            return None
        return arg
    return None


def parse(argv: list[str], interactive: bool = False) -> argparse.Namespace:
    argv = normalize(argv)
    word = command_of(argv)
    return build_parser(interactive, word if word in SETUP else None).parse_args(argv)


def _lines(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of lines: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a number of lines: {text!r}")
    return n


def normalize(argv: list[str]) -> list[str]:
    """``tail -100 NAME`` (supervisorctl's form) means ``tail -n 100 NAME``."""
    if "tail" not in argv:
        return argv
    i = argv.index("tail")
    out = argv[:i + 1]
    for arg in argv[i + 1:]:
        if len(arg) > 1 and arg[0] == "-" and arg[1:].isdigit():
            out += ["-n", arg[1:]]
        else:
            out.append(arg)
    return out


# --------------------------------------------------------------------------- context


class Context:
    def __init__(self, client: Client, json_out: bool = False, interactive: bool = False,
                 out: Any = None, err: Any = None) -> None:
        self.client = client
        self.json = json_out
        self.interactive = interactive
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def print(self, line: str = "") -> None:
        self.out.write(line + "\n")

    def warn(self, message: str) -> None:
        self.err.write(f"{PROG}: {message}\n")

    def dump(self, value: Any) -> None:
        self.out.write(json.dumps(value, indent=2) + "\n")

    def width(self) -> int:
        return terminal_width(self.out)


def terminal_width(stream: Any) -> int:
    try:
        if stream.isatty():
            return max(40, os.get_terminal_size(stream.fileno()).columns)
    except (OSError, AttributeError, ValueError):
        pass
    return 80


# --------------------------------------------------------------------------- formatting


def truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:max(width, 0)]
    return text[:width - 3] + "..."


def _restarts(n: Any) -> str:
    n = n or 0
    return f"{n} restart" + ("" if n == 1 else "s")


def format_status(rows: list[dict[str, Any]], width: int = 80) -> list[str]:
    """``name  STATE     description ... N restarts``, aligned, each line within width."""
    if not rows:
        return []
    name_w = min(max(len(str(r.get("name", ""))) for r in rows), max(12, width // 2))
    restarts = [_restarts(r.get("restarts")) for r in rows]
    rest_w = max(len(s) for s in restarts)
    lines = []
    for row, rest in zip(rows, restarts, strict=True):
        name = str(row.get("name", ""))
        state = str(row.get("state", "UNKNOWN"))
        prefix = f"{name:<{name_w}}  {state:<{STATE_WIDTH}}  "
        desc_w = width - len(prefix) - 2 - rest_w
        desc = " ".join(str(row.get("description") or "").split())
        if desc_w < 8:  # a very long name: its line gives up alignment, not the width
            line = truncate(f"{prefix}{desc}", width - len(rest) - 2)
            lines.append(f"{line}  {rest}" if len(line) + len(rest) + 2 <= width
                         else truncate(prefix.rstrip(), width))
            continue
        lines.append(f"{prefix}{truncate(desc, desc_w):<{desc_w}}  {rest:>{rest_w}}")
    return lines


def format_table(header: list[str], rows: list[list[str]], width: int = 80) -> list[str]:
    """Left-aligned columns; the last column is cut to fit the width."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    out = []
    for r in table:
        head = "".join(f"{c:<{w}}  " for c, w in zip(r, widths, strict=False))
        out.append(truncate(head + r[-1], max(width, len(head) + 4)).rstrip())
    return out


def fmt_time(t: Any) -> str:
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(t)


def fmt_event(e: dict[str, Any]) -> str:
    when = fmt_time(e.get("time")) if "time" in e else "-"
    kind = e.get("type", "?")
    name = e.get("container", "-")
    text = f"{when} {name} {kind}"
    if "old" in e or "new" in e:
        text += f" {e.get('old')} -> {e.get('new')}"
    extra = [f"{k}={v}" for k, v in e.items()
             if k not in ("time", "type", "container", "old", "new") and v is not None]
    return text + ("  " + " ".join(extra) if extra else "")


# --------------------------------------------------------------------------- helpers


def no_such(message: str) -> CliError:
    return CliError(f"{message} (see '{PROG} avail')", EXIT_UNKNOWN)


def api_call(fn: Callable[[], Any], hint: str = "") -> Any:
    """Adds what to do next to a daemon's refusal."""
    try:
        return fn()
    except ApiError as e:
        if e.status == 404:
            raise no_such(e.message) from None
        if hint:
            raise CliError(f"{e.message} ({hint})", e.code) from None
        raise


def match(rows: list[dict[str, Any]], names: Iterable[str]) -> tuple[list[dict], list[str]]:
    """Rows named by NAME, GROUP:*, GROUP:, GROUP:NAME or all (config order); unknowns."""
    names = list(names)
    if not names or "all" in names:
        return rows, []
    chosen: set[int] = set()
    unknown = []
    for spec in names:
        group, sep, name = spec.partition(":")
        if not sep:
            hits = [i for i, r in enumerate(rows) if r.get("name") == spec]
        elif name in ("", "*"):
            hits = [i for i, r in enumerate(rows) if r.get("group", r.get("name")) == group]
        else:
            hits = [i for i, r in enumerate(rows)
                    if r.get("name") == name and r.get("group", name) == group]
        if not hits:
            unknown.append(spec)
        chosen.update(hits)
    return [r for i, r in enumerate(rows) if i in chosen], unknown


def expand(ctx: Context, names: list[str]) -> list[str]:
    """Container names for routes that take one name; unknown names: nothing is done."""
    rows, unknown = match(ctx.client.get("/v1/containers"), names)
    if unknown:
        raise no_such("no such container: " + ", ".join(unknown))
    return [r["name"] for r in rows]


def check_signal(text: str) -> str:
    import signal

    if text.isdigit():
        if not 0 < int(text) < signal.NSIG:
            raise UsageError(f"no such signal: {text} (see 'kill -l')")
        return text
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if not isinstance(getattr(signal, name, None), signal.Signals) or name.startswith("SIG_"):
        raise UsageError(f"no such signal: {text} (see 'kill -l')")
    return name[3:]


# --------------------------------------------------------------------------- commands


@command("status", "show containers' states")
def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    rows = ctx.client.get("/v1/containers")
    chosen, unknown = match(rows, args.names)
    if ctx.json:
        ctx.dump(chosen)
    else:
        for line in format_status(chosen, ctx.width()):
            ctx.print(line)
    if unknown:
        ctx.warn(no_such("no such container: " + ", ".join(unknown)).message)
        return EXIT_UNKNOWN
    if any(r.get("state") in NOT_RUNNING_STATES for r in chosen):
        return EXIT_NOT_RUNNING
    return EXIT_OK


_DONE = {"start": "started", "stop": "stopped", "restart": "restarted", "signal": "signalled"}
_PENDING = {"start": "starting", "stop": "stopping", "restart": "restarting"}
_IGNORED = {"start": "already started", "stop": "not running"}


def print_results(ctx: Context, verb: str, answer: Any, wait: bool = True) -> int:
    """supervisorctl's lines: ``name: started`` / ``name: ERROR (spawn error ...)``."""
    results = answer.get("results", []) if isinstance(answer, dict) else []
    if ctx.json:
        ctx.dump(answer)
    failed = []
    # A start held by a dependency, or cut short by someone's stop: its log says nothing.
    held = False
    for r in results:
        name = r.get("name", "?")
        if r.get("ok"):
            line = f"{name}: {_DONE[verb] if wait else _PENDING.get(verb, _DONE[verb])}"
        else:
            error = " ".join(str(r.get("error") or "failed").split())
            line = f"{name}: ERROR ({error})"
            if not error.startswith(_IGNORED.get(verb, "\0")):
                failed.append(name)
                held = held or error.startswith(("waiting for ", "stopped by ",
                                                 "changed or removed by "))
        if not ctx.json:
            ctx.print(line)
    if failed:
        what = {"signal": "signal"}.get(verb, verb)
        hint = (f"see '{PROG} status'" if verb in ("stop", "signal") or held
                else f"see '{PROG} tail {failed[0]} stderr'")
        ctx.warn(f"{what} failed for {_some(failed)} ({hint})")
        return EXIT_FAILED
    return EXIT_OK


def _some(names: list[str], shown: int = 3) -> str:
    """``a, b, c`` - or ``a, b, c and 97 more``: one line on a terminal, for "all" too."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def _lifecycle(verb: str) -> Callable[[Context, argparse.Namespace], int]:
    def run(ctx: Context, args: argparse.Namespace) -> int:
        answer = api_call(lambda: ctx.client.post(f"/v1/{verb}",
                                                  {"names": args.names, "wait": args.wait}))
        return print_results(ctx, verb, answer, args.wait)

    return run


command("start", "start containers (waits until RUNNING)")(_lifecycle("start"))
command("stop", "stop containers (waits until stopped)")(_lifecycle("stop"))
command("restart", "stop, then start containers")(_lifecycle("restart"))


@command("signal", "send a signal to containers' workloads")
def cmd_signal(ctx: Context, args: argparse.Namespace) -> int:
    sig = check_signal(args.signal)
    answer = api_call(lambda: ctx.client.post("/v1/signal",
                                              {"names": args.names, "signal": sig}))
    return print_results(ctx, "signal", answer)


@command("tail", "last lines of a container's log (-f: follow)")
def cmd_tail(ctx: Context, args: argparse.Namespace) -> int:
    base = (f"/v1/containers/{quote(args.name)}/logs?stream={args.stream}"
            f"&lines={args.lines}")
    if not args.follow:
        answer = api_call(lambda: ctx.client.get(base + "&follow=0"))
        if ctx.json:
            ctx.dump(answer)
            return EXIT_OK
        for line in (answer or {}).get("lines", []):
            _write_line(ctx, line)
        ctx.out.flush()
        return EXIT_OK
    stream = ctx.client.stream(base + "&follow=1")
    try:
        first = api_call(lambda: next(stream, None))
        item = first
        while item is not None:
            if ctx.json:
                ctx.out.write(json.dumps(item) + "\n")
            elif isinstance(item, dict) and "line" in item:
                _write_line(ctx, item["line"])
            ctx.out.flush()
            item = next(stream, None)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        stream.close()
    return _stream_ended(ctx, f"tail -f {args.name}")


def _stream_ended(ctx: Context, command: str) -> int:
    """A followed stream that nsvisord ended: the user asked for "until I stop it"."""
    ctx.warn(f"nsvisord ended the stream: it stopped or restarted, or this reader fell "
             f"behind (run '{PROG} {command}' again)")
    return EXIT_ERROR


def _write_line(ctx: Context, line: Any) -> None:
    text = str(line)
    ctx.out.write(text if text.endswith("\n") else text + "\n")


@command("clear", "empty containers' log files")
def cmd_clear(ctx: Context, args: argparse.Namespace) -> int:
    answers = {}
    for name in expand(ctx, args.names):
        answers[name] = api_call(
            lambda n=name: ctx.client.post(f"/v1/containers/{quote(n)}/logs/clear"))
        if not ctx.json:
            ctx.print(f"{name}: cleared")
    if ctx.json:
        ctx.dump(answers)
    return EXIT_OK


def print_changes(ctx: Context, answer: Any, words: tuple[str, str, str]) -> int:
    if ctx.json:
        ctx.dump(answer)
        return EXIT_OK
    answer = answer or {}
    changes = {}
    for key, word in zip(("added", "changed", "removed"), words, strict=True):
        for name in answer.get(key) or []:
            changes[name] = word
    for name in sorted(changes):
        ctx.print(f"{name}: {changes[name]}")
    if not changes:
        ctx.print("No config updates to containers")
    for key in answer.get("restart_needed") or []:
        ctx.print(f"{key}: changed, applies when nsvisord restarts (containers keep running)")
    return EXIT_OK


@command("reread", "report what the config changed (applies nothing)")
def cmd_reread(ctx: Context, args: argparse.Namespace) -> int:
    answer = api_call(lambda: ctx.client.post("/v1/reread"), "fix the config file")
    return print_changes(ctx, answer, ("available", "changed", "disappeared"))


@command("update", "reread the config and apply it")
def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    names = [] if "all" in args.names else args.names
    answer = api_call(lambda: ctx.client.post("/v1/update", {"names": names}),
                      "fix the config file")
    return print_changes(ctx, answer,
                         ("added process group", "updated process group",
                          "removed process group"))


def _group_change(ctx: Context, path: str, names: list[str], done: str, hint: str) -> int:
    answer = api_call(lambda: ctx.client.post(path, {"names": names}), hint)
    if ctx.json:
        ctx.dump(answer)
        return EXIT_OK
    if isinstance(answer, dict) and isinstance(answer.get("results"), list):
        return print_results_generic(ctx, answer["results"], done)
    listed = None
    if isinstance(answer, dict):
        listed = next((answer[k] for k in ("added", "removed", "names")
                       if isinstance(answer.get(k), list)), None)
    for name in names if listed is None else listed:
        ctx.print(f"{name}: {done}")
    return EXIT_OK


def print_results_generic(ctx: Context, results: list[dict], done: str) -> int:
    code = EXIT_OK
    for r in results:
        if r.get("ok"):
            ctx.print(f"{r.get('name')}: {done}")
        else:
            error = str(r.get("error") or "failed")
            ctx.print(f"{r.get('name')}: ERROR ({error})")
            if not error.startswith("already active"):  # supervisorctl ignores that one
                code = EXIT_ERROR
    return code


@command("add", "activate containers found by the last reread")
def cmd_add(ctx: Context, args: argparse.Namespace) -> int:
    return _group_change(ctx, "/v1/add", args.names, "added process group",
                         f"see '{PROG} avail'")


@command("remove", "remove stopped containers from the active config")
def cmd_remove(ctx: Context, args: argparse.Namespace) -> int:
    try:
        return _group_change(ctx, "/v1/remove", args.names, "removed process group", "")
    except ApiError as e:
        if e.status == 409:
            raise CliError(f"{e.message} (stop it first: '{PROG} stop "
                           f"{' '.join(args.names)}')", EXIT_ERROR) from None
        raise


@command("avail", "list every configured container")
def cmd_avail(ctx: Context, args: argparse.Namespace) -> int:
    rows = ctx.client.get("/v1/avail") or []
    if ctx.json:
        ctx.dump(rows)
        return EXIT_OK
    if not rows:
        return EXIT_OK
    name_w = min(max(len(str(r.get("name"))) for r in rows), 40)
    for r in rows:
        ctx.print(truncate(f"{r.get('name', ''):<{name_w}}  "
                           f"{'in use' if r.get('in_use') else 'avail':<6}  "
                           f"{'auto' if r.get('autostart', True) else 'manual':<6}  "
                           f"{r.get('priority', '')}", max(ctx.width(), name_w + 30)))
    return EXIT_OK


@command("pid", "nsvisord's pid, or a container's init pid")
def cmd_pid(ctx: Context, args: argparse.Namespace) -> int:
    if not args.name:
        answer = ctx.client.get("/v1/pid")
        if ctx.json:
            ctx.dump(answer)
        else:
            ctx.print(str(answer.get("pid")))
        return EXIT_OK
    rows, unknown = match(ctx.client.get("/v1/containers"), [args.name])
    if unknown:
        raise no_such(f"no such container: {args.name}")
    if ctx.json:
        ctx.dump([{"name": r.get("name"), "pid": _live_pid(r)} for r in rows])
    else:
        for r in rows:
            ctx.print(str(_live_pid(r)))
    single = ":" not in args.name and args.name != "all"
    if single and not _live_pid(rows[0]):
        ctx.warn(f"{args.name} is not running ({rows[0].get('state', 'UNKNOWN')}; "
                 f"see '{PROG} status {args.name}')")
        return EXIT_FAILED
    return EXIT_OK


def _live_pid(row: dict[str, Any]) -> int:
    """supervisorctl's ``pid NAME``: 0 unless the container is running."""
    if row.get("state") in NOT_RUNNING_STATES:
        return 0
    return row.get("pid") or 0


@command("version", "nsvisord's version")
def cmd_version(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.get("/v1/version")
    if ctx.json:
        ctx.dump(answer)
    else:
        ctx.print(str(answer.get("version")))
    return EXIT_OK


def confirm(ctx: Context, question: str) -> bool:
    if not ctx.interactive:
        return True
    try:
        return input(f"{question} y/N? ").strip().lower().startswith("y")
    except EOFError:
        return False


@command("shutdown", "stop every container, then nsvisord (or leave them running)")
def cmd_shutdown(ctx: Context, args: argparse.Namespace) -> int:
    leave = args.leave_running
    question = ("Really shut the remote nsvisord process down, leaving its containers "
                "running" if leave else "Really shut the remote nsvisord process down")
    if not confirm(ctx, question):
        return EXIT_OK
    answer = ctx.client.post("/v1/shutdown", {"leave_running": leave} if leave else None)
    if args.wait:
        wait_gone(ctx.client.path)
    if ctx.json:
        ctx.dump(answer)
    else:
        ctx.print("Shut down; containers left running" if leave else "Shut down")
    return EXIT_OK


def wait_gone(path: str, timeout: float = 120) -> None:
    """Until nsvisord stops accepting connections (it stops its containers first)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            return
        finally:
            s.close()
        time.sleep(0.05)
    raise CliError(f"nsvisord still answers at {path} after {timeout:.0f}s "
                   "(see its log)", EXIT_ERROR)


@command("reload", "stop everything, reread the config, start everything")
def cmd_reload(ctx: Context, args: argparse.Namespace) -> int:
    if not confirm(ctx, "Really restart the remote nsvisord process"):
        return EXIT_OK
    answer = api_call(lambda: ctx.client.post("/v1/reload"), "fix the config file")
    if ctx.json:
        ctx.dump(answer)
    else:
        ctx.print("Restarted nsvisord")
    return EXIT_OK


@command("exec", "run a command in a container: exec [-t] NAME -- CMD")
def cmd_exec(ctx: Context, args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError(f"exec needs a command: {PROG} exec NAME -- CMD... "
                         f"(see '{PROG} exec --help')")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"-e wants KEY=VALUE, not {item!r} (see '{PROG} exec --help')")
        env[key] = value
    from .execute import run_exec

    try:
        answer = run_exec(ctx.client, args.name, argv, env, args.tty)
    except ApiError as e:
        if e.status == 404:
            raise no_such(e.message) from None
        if e.status == 409:
            raise CliError(f"{e.message} (see '{PROG} status {args.name}')", EXIT_FAILED) \
                from None
        raise
    if ctx.json:
        ctx.err.write(json.dumps(answer) + "\n")
    code = answer.get("exit_code") if isinstance(answer, dict) else None
    if not isinstance(code, int):
        raise CliError(f"nsvisord did not say how the command ended: {answer!r}", EXIT_ERROR)
    return code if 0 <= code <= 255 else EXIT_ERROR


@command("inspect", "everything about one container")
def cmd_inspect(ctx: Context, args: argparse.Namespace) -> int:
    info = api_call(lambda: ctx.client.get(f"/v1/containers/{quote(args.name)}/inspect"))
    if ctx.json:
        ctx.dump(info)
        return EXIT_OK
    for line in format_inspect(info, ctx.width()):
        ctx.print(line)
    return EXIT_OK


def format_inspect(info: dict[str, Any], width: int = 80) -> list[str]:
    st = info.get("status") or {}
    cfg = info.get("config") or {}
    facts: list[tuple[str, Any]] = [
        ("name", st.get("name")), ("group", st.get("group")), ("state", st.get("state")),
        ("pid", st.get("pid")), ("description", st.get("description")),
        ("restarts", st.get("restarts")), ("exit code", st.get("exit_code")),
        ("last exit", st.get("last_exit_reason")),
        ("started at", fmt_time(st["started_at"]) if st.get("started_at") else None),
        ("command", " ".join(map(str, cfg["command"])) if cfg.get("command") else None),
        ("rootfs", cfg.get("rootfs")), ("restart", cfg.get("restart")),
        ("cgroup", info.get("cgroup")),
    ]
    logs = info.get("logs") or {}
    facts += [("stdout log", logs.get("stdout")), ("stderr log", logs.get("stderr"))]
    ns = info.get("namespaces") or {}
    if ns:
        facts.append(("namespaces", " ".join(f"{k}:{v}" for k, v in ns.items())))
    limits = info.get("limits") or {}
    if limits:
        facts.append(("limits", " ".join(f"{k}={v}" for k, v in limits.items())))
    addrs = info.get("addresses") or {}
    if addrs:
        facts.append(("addresses", " ".join(f"{k}={v}" for k, v in addrs.items())))
    for h in (info.get("history") or [])[-3:]:
        facts.append(("exited", f"{fmt_time(h.get('at'))}: "
                                f"{h.get('reason') or 'exit code ' + str(h.get('exit_code'))}"))
    return [truncate(f"{k + ':':<13}{_flat(v)}", width) for k, v in facts
            if v not in (None, "", [], {})]


def _flat(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@command("top", "a container's processes")
def cmd_top(ctx: Context, args: argparse.Namespace) -> int:
    info = api_call(lambda: ctx.client.get(f"/v1/containers/{quote(args.name)}/top"))
    if ctx.json:
        ctx.dump(info)
        return EXIT_OK
    rows = [[str(p.get("host_pid", "")), str(p.get("pid", "")), str(p.get("user", "")),
             " ".join(str(p.get("command", "")).split())]
            for p in (info or {}).get("processes", [])]
    for line in format_table(["HOST PID", "PID", "USER", "COMMAND"], rows, ctx.width()):
        ctx.print(line)
    return EXIT_OK


@command("events", "recent events (-f: follow them)")
def cmd_events(ctx: Context, args: argparse.Namespace) -> int:
    def show(e: dict[str, Any]) -> None:  # a line of the terminal's width (--json: whole)
        ctx.print(json.dumps(e) if ctx.json else truncate(fmt_event(e), ctx.width()))

    if not args.follow:
        recent = "" if args.lines is None else f"&recent={args.lines}"
        answer = ctx.client.get(f"/v1/events?follow=0{recent}")
        if ctx.json:
            ctx.dump(answer)
            return EXIT_OK
        for e in (answer or {}).get("events", []):
            show(e)
        return EXIT_OK
    recent = 10 if args.lines is None else args.lines
    stream = ctx.client.stream(f"/v1/events?follow=1&recent={recent}")
    try:
        for e in stream:
            show(e)
            ctx.out.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        stream.close()
    return _stream_ended(ctx, "events -f")


@command("help", "list the commands, or one command's usage")
def cmd_help(ctx: Context, args: argparse.Namespace) -> int:
    parser = build_parser(interactive=ctx.interactive)
    if args.topic:
        if args.topic not in COMMANDS:
            raise UsageError(f"no such command: {args.topic} (try 'help')")
        try:
            parser.parse_args([args.topic, "--help"])
        except _Exit:
            pass
        return EXIT_OK
    ctx.print("commands (help COMMAND for more):")
    for name, (_fn, summary) in COMMANDS.items():
        ctx.print(f"  {name:<9} {summary}")
    if ctx.interactive:
        ctx.print("  quit      leave the shell (also exit, Ctrl-D)")
    return EXIT_OK


# --------------------------------------------------------------------------- entry


def dispatch(ctx: Context, args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        ctx.json = True
    fn, _summary = COMMANDS[args.command]
    return fn(ctx, args)


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            args = parse(argv)
        except _Exit as e:
            return e.status
        path = find_socket(args.socket, args.config)
        ctx = Context(Client(path), json_out=args.json)
        if args.command is None:
            from .shell import Shell

            return Shell(ctx).loop()
        return dispatch(ctx, args)
    except CliError as e:
        sys.stderr.write(f"{PROG}: {e.message}\n")
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_ERROR
    except Exception as e:  # no tracebacks, ever
        text = " ".join(str(e).split()) or "no details"
        sys.stderr.write(f"{PROG}: unexpected {type(e).__name__}: {truncate(text, 200)} "
                         "(please report it)\n")
        return EXIT_ERROR


def _silence_stdout() -> None:
    """stdout's reader went away (``| head``): no second error when Python flushes it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main() -> None:
    code = run()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    except OSError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    main()
