"""
Which announces the tracker believes (issue 18): an announce speaks only for its own address.

The tracker hands out what agents announce, so an announce that could name any
address would let one client send a whole swarm to dial hosts that are not
peers (the cloud metadata service at 169.254.169.254, a victim's port, or
nothing at all).  :meth:`AdmissionPolicy.admit` decides, per announce:

- the **source** is the TCP peer of the request, unless that peer is in
  ``trusted_forwarders`` (a load balancer or proxy in front of the tracker):
  then the rightmost ``X-Forwarded-For`` address that is not itself a trusted
  forwarder, or, without that header, whatever the body says (the forwarder
  vouches for it);
- the body's ``peer.ip`` must not be **impossible**: unspecified, multicast,
  link-local or reserved (400), nor loopback unless the TCP peer is loopback
  too (400);
- the body's ``peer.ip`` must **equal the source** (403 otherwise).

So every agent of a herd or a single-host test, all on 127.0.0.1, keeps
working, and an agent in its own network namespace announces the address it
reaches the tracker from.  Origins never announce: the tracker learns them
from the origin ring.

The **identity** of a client (:meth:`AdmissionPolicy.identity`) is its
address, except on loopback, where every process of the tracker's own host
shares one address and the peer id tells them apart; the stores bound the
peers one address may hold per torrent, and a report counts once per identity.
"""

from __future__ import annotations

from typing import Final

from attrs import field, frozen

from kraken.core import PeerInfo
from kraken.core.address import (
    IPAddress,
    IPNetwork,
    impossible_peer_reason,
    in_networks,
    parse_ip,
)
from kraken.peers.announce import InvalidAnnounce

__all__ = [
    "DEFAULT_MAX_PEERS_PER_ADDRESS",
    "AdmissionPolicy",
    "AnnounceForbidden",
    "Source",
]

#: Distinct peers (ids) one address may hold per torrent (loopback: no bound).
DEFAULT_MAX_PEERS_PER_ADDRESS: Final = 4

#: ``X-Forwarded-For`` entries looked at, from the right (a longer header is refused).
MAX_FORWARDED: Final = 16
#: Verdicts :meth:`AdmissionPolicy.check` remembers (then it starts over).
MAX_VERDICTS: Final = 65536


class AnnounceForbidden(Exception):
    """An announce or report that speaks for an address it did not come from (403)."""


@frozen
class Source:
    """
    Where a request came from: its TCP peer, and the address it may speak for.

    ``address`` is None when a trusted forwarder vouches for the body.
    """

    peer: IPAddress | None
    address: IPAddress | None

    @property
    def local(self) -> bool:
        """Whether the TCP peer is this host (loopback, or not an IP connection at all)."""
        return self.peer is None or self.peer.is_loopback


@frozen
class AdmissionPolicy:
    """How the tracker judges the address in an announce or report (see the module doc)."""

    trusted_forwarders: tuple[IPNetwork, ...] = ()
    #: (client host, X-Forwarded-For, announced ip) -> canonical ip, or the error to raise.
    _verdicts: dict[tuple[object, bytes | None, str], str | Exception] = field(
        factory=dict, eq=False, repr=False
    )

    def check(self, peer: PeerInfo, client_host: object, forwarded_for: bytes | None) -> PeerInfo:
        """
        :meth:`admit` of ``peer`` from :meth:`source` ``(client_host, forwarded_for)``.

        The tracker's hot path: agents announce again and again from the same address
        with the same body address, so each verdict is remembered (up to
        :data:`MAX_VERDICTS` of them) and parsing runs once per client.
        """
        key = (client_host, forwarded_for, peer.ip)
        verdict = self._verdicts.get(key)
        if verdict is None:
            try:
                verdict = self.admit(peer, self.source(client_host, forwarded_for)).ip
            except (InvalidAnnounce, AnnounceForbidden) as e:
                verdict = e
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        if isinstance(verdict, Exception):
            raise type(verdict)(*verdict.args)
        if verdict == peer.ip:
            return peer
        return PeerInfo(peer.peer_id, verdict, peer.port, peer.origin, peer.complete)

    def source(self, client_host: object, forwarded_for: bytes | None) -> Source:
        """
        The :class:`Source` of a request from ``client_host`` (the TCP peer's host,
        None or not a string for a connection that is not IP, e.g. a UNIX socket,
        which counts as a trusted forwarder: only local processes can open one).
        """
        peer: IPAddress | None = None
        if isinstance(client_host, str):
            try:
                peer = parse_ip(client_host)
            except ValueError:
                peer = None
        if peer is not None and not (
            self.trusted_forwarders and in_networks(peer, self.trusted_forwarders)
        ):
            return Source(peer, peer)
        if forwarded_for is None:
            return Source(peer, None)
        return Source(peer, self._forwarded(forwarded_for))

    def _forwarded(self, header: bytes) -> IPAddress:
        entries = [e.strip() for e in header.decode("latin-1").split(",")]
        if len(entries) > MAX_FORWARDED:
            raise InvalidAnnounce(f"X-Forwarded-For: more than {MAX_FORWARDED} addresses")
        found: IPAddress | None = None
        for entry in reversed(entries):
            try:
                found = parse_ip(entry)
            except ValueError:
                raise InvalidAnnounce(
                    f"X-Forwarded-For: {entry[:60]!r} is not an IP address"
                ) from None
            if not in_networks(found, self.trusted_forwarders):
                return found
        assert found is not None  # split() gives at least one entry
        return found

    def admit(self, peer: PeerInfo, source: Source) -> PeerInfo:
        """
        ``peer`` as the tracker records it (its ip in canonical form), if ``source`` may
        announce it.

        Raises :class:`~kraken.peers.announce.InvalidAnnounce` (400) for an impossible
        address and :class:`AnnounceForbidden` (403) for one that is not the source's.
        """
        try:
            announced = parse_ip(peer.ip)
        except ValueError:
            raise InvalidAnnounce(f"peer.ip: {peer.ip!r} is not an IP address") from None
        reason = impossible_peer_reason(announced)
        if reason is not None:
            raise InvalidAnnounce(f"peer.ip: {peer.ip} is {reason}: no peer can be reached there")
        if announced.is_loopback and not source.local:
            raise InvalidAnnounce(
                f"peer.ip: {peer.ip} is loopback, but the announce came from {source.peer}"
            )
        if source.address is not None and announced != source.address:
            raise AnnounceForbidden(
                f"peer.ip: {peer.ip} is not the address this request came from "
                f"({source.address}); an announce speaks only for its own address"
            )
        canonical = str(announced)
        if canonical == peer.ip:
            return peer
        return PeerInfo(peer.peer_id, canonical, peer.port, peer.origin, peer.complete)

    @staticmethod
    def identity(peer: PeerInfo) -> str:
        """
        Who ``peer`` (as :meth:`admit` returned it) is, for counting: its address, or on
        loopback its address and peer id.
        """
        if peer.ip.startswith("127.") or peer.ip == "::1":
            return f"{peer.ip}/{peer.peer_id.hex}"
        return peer.ip
