"""
A small in-process cache that collapses concurrent identical lookups.

The tracker uses it where the Go system used an nginx cache with
``proxy_cache_lock on``: the metainfo answers of the origins (200 for 5 min,
anything else for 1 s), the origins' locations of a blob and their peer
contexts.  While a key is being fetched, further lookups of it wait for that
fetch instead of starting their own: 100 agents asking at once cost the
origin one request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from kraken.io.singleflight import SingleFlight

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

HIT: Final = "hit"
MISS: Final = "miss"
JOINED: Final = "joined"


@define(eq=False)
class _Entry(Generic[V]):
    expires_at: float
    value: V | None = None
    failure: Failure | None = None


@define(eq=False)
class CollapsingCache(Generic[K, V]):
    """
    Values by key, each kept for a time that depends on the value.

    ``ttl(value)`` says how long a fetched value stays fresh (0: not cached);
    a failed fetch is kept for ``error_ttl`` seconds (0: not cached) and
    re-raised to those who ask meanwhile.  At most ``max_entries`` values are
    kept, the least recently stored dropped first.  ``observe`` is called with
    :data:`HIT`, :data:`MISS` or :data:`JOINED` for every lookup (metrics).

    Each caller gets its own Deferred, so a caller that cancels (an HTTP
    client that went away) never cancels the shared fetch.
    """

    clock: IReactorTime
    ttl: Callable[[V], float]
    error_ttl: float = 0.0
    max_entries: int = 4096
    observe: Callable[[str], object] = lambda kind: None
    _entries: OrderedDict[K, _Entry[V]] = field(init=False, factory=OrderedDict)
    _flight: SingleFlight[K, V] = field(init=False, factory=SingleFlight)

    def get(self, key: K, fetch: Callable[[], Deferred[V]]) -> Deferred[V]:
        """The fresh cached value of ``key``, or the result of one shared ``fetch()``."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires_at > self.clock.seconds():
                self.observe(HIT)
                if entry.failure is not None:
                    return fail(entry.failure)
                return succeed(entry.value)  # type: ignore[arg-type]
            del self._entries[key]
        self.observe(JOINED if key in self._flight else MISS)
        return self._flight.run(key, lambda: maybeDeferred(fetch).addBoth(self._keep, key))

    def _keep(self, result: V | Failure, key: K) -> V | Failure:
        """Store the fetch's outcome for as long as its TTL says; pass it on."""
        now = self.clock.seconds()
        if isinstance(result, Failure):
            if self.error_ttl > 0:
                self._store(key, _Entry(now + self.error_ttl, failure=result))
        else:
            ttl = self.ttl(result)
            if ttl > 0:
                self._store(key, _Entry(now + ttl, value=result))
        return result

    def _store(self, key: K, entry: _Entry[V]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every stored value (fetches in flight still complete)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
