"""
A peer store in Redis, so that several trackers share one view.

The daemons talk to Redis through :class:`RedisPool` (:mod:`kraken.peers.resp`, a small
pipelined RESP client); :class:`RedisPeerStore` also takes a txredisapi connection made with
``convertNumbers=False``, as the tests' helpers do.

Per torrent two keys, with a hash tag so that Redis Cluster keeps them together:

- ``<prefix>{<infohash>}:exp``, a sorted set ``peer id -> expiry`` (Unix seconds);
- ``<prefix>{<infohash>}:info``, a hash ``peer id -> "<complete 0|1>|<port>|<ip>"``;
- with ``max_per_address``, ``<prefix>{<infohash>}:ip:<ip>``, a sorted set
  ``peer id -> time of its last announce`` per bounded address: an announce
  that makes it hold more than the bound drops the entries announced least
  recently (from all three keys, if the entry is still at that address).

Both updates and reads are Lua scripts, so concurrent trackers cannot interleave
between the read of the old complete flag and the write of the new entry.  A
read first drops expired entries, then picks ``limit`` random ids with
``ZRANDMEMBER`` (Redis >= 6.2).  An announce (:meth:`RedisPeerStore.announce`)
is one script that does both, called by ``EVALSHA`` (``EVAL`` only when Redis
does not know the script yet), and answers one bulk string of
``id|complete|port|ip`` lines rather than a multi-bulk reply, which
txredisapi parses slowly.  Both keys also carry a Redis TTL of the peer
TTL, so a torrent nobody announces any more disappears without a sweeper.

Expiry is computed from the store's clock, not Redis' ``TIME``, so that tests
can drive it with a fake clock; trackers sharing a Redis need synchronised
clocks (NTP), which is ample for a 5 h TTL.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any, ClassVar, Final

import txredisapi
from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kraken.core import InfoHash, InvalidPeerInfo, PeerID, PeerInfo
from kraken.io.reactor import IClientReactor
from kraken.peers.resp import DEFAULT_REPLY_TIMEOUT, NoScript, RespPool
from kraken.peers.store import DEFAULT_PEER_TTL, IPeerStore, StoredPeer, is_bounded

DEFAULT_KEY_PREFIX: Final = "kraken:peers:"

#: Record an announce; the complete flag, once set, stays while the entry lives.
_RECORD: Final = """
local complete = ARGV[6]
local old = redis.call('HGET', KEYS[2], ARGV[3])
if complete == '0' and old and string.sub(old, 1, 1) == '1' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
  if score and tonumber(score) > tonumber(ARGV[1]) then complete = '1' end
