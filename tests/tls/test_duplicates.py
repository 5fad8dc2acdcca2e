"""
Issue 18, case 3, over real TLS: a build-index honours the duplicate header only from a client
whose certificate the cluster CA signed, even where anonymous writes are let through.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from kraken.clients.buildindex import DUPLICATE_HEADER
from kraken.config.loader import parse_config
from kraken.config.sections import TLSConfig
from kraken.core import Digest
from kraken.http.client import NO_RETRY, HTTPClientFactory, HTTPStatusError, read_body
from kraken.services.build_index import build_build_index
from kraken.tls import ClusterTLS

from .pki import TestPKI


class DuplicateOverTLSTests(TestCase):
    """A build-index serving TLS with ``require_client_cert_for_writes: false``."""

    def setUp(self) -> None:
        """Certificates and a data directory."""
        self.pki = TestPKI(self.mktemp())
        self.data = os.path.abspath(self.mktemp())

    async def start(self) -> str:
        """Start the build-index on an ephemeral port; its base URL."""
        cert, key = self.pki.paths("build-index")
        data = self.data
        config = parse_config(
            "build-index",
            {
                "data_dir": data,
                "server": {"listen": "tcp:0:interface=127.0.0.1", "advertise": "127.0.0.1:1"},
                "origin": {"healthcheck": {"enabled": False}},
                "cluster": {"healthcheck": {"enabled": False}},
                "tls": {
                    "ca": self.pki.ca_path,
                    "cert": cert,
                    "key": key,
                    "require_client_cert_for_writes": False,
                },
            },
        )
        tree = build_build_index(config, reactor)
        tree.startService()
        self.addCleanup(tree.stopService)
        listener: Any = next(s for s in tree if hasattr(s, "_waitingForPort"))
        port = await listener._waitingForPort
        return f"http://127.0.0.1:{port.getHost().port}"

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

    async def test_duplicate_needs_a_cluster_certificate(self) -> None:
        """Anonymous over TLS: 403 and nothing stored; with a cluster certificate: stored."""
        base = await self.start()
        absent = Digest.of_bytes(b"exists nowhere")
        put = f"{base}/tags/test%2Fapp:v1/digest/{absent}"
        headers = {DUPLICATE_HEADER: "0.0"}
        with self.assertRaises(HTTPStatusError) as raised:
            await self.client(None).put(put, headers=headers)
        self.assertEqual(raised.exception.status, 403)
        self.assertIn(b"client certificate signed by the cluster CA", raised.exception.body)
        certified = self.client("build-index")
        await read_body(await certified.put(put, headers=headers), 1024)
        tag = await certified.get(f"{base}/tags/test%2Fapp:v1")
        self.assertEqual(await read_body(tag, 1024), str(absent).encode())
