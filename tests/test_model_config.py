"""Config schema, units and error messages (pure: no daemon, no root)."""

from __future__ import annotations

import json
import pickle
import signal
from pathlib import Path

import pytest

from supervisor.model.config import (
    NAMESPACES,
    BackoffConfig,
    Config,
    ConfigError,
    ContainerConfig,
    LogConfig,
    MountConfig,
    SupervisorConfig,
    config_from_dict,
    diff_configs,
    fingerprint,
    load_config,
    parse_config,
)
from supervisor.model.units import parse_duration, parse_size

MIN = '[containers.web]\ncommand = ["/bin/true"]\n'

FULL = """
[supervisor]
socket = "/tmp/nsv/nsvisor.sock"
state_dir = "/tmp/nsv/state"
log_dir = "/tmp/nsv/log"
metrics_listen = "[::1]:9100"

[containers.db]
command = ["/usr/bin/db"]
priority = 10

[containers.web]
command = ["/usr/bin/python3", "-m", "http.server", "8080"]
rootfs = "/srv/rootfs/web"
hostname = "web-1"
namespaces = ["mount", "uts", "pid", "net"]
env = { MODE = "prod", EMPTY = "" }
workdir = "/app"
user = "1000:100"
mounts = [
  { source = "/srv/data", target = "/data", readonly = true },
  { type = "tmpfs", target = "/tmp", size = "64M" },
]
group = "frontend"
autostart = false
priority = 5
depends_on = ["db"]
restart = "unless-stopped"
exitcodes = [0, 2]
startsecs = "250ms"
max_retries = 0
backoff = { initial = "1s", factor = 3, max = "5m", reset_after = "1h" }
stop_signal = "INT"
stop_timeout = 30
log = { max_bytes = "1G", backups = 0, merge = true }
readonly_rootfs = true
cap_add = ["NET_ADMIN"]
cap_drop = ["CAP_SYS_ADMIN", "mknod"]
no_new_privs = false
"""


def err(text: str, source: str = "demo.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return info.value


def container_err(extra: str) -> str:
    return str(err(MIN + extra))


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (10, 10.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("250ms", 0.25),
        ("100ms", 0.1),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("2.5", 2.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value, "k") == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10x", 'k: "10x" is not a duration (use e.g. "250ms", "10s", "5m" or a number'),
        ("-1s", 'k: "-1s" is not a duration'),
        ("", 'k: "" is not a duration'),
        (-1, "k: -1 is negative (durations must be >= 0)"),
        (float("nan"), "k: nan is not a duration"),
        (True, "k: expected a duration"),
        ([1], "got array"),
    ],
)
def test_parse_duration_errors(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "k")
    assert message in str(info.value)
    assert info.value.key == "k"


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (100, 100),
        ("100", 100),
        ("512K", 512 * 1024),
        ("64M", 64 << 20),
        ("64MiB", 64 << 20),
        ("64mb", 64 << 20),
        ("1G", 1 << 30),
        ("1.5G", 3 << 29),
        ("2T", 2 << 40),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value, "k") == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("64X", 'k: "64X" is not a size (use e.g. "512K", "64M", "1G" or a number of bytes)'),
        (-5, "k: -5 is negative"),
        (1.5, "k: expected a size"),
        (False, "got boolean"),
    ],
)
def test_parse_size_errors(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, "k")
    assert message in str(info.value)


# --------------------------------------------------------------------------- valid configs


def test_defaults() -> None:
    cfg = parse_config(MIN, "demo.toml")
    assert cfg.source == "demo.toml"
    assert cfg.supervisor == SupervisorConfig()
    assert cfg.supervisor.socket == "/run/nsvisor/nsvisor.sock"
    assert cfg.supervisor.state_dir == "/run/nsvisor"
    assert cfg.supervisor.log_dir == "/var/log/nsvisor"
    assert cfg.supervisor.metrics_listen == "127.0.0.1:9477"
    web = cfg.containers["web"]
    assert web == ContainerConfig(name="web", command=("/bin/true",))
    assert web.command == ("/bin/true",)
    assert web.rootfs == "host"
    assert web.hostname == "web"
    assert web.group == "web"
    assert web.namespaces == NAMESPACES == ("mount", "uts", "ipc", "pid", "net", "user", "cgroup")
    assert web.env == {}
    assert web.workdir == "/"
    assert (web.user, web.uid, web.gid) == ("0:0", 0, 0)
    assert web.mounts == ()
    assert web.autostart is True
    assert web.priority == 999
    assert web.depends_on == ()
    assert web.restart == "on-failure"
    assert web.exitcodes == (0,)
    assert web.startsecs == 1.0
    assert web.max_retries == 3
    assert web.backoff == BackoffConfig(initial=0.1, factor=2.0, max=60.0, reset_after=10.0)
    assert web.stop_signal == signal.SIGTERM
    assert web.stop_timeout == 10.0
    assert web.log == LogConfig(max_bytes=50 * 1024 * 1024, backups=10, merge=False)
    assert web.readonly_rootfs is False
    assert (web.cap_add, web.cap_drop) == ((), ())
    assert web.no_new_privs is True


