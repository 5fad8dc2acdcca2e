"""
A peer store in Redis, through txredisapi, so that several trackers share one view.

Per torrent two keys, with a hash tag so that Redis Cluster keeps them together:

- ``<prefix>{<infohash>}:exp``, a sorted set ``peer id -> expiry`` (Unix seconds);
- ``<prefix>{<infohash>}:info``, a hash ``peer id -> "<complete 0|1>|<port>|<ip>"``.

Both updates and reads are Lua scripts, so concurrent trackers cannot interleave
between the read of the old complete flag and the write of the new entry.  A
read first drops expired entries, then picks ``limit`` random ids with
``ZRANDMEMBER`` (Redis >= 6.2).  Both keys also carry a Redis TTL of the peer
TTL, so a torrent nobody announces any more disappears without a sweeper.

Expiry is computed from the store's clock, not Redis' ``TIME``, so that tests
can drive it with a fake clock; trackers sharing a Redis need synchronised
clocks (NTP), which is ample for a 5 h TTL.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar, Final

import txredisapi
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kraken.core import InfoHash, InvalidPeerInfo, PeerID, PeerInfo
from kraken.peers.store import DEFAULT_PEER_TTL, IPeerStore

DEFAULT_KEY_PREFIX: Final = "kraken:peers:"

_UPDATE: Final = """
local complete = ARGV[6]
if complete == '0' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
  if score and tonumber(score) > tonumber(ARGV[1]) then
    local old = redis.call('HGET', KEYS[2], ARGV[3])
    if old and string.sub(old, 1, 1) == '1' then complete = '1' end
  end
end
redis.call('HSET', KEYS[2], ARGV[3], complete .. '|' .. ARGV[5] .. '|' .. ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return complete
"""

_GET: Final = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call('HDEL', KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
local ids = redis.call('ZRANDMEMBER', KEYS[1], ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"""


def connect_redis(
    host: str,
    port: int,
    *,
    dbid: int = 0,
    poolsize: int = 10,
    password: str | None = None,
    connect_timeout: float = 5.0,
) -> Any:
    """
    A lazy txredisapi connection pool configured as :class:`RedisPeerStore` needs.

    ``convertNumbers`` must be off: a peer id made only of decimal digits
    would otherwise come back as an integer without its leading zeros.
    """
    return txredisapi.lazyConnectionPool(
        host=host,
        port=port,
        dbid=dbid,
        poolsize=poolsize,
        password=password,
        convertNumbers=False,
        connectTimeout=connect_timeout,
        replyTimeout=30,
    )


class RedisPool(Service):
    """
    A txredisapi pool that connects when the service starts and disconnects when it stops.

    txredisapi starts connecting as soon as a pool is made, on the global
    reactor; wrapping it in a service keeps ``makeService`` free of side
    effects.  Stopping waits (at most ``connect_timeout``) for connection
    attempts in flight, so that none is left behind.
    """

    def __init__(
        self,
        host: str,
        port: int,
        clock: IReactorTime,
        *,
        dbid: int = 0,
        poolsize: int = 10,
        password: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.clock = host, port, clock
        self.dbid, self.poolsize, self.password = dbid, poolsize, password
        self.connect_timeout = connect_timeout
        self._conn: Any = None

    def startService(self) -> None:
        """Start connecting."""
        super().startService()  # type: ignore[no-untyped-call]
        self._conn = connect_redis(
            self.host,
            self.port,
            dbid=self.dbid,
            poolsize=self.poolsize,
            password=self.password,
            connect_timeout=self.connect_timeout,
        )

    def stopService(self) -> Deferred[None] | None:
        """Disconnect, after the attempts in flight have finished or timed out."""
        super().stopService()  # type: ignore[no-untyped-call]
        conn, self._conn = self._conn, None
        if conn is None:
            return None
        settled: Deferred[None] = Deferred()

        def done(result: object) -> object:
            if not settled.called:
                settled.callback(None)
            return result

        connecting = getattr(conn._factory, "deferred", None)
        if connecting is None or connecting.called:
            settled.callback(None)
        else:
            connecting.addBoth(done)
        settled.addTimeout(self.connect_timeout, self.clock, lambda *_: None)

        def disconnect(_: object) -> Deferred[None]:
            d: Deferred[None] = conn.disconnect()
            return d

        return settled.addBoth(disconnect)

    def eval(self, script: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        """Run a Lua script (fails if the service is not running)."""
        if self._conn is None:
            return fail(RuntimeError("the Redis pool is not running"))
        d: Deferred[Any] = self._conn.eval(script, keys, args)
        return d


@implementer(IPeerStore)
@define
class RedisPeerStore:
    """
    :class:`IPeerStore` in Redis (see the module docstring for the layout).

    ``redis`` is a txredisapi connection or pool made with ``convertNumbers=False``
    (use :func:`connect_redis`).
    """

    log: ClassVar[Logger] = Logger()

    redis: Any
    clock: IReactorTime
    ttl: float = DEFAULT_PEER_TTL
    key_prefix: str = DEFAULT_KEY_PREFIX
    rng: random.Random = field(factory=random.Random)

    def _keys(self, infohash: InfoHash) -> list[str]:
        base = f"{self.key_prefix}{{{infohash.hex}}}"
        return [f"{base}:exp", f"{base}:info"]

    def update_peer(self, infohash: InfoHash, peer: PeerInfo) -> Deferred[None]:
        """Record an announce (see :meth:`IPeerStore.update_peer`)."""
        now = self.clock.seconds()
        args = [
            repr(now),
            repr(now + self.ttl),
            peer.peer_id.hex,
            peer.ip,
            str(peer.port),
            "1" if peer.complete else "0",
            str(max(1, math.ceil(self.ttl * 1000))),
        ]
        d: Deferred[Any] = self.redis.eval(_UPDATE, self._keys(infohash), args)
        return d.addCallback(lambda _: None)

    def get_peers(self, infohash: InfoHash, limit: int) -> Deferred[list[PeerInfo]]:
        """Random live peers (see :meth:`IPeerStore.get_peers`)."""
        if limit <= 0:
            return succeed([])
        now = self.clock.seconds()
        d: Deferred[Any] = self.redis.eval(_GET, self._keys(infohash), [repr(now), str(limit)])
        return d.addCallback(self._parse, infohash)

    def _parse(self, reply: list[str] | None, infohash: InfoHash) -> list[PeerInfo]:
        peers: list[PeerInfo] = []
        flat = list(reply or [])
        for peer_id, value in zip(flat[0::2], flat[1::2], strict=True):
            try:
                complete, port, ip = value.split("|", 2)
                peers.append(
                    PeerInfo(PeerID(peer_id), ip, int(port), origin=False, complete=complete == "1")
                )
            except (ValueError, InvalidPeerInfo):
                self.log.warn(
                    "skipping malformed peer entry {peer_id}={value!r} of {infohash}",
                    peer_id=peer_id,
                    value=value,
                    infohash=infohash,
                )
        # ZRANDMEMBER with a positive count returns a set in hash order, not a shuffle.
        self.rng.shuffle(peers)
        return peers
