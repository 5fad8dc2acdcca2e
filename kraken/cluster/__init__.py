"""
Hash rings, host lists and health checks.

* :mod:`kraken.cluster.hostlist`: where members come from (static, DNS).
* :mod:`kraken.cluster.health`: which members are healthy (active probes,
  passive error reports).
* :mod:`kraken.cluster.membership`: the service that refreshes both.
* :mod:`kraken.cluster.ring`: rendezvous hashing of digests onto members.

Typical wiring for an origin ring::

    hosts = StaticHostList(["origin1:15002", "origin2:15002"])
    health = ActiveHealthFilter(HTTPHealthProbe(http_client), clock=reactor)
    membership = Membership(hosts, health, clock=reactor)
    membership.setServiceParent(daemon)
    ring = RendezvousRing(membership, max_replica=3)
    ring.locations(digest)
"""

from kraken.cluster.health import (
    ActiveHealthFilter,
    HTTPHealthProbe,
    IHealthFilter,
    NoHealthFilter,
    PassiveHealthFilter,
    Probe,
    UnhealthyResponse,
)
from kraken.cluster.hostlist import (
    DNSHostList,
    HostListUnavailable,
    IHostList,
    InvalidHostAddress,
    LocalStrippedHostList,
    Lookup,
    StaticHostList,
    join_host_port,
    local_host_names,
    name_resolver_lookup,
    parse_host_port,
)
from kraken.cluster.membership import Membership, Watcher
from kraken.cluster.ring import (
    EmptyRing,
    RendezvousRing,
    rendezvous_locations,
    rendezvous_rank,
    rendezvous_score,
    ring_key,
)

__all__ = [
    "ActiveHealthFilter",
    "DNSHostList",
    "EmptyRing",
    "HTTPHealthProbe",
    "HostListUnavailable",
    "IHealthFilter",
    "IHostList",
    "InvalidHostAddress",
    "LocalStrippedHostList",
    "Lookup",
    "Membership",
    "NoHealthFilter",
    "PassiveHealthFilter",
    "Probe",
    "RendezvousRing",
    "StaticHostList",
    "UnhealthyResponse",
    "Watcher",
    "join_host_port",
    "local_host_names",
    "name_resolver_lookup",
    "parse_host_port",
    "rendezvous_locations",
    "rendezvous_rank",
    "rendezvous_score",
    "ring_key",
]
