"""
The :class:`IPeerStore` suite, run against the memory store and a real Redis.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from kraken.core import InfoHash, PeerID, PeerInfo
from kraken.peers.redis import RedisPeerStore
from kraken.peers.resp import RespPool
from kraken.peers.store import DEFAULT_PEER_TTL, IPeerStore, MemoryPeerStore
from tests.peers.redisserver import RedisServer

IH = InfoHash("a" * 64)
OTHER = InfoHash("b" * 64)


def peer(n: int, complete: bool = False, port: int = 6881, ip: str = "10.0.0.1") -> PeerInfo:
    """Agent number ``n``."""
    return PeerInfo(PeerID(f"{n:040x}"), ip, port, origin=False, complete=complete)


class PeerStoreTests:
    """Abstract suite: subclasses set ``self.clock`` and ``self.store`` in ``setUp``."""

    clock: Clock
    store: Any
    ttl = DEFAULT_PEER_TTL

    # The mixin's assert methods come from TestCase.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any

    def test_interface(self) -> None:
        """The store provides IPeerStore."""
        self.assertTrue(verifyObject(IPeerStore, self.store))

    async def test_roundtrip(self) -> None:
        """An announced peer comes back with the same fields and origin=False."""
        p = peer(1, complete=False, port=1234, ip="192.168.1.9")
        await self.store.update_peer(IH, p)
        self.assertEqual(await self.store.get_peers(IH, 50), [p])

    async def test_unknown_torrent(self) -> None:
        """A torrent nobody announced has no peers."""
        self.assertEqual(await self.store.get_peers(OTHER, 50), [])

    async def test_torrents_are_separate(self) -> None:
        """Peers of one torrent are not returned for another."""
        await self.store.update_peer(IH, peer(1))
        await self.store.update_peer(OTHER, peer(2))
        self.assertEqual(await self.store.get_peers(IH, 50), [peer(1)])
        self.assertEqual(await self.store.get_peers(OTHER, 50), [peer(2)])

    async def test_limit(self) -> None:
        """get_peers returns at most ``limit`` distinct peers, all of them announced ones."""
        everyone = {peer(i) for i in range(20)}
        for p in everyone:
            await self.store.update_peer(IH, p)
        got = await self.store.get_peers(IH, 5)
        self.assertEqual(len(got), 5)
        self.assertEqual(len(set(got)), 5)
        self.assertTrue(set(got) <= everyone)
        self.assertEqual(set(await self.store.get_peers(IH, 100)), everyone)
        self.assertEqual(await self.store.get_peers(IH, 0), [])

    async def test_random_choice(self) -> None:
        """Different calls pick different subsets (20 equal draws of 5 of 20 would be ~1e-60)."""
        for i in range(20):
            await self.store.update_peer(IH, peer(i))
        draws = set()
        for _ in range(20):
            draws.add(frozenset(await self.store.get_peers(IH, 5)))
        self.assertTrue(len(draws) > 1)

    async def test_overwrite(self) -> None:
        """A new announce from the same peer id replaces its address."""
        await self.store.update_peer(IH, peer(1, port=1000))
        await self.store.update_peer(IH, peer(1, port=2000, ip="10.9.9.9"))
        self.assertEqual(await self.store.get_peers(IH, 50), [peer(1, port=2000, ip="10.9.9.9")])

    async def test_complete_stays(self) -> None:
        """Once a live entry is complete, a later incomplete announce keeps it complete."""
        await self.store.update_peer(IH, peer(1, complete=True))
        await self.store.update_peer(IH, peer(1, complete=False))
        self.assertEqual(await self.store.get_peers(IH, 50), [peer(1, complete=True)])

    async def test_complete_forgotten_after_expiry(self) -> None:
        """An expired complete entry does not make a fresh announce complete."""
        await self.store.update_peer(IH, peer(1, complete=True))
        self.clock.advance(self.ttl)
        await self.store.update_peer(IH, peer(1, complete=False))
        self.assertEqual(await self.store.get_peers(IH, 50), [peer(1, complete=False)])

    async def test_expiry(self) -> None:
        """An entry lives ``ttl`` seconds after the announce, and no longer."""
        await self.store.update_peer(IH, peer(1))
        self.clock.advance(self.ttl - 1)
        self.assertEqual(await self.store.get_peers(IH, 50), [peer(1)])
        self.clock.advance(1)
        self.assertEqual(await self.store.get_peers(IH, 50), [])

    async def test_announce_refreshes_expiry(self) -> None:
        """A re-announce pushes the expiry to ``ttl`` after it."""
        await self.store.update_peer(IH, peer(1))
        await self.store.update_peer(IH, peer(2))
        self.clock.advance(self.ttl - 1)
        await self.store.update_peer(IH, peer(1))
        self.clock.advance(self.ttl - 1)
        self.assertEqual(await self.store.get_peers(IH, 50), [peer(1)])

    async def test_origin_flag_not_stored(self) -> None:
        """The store holds agents only: an entry announced with origin=True comes back as agent."""
        p = PeerInfo(PeerID("1" * 40), "10.0.0.2", 99, origin=True, complete=True)
        await self.store.update_peer(IH, p)
        self.assertEqual(
            await self.store.get_peers(IH, 50),
            [PeerInfo(p.peer_id, p.ip, p.port, origin=False, complete=True)],
        )

    async def test_ipv6_and_digit_ids(self) -> None:
        """IPv6 addresses and peer ids made only of digits round-trip unchanged."""
        p = PeerInfo(PeerID("0123456789" * 4), "2001:db8::1", 65535)
        await self.store.update_peer(IH, p)
        self.assertEqual(await self.store.get_peers(IH, 50), [p])

    async def test_announce_records_and_answers_others(self) -> None:
        """announce() stores the peer and answers the other live peers' records, not its own."""
        for i in range(5):
            await self.store.update_peer(IH, peer(i))
        got = await self.store.announce(IH, peer(9, port=9999), 10)
        self.assertEqual(len(got), 5)
        self.assertEqual({r.peer_info() for r in got}, {peer(i) for i in range(5)})
        self.assertIn(peer(9, port=9999), await self.store.get_peers(IH, 50))
        self.assertTrue(all(not r.origin for r in got))

    async def test_announce_limit(self) -> None:
        """announce() answers at most ``limit`` distinct announced peers (none with limit 0)."""
        everyone = {peer(i) for i in range(20)}
        for p in everyone:
            await self.store.announce(IH, p, 0)
        got = [r.peer_info() for r in await self.store.announce(IH, peer(0), 5)]
        self.assertEqual(len(got), 5)
        self.assertEqual(len(set(got)), 5)
        self.assertTrue(set(got) <= everyone - {peer(0)})
        self.assertEqual(await self.store.announce(IH, peer(1), 0), [])
        self.assertEqual(len(await self.store.get_peers(IH, 100)), 20)

    async def test_announce_random(self) -> None:
        """Different announces hand back different subsets."""
        for i in range(20):
            await self.store.update_peer(IH, peer(i))
        draws = set()
        for _ in range(20):
            got = await self.store.announce(IH, peer(0), 5)
            draws.add(frozenset(r.peer_id for r in got))
        self.assertTrue(len(draws) > 1)

    async def test_announce_keeps_complete(self) -> None:
        """announce() keeps a live entry complete, as update_peer does."""
        await self.store.announce(IH, peer(1, complete=True), 5)
        await self.store.announce(IH, peer(1, complete=False), 5)
        (got,) = await self.store.announce(IH, peer(2), 5)
        self.assertEqual(got.peer_info(), peer(1, complete=True))

    async def test_announce_changed_address(self) -> None:
        """A re-announce from a new address replaces the record others are handed."""
        await self.store.announce(IH, peer(1, port=1000), 5)
        await self.store.announce(IH, peer(1, port=2000, ip="10.9.9.9"), 5)
        (got,) = await self.store.announce(IH, peer(2), 5)
        self.assertEqual(got.peer_info(), peer(1, port=2000, ip="10.9.9.9"))

    async def test_announce_skips_expired(self) -> None:
        """Expired entries are never answered, even when most of the torrent has expired."""
        for i in range(60):
            await self.store.update_peer(IH, peer(i))
        self.clock.advance(self.ttl - 1)
        fresh = {peer(100 + i) for i in range(8)}
        for p in fresh:
            await self.store.update_peer(IH, p)
        self.clock.advance(1)
        for _ in range(5):
            got = {r.peer_info() for r in await self.store.announce(IH, peer(200), 5)}
            self.assertEqual(len(got), 5)
            self.assertTrue(got <= fresh)
        self.assertEqual(len(await self.store.announce(IH, peer(200), 50)), 8)

    async def test_bound_per_address(self) -> None:
        """Issue 18: one address holds at most ``max_per_address`` peers of a torrent.

        22 fake peers announced from one address leave 3 in the store, the three
        announced last (a restarted agent's new id always gets in); other addresses
        and other torrents are untouched, and an address's re-announces do not count.
        """
        store = self.bounded_store(3)
        await store.update_peer(IH, peer(100, ip="10.0.0.2"))
        await store.update_peer(OTHER, peer(200))
        for i in range(22):
            self.clock.advance(1)
            await store.announce(IH, peer(i, port=2000 + i), 50)
            await store.announce(IH, peer(i, port=2000 + i, complete=True), 50)
        got = {p.peer_id.hex for p in await store.get_peers(IH, 50)}
        self.assertEqual(got, {f"{n:040x}" for n in (19, 20, 21, 100)})
        self.assertEqual(len(await store.get_peers(OTHER, 50)), 1)
        # A peer that moved to another address no longer counts against the first.
        await store.update_peer(IH, peer(21, ip="10.0.0.3"))
        await store.update_peer(IH, peer(30))
        got = {p.peer_id.hex for p in await store.get_peers(IH, 50)}
        self.assertEqual(got, {f"{n:040x}" for n in (19, 20, 21, 30, 100)})

    async def test_loopback_not_bounded(self) -> None:
        """Peers on loopback (the herd, single-host tests) are never dropped by the bound."""
        store = self.bounded_store(2)
        for i in range(6):
            await store.update_peer(IH, peer(i, ip="127.0.0.1", port=16001 + i))
        self.assertEqual(len(await store.get_peers(IH, 50)), 6)


