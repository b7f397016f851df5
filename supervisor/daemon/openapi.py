"""The OpenAPI 3.1 document of the control API, built from the routes the server has,
so the document and what the daemon serves cannot drift apart (a test checks both ways).
"""

from __future__ import annotations

import re
from typing import Any

from .. import __version__

_STATUS = {
    "type": "object",
    "required": ["name", "state", "pid", "restarts", "exit_code", "uptime_seconds"],
    "properties": {
        "name": {"type": "string"}, "group": {"type": "string"},
        "state": {"enum": ["STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED",
                           "FATAL"]},
        "pid": {"type": ["integer", "null"]}, "restarts": {"type": "integer"},
        "exit_code": {"type": ["integer", "null"]},
        "uptime_seconds": {"type": ["number", "null"]}, "description": {"type": "string"},
        "last_exit_reason": {"type": ["string", "null"]},
        "started_at": {"type": ["number", "null"]},
    },
}
_ERROR = {"type": "object", "required": ["error", "code"],
          "properties": {"error": {"type": "string"}, "code": {"type": "string"}}}
_NAMES = {"type": "object", "properties": {
    "names": {"type": "array", "items": {"type": "string"},
              "description": "NAME, GROUP:* or all"},
    "wait": {"type": "boolean", "default": True}}}
_RESULTS = {"type": "object", "properties": {"results": {"type": "array", "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"},
                                     "error": {"type": ["string", "null"]}}}}}}
_SIGNAL = {"type": "object", "required": ["names", "signal"], "properties": {
    "names": _NAMES["properties"]["names"],
    "signal": {"type": ["string", "integer"], "description": "HUP, SIGHUP or 1"}}}
_EXEC = {"type": "object", "required": ["command"], "properties": {
    "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "tty": {"type": "boolean", "default": False},
    "env": {"type": "object", "additionalProperties": {"type": "string"}}},
    "description": "The caller's stdin, stdout and stderr go with the request as SCM_RIGHTS."}
_SHUTDOWN = {"type": "object", "properties": {
    "leave_running": {"type": "boolean", "default": False,
                      "description": "exit without stopping the containers; the next "
                                     "nsvisord on the state_dir re-adopts them"}}}

_SUMMARIES: dict[str, tuple[str, dict | None, dict]] = {
    "version": ("nsvisord's version", None, {"type": "object"}),
    "pid": ("nsvisord's pid", None, {"type": "object"}),
    "openapi": ("this document", None, {"type": "object"}),
    "list_containers": ("status of every container", None,
                        {"type": "array", "items": _STATUS}),
    "get_container": ("status of one container", None, _STATUS),
    "inspect": ("config and live state: namespaces, cgroup, logs, restart history", None,
                {"type": "object"}),
    "top": ("processes inside the container", None, {"type": "object"}),
    "logs": ("last lines of a log; follow=1 streams NDJSON {\"line\": ...}", None,
             {"type": "object"}),
    "clear_logs": ("truncate the container's logs", None, {"type": "object"}),
    "exec": ("run a command inside a running container", _EXEC,
             {"type": "object", "properties": {"exit_code": {"type": "integer"}}}),
    "start": ("start containers (and their dependencies)", _NAMES, _RESULTS),
    "stop": ("stop containers (and their dependents first)", _NAMES, _RESULTS),
    "restart": ("stop, then start (and the running dependents the stop took down)",
                _NAMES, _RESULTS),
    "signal": ("send a signal to containers", _SIGNAL, _RESULTS),
    "events": ("recent events (the last `recent`); follow=1 streams NDJSON events, "
               "the last `recent` (default 0) first", None, {"type": "object"}),
    "reread": ("what the config file would change (nothing applied)", None,
               {"type": "object"}),
    "update": ("apply the config file's difference", _NAMES, {"type": "object"}),
    "add": ("activate containers from the config file", _NAMES, _RESULTS),
    "remove": ("deactivate stopped containers", _NAMES, _RESULTS),
    "avail": ("every container of the config file, active or not", None,
              {"type": "array"}),
    "reload": ("stop all, reread, start all", None, {"type": "object"}),
    "shutdown": ("stop all and exit (or leave them running)", _SHUTDOWN,
                 {"type": "object"}),
}


def document(routes: list[tuple[str, re.Pattern[str], Any]]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, pattern, handler in routes:
        path = re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", pattern.pattern[1:-1])
        summary, body, answer = _SUMMARIES[handler.__name__]
        op: dict[str, Any] = {
            "operationId": handler.__name__, "summary": summary,
            "responses": {
                "200": {"description": "ok",
                        "content": {"application/json": {"schema": answer}}},
                "default": {"description": "error",
                            "content": {"application/json": {"schema": _ERROR}}},
            },
        }
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in re.findall(r"\{(\w+)\}", path)]
        if handler.__name__ in ("logs", "events"):
            params.append({"name": "follow", "in": "query", "schema": {"type": "boolean"}})
        if handler.__name__ == "logs":
            params += [{"name": "stream", "in": "query",
                        "schema": {"enum": ["stdout", "stderr"]}},
                       {"name": "lines", "in": "query", "schema": {"type": "integer"}}]
        if handler.__name__ == "events":
            params.append({"name": "recent", "in": "query", "schema": {"type": "integer"}})
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {"content": {"application/json": {"schema": body}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {"openapi": "3.1.0",
            "info": {"title": "nsvisord control API", "version": __version__},
            "paths": paths}
