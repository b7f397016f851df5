"""Dependency ordering from depends_on and priority."""

from __future__ import annotations

import pytest

from supervisor.model.config import parse_config
from supervisor.model.deps import DependencyGraph, find_cycle

# web -> api -> db ; web -> cache ; worker -> db ; metrics is independent
DEPS = {
    "db": [],
    "cache": [],
    "api": ["db"],
    "web": ["api", "cache"],
    "worker": ["db"],
    "metrics": [],
}
PRIO = {"db": 10, "cache": 20, "api": 999, "web": 999, "worker": 5, "metrics": 1}


@pytest.fixture
def graph() -> DependencyGraph:
    return DependencyGraph(DEPS, PRIO)


def test_find_cycle_none_for_dag() -> None:
    assert find_cycle(DEPS) is None
    assert find_cycle({}) is None


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"a": ["a"]}, ["a", "a"]),
        ({"x": [], "a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"]),
        ({"a": ["b", "c"], "b": [], "c": ["d"], "d": ["a"]}, ["a", "c", "d", "a"]),
    ],
)
def test_find_cycle(graph: dict[str, list[str]], cycle: list[str]) -> None:
    assert find_cycle(graph) == cycle


def test_find_cycle_ignores_unknown_names_and_long_chains() -> None:
    assert find_cycle({"a": ["ghost"]}) is None
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(5000)}
    assert find_cycle(chain) is None
    chain["n5000"] = ["n0"]
    cycle = find_cycle(chain)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 5002


def test_graph_rejects_unknown_and_cycles() -> None:
    with pytest.raises(ValueError, match="unknown container 'x'"):
        DependencyGraph({"a": ["x"]})
    with pytest.raises(ValueError, match="depends_on cycle: a -> b -> a"):
        DependencyGraph({"a": ["b"], "b": ["a"]})


def test_ready_to_start(graph: DependencyGraph) -> None:
    assert graph.ready_to_start("db", set())
    assert not graph.ready_to_start("api", set())
    assert graph.ready_to_start("api", {"db"})
    assert not graph.ready_to_start("web", {"db", "api"})
    assert graph.ready_to_start("web", {"api", "cache"})


def test_startable_now_is_concurrent_and_sorted(graph: DependencyGraph) -> None:
    pending = set(DEPS)
    assert graph.startable_now(pending, set()) == ["metrics", "db", "cache"]
    running = {"metrics", "db", "cache"}
    assert graph.startable_now(pending - running, running) == ["worker", "api"]
    running |= {"worker", "api"}
    assert graph.startable_now({"web"}, running) == ["web"]
    assert graph.startable_now({"db"}, {"db"}) == []  # already running


def test_start_waves_and_order(graph: DependencyGraph) -> None:
    assert graph.start_waves() == [["metrics", "db", "cache"], ["worker", "api"], ["web"]]
    assert graph.start_order() == ["metrics", "db", "cache", "worker", "api", "web"]


def test_stop_waves_reverse_dependencies(graph: DependencyGraph) -> None:
    assert graph.stop_waves() == [["web", "worker", "metrics"], ["api", "cache"], ["db"]]
    assert graph.stop_order() == ["web", "worker", "metrics", "api", "cache", "db"]


def test_waves_on_subset_keep_transitive_order(graph: DependencyGraph) -> None:
    # api is not being stopped, but web still depends on db through it.
    assert graph.stop_waves({"web", "db"}) == [["web"], ["db"]]
    assert graph.start_waves({"web", "db"}) == [["db"], ["web"]]
    with pytest.raises(KeyError):
        graph.stop_waves({"nope"})


def test_dependents_and_dependencies(graph: DependencyGraph) -> None:
    assert graph.dependents_of("db") == ["web", "worker", "api"]
    assert graph.dependents_of("web") == []
    assert graph.dependents_of("cache") == ["web"]
    assert graph.dependencies_of("web") == ["db", "cache", "api"]
    assert graph.dependencies_of("db") == []


def test_from_config_containers() -> None:
    cfg = parse_config(
        '[containers.web]\ncommand = ["w"]\ndepends_on = ["db"]\n'
        '[containers.db]\ncommand = ["d"]\npriority = 1\n'
        '[containers.side]\ncommand = ["s"]\npriority = 500\n',
        "demo.toml",
    )
    graph = DependencyGraph.from_containers(cfg.containers)
    assert graph.names == ["web", "db", "side"]
    assert graph.start_waves() == [["db", "side"], ["web"]]
    assert graph.stop_waves() == [["web", "side"], ["db"]]  # 999 stops before 500
