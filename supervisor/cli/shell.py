"""``nsvisorctl`` without a command: a shell of the same commands, with readline history
(~/.nsvisorctl_history) and completion of command and container names."""

from __future__ import annotations

import os
import sys
import time

from .client import EXIT_OK, CliError
from .main import COMMANDS, SETUP, Context, _Exit, dispatch, parse, truncate

PROMPT = "nsvisorctl> "
HISTORY = "~/.nsvisorctl_history"
NAMES_TTL = 2.0  # seconds a fetched list of container names is reused for completion
NO_NAMES = frozenset({"reread", "avail", "version", "shutdown", "reload", "events",
                      "quit", "exit"})
ONE_NAME = frozenset({"tail", "pid", "inspect", "top", "exec"})


class Shell:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.json = ctx.json
        self._names: list[str] = []
        self._names_at = -NAMES_TTL
        self._matches: list[str] = []

    # --- completion ------------------------------------------------------------

    def container_names(self) -> list[str]:
        now = time.monotonic()
        if now - self._names_at > NAMES_TTL:
            self._names_at = now
            try:
                rows = self.ctx.client.get("/v1/containers") or []
            except (CliError, OSError):
                rows = []
            names = {str(r.get("name")) for r in rows if isinstance(r, dict)}
            groups = {f"{r.get('group')}:*" for r in rows
                      if isinstance(r, dict) and r.get("group")}
            self._names = sorted(names) + sorted(groups - {f"{n}:*" for n in names}) \
                + ["all"]
        return self._names

    def candidates(self, words: list[str], text: str) -> list[str]:
        """Completions of ``text``, given the complete words before it."""
        if not words:
            options = [*COMMANDS, "quit", "exit"]
        else:
            cmd = words[0]
            args = [w for w in words[1:] if not w.startswith("-")]
            if cmd == "help":
                options = list(COMMANDS) if not args else []
            elif cmd in NO_NAMES or cmd not in SETUP or "--" in words:
                options = []
            elif cmd == "tail" and args:
                options = ["stdout", "stderr"] if len(args) == 1 else []
            elif cmd == "signal" and not args:
                options = ["HUP", "INT", "KILL", "QUIT", "TERM", "USR1", "USR2"]
            elif cmd in ONE_NAME and args:
                options = []
            else:
                options = [n for n in self.container_names()
                           if cmd not in ONE_NAME or n != "all" or cmd == "pid"]
        return sorted(o + " " for o in options if o.startswith(text))

    def complete(self, text: str, state: int) -> str | None:
        if state == 0:
            import readline

            before = readline.get_line_buffer()[:readline.get_begidx()]
            try:
                self._matches = self.candidates(before.split(), text)
            except Exception:  # completion must never break the prompt
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None

    # --- the loop --------------------------------------------------------------

    def onecmd(self, line: str) -> bool:
        """Run one line; False when the shell should end."""
        import shlex

        try:
            words = shlex.split(line)
        except ValueError as e:
            self.ctx.warn(f"{e} (check the quotes)")
            return True
        if not words:
            return True
        if words[0] in ("quit", "exit"):
            return False
        self.ctx.json = self.json
        try:
            args = parse(words, interactive=True)
            if args.command in ("quit", "exit"):
                return False
            dispatch(self.ctx, args)
        except _Exit:
            pass
        except CliError as e:
            self.ctx.warn(e.message)
        except KeyboardInterrupt:
            self.ctx.out.write("\n")
        except Exception as e:  # the shell survives anything a command does
            text = " ".join(str(e).split()) or "no details"
            self.ctx.warn(f"unexpected {type(e).__name__}: {truncate(text, 200)} "
                          "(please report it)")
        finally:
            self.ctx.out.flush()
        return True

    def loop(self) -> int:
        self.ctx.interactive = True
        history = os.path.expanduser(HISTORY)
        readline = None
        if sys.stdin.isatty():
            try:
                import readline
            except ImportError:
                readline = None
        if readline is not None:
            try:
                readline.read_history_file(history)
            except OSError:
                pass
            readline.set_history_length(1000)
            readline.set_completer(self.complete)
            readline.set_completer_delims(" \t\n")
            if "libedit" in (readline.__doc__ or ""):
                readline.parse_and_bind("bind ^I rl_complete")
            else:
                readline.parse_and_bind("tab: complete")
        prompt = PROMPT
        try:
            while True:
                try:
                    line = input(prompt)
                except EOFError:
                    self.ctx.out.write("\n")
                    break
                except KeyboardInterrupt:
                    self.ctx.out.write("\n")
                    continue
                if not self.onecmd(line):
                    break
        finally:
            if readline is not None:
                try:
                    readline.write_history_file(history)
                except OSError as e:
                    self.ctx.warn(f"cannot save history to {history}: {e.strerror}")
        return EXIT_OK

