"""
The tracker's HTTP API (DESIGN 6): announces, metainfo, health, readiness and metrics.

Routes:

- ``POST /announce/{infohash}``: record the announcing peer, answer peers best
  first (:mod:`kraken.peers.handout`) and the announce interval.  The peer's
  address must be the one the announce came from and a possible one
  (:mod:`kraken.peers.admission`: 400 for an impossible address, 403 for
  another host's); peers in quarantine are left out of the answer;
- ``POST /report/{infohash}``: an agent's report of peers it could not reach;
  a peer reported by enough different clients is quarantined
  (:mod:`kraken.peers.quarantine`);
- ``GET /namespace/{ns}/blobs/{digest}/metainfo``: the owner origin's answer
  (200 JSON, 202 "ask again", 404), cached in-process (200 for 5 min, other
  codes 1 s) with concurrent identical requests collapsed into one origin
  request, as nginx with ``proxy_cache_lock`` did in front of the Go tracker;
  503 when no origin answers;
- ``GET /health`` (the process answers), ``GET /readiness`` (the tracker serves its own
  requests: 200 even with every origin down, when announces still work), ``GET
  /dependencies`` (whether an origin answers, JSON), ``GET /metrics`` (Prometheus text,
  with ``kraken_dependency_up``);
- ``GET /ui/``: the live swarm page (``kraken/ui``), and the JSON it polls,
  ``GET /ui/torrents.json`` and ``GET /ui/swarm/{infohash}.json``
  (:class:`~kraken.peers.swarm.SwarmView`, fed by announces).

Bad input never reaches the store: a malformed infohash or digest is a 400,
a bad announce body a 400 naming the field, a body over 64 KiB a 413.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

from attrs import define, field
from klein import Klein
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from kraken.api.swarm_page import SwarmPage
from kraken.core import Digest, InfoHash, PeerInfo
from kraken.core.names import InvalidNamespace, check_namespace
from kraken.http.dependencies import Dependencies
from kraken.http.errors import CORE_ERRORS, APIError, install_error_handler, render_error
from kraken.http.request_body import json_response, read_json
from kraken.http.server import BodyPlan, KleinRoutes, RequestHead
from kraken.peers.admission import AdmissionPolicy, AnnounceForbidden
from kraken.peers.announce import AnnounceRequest, InvalidAnnounce, ReportRequest
from kraken.peers.cache import CollapsingCache
from kraken.peers.handout import DEFAULT_HANDOUT_LIMIT, hand_out_stored
from kraken.peers.origins import IOriginCluster, MetaInfoAnswer, OriginUnavailable
from kraken.peers.quarantine import DEFAULT_QUARANTINE, DEFAULT_QUARANTINE_REPORTERS, Quarantine
from kraken.peers.store import IPeerStore, StoredPeer
from kraken.peers.swarm import SwarmView

#: Largest announce (or report) body accepted: 413 beyond, decided on the request's head.
MAX_ANNOUNCE_BODY: Final = 64 * 1024
DEFAULT_ANNOUNCE_INTERVAL: Final = 3.0
METAINFO_OK_TTL: Final = 300.0
METAINFO_OTHER_TTL: Final = 1.0
#: Seconds an announce reuses the blob's origin records before asking the origin cluster
#: (whose own caches hold locations and peer contexts for 10 s).
ORIGIN_MEMO_TTL: Final = 1.0
#: Seconds past its TTL that a memo entry still answers announces while one refresh runs in the
#: background (stale-while-revalidate), so announces never wait for an origin round trip of a
#: blob they already know the origins of.
ORIGIN_MEMO_STALE: Final = 30.0
TRACKER_ERRORS: Final = CORE_ERRORS.extended(
    {InvalidAnnounce: 400, InvalidNamespace: 400, AnnounceForbidden: 403}, daemon="tracker"
)


@define
class TrackerMetrics:
    """The tracker's Prometheus metrics, in a registry of their own (one per app)."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    announces: Counter = field(init=False)
    handed_out: Histogram = field(init=False)
    announce_seconds: Histogram = field(init=False)
    metainfo_lookups: Counter = field(init=False)
    metainfo_answers: Counter = field(init=False)
    reports: Counter = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.announces = Counter(
            "kraken_tracker_announces",
            "Announces received, by outcome (ok, invalid, refused: another host's address)",
            ["result"],
            registry=r,
        )
        self.reports = Counter(
            "kraken_tracker_unreachable_reports",
            "Peers reported unreachable by agents (reported), and peers quarantined as a result",
            ["result"],
            registry=r,
        )
        self.handed_out = Histogram(
            "kraken_tracker_peers_handed_out",
            "Peers in an announce answer (agents and origins)",
            buckets=(0, 1, 2, 5, 10, 20, 30, 40, 50, 55, 60, 100),
            registry=r,
        )
        self.announce_seconds = Histogram(
            "kraken_tracker_announce_seconds",
            "Time to answer an announce",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.metainfo_lookups = Counter(
            "kraken_tracker_metainfo_cache_lookups",
            "Metainfo cache lookups: hit, miss (asks an origin) or joined (waits for one)",
            ["kind"],
            registry=r,
        )
        self.metainfo_answers = Counter(
            "kraken_tracker_metainfo_answers",
            "Metainfo answers by HTTP status",
            ["status"],
            registry=r,
        )


@define
class TrackerAPI:
    """The tracker's Klein application; mount :meth:`resource`."""

    app: ClassVar[Klein] = Klein()
    install_error_handler(app, TRACKER_ERRORS)
    log: ClassVar[Logger] = Logger()

    peers: IPeerStore
    origins: IOriginCluster
    clock: IReactorTime
    interval_seconds: float = DEFAULT_ANNOUNCE_INTERVAL
    handout_limit: int = DEFAULT_HANDOUT_LIMIT
    metrics: TrackerMetrics = field(factory=TrackerMetrics)
    rng: random.Random = field(factory=random.Random)
    metainfo_ok_ttl: float = METAINFO_OK_TTL
    metainfo_other_ttl: float = METAINFO_OTHER_TTL
    metainfo_max_entries: int = 10000
    origin_memo_ttl: float = ORIGIN_MEMO_TTL
    origin_memo_stale: float = ORIGIN_MEMO_STALE
    admission: AdmissionPolicy = field(factory=AdmissionPolicy)
    quarantine_seconds: float = DEFAULT_QUARANTINE
    quarantine_reporters: int = DEFAULT_QUARANTINE_REPORTERS
    quarantine: Quarantine = field(init=False)
    dependencies: Dependencies = field(init=False)
    #: What the swarm page shows (fed by announces, read by ``/ui/``).
    swarm: SwarmView = field(factory=SwarmView, init=False)
    _page: SwarmPage = field(factory=SwarmPage.load, init=False)
    _metainfo: CollapsingCache[tuple[str, Digest], MetaInfoAnswer] = field(init=False)
    _origin_memo: dict[Digest, tuple[float, list[StoredPeer]]] = field(init=False, factory=dict)
    _refreshing: set[Digest] = field(init=False, factory=set)
    _answer_tail: bytes = field(init=False)
    _ok_announces: Any = field(init=False)
    _invalid_announces: Any = field(init=False)
    _refused_announces: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._answer_tail = b'],"interval_seconds":%s}' % json.dumps(self.interval_seconds).encode()
        self._ok_announces = self.metrics.announces.labels("ok")
        self._invalid_announces = self.metrics.announces.labels("invalid")
        self._refused_announces = self.metrics.announces.labels("refused")
        self.quarantine = Quarantine(
            self.clock.seconds, self.quarantine_seconds, self.quarantine_reporters
        )
        self.dependencies = Dependencies(
            (("origin", self._origin_answers),), self.metrics.registry, self.clock
        )
        self._metainfo = CollapsingCache(
            self.clock,
            self._metainfo_ttl,
            max_entries=self.metainfo_max_entries,
            observe=lambda kind: self.metrics.metainfo_lookups.labels(kind).inc(),
        )

    def _metainfo_ttl(self, answer: MetaInfoAnswer) -> float:
        return self.metainfo_ok_ttl if answer.status == 200 else self.metainfo_other_ttl

    def resource(self) -> IResource:
        """The ``twisted.web`` resource serving this API (announces bypass Klein's routing)."""
        return _Root(self, self.app.resource())

    def gate(self, checks: Sequence[Callable[[RequestHead], None]] = ()) -> KleinRoutes:
        """What a :class:`~kraken.http.server.KrakenSite` asks on each head: an announce or
        a report body is at most :data:`MAX_ANNOUNCE_BODY` (413 before it is read), any
        other body 1 KiB; ``checks`` (the client-certificate check) run first."""

        def control(head: RequestHead, args: Mapping[str, Any]) -> BodyPlan:
            return BodyPlan(MAX_ANNOUNCE_BODY)

        return KleinRoutes(
            self.app, {"announce": control, "report": control}, default_limit=1024, checks=checks
        )

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """The process is up."""
        return b"OK\n"

    @app.route("/readiness", methods=["GET"])
    def readiness(self, request: IRequest) -> bytes:
        """Ready when serving: announces need no origin (``/dependencies`` tells of those)."""
        return b"OK\n"

    @app.route("/dependencies", methods=["GET"])
    async def dependency_states(self, request: IRequest) -> bytes:
        """Whether an origin answers its health check, as JSON."""
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        return await self.dependencies.render()

    async def _origin_answers_now(self) -> None:
        if not await self.origins.ready():
            raise RuntimeError("no origin answers its health check")

    def _origin_answers(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._origin_answers_now())

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        """Prometheus text exposition of :class:`TrackerMetrics`."""
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))  # type: ignore[no-untyped-call]
        return generate_latest(self.metrics.registry)

    @app.route("/ui", methods=["GET"])
    def swarm_page_root(self, request: IRequest) -> bytes:
        """Redirect to ``/ui/`` (the page's relative links need the slash)."""
        request.redirect(b"/ui/")  # type: ignore[no-untyped-call]
        return b""

    @app.route("/ui/", methods=["GET"])
    @app.route("/ui/<name>", methods=["GET"])
    def swarm_page(self, request: IRequest, name: str = "index.html") -> bytes:
        """The live swarm page and its assets (package data: no CDN)."""
        if name == "torrents.json":
            return _json(request, self.swarm.torrents(self.clock.seconds()))
        return self._page.serve(request, name)

    @app.route("/ui/swarm/<name>", methods=["GET"])
    def swarm_state(self, request: IRequest, name: str) -> bytes:
        """``/ui/swarm/<infohash>.json``: one torrent's peers, pieces and rate."""
        if not name.endswith(".json"):
            raise APIError(404, "not found")
        h = InfoHash.parse(name[: -len(".json")])
        digest = self.swarm.digest_of(h)
        if digest is None:
            raise APIError(404, f"no recent announce of torrent {h}")
        memo = self._origin_memo.get(digest)
        origins = [PeerInfo.from_dict(json.loads(o.json)) for o in memo[1]] if memo else []
        view = self.swarm.snapshot(h, origins, self.clock.seconds())
        assert view is not None, "digest_of found it"
        return _json(request, view)

    @app.route("/announce/<infohash>", methods=["POST"])
    def announce(self, request: IRequest, infohash: str) -> bytes | Deferred[bytes]:
        """
        Record the announcing peer; answer peers best first and the interval.

        Synchronous (no Deferred) when the store answers at once (memory) and
        the blob's origins are in the memo; :meth:`resource` serves this route
        without Klein (see :class:`_Root`).
        """
        started = time.perf_counter()
        try:
            ih = InfoHash.parse(infohash)
            body = read_json(request, MAX_ANNOUNCE_BODY)
            req = AnnounceRequest.from_dict(body, ih)
            peer = self._admit(req.peer, request)
        except AnnounceForbidden:
            self._refused_announces.inc()
            raise
        except Exception:
            self._invalid_announces.inc()
            raise
        if peer is not req.peer:
            req = AnnounceRequest(req.digest, req.infohash, peer, req.progress)
        self.swarm.record(req, self.clock.seconds())
        # One more than the limit, so that dropping an origin duplicate still leaves the limit.
        try:
            stored = self.peers.announce(ih, req.peer, self.handout_limit + 1)
        except Exception:
            stored = fail()
        box: list[list[StoredPeer]] = []
        stored.addErrback(self._store_failed, req, ih).addCallback(box.append)
        origins = self._origins_of(req.digest)
        if not isinstance(origins, Deferred):
            if box:
                return self._answer(request, req, box[0], origins, started)
            # The common asynchronous case (Redis): no coroutine, one callback.
            known = origins
            return stored.addCallback(lambda _: self._answer(request, req, box[0], known, started))
        return Deferred.fromCoroutine(
            self._announce_later(request, req, stored, box=box, origins=origins, started=started)
        )

    def _admit(self, peer: PeerInfo, request: IRequest) -> PeerInfo:
        """``peer`` as recorded, if ``request`` may speak for it (:mod:`kraken.peers.admission`)."""
        client = request.getClientAddress()  # type: ignore[no-untyped-call]
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        return self.admission.check(
            peer, getattr(client, "host", None), b",".join(forwarded) if forwarded else None
        )

    async def _announce_later(
        self,
        request: IRequest,
        req: AnnounceRequest,
        stored: Deferred[Any],
        *,
        box: list[list[StoredPeer]],
        origins: Deferred[list[StoredPeer]],
        started: float,
    ) -> bytes:
        await stored
        return self._answer(request, req, box[0], await origins, started)

    def _answer(
        self,
        request: IRequest,
        req: AnnounceRequest,
        agents: list[StoredPeer],
        origins: list[StoredPeer],
        started: float,
    ) -> bytes:
        held = self.quarantine.held(req.infohash)
        if held is not None:
            agents = [a for a in agents if a.peer_id not in held]
        peers = hand_out_stored(req.peer, agents, origins, self.handout_limit, self.rng)
        self._ok_announces.inc()
        self.metrics.handed_out.observe(len(peers))
        self.metrics.announce_seconds.observe(time.perf_counter() - started)
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        # AnnounceResponse.to_dict() as compact JSON, joined from the records' cached JSON.
        return b"".join((b'{"peers":[', b",".join([p.json for p in peers]), self._answer_tail))

    def _store_failed(self, failure: Failure, req: AnnounceRequest, ih: InfoHash) -> list[Any]:
        self.log.failure(
            "could not store the announce of {peer} for {infohash} or read its peers",
            failure,
            peer=req.peer.peer_id,
            infohash=ih,
        )
        return []

    def _origins_of(self, digest: Digest) -> list[StoredPeer] | Deferred[list[StoredPeer]]:
        """
        The blob's origins as records: from the memo (refreshed in the background once
        stale), else a Deferred asking the cluster.
        """
        memo = self._origin_memo.get(digest)
        if memo is not None:
            now = self.clock.seconds()
            if memo[0] > now:
                return memo[1]
            if memo[0] + self.origin_memo_stale > now:
                if digest not in self._refreshing:
                    self._refreshing.add(digest)
                    refresh = Deferred.fromCoroutine(self._fetch_origins(digest))
                    refresh.addBoth(lambda _: self._refreshing.discard(digest))
                return memo[1]
        return Deferred.fromCoroutine(self._fetch_origins(digest))

    async def _fetch_origins(self, digest: Digest) -> list[StoredPeer]:
        try:
            found = await self.origins.origin_peers(digest)
        except OriginUnavailable as e:
            self.log.warn(
                "announce of {digest} without origins: {error}", digest=digest, error=str(e)
            )
            return []
        except Exception:
            self.log.failure("could not find the origins of {digest}", digest=digest)
            return []
        records = [
            StoredPeer.of(PeerInfo(p.peer_id, p.ip, p.port, origin=True, complete=True))
            for p in found
        ]
        if len(self._origin_memo) >= self.metainfo_max_entries:
            self._origin_memo.clear()
        self._origin_memo[digest] = (self.clock.seconds() + self.origin_memo_ttl, records)
        return records

    @app.route("/report/<infohash>", methods=["POST"])
    def report(self, request: IRequest, infohash: str) -> bytes:
        """
        Record an agent's report of peers it could not reach; answer those now quarantined.

        The reporter's own address is checked as an announce's is; one report counts
        once per client (:meth:`AdmissionPolicy.identity`) and names only peers of the
        torrent in the URL.
        """
        ih = InfoHash.parse(infohash)
        body = read_json(request, MAX_ANNOUNCE_BODY)
        req = ReportRequest.from_dict(body, ih)
        reporter = self._admit(req.peer, request)
        failed = [p.hex for p in req.failed if p != reporter.peer_id]
        held = self.quarantine.report(ih, failed, self.admission.identity(reporter))
        self.metrics.reports.labels("reported").inc(len(failed))
        if held:
            self.metrics.reports.labels("quarantined").inc(len(held))
            self.log.info(
                "quarantined {peers} of {infohash} for {seconds:g}s: unreachable for "
                "{reporters} clients, the last {reporter}",
                peers=held,
                infohash=ih,
                seconds=self.quarantine.duration,
                reporters=self.quarantine.reporters,
                reporter=reporter.address,
            )
        return json_response(request, {"quarantined": held})

    @app.route("/namespace/<path:namespace>/blobs/<digest>/metainfo", methods=["GET"])
    async def metainfo(self, request: IRequest, namespace: str, digest: str) -> bytes:
        """The owner origin's metainfo answer, cached and collapsed."""
        d = Digest.parse(digest)
        ns = check_namespace(namespace)  # Klein has already decoded the path once
        answer = await self._metainfo.get((ns, d), lambda: self._ask_origins(ns, d))
        self.metrics.metainfo_answers.labels(str(answer.status)).inc()
        if answer.status == 200:
            request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
            return answer.body
        if answer.status == 202:
            request.setResponseCode(202)  # type: ignore[no-untyped-call]
            return b""
        if answer.status == 404:
            raise APIError(404, f"blob {d} not found in namespace {ns!r}")
        raise APIError(answer.status, answer.body.decode("utf-8", "replace"))

    def _ask_origins(self, ns: str, d: Digest) -> Deferred[MetaInfoAnswer]:
        def unavailable(failure: Failure) -> MetaInfoAnswer:
            failure.trap(OriginUnavailable)  # type: ignore[no-untyped-call]
            self.log.warn(
                "metainfo of {digest}: {error}", digest=d, error=failure.getErrorMessage()
            )
            return MetaInfoAnswer(503, f"no origin answered for {d}".encode())

        return self.origins.metainfo(ns, d).addErrback(unavailable)


