"""
Config sections shared by several daemons: listeners, host lists, health checks, TLS, P2P engine.

Each class is one YAML mapping.  The class defaults are the generic ones; a
daemon that needs other defaults states them where it uses the section
(``section(CleanupConfig, ttl="24h", doc=...)``).  Numbers come from DESIGN.md
sections 5-11; docs/configuration.md is generated from the ``doc`` strings.
"""

# ruff: noqa: RUF009
# setting() and section() are attrs field specifiers (they return attrs.field(...)); RUF009
# cannot tell them from ordinary calls in a class body.

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from attrs import frozen

from kraken.config.backends import BackendChoice, FilesystemOptions
from kraken.config.structure import section, setting, unstructure
from kraken.config.values import (
    ByteRate,
    DiskLimit,
    DiskLimitValue,
    Duration,
    Endpoint,
    HostPort,
    NonNegativeInt,
    Path,
    PositiveInt,
    Regex,
    Size,
    format_size,
    join_host_port,
    number_between,
    parse_endpoint,
)
from kraken.core.metainfo import DEFAULT_PIECE_LENGTHS, MAX_PIECE_LENGTH, PieceLengthTable

#: What ``config_problems`` yields: (key relative to the section, or a tuple of keys; message).
Problems = Iterator[tuple[str | tuple[object, ...], str]]

Jitter = Annotated[float, number_between(0, 1)]
Multiplier = Annotated[float, number_between(1, 100)]


def default_host(address: str) -> dict[str, Any]:
    """Raw YAML of a host list holding one static address (for section defaults)."""
    return {"static": [address]}


def local_endpoint(port: int) -> str:
    """The single-host default listen endpoint: ``tcp:<port>:interface=127.0.0.1``."""
    return f"tcp:{port}:interface=127.0.0.1"


@frozen(kw_only=True)
class ListenConfig:
    """Where a server listens."""

    listen: Endpoint = setting(
        doc="Twisted server endpoint string, e.g. `tcp:15002:interface=127.0.0.1`, "
        "`tcp:15002` (all interfaces), `unix:/run/kraken.sock`."
    )


@frozen(kw_only=True)
class AdvertisedListenConfig:
    """Where a server listens, and the address other hosts are told to use for it."""

    listen: Endpoint = setting(
        doc="Twisted server endpoint string, e.g. `tcp:15002:interface=127.0.0.1`."
    )
    advertise: HostPort | None = setting(
        None,
        doc="`host:port` others use to reach this listener; null: the interface and port "
        "of `listen`, which must then name both (not `0.0.0.0`, not port 0).",
    )

    def advertised(self) -> str:
        """The ``host:port`` to tell others: ``advertise``, else taken from ``listen``."""
        if self.advertise is not None:
            return self.advertise
        host_port = parse_endpoint(self.listen).host_port()
        assert host_port is not None, "checked by config_problems"
        return join_host_port(*host_port)

    def config_problems(self) -> Problems:
        """``advertise`` is needed when ``listen`` does not say where to connect."""
        if self.advertise is None and parse_endpoint(self.listen).host_port() is None:
            yield (
                "advertise",
                'required when "listen" does not name a specific interface and port',
            )


@frozen(kw_only=True)
class HTTPServerConfig:
    """What a daemon's HTTP listeners allow one client: time limits and a connection cap."""

    header_timeout: Duration = setting(
        10.0,
        doc="A connection must send a complete request line and headers within this time "
        "(from its start, or from the first byte of its next request); else it is closed.",
    )
    idle_timeout: Duration = setting(
        60.0,
        doc="A connection that sends nothing for this long (between requests, or in the "
        "middle of a request body) is closed; 0: never.",
    )
    max_connections: PositiveInt = setting(
        1024,
        doc="Open connections per listener; a connection beyond it gets `503` and is closed.",
    )


@frozen(kw_only=True)
class UploadsConfig:
    """Blob upload sessions a server keeps open (origin, proxy)."""

    max_open: PositiveInt = setting(
        256, doc="Upload sessions open at once; a new one beyond gets `429` with `Retry-After`."
    )
    idle_timeout: Duration = setting(
        900.0,
        doc="An upload no request touched for this long is removed, with its files.",
    )


