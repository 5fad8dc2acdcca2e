"""Tests of bench.swarm_client's fetch against a local HTTP server: whole and streamed bodies."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from bench.swarm_client import CHUNK, Landing, fetch

BODY = os.urandom(3 * CHUNK + 12345)
SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """``/ok`` the body; ``/short`` announces more than it sends; ``/long`` one byte more."""

    bodies: ClassVar[dict[str, tuple[int, bytes]]] = {
        "/ok": (len(BODY), BODY),
        "/short": (len(BODY), BODY[:CHUNK]),
        "/long": (len(BODY) + 1, BODY + b"x"),
    }

    def do_GET(self) -> None:
        if self.path not in self.bodies:
            self.send_error(404)
            return
        length, body = self.bodies[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class FetchTests(SynchronousTestCase):
    """The record ``fetch`` prints, for both ways of landing the body."""

    def setUp(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.base = f"http://127.0.0.1:{server.server_address[1]}"
        self.dir = tempfile.mkdtemp()

    def landings(self) -> list[tuple[str, Landing]]:
        return [("streamed", Landing()), ("whole", Landing(len(BODY)))]

    def test_whole_only_when_the_size_is_known_and_small(self) -> None:
        self.assertFalse(Landing().whole)
        self.assertTrue(Landing(len(BODY)).whole)
        self.assertEqual(len(Landing(len(BODY)).buffer), len(BODY))
        self.assertFalse(Landing(0).whole)

    def test_body_checked_and_saved(self) -> None:
        """The right bytes: ok, the SHA-256, and the same bytes in ``out``."""
        for name, landing in self.landings():
            out = os.path.join(self.dir, name)
            record = fetch(f"{self.base}/ok", SHA, out, landing)
            self.assertTrue(record["ok"], (name, record))
            self.assertEqual((record["bytes"], record["sha256"]), (len(BODY), SHA), name)
            self.assertLessEqual(record["start"], record["end"])
            with open(out, "rb") as f:
                self.assertEqual(f.read(), BODY, name)

    def test_wrong_digest_is_not_ok(self) -> None:
        for name, landing in self.landings():
            record = fetch(f"{self.base}/ok", "0" * 64, None, landing)
            self.assertFalse(record["ok"], name)
            self.assertEqual(record["sha256"], SHA, name)

    def test_truncated_body_is_an_error(self) -> None:
        """Fewer bytes than Content-Length: a failed record, not a traceback."""
        for name, landing in self.landings():
            record = fetch(f"{self.base}/short", SHA, None, landing)
            self.assertFalse(record["ok"], name)
            self.assertEqual(record["bytes"], CHUNK, name)
            self.assertIn("IncompleteRead", record["error"], name)

    def test_longer_than_the_size_is_not_ok(self) -> None:
        """A body longer than ``--size`` fails even though its first ``size`` bytes match."""
        record = fetch(f"{self.base}/long", SHA, None, Landing(len(BODY)))
        self.assertFalse(record["ok"], record)
        self.assertGreater(record["bytes"], len(BODY))

    def test_http_error_status(self) -> None:
        for name, landing in self.landings():
            record = fetch(f"{self.base}/missing", SHA, None, landing)
            self.assertEqual(record["status"], 404, name)
            self.assertFalse(record["ok"], name)
