"""
twistd plugins for the Kraken daemons.

Only lazy ServiceMakers live here, so that ``twistd --help`` does not import
the daemons: one per daemon and one for the herd, each naming the module whose
``Options`` and ``makeService`` twistd loads when that plugin is asked for.
"""

from twisted.application.service import ServiceMaker

kraken_tracker = ServiceMaker(
    "Kraken tracker", "kraken.services.tracker", "Peer tracker", "kraken-tracker"
)
kraken_agent = ServiceMaker(
    "Kraken agent",
    "kraken.services.agent",
    "Per-host agent: local registry, P2P downloads, cache",
    "kraken-agent",
)
kraken_origin = ServiceMaker(
    "Kraken origin",
    "kraken.services.origin",
    "Blob origin (uploads, seeding, write-back)",
    "kraken-origin",
)
kraken_build_index = ServiceMaker(
    "Kraken build-index",
    "kraken.services.build_index",
    "Tags -> manifest digests; replication of tags and blobs to other clusters",
    "kraken-build-index",
)
kraken_proxy = ServiceMaker(
    "Kraken proxy",
    "kraken.services.proxy",
    "Registry v2 for push and pull: blobs to the origin ring, tags to the build-index",
    "kraken-proxy",
)
kraken_herd = ServiceMaker(
    "Kraken herd",
    "kraken.services.herd",
    "Tracker, origin, build-index, proxy and an agent in one process (single-host defaults)",
    "kraken-herd",
)
