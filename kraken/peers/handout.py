"""
Which peers an announce hands out, and in what order (DESIGN 6).

Up to ``limit`` (50) random agents from the peer store plus every origin of the
blob, so the list may be longer than ``limit``; ordered complete agents first,
then origins, then incomplete agents, so that a downloader fills its
connection slots with seeders before it loads the origins.  The requester is
never in its own list (the Go tracker meant this but compared pointers).

A requester that is already complete gets an empty list: it only announces so
that the tracker keeps handing it out, and it has nothing to download.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from kraken.core import PeerID, PeerInfo

if TYPE_CHECKING:
    # Annotations only: the policy itself imports nothing of Twisted (bench.sim uses it).
    from kraken.peers.store import StoredPeer

#: DESIGN 5/6: how many store peers an announce hands out.
DEFAULT_HANDOUT_LIMIT: Final = 50

PRIORITY_COMPLETE_AGENT: Final = 0
PRIORITY_ORIGIN: Final = 1
PRIORITY_INCOMPLETE_AGENT: Final = 2


def priority(peer: PeerInfo) -> int:
    """The class of ``peer`` in the handout order (lower is handed out first)."""
    if peer.origin:
        return PRIORITY_ORIGIN
    return PRIORITY_COMPLETE_AGENT if peer.complete else PRIORITY_INCOMPLETE_AGENT


def hand_out(
    requester: PeerInfo,
    agents: Sequence[PeerInfo],
    origins: Iterable[PeerInfo],
    limit: int = DEFAULT_HANDOUT_LIMIT,
    rng: random.Random | None = None,
) -> list[PeerInfo]:
    """
    The answer to ``requester``'s announce.

    ``agents`` come from the peer store (already random; the store is asked for
    ``limit + 1`` so that dropping the requester still leaves ``limit``);
    ``origins`` from the origin ring.  Duplicates by peer id are dropped, an
    origin winning over an agent entry with the same id.  Within a class the
    order is random.
    """
    if requester.complete:
        return []
    rng = rng or random.Random()
    me: PeerID = requester.peer_id
    chosen_origins: dict[PeerID, PeerInfo] = {}
    for origin in origins:
        if origin.peer_id != me and origin.peer_id not in chosen_origins:
            chosen_origins[origin.peer_id] = PeerInfo(
                origin.peer_id, origin.ip, origin.port, origin=True, complete=True
            )
    seen = set(chosen_origins) | {me}
    chosen_agents: list[PeerInfo] = []
    for agent in agents:
        if agent.peer_id not in seen and not agent.origin:
            seen.add(agent.peer_id)
            chosen_agents.append(agent)
    if len(chosen_agents) > limit:
        chosen_agents = rng.sample(chosen_agents, limit)
    origin_list = list(chosen_origins.values())
    rng.shuffle(origin_list)
    complete = [a for a in chosen_agents if a.complete]
    incomplete = [a for a in chosen_agents if not a.complete]
    return complete + origin_list + incomplete


def hand_out_stored(
    requester: PeerInfo,
    agents: Sequence[StoredPeer],
    origins: Iterable[StoredPeer],
    limit: int = DEFAULT_HANDOUT_LIMIT,
    rng: random.Random | None = None,
) -> list[StoredPeer]:
    """
    :func:`hand_out` over :class:`StoredPeer` records (the tracker's hot path).

    Same policy and order; ``origins`` must already be origin records
    (``origin`` and ``complete`` true), as the tracker caches them.
    ``agents`` must be in random order, as :meth:`IPeerStore.announce`
    promises, so the first ``limit`` of them are a random choice (no second
    sampling).
    """
    if requester.complete:
        return []
    rng = rng or random.Random()
    me = requester.peer_id.hex
    chosen_origins: dict[str, StoredPeer] = {}
    for origin in origins:
        if origin.peer_id != me and origin.peer_id not in chosen_origins:
            chosen_origins[origin.peer_id] = origin
    seen = set(chosen_origins)
    seen.add(me)
    chosen_agents: list[StoredPeer] = []
    for agent in agents:
        if agent.peer_id not in seen and not agent.origin:
            seen.add(agent.peer_id)
            chosen_agents.append(agent)
    del chosen_agents[limit:]
    origin_list = list(chosen_origins.values())
    if len(origin_list) > 1:
        rng.shuffle(origin_list)
    complete = [a for a in chosen_agents if a.complete]
    incomplete = [a for a in chosen_agents if not a.complete]
    return complete + origin_list + incomplete