@frozen(kw_only=True)
class HostListConfig:
    """``host:port`` members: a static list, or one DNS name resolved again every ``ttl``."""

    #: A host list given in YAML replaces the default one whole (``dns`` must not merge with a
    #: default ``static``).
    config_atomic: ClassVar[bool] = True

    static: tuple[HostPort, ...] | None = setting(None, doc="Fixed `host:port` members.")
    dns: HostPort | None = setting(
        None, doc="`name:port`; every A/AAAA record of `name` becomes a member with `port`."
    )
    ttl: Duration = setting(5.0, doc="How long a DNS answer is used before resolving again.")

    def config_problems(self) -> Problems:
        """Exactly one of ``static`` and ``dns``; a static list is not empty."""
        if (self.static is None) == (self.dns is None):
            yield ("", 'expected exactly one of "static" or "dns"')
        elif self.static is not None and not self.static:
            yield ("static", "expected at least one host")


@frozen(kw_only=True)
class ActiveHealthConfig:
    """Active health checks: ``GET /health`` on every member, every ``interval``."""

    enabled: bool = setting(True, doc="Off: every member is always considered healthy.")
    fails: PositiveInt = setting(3, doc="Consecutive failed checks that mark a member down.")
    passes: PositiveInt = setting(2, doc="Consecutive passed checks that mark it up again.")
    interval: Duration = setting(10.0, doc="Time between check rounds.")
    timeout: Duration = setting(3.0, doc="Timeout of one check.")


@frozen(kw_only=True)
class PassiveHealthConfig:
    """Passive health: network failures of real requests mark a member down for a while."""

    fails: PositiveInt = setting(
        3, doc="Network failures within `fail_timeout` that mark a member down."
    )
    fail_timeout: Duration = setting(
        300.0, doc="Window in which failures are counted, and how long a member then stays down."
    )


@frozen(kw_only=True)
class HashRingConfig:
    """Rendezvous hash ring over the members of a host list."""

    max_replica: PositiveInt = setting(3, doc="Members that own each blob (replicas).")
    refresh_interval: Duration = setting(
        10.0, doc="How often membership and health are re-evaluated."
    )


@frozen(kw_only=True)
class ActiveClusterClientConfig:
    """Client of a group of servers checked with active health checks."""

    hosts: HostListConfig = setting(doc="The servers.")
    healthcheck: ActiveHealthConfig = section(ActiveHealthConfig, doc="Active health checks.")


@frozen(kw_only=True)
class PassiveClusterClientConfig:
    """Client of a group of servers checked passively (failed requests)."""

    hosts: HostListConfig = setting(doc="The servers.")
    passive_health: PassiveHealthConfig = section(PassiveHealthConfig, doc="Passive health checks.")


@frozen(kw_only=True)
class TLSConfig:
    """
    Mutual TLS of a daemon's API and of its calls to other components (DESIGN 10).

    Serving TLS is on when ``cert`` and ``key`` are set; client certificates
    are then requested, verified against ``ca``, and required for writes (and
    for reads if asked).  Calls to other components use HTTPS when ``ca`` is
    set, presenting ``client_cert`` when it is set.  Files are read once at
    start-up by :mod:`kraken.tls`; see docs/security.md.
    """

    ca: Path | None = setting(
        None,
        doc="PEM bundle of the cluster CA(s): the only roots trusted for other components' "
        "server certificates and for client certificates. Set: calls to other components "
        "use HTTPS.",
    )
    cert: Path | None = setting(
        None, doc="PEM server certificate (leaf first, then any intermediates); set: serve TLS."
    )
    key: Path | None = setting(None, doc="PEM private key of `cert`.")
    client_cert: Path | None = setting(
        None, doc="PEM client certificate presented to other components (may equal `cert`)."
    )
    client_key: Path | None = setting(None, doc="PEM private key of `client_cert`.")
    passphrase_file: Path | None = setting(
        None, doc="File holding the passphrase of encrypted keys (never the passphrase itself)."
    )
    server_name: str | None = setting(
        None,
        doc="Name checked in other components' server certificates; null: the host of the "
        "address called.",
    )
    require_client_cert_for_writes: bool = setting(
        True,
        doc="Requests other than GET and HEAD over TLS need a client certificate signed by "
        "`ca` (403 otherwise).",
    )
    require_client_cert_for_reads: bool = setting(
        False, doc="GET and HEAD over TLS need one too (403 otherwise)."
    )
    peer: bool = setting(
        False,
        doc="Agents and origins: mutual TLS on the peer port and on dials to peers, with "
        "`cert`/`key` on both sides, checked against `ca` (no name check); a peer without a "
        "certificate from `ca` is refused at the TLS handshake. Every peer of the cluster "
        "must agree. Other daemons ignore it.",
    )

    def config_problems(self) -> Problems:
        """Certificates and keys come in pairs; client certificates need ``ca`` to be checked."""
        for cert, key in (("cert", "key"), ("client_cert", "client_key")):
            has_cert = getattr(self, cert) is not None
            if has_cert != (getattr(self, key) is not None):
                missing, present = (key, cert) if has_cert else (cert, key)
                yield (missing, f'required when "{present}" is set')
        if self.ca is None:
            if self.client_cert is not None and self.client_key is not None:
                yield ("ca", 'required when "client_cert" is set')
            if (self.cert is not None and self.key is not None) and (
                self.require_client_cert_for_writes or self.require_client_cert_for_reads
            ):
                yield ("ca", 'required to check client certificates when "cert" is set')
        if self.peer:
            for key in ("ca", "cert", "key"):
                if getattr(self, key) is None:
                    yield (key, 'required when "peer" is set')
        if self.require_client_cert_for_reads and not self.require_client_cert_for_writes:
            yield (
                "require_client_cert_for_writes",
                'must be true when "require_client_cert_for_reads" is',
            )


