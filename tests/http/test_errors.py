"""Tests for kraken.http.errors: exceptions mapped to statuses, as text or registry JSON."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from typing import Any, cast
from unittest import SkipTest

from attrs import frozen
from klein import Klein
from treq.testing import StubTreq
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from kraken.core import Digest, InvalidJSON
from kraken.http.errors import (
    BLOB_UNKNOWN,
    CORE_ERRORS,
    DIGEST_INVALID,
    REGISTRY_ERROR_CODES,
    UNAUTHORIZED,
    APIError,
    ErrorMap,
    RegistryError,
    install_error_handler,
    render_registry_json,
)
from kraken.store import naming_file


class BlobNotFound(Exception):
    """A domain error a daemon maps itself."""


class TagNotFound(BlobNotFound):
    """A subclass with its own mapping."""


class RetentionExpired(BlobNotFound):
    """A subclass that inherits its parent's mapping."""


class Overloaded(Exception):
    """A domain error mapped to a 5xx."""


APP_ERRORS = CORE_ERRORS.extended({BlobNotFound: BLOB_UNKNOWN, TagNotFound: 404, Overloaded: 503})


def raising(exc: BaseException) -> Any:
    """Raise ``exc`` (usable in a lambda)."""
    raise exc


@frozen
class TextAPI:
    """A Klein app in house style, with the plain-text renderer."""

    app = Klein()
    install_error_handler(app, APP_ERRORS)

    @app.route("/raise/<kind>", methods=["GET", "HEAD"])
    def fail(self, request: Request, kind: str) -> bytes:
        """Raise the exception named by ``kind``."""
        errors: dict[str, Any] = {
            "digest": lambda: Digest.parse("sha256:nope"),
            "api": lambda: raising(APIError(409, "tag exists", headers={"X-Conflict": "yes"})),
            "bare": lambda: raising(APIError(404)),
            "blob": lambda: raising(BlobNotFound("blob sha256:abc not found")),
            "tag": lambda: raising(TagNotFound("tag test/a:latest not found")),
            "expired": lambda: raising(RetentionExpired("expired")),
            "overloaded": lambda: raising(Overloaded("too many downloads")),
            "bug": lambda: 1 // 0,
        }
        errors[kind]()
        return b"unreachable"

    @app.route("/ok")
    def ok(self, request: Request) -> bytes:
        """Succeed."""
        return b"fine"

    def resource(self) -> Any:
        """The app's resource."""
        return self.app.resource()


@frozen
class RegistryAPI:
    """The same mechanism with the registry JSON renderer."""

    app = Klein()
    install_error_handler(app, APP_ERRORS, render_registry_json)

    @app.route("/v2/<path:rest>", methods=["GET"])
    def fail(self, request: Request, rest: str) -> bytes:
        """Raise according to the path."""
        if rest == "blob":
            raise RegistryError(BLOB_UNKNOWN, detail={"digest": "sha256:abc"})
        if rest == "digest":
            Digest.parse("sha256:XYZ")
        if rest == "mapped":
            raise BlobNotFound("blob sha256:abc not found")
        if rest == "auth":
            raise APIError(401, "who are you")
        if rest == "plain":
            raise APIError(400, "bad thing")
        raise KeyError("secret-internal-key")

    def resource(self) -> Any:
        """The app's resource."""
        return self.app.resource()


