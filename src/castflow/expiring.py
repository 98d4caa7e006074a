"""A small thread-safe map whose entries expire: what one process remembers for a while."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """Up to ``max_entries`` values, each forgotten ``ttl_s`` seconds after it was put; when full, the
    least recently put entry goes first."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._guard = threading.Lock()
        self._found: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        with self._guard:
            found = self._found.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > self.ttl_s:
                del self._found[key]
                return None
            return found[1]

    def put(self, key: K, value: V) -> V:
        with self._guard:
            self._found[key] = (time.monotonic(), value)
            self._found.move_to_end(key)
            while len(self._found) > self.max_entries:
                self._found.popitem(last=False)
        return value

    def forget(self, key: K) -> None:
        with self._guard:
            self._found.pop(key, None)

    def clear(self) -> None:
        with self._guard:
            self._found.clear()
