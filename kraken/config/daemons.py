"""
The configuration of each daemon, and of the herd that runs them all in one process.

With no configuration file every daemon gets the single-host defaults of
DESIGN 11: it listens on 127.0.0.1 at its default port, finds the other
components at theirs on 127.0.0.1, and keeps its data under
``./kraken-data/<daemon>/`` (one ``data_dir`` setting moves it all).
"""

# ruff: noqa: RUF009
# setting() and section() are attrs field specifiers (they return attrs.field(...)); RUF009
# cannot tell them from ordinary calls in a class body.

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from attrs import Factory, frozen

from kraken.config.sections import (
    ActiveClusterClientConfig,
    ActiveHealthConfig,
    AdvertisedListenConfig,
    BackendEntry,
    BackoffConfig,
    CleanupConfig,
    HashRingConfig,
    HostListConfig,
    HTTPServerConfig,
    ListenConfig,
    MetainfoConfig,
    PassiveClusterClientConfig,
    PassiveHealthConfig,
    Problems,
    RetryQueueConfig,
    SchedulerConfig,
    TLSConfig,
    UploadsConfig,
    default_backends,
    default_host,
    local_endpoint,
)
from kraken.config.structure import section, setting
from kraken.config.values import (
    Duration,
    Endpoint,
    HostPort,
    Network,
    NonNegativeInt,
    Path,
    PositiveInt,
    Regex,
    Size,
)

# DESIGN 11: the ports of the Go devcluster.
PROXY_PORT: Final = 15000
ORIGIN_PEER_PORT: Final = 15001
ORIGIN_SERVER_PORT: Final = 15002
TRACKER_PORT: Final = 15003
BUILD_INDEX_PORT: Final = 15004
AGENT_REGISTRY_PORT: Final = 16000
AGENT_PEER_PORT: Final = 16001
AGENT_SERVER_PORT: Final = 16002

#: Root of all data in the single-host defaults; each daemon uses ``<root>/<daemon>``.
DEFAULT_DATA_ROOT: Final = "./kraken-data"

LOCALHOST: Final = "127.0.0.1"


def _data_dir_setting(daemon: str) -> Any:
    return setting(
        f"{DEFAULT_DATA_ROOT}/{daemon}",
        doc="Directory of everything this daemon keeps on disk (relative to the working "
        "directory).",
    )


def _backends_setting() -> Any:
    return setting(
        Factory(lambda self: default_backends(self.data_dir), takes_self=True),
        doc="Ordered list; the first entry whose `namespace` regex matches a namespace "
        "serves it. Each entry's backend options are checked with the rest of the file.",
        default_doc="`[{namespace: .*, backend: {fs: {root: <data_dir>/../backend}}}]`",
    )


def _check_backends(backends: tuple[BackendEntry, ...]) -> Problems:
    if not backends:
        yield ("backends", "expected at least one entry")


# -- agent ----------------------------------------------------------------------------------


@frozen(kw_only=True)
class LocalRegistryConfig:
    """The agent's read-only registry v2 for docker/containerd on this host (DESIGN 8)."""

    listen: Endpoint = setting(doc="Twisted server endpoint string.")
    allowed_networks: tuple[Network, ...] = setting(
        ("127.0.0.0/8", "::1/128"),
        doc="Client addresses allowed to use the registry; others get 403.",
    )
    tag_cache_ttl: Duration = setting(
        5.0, doc="How long a tag resolved through the build-index is reused (tags are mutable)."
    )


@frozen(kw_only=True)
class TrackerClientConfig:
    """The trackers an agent talks to: a hash ring whose members are checked passively."""

    hosts: HostListConfig = setting(doc="The trackers.")
    hashring: HashRingConfig = section(HashRingConfig, doc="Which trackers own a blob.")
    passive_health: PassiveHealthConfig = section(PassiveHealthConfig, doc="Passive health checks.")