def _json(request: IRequest, value: object) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
    request.setHeader(b"Cache-Control", b"no-store")  # type: ignore[no-untyped-call]
    return json.dumps(value).encode()


class _Root(Resource):
    """
    The API's root resource: ``POST /announce/{infohash}`` straight to
    :meth:`TrackerAPI.announce`, everything else to the Klein application.

    Skipping Klein's and werkzeug's routing, and the coroutine machinery, for
    the one route that carries the load roughly halves the tracker's CPU per
    announce.  Answers are the same: errors go through the same
    :func:`render_error` mapping as the Klein routes.
    """

    isLeaf = True

    def __init__(self, api: TrackerAPI, app: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api, self.app = api, app

    def render(self, request: Any) -> bytes | int:
        """Serve an announce, or hand the request to Klein."""
        path: bytes = request.path
        if (
            request.method == b"POST"
            and path.startswith(b"/announce/")
            and path.count(b"/") == 2
            and b"%" not in path
        ):
            try:
                result = self.api.announce(request, path[10:].decode("latin-1"))
            except Exception:
                failure = Failure()  # type: ignore[no-untyped-call]
                return render_error(request, failure, errors=TRACKER_ERRORS)
            if isinstance(result, bytes):
                return result
            finished: list[bool] = []
            request.notifyFinish().addBoth(finished.append)
            result.addErrback(lambda f: render_error(request, f, errors=TRACKER_ERRORS))
            result.addCallback(self._write, request, finished)
            return NOT_DONE_YET
        body: bytes | int = self.app.render(request)  # type: ignore[no-untyped-call]
        return body

    @staticmethod
    def _write(body: bytes, request: Any, finished: list[bool]) -> None:
        if finished:
            return  # the client went away
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()