def test_empty_file_is_valid() -> None:
    cfg = parse_config("", "empty.toml")
    assert cfg.containers == {}
    assert cfg.supervisor == SupervisorConfig()


def test_full_config_every_key() -> None:
    cfg = parse_config(FULL, "full.toml")
    assert cfg.supervisor == SupervisorConfig(
        socket="/tmp/nsv/nsvisor.sock",
        state_dir="/tmp/nsv/state",
        log_dir="/tmp/nsv/log",
        metrics_listen="[::1]:9100",
    )
    assert list(cfg.containers) == ["db", "web"]  # file order
    web = cfg.containers["web"]
    assert web == ContainerConfig(
        name="web",
        command=("/usr/bin/python3", "-m", "http.server", "8080"),
        rootfs="/srv/rootfs/web",
        hostname="web-1",
        namespaces=("mount", "uts", "pid", "net"),
        env={"MODE": "prod", "EMPTY": ""},
        workdir="/app",
        user="1000:100",
        mounts=(
            MountConfig(source="/srv/data", target="/data", readonly=True),
            MountConfig(type="tmpfs", target="/tmp", size=64 << 20),
        ),
        group="frontend",
        autostart=False,
        priority=5,
        depends_on=("db",),
        restart="unless-stopped",
        exitcodes=(0, 2),
        startsecs=0.25,
        max_retries=0,
        backoff=BackoffConfig(initial=1.0, factor=3.0, max=300.0, reset_after=3600.0),
        stop_signal=signal.SIGINT,
        stop_timeout=30.0,
        log=LogConfig(max_bytes=1 << 30, backups=0, merge=True),
        readonly_rootfs=True,
        cap_add=("CAP_NET_ADMIN",),
        cap_drop=("CAP_SYS_ADMIN", "CAP_MKNOD"),
        no_new_privs=False,
    )
    assert (web.uid, web.gid) == (1000, 100)
    assert cfg.groups == {"db": ["db"], "frontend": ["web"]}


def test_to_dict_round_trip_through_json() -> None:
    cfg = parse_config(FULL, "full.toml")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["containers"]["web"]["stop_signal"] == "SIGINT"
    assert config_from_dict(data, "full.toml") == cfg


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.toml"
    path.write_text(FULL)
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert cfg == parse_config(FULL, str(path))


def test_programmatic_container_config_normalises_lists() -> None:
    c = ContainerConfig(name="x", command=["a", "b"], depends_on=["y"], env={"A": "1"})
    assert c.command == ("a", "b") and c.depends_on == ("y",)
    assert c.hostname == "x" and c.group == "x"


@pytest.mark.parametrize(
    ("value", "stored"),
    [('"SIGKILL"', signal.SIGKILL), ('"hup"', signal.SIGHUP), ("15", signal.SIGTERM), ("40", 40)],
)
def test_stop_signal_spellings(value: str, stored: int) -> None:
    cfg = parse_config(MIN + f"stop_signal = {value}\n", "demo.toml")
    assert cfg.containers["web"].stop_signal == stored


# --------------------------------------------------------------------------- errors


def test_config_error_attributes_and_str() -> None:
    e = err(MIN + 'backoff = { max = "10x" }\n')
    assert e.source == "demo.toml"
    assert e.key == "containers.web.backoff.max"
    assert e.message == (
        '"10x" is not a duration (use e.g. "250ms", "10s", "5m" or a number of seconds)'
    )
    assert str(e) == f"demo.toml: {e.key}: {e.message}"
    assert isinstance(e, ValueError)
    copy = pickle.loads(pickle.dumps(e))
    assert (copy.source, copy.key, copy.message) == (e.source, e.key, e.message)