@frozen(kw_only=True)
class AgentConfig:
    """Configuration of ``twistd kraken-agent``: one per host."""

    data_dir: Path = _data_dir_setting("agent")
    registry: LocalRegistryConfig = section(
        LocalRegistryConfig,
        doc="Read-only registry v2 for docker/containerd on this host.",
        listen=local_endpoint(AGENT_REGISTRY_PORT),
    )
    server: ListenConfig = section(
        ListenConfig,
        doc="Agent API: blob downloads, tags, preload, health, metrics.",
        listen=local_endpoint(AGENT_SERVER_PORT),
    )
    peer: AdvertisedListenConfig = section(
        AdvertisedListenConfig,
        doc="Peer protocol listener; `advertise` is what the tracker tells other peers.",
        listen=local_endpoint(AGENT_PEER_PORT),
    )
    tracker: TrackerClientConfig = section(
        TrackerClientConfig,
        doc="Trackers, a hash ring checked passively.",
        hosts=default_host(f"{LOCALHOST}:{TRACKER_PORT}"),
    )
    build_index: PassiveClusterClientConfig = section(
        PassiveClusterClientConfig,
        doc="Build-indexes of this cluster (tag lookups), checked passively.",
        hosts=default_host(f"{LOCALHOST}:{BUILD_INDEX_PORT}"),
    )
    scheduler: SchedulerConfig = section(SchedulerConfig, doc="The P2P engine.")
    metainfo_poll: BackoffConfig = section(
        BackoffConfig, doc="Polling for metainfo while the tracker answers 202."
    )
    cleanup: CleanupConfig = section(
        CleanupConfig, doc="Eviction from the download area and the cache.", ttl="24h"
    )
    http: HTTPServerConfig = section(
        HTTPServerConfig, doc="Limits of the HTTP listeners against slow and idle clients."
    )
    tls: TLSConfig = section(
        TLSConfig,
        doc="TLS of calls to trackers, origins and build-indexes (the agent's own ports "
        "stay plain HTTP: `cert`/`key` are not used).",
    )


# -- origin ---------------------------------------------------------------------------------


@frozen(kw_only=True)
class OriginHashRingConfig(HashRingConfig):
    """The origin ring, plus how long a starting origin waits to find itself in it."""

    membership_wait_timeout: Duration = setting(
        60.0, doc="A starting origin not listed in `cluster` after this long exits."
    )
    membership_wait_interval: Duration = setting(
        0.5, doc="How often a starting origin looks for itself in `cluster`."
    )


@frozen(kw_only=True)
class BackendFetchConfig:
    """Fetching a blob missing from the cache from the backend (one fetch per digest)."""

    size_limit: Size = setting(0, doc="Larger blobs are refused (500); 0: no limit.")
    error_ttl: Duration = setting(
        15.0, doc="A failed fetch's error is answered for this long before trying again."
    )


@frozen(kw_only=True)
class ReplicationConfig:
    """Copying a committed or fetched blob to the other replicas of the ring."""

    write_back_stagger: Duration = setting(
        1800.0,
        doc="Replica i (1, 2...) writes the blob back to the backend after i times this, "
        "unless the owner already did.",
    )
    upload_chunk_size: Size = setting(32 * 1024**2, doc="Chunk size of uploads to replicas.")


@frozen(kw_only=True)
class OriginConfig:
    """Configuration of ``twistd kraken-origin``: one per member of the origin ring."""

    data_dir: Path = _data_dir_setting("origin")
    server: AdvertisedListenConfig = section(
        AdvertisedListenConfig,
        doc="Origin HTTP API; `advertise` is this origin's label in the hash ring.",
        listen=local_endpoint(ORIGIN_SERVER_PORT),
    )
    peer: AdvertisedListenConfig = section(
        AdvertisedListenConfig,
        doc="Peer protocol listener (seeding); `advertise` is what the tracker hands out.",
        listen=local_endpoint(ORIGIN_PEER_PORT),
    )
    cluster: HostListConfig = section(
        HostListConfig,
        doc="Members of the origin ring (their `server.advertise` addresses).",
        static=[f"{LOCALHOST}:{ORIGIN_SERVER_PORT}"],
    )
    hashring: OriginHashRingConfig = section(OriginHashRingConfig, doc="The origin ring.")
    healthcheck: ActiveHealthConfig = section(
        ActiveHealthConfig, doc="Active health checks of the other members."
    )
    scheduler: SchedulerConfig = section(
        SchedulerConfig,
        doc="The P2P engine (origins only seed).",
        bandwidth={"enabled": False},
    )
    metainfo: MetainfoConfig = section(MetainfoConfig, doc="Piece lengths of new metainfo.")
    cleanup: CleanupConfig = section(
        CleanupConfig, doc="Eviction from the cache (blobs pending write-back are kept)."
    )
    writeback: RetryQueueConfig = section(
        RetryQueueConfig, doc="Durable queue writing uploaded blobs to the backend."
    )
    backend_fetch: BackendFetchConfig = section(
        BackendFetchConfig, doc="Fetching blobs missing from the cache from the backend."
    )
    replication: ReplicationConfig = section(
        ReplicationConfig, doc="Copying blobs to the other replicas."
    )
    backends: tuple[BackendEntry, ...] = _backends_setting()
    http: HTTPServerConfig = section(
        HTTPServerConfig, doc="Limits of the HTTP listeners against slow and idle clients."
    )
    uploads: UploadsConfig = section(UploadsConfig, doc="Open blob upload sessions.")
    tls: TLSConfig = section(TLSConfig, doc="TLS of the API and of calls to other origins.")

    def config_problems(self) -> Problems:
        """At least one backend."""
        return _check_backends(self.backends)


