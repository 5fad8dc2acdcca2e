"""
A bad TLS file stops every daemon's command line with one line naming it, not a traceback.

twistd turns a ``usage.UsageError`` from ``Options.parseOptions`` into a short message and an
exit status; anything raised later, in ``makeService``, is a traceback.  So each daemon's
``postOptions`` reads its TLS files (:func:`kraken.tls.check_tls_files`).  Also the registry
form of the client-certificate guard's 403, which skopeo and docker show in full.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from kraken.config.sections import TLSConfig
from kraken.services import agent, build_index, herd, origin, proxy, tracker
from kraken.tls import ClientCertificateGuard, check_tls_files

from .pki import TestPKI

DAEMONS: dict[str, Any] = {
    "tracker": tracker,
    "origin": origin,
    "build-index": build_index,
    "proxy": proxy,
    "agent": agent,
}


class StartupErrorTests(SynchronousTestCase):
    """Each daemon's options refuse unusable TLS files with a usage error naming the file."""

    def setUp(self) -> None:
        self.pki = TestPKI(self.mktemp())

    def config_file(self, tls: dict[str, str]) -> str:
        """A configuration file with ``tls`` as its tls section (JSON is YAML)."""
        path = os.path.abspath(str(self.mktemp()))
        with open(path, "w") as f:
            json.dump({"tls": tls}, f)
        return path

    def test_missing_ca(self) -> None:
        """A missing CA: every daemon's usage error names tls.ca and the path."""
        missing = os.path.join(self.pki.directory, "missing-ca.pem")
        path = self.config_file({"ca": missing})
        for name, module in DAEMONS.items():
            error = self.assertRaises(
                usage.UsageError, module.Options().parseOptions, ["--config", path]
            )
            self.assertEqual(str(error), f"tls.ca: {missing}: No such file or directory", name)

    def test_key_not_pem(self) -> None:
        """A server key that is not PEM: the servers' usage error names tls.key."""
        cert, _ = self.pki.paths("server")
        junk = os.path.join(self.pki.directory, "junk-key.pem")
        with open(junk, "wb") as f:
            f.write(b"not a key\n")
        path = self.config_file({"ca": self.pki.ca_path, "cert": cert, "key": junk})
        for name in ("tracker", "origin", "build-index", "proxy"):
            error = self.assertRaises(
                usage.UsageError, DAEMONS[name].Options().parseOptions, ["--config", path]
            )
            self.assertTrue(str(error).startswith(f"tls.key: {junk}: not a usable"), name)

    def test_agent_ignores_server_files(self) -> None:
        """The agent serves no TLS: its cert/key are not read, so a bad key does not stop it."""
        cert, _ = self.pki.paths("server")
        junk = os.path.join(self.pki.directory, "junk-key.pem")
        with open(junk, "wb") as f:
            f.write(b"not a key\n")
        path = self.config_file({"ca": self.pki.ca_path, "cert": cert, "key": junk})
        options = agent.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["agent_config"].tls.key, junk)

    def test_good_files_pass(self) -> None:
        """Usable files: option parsing succeeds (the check is not always failing)."""
        cert, key = self.pki.paths("server")
        path = self.config_file({"ca": self.pki.ca_path, "cert": cert, "key": key})
        options = origin.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["origin_config"].tls.cert, cert)

    def test_herd_names_member(self) -> None:
        """In the herd the error names the member whose section has the bad file."""
        missing = os.path.join(self.pki.directory, "missing.pem")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"tracker": {"tls": {"ca": missing}}}, f)
        error = self.assertRaises(
            usage.UsageError,
            herd.Options().parseOptions,
            ["--config", path, "--data", os.path.abspath(self.mktemp())],
        )
        self.assertEqual(str(error), f"tracker.tls.ca: {missing}: No such file or directory")

    def test_herd_tls_directory_unusable(self) -> None:
        """--tls with a CA key that cannot be read: a usage error, not a traceback."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(data, "tls"))
        with open(os.path.join(data, "tls", "ca.pem"), "wb") as f:
            f.write(self.pki.ca.certificate_pem())
        with open(os.path.join(data, "tls", "ca-key.pem"), "wb") as f:
            f.write(b"garbage\n")
        error = self.assertRaises(
            usage.UsageError, herd.Options().parseOptions, ["--tls", "--data", data]
        )
        self.assertTrue(str(error).startswith("--tls: "), str(error))

    def test_passphrase_file_named(self) -> None:
        """A TLS problem with a passphrase file is named by its setting too."""
        cert, key = self.pki.paths("server")
        empty = os.path.join(self.pki.directory, "empty-pass")
        open(empty, "wb").close()
        config = TLSConfig(ca=self.pki.ca_path, cert=cert, key=key, passphrase_file=empty)
        error = self.assertRaises(usage.UsageError, check_tls_files, config)
        self.assertEqual(str(error), f"tls.passphrase_file: {empty}: the passphrase file is empty")


class RegistryGuardTests(SynchronousTestCase):
    """The proxy's guard answers a refused push in the registry's error format."""

    def test_registry_error_body(self) -> None:
        """registry=True: a 403 with {"errors": [{"code": "DENIED", "message": ...}]}."""
        guard = ClientCertificateGuard(Resource(), registry=True)
        request: Any = DummyRequest([b"v2", b"x", b"blobs", b"uploads", b""])
        request.method = b"POST"
        body = guard.render(request)
        self.assertEqual(request.responseCode, 403)
        content_type = request.responseHeaders.getRawHeaders(b"content-type")
        self.assertEqual(content_type, [b"application/json"])
        (error,) = json.loads(body)["errors"]
        self.assertEqual(error["code"], "DENIED")
        self.assertIn("need a client certificate", error["message"])

    def test_plain_error_body(self) -> None:
        """Without registry (the other daemons): a plain-text 403 saying why."""
        guard = ClientCertificateGuard(Resource())
        request: Any = DummyRequest([b"x"])
        request.method = b"PUT"
        body = guard.render(request)
        self.assertEqual(request.responseCode, 403)
        self.assertTrue(body.startswith(b"403 Forbidden: writes to this server need"))