@frozen(kw_only=True)
class CleanupConfig:
    """Periodic deletion of unused blobs from a store; persisted or open blobs are never deleted."""

    enabled: bool = setting(True, doc="Off: nothing is ever deleted.")
    interval: Duration = setting(1800.0, doc="Time between scans.")
    tti: Duration = setting(21600.0, doc="Delete blobs not read for this long; 0: never.")
    ttl: Duration = setting(0.0, doc="Delete blobs older than this; 0: never.")
    high_watermark: DiskLimitValue | None = setting(
        DiskLimit(percent=90.0),
        doc="When the store holds more than this (a size, or a percentage of the size of "
        "the filesystem holding `data_dir`), least recently used blobs are evicted; null: never.",
    )
    low_watermark: DiskLimitValue | None = setting(
        None, doc="Eviction goes on down to this; null: down to `high_watermark`."
    )

    def config_problems(self) -> Problems:
        """A low watermark needs a high one, and is not above it when both use one unit."""
        high, low = self.high_watermark, self.low_watermark
        if low is None:
            return
        if high is None:
            yield ("low_watermark", 'requires "high_watermark"')
        elif (low.size is not None and high.size is not None and low.size > high.size) or (
            low.percent is not None and high.percent is not None and low.percent > high.percent
        ):
            yield ("low_watermark", "must not be greater than high_watermark")


@frozen(kw_only=True)
class BandwidthConfig:
    """Token buckets limiting peer traffic, in bytes per second."""

    enabled: bool = setting(True, doc="Off: no limit.")
    egress: ByteRate = setting(200 * 1024**2, doc="Upload limit to peers.")
    ingress: ByteRate = setting(300 * 1024**2, doc="Download limit from peers.")
    chunk_size: Size = setting(
        64 * 1024, doc="Traffic is shaped in chunks of at most this many bytes."
    )

    def config_problems(self) -> Problems:
        """Chunks are not empty."""
        if self.chunk_size <= 0:
            yield ("chunk_size", "must be greater than 0")


