"""
The tracker's Klein API through StubTreq: announces, metainfo, health, readiness, metrics, errors.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from prometheus_client import generate_latest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from kraken.api.tracker import MAX_ANNOUNCE_BODY, InvalidNamespace, TrackerAPI, check_namespace
from kraken.core import Bitfield, Digest, InfoHash, MetaInfo, PeerID, PeerInfo
from kraken.core.address import parse_networks
from kraken.peers.admission import AdmissionPolicy
from kraken.peers.announce import AnnounceProgress
from kraken.peers.origins import IOriginCluster, MetaInfoAnswer, OriginUnavailable
from kraken.peers.store import MemoryPeerStore, StoredPeer

BLOB = b"hello kraken" * 1000
INFO = MetaInfo.of_bytes(BLOB, 4096)
DIGEST = INFO.digest
IH = INFO.infohash
ORIGIN = PeerInfo(PeerID.from_address("10.1.0.1", 15001), "10.1.0.1", 15001, True, True)


@implementer(IOriginCluster)
class FakeOrigins:
    """An IOriginCluster whose answers the test controls, counting metainfo calls."""

    def __init__(self) -> None:
        self.peers: list[PeerInfo] | Exception = [ORIGIN]
        self.origin_calls = 0
        self.hold = False
        self.held: list[Deferred[list[PeerInfo]]] = []
        self.is_ready = True
        self.metainfo_calls: list[tuple[str, Digest]] = []
        self.answers: list[Deferred[MetaInfoAnswer]] = []

    def origin_peers(self, digest: Digest) -> Deferred[list[PeerInfo]]:
        self.origin_calls += 1
        if self.hold:
            held: Deferred[list[PeerInfo]] = Deferred()
            self.held.append(held)
            return held
        if isinstance(self.peers, Exception):
            return fail(self.peers)
        return succeed(list(self.peers))

    def metainfo(self, namespace: str, digest: Digest) -> Deferred[MetaInfoAnswer]:
        self.metainfo_calls.append((namespace, digest))
        d: Deferred[MetaInfoAnswer] = Deferred()
        self.answers.append(d)
        return d

    def ready(self) -> Deferred[bool]:
        return succeed(self.is_ready)


class BrokenStore:
    """A peer store whose every call fails (Redis down)."""

    def update_peer(self, infohash: Any, peer: Any) -> Deferred[None]:
        return fail(ConnectionError("redis is down"))

    def get_peers(self, infohash: Any, limit: int) -> Deferred[list[PeerInfo]]:
        return fail(ConnectionError("redis is down"))

    def announce(self, infohash: Any, peer: Any, limit: int) -> Deferred[list[Any]]:
        return fail(ConnectionError("redis is down"))


#: StubTreq's requests come from 127.0.0.1: here a trusted forwarder, which vouches for the
#: address in the body (the agents at 10.0.0.1), so these tests see the handout alone.
VOUCHED = AdmissionPolicy(parse_networks(["127.0.0.1/32"]))


def agent(n: int, complete: bool = False) -> PeerInfo:
    """Agent number ``n``."""
    return PeerInfo(PeerID(f"{n:040x}"), "10.0.0.1", 16001 + n, complete=complete)


def announce_body(peer: PeerInfo, digest: Digest = DIGEST, ih: InfoHash = IH) -> dict[str, Any]:
    """A valid announce body."""
    return {"name": digest.hex, "digest": str(digest), "infohash": ih.hex, "peer": peer.to_dict()}


class TrackerAPITestCase(SynchronousTestCase):
    """Shared set-up: an API over a memory store and fake origins."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryPeerStore(self.clock)
        self.origins = FakeOrigins()
        self.api = TrackerAPI(
            self.store, self.origins, self.clock, interval_seconds=3, admission=VOUCHED
        )
        self.treq = StubTreq(self.api.resource())

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, Any]:
        """Send a request, flush, return (status, body, headers)."""
        d = self.treq.request(method, "http://tracker" + path, **kwargs)
        self.treq.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, body, response.headers

    def announce(self, body: Any, ih: str = IH.hex) -> tuple[int, bytes]:
        """POST an announce (a dict is sent as JSON, bytes as they are)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        code, content, _ = self.request("POST", f"/announce/{ih}", data=data)
        return code, content

    def peers_of(self, peer: PeerInfo) -> list[PeerInfo]:
        """Announce ``peer`` and return the peers handed out (asserting a 200)."""
        code, content = self.announce(announce_body(peer))
        self.assertEqual(code, 200, content)
        answer = json.loads(content)
        self.assertEqual(answer["interval_seconds"], 3)
        return [PeerInfo.from_dict(p) for p in answer["peers"]]


class AnnounceTests(TrackerAPITestCase):
    """POST /announce/{infohash}."""

    def test_first_announce_gets_origins(self) -> None:
        """The first agent of a torrent is handed the origins, and is stored."""
        self.assertEqual(self.peers_of(agent(1)), [ORIGIN])
        self.assertEqual(self.successResultOf(self.store.get_peers(IH, 9)), [agent(1)])

    def test_order_and_no_self(self) -> None:
        """Complete agents, then origins, then incomplete agents; never the requester."""
        self.peers_of(agent(1, complete=True))
        self.peers_of(agent(2))
        got = self.peers_of(agent(3))
        self.assertEqual(got, [agent(1, complete=True), ORIGIN, agent(2)])

    def test_complete_requester_gets_nobody(self) -> None:
        """A complete agent's announce is recorded and answered with an empty list."""
        self.peers_of(agent(2))
        self.assertEqual(self.peers_of(agent(1, complete=True)), [])
        self.assertIn(agent(1, complete=True), self.successResultOf(self.store.get_peers(IH, 9)))

    def test_limit_fifty(self) -> None:
        """With 80 agents stored, 50 agents plus the origin are handed out."""
        for n in range(80):
            self.successResultOf(self.store.update_peer(IH, agent(n)))
        got = self.peers_of(agent(100))
        self.assertEqual(len(got), 51)
        self.assertEqual(sum(p.origin for p in got), 1)
        self.assertNotIn(agent(100).peer_id, [p.peer_id for p in got])

    def test_limit_with_requester_in_sample(self) -> None:
        """With exactly 51 agents including the requester, the other 50 are all handed out."""
        for n in range(51):
            self.successResultOf(self.store.update_peer(IH, agent(n)))
        got = self.peers_of(agent(0))
        self.assertEqual(len([p for p in got if not p.origin]), 50)

    def test_origins_down(self) -> None:
        """When no origin answers, the announce still answers with agents."""
        self.origins.peers = OriginUnavailable("all down")
        self.peers_of(agent(1))
        self.assertEqual(self.peers_of(agent(2)), [agent(1)])

    def test_store_down(self) -> None:
        """When the store fails, the announce still answers with the origins."""
        api = TrackerAPI(BrokenStore(), self.origins, self.clock, admission=VOUCHED)  # type: ignore[arg-type]
        self.treq = StubTreq(api.resource())
        self.assertEqual(self.peers_of(agent(1)), [ORIGIN])
        # One failure logged: the store is asked once per announce (update and read together).
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_metrics_count_announces(self) -> None:
        """/metrics reports ok and invalid announces and handout sizes."""
        self.peers_of(agent(1))
        self.announce(b"{")
        code, body, headers = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        self.assertIn(b'kraken_tracker_announces_total{result="ok"} 1.0', body)
        self.assertIn(b'kraken_tracker_announces_total{result="invalid"} 1.0', body)
        self.assertIn(b"kraken_tracker_peers_handed_out_count 1.0", body)

    def test_get_not_allowed(self) -> None:
        """GET on the announce route is a 405."""
        code, _, _ = self.request("GET", f"/announce/{IH.hex}")
        self.assertEqual(code, 405)