def test_toml_syntax_error_names_file_line_and_column() -> None:
    e = err('[containers.web]\ncommand = ["/bin/true"\nrestart = "no"\n')
    assert str(e).startswith("demo.toml: invalid TOML at line 3, column 1: ")
    assert (e.line, e.column) == (3, 1)


def test_toml_error_at_end_of_file() -> None:
    assert str(err("x = [")) == "demo.toml: invalid TOML at end of file: Invalid value"


def test_duplicate_container_table() -> None:
    e = err(MIN + MIN)
    assert str(e) == (
        "demo.toml: invalid TOML at line 3, column 16: "
        "[containers.web] is defined twice (each table may appear only once)"
    )


def test_duplicate_key() -> None:
    assert container_err('command = ["x"]\n') == (
        "demo.toml: invalid TOML at line 3, column 16: "
        "a key or table is defined twice (Cannot overwrite a value)"
    )


def test_unknown_key_suggests_close_match() -> None:
    assert container_err('restrat = "no"') == (
        'demo.toml: containers.web.restrat: unknown key (did you mean "restart"?)'
    )


def test_unknown_nested_key() -> None:
    assert container_err("backoff = { maximum = 1 }") == (
        'demo.toml: containers.web.backoff.maximum: unknown key (did you mean "max"?)'
    )


def test_unknown_top_level_key_lists_allowed() -> None:
    assert str(err("[netwerks.lan]\n")) == (
        'demo.toml: netwerks: unknown key (did you mean "networks"?)'
    )
    assert str(err("[contaners.web]\n")) == (
        'demo.toml: contaners: unknown key (did you mean "containers"?)'
    )


def test_limits() -> None:
    cfg = parse_config('[containers.web]\ncommand = ["x"]\n'
                       'limits = { memory = "256M", cpus = 0.5, pids = 100 }\n', "demo.toml")
    limits = cfg.containers["web"].limits
    assert (limits.memory, limits.cpus, limits.pids) == (256 * 2**20, 0.5, 100)
    assert container_err("limits = []") == (
        "demo.toml: containers.web.limits: expected a table, got array")
    assert container_err('limits = { memory = "1k" }') == (
        'demo.toml: containers.web.limits.memory: "1k" is below the 4M a container needs '
        "to start")
    assert container_err("limits = { cpus = 0 }").startswith(
        "demo.toml: containers.web.limits.cpus:")
    assert container_err("limits = { pids = 1 }") == (
        "demo.toml: containers.web.limits.pids: 1 is below the 2 tasks a container needs to "
        "start (its init and its workload)")
    assert container_err('limits = { pids = "2" }') == (
        'demo.toml: containers.web.limits.pids: expected an integer, got string "2"')


def test_missing_command() -> None:
    assert str(err("[containers.web]\nrestart = 'no'\n")) == (
        "demo.toml: containers.web.command: required key is missing"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'command = "python3 -m http.server"',
            "containers.web.command: expected an array of strings (argv; no shell), "
            'got string "python3 -m http.server"',
        ),
        ("command = []", "containers.web.command: must not be empty"),
        ('command = ["/bin/x", 1]', "containers.web.command[1]: expected a string, got integer 1"),
    ],
)
def test_bad_command(body: str, message: str) -> None:
    assert str(err(f"[containers.web]\n{body}\n")) == f"demo.toml: {message}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('autostart = "yes"', 'autostart: expected a boolean (true or false), got string "yes"'),
        ("priority = 1.5", "priority: expected an integer, got float 1.5"),
        ("env = { MODE = 1 }", "env.MODE: expected a string, got integer 1"),
        ('env = "A=1"', 'env: expected a table of strings, got string "A=1"'),
        ('backoff = { factor = "2" }', 'backoff.factor: expected a number, got string "2"'),
        ('log = "big"', 'log: expected a table, got string "big"'),
        ("mounts = [1]", "mounts[0]: expected a table, got integer 1"),
        ("depends_on = 'db'", 'depends_on: expected an array of strings, got string "db"'),
        ("restart = false", "restart: expected a restart policy name (string), got boolean false"),
    ],
)
def test_wrong_types_name_expected_type(extra: str, message: str) -> None:
    assert container_err(extra) == f"demo.toml: containers.web.{message}"


