"""nsvisord's command line: options, --help, and one clear error for a bad one."""

from __future__ import annotations

import pytest

from supervisor.daemon.main import DEFAULT_CONFIG, Options, UsageError, main, parse_args

from .conftest import run_python


def test_defaults_and_every_option_spelling() -> None:
    assert parse_args([]) == Options(DEFAULT_CONFIG, "info", None)
    assert parse_args(["-c", "a.toml", "--log-level", "debug", "--log-file", "/x"]) == \
        Options("a.toml", "debug", "/x")
    assert parse_args(["--config=b.toml", "--log-level=error"]) == \
        Options("b.toml", "error", None)
    assert parse_args(["-cc.toml"]).config == "c.toml"
    assert parse_args(["-t"]).check and parse_args(["--check"]).check
    assert not parse_args([]).check


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "option --bogus not recognized"),
    (["-c"], "option -c requires argument"),
    (["--log-level", "loud"], "--log-level 'loud': choose debug, info, warning, error"),
    (["-c", "a.toml", "extra"], "unexpected argument 'extra'"),
])
def test_bad_command_line_is_named_and_exits_2(argv, message, capsys) -> None:
    with pytest.raises(UsageError, match=message):
        parse_args(argv)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nsvisord: {message}\nusage: nsvisord ")
    assert err.count("\n") == 2  # one error, one usage line


def test_help_exits_0_and_lists_every_option(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--config FILE", "--check", "--log-level LEVEL", "--log-file PATH",
                   "--help"):
        assert option in out
    assert max(len(line) for line in out.splitlines()) <= 90  # fits a terminal


def test_a_missing_config_file_is_named(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["-c", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_check_validates_the_config_and_touches_nothing(tmp_path, capsys) -> None:
    state = tmp_path / "state"
    good = tmp_path / "good.toml"
    good.write_text(f'[supervisor]\nstate_dir = "{state}"\nsocket = "{tmp_path}/s.sock"\n'
                    '[networks.lab]\ndriver = "bridge"\nsubnet = "10.99.0.0/24"\n'
                    '[containers.a]\ncommand = ["/bin/true"]\nnetworks = ["lab"]\n')
    assert main(["--check", "-c", str(good)]) == 0
    assert capsys.readouterr().out == f"nsvisord: {good}: valid, 1 container, 1 network\n"
    assert not state.exists() and not (tmp_path / "s.sock").exists()

    bad = tmp_path / "bad.toml"
    bad.write_text('[containers.a]\ncommand = ["/bin/true"]\nrestart = "sometimes"\n')
    assert main(["-t", "-c", str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert out.err.startswith(f"nsvisord: {bad}") and "containers.a.restart" in out.err


@pytest.mark.root
def test_signals_are_blocked_before_the_daemon_imports_its_services(tmp_path) -> None:
    # A SIGHUP (logrotate, a reload) or SIGTERM while nsvisord imported its services -
    # 100-150 ms of its start - ended it half started: their default action. main()
    # blocks them first; the signalfd reads them once the daemon runs.
    config = tmp_path / "c.toml"
    config.write_text(f'[supervisor]\nstate_dir = "{tmp_path}/state"\n'
                      f'socket = "{tmp_path}/s.sock"\n')
    code = (
        "import signal, sys\n"
        "class Stop:  # at the first heavy import: which one, and what is blocked then\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name in ('supervisor.daemon.serve', 'anyio', 'structlog'):\n"
        "            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
        "            print(name, sorted(s.name for s in blocked))\n"
        "            sys.exit(0)\n"
        "sys.meta_path.insert(0, Stop())\n"
        "from supervisor.daemon.main import main\n"
        f"main(['-c', {str(config)!r}])\n")
    out = run_python(code, check=True).stdout
    handled = sorted(["SIGCHLD", "SIGHUP", "SIGINT", "SIGTERM", "SIGUSR2"])
    assert out == f"supervisor.daemon.serve {handled}\n"
    assert not (tmp_path / "state").exists()  # nothing done before that


def test_parsing_does_not_load_shutil() -> None:
    # argparse's help formatter imports shutil, zlib, bz2 and lzma: 0.8 MiB for the
    # daemon's lifetime (benchmarks/supervise.py compares its RSS with supervisord's).
    code = ("import sys; from supervisor.daemon.main import parse_args; "
            "parse_args(['-c', 'x']); "
            "print(sorted(m for m in ('argparse', 'shutil', 'zlib', 'lzma', 'bz2') "
            "if m in sys.modules))")
    out = run_python(code, check=True).stdout
    assert out.strip() == "[]"


def test_a_signal_that_comes_while_nsvisord_ends_does_not_cut_its_end_short() -> None:
    # A second SIGTERM during shutdown stayed pending once the signal task was gone;
    # closing the signal reader unblocked it and the daemon died of it (status -15),
    # its last log lines and any error unwritten.
    code = ("import os, signal; from supervisor.daemon.signals import SignalReader\n"
            "r = SignalReader(); r.open()\n"
            "os.kill(os.getpid(), signal.SIGTERM)  # nobody reads it any more\n"
            "r.close()\n"
            "print('last words', flush=True)\n")
    done = run_python(code)
    assert (done.returncode, done.stdout) == (0, "last words\n")
