"""
The tracker's lean Redis client: RESP2 encoding and parsing, pipelining, timeouts, a real server.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.peers.resp import (
    NoScript,
    RedisReplyError,
    RedisTimeout,
    RespPool,
    RespProtocol,
    _Incomplete,
    encode_command,
    parse_reply,
)
from tests.peers.redisserver import RedisServer


class EncodingTests(SynchronousTestCase):
    """encode_command and parse_reply."""

    def test_encode(self) -> None:
        """Commands are arrays of bulk strings; str is UTF-8, numbers go through str."""
        self.assertEqual(
            encode_command(("SET", "k", "é", 12, b"\r\n")),
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n$2\r\n12\r\n$2\r\n\r\n\r\n",
        )

    def test_every_type(self) -> None:
        """Simple strings, integers, bulk strings (UTF-8, null) and nested arrays parse."""
        buf = b"+OK\r\n:-42\r\n$3\r\n\xc3\xa9!\r\n$-1\r\n*2\r\n*1\r\n:1\r\n$0\r\n\r\n*-1\r\n"
        values, pos = [], 0
        while pos < len(buf):
            value, pos = parse_reply(buf, pos)
            values.append(value)
        self.assertEqual(values, ["OK", -42, "é!", None, [[1], ""], None])

    def test_errors_are_values(self) -> None:
        """Error replies come back as exceptions (NOSCRIPT as NoScript), also inside arrays."""
        value, _ = parse_reply(b"-NOSCRIPT No matching script\r\n", 0)
        self.assertIsInstance(value, NoScript)
        (inner,), _ = parse_reply(b"*1\r\n-ERR wrong\r\n", 0)
        self.assertIsInstance(inner, RedisReplyError)
        self.assertNotIsInstance(inner, NoScript)
        self.assertEqual(str(inner), "ERR wrong")

    def test_incomplete(self) -> None:
        """Every proper prefix of a reply is incomplete, never misparsed."""
        whole = b"*2\r\n$5\r\nhello\r\n:7\r\n"
        for n in range(len(whole)):
            self.assertRaises(_Incomplete, parse_reply, whole[:n], 0)
        self.assertEqual(parse_reply(whole, 0), (["hello", 7], len(whole)))

    def test_garbage(self) -> None:
        """Bytes that are not RESP2 are a ValueError."""
        self.assertRaises(ValueError, parse_reply, b"?what\r\n", 0)


class FakePool:
    """What RespProtocol needs of its pool: a clock, a timeout, a handshake, the live list."""

    def __init__(self, handshake: list[tuple[Any, ...]] | None = None) -> None:
        self.clock = Clock()
        self.reply_timeout = 30.0
        self.handshake = handshake or []
        self._live: list[RespProtocol] = []


def connected(pool: FakePool) -> tuple[RespProtocol, StringTransport]:
    """A protocol on a StringTransport."""
    proto = RespProtocol(pool)  # type: ignore[arg-type]
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class ProtocolTests(SynchronousTestCase):
    """RespProtocol over a StringTransport with a fake clock."""

    def test_pipelined_in_order(self) -> None:
        """Commands are written at once; replies arriving together or split answer in order."""
        pool = FakePool()
        proto, transport = connected(pool)
        ds = [proto.command("GET", f"k{i}") for i in range(3)]
        self.assertEqual(
            transport.value(), b"".join(encode_command(("GET", f"k{i}")) for i in range(3))
        )
        replies = b"$2\r\nv0\r\n-ERR no\r\n$2\r\nv2\r\n"
        proto.dataReceived(replies[:5])
        self.assertNoResult(ds[0])
        for i in range(5, len(replies)):
            proto.dataReceived(replies[i : i + 1])
        self.assertEqual(self.successResultOf(ds[0]), "v0")
        self.failureResultOf(ds[1], RedisReplyError)
        self.assertEqual(self.successResultOf(ds[2]), "v2")
        self.assertEqual(pool._live, [proto])

    def test_handshake_first(self) -> None:
        """AUTH and SELECT are sent before any command; a refused handshake drops the connection."""
        pool = FakePool([("AUTH", "secret"), ("SELECT", 3)])
        proto, transport = connected(pool)
        self.assertEqual(
            transport.value(), encode_command(("AUTH", "secret")) + encode_command(("SELECT", 3))
        )
        proto.dataReceived(b"-WRONGPASS invalid password\r\n+OK\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_timeout_drops_connection(self) -> None:
        """With no reply within the timeout, pending commands fail and the connection is aborted."""
        pool = FakePool()
        proto, transport = connected(pool)
        first = proto.command("PING")
        pool.clock.advance(20)
        second = proto.command("PING")
        proto.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(first), "PONG")
        pool.clock.advance(10)  # the first one's watchdog: the second is only 10 s old
        self.assertNoResult(second)
        pool.clock.advance(20)
        self.failureResultOf(second, RedisTimeout)
        self.assertTrue(transport.disconnecting)

    def test_connection_lost_fails_pending(self) -> None:
        """Commands waiting when the connection drops fail; the pool stops using it."""
        pool = FakePool()
        proto, _ = connected(pool)
        d: Deferred[Any] = proto.command("PING")
        proto.connectionLost(Failure(ConnectionLost("gone")))
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(pool._live, [])
        self.assertEqual(pool.clock.getDelayedCalls(), [])

    def test_garbage_drops_connection(self) -> None:
        """A reply that is not RESP2 drops the connection (and fails what was pending)."""
        pool = FakePool()
        proto, transport = connected(pool)
        proto.command("PING")
        proto.dataReceived(b"?\r\n")
        self.assertTrue(transport.disconnecting)


class PoolTests(TestCase):
    """RespPool against a real redis-server."""

    async def _setUp(self) -> None:
        self.server = RedisServer()
        self.addCleanup(self.server.stop)
        await self.server.start()

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setUp())

    def pool(self, **kwargs: Any) -> RespPool:
        """A started pool on the test server, stopped at clean-up."""
        pool = RespPool(reactor, "127.0.0.1", self.server.port, **kwargs)
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    async def test_commands_and_scripts(self) -> None:
        """Commands sent before the connection is up wait for it; EVAL and EVALSHA work."""
        pool = self.pool(size=3)
        self.assertEqual(await pool.execute_command("SET", "k", "v"), "OK")
        self.assertEqual(await pool.execute_command("GET", "k"), "v")
        self.assertEqual(await pool.eval("return {KEYS[1], ARGV[1]}", ["a"], ["b"]), ["a", "b"])
        sha = await pool.execute_command("SCRIPT", "LOAD", "return 7")
        self.assertEqual(await pool.evalsha(sha, [], []), 7)
        with self.assertRaises(NoScript):
            await pool.evalsha("0" * 40, [], [])

    async def test_select(self) -> None:
        """dbid selects the database on every connection."""
        one = self.pool(size=2, dbid=1)
        zero = self.pool(size=1)
        await one.execute_command("SET", "where", "one")
        self.assertIsNone(await zero.execute_command("GET", "where"))
        self.assertEqual(await one.execute_command("GET", "where"), "one")

    async def test_stopped_pool_fails(self) -> None:
        """After stop(), commands fail at once instead of waiting."""
        pool = self.pool()
        await pool.execute_command("PING")
        await pool.stop()
        with self.assertRaises(ConnectionError):
            await pool.execute_command("PING")