def test_container_section_must_be_a_table() -> None:
    assert str(err("[containers]\nweb = 5\n")) == (
        "demo.toml: containers.web: expected a table, got integer 5"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('startsecs = "soon"', 'startsecs: "soon" is not a duration'),
        ("stop_timeout = -1", "stop_timeout: -1 is negative"),
        ('log = { max_bytes = "lots" }', 'log.max_bytes: "lots" is not a size'),
        ('backoff = { initial = "0" }', 'backoff.initial: "0" must be greater than zero'),
        ("backoff = { factor = 0.5 }", "backoff.factor: 0.5 is out of range (must be >= 1.0"),
        (
            'backoff = { initial = "2s", max = "1s" }',
            'backoff.max: "1s" is less than initial (2.0s)',
        ),
        ("max_retries = -1", "max_retries: -1 is too small (must be >= 0)"),
        ("log = { backups = -1 }", "log.backups: -1 is too small (must be >= 0)"),
    ],
)
def test_bad_values(extra: str, message: str) -> None:
    assert container_err(extra).startswith(f"demo.toml: containers.web.{message}")


def test_unknown_dependency() -> None:
    text = MIN + 'depends_on = ["dbx"]\n[containers.db]\ncommand = ["/bin/db"]\n'
    assert str(err(text)) == (
        'demo.toml: containers.web.depends_on: unknown container "dbx" (did you mean "db"?)'
    )


def test_dependency_cycle() -> None:
    text = (
        '[containers.a]\ncommand = ["x"]\ndepends_on = ["b"]\n'
        '[containers.b]\ncommand = ["x"]\ndepends_on = ["c"]\n'
        '[containers.c]\ncommand = ["x"]\ndepends_on = ["a"]\n'
    )
    e = err(text)
    assert e.message == "depends_on cycle: a -> b -> c -> a"
    assert str(e) == "demo.toml: containers.a.depends_on: depends_on cycle: a -> b -> c -> a"


def test_self_dependency_is_a_cycle() -> None:
    assert container_err('depends_on = ["web"]').endswith("depends_on cycle: web -> web")


def test_duplicate_dependency() -> None:
    text = MIN + 'depends_on = ["db", "db"]\n[containers.db]\ncommand = ["x"]\n'
    assert str(err(text)) == 'demo.toml: containers.web.depends_on[1]: "db" is listed twice'


@pytest.mark.parametrize("name", ["Web", "-web", "web app", "a" * 64, "wéb"])
def test_bad_container_name(name: str) -> None:
    e = err(f'[containers."{name}"]\ncommand = ["x"]\n')
    assert e.message.startswith(f'invalid container name "{name}" (use 1-63 characters')
    assert e.key.startswith("containers.")


def test_container_name_with_dot_is_quoted_in_key_path() -> None:
    e = err('[containers."my.app"]\ncommand = []\n')
    assert str(e) == 'demo.toml: containers."my.app".command: must not be empty'


def test_bad_group_name() -> None:
    assert container_err('group = "Front End"').startswith(
        'demo.toml: containers.web.group: invalid group name "Front End"'
    )


def test_bad_restart_policy_lists_allowed() -> None:
    assert container_err('restart = "on-failure:3"') == (
        'demo.toml: containers.web.restart: "on-failure:3" is not a restart policy '
        '(allowed: "no", "on-failure", "always", "unless-stopped")'
    )


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        ("[0, 256]", "exitcodes[1]: 256 is not an exit code (0..255)"),
        ("[-1]", "exitcodes[0]: -1 is not an exit code (0..255)"),
        ('["0"]', 'exitcodes[0]: expected an exit code (an integer), got string "0"'),
    ],
)
def test_bad_exit_codes(codes: str, message: str) -> None:
    assert container_err(f"exitcodes = {codes}") == f"demo.toml: containers.web.{message}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"SIGTERN"', 'unknown signal "SIGTERN" (did you mean "SIGTERM"?)'),
        ('"FOO"', 'unknown signal "FOO"'),
        ("0", "0 is not a signal number (1..64)"),
        ("99", "99 is not a signal number (1..64)"),
        ("1.0", "expected a signal name or number"),
    ],
)
def test_bad_stop_signal(value: str, message: str) -> None:
    assert container_err(f"stop_signal = {value}").startswith(
        f"demo.toml: containers.web.stop_signal: {message}"
    )


