"""Bad configurations fail with one line per problem, naming the key path."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

import tests
from kraken.config import ConfigError, parse_config

#: The checkout holding ``kraken/`` and ``twisted/plugins/kraken_plugins.py``.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
#: ``twistd``, run by this interpreter: what the ``twistd`` console script does.
TWISTD = "from twisted.scripts.twistd import run; run()"

DURATION = 'expected a duration such as "30s", "5m", "1h30m" or a number of seconds, got {}'
SIZE = 'expected a size such as "64MiB", "4MB" or a number of bytes, got {}'
HOST_PORT = 'expected "host:port" (e.g. "127.0.0.1:15002"), got {}'
ENDPOINT = 'expected a Twisted endpoint string such as "tcp:15002:interface=127.0.0.1", got {}'


class ErrorCase(SynchronousTestCase):
    """Helpers for asserting the exact problems of a configuration."""

    def problems(self, kind: str, raw: Any) -> tuple[str, ...]:
        """The problems parse_config reports for ``raw``, failing if it is accepted."""
        with self.assertRaises(ConfigError) as raised:
            parse_config(kind, raw)
        error: ConfigError = raised.exception
        problems: tuple[str, ...] = error.problems
        self.assertEqual(str(error), "\n".join(problems))
        return problems

    def assertProblem(self, kind: str, raw: Any, expected: str) -> None:
        """``raw`` fails with exactly one problem, ``expected``."""
        self.assertEqual(self.problems(kind, raw), (expected,))


class KeyErrorsTests(ErrorCase):
    """Unknown and missing keys."""

    def test_unknown_key(self) -> None:
        """An unknown key is named with its full path."""
        self.assertProblem(
            "agent", {"scheduler": {"bogus": 1}}, "agent.scheduler.bogus: unknown key"
        )

    def test_unknown_key_suggestion(self) -> None:
        """A near miss suggests the right key."""
        self.assertProblem(
            "origin",
            {"schedular": {}},
            'origin.schedular: unknown key (did you mean "scheduler"?)',
        )

    def test_unknown_top_level_and_non_string_key(self) -> None:
        """Keys that are not strings are unknown keys too."""
        self.assertEqual(
            self.problems("tracker", {"listen": "tcp:1", 7: "x"}),
            ("tracker.listen: unknown key", "tracker[7]: unknown key"),
        )

    def test_required_key_missing(self) -> None:
        """A list entry without a required key names that key."""
        self.assertProblem(
            "build-index",
            {"tag_types": [{"namespace": ".*"}]},
            "build-index.tag_types[0].type: required key missing",
        )

    def test_every_problem_at_once(self) -> None:
        """All problems are reported together, in file order."""
        self.assertEqual(
            self.problems(
                "origin",
                {"hashring": {"max_replica": "x", "refresh_interval": "soon"}, "peer": 5},
            ),
            (
                'origin.hashring.max_replica: expected a positive integer, got "x"',
                "origin.hashring.refresh_interval: " + DURATION.format('"soon"'),
                "origin.peer: expected a mapping, got 5",
            ),
        )


class ScalarErrorsTests(ErrorCase):
    """Each kind of scalar names what it expected and what it got."""

    def test_positive_integer(self) -> None:
        """The example of the issue, and zero."""
        self.assertProblem(
            "origin",
            {"hashring": {"max_replica": "x"}},
            'origin.hashring.max_replica: expected a positive integer, got "x"',
        )
        self.assertProblem(
            "origin",
            {"hashring": {"max_replica": 0}},
            "origin.hashring.max_replica: expected a positive integer, got 0",
        )

    def test_booleans_are_not_numbers(self) -> None:
        """YAML true is not 1."""
        self.assertProblem(
            "tracker",
            {"handout_limit": True},
            "tracker.handout_limit: expected a positive integer, got true",
        )

    def test_non_negative_integer(self) -> None:
        """Redis database numbers start at 0."""
        self.assertProblem(
            "tracker",
            {"peer_store": {"redis": {"database": -1}}},
            "tracker.peer_store.redis.database: expected a non-negative integer, got -1",
        )

    def test_boolean(self) -> None:
        """Booleans are YAML true/false only."""
        self.assertProblem(
            "build-index",
            {"write_through": "sometimes"},
            'build-index.write_through: expected true or false, got "sometimes"',
        )

    def test_string(self) -> None:
        """A string setting refuses a number."""
        self.assertProblem(
            "tracker",
            {"peer_store": {"redis": {"key_prefix": 3}}},
            "tracker.peer_store.redis.key_prefix: expected a string, got 3",
        )

    def test_ranged_number(self) -> None:
        """Jitter is a fraction."""
        self.assertProblem(
            "agent",
            {"metainfo_poll": {"jitter": 2}},
            "agent.metainfo_poll.jitter: expected a number from 0 to 1, got 2",
        )

    def test_choice(self) -> None:
        """A choice lists the allowed values."""
        self.assertProblem(
            "tracker",
            {"peer_store": {"kind": "mysql"}},
            'tracker.peer_store.kind: expected one of "memory", "redis", got "mysql"',
        )

    def test_duration(self) -> None:
        """Durations name the accepted forms."""
        self.assertProblem(
            "agent", {"cleanup": {"tti": "5x"}}, "agent.cleanup.tti: " + DURATION.format('"5x"')
        )
        self.assertProblem(
            "agent", {"cleanup": {"ttl": -1}}, "agent.cleanup.ttl: " + DURATION.format("-1")
        )

    def test_size(self) -> None:
        """Sizes name the accepted forms."""
        self.assertProblem(
            "proxy",
            {"prefetch": {"max_blob_size": "huge"}},
            "proxy.prefetch.max_blob_size: " + SIZE.format('"huge"'),
        )

    def test_rate(self) -> None:
        """Rates name the accepted forms."""
        self.assertProblem(
            "agent",
            {"scheduler": {"bandwidth": {"egress": "5 potatoes"}}},
            'agent.scheduler.bandwidth.egress: expected a rate such as "200MiB/s" or a number '
            'of bytes per second, got "5 potatoes"',
        )

    def test_disk_limit(self) -> None:
        """Watermarks name both accepted forms."""
        self.assertProblem(
            "agent",
            {"cleanup": {"high_watermark": "lots"}},
            'agent.cleanup.high_watermark: expected a percentage such as "90%" or a size such '
            'as "500GiB", got "lots"',
        )

    def test_host_port(self) -> None:
        """Addresses need a port."""
        self.assertProblem(
            "tracker",
            {"peer_store": {"redis": {"address": "redis"}}},
            "tracker.peer_store.redis.address: " + HOST_PORT.format('"redis"'),
        )

    def test_endpoint(self) -> None:
        """A host:port is not an endpoint string."""
        self.assertProblem(
            "proxy",
            {"server": {"listen": "127.0.0.1:15000"}},
            "proxy.server.listen: "
            + ENDPOINT.format('"127.0.0.1:15000"')
            + " (the type must be one of tcp, tcp6, unix, ssl, systemd)",
        )

    def test_regex(self) -> None:
        """A regex that does not compile says why."""
        self.assertProblem(
            "build-index",
            {"tag_types": [{"namespace": "[", "type": "docker"}]},
            'build-index.tag_types[0].namespace: invalid regular expression "[": '
            "unterminated character set at position 0",
        )

    def test_network(self) -> None:
        """Allowed networks are CIDRs."""
        self.assertProblem(
            "agent",
            {"registry": {"allowed_networks": ["localhost"]}},
            'agent.registry.allowed_networks[0]: expected a network such as "127.0.0.1/32", '
            'got "localhost"',
        )

    def test_path(self) -> None:
        """A path is a non-empty string."""
        self.assertProblem("proxy", {"data_dir": ""}, 'proxy.data_dir: expected a path, got ""')


class ShapeErrorsTests(ErrorCase):
    """Sections, lists and mappings of the wrong shape."""

    def test_not_a_mapping_at_top_level(self) -> None:
        """A YAML list or scalar at the top level is refused."""
        self.assertProblem("tracker", ["a"], "tracker: expected a mapping of settings, got a list")
        self.assertProblem("agent", "agent", 'agent: expected a mapping of settings, got "agent"')

    def test_section_not_a_mapping(self) -> None:
        """A section given a scalar."""
        self.assertProblem(
            "agent", {"scheduler": [1]}, "agent.scheduler: expected a mapping, got a list"
        )

    def test_list_expected(self) -> None:
        """A list setting given a mapping."""
        self.assertProblem(
            "origin", {"backends": {"fs": {}}}, "origin.backends: expected a list, got a mapping"
        )

    def test_list_items(self) -> None:
        """Each bad item is named by its index."""
        self.assertEqual(
            self.problems("agent", {"tracker": {"hosts": {"static": ["nohost", "a:99999"]}}}),
            (
                "agent.tracker.hosts.static[0]: " + HOST_PORT.format('"nohost"'),
                "agent.tracker.hosts.static[1]: " + HOST_PORT.format('"a:99999"'),
            ),
        )

    def test_mapping_keys_and_values(self) -> None:
        """Keys that are not identifiers are quoted in the path."""
        self.assertEqual(
            self.problems("build-index", {"remotes": {"bi:15004": ["("], "nope": []}}),
            (
                'build-index.remotes["bi:15004"][0]: invalid regular expression "(": '
                "missing ), unterminated subpattern at position 0",
                "build-index.remotes.nope: " + HOST_PORT.format('"nope"'),
            ),
        )

    def test_duplicate_parsed_mapping_keys(self) -> None:
        """Two keys that parse to the same size are one key given twice."""
        self.assertProblem(
            "origin",
            {"metainfo": {"piece_lengths": {1024: "1MiB", "1KiB": "2MiB"}}},
            'origin.metainfo.piece_lengths["1KiB"]: duplicate key',
        )


class ConsistencyErrorsTests(ErrorCase):
    """Problems across several keys."""

    def test_host_list_needs_exactly_one_source(self) -> None:
        """static and dns together, or neither."""
        self.assertProblem(
            "agent",
            {"tracker": {"hosts": {"static": ["a:1"], "dns": "b:1"}}},
            'agent.tracker.hosts: expected exactly one of "static" or "dns"',
        )
        self.assertProblem(
            "agent",
            {"tracker": {"hosts": {"ttl": "5s"}}},
            'agent.tracker.hosts: expected exactly one of "static" or "dns"',
        )

    def test_empty_static_list(self) -> None:
        """A static list needs a host."""
        self.assertProblem(
            "origin",
            {"cluster": {"static": []}},
            "origin.cluster.static: expected at least one host",
        )

    def test_advertise_needed(self) -> None:
        """Listening on every interface leaves nothing to advertise."""
        self.assertProblem(
            "origin",
            {"server": {"listen": "tcp:15002"}},
            'origin.server.advertise: required when "listen" does not name a specific '
            "interface and port",
        )

    def test_tls_pairs(self) -> None:
        """A certificate needs its key and the other way round."""
        self.assertEqual(
            self.problems("tracker", {"tls": {"cert": "c.pem", "client_key": "k.pem"}}),
            (
                'tracker.tls.key: required when "cert" is set',
                'tracker.tls.client_cert: required when "client_key" is set',
            ),
        )

    def test_watermarks(self) -> None:
        """The low watermark is below the high one and needs it."""
        self.assertProblem(
            "agent",
            {"cleanup": {"high_watermark": "70%", "low_watermark": "80%"}},
            "agent.cleanup.low_watermark: must not be greater than high_watermark",
        )
        self.assertProblem(
            "agent",
            {"cleanup": {"high_watermark": None, "low_watermark": "1GiB"}},
            'agent.cleanup.low_watermark: requires "high_watermark"',
        )

    def test_backends(self) -> None:
        """Backend entries: one known backend kind, options a mapping, at least one entry."""
        self.assertProblem(
            "origin", {"backends": []}, "origin.backends: expected at least one entry"
        )
        self.assertEqual(
            self.problems(
                "origin",
                {
                    "backends": [
                        {"namespace": "(", "backend": {"fs": {}}},
                        {"namespace": ".*", "backend": {}},
                        {"namespace": ".*", "backend": {"FS": {}}},
                        {"namespace": ".*", "backend": {"s3": [1]}},
                        {"namespace": ".*", "backend": {"fs": {}, "s3": {}}},
                        {"backend": {"fs": None}},
                    ]
                },
            ),
            (
                'origin.backends[0].namespace: invalid regular expression "(": '
                "missing ), unterminated subpattern at position 0",
                "origin.backends[1].backend: expected exactly one of fs, s3, registry, http, "
                "noop, got none",
                "origin.backends[2].backend.FS: unknown key",
                "origin.backends[3].backend.s3: expected a mapping, got a list",
                "origin.backends[4].backend.s3.bucket: required key missing",
                "origin.backends[5].namespace: required key missing",
            ),
        )
        self.assertProblem(
            "build-index",
            {"backends": [{"namespace": ".*", "backend": {"fs": {}, "noop": None}}]},
            "build-index.backends[0].backend: expected exactly one of fs, s3, registry, http, "
            "noop, got fs, noop",
        )

    def test_backend_options(self) -> None:
        """Each backend's options are checked at load time, one line per problem with its path."""
        self.assertProblem(
            "origin",
            {"backends": [{"namespace": ".*", "backend": {"fs": {"rooot": "/x"}}}]},
            'origin.backends[0].backend.fs.rooot: unknown key (did you mean "root"?)',
        )

        def entry(kind: str, options: dict[str, Any]) -> dict[str, Any]:
            return {"backends": [{"namespace": ".*", "backend": {kind: options}}]}

        prefix = "origin.backends[0].backend."
        for kind, options, problem in [
            ("fs", {"root": ""}, 'fs.root: expected a path, got ""'),
            ("s3", {}, "s3.bucket: required key missing"),
            ("s3", {"bucket": ""}, 's3.bucket: expected a non-empty string, got ""'),
            ("s3", {"bucket": "b", "nope": 1}, "s3.nope: unknown key"),
            (
                "s3",
                {"bucket": "b", "root_directory": "../x"},
                "s3.root_directory: invalid root_directory '../x': expected '/'-separated "
                "segments of [A-Za-z0-9][A-Za-z0-9._-]*",
            ),
            (
                "s3",
                {"bucket": "b", "force_path_style": "yes"},
                's3.force_path_style: expected true or false, got "yes"',
            ),
            (
                "s3",
                {"bucket": "b", "access_key_id": "x"},
                "s3.secret_access_key: access_key_id and secret_access_key go together",
            ),
            (
                "s3",
                {"bucket": "b", "part_size": 1024},
                "s3.part_size: must be at least 5242880 bytes (S3's minimum), got 1024",
            ),
            (
                "s3",
                {"bucket": "b", "concurrency": 0},
                "s3.concurrency: expected a positive integer, got 0",
            ),
            ("registry", {}, "registry.address: required key missing"),
            (
                "registry",
                {"address": "ftp://x"},
                "registry.address: 'ftp://x' must be host[:port] or an http(s) URL",
            ),
            (
                "registry",
                {"address": "x", "username": "u"},
                "registry.password: username and password go together",
            ),
            (
                "registry",
                {"address": "x", "timeout": 0},
                "registry.timeout: expected seconds > 0, got 0",
            ),
            ("http", {}, "http.download_url: required key missing"),
            (
                "http",
                {"download_url": "http://h/"},
                "http.download_url: download_url 'http://h/' needs exactly one '{name}' or '%s'",
            ),
            (
                "http",
                {"download_url": "http://h/%s", "download_timeout": 0},
                "http.download_timeout: expected seconds > 0, got 0",
            ),
            ("noop", {"x": 1}, "noop.x: unknown key"),
        ]:
            self.assertProblem("origin", entry(kind, options), prefix + problem)

    def test_piece_lengths(self) -> None:
        """Piece lengths are bounded like those accepted from the network."""
        self.assertProblem(
            "origin",
            {"metainfo": {"piece_lengths": {0: "1GiB"}}},
            "origin.metainfo.piece_lengths[0]: piece length must be from 1 to 268435456 bytes, "
            "got 1073741824",
        )
        self.assertProblem(
            "origin",
            {"metainfo": {"piece_lengths": {}}},
            "origin.metainfo.piece_lengths: expected at least one entry",
        )

    def test_herd_paths(self) -> None:
        """Problems inside a herd member are rooted at the herd."""
        self.assertProblem(
            "herd",
            {"origin": {"hashring": {"max_replica": 0}}},
            "herd.origin.hashring.max_replica: expected a positive integer, got 0",
        )


