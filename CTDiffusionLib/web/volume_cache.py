"""A small least-recently-used cache of loaded volumes: browsing 100 generated volumes keeps at most
`capacity` in memory; the evicted ones are released through `release` (e.g. removed from the MRML scene)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class VolumeCache(Generic[T]):
    def __init__(self, load: Callable[[Hashable], T], release: Callable[[T], None], capacity: int = 3):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._load, self._release, self.capacity = load, release, capacity
        self._items: OrderedDict[Hashable, T] = OrderedDict()

    def get(self, key: Hashable) -> T:
        """The value for `key`, loading it on first use; beyond capacity the least recently used goes."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._load(key)
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._release(self._items.popitem(last=False)[1])
        return value

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        while self._items:
            self._release(self._items.popitem(last=False)[1])
