"""
The origin's blob logic behind its HTTP API (DESIGN 7).

- :mod:`kraken.origin.refresh`: one background fetch per digest from the backend on a miss.
- :mod:`kraken.origin.writeback`: the durable write-back of uploads to the backend.
- :mod:`kraken.origin.replication`: copying blobs to the other replicas of the ring.

The HTTP surface is :mod:`kraken.api.origin`; the daemon is :mod:`kraken.services.origin`.
"""
