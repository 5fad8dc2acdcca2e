"""Tests for loading a daemon's TLS files (ClusterTLS.from_config) and certificate expiry."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from kraken.certs import make_certificate
from kraken.config import load_config
from kraken.config.sections import TLSConfig
from kraken.tls import (
    EXPIRY_CHECK_INTERVAL,
    ClientCertificateGuard,
    ClusterTLS,
    TLSFileError,
    TLSServerEndpoint,
)

from .pki import DAY, TestPKI, now


class LoadTests(SynchronousTestCase):
    """Files are read at start-up; anything unusable is an error naming the file."""

    def setUp(self) -> None:
        self.pki = TestPKI(self.mktemp())

    def test_empty_section_is_off(self) -> None:
        """An empty tls section: plain HTTP everywhere; the wrappers return what they get."""
        tls = ClusterTLS.from_config(TLSConfig())
        resource = Resource()
        endpoint = TCP4ServerEndpoint(Clock(), 0)  # type: ignore[arg-type]
        self.assertFalse(tls.serving)
        self.assertIsNone(tls.client_policy())
        self.assertIs(tls.guard(resource), resource)
        self.assertIs(tls.server_endpoint(endpoint), endpoint)
        self.assertEqual(tls.certificates(), [])

    def test_serving(self) -> None:
        """cert/key set: the endpoint is wrapped in TLS and the resource guarded."""
        tls = self.pki.server_tls()
        endpoint = TCP4ServerEndpoint(Clock(), 0)  # type: ignore[arg-type]
        self.assertIsInstance(tls.server_endpoint(endpoint), TLSServerEndpoint)
        self.assertIsInstance(tls.guard(Resource()), ClientCertificateGuard)
        self.assertEqual([role for role, _, _ in tls.certificates()], ["server", "ca"])

    def test_agent_does_not_serve(self) -> None:
        """serve=False (the agent) ignores cert/key but keeps the client side."""
        cert, key = self.pki.paths("agent")
        config = TLSConfig(
            ca=self.pki.ca_path, cert=cert, key=key, client_cert=cert, client_key=key
        )
        tls = ClusterTLS.from_config(config, serve=False)
        self.assertFalse(tls.serving)
        self.assertIsNotNone(tls.client_policy())

    def test_missing_file(self) -> None:
        """A missing file is reported with its path."""
        missing = os.path.join(self.pki.directory, "nope.pem")
        e = self.assertRaises(TLSFileError, ClusterTLS.from_config, TLSConfig(ca=missing))
        self.assertEqual(e.path, missing)

    def test_not_pem(self) -> None:
        """A file that is not PEM is refused."""
        path = os.path.join(self.pki.directory, "junk.pem")
        with open(path, "wb") as f:
            f.write(b"junk")
        e = self.assertRaises(TLSFileError, ClusterTLS.from_config, TLSConfig(ca=path))
        self.assertIn("not a PEM certificate", str(e))

    def test_key_of_other_certificate(self) -> None:
        """A key that does not match its certificate is refused."""
        cert, _ = self.pki.paths("server")
        _, other_key = self.pki.paths("other")
        e = self.assertRaises(
            TLSFileError,
            ClusterTLS.from_config,
            TLSConfig(ca=self.pki.ca_path, cert=cert, key=other_key),
        )
        self.assertEqual(e.path, other_key)
        self.assertIn("does not belong", str(e))

    def test_encrypted_key(self) -> None:
        """An encrypted key loads with passphrase_file; without it, or with a wrong one, not."""
        cert, key = self.pki.write(
            "server", make_certificate(self.pki.ca, "server"), passphrase=b"s3cret"
        )
        passphrase = os.path.join(self.pki.directory, "pass")
        with open(passphrase, "wb") as f:
            f.write(b"s3cret\n")
        config = TLSConfig(ca=self.pki.ca_path, cert=cert, key=key, passphrase_file=passphrase)
        self.assertTrue(ClusterTLS.from_config(config).serving)
        e = self.assertRaises(
            TLSFileError,
            ClusterTLS.from_config,
            TLSConfig(ca=self.pki.ca_path, cert=cert, key=key),
        )
        self.assertIn("no passphrase_file", str(e))
        with open(passphrase, "wb") as f:
            f.write(b"wrong\n")
        self.assertRaises(TLSFileError, ClusterTLS.from_config, config)

    def test_config_problems(self) -> None:
        """Client certificates need ca; reads cannot need one when writes do not."""
        config = TLSConfig(client_cert="c.pem", client_key="k.pem")
        self.assertEqual(
            list(config.config_problems()), [("ca", 'required when "client_cert" is set')]
        )
        config = TLSConfig(
            ca="ca.pem", require_client_cert_for_writes=False, require_client_cert_for_reads=True
        )
        self.assertEqual(len(list(config.config_problems())), 1)
        problems = list(TLSConfig(cert="c.pem", key="k.pem").config_problems())
        self.assertEqual([key for key, _ in problems], ["ca"])

    def test_proxy_default(self) -> None:
        """Over TLS the proxy's pushes need a client certificate by default, as every write does.

        Issue 18: a proxy that wrote with its own certificate for anonymous clients was a
        side door around the origins' and the build-index's mutual TLS.
        """
        for daemon in ("proxy", "origin", "tracker", "build-index"):
            self.assertTrue(load_config(daemon, None).tls.require_client_cert_for_writes, daemon)


class ExpiryTests(SynchronousTestCase):
    """The tls_cert_expiry_seconds gauge and the log warnings before expiry."""

    def setUp(self) -> None:
        pki = TestPKI(self.mktemp())
        start = now() - DAY
        pki.write(
            "server",
            make_certificate(pki.ca, "server", not_before=start, not_after=start + 60 * DAY),
        )
        self.tls = pki.server_tls()
        self.end = self.tls.certificates()[0][2].not_valid_after_utc.timestamp()

    def test_gauge(self) -> None:
        """The gauge gives each certificate's seconds left at scrape time, by role."""
        clock = Clock()
        clock.advance(self.end - 1000)
        registry = CollectorRegistry()
        self.tls.expiry_monitor(clock, registry)
        value = registry.get_sample_value(
            "tls_cert_expiry_seconds",
            {"cert": "server", "subject": "server", "path": self.tls.certificates()[0][1]},
        )
        self.assertEqual(value, 1000)
        clock.advance(1500)
        value = registry.get_sample_value(
            "tls_cert_expiry_seconds",
            {"cert": "server", "subject": "server", "path": self.tls.certificates()[0][1]},
        )
        self.assertEqual(value, -500)

    def test_warnings(self) -> None:
        """No warning 31 days before the end; a warning within 30 days; an error once ended."""
        clock = Clock()
        clock.advance(self.end - 31 * 86400)
        monitor = self.tls.expiry_monitor(clock)
        with capturedLogs() as events:
            monitor.startService()
            self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
            clock.advance(EXPIRY_CHECK_INTERVAL * 2)
            warnings = [e for e in events if e["log_level"] == LogLevel.warn]
            self.assertEqual(len(warnings), 1)
            self.assertEqual(warnings[0]["role"], "server")
            clock.advance(EXPIRY_CHECK_INTERVAL * 30)
            self.assertTrue(any(e["log_level"] == LogLevel.error for e in events))
            monitor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