def test_bad_namespace() -> None:
    assert container_err('namespaces = ["mnt"]') == (
        'demo.toml: containers.web.namespaces[0]: "mnt" is not a namespace '
        '(allowed: "mount", "uts", "ipc", "pid", "net", "user", "cgroup")'
    )
    assert container_err('namespaces = ["pid", "pid"]') == (
        'demo.toml: containers.web.namespaces[1]: "pid" is listed twice'
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('workdir = "app"', 'workdir: "app" is not an absolute path'),
        ('rootfs = "rootfs/web"', 'rootfs: "rootfs/web" is not "host" or an absolute path'),
        ('mounts = [{ source = "data", target = "/d" }]', 'mounts[0].source: "data" is not an abs'),
        ('mounts = [{ source = "/d", target = "d" }]', 'mounts[0].target: "d" is not an absolute'),
        ('mounts = [{ target = "/d" }]', "mounts[0].source: required for a bind mount"),
        (
            'mounts = [{ type = "tmpfs", source = "/s", target = "/d" }]',
            "mounts[0].source: not allowed for a tmpfs mount",
        ),
        (
            'mounts = [{ source = "/s", target = "/d", size = "1M" }]',
            "mounts[0].size: only allowed for a tmpfs mount",
        ),
        ('mounts = [{ source = "/s" }]', "mounts[0].target: required key is missing"),
        (
            'mounts = [{ type = "proc", target = "/proc" }]',
            'mounts[0].type: "proc" is not a mount type (allowed: "bind", "tmpfs")',
        ),
        (
            'mounts = [{ source = "/s", target = "/a/../etc" }]',
            'mounts[0].target: "/a/../etc" must not contain ".."',
        ),
        ('mounts = [{ source = "/s", target = "/" }]', 'mounts[0].target: "/" cannot be a mount'),
        (
            'mounts = [{ source = "/s", target = "/d" }, { type = "tmpfs", target = "/d/" }]',
            'mounts[1].target: "/d/" is already a target of mounts[0]',
        ),
        ('mounts = [{ source = "/s", target = "/d", ro = true }]', "mounts[0].ro: unknown key"),
    ],
)
def test_bad_paths_and_mounts(extra: str, message: str) -> None:
    assert container_err(extra).startswith(f"demo.toml: containers.web.{message}")


@pytest.mark.parametrize("value", ['"root"', '"1000"', '"1000:"', '"-1:0"', '"4294967295:0"'])
def test_bad_user(value: str) -> None:
    assert container_err(f"user = {value}").startswith(
        f'demo.toml: containers.web.user: {value} is not "uid:gid"'
    )


def test_bad_capability() -> None:
    assert container_err('cap_add = ["NET_ADMN"]') == (
        'demo.toml: containers.web.cap_add[0]: unknown capability "NET_ADMN" '
        '(did you mean "CAP_NET_ADMIN"?)'
    )
    assert container_err('cap_add = ["NET_RAW"]\ncap_drop = ["CAP_NET_RAW"]') == (
        'demo.toml: containers.web.cap_drop[0]: "CAP_NET_RAW" is also in cap_add'
    )


def test_bad_env_name() -> None:
    assert container_err('env = { "A=B" = "1" }') == (
        'demo.toml: containers.web.env: "A=B" is not a valid variable name (no "=")'
    )


def test_what_exec_cannot_take_is_refused_before_any_start() -> None:
    # Each argument and each NAME=value is at most MAX_ARG_STRLEN (128 KiB) for execve:
    # longer ones used to fail every start, retried until FATAL.
    assert container_err(f'env = {{ BIG = "{"x" * 131068}" }}') == (
        "demo.toml: containers.web.env.BIG: 131072 bytes: exec takes at most 131071 per "
        "variable (NAME=value)")
    assert parse_config(MIN + f'env = {{ BIG = "{"x" * 131067}" }}', "demo.toml")
    text = MIN.replace('"/bin/true"', f'"/bin/true", "{"y" * 131072}"')
    assert str(err(text)) == (
        "demo.toml: containers.web.command[1]: 131072 bytes: exec takes at most 131071 "
        "per argument")


def test_bad_hostname() -> None:
    assert container_err('hostname = "bad host"').startswith(
        'demo.toml: containers.web.hostname: "bad host" is not a valid hostname'
    )


