"""Hypothesis over random event sequences: the piece dispatcher's invariants."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Bitfield, MetaInfo, PeerID
from kraken.torrent.actions import Close, ConnId, EngineConfig, Send
from kraken.torrent.dispatch import PayloadVerdict, PieceDispatcher
from kraken.torrent.messages import PieceRequest

N = 12
META = MetaInfo.of_bytes(bytes(range(256)) * 4 * N, 1024)

events = st.lists(
    st.tuples(
        st.sampled_from(
            ["add", "remove", "announce", "complete", "receive", "fail", "bad", "error", "tick"]
        ),
        st.integers(0, 7),
        st.integers(0, N - 1),
        st.sets(st.integers(0, N - 1)),
    ),
    max_size=60,
)


def check_invariants(test: SynchronousTestCase, d: PieceDispatcher) -> None:
    """The invariants documented in kraken.torrent.dispatch."""
    now = d._now()
    for peer in d.peers.values():
        ceiling = max(peer.limit, d.config.pipeline_limit) if peer.origin else peer.limit
        test.assertLessEqual(len(peer.pending), ceiling)
        for i in peer.pending:
            test.assertNotIn(i, d.have, "request for a piece we have")
            test.assertIn(i, peer.bitfield, "request to a peer lacking the piece")
            test.assertIn(peer.conn, d.requested[i])
        # The integer-set selection _fill uses picks exactly what may_request allows.
        candidates = list(d._candidates(peer, now))
        test.assertEqual(candidates, [i for i in sorted(d.missing) if d.may_request(peer, i, now)])
        # ... and chooses among them rarest first (for an origin: fewest agents first).
        chosen = d._choose(d._candidate_mask(peer, now), 2, origin=peer.origin)
        test.assertEqual(len(set(chosen)), min(2, len(candidates)))
        test.assertLessEqual(set(chosen), set(candidates))

        def key(i: int, origin: bool = peer.origin) -> tuple[int, int]:
            return (d.agent_avail[i] if origin else 0, d.avail[i])

        rest = [key(i) for i in candidates if i not in chosen]
        if chosen and rest:
            test.assertLessEqual(max(key(i) for i in chosen), min(rest))
    # The availability levels the selection walks match the counts.
    for levels, counts in ((d.levels, d.avail), (d.agent_levels, d.agent_avail)):
        for k, level in enumerate(levels):
            test.assertEqual(level, sum(1 << i for i, c in enumerate(counts) if c == k), k)
        test.assertTrue(all(c < len(levels) for c in counts))
    if not d.endgame():
        for i, conns in d.requested.items():
            test.assertLessEqual(len(conns), 1, f"piece {i} requested twice outside endgame")
    for i in d.missing:
        if i in d.writing or d.requested.get(i):
            continue
        for peer in d.peers.values():
            if len(peer.pending) < d.limit_of(peer) and i in peer.bitfield:
                test.assertFalse(
                    d.may_request(peer, i, now), f"piece {i} idle while {peer.conn} could serve it"
                )


class DispatcherPropertyTests(SynchronousTestCase):
    """Random peers joining, leaving, announcing, delivering, failing."""

    @settings(max_examples=150, deadline=None)
    @given(
        events,
        st.sets(st.integers(0, N - 1)),
        st.integers(0, 2**32),
        st.dictionaries(st.integers(0, 7), st.sets(st.integers(0, N - 1)), max_size=6),
    )
    def test_invariants(self, evs, have, seed, initial) -> None:
        """
        After every event the dispatcher's invariants hold and requests are well-formed.

        ``initial`` peers (even connection numbers are origins) join before the events,
        so that most examples have agents and origins serving at once.
        """
        now = [0.0]
        d = PieceDispatcher(
            META.infohash,
            META,
            Bitfield.of(N, have),
            EngineConfig(),
            rng=random.Random(seed),
            now=lambda: now[0],
        )
        evs = [("add", c, 0, bits) for c, bits in initial.items()] + evs
        for kind, c, index, bits in evs:
            conn = ConnId(c)
            actions: list = []
            if kind == "add" and conn not in d.peers:
                pid = PeerID(f"{c:040x}")
                actions = d.add_peer(conn, pid, Bitfield.of(N, bits), origin=c % 2 == 0)
            elif kind == "remove":
                actions = d.remove_peer(conn)
            elif kind == "announce":
                actions = d.on_announce(conn, index)
            elif kind == "complete":
                actions = d.on_complete(conn)
            elif kind in ("receive", "fail", "bad") and conn in d.peers:
                pending = sorted(d.peers[conn].pending)
                if pending:
                    i = pending[index % len(pending)]
                    verdict, actions = d.payload_start(conn, i, META.piece_size(i))
                    self.assertIn(verdict, (PayloadVerdict.RECEIVE, PayloadVerdict.DISCARD))
                    if verdict == PayloadVerdict.RECEIVE:
                        verdict, more = d.payload_end(conn, i)
                        actions += more
                        if verdict == PayloadVerdict.ACCEPT:
                            if kind == "receive":
                                actions += d.piece_written(conn, i)
                            else:
                                actions += d.piece_failed(conn, i, kind == "bad", "x")
            elif kind == "error":
                actions = d.on_error(conn, index)
            elif kind == "tick":
                now[0] += 3.0
                actions = d.expire()
            for a in actions:
                if isinstance(a, Close):
                    actions_after = d.remove_peer(a.conn)
                    self.assertFalse(any(getattr(x, "conn", None) == a.conn for x in actions_after))
                if isinstance(a, Send) and isinstance(a.message, PieceRequest):
                    self.assertNotIn(a.message.index, d.have)
            check_invariants(self, d)
        self.assertEqual(d.missing, set(d.have.missing()))


class ChoiceTests(SynchronousTestCase):
    """The order :meth:`PieceDispatcher._choose` walks the availability levels in."""

    def test_origins_take_what_fewest_agents_have_before_what_fewest_peers_have(self) -> None:
        """
        Piece 0: one agent and one origin have it; piece 5: three origins.  An
        agent peer is asked for the rarer piece 0; an origin for piece 5, which no agent has.
        """
        d = PieceDispatcher(
            META.infohash,
            META,
            Bitfield(N),
            EngineConfig(),
            rng=random.Random(1),
            now=lambda: 0.0,
        )
        for c, bits, origin in ((1, {0}, False), (2, {0, 5}, True), (4, {5}, True), (6, {5}, True)):
            d.add_peer(ConnId(c), PeerID(f"{c:040x}"), Bitfield.of(N, bits), origin=origin)
        both = 1 << 0 | 1 << 5
        self.assertEqual((d.avail[0], d.agent_avail[0], d.avail[5], d.agent_avail[5]), (2, 1, 3, 0))
        self.assertEqual(d._choose(both, 1, origin=False), [0])
        self.assertEqual(d._choose(both, 1, origin=True), [5])
        self.assertEqual(sorted(d._choose(both, 5, origin=True)), [0, 5])
