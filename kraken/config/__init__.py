"""
Daemon configuration: YAML files -> frozen attrs classes with documented defaults.

Use :func:`load_config` at start-up::

    config = load_config("origin", options["config"])  # None: single-host defaults
    config.hashring.max_replica  # 3

Durations are float seconds and sizes int bytes.  Unknown keys and bad values
raise :class:`ConfigError`, whose ``problems`` name each key path
(``origin.hashring.max_replica: expected a positive integer, got "x"``).
Every key, its default and its meaning are in ``docs/configuration.md``,
generated from the classes by :mod:`kraken.config.reference`.

To add a setting, add a field to the section class with
:func:`~kraken.config.structure.setting` (or a nested class with
:func:`~kraken.config.structure.section`), then run
``python -m kraken.config.reference docs/configuration.md``.
"""

from kraken.config.daemons import (
    AGENT_PEER_PORT,
    AGENT_REGISTRY_PORT,
    AGENT_SERVER_PORT,
    BUILD_INDEX_PORT,
    CONFIG_CLASSES,
    DEFAULT_DATA_ROOT,
    ORIGIN_PEER_PORT,
    ORIGIN_SERVER_PORT,
    PROXY_PORT,
    TRACKER_PORT,
    AgentConfig,
    BackendFetchConfig,
    BuildIndexConfig,
    HerdConfig,
    LocalRegistryConfig,
    MetainfoCacheConfig,
    OriginClientConfig,
    OriginConfig,
    OriginHashRingConfig,
    PeerStoreConfig,
    PrefetchConfig,
    ProxyConfig,
    RedisConfig,
    ReplicationConfig,
    TagTypeRule,
    TrackerClientConfig,
    TrackerConfig,
)
from kraken.config.loader import (
    AnyConfig,
    ConfigKind,
    config_to_mapping,
    dump_config,
    load_config,
    parse_config,
    read_yaml,
)
from kraken.config.sections import (
    ActiveClusterClientConfig,
    ActiveHealthConfig,
    AdvertisedListenConfig,
    BackendEntry,
    BackoffConfig,
    BandwidthConfig,
    CleanupConfig,
    HashRingConfig,
    HostListConfig,
    ListenConfig,
    MetainfoConfig,
    PassiveClusterClientConfig,
    PassiveHealthConfig,
    RetryQueueConfig,
    SchedulerConfig,
    TLSConfig,
)
from kraken.config.structure import ConfigError
from kraken.config.values import (
    DiskLimit,
    EndpointDescription,
    InvalidValue,
    format_duration,
    format_size,
    join_host_port,
    parse_duration,
    parse_endpoint,
    parse_rate,
    parse_size,
    split_host_port,
)

__all__ = [
    "AGENT_PEER_PORT",
    "AGENT_REGISTRY_PORT",
    "AGENT_SERVER_PORT",
    "BUILD_INDEX_PORT",
    "CONFIG_CLASSES",
    "DEFAULT_DATA_ROOT",
    "ORIGIN_PEER_PORT",
    "ORIGIN_SERVER_PORT",
    "PROXY_PORT",
    "TRACKER_PORT",
    "ActiveClusterClientConfig",
    "ActiveHealthConfig",
    "AdvertisedListenConfig",
    "AgentConfig",
    "AnyConfig",
    "BackendEntry",
    "BackendFetchConfig",
    "BackoffConfig",
    "BandwidthConfig",
    "BuildIndexConfig",
    "CleanupConfig",
    "ConfigError",
    "ConfigKind",
    "DiskLimit",
    "EndpointDescription",
    "HashRingConfig",
    "HerdConfig",
    "HostListConfig",
    "InvalidValue",
    "ListenConfig",
    "LocalRegistryConfig",
    "MetainfoCacheConfig",
    "MetainfoConfig",
    "OriginClientConfig",
    "OriginConfig",
    "OriginHashRingConfig",
    "PassiveClusterClientConfig",
    "PassiveHealthConfig",
    "PeerStoreConfig",
    "PrefetchConfig",
    "ProxyConfig",
    "RedisConfig",
    "ReplicationConfig",
    "RetryQueueConfig",
    "SchedulerConfig",
    "TLSConfig",
    "TagTypeRule",
    "TrackerClientConfig",
    "TrackerConfig",
    "config_to_mapping",
    "dump_config",
    "format_duration",
    "format_size",
    "join_host_port",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_endpoint",
    "parse_rate",
    "parse_size",
    "read_yaml",
    "split_host_port",
]