# -- tracker --------------------------------------------------------------------------------


@frozen(kw_only=True)
class RedisConfig:
    """A Redis server holding the tracker's peer store (shared by several trackers)."""

    address: HostPort = setting(f"{LOCALHOST}:6379", doc="`host:port` of the Redis server.")
    database: NonNegativeInt = setting(0, doc="Database number.")
    password_file: Path | None = setting(
        None, doc="File holding the Redis password (AUTH); null: no password."
    )
    pool_size: PositiveInt = setting(10, doc="Connections kept open.")
    connect_timeout: Duration = setting(5.0, doc="Timeout of connecting.")
    key_prefix: str = setting("kraken:peers:", doc="Prefix of every key the tracker writes.")
    window: Duration = setting(
        3600.0, doc="Announces are grouped in windows this long (expiry granularity)."
    )


@frozen(kw_only=True)
class PeerStoreConfig:
    """Where the tracker keeps who has which blob."""

    kind: Literal["memory", "redis"] = setting(
        "memory", doc="`memory` (this process only) or `redis` (shared)."
    )
    cleanup_interval: Duration = setting(
        300.0, doc="How often expired peers are removed from the memory store."
    )
    redis: RedisConfig = section(RedisConfig, doc="Used when `kind` is `redis`.")


@frozen(kw_only=True)
class MetainfoCacheConfig:
    """The tracker's cache of origin metainfo answers; concurrent misses share one request."""

    ok_ttl: Duration = setting(300.0, doc="How long a 200 answer is reused.")
    other_ttl: Duration = setting(1.0, doc="How long any other answer (202, 404...) is reused.")
    max_entries: PositiveInt = setting(10000, doc="Most answers kept (least recently used go).")


@frozen(kw_only=True)
class AdmissionConfig:
    """Which announces the tracker believes, and which peers it stops handing out."""

    trusted_forwarders: tuple[Network, ...] = setting(
        (),
        doc="Proxies or load balancers in front of the tracker: from these, the rightmost "
        "`X-Forwarded-For` address that is not one of them is the announce's source (without "
        "the header, the announced address is believed). From anyone else the source is the "
        "TCP peer, and an announce may only name that address (403 otherwise).",
    )
    max_peers_per_address: NonNegativeInt = setting(
        4,
        doc="Distinct peers (ids) one address may have in a torrent; a new one beyond drops "
        "that address's least recently announced. Loopback is not bounded (the herd); 0: no "
        "bound.",
    )
    quarantine: Duration = setting(
        300.0,
        doc="A peer that agents report they could not dial (or that never answered the "
        "handshake) is left out of announce answers this long; reports count within this "
        "window.",
    )
    quarantine_reporters: PositiveInt = setting(
        2,
        doc="Different clients (addresses; on loopback, peer ids) whose reports quarantine a peer.",
    )


@frozen(kw_only=True)
class TrackerConfig:
    """Configuration of ``twistd kraken-tracker``."""

    data_dir: Path = _data_dir_setting("tracker")
    server: ListenConfig = section(
        ListenConfig,
        doc="Tracker HTTP API (announce, metainfo).",
        listen=local_endpoint(TRACKER_PORT),
    )
    announce_interval: Duration = setting(3.0, doc="Interval agents are told to announce at.")
    handout_limit: PositiveInt = setting(
        50, doc="Most peers in one announce answer (plus the blob's origins)."
    )
    peer_ttl: Duration = setting(
        18000.0, doc="A peer is forgotten this long after its last announce."
    )
    peer_store: PeerStoreConfig = section(PeerStoreConfig, doc="Where announces are kept.")
    origin: ActiveClusterClientConfig = section(
        ActiveClusterClientConfig,
        doc="Origins asked for metainfo and locations.",
        hosts=default_host(f"{LOCALHOST}:{ORIGIN_SERVER_PORT}"),
    )
    metainfo_cache: MetainfoCacheConfig = section(
        MetainfoCacheConfig, doc="In-process cache of origin metainfo answers."
    )
    admission: AdmissionConfig = section(
        AdmissionConfig, doc="Which announces are believed; unreachable peers' quarantine."
    )
    http: HTTPServerConfig = section(
        HTTPServerConfig, doc="Limits of the HTTP listeners against slow and idle clients."
    )
    tls: TLSConfig = section(TLSConfig, doc="TLS of the API and of calls to origins.")


