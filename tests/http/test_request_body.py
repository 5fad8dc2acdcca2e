"""Tests for kraken.http.request_body, and the client meeting a Klein app's errors."""

from __future__ import annotations

import json
from typing import Any

from attrs import frozen
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from kraken.http.client import HTTPStatusError
from kraken.http.errors import install_error_handler, render_registry_json
from kraken.http.request_body import json_response, read_json, read_request_body
from kraken.http.testing import memory_client_factory


@frozen
class EchoAPI:
    """Echoes bodies back, within small limits."""

    app = Klein()
    install_error_handler(app)

    @app.route("/raw", methods=["POST"])
    def raw(self, request: Request) -> bytes:
        """The body, if at most 10 bytes."""
        return read_request_body(request, max_bytes=10)

    @app.route("/json", methods=["POST"])
    def echo_json(self, request: Request) -> bytes:
        """The JSON body re-encoded, if at most 100 bytes."""
        return json_response(request, {"got": read_json(request, max_bytes=100)})

    @app.route("/bigjson", methods=["POST"])
    def echo_big_json(self, request: Request) -> bytes:
        """The JSON body re-encoded, with the default limit."""
        return json_response(request, {"got": read_json(request)})


@frozen
class RegistryLike:
    """A registry-style app whose errors the client reads."""

    app = Klein()
    install_error_handler(app, renderer=render_registry_json)

    @app.route("/v2/<path:rest>")
    def missing(self, request: Request, rest: str) -> bytes:
        """Every blob is unknown."""
        raise KeyError(rest)


class RequestBodyTests(SynchronousTestCase):
    """Bounded bodies and JSON parsing answer 413 and 400 naming the problem."""

    def post(self, path: str, body: bytes) -> tuple[int, bytes, Any]:
        """Status, body and headers of POSTing ``body`` to ``path``."""
        stub: Any = StubTreq(EchoAPI().app.resource())
        response = self.successResultOf(stub.post("http://api" + path, data=body))
        return response.code, self.successResultOf(stub.content(response)), response.headers

    def test_within_limit(self) -> None:
        """A body within the limit is returned whole; the limit itself is allowed."""
        self.assertEqual(self.post("/raw", b"0123456789")[:2], (200, b"0123456789"))
        self.assertEqual(self.post("/raw", b"")[:2], (200, b""))

    def test_too_large(self) -> None:
        """A body over the limit is 413 naming the limit."""
        status, body, _ = self.post("/raw", b"01234567890")
        self.assertEqual(status, 413)
        self.assertIn(b"10 bytes", body)

    def test_json(self) -> None:
        """A JSON body is parsed; the answer is JSON with its content type."""
        status, body, headers = self.post("/json", b'{"a": [1, 2]}')
        self.assertEqual((status, json.loads(body)), (200, {"got": {"a": [1, 2]}}))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])

    def test_bad_json(self) -> None:
        """Malformed JSON is 400 saying where; non-UTF-8 is 400 saying so; big JSON is 413."""
        status, body, _ = self.post("/json", b'{"a": ')
        self.assertEqual(status, 400)
        self.assertIn(b"invalid JSON body", body)
        self.assertIn(b"line 1 column 7", body)
        status, body, _ = self.post("/json", b'"\xff"')
        self.assertEqual(status, 400)
        self.assertIn(b"not UTF-8", body)
        self.assertEqual(self.post("/json", b"[" + b"1," * 100 + b"1]")[0], 413)

    def test_deeply_nested_json(self) -> None:
        """JSON nested past the parser's recursion limit is a 400 saying so, not a 500."""
        status, body, _ = self.post("/bigjson", b"[" * 60_000)
        self.assertEqual((status, body), (400, b"invalid JSON body: nested too deeply to parse"))


class ClientAgainstAppTests(SynchronousTestCase):
    """The client reports a Klein app's mapped errors as HTTPStatusError with the body."""

    def test_registry_error_body_reaches_client(self) -> None:
        """A 500 (not retryable) from a registry-style app arrives once, with its JSON body."""
        factory, agent = memory_client_factory(
            {"proxy:5000": RegistryLike().app.resource()}, Clock()
        )
        failure = self.failureResultOf(
            factory.client().get("http://proxy:5000/v2/x/blobs/sha256:a"), HTTPStatusError
        )
        self.assertEqual(failure.value.status, 500)
        self.assertEqual(json.loads(failure.value.body)["errors"][0]["code"], "UNKNOWN")
        self.assertEqual(len(agent.requests), 1)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
