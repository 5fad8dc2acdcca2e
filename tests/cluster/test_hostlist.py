"""Tests for kraken.cluster.hostlist: static and DNS host lists, local stripping, addresses."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from attrs import define, field
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kraken.cluster.hostlist import (
    DNSHostList,
    HostListUnavailable,
    IHostList,
    InvalidHostAddress,
    LocalStrippedHostList,
    StaticHostList,
    join_host_port,
    local_host_names,
    name_resolver_lookup,
    parse_host_port,
)


@define
class FakeLookup:
    """A Lookup whose answers the test gives by firing the recorded Deferreds."""

    calls: list[tuple[str, Deferred[Sequence[str]]]] = field(factory=list)

    def __call__(self, name: str) -> Deferred[Sequence[str]]:
        """Record the lookup and answer a Deferred the test controls."""
        d: Deferred[Sequence[str]] = Deferred()
        self.calls.append((name, d))
        return d

    def answer(self, *addresses: str) -> None:
        """Answer the latest lookup with ``addresses``."""
        self.calls[-1][1].callback(list(addresses))

    def fail(self) -> None:
        """Fail the latest lookup as a DNS error would."""
        self.calls[-1][1].errback(DNSLookupError("origin.example"))


if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object


class HostListTestsMixin(_Base):
    """The IHostList contract; subclasses provide ``host_list()`` and the expected members."""

    expected: frozenset[str]

    def host_list(self) -> IHostList:
        """A host list that answers ``self.expected``."""
        raise NotImplementedError()

    def test_interface(self) -> None:
        """The implementation provides IHostList."""
        self.assertTrue(verifyObject(IHostList, self.host_list()))

    def test_resolve(self) -> None:
        """resolve() answers a frozenset of valid host:port members."""
        got = self.successResultOf(self.host_list().resolve())
        self.assertIsInstance(got, frozenset)
        self.assertEqual(got, self.expected)
        for member in got:
            parse_host_port(member)


class StaticHostListTests(HostListTestsMixin, SynchronousTestCase):
    """StaticHostList."""

    expected = frozenset({"a:1", "b:2", "[::1]:3"})

    def host_list(self) -> IHostList:
        """The expected members, given as a list with a duplicate."""
        return StaticHostList(["a:1", "b:2", "[::1]:3", "a:1"])

    def test_rejects_bad_members(self) -> None:
        """Malformed members are rejected at construction, naming the value."""
        for bad in (["a"], ["a:0"], ["a:x"], [":80"]):
            with self.assertRaises(InvalidHostAddress) as e:
                StaticHostList(bad)
            self.assertIn(repr(bad[0]), str(e.exception))
        self.assertRaises(InvalidHostAddress, StaticHostList, "a:1")


class DNSHostListTests(HostListTestsMixin, SynchronousTestCase):
    """DNSHostList: TTL, failures, sharing, timeouts."""

    expected = frozenset({"10.0.0.1:15002", "10.0.0.2:15002"})

    def setUp(self) -> None:
        """A fake lookup and a clock."""
        self.lookup = FakeLookup()
        self.clock = Clock()

    def create(self, ttl: float = 5.0) -> DNSHostList:
        """A DNS host list created with a first lookup that finds two addresses."""
        created = DNSHostList.create("origin.example:15002", self.lookup, self.clock, ttl=ttl)
        self.assertEqual(self.lookup.calls[0][0], "origin.example")
        self.lookup.answer("10.0.0.1", "10.0.0.2", "10.0.0.1")
        return self.successResultOf(created)

    def host_list(self) -> IHostList:
        """A created DNS host list."""
        return self.create()

    def test_first_lookup_fails_fast(self) -> None:
        """create() fails with HostListUnavailable, naming the error, if the first lookup fails."""
        created = DNSHostList.create("origin.example:15002", self.lookup, self.clock)
        self.lookup.fail()
        reason = self.failureResultOf(created, HostListUnavailable)
        self.assertIn("origin.example:15002", str(reason.value))
        self.assertIn("origin.example", str(reason.value))

    def test_first_lookup_empty_fails(self) -> None:
        """create() fails if the first lookup finds no address."""
        created = DNSHostList.create("origin.example:15002", self.lookup, self.clock)
        self.lookup.answer()
        self.failureResultOf(created, HostListUnavailable)

    def test_first_lookup_raises(self) -> None:
        """A lookup that raises instead of failing its Deferred also fails create()."""

        def broken(name: str) -> Deferred[Sequence[str]]:
            raise OSError("no resolver")

        created = DNSHostList.create("origin.example:15002", broken, self.clock)
        reason = self.failureResultOf(created, HostListUnavailable)
        self.assertIn("no resolver", str(reason.value))

    def test_bad_address(self) -> None:
        """A DNS address without a valid port is rejected at once."""
        self.assertRaises(
            InvalidHostAddress, DNSHostList.create, "origin.example", self.lookup, self.clock
        )
        self.assertEqual(self.lookup.calls, [])

    def test_cached_within_ttl(self) -> None:
        """Within the TTL, resolve() answers the snapshot without a new lookup."""
        hosts = self.create(ttl=5.0)
        self.clock.advance(4.9)
        self.assertEqual(self.successResultOf(hosts.resolve()), self.expected)
        self.assertEqual(len(self.lookup.calls), 1)

    def test_relookup_after_ttl(self) -> None:
        """After the TTL the name is looked up again and the new answer is used."""
        hosts = self.create(ttl=5.0)
        self.clock.advance(5.0)
        resolved = hosts.resolve()
        self.assertNoResult(resolved)
        self.assertEqual(len(self.lookup.calls), 2)
        self.lookup.answer("10.0.0.3")
        self.assertEqual(self.successResultOf(resolved), frozenset({"10.0.0.3:15002"}))

    def test_failure_keeps_snapshot(self) -> None:
        """A failed or empty re-lookup keeps the last snapshot and is not retried within the TTL."""
        hosts = self.create(ttl=5.0)
        self.clock.advance(6)
        resolved = hosts.resolve()
        self.lookup.fail()
        self.assertEqual(self.successResultOf(resolved), self.expected)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(hosts.resolve()), self.expected)
        self.assertEqual(len(self.lookup.calls), 2)
        self.clock.advance(5)
        resolved = hosts.resolve()
        self.lookup.answer()
        self.assertEqual(self.successResultOf(resolved), self.expected)
        self.assertEqual(len(self.lookup.calls), 3)

    def test_concurrent_callers_share_lookup(self) -> None:
        """Callers arriving during a lookup wait for that same lookup."""
        hosts = self.create()
        self.clock.advance(10)
        first, second = hosts.resolve(), hosts.resolve()
        self.assertEqual(len(self.lookup.calls), 2)
        self.assertNoResult(second)
        self.lookup.answer("10.0.0.9")
        expected = frozenset({"10.0.0.9:15002"})
        self.assertEqual(self.successResultOf(first), expected)
        self.assertEqual(self.successResultOf(second), expected)

    def test_lookup_timeout(self) -> None:
        """A lookup that never answers times out after ``timeout`` and keeps the snapshot."""
        hosts = self.create(ttl=5.0)
        hosts.timeout = 2.0
        self.clock.advance(5)
        resolved = hosts.resolve()
        self.clock.advance(1.9)
        self.assertNoResult(resolved)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(resolved), self.expected)

    def test_first_lookup_timeout(self) -> None:
        """A first lookup that never answers fails create() after ``timeout``."""
        created = DNSHostList.create("origin.example:80", self.lookup, self.clock, timeout=2.0)
        self.assertNoResult(created)
        self.clock.advance(2.0)
        reason = self.failureResultOf(created, HostListUnavailable)
        self.assertIn("origin.example:80", str(reason.value))

    def test_unavailable_until_first_answer(self) -> None:
        """Built directly, the list fails resolve() until a lookup succeeds, then works."""
        hosts = DNSHostList("origin.example", 80, self.lookup, self.clock)
        resolved = hosts.resolve()
        waiting = hosts.resolve()
        self.lookup.fail()
        self.failureResultOf(resolved, HostListUnavailable)
        self.failureResultOf(waiting, HostListUnavailable)
        self.failureResultOf(hosts.resolve(), HostListUnavailable)
        self.assertEqual(len(self.lookup.calls), 1)
        self.clock.advance(5)
        resolved = hosts.resolve()
        self.lookup.answer("10.0.0.7")
        self.assertEqual(self.successResultOf(resolved), frozenset({"10.0.0.7:80"}))

    def test_ipv6_addresses_bracketed(self) -> None:
        """IPv6 answers become [addr]:port members."""
        created = DNSHostList.create("origin.example:80", self.lookup, self.clock)
        self.lookup.answer("fd00::1")
        hosts = self.successResultOf(created)
        self.assertEqual(self.successResultOf(hosts.resolve()), frozenset({"[fd00::1]:80"}))


class LocalStrippedHostListTests(HostListTestsMixin, SynchronousTestCase):
    """LocalStrippedHostList."""

    expected = frozenset({"10.0.0.2:15004", "10.0.0.1:9999"})

    def host_list(self) -> IHostList:
        """This host is 10.0.0.1 / me.example, serving on 15004."""
        inner = StaticHostList(
            ["10.0.0.1:15004", "me.example:15004", "10.0.0.2:15004", "10.0.0.1:9999"]
        )
        return LocalStrippedHostList(inner, frozenset({"10.0.0.1", "me.example"}), 15004)


class LocalHostNamesTests(SynchronousTestCase):
    """local_host_names()."""

    def test_names_and_addresses(self) -> None:
        """The host name, its aliases and addresses, plus the loopback names."""
        self.patch(socket, "gethostname", lambda: "box")
        self.patch(
            socket, "gethostbyname_ex", lambda name: ("box.example", ["box-alias"], ["10.1.2.3"])
        )
        self.assertEqual(
            local_host_names(),
            frozenset({"box", "box.example", "box-alias", "10.1.2.3", "localhost", "127.0.0.1"}),
        )

    def test_unresolvable_hostname(self) -> None:
        """If the host's own name does not resolve, the name and loopback are still there."""

        def fails(name: str) -> tuple[str, list[str], list[str]]:
            raise socket.gaierror("nope")

        self.patch(socket, "gethostname", lambda: "box")
        self.patch(socket, "gethostbyname_ex", fails)
        self.assertEqual(local_host_names(), frozenset({"box", "localhost", "127.0.0.1"}))


