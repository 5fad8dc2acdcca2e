"""The example file of each daemon in docs/configuration.md loads, and survives a round trip."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kraken.config import (
    CONFIG_CLASSES,
    DiskLimit,
    config_to_mapping,
    dump_config,
    load_config,
    parse_config,
    read_yaml,
)

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_EXAMPLE = re.compile(r"<!-- example: ([a-z-]+) -->\n```yaml\n(.*?)```", re.DOTALL)


def examples() -> dict[str, str]:
    """Kind -> YAML text of the examples in the configuration document."""
    found = {}
    for kind, text in _EXAMPLE.findall(DOCUMENT.read_text(encoding="utf-8")):
        found[kind] = text
    return found


class ExampleTests(SynchronousTestCase):
    """Every daemon has an example, and it means what it says."""

    def load(self, kind: str) -> Any:
        """The example of ``kind`` loaded from a file, as a daemon would."""
        path = Path(self.mktemp())
        path.write_text(examples()[kind], encoding="utf-8")
        return load_config(kind, str(path))

    def test_one_example_per_kind(self) -> None:
        """The document holds an example for each daemon and the herd."""
        self.assertEqual(sorted(examples()), sorted(CONFIG_CLASSES))

    def test_round_trip(self) -> None:
        """Each example, dumped to YAML with every key and loaded again, is unchanged."""
        for kind in CONFIG_CLASSES:
            config = self.load(kind)
            self.assertNotEqual(config, load_config(kind, None), kind)
            self.assertEqual(parse_config(kind, read_yaml(dump_config(config))), config, kind)
            self.assertEqual(parse_config(kind, config_to_mapping(config)), config, kind)

    def test_defaults_round_trip(self) -> None:
        """The defaults dumped and loaded again are the defaults."""
        for kind in CONFIG_CLASSES:
            config = load_config(kind, None)
            self.assertEqual(parse_config(kind, read_yaml(dump_config(config))), config, kind)

    def test_agent(self) -> None:
        """The agent example: advertised address, DNS trackers, bandwidth, cleanup."""
        config = self.load("agent")
        self.assertEqual(config.peer.advertised(), "10.0.3.17:16001")
        self.assertEqual(config.tracker.hosts.dns, "trackers.kraken.internal:15003")
        self.assertIsNone(config.tracker.hosts.static)
        self.assertEqual(len(config.build_index.hosts.static), 2)
        self.assertEqual(config.scheduler.bandwidth.egress, 100 * 2**20)
        self.assertEqual((config.cleanup.tti, config.cleanup.ttl), (7200.0, 86400.0))
        self.assertEqual(config.cleanup.high_watermark, DiskLimit(percent=70.0))
        self.assertEqual(config.data_dir, "/var/cache/kraken/agent")

    def test_origin(self) -> None:
        """The origin example: ring of three, two replicas, S3, TLS, piece lengths."""
        config = self.load("origin")
        self.assertEqual(config.server.advertised(), "origin-1.kraken.internal:15002")
        self.assertEqual(len(config.cluster.static), 3)
        self.assertEqual(config.hashring.max_replica, 2)
        self.assertEqual(config.metainfo.table().for_size(2**31), 16 * 2**20)
        self.assertEqual(config.backends[0].name, "s3")
        self.assertEqual(config.backends[0].options["bucket"], "kraken-blobs")
        self.assertEqual(config.tls.key, "/etc/kraken/tls/origin-key.pem")

    def test_tracker(self) -> None:
        """The tracker example uses Redis."""
        config = self.load("tracker")
        self.assertEqual(config.peer_store.kind, "redis")
        self.assertEqual(config.peer_store.redis.address, "redis.kraken.internal:6379")
        self.assertEqual(config.origin.hosts.dns, "origins.kraken.internal:15002")

    def test_build_index(self) -> None:
        """The build-index example: remotes and tag types in order."""
        config = self.load("build-index")
        self.assertEqual(
            dict(config.remotes),
            {"build-index.other-zone.internal:15004": ("^release/", "^base/.*:stable$")},
        )
        self.assertEqual([rule.type for rule in config.tag_types], ["default", "docker"])

    def test_proxy(self) -> None:
        """The proxy example: chunk size and prefetch limit."""
        config = self.load("proxy")
        self.assertEqual(config.origin.upload_chunk_size, 64 * 2**20)
        self.assertEqual(config.prefetch.max_blob_size, 10 * 2**30)

    def test_herd(self) -> None:
        """The herd example: data under /tmp/kraken, agent peer port moved."""
        config = self.load("herd")
        self.assertEqual(config.origin.data_dir, "/tmp/kraken/origin")
        self.assertEqual(config.agent.peer.advertised(), "127.0.0.1:17001")
        self.assertEqual(config.tracker.announce_interval, 1.0)
