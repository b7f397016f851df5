"""The daemon's state files: written in place, never torn, read back as written."""

from __future__ import annotations

import json
import os

import structlog.testing

from supervisor.daemon.store import StateStore


def test_round_trip_and_names(tmp_path) -> None:
    store = StateStore(str(tmp_path))
    store.save("web", {"pid": 42, "history": []})
    store.save("db", {"pid": 7})
    assert store.load("web") == {"pid": 42, "history": []}
    assert store.names() == ["db", "web"]
    assert store.load("missing") is None


def test_later_saves_rewrite_the_same_file_in_place(tmp_path) -> None:
    store = StateStore(str(tmp_path))
    store.save("web", {"state": "STARTING", "history": ["x" * 50]})
    first = os.stat(store.path("web"))
    store.save("web", {"state": "RUNNING"})  # shorter: padded, never truncated
    store.save("web", {"state": "RUNNING", "pid": 12345})
    assert os.stat(store.path("web")).st_ino == first.st_ino  # no new inode per change
    assert store.load("web") == {"state": "RUNNING", "pid": 12345}
    with open(store.path("web"), "rb") as f:
        raw = f.read()
    assert len(raw) == first.st_size  # the file never shrinks, so one write suffices
    assert json.loads(raw) == {"state": "RUNNING", "pid": 12345}
    assert sorted(os.listdir(store.dir)) == ["web.json"]  # no temporary file left


def test_a_document_bigger_than_a_page_is_replaced_whole(tmp_path) -> None:
    store = StateStore(str(tmp_path))
    store.save("web", {"small": True})
    big = {"history": ["y" * 100] * 60}  # > 4 KiB: cannot be rewritten in one page
    store.save("web", big)
    assert store.load("web") == big
    store.save("web", {"small": True})  # and back: the big file is replaced, not padded
    assert store.load("web") == {"small": True}
    assert os.stat(store.path("web")).st_size < 100
    assert sorted(os.listdir(store.dir)) == ["web.json"]


def test_a_removed_state_dir_is_made_again(tmp_path) -> None:
    store = StateStore(str(tmp_path))
    store.save("web", {"pid": 1})
    os.unlink(store.path("web"))
    os.rmdir(store.dir)
    store.save("web", {"pid": 2})
    assert store.load("web") == {"pid": 2}


def test_remove_deletes_state_and_exit_files(tmp_path) -> None:
    store = StateStore(str(tmp_path))
    store.save("web", {"pid": 1})
    with open(store.exit_file("web"), "w") as f:
        f.write("{}")
    store.remove("web")
    store.remove("web")  # twice is harmless
    assert os.listdir(store.dir) == []


def test_a_state_file_that_cannot_be_written_is_logged_once_and_not_raised(
        tmp_path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state dir should be")
    store = StateStore.__new__(StateStore)  # its dir cannot be made: a file is in the way
    store.dir = str(blocker / "containers")
    with structlog.testing.capture_logs() as logged:
        assert store.save("web", {"pid": 1}) is False  # ENOTDIR: no exception
        assert store.save("web", {"pid": 2}) is False
        blocker.unlink()
        assert store.save("web", {"pid": 3}) is True  # the dir is made again
    assert store.load("web") == {"pid": 3}
    assert [(e["event"], e["log_level"]) for e in logged] == [
        ("state file not written", "error"), ("state file written again", "info")]
    assert "free space in state_dir" in logged[0]["hint"]
