"""
The agent's clients of the tracker: announce, and metainfo polled until the origin has it.

Which tracker: the members of the tracker ring ranked by rendezvous hashing
of the blob's digest, those the passive health filter considers healthy
first.  A network error (refused, reset, timed out) marks that tracker with
the filter and moves on to the next; an HTTP error status is the answer and
is returned to the caller (reference kraken-p2p.md 4.2).

Metainfo answered 202 ("the origin is fetching it") or 503 ("no origin
answers right now") is asked again after 1 s, then 1.3 times longer each
time up to 5 s, with 5 % jitter, and given up after 15 minutes (DESIGN 5).

:class:`UnreachableReporter` tells the tracker which peers of a torrent this
agent could not dial or that never answered its handshake, a few at a time
(``POST /report/{infohash}``), so that the tracker stops handing out fakes
(:mod:`kraken.peers.quarantine`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import ClassVar, Final
from urllib.parse import quote

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.cluster.health import PassiveHealthFilter
from kraken.cluster.ring import RendezvousRing
from kraken.core import Digest, InvalidMetaInfo, MetaInfo, parse_json
from kraken.core.digest import InfoHash
from kraken.core.peer import PeerID, PeerInfo
from kraken.http.client import KrakenHTTPClient, TreqResponse, read_body
from kraken.peers.announce import (
    MAX_REPORTED,
    AnnounceRequest,
    AnnounceResponse,
    InvalidAnnounce,
    ReportRequest,
)

#: Seconds each tracker gets to answer before the next one is tried.
DEFAULT_TRACKER_TIMEOUT: Final = 10.0
MAX_ANNOUNCE_RESPONSE: Final = 1024 * 1024
MAX_METAINFO_RESPONSE: Final = 16 * 1024 * 1024
MAX_REPORT_RESPONSE: Final = 64 * 1024
#: Seconds an unreachable peer waits for others of its torrent before the report is sent.
DEFAULT_REPORT_DELAY: Final = 2.0


class TrackerUnavailable(Exception):
    """No tracker answered (the ring is empty, or every member failed at the network level)."""


class MetaInfoNotFound(LookupError):
    """The origins do not have the blob (the tracker answered 404)."""


class MetaInfoTimeout(Exception):
    """The origins were still fetching the blob when the client gave up."""


class InvalidTrackerResponse(ValueError):
    """A tracker answered 200 with something that is not a valid answer."""


@frozen
class PollPolicy:
    """Backoff for polling metainfo answered 202: ``initial * multiplier**n``, capped."""

    initial: float = 1.0
    multiplier: float = 1.3
    maximum: float = 5.0
    jitter: float = 0.05
    give_up_after: float = 15 * 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempt``-th 202 (0-based), with jitter."""
        base = min(self.initial * self.multiplier**attempt, self.maximum)
        return base * (1 + rng.uniform(-self.jitter, self.jitter))