class TwistdTests(TestCase):
    """``twistd -n kraken-origin --config FILE`` as an operator runs it, in a child process."""

    def test_bad_backend_option_is_one_line(self) -> Deferred[None]:
        """A misspelt backend option stops the daemon with one line naming its key, no traceback."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write('backends:\n  - namespace: ".*"\n    backend:\n      fs: {rooot: /tmp/x}\n')
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
        argv = ["-c", TWISTD, "-n", "kraken-origin", "--config", path]

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            text = (out + err).decode("utf-8", "replace")
            self.assertNotEqual(code, 0, text)
            self.assertNotIn("Traceback", text)
            (line,) = [line for line in text.splitlines() if "backends[0]" in line]
            expected = 'origin.backends[0].backend.fs.rooot: unknown key (did you mean "root"?)'
            self.assertTrue(line.endswith(f"{path}: {expected}"), text)

        d: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            sys.executable, argv, env=env, path=CHECKOUT
        )
        return d.addCallback(check)

    def test_error_leads(self) -> Deferred[None]:
        """A configuration error is all twistd prints, for a daemon and for the herd.

        twistd's own answer to a usage error is the option list with the error under it,
        where an operator reads past it; the daemons print only the error, naming the command.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write("nope: 1\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
        results = []
        for daemon, section in (("kraken-tracker", "tracker"), ("kraken-herd", "herd")):
            argv = ["-c", TWISTD, "-n", daemon, "--config", path]
            d: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
                sys.executable, argv, env=env, path=CHECKOUT
            )
            results.append(d.addCallback(lambda r, d=daemon, s=section: (d, s, r)))

        def check(outcomes: list[tuple[str, str, tuple[bytes, bytes, int]]]) -> None:
            for daemon, section, (out, err, code) in outcomes:
                self.assertEqual(code, 1)
                self.assertEqual(out, b"")
                self.assertEqual(
                    err.decode().splitlines(),
                    [f"{daemon}: {path}: {section}.nope: unknown key"],
                )

        return gatherResults(results).addCallback(check)
