"""
``kraken blob push|stat|pull``: command-line mistakes are one line, and the commands talk to an
origin that serves mutual TLS (a real origin on 127.0.0.1, the CLI in a child process).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from typing import Any

from klein import Klein
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

import kraken
from kraken.cli import main
from kraken.config.loader import parse_config
from kraken.core import Digest
from kraken.http.testing import memory_client_factory
from kraken.origin.blobcli import pull_through_agent
from kraken.services.origin import build_origin
from tests.peers.redisserver import free_port
from tests.tls.pki import TestPKI

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(kraken.__file__)))


def temp_path(test: TestCase) -> str:
    """The absolute path of a new temporary file name of ``test``."""
    return os.path.abspath(test.mktemp())


def write_temp(test: TestCase, data: bytes) -> str:
    """Write ``data`` to a new file of ``test``; its absolute path."""
    path = temp_path(test)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read(path: str) -> bytes:
    """The content of the file at ``path``."""
    with open(path, "rb") as f:
        return f.read()


def run_cli(*argv: str) -> tuple[int, str]:
    """Run ``kraken`` in this process; the exit status and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = int(e.code or 0)
    return code, err.getvalue()


class OptionMistakeTests(SynchronousTestCase):
    """Mistakes on the command line are reported before any network call, in one line."""

    def assert_one_line(self, argv: list[str], expected: str) -> None:
        """``argv`` exits 2 with a single stderr line containing ``expected``."""
        code, err = run_cli(*argv)
        self.assertEqual(code, 2, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(expected, err)

    def test_unsupported_scheme(self) -> None:
        """``--origin ftp://...`` names the origin and the schemes that work, no traceback."""
        self.assert_one_line(
            [
                "blob",
                "stat",
                "--origin",
                "ftp://127.0.0.1:1",
                "--namespace",
                "ns",
                "sha256:" + "a" * 64,
            ],
            "bad --origin 'ftp://127.0.0.1:1': the scheme must be http or https",
        )

    def test_origin_without_port(self) -> None:
        """An origin without a port (or with junk for one) is refused by name."""
        for origin in ("http://127.0.0.1", "http://127.0.0.1:http", "http://h:1/x"):
            self.assert_one_line(
                ["blob", "stat", "--origin", origin, "--namespace", "ns", "sha256:" + "a" * 64],
                f"bad --origin {origin!r}",
            )

    def test_half_a_client_certificate(self) -> None:
        """``--cert`` without ``--key`` (or without ``--cacert``) is refused."""
        base = ["blob", "stat", "--origin", "https://127.0.0.1:1", "--namespace", "ns"]
        digest = "sha256:" + "a" * 64
        self.assert_one_line([*base, "--cert", "c.pem", digest], "--cert and --key go together")
        self.assert_one_line(
            [*base, "--cert", "c.pem", "--key", "k.pem", digest], "--cert needs --cacert"
        )

    def test_missing_ca_file(self) -> None:
        """A ``--cacert`` that does not exist is named with the reason."""
        missing = os.path.abspath(self.mktemp())
        self.assert_one_line(
            [
                "blob",
                "stat",
                "--origin",
                "https://127.0.0.1:1",
                "--namespace",
                "ns",
                "--cacert",
                missing,
                "sha256:" + "a" * 64,
            ],
            f"{missing}: No such file or directory",
        )


class FakeAgent:
    """An agent's server API: a blob that downloads while ``/status`` reports progress."""

    app = Klein()

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = Digest.of_bytes(data)
        self.done = 0
        self.finished: Deferred[None] = Deferred()

    @app.route("/blobs/<digest>/status")
    def status(self, request: Any, digest: str) -> bytes:
        """Progress as the real agent reports it (404 before the download starts)."""
        if self.done == 0:
            request.setResponseCode(404)
            return b"not downloading"
        total = len(self.data)
        return json.dumps(
            {"state": "downloading", "bytes": {"done": self.done, "total": total},
             "peers": 2, "origins": 1}
        ).encode()  # fmt: skip

    @app.route("/namespace/<path:ns>/blobs/<digest>")
    async def blob(self, request: Any, ns: str, digest: str) -> bytes:
        """Answers once the download is over, as the agent does."""
        await self.finished
        return self.data


class AgentPullTests(SynchronousTestCase):
    """``kraken blob pull --agent``: the blob through an agent, with its status as progress."""

    def test_progress_then_blob(self) -> None:
        """Statuses reach the progress callback while the agent downloads; the body is checked."""
        clock = Clock()
        data = os.urandom(10_000)
        agent = FakeAgent(data)
        factory, memory = memory_client_factory({"agent:16002": agent.app.resource()}, clock)
        statuses: list[dict[str, Any]] = []
        out = io.BytesIO()
        d = Deferred.fromCoroutine(
            pull_through_agent(
                factory.client(), clock, "http://agent:16002", "library/x", agent.digest, out,
                statuses.append,
            )
        )  # fmt: skip
        memory.flush()
        self.assertEqual(statuses, [])  # 404: not started yet
        for done in (2_000, 7_000):
            agent.done = done
            clock.advance(0.5)
            memory.flush()
        self.assertEqual([s["bytes"]["done"] for s in statuses], [2_000, 7_000])
        self.assertEqual(statuses[-1]["peers"], 2)
        agent.finished.callback(None)
        memory.flush()
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(out.getvalue(), data)
        self.assertEqual(
            statuses[-1], {"state": "cached", "bytes": {"done": 10_000, "total": 10_000}}
        )
        clock.advance(5)
        self.assertEqual(len(statuses), 3, "polling stopped")

    def test_wrong_content(self) -> None:
        """A body that is not the digest fails with ValueError naming both."""
        clock = Clock()
        agent = FakeAgent(b"real")
        agent.digest = Digest.of_bytes(b"expected")
        agent.finished.callback(None)
        factory, memory = memory_client_factory({"agent:16002": agent.app.resource()}, clock)
        d = Deferred.fromCoroutine(
            pull_through_agent(
                factory.client(), clock, "http://agent:16002", "ns", agent.digest, io.BytesIO()
            )
        )
        memory.flush()
        self.assertIn("not sha256:", str(self.failureResultOf(d, ValueError).value))


class TLSOriginTests(TestCase):
    """The commands against a real origin serving mutual TLS, as an operator runs them."""

    timeout = 60

    def setUp(self) -> None:
        """Start one origin with TLS (writes need a client certificate) on free ports."""
        self.pki = TestPKI(os.path.abspath(self.mktemp()))
        cert, key = self.pki.paths("origin")
        self.client_cert, self.client_key = self.pki.paths("client")
        self.port = free_port()
        member = f"127.0.0.1:{self.port}"
        config = parse_config(
            "origin",
            {
                "data_dir": os.path.abspath(self.mktemp()),
                "server": {"listen": f"tcp:{self.port}:interface=127.0.0.1"},
                "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                "cluster": {"static": [member]},
                "healthcheck": {"enabled": False},
                "tls": {"ca": self.pki.ca_path, "cert": cert, "key": key},
                "backends": [
                    {
                        "namespace": ".*",
                        "backend": {"fs": {"root": os.path.abspath(self.mktemp())}},
                    }
                ],
            },
        )
        service = build_origin(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)

    async def kraken(self, *argv: str) -> tuple[str, str, int]:
        """Run ``python -m kraken.cli ARGV`` in a child process: stdout, stderr, exit status."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "kraken.cli", *argv], env=env, path=CHECKOUT
        )
        return out.decode(), err.decode(), code

    def tls_options(self, *, client: bool = True) -> list[str]:
        """``--cacert`` and, with ``client``, the client certificate and key."""
        options = ["--cacert", self.pki.ca_path]
        if client:
            options += ["--cert", self.client_cert, "--key", self.client_key]
        return options

    async def test_push_stat_pull_over_tls(self) -> None:
        """With --cacert/--cert/--key a blob goes up, is stat'ed and comes back over HTTPS.

        A second push of the same file says the blob was already present (the progress bar
        alone would sit at 0 %), and still prints the digest and exits 0.
        """
        data = os.urandom(300_000)
        path = write_temp(self, data)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        origin = ["--origin", f"https://127.0.0.1:{self.port}", "--namespace", "test/tls"]

        out, err, code = await self.kraken("blob", "push", *origin, *self.tls_options(), path)
        self.assertEqual((code, out), (0, f"{digest}\n"), err)
        self.assertNotIn("already present", err)

        out, err, code = await self.kraken("blob", "push", *origin, *self.tls_options(), path)
        self.assertEqual((code, out), (0, f"{digest}\n"), err)
        self.assertIn(f"{digest} already present at the origin; nothing uploaded", err)

        out, err, code = await self.kraken(
            "blob", "stat", *origin, *self.tls_options(client=False), digest
        )
        self.assertEqual((code, out), (0, f"{len(data)}\n"), err)

        pulled = temp_path(self)
        out, err, code = await self.kraken(
            "blob", "pull", *origin, *self.tls_options(client=False), digest, "-o", pulled
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(read(pulled), data)

    async def test_push_without_client_certificate(self) -> None:
        """A push without a client certificate is refused with the origin's 403, in one line."""
        path = write_temp(self, b"no certificate")
        origin = ["--origin", f"https://127.0.0.1:{self.port}", "--namespace", "test/tls"]
        _, err, code = await self.kraken(
            "blob", "push", "-q", *origin, *self.tls_options(client=False), path
        )
        self.assertEqual(code, 2, err)
        self.assertNotIn("Traceback", err)
        self.assertIn("HTTP 403", err)

    async def test_plain_http_client_cannot_talk_to_tls_origin(self) -> None:
        """Without --cacert the command fails cleanly (before this change it had no way at all)."""
        origin = ["--origin", f"http://127.0.0.1:{self.port}", "--namespace", "test/tls"]
        _, err, code = await self.kraken("blob", "stat", *origin, "sha256:" + "b" * 64)
        self.assertNotEqual(code, 0, err)
        self.assertNotIn("Traceback", err)