def test_namespace_dependent_keys() -> None:
    assert container_err('namespaces = ["pid"]\nhostname = "x"') == (
        'demo.toml: containers.web.hostname: needs the "uts" namespace (it would rename the host)'
    )
    assert container_err('namespaces = ["pid"]\nreadonly_rootfs = true') == (
        'demo.toml: containers.web.readonly_rootfs: needs the "mount" namespace'
    )
    assert container_err('namespaces = []\nrootfs = "/srv/r"') == (
        'demo.toml: containers.web.rootfs: needs the "mount" namespace'
    )
    # The default hostname (the name) is fine without uts: it is simply not applied.
    cfg = parse_config(MIN + 'namespaces = ["pid"]\n', "demo.toml")
    assert cfg.containers["web"].namespaces == ("pid",)


@pytest.mark.parametrize(
    "value", ['"localhost"', '"127.0.0.1:0"', '"127.0.0.1:70000"', '"[zz]:80"', '":80"']
)
def test_bad_metrics_listen(value: str) -> None:
    assert str(err(f"[supervisor]\nmetrics_listen = {value}\n")).startswith(
        f'demo.toml: supervisor.metrics_listen: {value} is not "host:port"'
    )


def test_metrics_listen_empty_disables() -> None:
    cfg = parse_config('[supervisor]\nmetrics_listen = ""\n', "demo.toml")
    assert cfg.supervisor.metrics_listen == ""


def test_bad_supervisor_paths() -> None:
    assert str(err('[supervisor]\nsocket = "nsvisor.sock"\n')) == (
        'demo.toml: supervisor.socket: "nsvisor.sock" is not an absolute path'
    )
    assert str(err('[supervisor]\nsocks = "/x"\n')) == (
        'demo.toml: supervisor.socks: unknown key (did you mean "socket"?)'
    )


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config: No such file or directory"


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"x = '\xff'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not valid UTF-8 (byte offset 5)"


def test_config_from_dict_errors_carry_source() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"containers": {"web": {}}}, "state.json")
    assert str(info.value) == "state.json: containers.web.command: required key is missing"


# --------------------------------------------------------------------------- diff


def test_diff_configs() -> None:
    old = parse_config(
        '[containers.a]\ncommand = ["a"]\n[containers.b]\ncommand = ["b"]\n'
        '[containers.c]\ncommand = ["c"]\n',
        "old.toml",
    )
    new = parse_config(
        '[containers.d]\ncommand = ["d"]\n[containers.c]\ncommand = ["c"]\n'
        '[containers.b]\ncommand = ["b"]\npriority = 1\n',
        "new.toml",
    )
    diff = diff_configs(old, new)
    assert diff.added == ["d"]
    assert diff.changed == ["b"]
    assert diff.removed == ["a"]
    assert diff.unchanged == ["c"]
    assert diff.supervisor_changed == []
    assert diff.has_changes


def test_diff_identical_and_supervisor_change() -> None:
    cfg = parse_config(FULL, "a.toml")
    same = diff_configs(cfg, parse_config(FULL, "b.toml"))
    assert (same.added, same.changed, same.removed) == ([], [], [])
    assert same.unchanged == ["db", "web"]
    assert not same.has_changes
    moved = parse_config(FULL.replace("/tmp/nsv/log", "/tmp/nsv/log2"), "c.toml")
    assert diff_configs(cfg, moved).supervisor_changed == ["supervisor.log_dir"]
    assert diff_configs(Config(), cfg).added == ["db", "web"]


NETS = (
    '[networks.redblue]\ndriver = "veth"\nsubnet = "11.11.11.0/24"\n'
    '[networks.lab]\ndriver = "bridge"\nsubnet = "10.123.0.0/24"\n'
)


def net_err(containers: str, networks: str = NETS) -> str:
    return str(err(networks + containers))


def test_networks_parse() -> None:
    cfg = parse_config(
        NETS + '[containers.red]\ncommand = ["x"]\nnetworks = { redblue = "11.11.11.2" }\n'
        '[containers.blue]\ncommand = ["x"]\nnetworks = { redblue = "11.11.11.3" }\n'
        '[containers.web]\ncommand = ["x"]\nnetworks = ["lab"]\n'
        'ports = ["127.0.0.1:8080:8080/tcp", "9090:90"]\n', "demo.toml")
    assert cfg.networks["lab"].driver == "bridge"
    assert cfg.containers["red"].networks[0].address == "11.11.11.2"
    web = cfg.containers["web"]
    assert [str(p) for p in web.ports] == ["127.0.0.1:8080:8080/tcp", "127.0.0.1:9090:90/tcp"]
    assert web.to_dict()["networks"] == {"lab": ""}


