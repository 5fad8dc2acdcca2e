"""
kraken.logs: ``--log-level`` under twistd, and factory start/stop lines counted as debug.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from twisted.logger import LogLevel, PredicateResult
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

import kraken
from kraken import logs
from kraken.logs import DaemonLogFilter, parse_level
from kraken.services import tracker
from tests.peers.redisserver import free_port

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(kraken.__file__)))


def event(level: LogLevel, log_format: str = "something {x}") -> dict[str, object]:
    """A log event as twisted.logger makes them."""
    return {"log_level": level, "log_format": log_format, "x": 1, "log_namespace": "test"}


class DaemonLogFilterTests(SynchronousTestCase):
    """What the filter lets through."""

    def test_levels(self) -> None:
        """At ``info``, debug events are dropped and info, warn and error pass."""
        keep = DaemonLogFilter.at(LogLevel.info)
        self.assertEqual(keep(event(LogLevel.debug)), PredicateResult.no)
        for level in (LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical):
            self.assertEqual(keep(event(level)), PredicateResult.maybe, level)
        self.assertEqual(
            DaemonLogFilter.at(LogLevel.warn)(event(LogLevel.info)), PredicateResult.no
        )

    def test_factory_chatter_is_debug(self) -> None:
        """Twisted's "Starting/Stopping factory" info lines are kept only at ``debug``."""
        for text in ("Starting factory {factory!r}", "Stopping factory {factory!r}"):
            chatter = event(LogLevel.info, text)
            self.assertEqual(DaemonLogFilter.at(LogLevel.info)(chatter), PredicateResult.no)
            self.assertEqual(DaemonLogFilter.at(LogLevel.debug)(chatter), PredicateResult.maybe)
            self.assertEqual(chatter["log_level"], LogLevel.info, "the event is not changed")

    def test_parse_level(self) -> None:
        """Level names parse; anything else names the choices."""
        self.assertEqual(parse_level("warn"), LogLevel.warn)
        error = self.assertRaises(ValueError, parse_level, "loud")
        self.assertIn("'loud': expected one of debug, info, warn, error, critical", str(error))


class TwistdOptionTests(SynchronousTestCase):
    """``twistd [options] kraken-<daemon> --log-level LEVEL`` as twistd parses it."""

    def parse(self, *argv: str) -> ServerOptions:
        """twistd's options after parsing ``argv`` (a tracker's config points at a temp dir)."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"data_dir": os.path.abspath(self.mktemp())}, f)
        options = ServerOptions()
        position = argv.index("kraken-tracker") + 1
        options.parseOptions([*argv[:position], "--config", path, *argv[position:]])
        return options

    def test_default_is_info_on_stdout(self) -> None:
        """``twistd -n kraken-tracker`` logs through the info filter (no debug, no chatter)."""
        self.assertIs(self.parse("-n", "kraken-tracker")["logger"], logs.info)

    def test_level_chosen(self) -> None:
        """``--log-level debug`` and ``warn`` pick those observers (``--logfile=-`` is stdout)."""
        options = self.parse("-n", "kraken-tracker", "--log-level", "debug")
        self.assertIs(options["logger"], logs.debug)
        options = self.parse("-n", "--logfile=-", "kraken-tracker", "--log-level", "warn")
        self.assertIs(options["logger"], logs.warn)

    def test_other_destinations_untouched(self) -> None:
        """With ``--logfile FILE`` or ``--syslog`` twistd keeps its own observer."""
        self.assertIsNone(self.parse("-n", "--logfile", "x.log", "kraken-tracker")["logger"])
        self.assertIsNone(self.parse("--syslog", "kraken-tracker")["logger"])

    def test_level_where_it_cannot_apply(self) -> None:
        """``--log-level`` with ``--logfile FILE`` stops twistd with one line, not silently."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as exited:
            self.parse("-n", "--logfile", "x.log", "kraken-tracker", "--log-level", "warn")
        self.assertEqual(exited.exception.code, 1)
        self.assertIn(
            "kraken-tracker: --log-level applies when twistd logs to stdout", err.getvalue()
        )

    def test_unknown_level(self) -> None:
        """A level that does not exist is a usage error naming the choices."""
        error = self.assertRaises(
            usage.UsageError, tracker.Options().parseOptions, ["--log-level", "loud"]
        )
        self.assertIn("--log-level: unknown log level 'loud'", str(error))


class TwistdProcessTests(SynchronousTestCase):
    """A real ``twistd -n kraken-tracker``: what an operator sees from start to stop."""

    def run_tracker(self, *extra: str) -> str:
        """Start a tracker on a free port, stop it with SIGTERM once it listens; its output."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"data_dir": os.path.abspath(self.mktemp())}, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
        port = free_port()
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "kraken-tracker", "--config", path,
            "--listen", f"tcp:{port}:interface=127.0.0.1", *extra,
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, cwd=CHECKOUT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert process.stdout is not None
        lines = []
        for raw in process.stdout:
            lines.append(raw.decode())
            if "starting on" in lines[-1]:
                break
        # SIGTERM stops twistd cleanly once the reactor runs (and answers HTTP).
        for _ in range(200):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        return "".join(lines) + rest.decode()

    def test_no_factory_chatter_by_default(self) -> None:
        """By default the tracker says where it listens but not "Starting/Stopping factory"."""
        output = self.run_tracker()
        self.assertIn("starting on", output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Starting factory", output)
        self.assertNotIn("Stopping factory", output)

    def test_debug_shows_it(self) -> None:
        """``--log-level debug`` brings the factory lines back."""
        output = self.run_tracker("--log-level", "debug")
        self.assertIn("Starting factory", output)
