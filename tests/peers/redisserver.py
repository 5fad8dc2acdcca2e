"""
A throw-away ``redis-server`` on 127.0.0.1 for tests that need a real Redis.

Skips (or fails under ``KRAKEN_REQUIRE_EXTERNAL=1``) when redis-server is not installed.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater

from tests.external import require_program


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process in a temporary directory; ``start()`` then ``stop()``."""

    def __init__(self) -> None:
        self.program = require_program("redis-server")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @inlineCallbacks
    def start(self) -> Any:
        """Start the server and fire once it accepts connections (within ~10 s)."""
        self._dir = tempfile.TemporaryDirectory(prefix="kraken-redis-")
        self.port = free_port()
        log = open(f"{self._dir.name}/redis.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                self.program,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self._dir.name,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        for _ in range(500):
            try:
                conn = yield txredisapi.Connection(
                    "127.0.0.1", self.port, reconnect=False, convertNumbers=False
                )
            except (ConnectionRefusedError, txredisapi.ConnectionError, ValueError):
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.process.returncode}") from None
                yield deferLater(reactor, 0.02, lambda: None)
                continue
            yield conn.disconnect()
            return self.port
        raise RuntimeError("redis-server did not start within 10 s")

    def connect(self) -> Deferred[Any]:
        """A new connection (``convertNumbers=False``, as the store requires)."""
        return txredisapi.Connection("127.0.0.1", self.port, reconnect=False, convertNumbers=False)

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self._dir is not None:
            self._dir.cleanup()
