"""
Rendezvous (highest random weight) hashing of digests onto cluster members.

Each member ``host:port`` gets a score for a digest; members are ranked by
score, highest first, and the first ``max_replica`` of them hold the blob.
Adding a member moves only the keys the new member now wins (about 1/N of
them); removing one moves only the keys it held.

**Key.** The key is the digest's :attr:`~kraken.core.Digest.shard_id` (its
first 4 hex characters, hex-decoded to 2 bytes), as in the Go Kraken: all
blobs of one shard live on the same members, which matches the store's
``<hex[0:2]>/<hex[2:4]>`` layout, makes placement a function of 65,536
shards that an operator can list, and loses nothing in balance (65,536
shards spread evenly over any realistic number of origins).

**Score.** ``blake2b(key || host:port, digest_size=8)`` read as a big-endian
unsigned 64-bit integer.  blake2b is in the standard library, fast on short
inputs and well distributed.  It is *not* the Go Kraken's murmur3, so a
mixed Go/Python ring would disagree on placement; that is not supported.
Every member has the same weight, so the Go ``-w / ln(h / 2^53)`` transform
(which exists to support weights) would not change the order and is left
out.  Ties (astronomically unlikely) are broken by the member string, so the
ranking is a pure function of the digest and the set of members.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from attrs import field, frozen

from kraken.cluster.membership import Membership
from kraken.core import Digest

DEFAULT_MAX_REPLICA = 3


class EmptyRing(LookupError):
    """The ring has no members (yet): nothing can own a digest."""


def ring_key(digest: Digest) -> bytes:
    """The 2 bytes that place ``digest`` on the ring (its shard id)."""
    return bytes.fromhex(digest.shard_id)


def rendezvous_score(key: bytes, member: str) -> int:
    """The 64-bit score of ``member`` for ``key``; higher wins."""
    h = hashlib.blake2b(key, digest_size=8)
    h.update(member.encode("utf-8"))
    return int.from_bytes(h.digest(), "big")


def rendezvous_rank(digest: Digest, members: Iterable[str]) -> list[str]:
    """Every member, best first for ``digest``."""
    key = ring_key(digest)
    return sorted(members, key=lambda m: (rendezvous_score(key, m), m), reverse=True)


def rendezvous_locations(
    digest: Digest,
    members: Iterable[str],
    healthy: frozenset[str],
    max_replica: int = DEFAULT_MAX_REPLICA,
) -> list[str]:
    """
    The members that hold ``digest``, best first.

    The healthy members among the top ``max_replica`` (unhealthy ones are
    skipped, not replaced, so a blob's replicas do not move when a host
    blips).  If none of those is healthy, the first healthy member further
    down.  If no member is healthy at all, the top ``max_replica``: when
    health checks see nothing, trying is better than refusing.  The result is
    empty only when there are no members.
    """
    ranked = rendezvous_rank(digest, members)
    top = ranked[:max_replica]
    chosen = [m for m in top if m in healthy]
    if chosen:
        return chosen
    for member in ranked[max_replica:]:
        if member in healthy:
            return [member]
    return top


def _positive(instance: object, attribute: object, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"max_replica: expected a positive integer, got {value!r}")


@frozen
class RendezvousRing:
    """
    A rendezvous hash ring over the members of a :class:`Membership`.

    Lookups read the membership's latest snapshot and never block; parent the
    membership (a service) to the daemon so that it refreshes.
    """

    membership: Membership
    max_replica: int = field(default=DEFAULT_MAX_REPLICA, validator=_positive)

    def members(self) -> frozenset[str]:
        """Every member, healthy or not."""
        return self.membership.members

    def rank(self, digest: Digest) -> list[str]:
        """Every member, best first for ``digest``, ignoring health."""
        return rendezvous_rank(digest, self.membership.members)

    def locations(self, digest: Digest) -> list[str]:
        """The replicas of ``digest`` (see :func:`rendezvous_locations`)."""
        return rendezvous_locations(
            digest, self.membership.members, self.membership.healthy, self.max_replica
        )

    def owner(self, digest: Digest) -> str:
        """The first of :meth:`locations`; raises :class:`EmptyRing` with no members."""
        locations = self.locations(digest)
        if not locations:
            raise EmptyRing(f"no cluster member can own {digest}: the ring is empty")
        return locations[0]

    def contains(self, member: str) -> bool:
        """Whether ``member`` (``host:port``) is in the ring."""
        return member in self.membership.members