class SlowStore:
    """A memory store whose announce answers only when the test fires it (a Redis round trip)."""

    def __init__(self, store: MemoryPeerStore) -> None:
        self.store = store
        self.waiting: list[tuple[Deferred[list[StoredPeer]], Deferred[list[StoredPeer]]]] = []

    def update_peer(self, infohash: InfoHash, peer: PeerInfo) -> Deferred[None]:
        return self.store.update_peer(infohash, peer)

    def get_peers(self, infohash: InfoHash, limit: int) -> Deferred[list[PeerInfo]]:
        return self.store.get_peers(infohash, limit)

    def announce(
        self, infohash: InfoHash, peer: PeerInfo, limit: int
    ) -> Deferred[list[StoredPeer]]:
        later: Deferred[list[StoredPeer]] = Deferred()
        self.waiting.append((self.store.announce(infohash, peer, limit), later))
        return later

    def release(self) -> None:
        """Answer every announce waiting."""
        waiting, self.waiting = self.waiting, []
        for done, later in waiting:
            done.chainDeferred(later)


class AnnouncePathTests(TrackerAPITestCase):
    """The lean announce resource: asynchronous stores, the origin memo, Klein parity."""

    def test_asynchronous_store(self) -> None:
        """With a store that answers later, the response waits for it and has a Content-Length."""
        slow = SlowStore(self.store)
        api = TrackerAPI(slow, self.origins, self.clock, interval_seconds=3, admission=VOUCHED)  # type: ignore[arg-type]
        treq = StubTreq(api.resource())
        self.successResultOf(self.store.update_peer(IH, agent(1)))
        d = treq.post(f"http://tracker/announce/{IH.hex}", data=json.dumps(announce_body(agent(2))))
        treq.flush()
        self.assertNoResult(d)
        slow.release()
        treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = self.successResultOf(response.content())
        self.assertEqual(response.length, len(body))  # framed by Content-Length, not chunked
        peers = [PeerInfo.from_dict(p) for p in json.loads(body)["peers"]]
        self.assertEqual(peers, [ORIGIN, agent(1)])

    def test_client_gone_before_answer(self) -> None:
        """A client that disconnects before a slow store answers costs nothing but the answer."""
        slow = SlowStore(self.store)
        api = TrackerAPI(slow, self.origins, self.clock, admission=VOUCHED)  # type: ignore[arg-type]
        request = DummyRequest([b"announce", IH.hex.encode()])
        request.method = b"POST"
        request.path = b"/announce/" + IH.hex.encode()
        request.content = BytesIO(json.dumps(announce_body(agent(1))).encode())
        self.assertEqual(api.resource().render(request), NOT_DONE_YET)
        request.processingFailed(Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
        slow.release()
        self.assertEqual(request.written, [])
        self.assertEqual(request.finished, 0)

    def test_origin_memo(self) -> None:
        """Within the memo TTL an announce reuses the blob's origins; after it, asks again."""
        self.peers_of(agent(1))
        self.peers_of(agent(2))
        self.assertEqual(self.origins.origin_calls, 1)
        self.clock.advance(1.0)
        self.assertEqual(self.peers_of(agent(3))[0], ORIGIN)
        self.assertEqual(self.origins.origin_calls, 2)

    def test_stale_origins_while_refreshing(self) -> None:
        """
        Once the memo is stale, announces answer at once with the old origins while one
        refresh runs; its answer is used next; past the stale window announces wait again.
        """
        self.peers_of(agent(1))
        self.clock.advance(1.0)
        moved = PeerInfo(PeerID.from_address("10.1.0.2", 15001), "10.1.0.2", 15001, True, True)
        self.origins.hold = True
        self.assertEqual(self.peers_of(agent(2))[0], ORIGIN)
        self.assertEqual(self.peers_of(agent(3))[0], ORIGIN)
        self.assertEqual(self.origins.origin_calls, 2)  # one refresh, not one per announce
        self.origins.held.pop().callback([moved])
        self.assertEqual(self.peers_of(agent(4))[0], moved)
        self.clock.advance(1.0 + 30.0)
        d = self.treq.post(
            f"http://tracker/announce/{IH.hex}", data=json.dumps(announce_body(agent(5)))
        )
        self.treq.flush()
        self.assertNoResult(d)
        self.origins.held.pop().callback([ORIGIN])
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_failed_origins_not_memoised(self) -> None:
        """An announce without origins (none answered) asks again on the next announce."""
        self.origins.peers = OriginUnavailable("all down")
        self.assertEqual(self.peers_of(agent(1)), [])
        self.origins.peers = [ORIGIN]
        self.assertEqual(self.peers_of(agent(2)), [ORIGIN, agent(1)])

    def test_klein_route_same_answer(self) -> None:
        """The Klein route (the app's own resource) answers announces exactly as the lean path."""
        klein = StubTreq(self.api.app.resource())
        self.peers_of(agent(1, complete=True))
        body = json.dumps(announce_body(agent(2))).encode()
        d = klein.post(f"http://tracker/announce/{IH.hex}", data=body)
        klein.flush()
        response = self.successResultOf(d)
        answer = json.loads(self.successResultOf(response.content()))
        self.assertEqual(answer["interval_seconds"], 3)
        self.assertEqual(
            [PeerInfo.from_dict(p) for p in answer["peers"]], [agent(1, complete=True), ORIGIN]
        )
        _, content = self.announce(announce_body(agent(3)))
        self.assertEqual(set(json.loads(content)), {"peers", "interval_seconds"})

    def test_other_paths_go_to_klein(self) -> None:
        """Only POST /announce/<one segment> takes the lean path; deeper paths are Klein's 404."""
        code, _, _ = self.request("POST", f"/announce/{IH.hex}/more", data=b"{}")
        self.assertEqual(code, 404)


class BadAnnounceTests(TrackerAPITestCase):
    """Bad announces get a 400 naming the field (413 when too big) and store nothing."""

    def assertRejected(self, body: Any, status: int, mentions: str, ih: str = IH.hex) -> None:
        """``body`` is rejected with ``status`` and a message containing ``mentions``."""
        code, content = self.announce(body, ih)
        self.assertEqual(code, status, content)
        self.assertIn(mentions, content.decode())
        self.assertEqual(self.store.torrent_count(), 0)

    def with_peer(self, **changes: Any) -> dict[str, Any]:
        """A valid body with fields of ``peer`` replaced (None deletes)."""
        body = announce_body(agent(1))
        for key, value in changes.items():
            if value is None:
                del body["peer"][key]
            else:
                body["peer"][key] = value
        return body

    def test_bad_infohash_in_url(self) -> None:
        """A URL infohash that is not 64 lowercase hex is a 400."""
        self.assertRejected(announce_body(agent(1)), 400, "infohash", ih="xyz")
        self.assertRejected(announce_body(agent(1)), 400, "infohash", ih=IH.hex.upper())

    def test_infohash_mismatch(self) -> None:
        """A body infohash different from the URL's is a 400 naming infohash."""
        self.assertRejected(announce_body(agent(1)), 400, "infohash", ih="c" * 64)

    def test_bad_infohash_in_body(self) -> None:
        """A body infohash that is not a string, or not an infohash, is a 400 naming it,
        as a bad digest is (one parser reads both)."""
        for bad in (42, "sha256:" + IH.hex, "xyz"):
            body = announce_body(agent(1))
            body["infohash"] = bad
            self.assertRejected(body, 400, "infohash: ")

    def test_bad_json(self) -> None:
        """A body that is not JSON, or not an object, is a 400."""
        self.assertRejected(b"{not json", 400, "JSON")
        self.assertRejected(b"\xff\xfe", 400, "JSON")
        self.assertRejected([1, 2], 400, "body")

    def test_deeply_nested_json(self) -> None:
        """60 KB of ``[`` (past the parser's recursion limit) is a 400, not a 500."""
        self.assertRejected(b"[" * 60_000, 400, "nested too deeply")

    def test_bad_digest(self) -> None:
        """A malformed digest or a name that does not match it is a 400 naming the field."""
        body = announce_body(agent(1))
        body["digest"] = "sha256:1234"
        self.assertRejected(body, 400, "digest")
        body = announce_body(agent(1))
        body["digest"] = 42
        self.assertRejected(body, 400, "digest")
        body = announce_body(agent(1))
        body["name"] = "0" * 64
        self.assertRejected(body, 400, "name")

    def test_missing_fields(self) -> None:
        """Each missing required field is named."""
        for key in ("digest", "infohash", "peer"):
            body = announce_body(agent(1))
            del body[key]
            self.assertRejected(body, 400, f"{key}: missing")
        for key in ("peer_id", "ip", "port"):
            self.assertRejected(self.with_peer(**{key: None}), 400, f"peer.{key}: missing")

    def test_wrong_types(self) -> None:
        """Wrong JSON types in the peer are a 400 naming the field."""
        self.assertRejected(self.with_peer(port="16001"), 400, "peer.port")
        self.assertRejected(self.with_peer(port=True), 400, "peer.port")
        self.assertRejected(self.with_peer(complete="yes"), 400, "peer.complete")
        self.assertRejected(self.with_peer(peer_id="zz"), 400, "peer.peer_id")
        body = announce_body(agent(1))
        body["peer"] = "me"
        self.assertRejected(body, 400, "peer")

    def test_port_out_of_range(self) -> None:
        """Ports outside 1..65535 are a 400 naming peer.port."""
        self.assertRejected(self.with_peer(port=0), 400, "peer.port")
        self.assertRejected(self.with_peer(port=65536), 400, "peer.port")

    def test_ip_not_an_address(self) -> None:
        """An ip that is not an IP address (e.g. a host name) is a 400 naming peer.ip."""
        self.assertRejected(self.with_peer(ip="example.com"), 400, "peer.ip")
        self.assertRejected(self.with_peer(ip="10.0.0.256"), 400, "peer.ip")

    def test_too_large(self) -> None:
        """A body over 64 KiB is a 413, even if it is otherwise valid JSON."""
        body = announce_body(agent(1))
        body["padding"] = "x" * MAX_ANNOUNCE_BODY
        self.assertRejected(body, 413, "limit")

    def test_just_under_limit_accepted(self) -> None:
        """A valid body just under 64 KiB is accepted (the limit is not off by much)."""
        body = announce_body(agent(1))
        body["padding"] = ""
        size = len(json.dumps(body).encode())
        body["padding"] = "x" * (MAX_ANNOUNCE_BODY - size)
        self.assertEqual(len(json.dumps(body).encode()), MAX_ANNOUNCE_BODY)
        code, content = self.announce(body)
        self.assertEqual(code, 200, content)


class MetaInfoTests(TrackerAPITestCase):
    """GET /namespace/{ns}/blobs/{digest}/metainfo."""

    path = f"/namespace/library%2Fubuntu/blobs/{DIGEST}/metainfo"

    def get(self, path: str | None = None) -> Deferred[Any]:
        """Start a GET without waiting for it."""
        return self.treq.get("http://tracker" + (path or self.path))

    def answer(self, answer: MetaInfoAnswer, index: int = -1) -> None:
        """Fire the fake origin's pending metainfo answer."""
        self.origins.answers[index].callback(answer)
        self.treq.flush()

    def result(self, d: Deferred[Any]) -> tuple[int, bytes]:
        """Status and body of a finished request."""
        self.treq.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content())

    def test_ok_passed_through_and_cached(self) -> None:
        """A 200 is passed through, served from cache for 5 min, then asked again."""
        d = self.get()
        self.assertNoResult(d)
        self.assertEqual(self.origins.metainfo_calls, [("library/ubuntu", DIGEST)])
        self.answer(MetaInfoAnswer(200, INFO.to_json()))
        code, body = self.result(d)
        self.assertEqual((code, MetaInfo.from_json(body)), (200, INFO))
        self.clock.advance(299)
        self.assertEqual(self.result(self.get())[0], 200)
        self.assertEqual(len(self.origins.metainfo_calls), 1)
        self.clock.advance(1)
        self.assertNoResult(self.get())
        self.assertEqual(len(self.origins.metainfo_calls), 2)

    def test_accepted_cached_one_second(self) -> None:
        """A 202 is passed through with an empty body and cached for 1 s only."""
        d = self.get()
        self.answer(MetaInfoAnswer(202))
        self.assertEqual(self.result(d), (202, b""))
        self.assertEqual(self.result(self.get()), (202, b""))
        self.assertEqual(len(self.origins.metainfo_calls), 1)
        self.clock.advance(1)
        self.assertNoResult(self.get())
        self.assertEqual(len(self.origins.metainfo_calls), 2)

    def test_not_found(self) -> None:
        """A 404 from the origin is a 404 naming the blob."""
        d = self.get()
        self.answer(MetaInfoAnswer(404))
        code, body = self.result(d)
        self.assertEqual(code, 404)
        self.assertIn(str(DIGEST), body.decode())

    def test_no_origin(self) -> None:
        """When no origin answers, the tracker answers 503, and asks again after 1 s."""
        d = self.get()
        self.origins.answers[0].errback(OriginUnavailable("all refused"))
        self.assertEqual(self.result(d)[0], 503)
        self.assertEqual(self.result(self.get())[0], 503)
        self.assertEqual(len(self.origins.metainfo_calls), 1)
        self.clock.advance(1)
        self.get()
        self.assertEqual(len(self.origins.metainfo_calls), 2)

    def test_collapsing(self) -> None:
        """100 concurrent identical requests cost one origin request and all get the answer."""
        pending = [self.get() for _ in range(100)]
        for d in pending:
            self.assertNoResult(d)
        self.assertEqual(len(self.origins.metainfo_calls), 1)
        self.answer(MetaInfoAnswer(200, INFO.to_json()))
        for d in pending:
            self.assertEqual(self.result(d), (200, INFO.to_json()))
        _, body, _ = self.request("GET", "/metrics")
        self.assertIn(b'kraken_tracker_metainfo_cache_lookups_total{kind="joined"} 99.0', body)
        self.assertIn(b'kraken_tracker_metainfo_cache_lookups_total{kind="miss"} 1.0', body)

    def test_different_keys_not_collapsed(self) -> None:
        """Requests for another namespace or digest are separate origin requests."""
        self.get()
        self.get(f"/namespace/other/blobs/{DIGEST}/metainfo")
        self.get(f"/namespace/library%2Fubuntu/blobs/sha256:{'0' * 64}/metainfo")
        self.assertEqual(len(self.origins.metainfo_calls), 3)

    def test_bad_digest(self) -> None:
        """A malformed digest is a 400 and never reaches an origin."""
        for bad in ("sha256:abc", "md5:" + "0" * 32, "0" * 64, "sha256:" + "A" * 64):
            code, body, _ = self.request("GET", f"/namespace/ns/blobs/{bad}/metainfo")
            self.assertEqual(code, 400, bad)
            self.assertIn("digest", body.decode())
        self.assertEqual(self.origins.metainfo_calls, [])

    def test_bad_namespace(self) -> None:
        """A namespace with '..' components is a 400 naming it."""
        code, body, _ = self.request("GET", f"/namespace/a%2F..%2Fb/blobs/{DIGEST}/metainfo")
        self.assertEqual(code, 400)
        self.assertIn("namespace", body.decode())
        self.assertEqual(self.origins.metainfo_calls, [])

    def test_path_decoded_once(self) -> None:
        """An escaped '%' (a%252Fb) reaches the origins as the namespace a%2Fb, never a/b."""
        self.assertNoResult(self.get(f"/namespace/a%252Fb/blobs/{DIGEST}/metainfo"))
        self.assertEqual(self.origins.metainfo_calls, [("a%2Fb", DIGEST)])

    def test_check_namespace(self) -> None:
        """check_namespace accepts repository names and rejects traversal and control bytes."""
        self.assertEqual(check_namespace("library/ubuntu"), "library/ubuntu")
        for bad in ("", "..", "a/../b", "/abs", "a//b", "a\nb", "a b", "caf\u00e9", "x" * 513):
            self.assertRaises(InvalidNamespace, check_namespace, bad)