class ErrorTestCase(SynchronousTestCase):
    """Sends requests to an app through StubTreq and reads the answers."""

    def send(self, app: Any, path: str, method: str = "GET") -> tuple[int, bytes, Any]:
        """Status, body and headers of ``method path``."""
        stub: Any = StubTreq(app.resource())
        response = self.successResultOf(stub.request(method, "http://api" + path))
        body = self.successResultOf(stub.content(response))
        return response.code, body, response.headers

    def capture_logs(self) -> list[dict[str, Any]]:
        """Collect log events for the rest of the test."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events


class TextRendererTests(ErrorTestCase):
    """The plain-text renderer used by origin, tracker, build-index and agent."""

    def test_success_untouched(self) -> None:
        """Routes that succeed are not affected."""
        self.assertEqual(self.send(TextAPI(), "/ok")[:2], (200, b"fine"))

    def test_invalid_digest(self) -> None:
        """InvalidDigest from kraken.core is 400 with the message naming the digest."""
        status, body, headers = self.send(TextAPI(), "/raise/digest")
        self.assertEqual(status, 400)
        self.assertIn(b"sha256:nope", body)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])

    def test_api_error(self) -> None:
        """An APIError answers with its status, message and extra headers."""
        status, body, headers = self.send(TextAPI(), "/raise/api")
        self.assertEqual((status, body), (409, b"tag exists"))
        self.assertEqual(headers.getRawHeaders(b"x-conflict"), [b"yes"])

    def test_bare_status(self) -> None:
        """An APIError without a message has an empty body, as the Go handlers send."""
        self.assertEqual(self.send(TextAPI(), "/raise/bare")[:2], (404, b""))

    def test_registered_domain_errors(self) -> None:
        """Registered exceptions map by MRO: own entry first, else the nearest base's."""
        app = TextAPI()
        self.assertEqual(self.send(app, "/raise/blob")[:2], (404, b"blob sha256:abc not found"))
        self.assertEqual(self.send(app, "/raise/tag")[:2], (404, b"tag test/a:latest not found"))
        self.assertEqual(self.send(app, "/raise/expired")[:2], (404, b"expired"))

    def test_unexpected_error_is_500_and_logged(self) -> None:
        """An unmapped exception is logged with its traceback and answered with a bland 500."""
        events = self.capture_logs()
        status, body, _ = self.send(TextAPI(), "/raise/bug")
        self.assertEqual((status, body), (500, b"internal server error"))
        self.assertNotIn(b"ZeroDivision", body)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["path"], "/raise/bug")
        self.assertEqual(failures[0]["method"], "GET")

    def test_mapped_5xx_logged_without_traceback(self) -> None:
        """A mapped 5xx is logged as a warning, with no failure attached."""
        events = self.capture_logs()
        status, body, _ = self.send(TextAPI(), "/raise/overloaded")
        self.assertEqual((status, body), (503, b"too many downloads"))
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([e["status"] for e in warnings], [503])
        self.assertFalse([e for e in events if "log_failure" in e])

    def test_routing_errors(self) -> None:
        """Unknown routes are 404 and wrong methods 405 with Allow, through the same renderer."""
        app = TextAPI()
        status, body, headers = self.send(app, "/nowhere")
        self.assertEqual((status, body), (404, b"not found"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        status, body, headers = self.send(app, "/raise/bug", method="POST")
        self.assertEqual(status, 405)
        self.assertIn(b"GET", headers.getRawHeaders(b"allow")[0])

    def test_head_has_no_body(self) -> None:
        """A failing HEAD gets the status and no body."""
        status, body, _ = self.send(TextAPI(), "/raise/blob", method="HEAD")
        self.assertEqual((status, body), (404, b""))

    def test_bare_klein_app(self) -> None:
        """The installer also works for a Klein app used without a class."""
        app = Klein()
        install_error_handler(app)

        @app.route("/")
        def root(request: Request) -> bytes:
            raise APIError(418, "teapot")

        self.assertEqual(self.send(app, "/")[:2], (418, b"teapot"))


class RegistryRendererTests(ErrorTestCase):
    """The registry v2 JSON renderer."""

    def errors(self, path: str) -> tuple[int, list[dict[str, Any]]]:
        """Status and the "errors" list of a registry response."""
        status, body, headers = self.send(RegistryAPI(), path)
        self.assertEqual(
            headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        return status, json.loads(body)["errors"]

    def test_registry_error(self) -> None:
        """A RegistryError carries its code, default message, status and detail."""
        self.assertEqual(
            self.errors("/v2/blob"),
            (
                404,
                [
                    {
                        "code": "BLOB_UNKNOWN",
                        "message": "blob unknown to registry",
                        "detail": {"digest": "sha256:abc"},
                    }
                ],
            ),
        )

    def test_core_error(self) -> None:
        """InvalidDigest becomes 400 DIGEST_INVALID, its message naming the value, no detail."""
        status, errors = self.errors("/v2/digest")
        self.assertEqual((status, errors[0]["code"]), (400, "DIGEST_INVALID"))
        self.assertIn("sha256:XYZ", errors[0]["message"])
        self.assertNotIn("detail", errors[0])

    def test_mapped_domain_error(self) -> None:
        """A daemon's registered exception gets its registry code."""
        status, errors = self.errors("/v2/mapped")
        self.assertEqual((status, errors[0]["code"]), (404, "BLOB_UNKNOWN"))

    def test_code_from_status(self) -> None:
        """An APIError without a code gets one from its status, UNKNOWN if none fits."""
        self.assertEqual(self.errors("/v2/auth")[1][0]["code"], "UNAUTHORIZED")
        self.assertEqual(
            self.errors("/v2/plain"), (400, [{"code": "UNKNOWN", "message": "bad thing"}])
        )

    def test_unexpected(self) -> None:
        """An unmapped exception is a 500 UNKNOWN that leaks nothing of it."""
        status, body, _ = self.send(RegistryAPI(), "/v2/other")
        self.assertEqual(status, 500)
        self.assertEqual(
            json.loads(body),
            {"errors": [{"code": "UNKNOWN", "message": "internal server error"}]},
        )
        self.assertNotIn(b"secret-internal-key", body)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class CodeTableTests(SynchronousTestCase):
    """The distribution spec's error codes and their statuses."""

    def test_statuses(self) -> None:
        """Every code of the spec has the status the spec gives it."""
        expected = {
            "BLOB_UNKNOWN": 404,
            "BLOB_UPLOAD_INVALID": 400,
            "BLOB_UPLOAD_UNKNOWN": 404,
            "DIGEST_INVALID": 400,
            "MANIFEST_BLOB_UNKNOWN": 404,
            "MANIFEST_INVALID": 400,
            "MANIFEST_UNKNOWN": 404,
            "NAME_INVALID": 400,
            "NAME_UNKNOWN": 404,
            "SIZE_INVALID": 400,
            "UNAUTHORIZED": 401,
            "DENIED": 403,
            "UNSUPPORTED": 405,
            "TOOMANYREQUESTS": 429,
            "RANGE_INVALID": 416,
            "INSUFFICIENT_STORAGE": 507,
        }
        for name, status in expected.items():
            self.assertEqual(REGISTRY_ERROR_CODES[name].status, status, name)
            self.assertEqual(REGISTRY_ERROR_CODES[name].name, name)

    def test_error_map_lookup(self) -> None:
        """ErrorMap.of and extended build mappings; unknown exceptions map to None."""
        errors = ErrorMap.of({KeyError: UNAUTHORIZED})
        mapped = errors.to_api_error(KeyError("k"))
        assert mapped is not None
        self.assertEqual((mapped.status, mapped.code), (401, UNAUTHORIZED))
        self.assertIsNone(errors.to_api_error(ValueError("v")))
        replaced = errors.extended({KeyError: 410}).to_api_error(KeyError("k"))
        assert replaced is not None
        self.assertEqual((replaced.status, replaced.code), (410, None))
        self.assertIsNone(CORE_ERRORS.to_api_error(ValueError("not a core error")))
        try:
            Digest.parse("sha256:short")
        except ValueError as e:
            digest = CORE_ERRORS.to_api_error(e)
        assert digest is not None
        self.assertEqual((digest.status, digest.code), (400, DIGEST_INVALID))


@frozen
class DiskAPI:
    """Routes that fail the way a daemon's own disk fails, through a named daemon's map."""

    app = Klein()
    install_error_handler(app, CORE_ERRORS.extended({}, daemon="origin"), render_registry_json)

    full: str

    @app.route("/full", methods=["PUT"])
    def write_full(self, request: Request) -> bytes:
        """Write to ``full`` (``/dev/full``: the kernel answers ENOSPC), as the store writes."""
        with open(self.full, "wb", buffering=0) as f, naming_file(self.full):
            f.write(b"x" * 4096)
        return b"unreachable"

    @app.route("/readonly", methods=["PUT"])
    def readonly(self, request: Request) -> bytes:
        """An EROFS as the store would raise it."""
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/data/uploads/ab/data")

    @app.route("/refused", methods=["GET"])
    def refused(self, request: Request) -> bytes:
        """An OSError that is no fault of the local disk."""
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    @app.route("/sqlite-full", methods=["PUT"])
    def sqlite_full(self, request: Request) -> bytes:
        """A real SQLite database that has reached its page limit (SQLITE_FULL)."""
        db = sqlite3.connect(":memory:")
        try:
            db.execute("CREATE TABLE t (v BLOB)")
            db.execute("PRAGMA max_page_count = 2")
            for _ in range(10):
                db.execute("INSERT INTO t VALUES (zeroblob(4096))")
        finally:
            db.close()
        return b"unreachable"

    def resource(self) -> Any:
        """The app's resource."""
        return self.app.resource()


class LocalIOErrorTests(ErrorTestCase):
    """Failures of the daemon's own disk: 507 when it is full, 503 otherwise, never a bare 500."""

    def setUp(self) -> None:
        if not os.path.exists("/dev/full"):
            raise SkipTest("no /dev/full on this system")

    def test_disk_full_is_507_naming_daemon_and_path(self) -> None:
        """ENOSPC from a real write is 507 INSUFFICIENT_STORAGE naming the daemon and file."""
        status, body, _ = self.send(DiskAPI("/dev/full"), "/full", "PUT")
        self.assertEqual(status, 507)
        (error,) = json.loads(body)["errors"]
        self.assertEqual(error["code"], "INSUFFICIENT_STORAGE")
        self.assertEqual(error["message"], "origin: No space left on device (ENOSPC) at /dev/full")

    def test_other_local_failure_is_503_with_reason(self) -> None:
        """EROFS is 503 UNAVAILABLE with the reason, the daemon and the path."""
        status, body, _ = self.send(DiskAPI("/dev/full"), "/readonly", "PUT")
        self.assertEqual(status, 503)
        (error,) = json.loads(body)["errors"]
        self.assertEqual(error["code"], "UNAVAILABLE")
        self.assertEqual(
            error["message"], "origin: Read-only file system (EROFS) at /data/uploads/ab/data"
        )

    def test_full_sqlite_database_is_507(self) -> None:
        """SQLITE_FULL from a real database is 507 too."""
        status, body, _ = self.send(DiskAPI("/dev/full"), "/sqlite-full", "PUT")
        self.assertEqual(status, 507)
        (error,) = json.loads(body)["errors"]
        self.assertIn(
            "origin: its SQLite database failed: database or disk is full", error["message"]
        )

    def test_network_oserror_stays_500(self) -> None:
        """An OSError that is not about local files is still an unexpected 500."""
        status, _, _ = self.send(DiskAPI("/dev/full"), "/refused")
        self.assertEqual(status, 500)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionRefusedError)), 1)

    def test_unnamed_file_and_default_daemon(self) -> None:
        """An fd-level error without a path still says which daemon; the default name is kraken."""
        mapped = CORE_ERRORS.to_api_error(OSError(errno.EDQUOT, "Disk quota exceeded"))
        assert mapped is not None
        self.assertEqual(mapped.status, 507)
        self.assertEqual(mapped.message, "kraken: Disk quota exceeded (EDQUOT) at an unnamed file")

    def test_daemon_name_survives_extension(self) -> None:
        """A map extended again keeps its daemon's name unless given a new one."""
        named = CORE_ERRORS.extended({}, daemon="tracker").extended({KeyError: 404})
        self.assertEqual(named.daemon, "tracker")
        error = named.to_api_error(OSError(errno.EIO, "Input/output error", "/x"))
        assert error is not None
        self.assertEqual(
            (error.status, error.message), (503, "tracker: Input/output error (EIO) at /x")
        )


class JSONErrorTests(SynchronousTestCase):
    """Undecodable JSON is a 400 on every daemon."""

    def test_invalid_json_is_400(self) -> None:
        """CORE_ERRORS answers InvalidJSON 400 with its message."""
        mapped = CORE_ERRORS.to_api_error(InvalidJSON("invalid JSON body: nested too deeply"))
        assert mapped is not None
        self.assertEqual(
            (mapped.status, mapped.message), (400, "invalid JSON body: nested too deeply")
        )