def test_fingerprint_follows_the_container_and_its_networks_only() -> None:
    def parsed(web: str = '["x"]', lab: str = "10.123.0.0/24",
               redblue: str = "11.11.11.0/24") -> Config:
        return parse_config(
            f'[networks.redblue]\ndriver = "veth"\nsubnet = "{redblue}"\n'
            f'[networks.lab]\ndriver = "bridge"\nsubnet = "{lab}"\n'
            f'[containers.web]\ncommand = {web}\nnetworks = ["lab"]\n', "f.toml")

    def of(cfg: Config) -> str:
        return fingerprint(cfg.containers["web"], cfg.networks)

    base = of(parsed())
    assert base == of(parsed()) and len(base) == 8  # stable across parses
    assert of(parsed(web='["y"]')) != base
    assert of(parsed(lab="10.123.0.0/25")) != base  # the network it is on
    assert of(parsed(redblue="11.11.12.0/24")) == base  # one it is not on


@pytest.mark.parametrize(("containers", "message"), [
    ('[containers.a]\ncommand = ["x"]\nnetworks = ["nope"]\n',
     'containers.a.networks: unknown network "nope" (known: redblue, lab)'),
    ('[containers.a]\ncommand = ["x"]\nnetworks = { lab = "10.9.0.5" }\n',
     "containers.a.networks.lab: 10.9.0.5 is outside lab's subnet 10.123.0.0/24"),
    ('[containers.a]\ncommand = ["x"]\nnetworks = { lab = "10.123.0.1" }\n',
     "containers.a.networks.lab: 10.123.0.1 is the bridge's own address (the gateway)"),
    ('[containers.a]\ncommand = ["x"]\nnetworks = { lab = "10.123.0.9" }\n'
     '[containers.b]\ncommand = ["x"]\nnetworks = { lab = "10.123.0.9" }\n',
     "containers.b.networks.lab: 10.123.0.9 is already a's"),
    ('[containers.a]\ncommand = ["x"]\nnetworks = ["redblue"]\n',
     "networks.redblue: a veth network joins exactly two containers; 1 use it (a)"),
    ('[containers.a]\ncommand = ["x"]\nnetworks = ["lab"]\nports = ["8080:80"]\n'
     '[containers.b]\ncommand = ["x"]\nnetworks = ["lab"]\nports = ["8080:81"]\n',
     "containers.b.ports[0]: 127.0.0.1:8080 is already published by a"),
    ('[containers.a]\ncommand = ["x"]\nports = ["8080:80"]\n',
     "containers.a.ports[0]: publishing a port needs a bridge network"),
    ('[containers.a]\ncommand = ["x"]\nnetworks = ["lab"]\nports = ["8080:80/udp"]\n',
     "containers.a.ports[0]: protocol 'udp' is not supported (tcp only)"),
    ('[containers.a]\ncommand = ["x"]\nnetworks = ["lab"]\nnamespaces = ["mount"]\n',
     'containers.a.networks: networks need the "net" namespace'),
])
def test_network_errors_name_the_key(containers: str, message: str) -> None:
    assert net_err(containers).startswith("demo.toml: " + message)


def test_network_table_errors() -> None:
    # A missing driver read "None is not a driver".
    assert net_err("", '[networks.x]\nsubnet = "10.0.0.0/24"\n') == (
        'demo.toml: networks.x.driver: required key is missing (use "veth" or "bridge")')
    assert net_err("", '[networks.x]\ndriver = "bridge"\n') == (
        'demo.toml: networks.x.subnet: required key is missing (e.g. "10.123.0.0/24")')
    assert net_err("", '[networks.x]\ndriver = "macvlan"\nsubnet = "10.0.0.0/24"\n') == (
        "demo.toml: networks.x.driver: 'macvlan' is not a driver (use \"veth\" or \"bridge\")")
    assert net_err("", '[networks.x]\ndriver = "bridge"\nsubnet = "10.0.0.0/33"\n') == (
        "demo.toml: networks.x.subnet: '10.0.0.0/33' is not an IPv4 subnet "
        '(e.g. "10.123.0.0/24")')
    assert net_err("", NETS + '[networks.lab2]\ndriver = "bridge"\nsubnet = "10.123.0.0/16"\n'
                   ).startswith("demo.toml: networks.lab.subnet: 10.123.0.0/24 overlaps")