class MemoryPeerStoreTests(PeerStoreTests, TestCase):
    """The suite on :class:`MemoryPeerStore`."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryPeerStore(self.clock, ttl=self.ttl)

    def bounded_store(self, n: int) -> MemoryPeerStore:
        """A store with ``max_per_address`` n."""
        return MemoryPeerStore(self.clock, ttl=self.ttl, max_per_address=n)


class MemorySweepTests(SynchronousTestCase):
    """Memory-only behaviour: sweeping expired entries."""

    def test_sweep(self) -> None:
        """sweep() drops only expired entries and forgets empty torrents."""
        clock = Clock()
        store = MemoryPeerStore(clock, ttl=10)
        store.update_peer(IH, peer(1))
        store.update_peer(OTHER, peer(3))
        clock.advance(5)
        store.update_peer(IH, peer(2))
        clock.advance(5)
        self.assertEqual(store.sweep(), 2)
        self.assertEqual(store.torrent_count(), 1)
        self.assertEqual(self.successResultOf(store.get_peers(IH, 9)), [peer(2)])

    def test_sweep_forgets_bounded_addresses(self) -> None:
        """Swept entries leave the per-address index: new peers at the address are not dropped."""
        clock = Clock()
        store = MemoryPeerStore(clock, ttl=10, max_per_address=2)
        store.update_peer(IH, peer(1))
        store.update_peer(IH, peer(2))
        clock.advance(10)
        self.assertEqual(store.sweep(), 2)
        store.update_peer(IH, peer(3))
        store.update_peer(IH, peer(4))
        got = self.successResultOf(store.get_peers(IH, 9))
        self.assertEqual(sorted(p.peer_id.hex for p in got), [f"{3:040x}", f"{4:040x}"])
        self.assertEqual(store._by_ip, {IH: {"10.0.0.1": {f"{3:040x}", f"{4:040x}"}}})


class RedisPeerStoreTests(PeerStoreTests, TestCase):
    """The suite on :class:`RedisPeerStore` against a real redis-server."""

    async def _setUp(self) -> None:
        self.server = RedisServer()
        self.addCleanup(self.server.stop)
        await self.server.start()
        conn = await self.server.connect()
        self.addCleanup(conn.disconnect)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = RedisPeerStore(conn, self.clock, ttl=self.ttl)

    def setUp(self) -> Any:
        return ensureDeferred(self._setUp())

    def bounded_store(self, n: int) -> RedisPeerStore:
        """A store on the same Redis with ``max_per_address`` n."""
        return RedisPeerStore(self.store.redis, self.clock, ttl=self.ttl, max_per_address=n)

    async def test_script_reloaded(self) -> None:
        """After Redis forgets its scripts (restart, SCRIPT FLUSH), announces load it again."""
        await self.store.announce(IH, peer(1), 5)
        await self.store.redis.execute_command("SCRIPT", "FLUSH")
        got = await self.store.announce(IH, peer(2), 5)
        self.assertEqual([r.peer_info() for r in got], [peer(1)])

    async def test_malformed_entry_skipped(self) -> None:
        """A malformed value in Redis is skipped (with a warning), not handed out or an error."""
        await self.store.announce(IH, peer(1), 5)
        await self.store.redis.execute_command("HSET", self.store._keys(IH)[1], "1" * 40, "junk")
        await self.store.redis.execute_command(
            "ZADD", self.store._keys(IH)[0], str(self.clock.seconds() + 100), "1" * 40
        )
        got = await self.store.announce(IH, peer(2), 5)
        self.assertEqual([r.peer_info() for r in got], [peer(1)])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    async def test_keys_expire_in_redis(self) -> None:
        """Both keys of a torrent carry a Redis TTL, so abandoned torrents vanish by themselves."""
        await self.store.update_peer(IH, peer(1))
        for key in self.store._keys(IH):
            ttl_ms = int(await self.store.redis.execute_command("PTTL", key))
            self.assertTrue(0 < ttl_ms <= self.ttl * 1000, (key, ttl_ms))

    async def test_shared_between_trackers(self) -> None:
        """Two stores on one Redis see each other's announces (several trackers, one view)."""
        conn2 = await self.server.connect()
        self.addCleanup(conn2.disconnect)
        other = RedisPeerStore(conn2, self.clock, ttl=self.ttl)
        await self.store.update_peer(IH, peer(1, complete=True))
        await other.update_peer(IH, peer(1))
        self.assertEqual(await self.store.get_peers(IH, 5), [peer(1, complete=True)])


class RespPeerStoreTests(RedisPeerStoreTests):
    """The suite on :class:`RedisPeerStore` over the tracker's own client (:class:`RespPool`)."""

    async def _setUp(self) -> None:
        self.server = RedisServer()
        self.addCleanup(self.server.stop)
        await self.server.start()
        pool = RespPool(reactor, "127.0.0.1", self.server.port, size=2)
        pool.start()
        self.addCleanup(pool.stop)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = RedisPeerStore(pool, self.clock, ttl=self.ttl)
