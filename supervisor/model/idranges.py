"""Host id ranges for user namespaces: one 65536-id range per container, no overlaps.

Pure bookkeeping. A container keeps its range for as long as it exists (not just while it
runs), so files it wrote to a volume stay its own across restarts.
"""

from __future__ import annotations


class IdRangesExhausted(RuntimeError):
    pass


class IdRanges:
    """Slots ``base + k*size`` for k in ``range(slots)``, handed out lowest first."""

    def __init__(self, base: int = 100_000_000, size: int = 65536, slots: int = 30_000):
        self.base, self.size, self.slots = base, size, slots
        self._by_owner: dict[str, int] = {}
        self._owners: dict[int, str] = {}

    def allocate(self, owner: str) -> int:
        """The first host id of ``owner``'s range (the same one while it holds it)."""
        if owner in self._by_owner:
            return self.base + self._by_owner[owner] * self.size
        for slot in range(self.slots):
            if slot not in self._owners:
                return self._take(owner, slot)
        raise IdRangesExhausted(f"all {self.slots} user-namespace id ranges are in use")

    def claim(self, owner: str, start: int) -> None:
        """Record an existing allocation (a container re-adopted after a restart)."""
        slot, rest = divmod(start - self.base, self.size)
        if rest or not 0 <= slot < self.slots:
            return  # not one of ours: an explicit map from the spec
        holder = self._owners.get(slot)
        if holder not in (None, owner):
            raise ValueError(f"id range {start} is held by {holder!r}, not {owner!r}")
        self._take(owner, slot)

    def release(self, owner: str) -> None:
        slot = self._by_owner.pop(owner, None)
        if slot is not None:
            del self._owners[slot]

    def _take(self, owner: str, slot: int) -> int:
        self._by_owner[owner] = slot
        self._owners[slot] = owner
        return self.base + slot * self.size
