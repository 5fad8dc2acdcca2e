"""
Every HTTP port of a real herd against slow, huge and malformed clients (issue 17), on sockets.

A herd runs in this reactor on free ports (plain, and with ``--tls`` for the TLS cases); the
clients are blocking sockets in a thread, as a hostile client would write them, so that what is
proved is what goes over the wire: a refused body is answered before the client sends it, a
half-sent head is cut off, a TLS hello on a plain port is answered at once, a client that offers
ALPN is served, a connection beyond the cap gets 503, uploads leave nothing behind.  Every wait
is bounded (a few seconds); sizes are declared, never sent.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

import tests
from kraken.core import Digest
from kraken.io.sendfile import SendfileProducer
from kraken.services.herd import HerdService, build_herd, herd_plan
from tests.external import require_program
from tests.system.clusters import free_block

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
NS = "test%2Fedges"


def exchange(
    port: int,
    data: bytes,
    *,
    wait: float = 5.0,
    tls: ssl.SSLContext | None = None,
    alpn: list[str] | None = None,
) -> tuple[bytes, float, str | None]:
    """Send ``data`` to 127.0.0.1:``port``; read until the server closes or ``wait`` passes.

    Returns what came back, the seconds until the first byte (or the close), and the ALPN
    protocol selected (TLS only).  Blocking: run it in a thread.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=wait)
    sock: Any = raw
    selected = None
    try:
        if tls is not None:
            if alpn:
                tls.set_alpn_protocols(alpn)
            sock = tls.wrap_socket(raw, server_hostname="127.0.0.1")
            selected = sock.selected_alpn_protocol()
        start = time.monotonic()
        sock.sendall(data)
        got = b""
        first: float | None = None
        deadline = start + wait
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except (ConnectionResetError, ssl.SSLError):
                if first is None:
                    first = time.monotonic() - start
                break
            if first is None:
                first = time.monotonic() - start
            if not chunk:
                break
            got += chunk
        return got, first if first is not None else wait, selected
    finally:
        sock.close()


class _Herd:
    """A herd on free ports in this reactor, for one test."""

    def __init__(self, testcase: TestCase, user: dict[str, Any], tls: bool = False) -> None:
        self.base, self.agent_base = free_block(5), free_block(3)
        self.data = os.path.abspath(testcase.mktemp())
        plan = herd_plan(
            data=self.data,
            base_port=self.base,
            agent_base_port=self.agent_base,
            user={"tracker": {"announce_interval": "500ms"}, **user},
            tls=tls,
        )
        self.herd: HerdService = build_herd(plan, reactor)
        self.herd.startService()
        testcase.addCleanup(self.herd.stopService)
        testcase.addCleanup(lambda: deferLater(reactor, 0.2))

    @property
    def proxy(self) -> int:
        return self.base

    @property
    def origin(self) -> int:
        return self.base + 2

    @property
    def tracker(self) -> int:
        return self.base + 3

    @property
    def build_index(self) -> int:
        return self.base + 4

    @property
    def registry(self) -> int:
        return self.agent_base

    @property
    def agent_server(self) -> int:
        return self.agent_base + 2

    def http_ports(self) -> dict[str, int]:
        """Every HTTP port by daemon."""
        return {
            "proxy": self.proxy,
            "origin": self.origin,
            "tracker": self.tracker,
            "build-index": self.build_index,
            "agent registry": self.registry,
            "agent server": self.agent_server,
        }


async def _thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    return await deferToThread(function, *args, **kwargs)


def _upload_sizes(data: str) -> list[int]:
    """The sizes of the files of every upload in progress at the herd's origin."""
    uploads = os.path.join(data, "origin", "store", "upload")
    return [
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(uploads)
        for name in files
    ]


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