@frozen(kw_only=True)
class SchedulerConfig:
    """The P2P engine (DESIGN 5); names follow ``kraken.torrent.actions.EngineConfig``."""

    max_conns_per_torrent: PositiveInt = setting(
        10, doc="Pending plus active connections per torrent."
    )
    max_dials_per_torrent: PositiveInt | None = setting(
        5,
        doc="Of those, at most this many dialled by us; the rest are left for peers that "
        "dial us, so that the first peers of a swarm do not shut later ones out "
        "(tuned by `bench.sim` and `bench.swarm`); null: all of them.",
    )
    peers_per_announce: PositiveInt = setting(
        50, doc="Peers asked of the tracker; tried in its order until the slots are full."
    )
    pipeline_limit: PositiveInt = setting(
        2, doc="Outstanding piece requests per agent peer (tuned by `bench.swarm`)."
    )
    origin_pipeline_limit: PositiveInt = setting(
        1, doc="Outstanding piece requests per origin peer (tuned by `bench.swarm`)."
    )
    endgame_threshold: PositiveInt | None = setting(
        None,
        doc="Endgame (same piece from several peers) starts when this many pieces remain; "
        "null: `pipeline_limit`.",
    )
    request_min_timeout: Duration = setting(
        4.0,
        doc="Shortest piece request timeout: how long a peer with requests outstanding may "
        "deliver nothing (no payload header or bytes) before its requests go elsewhere; "
        "time queued behind earlier requests does not count (docs/protocol.md).",
    )
    request_timeout_per_mib: Duration = setting(
        4.0, doc="Request timeout per MiB of piece (the larger of the two applies)."
    )
    blacklist_duration: Duration = setting(
        30.0, doc="How long a peer is avoided after a failed dial, bad piece or broken connection."
    )
    handshake_timeout: Duration = setting(5.0, doc="Timeout of each side of the handshake.")
    conn_idle_timeout: Duration = setting(
        30.0, doc="A connection without progress either way is closed after this."
    )
    conn_lifetime: Duration = setting(3600.0, doc="Any connection is closed after this.")
    seeder_tti: Duration = setting(300.0, doc="A seeding torrent with no piece served is dropped.")
    leecher_tti: Duration = setting(
        300.0, doc="A downloading torrent with no piece received fails."
    )
    announce_interval: Duration = setting(3.0, doc="Announce interval until the tracker names one.")
    complete_announce_interval: Duration = setting(
        30.0, doc="Announce interval of complete torrents kept in the cache."
    )
    max_announce_interval: Duration = setting(60.0, doc="Longest interval accepted from a tracker.")
    max_upload_queue: PositiveInt = setting(
        64, doc="Piece requests a peer may have queued with us before it counts as abuse."
    )
    upload_slots: PositiveInt | None = setting(
        None,
        doc="Pieces of one torrent sent at the same time over all its connections (the others "
        "wait their turn, oldest first); null: every connection at once.",
    )
    origin_fallback_below: PositiveInt | None = setting(
        None,
        doc="Ask origins only while fewer piece requests than this are outstanding to agents; "
        "null: whenever an origin has a piece no connected agent can give (with "
        "`origin_spread_window`, the faster setting in `bench.swarm`).",
    )
    origin_spread_window: Duration | None = setting(
        10.0,
        doc="Origins: a request for a piece that the origin accepted from another peer "
        "less than this long ago is answered ERROR(SENT_ELSEWHERE), so each piece leaves the "
        "origin once and spreads among agents (tuned by `bench.sim`); null: never. Agents: "
        "when a blob has several origins, each is asked only for its share of the pieces "
        "until this long after the download began (docs/protocol.md); null: from the start.",
    )
    max_conns_per_address: PositiveInt | None = setting(
        2,
        doc="Incoming connections of one torrent from one address (an IPv6 address counts "
        "by its /64), so that one host cannot hold the slots others need; raise it where "
        "peers share an address (NAT, several agents on one host; the herd sets it to its "
        "agent count); null: no limit.",
    )
    useful_within: Duration = setting(
        1.0,
        doc="An incoming connection that has not been useful this long after its handshake "
        "(asked for a piece we have, offered one we lack, sent a payload we asked for) may "
        "lose its slot to a newcomer when the torrent is full (docs/protocol.md).",
    )
    reserved_conns_per_torrent: NonNegativeInt = setting(
        0,
        doc="Of `max_conns_per_torrent`, slots only for incoming peers vouched for: handed "
        "to us by the tracker in the last `handout_memory`, or offering pieces we lack "
        "(useless at origins, which nobody is vouched for).",
    )
    handout_memory: Duration = setting(
        60.0, doc="How long a peer the tracker handed out counts as vouched for."
    )
    bandwidth: BandwidthConfig = section(BandwidthConfig, doc="Peer traffic limits.")

    def config_problems(self) -> Problems:
        """The reserved slots leave at least one for anyone."""
        if self.reserved_conns_per_torrent >= self.max_conns_per_torrent:
            yield ("reserved_conns_per_torrent", 'must be less than "max_conns_per_torrent"')

    def effective_endgame_threshold(self) -> int:
        """``endgame_threshold``, defaulting to ``pipeline_limit``."""
        return self.endgame_threshold or self.pipeline_limit


@frozen(kw_only=True)
class BackoffConfig:
    """Exponential backoff for polling (e.g. metainfo while the origin answers 202)."""

    initial: Duration = setting(1.0, doc="First wait.")
    multiplier: Multiplier = setting(1.3, doc="Each wait is the previous one times this.")
    maximum: Duration = setting(5.0, doc="Longest wait.")
    jitter: Jitter = setting(0.05, doc="Random spread of each wait, as a fraction.")
    give_up_after: Duration = setting(900.0, doc="Give up after this long in total.")