class HealthTests(TrackerAPITestCase):
    """GET /health and /readiness."""

    def test_health(self) -> None:
        """/health answers 200 whatever the origins do."""
        self.origins.is_ready = False
        self.assertEqual(self.request("GET", "/health")[0], 200)

    def test_readiness_without_origins(self) -> None:
        """With no origin answering the tracker stays ready (announces work); it says so apart.

        ``/dependencies`` names the origin as down with the reason, and the
        ``kraken_dependency_up`` gauge drops to 0: before this, one origin down made every
        tracker "not ready" and Kubernetes would have taken them all out of service.
        """
        self.assertEqual(self.request("GET", "/readiness")[0], 200)
        status, body, _ = self.request("GET", "/dependencies")
        self.assertEqual(json.loads(body)["dependencies"]["origin"], {"up": True, "reason": None})
        self.origins.is_ready = False
        self.assertEqual(self.request("GET", "/readiness")[0], 200)
        self.assertEqual(self.announce(announce_body(agent(1)))[0], 200)
        status, body, headers = self.request("GET", "/dependencies")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(
            json.loads(body)["dependencies"]["origin"],
            {"up": False, "reason": "no origin answers its health check"},
        )
        _, metrics, _ = self.request("GET", "/metrics")
        self.assertIn(b'kraken_dependency_up{dependency="origin"} 0.0', metrics)

    def test_unknown_route(self) -> None:
        """An unknown path is a 404."""
        self.assertEqual(self.request("GET", "/nope")[0], 404)

    def test_registries_are_per_app(self) -> None:
        """Two apps in one process keep separate metrics (no global registry clash)."""
        other = TrackerAPI(self.store, self.origins, self.clock)
        self.assertIsNot(other.metrics.registry, self.api.metrics.registry)


