"""The option parsing every daemon shares (``kraken.services.parts.DaemonOptions``)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kraken.config.loader import parse_config
from kraken.io import run_inline
from kraken.services import agent, build_index, origin, proxy, tracker
from kraken.services.parts import CleanupService, DaemonOptions

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


class _FailingCleaner:
    """A store cleaner whose every pass fails."""

    def __init__(self) -> None:
        self.passes = 0

    def run_cleanup(self) -> None:
        """Count the pass, then fail."""
        self.passes += 1
        raise OSError("disk gone")


class CleanupServiceTests(SynchronousTestCase):
    """The store cleanup every daemon with a cache runs on a timer."""

    def test_failed_pass_is_logged_and_the_next_runs(self) -> None:
        """A pass that fails is logged and the timer goes on (a bare TimerService stops
        at the first failure of its call)."""
        clock = Clock()
        cleaner = _FailingCleaner()
        service = CleanupService(60, cleaner, clock, run_inline)  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(60)
        clock.advance(60)
        self.assertEqual(cleaner.passes, 3)  # at start, then every 60 s
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 3)