@implementer(IHostResolution)
@define
class FakeResolution:
    """The resolution handle FakeNameResolver gives out."""

    name: str

    def cancel(self) -> None:
        """Resolution is synchronous, so there is nothing to cancel."""


@implementer(IHostnameResolver)
@define
class FakeNameResolver:
    """An IHostnameResolver answering from a table, synchronously."""

    table: dict[str, list[IPv4Address | IPv6Address]]
    asked: list[tuple[str, object]] = field(factory=list)

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: object = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """Give the receiver every address of ``hostName`` of the asked types."""
        self.asked.append((hostName, addressTypes))
        resolution = FakeResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for address in self.table.get(hostName, []):
            if type(address) in addressTypes:  # type: ignore[operator]
                resolutionReceiver.addressResolved(address)
        resolutionReceiver.resolutionComplete()
        return resolution


class NameResolverLookupTests(SynchronousTestCase):
    """name_resolver_lookup() over an IHostnameResolver."""

    def setUp(self) -> None:
        """A resolver knowing one name with duplicate IPv4 entries and one IPv6 one."""
        self.resolver = FakeNameResolver(
            {
                "origin.example": [
                    IPv4Address("TCP", "10.0.0.1", 0),
                    IPv4Address("TCP", "10.0.0.1", 0),
                    IPv6Address("TCP", "fd00::1", 0),
                    IPv4Address("TCP", "10.0.0.2", 0),
                ]
            }
        )

    def test_ipv4_by_default(self) -> None:
        """By default only IPv4 addresses, each once, in resolver order."""
        lookup = name_resolver_lookup(self.resolver)
        self.assertEqual(self.successResultOf(lookup("origin.example")), ["10.0.0.1", "10.0.0.2"])
        self.assertEqual(self.resolver.asked, [("origin.example", [IPv4Address])])

    def test_ipv6_when_asked(self) -> None:
        """With ipv6=True the IPv6 addresses are included too."""
        lookup = name_resolver_lookup(self.resolver, ipv6=True)
        self.assertEqual(
            self.successResultOf(lookup("origin.example")), ["10.0.0.1", "fd00::1", "10.0.0.2"]
        )

    def test_unknown_name(self) -> None:
        """A name with no address fails with DNSLookupError."""
        lookup = name_resolver_lookup(self.resolver)
        self.failureResultOf(lookup("nowhere.example"), DNSLookupError)

    def test_drives_dns_host_list(self) -> None:
        """The adapter plugs into DNSHostList."""
        lookup = name_resolver_lookup(self.resolver)
        hosts = self.successResultOf(DNSHostList.create("origin.example:8", lookup, Clock()))
        self.assertEqual(
            self.successResultOf(hosts.resolve()), frozenset({"10.0.0.1:8", "10.0.0.2:8"})
        )


