"""
Peers that agents could not reach, held back from announce answers for a while (issue 18).

Agents report the peers of a torrent they failed to dial, or that accepted the
connection and never answered the handshake (``POST /report/{infohash}``).  A
peer reported by ``reporters`` different clients within ``duration`` seconds is
*quarantined*: the tracker leaves it out of that torrent's answers for
``duration`` seconds.  A client is its address (on loopback its address and
peer id, see :meth:`~kraken.peers.admission.AdmissionPolicy.identity`), so one
host cannot take a healthy peer out of the swarm alone, while a fake that many
agents fail to reach goes quickly.  Origins are never quarantined: they come
from the origin ring, not from announces.

State lives in this process (several trackers sharing Redis each keep their
own): agents report to the tracker that owns the blob, the same one they
announce to.  Both maps are bounded; when one is full it starts over, which
can only let a peer back early.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from attrs import define, field

from kraken.core import InfoHash

__all__ = ["DEFAULT_QUARANTINE", "DEFAULT_QUARANTINE_REPORTERS", "Quarantine"]

#: Seconds a quarantined peer is left out of answers, and the window of reports.
DEFAULT_QUARANTINE: Final = 300.0
#: Different clients whose reports quarantine a peer.
DEFAULT_QUARANTINE_REPORTERS: Final = 2
#: Peers (torrent, peer id) with reports or a quarantine kept at most.
MAX_ENTRIES: Final = 100_000


@define
class Quarantine:
    """Reports of unreachable peers and the peers they quarantined (see the module doc)."""

    now: Callable[[], float]
    duration: float = DEFAULT_QUARANTINE
    reporters: int = DEFAULT_QUARANTINE_REPORTERS
    max_entries: int = MAX_ENTRIES
    #: torrent -> peer id -> end of its quarantine.
    _held: dict[InfoHash, dict[str, float]] = field(init=False, factory=dict)
    _held_count: int = field(init=False, default=0)
    #: (torrent, peer id) -> reporter identity -> time of its last report.
    _reports: dict[tuple[InfoHash, str], dict[str, float]] = field(init=False, factory=dict)

    def report(self, infohash: InfoHash, peer_ids: Iterable[str], reporter: str) -> list[str]:
        """Record ``reporter``'s report of ``peer_ids``; answer those now quarantined."""
        now = self.now()
        quarantined: list[str] = []
        for peer_id in peer_ids:
            key = (infohash, peer_id)
            seen = self._reports.get(key)
            if seen is None:
                if len(self._reports) >= self.max_entries:
                    self._reports.clear()
                seen = self._reports[key] = {}
            seen[reporter] = now
            live = [who for who, at in seen.items() if now - at < self.duration]
            if len(live) < self.reporters:
                if len(live) < len(seen):
                    self._reports[key] = {who: seen[who] for who in live}
                continue
            del self._reports[key]
            held = self._held.get(infohash)
            if held is None:
                if self._held_count >= self.max_entries:
                    self._held.clear()
                    self._held_count = 0
                held = self._held[infohash] = {}
            if peer_id not in held:
                self._held_count += 1
            held[peer_id] = now + self.duration
            quarantined.append(peer_id)
        return quarantined

    def held(self, infohash: InfoHash) -> dict[str, float] | None:
        """
        The peers of ``infohash`` in quarantine now (id -> end), or None (the common case).

        Ended quarantines are dropped here.
        """
        held = self._held.get(infohash)
        if held is None:
            return None
        now = self.now()
        ended = [peer_id for peer_id, until in held.items() if until <= now]
        for peer_id in ended:
            del held[peer_id]
        self._held_count -= len(ended)
        if not held:
            del self._held[infohash]
            return None
        return held
