"""
The build-index's domain objects, kept apart from its HTTP API (:mod:`kraken.api.build_index`).

- :mod:`kraken.buildindex.tags`: tag names (distribution grammar) and the tag store over
  the backends (write-through, last write wins);
- :mod:`kraken.buildindex.dependencies`: what a tag needs at the origin (the manifest,
  child manifests, configs and layers) and the check that the origin has it;
- :mod:`kraken.buildindex.replication`: ``remotes`` rules and the durable task executor
  that copies a tag and its blobs to another cluster.

They live here rather than in ``api/`` because the replication executor runs in the
retry queue, outside any request, and the tag store is used by both.
"""