end
if old then
  local oldip = string.sub(old, (string.find(old, '|', 3, true) or #old) + 1)
  if oldip ~= ARGV[4] then
    -- moved: out of its old address's set (same hash tag, so the same slot as KEYS[3])
    redis.call('ZREM', string.sub(KEYS[3], 1, #KEYS[3] - #ARGV[4]) .. oldip, ARGV[3])
  end
end
redis.call('HSET', KEYS[2], ARGV[3], complete .. '|' .. ARGV[5] .. '|' .. ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local bound = tonumber(ARGV[9])
if bound > 0 then
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
  local extra = redis.call('ZCARD', KEYS[3]) - bound
  if extra > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, extra - 1)) do
      redis.call('ZREM', KEYS[3], id)
      local v = id ~= ARGV[3] and redis.call('HGET', KEYS[2], id)
      if v and string.sub(v, (string.find(v, '|', 3, true) or #v) + 1) == ARGV[4] then
        redis.call('HDEL', KEYS[2], id)
        redis.call('ZREM', KEYS[1], id)
      end
    end
  end
end
"""
#: Drop the entries whose expiry (ZSET score) is past ARGV[1].
_EXPIRE: Final = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call('HDEL', KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
"""
_UPDATE: Final = (
    _RECORD
    + """
return complete
"""
)
_GET: Final = (
    _EXPIRE
    + """
local ids = redis.call('ZRANDMEMBER', KEYS[1], ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"""
)
#: One round trip per announce: record, expire, then sample (never the requester).
_ANNOUNCE: Final = (
    _RECORD
    + _EXPIRE
    + """
local limit = tonumber(ARGV[8])
if limit <= 0 then return '' end
local ids = redis.call('ZRANDMEMBER', KEYS[1], limit + 1)
local values = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  if id ~= ARGV[3] and values[i] and #out < limit then
    out[#out + 1] = id .. '|' .. values[i]
  end
end
return table.concat(out, '\\n')
"""
)
_ANNOUNCE_SHA: Final = hashlib.sha1(_ANNOUNCE.encode(), usedforsecurity=False).hexdigest()

#: Bound of :class:`RedisPeerStore`'s cache of answer records (one per peer entry).
MAX_CACHED_RECORDS: Final = 200_000


class RedisPool(Service):
    """
    The tracker's Redis connections (:class:`kraken.peers.resp.RespPool`) as a service.

    Connects when the service starts, disconnects (and stops reconnecting)
    when it stops, so that ``makeService`` stays free of side effects.
    Commands are pipelined over ``poolsize`` connections; see
    :mod:`kraken.peers.resp` for why not txredisapi.
    """

    def __init__(
        self,
        host: str,
        port: int,
        reactor: IClientReactor,
        *,
        dbid: int = 0,
        poolsize: int = 10,
        password: str | None = None,
        connect_timeout: float = 5.0,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
    ) -> None:
        self.host, self.port = host, port
        self._pool = RespPool(
            reactor,
            host,
            port,
            size=poolsize,
            dbid=dbid,
            password=password,
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
        )

    def startService(self) -> None:
        """Start connecting."""
        super().startService()  # type: ignore[no-untyped-call]
        self._pool.start()

    def stopService(self) -> Deferred[Any]:
        """Disconnect; fires when every connection (or attempt) has ended."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self._pool.stop()

    def execute_command(self, *args: Any) -> Deferred[Any]:
        """Run one command (fails if the service is not running)."""
        if not self.running:
            return fail(RuntimeError("the Redis pool is not running"))
        return self._pool.execute_command(*args)

    def eval(self, script: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        """Run a Lua script (fails if the service is not running)."""
        if not self.running:
            return fail(RuntimeError("the Redis pool is not running"))
        return self._pool.eval(script, keys, args)

    def evalsha(self, sha: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        """Run a Lua script Redis already knows by its SHA1 (fails if not running)."""
        if not self.running:
            return fail(RuntimeError("the Redis pool is not running"))
        return self._pool.evalsha(sha, keys, args)


@implementer(IPeerStore)
@define
class RedisPeerStore:
    """
    :class:`IPeerStore` in Redis (see the module docstring for the layout).

    ``redis`` is a :class:`RedisPool` (or :class:`kraken.peers.resp.RespPool`),
    or a txredisapi connection or pool made with ``convertNumbers=False`` (a peer id of
    decimal digits would otherwise come back as an integer without its leading zeros).
    """

    log: ClassVar[Logger] = Logger()

    redis: Any
    clock: IReactorTime
    ttl: float = DEFAULT_PEER_TTL
    key_prefix: str = DEFAULT_KEY_PREFIX
    rng: random.Random = field(factory=random.Random)
    max_per_address: int = 0
    _records: dict[str, StoredPeer] = field(init=False, factory=dict)
    _ttl_ms: str = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._ttl_ms = str(max(1, math.ceil(self.ttl * 1000)))

    def _keys(self, infohash: InfoHash, ip: str | None = None) -> list[str]:
        """The torrent's keys; with ``ip``, that address's key too (the record scripts')."""
        base = f"{self.key_prefix}{{{infohash.hex}}}"
        if ip is None:
            return [f"{base}:exp", f"{base}:info"]
        return [f"{base}:exp", f"{base}:info", f"{base}:ip:{ip}"]

    def _bound_of(self, ip: str) -> str:
        """ARGV[9]: the bound of ``ip``'s entries, ``0`` for none."""
        return str(self.max_per_address) if self.max_per_address and is_bounded(ip) else "0"

    def _record_args(self, peer: PeerInfo) -> list[str]:
        """The record script's arguments 1-7 for ``peer``, announcing now."""
        now = self.clock.seconds()
        return [
            repr(now),
            repr(now + self.ttl),
            peer.peer_id.hex,
            peer.ip,
            str(peer.port),
            "1" if peer.complete else "0",
            self._ttl_ms,
        ]

    def update_peer(self, infohash: InfoHash, peer: PeerInfo) -> Deferred[None]:
        """Record an announce (see :meth:`IPeerStore.update_peer`)."""
        args = [*self._record_args(peer), "0", self._bound_of(peer.ip)]
        d: Deferred[Any] = self.redis.eval(_UPDATE, self._keys(infohash, peer.ip), args)
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

    def announce(
        self, infohash: InfoHash, peer: PeerInfo, limit: int
    ) -> Deferred[list[StoredPeer]]:
        """Record and answer in one script (see :meth:`IPeerStore.announce`)."""
        args = [*self._record_args(peer), str(max(0, limit)), self._bound_of(peer.ip)]
        keys = self._keys(infohash, peer.ip)
        d: Deferred[Any] = self.redis.evalsha(_ANNOUNCE_SHA, keys, args)
        d.addErrback(self._load_script, keys, args)
        return d.addCallback(self._records_of, infohash)

    def _load_script(self, failure: Failure, keys: list[str], args: list[str]) -> Deferred[Any]:
        # Redis restarted or flushed its scripts: EVAL loads it again.
        failure.trap(txredisapi.ScriptDoesNotExist, NoScript)  # type: ignore[no-untyped-call]
        d: Deferred[Any] = self.redis.eval(_ANNOUNCE, keys, args)
        return d

    def _records_of(self, reply: str | None, infohash: InfoHash) -> list[StoredPeer]:
        records = self._records
        out: list[StoredPeer] = []
        for line in reply.split("\n") if reply else ():
            record = records.get(line)
            if record is None:
                record = self._parse_line(line, infohash)
                if record is None:
                    continue
                if len(records) >= MAX_CACHED_RECORDS:
                    records.clear()
                records[line] = record
            out.append(record)
        self.rng.shuffle(out)
        return out

    def _parse_line(self, line: str, infohash: InfoHash) -> StoredPeer | None:
        try:
            peer_id, complete, port, ip = line.split("|", 3)
            peer = PeerInfo(PeerID(peer_id), ip, int(port), origin=False, complete=complete == "1")
        except (ValueError, InvalidPeerInfo):
            self.log.warn(
                "skipping malformed peer entry {line!r} of {infohash}", line=line, infohash=infohash
            )
            return None
        return StoredPeer.of(peer)
