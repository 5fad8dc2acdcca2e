"""
How far one download is: pieces, bytes, rate and the peers it comes from.

:func:`torrent_progress` reads the engine's state of one torrent (the scheduler's
:class:`~kraken.torrent.scheduler.TorrentControl` and its dispatcher) without changing it;
:class:`DownloadProgress` is the value the agent's ``GET /blobs/{digest}/status`` serves and
its progress log line prints.  The rate is the average since the previous look (the log's
period, or the previous status request), or since the start for the first one.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from kraken.core import Digest, InfoHash, MetaInfo
from kraken.peers.announce import AnnounceProgress
from kraken.torrent.scheduler import Scheduler

__all__ = ["DownloadProgress", "RateWindow", "announce_progress", "torrent_progress"]


@frozen
class DownloadProgress:
    """One download's state at one moment; ``state`` is ``metainfo``, ``downloading``,
    ``committing``, ``complete`` or ``cached`` (in the cache, nothing to download)."""

    digest: Digest
    state: str
    namespace: str | None = None
    pieces_done: int = 0
    pieces_total: int = 0
    bytes_done: int = 0
    bytes_total: int | None = None
    seconds: float = 0.0
    bytes_per_second: float = 0.0
    peers: int = 0
    origins: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the status endpoint."""
        return {
            "digest": str(self.digest),
            "state": self.state,
            "namespace": self.namespace,
            "pieces": {"done": self.pieces_done, "total": self.pieces_total},
            "bytes": {"done": self.bytes_done, "total": self.bytes_total},
            "seconds": round(self.seconds, 3),
            "bytes_per_second": round(self.bytes_per_second),
            "peers": self.peers,
            "origins": self.origins,
        }

    def line(self) -> str:
        """The progress log line's text: ``41/64 pieces (64 %), 12.3 MB/s, 3 peers, 1 origin``."""
        percent = 100.0 * self.pieces_done / self.pieces_total if self.pieces_total else 0.0
        return (
            f"{self.pieces_done}/{self.pieces_total} pieces ({percent:.0f} %), "
            f"{self.bytes_per_second / 1e6:.1f} MB/s, {self.peers} peers, {self.origins} origins"
        )


class RateWindow:
    """Bytes per second between two looks at a download (the first look: since the start)."""

    def __init__(self, started: float) -> None:
        self._at = started
        self._bytes = 0
        self.rate = 0.0

    def update(self, now: float, done: int) -> float:
        """Record ``done`` bytes at ``now``; the rate since the previous update (kept if 0 s)."""
        if now > self._at:
            self.rate = max(0.0, (done - self._bytes) / (now - self._at))
            self._at, self._bytes = now, done
        return self.rate


def _bytes_done(metainfo: MetaInfo, missing: set[int]) -> int:
    return metainfo.length - sum(metainfo.piece_size(i) for i in missing)


def torrent_progress(
    scheduler: Scheduler, metainfo: MetaInfo, *, now: float, started: float, rate: RateWindow
) -> DownloadProgress:
    """The progress of the torrent of ``metainfo`` in ``scheduler``."""
    h = metainfo.infohash
    control = scheduler.torrents.get(h)
    total = metainfo.num_pieces
    if control is None:
        return DownloadProgress(
            metainfo.digest,
            "downloading",
            pieces_total=total,
            bytes_total=metainfo.length,
            seconds=now - started,
        )
    missing = control.dispatcher.missing
    done_bytes = _bytes_done(metainfo, missing)
    peers = origins = 0
    for record in scheduler.conns.values():
        if record.infohash == h and record.active:
            if record.origin:
                origins += 1
            else:
                peers += 1
    return DownloadProgress(
        metainfo.digest,
        control.state,
        namespace=control.namespace,
        pieces_done=total - len(missing),
        pieces_total=total,
        bytes_done=done_bytes,
        bytes_total=metainfo.length,
        seconds=now - started,
        bytes_per_second=rate.update(now, done_bytes),
        peers=peers,
        origins=origins,
    )


def announce_progress(scheduler: Scheduler, h: InfoHash) -> AnnounceProgress | None:
    """What an announce of torrent ``h`` tells the tracker of our pieces (None once complete)."""
    control = scheduler.torrents.get(h)
    if control is None or control.complete:
        return None
    dispatcher = control.dispatcher
    metainfo = dispatcher.metainfo
    return AnnounceProgress(metainfo.num_pieces, metainfo.length, dispatcher.have.to_bytes())