class PlainEdgeTests(TestCase):
    """A plain herd: decisions on the head, deadlines, caps, TLS hellos, upload hygiene."""

    timeout = 120

    def setUp(self) -> None:
        fast = {"http": {"header_timeout": "1s", "idle_timeout": "3s", "max_connections": 8}}
        self.herd = _Herd(
            self,
            {
                "origin": {**fast, "uploads": {"max_open": 12}},
                "tracker": fast,
                "build_index": fast,
                "proxy": fast,
                "agent": fast,
            },
        )

    async def origin_upload(self, digest: Digest, size: int) -> str:
        """Open an upload at the origin; its id."""
        answer, _, _ = await _thread(
            exchange,
            self.herd.origin,
            f"POST /namespace/{NS}/blobs/{digest}/uploads?size={size} HTTP/1.1\r\n"
            f"Host: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode(),
        )
        self.assertEqual(_status(answer), 200, answer)
        location = next(
            line for line in answer.split(b"\r\n") if line.lower().startswith(b"location:")
        )
        return location.split(b":", 1)[1].strip().decode()

    def put_chunk(self, digest: Digest, uid: str, blob: bytes) -> int:
        """PATCH all of ``blob`` into upload ``uid`` (blocking); the status."""
        head = (
            f"PATCH /namespace/{NS}/blobs/{digest}/uploads/{uid} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Range: 0-{len(blob)}\r\nContent-Length: {len(blob)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        return _status(exchange(self.herd.origin, head + blob)[0])

    def commit(self, digest: Digest, uid: str) -> int:
        """PUT the commit of upload ``uid`` (blocking); the status."""
        head = (
            f"PUT /namespace/{NS}/blobs/{digest}/uploads/{uid} HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()
        return _status(exchange(self.herd.origin, head)[0])

    async def test_huge_patch_refused_on_its_head(self) -> None:
        """A 512 MiB PATCH whose Content-Range says 0-10 is answered on its head alone."""
        digest = Digest.of_bytes(b"0123456789")
        uid = await self.origin_upload(digest, 10)
        head = (
            f"PATCH /namespace/{NS}/blobs/{digest}/uploads/{uid} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Range: 0-10\r\nContent-Length: {512 * 1024**2}\r\n\r\n"
        ).encode()
        answer, first, _ = await _thread(exchange, self.herd.origin, head)
        self.assertEqual(_status(answer), 400, answer)
        self.assertIn(b"SIZE_INVALID", answer)
        self.assertLess(first, 2.0)
        sizes = await _thread(_upload_sizes, self.herd.data)
        self.assertEqual(sizes, [0])  # the upload exists, nothing was written to it

    async def test_write_to_read_only_registry_refused_on_its_head(self) -> None:
        """A 512 MiB POST to the agent's read-only registry gets 405 before any body byte."""
        head = (
            f"POST /v2/test/x/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {512 * 1024**2}\r\n\r\n"
        ).encode()
        answer, first, _ = await _thread(exchange, self.herd.registry, head)
        self.assertEqual(_status(answer), 405, answer)
        self.assertIn(b"UNSUPPORTED", answer)
        self.assertLess(first, 2.0)

    async def test_oversized_control_body_refused(self) -> None:
        """A 100 MiB announce is 413 on its head; a chunked one is cut off after its 64 KiB."""
        head = (
            f"POST /announce/{'a' * 64} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {100 * 1024**2}\r\n\r\n"
        ).encode()
        answer, _, _ = await _thread(exchange, self.herd.tracker, head)
        self.assertEqual(_status(answer), 413, answer)
        chunk = b"x" * 65536
        chunked = (
            f"POST /announce/{'a' * 64} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode() + (b"10000\r\n" + chunk + b"\r\n") * 2
        answer, _, _ = await _thread(exchange, self.herd.tracker, chunked)
        self.assertEqual(_status(answer), 413, answer)

    async def test_half_a_request_line_is_cut_off_everywhere(self) -> None:
        """Half a request line gets the connection closed after header_timeout, on every port."""
        for name, port in self.herd.http_ports().items():
            answer, first, _ = await _thread(exchange, port, b"GET /hea", wait=6.0)
            self.assertEqual(answer, b"", name)
            self.assertLess(first, 3.0, f"{name} kept half a request line {first:.1f} s")

    async def test_connections_beyond_the_cap_get_503(self) -> None:
        """With 8 connections held open, the ninth gets 503 at once; closing one makes room."""
        port = self.herd.tracker
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        try:
            await deferLater(reactor, 0.2)
            answer, _, _ = await _thread(exchange, port, b"GET /health HTTP/1.1\r\n\r\n")
            self.assertEqual(_status(answer), 503, answer)
            self.assertIn(b"Retry-After", answer)
        finally:
            for s in held:
                s.close()
        await deferLater(reactor, 0.3)
        answer, _, _ = await _thread(
            exchange, port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(_status(answer), 200, answer)

    async def test_tls_hello_on_plain_ports_answered_at_once(self) -> None:
        """A TLS ClientHello on every plain HTTP port gets a plain 400 and a close at once."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        for name, port in self.herd.http_ports().items():
            start = time.monotonic()
            with self.assertRaises(ssl.SSLError, msg=name):
                await _thread(exchange, port, b"GET / HTTP/1.1\r\n\r\n", tls=context)
            self.assertLess(time.monotonic() - start, 2.0, name)
            raw = b"\x16\x03\x01\x00\x05hello"
            answer, first, _ = await _thread(exchange, port, raw)
            self.assertTrue(answer.startswith(b"HTTP/1.0 400"), (name, answer))
            self.assertLess(first, 2.0, name)

    async def test_losing_concurrent_uploads_leave_nothing(self) -> None:
        """Ten uploads of one blob: one commits, the others get 409, no upload is left."""
        blob = os.urandom(256 * 1024)
        digest = Digest.of_bytes(blob)
        uids = [await self.origin_upload(digest, len(blob)) for _ in range(10)]

        statuses = []
        for uid in uids:
            status = await _thread(self.put_chunk, digest, uid, blob)
            if status == 204:
                status = await _thread(self.commit, digest, uid)
            statuses.append(status)
        self.assertEqual(sorted(statuses), [200] + [409] * 9, statuses)
        await deferLater(reactor, 0.5)
        self.assertEqual(await _thread(_upload_sizes, self.herd.data), [])

    async def test_blobs_served_with_sendfile(self) -> None:
        """The origin's blob GET goes out with ``os.sendfile`` through the daemon's own
        listener (which puts a connection-tracking wrapper before the socket); the agent's
        registry serves through the same ``serve_blob`` and listener stack."""
        blob = os.urandom(3 * 1024 * 1024 + 7)
        digest = Digest.of_bytes(blob)
        uid = await self.origin_upload(digest, len(blob))
        self.assertEqual(await _thread(self.put_chunk, digest, uid, blob), 204)
        self.assertEqual(await _thread(self.commit, digest, uid), 200)
        started: list[int] = []
        original = SendfileProducer.start

        def counting(producer: SendfileProducer) -> Any:
            started.append(producer.left)
            return original(producer)

        self.patch(SendfileProducer, "start", counting)
        get = (
            f"GET /namespace/{NS}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n"
            "Range: bytes=7-\r\nConnection: close\r\n\r\n"
        ).encode()
        answer, _, _ = await _thread(exchange, self.herd.origin, get)
        self.assertEqual(_status(answer), 206, answer[:200])
        self.assertTrue(answer.endswith(blob[7:]))
        self.assertEqual(started, [len(blob) - 7])

    async def test_upload_sessions_capped(self) -> None:
        """Past uploads.max_open the origin answers 429 with Retry-After."""
        digest = Digest.of_bytes(b"cap")
        for _ in range(12):
            await self.origin_upload(digest, 3)
        answer, _, _ = await _thread(
            exchange,
            self.herd.origin,
            f"POST /namespace/{NS}/blobs/{digest}/uploads HTTP/1.1\r\n"
            f"Host: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode(),
        )
        self.assertEqual(_status(answer), 429, answer)
        self.assertIn(b"Retry-After: 5", answer)


class TLSEdgeTests(TestCase):
    """A ``--tls`` herd: writes without a certificate refused on the head; ALPN clients served."""

    timeout = 120

    def setUp(self) -> None:
        self.herd = _Herd(self, {}, tls=True)
        self.ca = os.path.join(self.herd.data, "tls", "ca.pem")
        self.curl = require_program("curl")

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    async def test_write_without_certificate_refused_on_its_head(self) -> None:
        """A 256 MiB write without a client certificate gets 403 before any body byte."""
        head = (
            f"PATCH /namespace/{NS}/blobs/sha256:{'a' * 64}/uploads/x HTTP/1.1\r\nHost: x\r\n"
            f"Content-Range: 0-{256 * 1024**2}\r\nContent-Length: {256 * 1024**2}\r\n\r\n"
        ).encode()
        answer, first, _ = await _thread(exchange, self.herd.origin, head, tls=self.context())
        self.assertEqual(_status(answer), 403, answer)
        self.assertIn(b"client certificate", answer)
        self.assertLess(first, 2.0)

    async def test_alpn_clients_served(self) -> None:
        """Python's ssl offering h2 and http/1.1 (as curl and Go do) gets http/1.1 and 200."""
        for port in (self.herd.origin, self.herd.tracker, self.herd.build_index):
            answer, _, selected = await _thread(
                exchange,
                port,
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                tls=self.context(),
                alpn=["h2", "http/1.1"],
            )
            self.assertEqual(selected, "http/1.1")
            self.assertEqual(_status(answer), 200, answer)

    async def test_curl_as_documented(self) -> None:
        """docs/security.md's ``curl --cacert ca.pem https://127.0.0.1:<origin>/health`` works."""
        curl = self.curl
        url = f"https://127.0.0.1:{self.herd.origin}/health"
        result = await _thread(
            subprocess.run,
            [curl, "-sS", "--max-time", "10", "--cacert", self.ca, url],
            capture_output=True,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"OK\n")


class FailFastTests(TestCase):
    """A herd whose port is taken stops with status 1 and one line naming the port."""

    timeout = 60

    def test_taken_port_ends_the_process(self) -> Deferred[None]:
        """``twistd -n kraken-herd`` with the tracker's port taken exits 1 without a banner."""
        base, agent_base = free_block(5), free_block(3)
        taken = socket.socket()
        taken.bind(("127.0.0.1", base + 3))
        taken.listen(1)
        self.addCleanup(taken.close)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
        data = os.path.abspath(self.mktemp())
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--pidfile=",
            "-n",
            "kraken-herd",
            "--data",
            data,
            "--base-port",
            str(base),
            "--agent-base-port",
            str(agent_base),
        ]

        def check(result: subprocess.CompletedProcess[bytes]) -> None:
            output = (result.stdout + result.stderr).decode(errors="replace")
            self.assertEqual(result.returncode, 1, output)
            lines = [line for line in output.splitlines() if "cannot listen" in line]
            self.assertEqual(len(lines), 1, output)
            self.assertIn(f"tcp:{base + 3}", lines[0])
            self.assertIn("in use", lines[0])
            self.assertNotIn("Traceback", output)
            self.assertNotIn("Kraken herd is up", output)

        d: Deferred[Any] = deferToThread(
            subprocess.run, argv, capture_output=True, timeout=40, env=env, cwd=CHECKOUT
        )
        return d.addCallback(check)