# -- build-index ----------------------------------------------------------------------------


@frozen(kw_only=True)
class TagTypeRule:
    """How the dependencies of tags in matching namespaces are found."""

    namespace: Regex = setting(doc="Regular expression matched against the tag's repository.")
    type: Literal["docker", "default"] = setting(
        doc="`docker`: the manifest and every blob it references; `default`: the digest only."
    )


@frozen(kw_only=True)
class DuplicatesConfig:
    """Which tag duplicates (PUTs from the other members of the cluster) are honoured."""

    trusted_networks: tuple[Network, ...] = setting(
        ("127.0.0.0/8", "::1/128"),
        doc="Over plain HTTP, duplicates are honoured only from client addresses in these "
        "networks (over TLS only from a client certificate signed by `tls.ca`); list the "
        "build-indexes' networks here only if nobody else can send from them. Others get 403.",
    )
    max_clock_skew: Duration = setting(
        60.0,
        doc="A duplicate's write time may be this far ahead of this build-index's clock; "
        "later (or not finite) is refused with 400.",
    )


@frozen(kw_only=True)
class BuildIndexConfig:
    """Configuration of ``twistd kraken-build-index``."""

    data_dir: Path = _data_dir_setting("build-index")
    server: AdvertisedListenConfig = section(
        AdvertisedListenConfig,
        doc="Build-index HTTP API; `advertise` identifies this host within `cluster`.",
        listen=local_endpoint(BUILD_INDEX_PORT),
    )
    cluster: ActiveClusterClientConfig = section(
        ActiveClusterClientConfig,
        doc="All build-indexes of this cluster (this one included); tags are duplicated "
        "to the others.",
        hosts=default_host(f"{LOCALHOST}:{BUILD_INDEX_PORT}"),
    )
    origin: ActiveClusterClientConfig = section(
        ActiveClusterClientConfig,
        doc="Origins of this cluster (dependency checks, replication).",
        hosts=default_host(f"{LOCALHOST}:{ORIGIN_SERVER_PORT}"),
    )
    remotes: Mapping[HostPort, tuple[Regex, ...]] = setting(
        factory=dict,
        doc="Build-index of another cluster -> regexes of the tags replicated to it.",
    )
    tag_types: tuple[TagTypeRule, ...] = setting(
        (TagTypeRule(namespace=".*", type="docker"),),
        doc="How the dependencies of a tag are found; the first matching rule wins and a tag "
        "matching none is refused.",
    )
    write_through: bool = setting(
        True, doc="A tag PUT writes the backend before answering (else it is queued)."
    )
    duplicate_put_stagger: Duration = setting(
        1200.0, doc="Delay step of tag copies sent to the other build-indexes."
    )
    duplicate_replicate_stagger: Duration = setting(
        1200.0, doc="Delay step of replication tasks handed to the other build-indexes."
    )
    duplicates: DuplicatesConfig = section(
        DuplicatesConfig, doc="Who may send tag duplicates, and how far ahead their times may be."
    )
    writeback: RetryQueueConfig = section(
        RetryQueueConfig,
        doc="Not used: the build-index writes a tag to its backend before it answers the "
        "PUT; accepted so that existing files still load.",
    )
    tag_replication: RetryQueueConfig = section(
        RetryQueueConfig, doc="Durable queue replicating tags to remotes."
    )
    backends: tuple[BackendEntry, ...] = _backends_setting()
    http: HTTPServerConfig = section(
        HTTPServerConfig, doc="Limits of the HTTP listeners against slow and idle clients."
    )
    tls: TLSConfig = section(
        TLSConfig, doc="TLS of the API and of calls to origins, build-indexes and remotes."
    )

    def config_problems(self) -> Problems:
        """At least one backend."""
        return _check_backends(self.backends)


# -- proxy ----------------------------------------------------------------------------------


@frozen(kw_only=True)
class OriginClientConfig(ActiveClusterClientConfig):
    """Origins a proxy uploads to."""

    upload_chunk_size: Size = setting(32 * 1024**2, doc="Chunk size of uploads to origins.")


