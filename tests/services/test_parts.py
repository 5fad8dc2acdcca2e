"""The option parsing every daemon shares (``kraken.services.parts.DaemonOptions``)."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kraken.config.loader import parse_config
from kraken.services import agent, build_index, origin, proxy, tracker
from kraken.services.parts import DaemonOptions

DAEMON_OPTIONS: list[type[DaemonOptions]] = [
    agent.Options,
    build_index.Options,
    origin.Options,
    proxy.Options,
    tracker.Options,
]


class DaemonOptionsTests(SynchronousTestCase):
    """``twistd kraken-<daemon> --config FILE`` for each of the five daemons."""

    def test_unknown_key_is_usage_error(self) -> None:
        """An unknown top-level key stops twistd with a message naming it, for every daemon."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("no_such_key: 1\n")
        for options in DAEMON_OPTIONS:
            with self.subTest(daemon=options.daemon):
                with self.assertRaises(usage.UsageError) as e:
                    options().parseOptions(["--config", path])
                self.assertIn("no_such_key", str(e.exception))

    def test_defaults_without_a_file(self) -> None:
        """Without ``--config`` every daemon loads its single-host defaults."""
        for options in DAEMON_OPTIONS:
            with self.subTest(daemon=options.daemon):
                parsed = options()
                parsed.parseOptions([])
                key = options.daemon.replace("-", "_") + "_config"
                self.assertEqual(parsed[key], parse_config(options.daemon, None))