class SwarmPageTests(TrackerAPITestCase):
    """``/ui/``: the live swarm page and the JSON it polls."""

    def test_page_assets(self) -> None:
        """The page and its script and style come from the package, with their types."""
        for path, kind, text in (
            ("/ui/", b"text/html; charset=utf-8", b"<title>Kraken swarm</title>"),
            ("/ui/swarm.js", b"text/javascript; charset=utf-8", b"swarm/${state.selected}.json"),
            ("/ui/swarm.css", b"text/css; charset=utf-8", b".peer.origin"),
        ):
            status, body, headers = self.request("GET", path)
            self.assertEqual(status, 200, path)
            self.assertEqual(headers.getRawHeaders(b"content-type"), [kind])
            self.assertIn(text, body)
            self.assertNotIn(b"https://", body, "no CDN: every asset is served here")
        self.assertEqual(self.request("GET", "/ui/other.js")[0], 404)
        self.assertEqual(self.request("GET", "/ui", allow_redirects=False)[0], 302)

    def test_announces_feed_the_page(self) -> None:
        """An announce's progress shows in the torrent list and the swarm JSON, with origins."""
        self.assertEqual(json.loads(self.request("GET", "/ui/torrents.json")[1]), [])
        body = announce_body(agent(1))
        held = Bitfield.of(INFO.num_pieces, [0, 1]).to_bytes()
        body["progress"] = AnnounceProgress(INFO.num_pieces, INFO.length, held).to_dict()
        self.assertEqual(self.announce(body)[0], 200)
        self.assertEqual(self.announce(announce_body(agent(2, complete=True)))[0], 200)
        (listed,) = json.loads(self.request("GET", "/ui/torrents.json")[1])
        self.assertEqual((listed["infohash"], listed["agents"], listed["complete"]), (IH.hex, 2, 1))
        status, raw, _ = self.request("GET", f"/ui/swarm/{IH.hex}.json")
        self.assertEqual(status, 200)
        swarm = json.loads(raw)
        self.assertEqual(swarm["pieces"], INFO.num_pieces)
        by_address = {p["address"]: p for p in swarm["peers"]}
        self.assertTrue(by_address["10.1.0.1:15001"]["origin"])
        self.assertEqual(by_address["10.0.0.1:16002"]["done"], 2)
        self.assertEqual(by_address["10.0.0.1:16003"]["done"], INFO.num_pieces)
        self.assertEqual(swarm["heat"][:2], [3.0, 3.0])
        self.assertEqual(swarm["heat"][2], 2.0)

    def test_bad_torrent(self) -> None:
        """A malformed infohash is a 400; one nobody announced lately a 404."""
        self.assertEqual(self.request("GET", "/ui/swarm/nothex.json")[0], 400)
        self.assertEqual(self.request("GET", f"/ui/swarm/{IH.hex}.json")[0], 404)
        self.assertEqual(self.request("GET", f"/ui/swarm/{IH.hex}.txt")[0], 404)

    def test_bad_progress_is_refused(self) -> None:
        """An announce whose progress is malformed is a 400 naming the field."""
        body = announce_body(agent(1))
        body["progress"] = {"pieces": 3, "length": 10, "have": "!!"}
        status, text = self.announce(body)
        self.assertEqual(status, 400)
        self.assertIn(b"progress.have", text)


