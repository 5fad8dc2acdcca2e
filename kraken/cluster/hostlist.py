"""
Host lists: where the members of a cluster (``host:port`` strings) come from.

A host list is either static (from configuration) or DNS (``name:port``; every
address of ``name`` with the port appended).  Both sit behind
:class:`IHostList`, whose :meth:`IHostList.resolve` answers a
:class:`~twisted.internet.defer.Deferred` so that DNS never blocks the reactor.

DNS is looked up through an injected :data:`Lookup` callable, so tests need no
DNS; :func:`name_resolver_lookup` adapts a reactor's
:class:`~twisted.internet.interfaces.IHostnameResolver` for production.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence

from attrs import define, field, frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

#: Looks up a host name and answers its IP addresses as strings.
Lookup = Callable[[str], "Deferred[Sequence[str]]"]

DEFAULT_DNS_TTL = 5.0
DEFAULT_DNS_TIMEOUT = 10.0


class InvalidHostAddress(ValueError):
    """A member address that is not ``host:port`` with a port in 1..65535."""


class HostListUnavailable(Exception):
    """A host list could not produce its first snapshot (e.g. the first DNS lookup failed)."""


def parse_host_port(address: str) -> tuple[str, int]:
    """
    Split ``host:port`` (or ``[v6]:port``) into host and port.

    Raises :class:`InvalidHostAddress` naming the value when the host is empty,
    the port is missing, not a decimal number or out of range.
    """
    if not isinstance(address, str):
        raise InvalidHostAddress(f"invalid host address {address!r}: not a string")
    if address.startswith("["):
        host, sep, port_text = address[1:].partition("]:")
        if not sep or not _is_ipv6(host):
            raise InvalidHostAddress(f"invalid host address {address!r}: expected [v6]:port")
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host or ":" in host or any(c.isspace() for c in host):
            raise InvalidHostAddress(f"invalid host address {address!r}: expected host:port")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise InvalidHostAddress(
            f"invalid host address {address!r}: port must be an integer in 1..65535"
        )
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """Format ``host:port``, bracketing IPv6 literals (``[::1]:80``)."""
    return f"[{host}]:{port}" if _is_ipv6(host) else f"{host}:{port}"


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _validated(hosts: Iterable[str]) -> frozenset[str]:
    if isinstance(hosts, str):
        raise InvalidHostAddress(f"invalid host list {hosts!r}: expected a list of host:port")
    result = frozenset(hosts)
    for address in result:
        parse_host_port(address)
    return result


class IHostList(Interface):
    """A source of cluster members, each a ``host:port`` string."""

    def resolve() -> Deferred[frozenset[str]]:
        """
        The current members.

        Fails with :class:`HostListUnavailable` only while the list has never
        had a snapshot (e.g. DNS has not answered yet).  After the first
        snapshot it never fails: a list that cannot refresh answers its last
        snapshot.
        """


@implementer(IHostList)
@frozen
class StaticHostList:
    """A fixed list of members from configuration."""

    hosts: frozenset[str] = field(converter=_validated)

    def resolve(self) -> Deferred[frozenset[str]]:
        """The configured members, immediately."""
        return succeed(self.hosts)


@implementer(IHostList)
@define
class DNSHostList:
    """
    Members from DNS: every address of ``name`` with ``port`` appended.

    The name is looked up again at most once per ``ttl`` seconds (counted
    from the start of the last attempt, successful or not), and only when
    someone asks.  Concurrent callers share one lookup.  A lookup that fails,
    times out or finds no address keeps the last snapshot.  Until the first
    successful lookup, :meth:`resolve` fails with :class:`HostListUnavailable`.
    :meth:`create` builds one and fails fast when the first lookup fails; the
    plain constructor suits a service that would rather keep retrying.
    """

    log = Logger()

    name: str
    port: int
    lookup: Lookup
    clock: IReactorTime
    ttl: float = DEFAULT_DNS_TTL
    timeout: float = DEFAULT_DNS_TIMEOUT
    _snapshot: frozenset[str] = field(factory=frozenset, init=False)
    _last_error: str = field(default="", init=False)
    _attempted_at: float | None = field(default=None, init=False)
    _waiting: list[Deferred[frozenset[str]]] | None = field(default=None, init=False)

    @classmethod
    def create(
        cls,
        address: str,
        lookup: Lookup,
        clock: IReactorTime,
        ttl: float = DEFAULT_DNS_TTL,
        timeout: float = DEFAULT_DNS_TIMEOUT,
    ) -> Deferred[DNSHostList]:
        """
        Look ``address`` (``name:port``) up once and answer the host list.

        Fails with :class:`HostListUnavailable` if that first lookup fails or
        finds nothing, and raises :class:`InvalidHostAddress` at once for a
        malformed address, so a daemon with a bad DNS setting stops at start.
        """
        name, port = parse_host_port(address)
        if ttl < 0 or timeout <= 0:
            raise ValueError(f"DNS host list {address!r}: ttl and timeout must be positive")
        hosts = cls(name, port, lookup, clock, ttl, timeout)
        return hosts.resolve().addCallback(lambda _: hosts)

    def resolve(self) -> Deferred[frozenset[str]]:
        """The members, looked up again if the last attempt is older than ``ttl``."""
        now = self.clock.seconds()
        if self._waiting is not None:
            waiter: Deferred[frozenset[str]] = Deferred()
            self._waiting.append(waiter)
            return waiter.addCallback(self._available)
        if self._attempted_at is not None and now - self._attempted_at < self.ttl:
            return succeed(self._snapshot).addCallback(self._available)
        self._attempted_at = now
        self._waiting = []
        try:
            looked_up = self.lookup(self.name)
        except Exception:
            looked_up = fail()
        looked_up.addTimeout(self.timeout, self.clock)
        result: Deferred[frozenset[str]] = looked_up.addCallbacks(self._found, self._not_found)
        return result.addBoth(self._wake).addCallback(self._available)

    def _available(self, snapshot: frozenset[str]) -> frozenset[str]:
        if not snapshot:
            raise HostListUnavailable(
                f"DNS host list {join_host_port(self.name, self.port)!r} has no members yet: "
                f"lookup failed: {self._last_error}"
            )
        return snapshot

    def _found(self, addresses: Sequence[str]) -> frozenset[str]:
        snapshot = frozenset(join_host_port(a, self.port) for a in addresses)
        if not snapshot:
            self._last_error = "no address found"
            self.log.warn(
                "DNS lookup of {name} found no address; keeping the last list", name=self.name
            )
            return self._snapshot
        self._snapshot = snapshot
        return snapshot

    def _not_found(self, reason: Failure) -> frozenset[str]:
        self._last_error = reason.getErrorMessage() or repr(reason.value)
        self.log.warn(
            "DNS lookup of {name} failed ({error}); keeping the last list",
            name=self.name,
            error=reason.getErrorMessage(),
        )
        return self._snapshot

    def _wake(self, snapshot: frozenset[str]) -> frozenset[str]:
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.callback(snapshot)
        return snapshot


@implementer(IHostList)
@frozen
class LocalStrippedHostList:
    """
    Another host list without this host's own ``host:port`` entries.

    Used to find neighbours (e.g. the other build-indexes).  ``local_hosts``
    are the names and addresses of this host (see :func:`local_host_names`);
    an entry is removed when its host is one of them and its port is ``port``.
    """

    hosts: IHostList
    local_hosts: frozenset[str]
    port: int

    def resolve(self) -> Deferred[frozenset[str]]:
        """The inner list's members minus this host's."""
        return self.hosts.resolve().addCallback(self.strip)

    def strip(self, members: frozenset[str]) -> frozenset[str]:
        """``members`` minus the entries that name this host on ``port``."""
        local = frozenset(join_host_port(h, self.port) for h in self.local_hosts)
        return members - local


def local_host_names() -> frozenset[str]:
    """
    This host's names and IPv4 addresses, plus ``localhost`` and ``127.0.0.1``.

    Blocking: it may ask the system resolver about the host's own name; call
    it at start-up or through ``deferToThread``.
    """
    names = {"localhost", "127.0.0.1", socket.gethostname()}
    try:
        hostname, aliases, addresses = socket.gethostbyname_ex(socket.gethostname())
    except OSError:
        return frozenset(names)
    names.update([hostname, *aliases, *addresses])
    return frozenset(names)


@implementer(IResolutionReceiver)
@define
class _AddressCollector:
    name: str
    done: Deferred[Sequence[str]]
    addresses: list[str] = field(factory=list)

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        """Nothing to do until addresses arrive."""

    def addressResolved(self, address: IAddress) -> None:
        """Keep each IP once, in the order the resolver gives them."""
        if isinstance(address, IPv4Address | IPv6Address) and address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        """Answer the addresses, or DNSLookupError if there are none."""
        if self.addresses:
            self.done.callback(list(self.addresses))
        else:
            self.done.errback(DNSLookupError(self.name))


def name_resolver_lookup(resolver: IHostnameResolver, ipv6: bool = False) -> Lookup:
    """
    A :data:`Lookup` backed by ``resolver`` (usually ``reactor.nameResolver``).

    Asks for IPv4 addresses only (like the Go host list, which appends the
    port to A records) unless ``ipv6`` is true.
    """
    kinds: Sequence[type[IAddress]] = [IPv4Address, IPv6Address] if ipv6 else [IPv4Address]

    def lookup(name: str) -> Deferred[Sequence[str]]:
        done: Deferred[Sequence[str]] = Deferred()
        resolver.resolveHostName(_AddressCollector(name, done), name, 0, kinds, "TCP")
        return done

    return lookup
