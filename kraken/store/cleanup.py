"""
Cleanup of the blob store: TTI, TTL and a size high-watermark (least recently used first).

One :class:`CleanupPolicy` per state (cache, downloads, uploads).  A run, per state:

1. **TTL**: remove entries whose ``mtime`` is more than ``ttl`` seconds ago.
   ``mtime`` is the store-clock time the data last changed: when a blob
   entered the cache, a download's last piece, an upload's last write.  So
   for downloads and uploads TTL means "no progress for ``ttl``".
2. **TTI**: remove entries whose last access is more than ``tti`` seconds
   ago (reads, piece writes, ``touch``).  Entries without a recorded access
   (uploads) are never removed by TTI.
3. **Watermark**: if the total ``size`` of what is left in the state (the
   apparent size of the data files, persisted and open blobs included) is
   above ``high_watermark`` bytes, remove entries least recently accessed
   first until the total is at or below ``low_watermark`` bytes (or nothing
   removable is left).  Watermarks are bytes of the state's own total, not a
   percentage of the disk: clear, testable, and the same on every host; an
   operator who thinks in disk percent converts once in the config.

A persisted blob is never removed and neither is a blob with an open
reader: removal goes through :meth:`~kraken.store.BlobStore.delete`, which
refuses both atomically, so a reader opened after the scan still wins.

:meth:`StoreCleaner.run_cleanup` is blocking: the daemon calls it from a
``TimerService`` through ``deferToThread``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Final

from attrs import field, frozen
from twisted.logger import Logger

from kraken.core import Digest
from kraken.store.blobstore import BlobStore
from kraken.store.errors import BlobInUse, BlobNotFound, BlobPersisted, UploadNotFound
from kraken.store.layout import CACHE, DOWNLOAD, UPLOAD

HOUR: Final = 3600.0
#: DESIGN 8: time to idle.
DEFAULT_TTI: Final = 6 * HOUR
#: DESIGN 8: time to live.
DEFAULT_TTL: Final = 24 * HOUR

TTL: Final = "ttl"
TTI: Final = "tti"
WATERMARK: Final = "watermark"


@frozen
class CleanupPolicy:
    """When entries of one state are removed; ``None`` turns a rule off."""

    #: Seconds since the last access after which an entry goes.
    tti: float | None = DEFAULT_TTI
    #: Seconds since ``mtime`` after which an entry goes.
    ttl: float | None = DEFAULT_TTL
    #: Total bytes of the state above which least recently used entries are evicted.
    high_watermark: int | None = None
    #: Eviction stops at or below this many bytes; defaults to ``high_watermark``.
    low_watermark: int | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("tti", "ttl", "high_watermark", "low_watermark"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"cleanup {name}: {value} is negative")
        if self.low_watermark is not None:
            if self.high_watermark is None:
                raise ValueError("cleanup low_watermark is set without high_watermark")
            if self.low_watermark > self.high_watermark:
                raise ValueError(
                    f"cleanup low_watermark {self.low_watermark} is above "
                    f"high_watermark {self.high_watermark}"
                )

    @property
    def eviction_target(self) -> int | None:
        """The total to evict down to, or None without a watermark."""
        return self.low_watermark if self.low_watermark is not None else self.high_watermark


@frozen
class Removal:
    """One entry a cleanup run removed."""

    #: ``"cache"``, ``"download"`` or ``"upload"``.
    state: str
    #: The digest (``sha256:<hex>``) or the upload id.
    name: str
    size: int
    #: ``"ttl"``, ``"tti"`` or ``"watermark"``.
    reason: str


@frozen
class CleanupResult:
    """What one cleanup run did."""

    removed: tuple[Removal, ...]
    #: Names that were due for removal but were refused (open, persisted meanwhile, gone).
    refused: tuple[str, ...]
    #: Total bytes left in each state that was cleaned.
    totals: dict[str, int] = field(eq=False, hash=False)

    @property
    def freed_bytes(self) -> int:
        """Bytes of the data files removed."""
        return sum(r.size for r in self.removed)

    def removed_digests(self, state: str = CACHE) -> set[Digest]:
        """The digests removed from ``state`` (cache or download)."""
        return {Digest.parse(r.name) for r in self.removed if r.state == state}


@frozen
class _Candidate:
    name: str
    size: int
    mtime: float
    last_access: float | None
    persisted: bool
    remove: Callable[[], None]


_REFUSALS = (BlobInUse, BlobPersisted, BlobNotFound, UploadNotFound)


def _clean_state(
    *,
    state: str,
    policy: CleanupPolicy,
    candidates: Iterable[_Candidate],
    now: float,
    removed: list[Removal],
    refused: list[str],
) -> int:
    """Apply ``policy`` to one state; return the bytes left."""

    def attempt(c: _Candidate, reason: str) -> bool:
        try:
            c.remove()
        except _REFUSALS:
            refused.append(c.name)
            return False
        removed.append(Removal(state, c.name, c.size, reason))
        return True

    survivors: list[_Candidate] = []
    for c in candidates:
        reason = None
        if not c.persisted:
            if policy.ttl is not None and now - c.mtime > policy.ttl:
                reason = TTL
            elif (
                policy.tti is not None
                and c.last_access is not None
                and now - c.last_access > policy.tti
            ):
                reason = TTI
        if reason is None or not attempt(c, reason):
            survivors.append(c)

    total = sum(c.size for c in survivors)
    target = policy.eviction_target
    if policy.high_watermark is not None and target is not None and total > policy.high_watermark:
        by_recency = sorted(
            (c for c in survivors if not c.persisted),
            key=lambda c: (c.last_access if c.last_access is not None else c.mtime, c.mtime),
        )
        for c in by_recency:
            if total <= target:
                break
            if attempt(c, WATERMARK):
                total -= c.size
    return total


@frozen
class StoreCleaner:
    """
    Applies a cleanup policy to each state of one store.

    A policy of ``None`` leaves that state alone.  The defaults are those of
    DESIGN 8 for the agent (TTI 6 h, TTL 24 h, no watermark); uploads default
    to TTL 24 h since the last write.
    """

    store: BlobStore
    cache: CleanupPolicy | None = CleanupPolicy()
    downloads: CleanupPolicy | None = CleanupPolicy()
    uploads: CleanupPolicy | None = CleanupPolicy(tti=None, ttl=DEFAULT_TTL)

    log = Logger()

    def _cache_candidates(self) -> list[_Candidate]:
        return [
            _Candidate(
                str(b.digest),
                b.size,
                b.mtime,
                b.last_access,
                b.persisted,
                partial(self.store.delete, b.digest),
            )
            for b in self.store.list_cache()
        ]

    def _download_candidates(self) -> list[_Candidate]:
        return [
            _Candidate(
                str(b.digest),
                b.size,
                b.mtime,
                b.last_access,
                False,
                partial(self.store.abort_download, b.digest),
            )
            for b in self.store.list_downloads()
        ]

    def _upload_candidates(self) -> list[_Candidate]:
        return [
            _Candidate(u.uid, u.size, u.mtime, None, False, partial(self.store.abort_upload, u.uid))
            for u in self.store.list_uploads()
        ]

    def run_cleanup(self, now: float | None = None) -> CleanupResult:
        """Run every policy once (blocking); ``now`` defaults to the store's clock."""
        when = float(self.store.clock.seconds()) if now is None else now
        removed: list[Removal] = []
        refused: list[str] = []
        totals: dict[str, int] = {}
        work: list[tuple[str, CleanupPolicy | None, Callable[[], list[_Candidate]]]] = [
            (CACHE, self.cache, self._cache_candidates),
            (DOWNLOAD, self.downloads, self._download_candidates),
            (UPLOAD, self.uploads, self._upload_candidates),
        ]
        for state, policy, candidates in work:
            if policy is not None:
                totals[state] = _clean_state(
                    state=state,
                    policy=policy,
                    candidates=candidates(),
                    now=when,
                    removed=removed,
                    refused=refused,
                )
        for r in removed:
            self.log.debug(
                "cleanup removed {state} {name} ({size} bytes, {reason})",
                state=r.state,
                name=r.name,
                size=r.size,
                reason=r.reason,
            )
        if removed or refused:
            self.log.info(
                "cleanup removed {count} entries ({freed} bytes); {refused} refused",
                count=len(removed),
                freed=sum(r.size for r in removed),
                refused=len(refused),
            )
        return CleanupResult(tuple(removed), tuple(refused), totals)
