"""
The tracker's knowledge of peers: who announced which torrent, and whom to hand out.

:mod:`kraken.peers.store` defines :class:`IPeerStore` and the in-memory store,
:mod:`kraken.peers.redis` the Redis store shared by several trackers,
:mod:`kraken.peers.handout` the policy that orders an announce's answer and
:mod:`kraken.peers.origins` the origins of a blob, learnt from the origin ring.
"""