class FromAddress(Resource):
    """Serves ``wrapped`` as if every request came from ``host`` (StubTreq's: 127.0.0.1)."""

    isLeaf = True

    def __init__(self, wrapped: Any, host: str) -> None:
        super().__init__()
        self.wrapped, self.host = wrapped, host

    def render(self, request: Any) -> Any:
        """Set the client address, then render ``wrapped``."""
        request.client = (IPv6Address if ":" in self.host else IPv4Address)("TCP", self.host, 40000)
        return self.wrapped.render(request)


class AdmissionTests(SynchronousTestCase):
    """Issue 18: an announce speaks only for the address it came from, and a possible one."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryPeerStore(self.clock, max_per_address=4)
        self.origins = FakeOrigins()
        self.api = TrackerAPI(self.store, self.origins, self.clock, interval_seconds=3)

    def announce(
        self, peer: PeerInfo, source: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """POST ``peer``'s announce from client address ``source``; status and body."""
        treq = StubTreq(FromAddress(self.api.resource(), source))
        d = treq.post(
            f"http://tracker/announce/{IH.hex}",
            data=json.dumps(announce_body(peer)),
            headers=headers,
        )
        treq.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content())

    def handed_out(self, peer: PeerInfo, source: str | None = None) -> list[PeerInfo]:
        """The peers handed to ``peer`` announcing from its own address."""
        code, body = self.announce(peer, source or peer.ip)
        self.assertEqual(code, 200, body)
        return [PeerInfo.from_dict(p) for p in json.loads(body)["peers"]]

    def test_poisoned_swarm(self) -> None:
        """
        The seen case: 22 fake complete peers announced from one client (10.0.0.9), among
        them 169.254.169.254:80, other hosts' addresses and the client's own ports.  An
        agent is handed none of the foreign or impossible ones and at most 4 (the bound
        per address) of the client's own.
        """
        fakes = [PeerInfo(PeerID(f"{0xF00:040x}"), "169.254.169.254", 80, complete=True)]
        fakes += [
            PeerInfo(PeerID(f"{0xF10 + i:040x}"), f"10.0.7.{i}", 16001, complete=True)
            for i in range(1, 8)
        ]
        fakes += [
            PeerInfo(PeerID(f"{0xF20 + i:040x}"), "10.0.0.9", 20000 + i, complete=True)
            for i in range(14)
        ]
        self.assertEqual(len(fakes), 22)
        codes = []
        for fake in fakes:
            self.clock.advance(0.1)
            codes.append(self.announce(fake, "10.0.0.9")[0])
        self.assertEqual(codes, [400] + [403] * 7 + [200] * 14)
        got = self.handed_out(PeerInfo(PeerID(f"{1:040x}"), "10.0.0.20", 16001))
        agents = [p for p in got if not p.origin]
        self.assertEqual(len(agents), 4)
        self.assertTrue(all(p.ip == "10.0.0.9" for p in agents), agents)
        self.assertEqual({p.peer_id for p in agents}, {f.peer_id for f in fakes[-4:]})
        metrics = generate_latest(self.api.metrics.registry)
        self.assertIn(b'kraken_tracker_announces_total{result="refused"} 7.0', metrics)
        self.assertIn(b'kraken_tracker_announces_total{result="invalid"} 1.0', metrics)

    def test_impossible_addresses(self) -> None:
        """Unspecified, multicast, link-local, reserved and broadcast addresses are 400."""
        for ip in (
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "169.254.169.254",
            "fe80::1",
            "240.0.0.1",
            "255.255.255.255",
        ):
            code, body = self.announce(PeerInfo(PeerID(f"{1:040x}"), ip, 16001), ip)
            self.assertEqual(code, 400, ip)
            self.assertIn(b"peer.ip", body)
        self.assertEqual(self.store.torrent_count(), 0)

    def test_loopback_only_from_loopback(self) -> None:
        """127.0.0.1 is a possible peer for a client on loopback (the herd), not for others."""
        me = PeerInfo(PeerID(f"{1:040x}"), "127.0.0.1", 16001)
        code, body = self.announce(me, "10.0.0.9")
        self.assertEqual(code, 400, body)
        self.assertIn(b"loopback", body)
        self.assertEqual(self.announce(me, "127.0.0.1")[0], 200)

    def test_many_agents_on_loopback(self) -> None:
        """Ten agents of one host on 127.0.0.1 are all handed out (loopback is not bounded)."""
        for n in range(10):
            self.handed_out(PeerInfo(PeerID(f"{n:040x}"), "127.0.0.1", 16001 + n))
        got = self.handed_out(PeerInfo(PeerID(f"{99:040x}"), "127.0.0.1", 17001))
        self.assertEqual(len([p for p in got if not p.origin]), 10)

    def test_speaks_only_for_its_own_address(self) -> None:
        """Another host's address is 403 naming both; an IPv4-mapped source is the IPv4 host."""
        code, body = self.announce(PeerInfo(PeerID(f"{1:040x}"), "10.0.0.10", 16001), "10.0.0.9")
        self.assertEqual(code, 403)
        self.assertIn(b"10.0.0.10", body)
        self.assertIn(b"(10.0.0.9)", body)
        mapped = PeerInfo(PeerID(f"{2:040x}"), "::ffff:10.0.0.9", 16001)
        self.assertEqual(self.announce(mapped, "10.0.0.9")[0], 200)
        plain = PeerInfo(PeerID(f"{3:040x}"), "10.0.0.9", 16002)
        self.assertEqual(self.announce(plain, "::ffff:10.0.0.9")[0], 200)
        stored = {p.ip for p in self.successResultOf(self.store.get_peers(IH, 9))}
        self.assertEqual(stored, {"10.0.0.9"})

    def test_forwarded_for_from_trusted_forwarders_only(self) -> None:
        """
        From a trusted forwarder the rightmost X-Forwarded-For address that is not a
        forwarder is the source (an address the client prepended does not count); without
        the header the body is believed; from anyone else the header is ignored.
        """
        self.api.admission = AdmissionPolicy(parse_networks(["10.1.0.0/16"]))
        agent7 = PeerInfo(PeerID(f"{7:040x}"), "10.0.0.7", 16001)
        forwarded = {"X-Forwarded-For": "10.0.0.7"}
        self.assertEqual(self.announce(agent7, "10.1.0.5", forwarded)[0], 200)
        chain = {"X-Forwarded-For": "10.0.0.7, 10.1.0.6"}
        self.assertEqual(self.announce(agent7, "10.1.0.5", chain)[0], 200)
        spoofed = {"X-Forwarded-For": "10.0.0.8, 10.0.0.7"}
        other = PeerInfo(PeerID(f"{8:040x}"), "10.0.0.8", 16001)
        self.assertEqual(self.announce(other, "10.1.0.5", spoofed)[0], 403)
        self.assertEqual(self.announce(other, "10.1.0.5")[0], 200)
        self.assertEqual(self.announce(other, "10.0.0.7", {"X-Forwarded-For": "10.0.0.8"})[0], 403)
        code, body = self.announce(agent7, "10.1.0.5", {"X-Forwarded-For": "junk"})
        self.assertEqual(code, 400)
        self.assertIn(b"X-Forwarded-For", body)

    def report(self, reporter: PeerInfo, failed: list[PeerID], source: str | None = None) -> Any:
        """POST a report from ``source`` (default: the reporter's address); status and JSON."""
        treq = StubTreq(FromAddress(self.api.resource(), source or reporter.ip))
        body = {**announce_body(reporter), "failed": [p.hex for p in failed]}
        d = treq.post(f"http://tracker/report/{IH.hex}", data=json.dumps(body))
        treq.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content())

    def test_unreachable_peer_quarantined(self) -> None:
        """
        A peer that two different clients report unreachable is left out of answers for
        the quarantine (300 s), then handed out again; one client's reports alone (any
        number of them) quarantine nobody.
        """
        fake = PeerInfo(PeerID(f"{0xF:040x}"), "10.0.0.9", 20000, complete=True)
        self.assertEqual(self.announce(fake, "10.0.0.9")[0], 200)
        a = PeerInfo(PeerID(f"{1:040x}"), "10.0.0.20", 16001)
        b = PeerInfo(PeerID(f"{2:040x}"), "10.0.0.21", 16001)
        c = PeerInfo(PeerID(f"{3:040x}"), "10.0.0.22", 16001)
        self.assertIn(fake, self.handed_out(a))
        for _ in range(3):
            self.assertEqual(self.report(a, [fake.peer_id]), (200, b'{"quarantined":[]}'))
        self.assertIn(fake, self.handed_out(c))
        self.assertEqual(
            self.report(b, [fake.peer_id]),
            (200, b'{"quarantined":["%s"]}' % fake.peer_id.hex.encode()),
        )
        self.assertNotIn(fake.peer_id, [p.peer_id for p in self.handed_out(c)])
        self.clock.advance(300)
        self.assertIn(fake, self.handed_out(c))

    def test_report_speaks_only_for_its_own_address(self) -> None:
        """A report naming a reporter at another address is 403 and counts for nothing."""
        fake = PeerInfo(PeerID(f"{0xF:040x}"), "10.0.0.9", 20000, complete=True)
        self.announce(fake, "10.0.0.9")
        a = PeerInfo(PeerID(f"{1:040x}"), "10.0.0.20", 16001)
        b = PeerInfo(PeerID(f"{2:040x}"), "10.0.0.21", 16001)
        self.assertEqual(self.report(a, [fake.peer_id])[0], 200)
        self.assertEqual(self.report(b, [fake.peer_id], source="10.0.0.20")[0], 403)
        self.assertIn(fake, self.handed_out(PeerInfo(PeerID(f"{3:040x}"), "10.0.0.22", 16001)))

    def test_loopback_reporters_count_by_peer_id(self) -> None:
        """Two agents of one host on loopback are two reporters (the herd)."""
        fake = PeerInfo(PeerID(f"{0xF:040x}"), "127.0.0.1", 20000, complete=True)
        self.announce(fake, "127.0.0.1")
        a = PeerInfo(PeerID(f"{1:040x}"), "127.0.0.1", 16001)
        b = PeerInfo(PeerID(f"{2:040x}"), "127.0.0.1", 17001)
        self.report(a, [fake.peer_id])
        self.assertEqual(
            json.loads(self.report(b, [fake.peer_id])[1])["quarantined"], [fake.peer_id.hex]
        )

    def test_bad_reports(self) -> None:
        """A report without ``failed``, with too many or malformed ids, is 400."""
        a = PeerInfo(PeerID(f"{1:040x}"), "10.0.0.20", 16001)
        treq = StubTreq(FromAddress(self.api.resource(), a.ip))
        for failed in (None, [], ["x"], [f"{i:040x}" for i in range(65)], "0" * 40):
            body = announce_body(a)
            if failed is not None:
                body["failed"] = failed
            d = treq.post(f"http://tracker/report/{IH.hex}", data=json.dumps(body))
            treq.flush()
            self.assertEqual(self.successResultOf(d).code, 400, failed)