@frozen(kw_only=True)
class PrefetchConfig:
    """Which blobs of a tag the proxy's prefetch endpoint warms."""

    min_blob_size: Size = setting(0, doc="Smaller blobs are skipped.")
    max_blob_size: Size = setting(50 * 1024**3, doc="Larger blobs are skipped.")


@frozen(kw_only=True)
class ProxyConfig:
    """Configuration of ``twistd kraken-proxy``."""

    data_dir: Path = _data_dir_setting("proxy")
    server: ListenConfig = section(
        ListenConfig,
        doc="Registry v2 for push and pull (docker, skopeo).",
        listen=local_endpoint(PROXY_PORT),
    )
    origin: OriginClientConfig = section(
        OriginClientConfig,
        doc="Origins blobs are uploaded to.",
        hosts=default_host(f"{LOCALHOST}:{ORIGIN_SERVER_PORT}"),
    )
    build_index: ActiveClusterClientConfig = section(
        ActiveClusterClientConfig,
        doc="Build-indexes tags are written to.",
        hosts=default_host(f"{LOCALHOST}:{BUILD_INDEX_PORT}"),
    )
    prefetch: PrefetchConfig = section(PrefetchConfig, doc="Prefetch of the blobs of a tag.")
    delete_enabled: bool = setting(
        False,
        doc="Serve `DELETE` of manifests, tags and blobs (`skopeo delete`): a deleted tag "
        "leaves the build-index and its remotes; blob bytes stay at the origins. Off by "
        "default, as in the Go registry (`405` then); on in the herd.",
    )
    cleanup: CleanupConfig = section(CleanupConfig, doc="Eviction from the proxy's cache.")
    http: HTTPServerConfig = section(
        HTTPServerConfig, doc="Limits of the HTTP listeners against slow and idle clients."
    )
    uploads: UploadsConfig = section(UploadsConfig, doc="Open blob upload sessions.")
    tls: TLSConfig = section(
        TLSConfig,
        doc="TLS of the registry port and of calls to origins and build-indexes; over TLS, "
        "pushes need a client certificate signed by `ca` as every other write does (set "
        "`require_client_cert_for_writes: false` to let anyone who reaches the port push).",
    )


# -- herd -----------------------------------------------------------------------------------

#: Herd key -> daemon name (the name is also the data subdirectory).
HERD_MEMBERS: Final[Mapping[str, str]] = {
    "tracker": "tracker",
    "origin": "origin",
    "build_index": "build-index",
    "proxy": "proxy",
    "agent": "agent",
}


@frozen(kw_only=True)
class HerdConfig:
    """
    Configuration of ``twistd kraken-herd``: every daemon in one process.

    Each member section is that daemon's whole configuration.  A member's
    ``data_dir`` defaults to ``<data_dir>/<daemon>``.  Addresses are not
    rewired: a herd that moves a port must also change the members that
    connect to it.
    """

    data_dir: Path = setting(DEFAULT_DATA_ROOT, doc="Parent of the members' data directories.")
    tracker: TrackerConfig = section(TrackerConfig, doc="The tracker.")
    origin: OriginConfig = section(OriginConfig, doc="The single origin.")
    build_index: BuildIndexConfig = section(BuildIndexConfig, doc="The build-index.")
    proxy: ProxyConfig = section(ProxyConfig, doc="The proxy.")
    agent: AgentConfig = section(AgentConfig, doc="The agent.")

    @classmethod
    def config_prepare(cls, raw: Mapping[Any, Any]) -> Mapping[Any, Any]:
        """Give members without a ``data_dir`` one under the herd's."""
        data_dir = raw.get("data_dir", DEFAULT_DATA_ROOT)
        if not isinstance(data_dir, str):
            return raw
        prepared = dict(raw)
        for key, daemon in HERD_MEMBERS.items():
            member = prepared.get(key)
            if member is None:
                member = {}
            if isinstance(member, Mapping) and "data_dir" not in member:
                prepared[key] = {**member, "data_dir": f"{data_dir.rstrip('/')}/{daemon}"}
        return prepared


#: Config kind (as in ``twistd kraken-<kind>``) -> its class.
CONFIG_CLASSES: Final[Mapping[str, type]] = {
    "agent": AgentConfig,
    "origin": OriginConfig,
    "tracker": TrackerConfig,
    "build-index": BuildIndexConfig,
    "proxy": ProxyConfig,
    "herd": HerdConfig,
}