@define
class TrackerClient:
    """
    Announce and metainfo requests to the tracker ring.

    ``client`` comes from the shared :class:`~kraken.http.client.HTTPClientFactory`;
    each request is made with ``timeout`` and without the factory's retries,
    since failing over to the next tracker is the retry.  ``health`` is the
    passive filter of the tracker ring (the same object should filter the
    ring's membership so that the ring and this client agree).
    """

    log: ClassVar[Logger] = Logger()

    client: KrakenHTTPClient
    ring: RendezvousRing
    health: PassiveHealthFilter
    clock: IReactorTime
    scheme: str = "http"
    timeout: float = DEFAULT_TRACKER_TIMEOUT
    poll: PollPolicy = field(factory=PollPolicy)
    rng: random.Random = field(factory=random.Random)

    def trackers_for(self, digest: Digest) -> list[str]:
        """The trackers to try for ``digest``, in order."""
        ranked = self.ring.rank(digest)
        healthy = self.health.healthy(frozenset(ranked))
        return [t for t in ranked if t in healthy] + [t for t in ranked if t not in healthy]

    async def _first_answer(
        self, digest: Digest, send: Callable[[str], Deferred[TreqResponse]]
    ) -> tuple[str, TreqResponse]:
        def nobody(errors: str) -> TrackerUnavailable:
            return TrackerUnavailable(
                f"no tracker answered for {digest}: {errors or 'the ring is empty'}"
            )

        return await self.health.first_answer(self.trackers_for(digest), send, nobody)

    async def _post(
        self, route: str, request: AnnounceRequest | ReportRequest
    ) -> tuple[str, TreqResponse]:
        """POST ``request`` as JSON to ``/{route}/{infohash}`` of the first tracker to answer."""
        data = json.dumps(request.to_dict(), separators=(",", ":")).encode()

        def send(tracker: str) -> Deferred[TreqResponse]:
            return self.client.post(
                f"{self.scheme}://{tracker}/{route}/{request.infohash}",
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,
                retry=False,
            )

        return await self._first_answer(request.digest, send)

    async def _announce(self, request: AnnounceRequest) -> AnnounceResponse:
        tracker, response = await self._post("announce", request)
        raw = await read_body(response, MAX_ANNOUNCE_RESPONSE)
        try:
            answer = AnnounceResponse.from_dict(parse_json(raw, "announce answer"))
        except (ValueError, InvalidAnnounce) as e:
            raise InvalidTrackerResponse(f"{tracker}: bad announce answer: {e}") from e
        me = request.peer.peer_id
        # The tracker never lists the requester; a Go tracker did, so check anyway.
        return AnnounceResponse(
            tuple(p for p in answer.peers if p.peer_id != me), answer.interval_seconds
        )

    def announce(self, request: AnnounceRequest) -> Deferred[AnnounceResponse]:
        """
        Announce to the tracker of the digest; fire with the peers and the next interval.

        Fails with :class:`TrackerUnavailable` when no tracker answers, with
        :class:`~kraken.http.client.HTTPStatusError` when the tracker refuses.
        """
        return Deferred.fromCoroutine(self._announce(request))

    async def _report(self, request: ReportRequest) -> list[str]:
        tracker, response = await self._post("report", request)
        raw = await read_body(response, MAX_REPORT_RESPONSE)
        try:
            held = json.loads(raw)["quarantined"]
            return [PeerID(p).hex for p in held]
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise InvalidTrackerResponse(f"{tracker}: bad report answer: {e}") from e

    def report(self, request: ReportRequest) -> Deferred[list[str]]:
        """
        Report peers this agent could not reach to the digest's tracker; fire with the ids
        the tracker quarantined as a result.
        """
        return Deferred.fromCoroutine(self._report(request))

    async def _metainfo(self, namespace: str, digest: Digest) -> MetaInfo:
        path = f"/namespace/{quote(namespace, safe='')}/blobs/{digest}/metainfo"
        started = self.clock.seconds()
        attempt = 0

        def send(tracker: str) -> Deferred[TreqResponse]:
            return self.client.get(
                f"{self.scheme}://{tracker}{path}",
                ok=(200, 202, 404, 503),
                timeout=self.timeout,
                retry=False,
            )

        while True:
            tracker, response = await self._first_answer(digest, send)
            raw = await read_body(response, MAX_METAINFO_RESPONSE)
            if response.code == 200:
                try:
                    info = MetaInfo.from_json(raw)
                except (InvalidMetaInfo, ValueError) as e:
                    raise InvalidTrackerResponse(f"{tracker}: bad metainfo: {e}") from e
                if info.digest != digest:
                    raise InvalidTrackerResponse(
                        f"{tracker}: metainfo of {info.digest}, asked for {digest}"
                    )
                return info
            if response.code == 404:
                raise MetaInfoNotFound(f"{digest} not found in namespace {namespace!r}")
            delay = self.poll.delay(attempt, self.rng)
            attempt += 1
            if self.clock.seconds() + delay - started > self.poll.give_up_after:
                raise MetaInfoTimeout(
                    f"metainfo of {digest} still not ready after "
                    f"{self.clock.seconds() - started:.0f}s ({attempt} polls)"
                )
            await deferLater(self.clock, delay)

    def metainfo(self, namespace: str, digest: Digest) -> Deferred[MetaInfo]:
        """
        The blob's metainfo, polling while the origin fetches it.

        Fails with :class:`MetaInfoNotFound` (404), :class:`MetaInfoTimeout`
        (still 202 after 15 min), :class:`TrackerUnavailable` or
        :class:`InvalidTrackerResponse`.
        """
        return Deferred.fromCoroutine(self._metainfo(namespace, digest))


@define
class UnreachableReporter:
    """
    Collects the peers of each torrent this agent could not reach and reports them.

    Called by the peer driver (:class:`~kraken.protocols.peer.PeerNode`'s
    ``unreachable``) with each failed dial or handshake; the first failure of
    a torrent starts a ``delay`` after which one report names every peer
    collected meanwhile (at most ``MAX_REPORTED``).  Origins are never
    reported: the tracker has them from the ring.  A failed report is logged
    and dropped; it never fails a download.  :meth:`stop` (when the agent
    stops) drops what is pending and cancels reports on their way.
    """

    log: ClassVar[Logger] = Logger()

    tracker: TrackerClient
    me: PeerInfo
    clock: IReactorTime
    delay: float = DEFAULT_REPORT_DELAY
    _pending: dict[InfoHash, tuple[Digest, dict[PeerID, None]]] = field(init=False, factory=dict)
    _timers: dict[InfoHash, IDelayedCall] = field(init=False, factory=dict)
    _stopped: bool = field(init=False, default=False)
    #: Reports being sent (tests wait for them).
    sending: set[Deferred[None]] = field(init=False, factory=set)

    def __call__(self, digest: Digest, infohash: InfoHash, peer: PeerInfo, reason: str) -> None:
        """``peer`` of ``infohash`` could not be reached (``reason``)."""
        if self._stopped or peer.origin or peer.peer_id == self.me.peer_id:
            return
        pending = self._pending.get(infohash)
        if pending is None:
            pending = self._pending[infohash] = (digest, {})
            self._timers[infohash] = self.clock.callLater(self.delay, self._send, infohash)
        if len(pending[1]) < MAX_REPORTED:
            pending[1][peer.peer_id] = None
        self.log.debug(
            "peer {peer} of {infohash} unreachable: {reason}",
            peer=peer.address,
            infohash=infohash,
            reason=reason,
        )

    def stop(self) -> None:
        """Send nothing more: drop pending reports, cancel those being sent."""
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._pending.clear()
        for sent in list(self.sending):
            sent.cancel()

    def _send(self, infohash: InfoHash) -> None:
        del self._timers[infohash]
        digest, failed = self._pending.pop(infohash)
        request = ReportRequest(digest, infohash, self.me, tuple(failed))
        sent: Deferred[None] = self.tracker.report(request).addCallbacks(
            lambda held: None, self._failed, errbackArgs=(infohash,)
        )
        self.sending.add(sent)
        sent.addBoth(lambda _: self.sending.discard(sent))

    def _failed(self, failure: Failure, infohash: InfoHash) -> None:
        if self._stopped:
            return
        self.log.warn(
            "could not report unreachable peers of {infohash}: {error}",
            infohash=infohash,
            error=failure.getErrorMessage(),
        )