@frozen(kw_only=True)
class RetryQueueConfig:
    """A durable retry queue (persistedretry, SQLite under the daemon's data_dir)."""

    workers: PositiveInt = setting(4, doc="Tasks run at the same time.")
    poll_interval: Duration = setting(
        15.0,
        doc="Not used: each failed task is retried on its own timer (the retry settings); "
        "accepted so that existing files still load.",
    )
    retry_interval: Duration = setting(30.0, doc="Wait before the first retry of a failed task.")
    retry_multiplier: Multiplier = setting(2.0, doc="Each retry waits this much longer.")
    max_retry_interval: Duration = setting(1800.0, doc="Longest wait between retries.")


@frozen(kw_only=True)
class MetainfoConfig:
    """How origins cut blobs into pieces (DESIGN 3)."""

    piece_lengths: Mapping[Size, Size] = setting(
        factory=lambda: MappingProxyType(dict(DEFAULT_PIECE_LENGTHS.entries)),
        doc="Blob size threshold -> piece length; a blob uses the entry of the largest "
        "threshold not above its size.",
    )

    def table(self) -> PieceLengthTable:
        """The table as :class:`kraken.core.PieceLengthTable`."""
        return PieceLengthTable(tuple(self.piece_lengths.items()))

    def config_problems(self) -> Problems:
        """At least one entry; piece lengths in 1..256 MiB."""
        if not self.piece_lengths:
            yield ("piece_lengths", "expected at least one entry")
        for threshold, length in self.piece_lengths.items():
            if not 0 < length <= MAX_PIECE_LENGTH:
                yield (
                    ("piece_lengths", format_size(threshold)),
                    f"piece length must be from 1 to {MAX_PIECE_LENGTH} bytes, got {length}",
                )


@frozen(kw_only=True)
class BackendEntry:
    """
    One entry of ``backends:``: blobs of namespaces matching ``namespace`` use ``backend``.

    The backend names exactly one kind (``fs``, ``s3``, ...) with its options, which
    are checked here like every other setting (:mod:`kraken.config.backends`);
    :mod:`kraken.backends.config` builds the backends from them.
    """

    namespace: Regex = setting(doc="Regular expression searched for in the namespace.")
    backend: BackendChoice = setting(
        doc="Exactly one backend and its options, e.g. `{fs: {root: /x}}`."
    )

    @property
    def name(self) -> str:
        """The backend's kind (``fs``, ``s3``...)."""
        return self.backend.kind

    @property
    def options(self) -> dict[str, Any]:
        """The backend's options as YAML data (``{"root": "/x"}``)."""
        options: dict[str, Any] = unstructure(self.backend.options)
        return options

    def to_raw(self) -> dict[str, Any]:
        """The entry as plain YAML data (what a user writes for it)."""
        return unstructure(self)


def default_backend_root(data_dir: str) -> str:
    """
    ``backend`` beside ``data_dir``: ``./kraken-data/origin`` -> ``./kraken-data/backend``.

    Beside, not inside: every daemon of a single-host layout (several origins
    and the build-index included) must share one backend, the durable store.
    """
    parent = posixpath.dirname(data_dir.rstrip("/") or "/")
    return posixpath.join(parent or ".", "backend")


def default_backends(data_dir: str) -> tuple[BackendEntry, ...]:
    """The embedded default: every namespace in a filesystem backend beside ``data_dir``."""
    return (
        BackendEntry(
            namespace=".*",
            backend=BackendChoice(fs=FilesystemOptions(root=default_backend_root(data_dir))),
        ),
    )


__all__ = [
    "ActiveClusterClientConfig",
    "ActiveHealthConfig",
    "AdvertisedListenConfig",
    "BackendEntry",
    "BackoffConfig",
    "BandwidthConfig",
    "CleanupConfig",
    "HashRingConfig",
    "HostListConfig",
    "ListenConfig",
    "MetainfoConfig",
    "PassiveClusterClientConfig",
    "PassiveHealthConfig",
    "RetryQueueConfig",
    "SchedulerConfig",
    "TLSConfig",
    "default_backend_root",
    "default_backends",
    "default_host",
    "local_endpoint",
]