class AddressTests(SynchronousTestCase):
    """parse_host_port() and join_host_port()."""

    def test_parse(self) -> None:
        """Host names, IPv4 and bracketed IPv6 parse into host and port."""
        self.assertEqual(parse_host_port("origin:15002"), ("origin", 15002))
        self.assertEqual(parse_host_port("10.0.0.1:1"), ("10.0.0.1", 1))
        self.assertEqual(parse_host_port("[fd00::1]:65535"), ("fd00::1", 65535))

    def test_rejects(self) -> None:
        """Bad addresses raise InvalidHostAddress naming the value."""
        for bad in [
            "origin",
            "origin:",
            ":80",
            "origin:0",
            "origin:65536",
            "origin:-1",
            "origin:8x",
            "origin:\u0661",
            "fd00::1:80",
            "[fd00::1]",
            "[nothex]:80",
            "a b:80",
        ]:
            with self.assertRaises(InvalidHostAddress) as e:
                parse_host_port(bad)
            self.assertIn(repr(bad), str(e.exception))
        self.assertRaises(InvalidHostAddress, parse_host_port, 80)

    @given(
        st.one_of(
            st.ip_addresses().map(str),
            st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
        ),
        st.integers(1, 65535),
    )
    def test_round_trip(self, host: str, port: int) -> None:
        """join_host_port then parse_host_port gives back host and port."""
        self.assertEqual(parse_host_port(join_host_port(host, port)), (host, port))
