"""
The daemons wired to kraken.tls: a real tracker on 127.0.0.1 serving its API over TLS, with the
write guard in front and the expiry gauge on /metrics.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from kraken.config import load_config
from kraken.config.sections import TLSConfig
from kraken.http.client import NO_RETRY, HTTPClientFactory, HTTPStatusError, read_body
from kraken.services.tracker import build_tracker
from kraken.tls import ClusterTLS

from .pki import TestPKI


class TrackerTLSTests(TestCase):
    """``build_tracker`` with a ``tls:`` section listens with TLS and guards writes."""

    async def start(self) -> int:
        """Start a tracker with TLS on an ephemeral port; return the port."""
        self.pki = TestPKI(self.mktemp())
        cert, key = self.pki.paths("tracker")
        config = attrs.evolve(
            load_config("tracker", None),
            tls=TLSConfig(ca=self.pki.ca_path, cert=cert, key=key),
        )
        config = attrs.evolve(
            config,
            origin=attrs.evolve(
                config.origin, healthcheck=attrs.evolve(config.origin.healthcheck, enabled=False)
            ),
        )
        tree = build_tracker(config, reactor, listen="tcp:0:interface=127.0.0.1")
        tree.startService()
        self.addCleanup(tree.stopService)
        listener: Any = next(s for s in tree if hasattr(s, "_waitingForPort"))
        port = await listener._waitingForPort
        return int(port.getHost().port)

    def client(self, name: str | None) -> Any:
        """A client with (or without, for None) a certificate from the cluster CA."""
        if name is None:
            tls = ClusterTLS.from_config(TLSConfig(ca=self.pki.ca_path))
        else:
            cert, key = self.pki.paths(name)
            tls = ClusterTLS.from_config(
                TLSConfig(ca=self.pki.ca_path, client_cert=cert, client_key=key)
            )
        factory = HTTPClientFactory(reactor, tls=tls.client_policy(), retry=NO_RETRY, timeout=10)
        self.addCleanup(factory.close)
        return factory.client()

    async def test_tracker_over_tls(self) -> None:
        """Anonymous: /health 200 and announce 403; certified: the announce reaches the API."""
        port = await self.start()
        base = f"http://127.0.0.1:{port}"
        anonymous = self.client(None)
        health = await anonymous.get(f"{base}/health")
        await read_body(health, 1024)
        announce = f"{base}/announce/{'0' * 40}"
        with self.assertRaises(HTTPStatusError) as raised:
            await anonymous.post(announce, data=b"{}")
        self.assertEqual(raised.exception.status, 403)
        certified = self.client("agent")
        with self.assertRaises(HTTPStatusError) as raised:
            await certified.post(announce, data=b"{}")
        self.assertEqual(raised.exception.status, 400)  # past the guard: the body is invalid
        metrics = await read_body(await anonymous.get(f"{base}/metrics"), 1 << 20)
        self.assertIn(b'tls_cert_expiry_seconds{cert="server"', metrics)


class HerdTLSTests(TestCase):
    """``twistd kraken-herd --tls``: the plan makes the dev CA and wires every member to it."""

    def test_plan(self) -> None:
        """--tls creates <data>/tls once and gives every member its certificate and the CA."""
        from kraken.services.herd import HERD_CERTIFICATES, Options

        data = self.mktemp()
        options = Options()
        options.parseOptions(["--tls", "--data", data])
        plan = options["herd_plan"]
        for name in HERD_CERTIFICATES:
            self.assertTrue(os.path.exists(os.path.join(data, "tls", f"{name}.pem")), name)
        for kind, _, config in plan.members:
            self.assertEqual(config.tls.ca, f"{data}/tls/ca.pem")
            self.assertEqual(config.tls.client_cert, f"{data}/tls/{kind}.pem")
            self.assertTrue(ClusterTLS.from_config(config.tls).serving)
        with open(os.path.join(data, "tls", "ca.pem"), "rb") as f:
            ca = f.read()
        Options().parseOptions(["--tls", "--data", data])
        with open(os.path.join(data, "tls", "ca.pem"), "rb") as f:
            self.assertEqual(f.read(), ca)
