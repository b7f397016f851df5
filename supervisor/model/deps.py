"""Start/stop ordering from ``depends_on`` and ``priority``.

``depends_on`` is a real dependency (start after the dependency is RUNNING,
stop before it), unlike supervisord's ``priority``, which only orders spawns
issued in the same instant.  Here ``priority`` only breaks ties among
containers that are free to start at the same time; independent containers
start together, not one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Protocol

__all__ = ["DependencyGraph", "find_cycle"]


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as ``["a", "b", "a"]``, or None if the graph is a DAG.

    Deterministic (nodes and edges are followed in the mapping's order) so the
    config error names the same cycle every time.  Edges to names that are not
    keys of ``graph`` are ignored: unknown names are reported separately.
    Iterative, so long chains cannot hit the recursion limit.
    """
    edges = {name: [dep for dep in deps if dep in graph] for name, deps in graph.items()}
    done: set[str] = set()
    for root in edges:
        if root in done:
            continue
        path: list[str] = [root]
        on_path = {root}
        stack = [iter(edges[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(edges[nxt]))
    return None


class _HasDeps(Protocol):
    depends_on: tuple[str, ...]
    priority: int


class DependencyGraph:
    """The containers' dependency DAG with ordering queries for the daemon.

    Ordering everywhere is by ``(priority, name)`` when starting and by
    ``(-priority, name)`` when stopping, so that among unrelated containers the
    lower priority starts first and stops last (supervisord's rule).
    """

    def __init__(
        self, depends_on: Mapping[str, Iterable[str]], priority: Mapping[str, int] | None = None
    ) -> None:
        self._deps: dict[str, tuple[str, ...]] = {n: tuple(d) for n, d in depends_on.items()}
        self._priority = {n: (priority or {}).get(n, 999) for n in self._deps}
        for name, deps in self._deps.items():
            for dep in deps:
                if dep not in self._deps:
                    raise ValueError(f"{name} depends on unknown container {dep!r}")
        cycle = find_cycle(self._deps)
        if cycle:
            raise ValueError("depends_on cycle: " + " -> ".join(cycle))
        self._dependents: dict[str, list[str]] = {n: [] for n in self._deps}
        for name, deps in self._deps.items():
            for dep in deps:
                self._dependents[dep].append(name)

    @classmethod
    def from_containers(cls, containers: Mapping[str, _HasDeps]) -> DependencyGraph:
        """Build from ``Config.containers`` (anything with depends_on and priority)."""
        return cls(
            {n: c.depends_on for n, c in containers.items()},
            {n: c.priority for n, c in containers.items()},
        )

    @property
    def names(self) -> list[str]:
        """All containers, in the order they were given."""
        return list(self._deps)

    def _start_key(self, name: str) -> tuple[int, str]:
        return (self._priority[name], name)

    def _stop_key(self, name: str) -> tuple[int, str]:
        return (-self._priority[name], name)

    def _closure(self, name: str, edges: Mapping[str, Iterable[str]]) -> set[str]:
        seen: set[str] = set()
        todo = list(edges[name])
        while todo:
            cur = todo.pop()
            if cur not in seen:
                seen.add(cur)
                todo.extend(edges[cur])
        return seen

    def dependencies_of(self, name: str) -> list[str]:
        """Everything ``name`` needs, transitively, in start order.

        Starting ``name`` means starting these first (``start web`` also
        starts ``db`` even when db is not autostarted).
        """
        return self.start_order(self._closure(name, self._deps))

    def dependents_of(self, name: str) -> list[str]:
        """Everything that needs ``name``, transitively, in stop order.

        Stopping ``name`` means stopping these first; intersect with the running
        set to know which ones actually need a stop.
        """
        return self.stop_order(self._closure(name, self._dependents))

    def ready_to_start(self, name: str, running: Collection[str]) -> bool:
        """True when all direct dependencies of ``name`` are RUNNING."""
        return all(dep in running for dep in self._deps[name])

    def startable_now(self, pending: Iterable[str], running: Collection[str]) -> list[str]:
        """The pending containers that may be spawned now, sorted by (priority, name).

        All of them may be started concurrently.  A pending container whose
        dependency is neither running nor pending waits forever, so the caller
        should add ``dependencies_of`` to the pending set.
        """
        ready = [n for n in set(pending) if n not in running and self.ready_to_start(n, running)]
        return sorted(ready, key=self._start_key)

    def _waves(
        self,
        names: Iterable[str] | None,
        edges: Mapping[str, Iterable[str]],
        key: Callable[[str], tuple[int, str]],
    ) -> list[list[str]]:
        chosen = set(self._deps if names is None else names)
        unknown = chosen - self._deps.keys()
        if unknown:
            raise KeyError(f"unknown container(s): {', '.join(sorted(unknown))}")
        # Transitive edges restricted to the chosen set: a -> b -> c still orders
        # a before c when only {a, c} are being started or stopped.
        blockers = {n: self._closure(n, edges) & chosen for n in chosen}
        waves: list[list[str]] = []
        placed: set[str] = set()
        while len(placed) < len(chosen):
            wave = [n for n in chosen - placed if blockers[n] <= placed]
            waves.append(sorted(wave, key=key))
            placed.update(wave)
        return waves

    def start_waves(self, names: Iterable[str] | None = None) -> list[list[str]]:
        """Dependency layers for starting ``names`` (default: all): wave k needs only waves < k."""
        return self._waves(names, self._deps, self._start_key)

    def stop_waves(self, names: Iterable[str] | None = None) -> list[list[str]]:
        """Reverse layers for stopping ``names`` (default: all): dependents before dependencies.

        Each wave may be stopped concurrently; wait for a wave to be down before
        the next.
        """
        return self._waves(names, self._dependents, self._stop_key)

    def start_order(self, names: Iterable[str] | None = None) -> list[str]:
        """A serial start order (the start waves, flattened)."""
        return [n for wave in self.start_waves(names) for n in wave]

    def stop_order(self, names: Iterable[str] | None = None) -> list[str]:
        """A serial stop order (the stop waves, flattened)."""
        return [n for wave in self.stop_waves(names) for n in wave]
