"""Tests for kraken.certs and the ``kraken certs`` command."""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from kraken.certs import ensure_certificates, issue, load_ca
from kraken.cli import main
from kraken.config.sections import TLSConfig
from kraken.tls import ClusterTLS


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``kraken argv...``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def load(path: str) -> x509.Certificate:
    """The certificate in ``path``."""
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


class CertsCommandTests(SynchronousTestCase):
    """``kraken certs init`` and ``kraken certs issue``."""

    def setUp(self) -> None:
        self.dir = self.mktemp()

    def test_init_and_issue(self) -> None:
        """init makes a CA; issue makes a server+client certificate it signed, keys private."""
        self.assertEqual(run_cli("certs", "init", self.dir)[0], 0)
        rc, out, _ = run_cli("certs", "issue", self.dir, "origin")
        self.assertEqual(rc, 0)
        self.assertIn("origin.pem", out)
        ca = load(os.path.join(self.dir, "ca.pem"))
        cert = load(os.path.join(self.dir, "origin.pem"))
        cert.verify_directly_issued_by(ca)
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            set(usages), {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        )
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")]
        )
        for key in ("ca-key.pem", "origin-key.pem"):
            mode = stat.S_IMODE(os.stat(os.path.join(self.dir, key)).st_mode)
            self.assertEqual(mode, 0o600, key)
        tls = ClusterTLS.from_config(
            TLSConfig(
                ca=os.path.join(self.dir, "ca.pem"),
                cert=os.path.join(self.dir, "origin.pem"),
                key=os.path.join(self.dir, "origin-key.pem"),
            )
        )
        self.assertTrue(tls.serving)

    def test_issue_with_sans(self) -> None:
        """--san replaces the default names; IPv6 addresses and DNS names are told apart."""
        run_cli("certs", "init", self.dir)
        rc, _, _ = run_cli(
            "certs", "issue", self.dir, "tracker", "--san", "tracker.example", "--san", "::1"
        )
        self.assertEqual(rc, 0)
        sans = (
            load(os.path.join(self.dir, "tracker.pem"))
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["tracker.example"])
        self.assertEqual(sans.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("::1")])

    def test_no_overwrite(self) -> None:
        """Neither the CA nor an issued certificate is replaced; the error names the file."""
        run_cli("certs", "init", self.dir)
        ca_before = load(os.path.join(self.dir, "ca.pem"))
        rc, _, err = run_cli("certs", "init", self.dir)
        self.assertEqual((rc, "ca.pem already exists" in err), (1, True))
        self.assertEqual(load(os.path.join(self.dir, "ca.pem")), ca_before)
        run_cli("certs", "issue", self.dir, "agent")
        rc, _, err = run_cli("certs", "issue", self.dir, "agent")
        self.assertEqual((rc, "agent.pem already exists" in err), (1, True))

    def test_issue_without_ca(self) -> None:
        """issue without init says what to do."""
        rc, _, err = run_cli("certs", "issue", self.dir, "agent")
        self.assertEqual(rc, 1)
        self.assertIn("kraken certs init", err)

    def test_bad_names(self) -> None:
        """A bad certificate name or SAN is refused with status 1."""
        run_cli("certs", "init", self.dir)
        self.assertEqual(run_cli("certs", "issue", self.dir, "../x")[0], 1)
        rc, _, err = run_cli("certs", "issue", self.dir, "x", "--san", "a b")
        self.assertEqual(rc, 1)
        self.assertIn("not a DNS name or IP address", err)

    def test_days_must_be_positive(self) -> None:
        """``--days 0`` (or less) is refused before anything is written: it made an expired one."""
        run_cli("certs", "init", self.dir)
        for days in ("0", "-3", "soon"):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as exited:
                main(["certs", "issue", self.dir, "agent", "--days", days])
            self.assertEqual(exited.exception.code, 2)
            self.assertIn("--days", err.getvalue())
            self.assertFalse(os.path.exists(os.path.join(self.dir, "agent.pem")))
        self.assertRaises(ValueError, issue, self.dir, "agent", validity=datetime.timedelta(0))
        rc, _, _ = run_cli("certs", "issue", self.dir, "agent", "--days", "1")
        self.assertEqual(rc, 0)
        certificate = load(os.path.join(self.dir, "agent.pem"))
        self.assertGreater(certificate.not_valid_after_utc, datetime.datetime.now(datetime.UTC))

    def test_export(self) -> None:
        """export copies the CA and NAME's pair as ca.crt, NAME.cert, NAME.key (key 0600).

        Those are the names skopeo's --dest-cert-dir and docker's certs.d read; a second
        export (after a re-issue) replaces the files.
        """
        run_cli("certs", "init", self.dir)
        run_cli("certs", "issue", self.dir, "ci")
        out = os.path.join(self.mktemp(), "skopeo")
        rc, stdout, _ = run_cli("certs", "export", self.dir, "ci", out)
        self.assertEqual(rc, 0)
        self.assertIn(f"--dest-cert-dir {out}", stdout)
        self.assertEqual(sorted(os.listdir(out)), ["ca.crt", "ci.cert", "ci.key"])
        pairs = (("ca.crt", "ca.pem"), ("ci.cert", "ci.pem"), ("ci.key", "ci-key.pem"))
        for exported, original in pairs:
            copy, source = os.path.join(out, exported), os.path.join(self.dir, original)
            with open(copy, "rb") as a, open(source, "rb") as b:
                self.assertEqual(a.read(), b.read(), exported)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(out, "ci.key")).st_mode), 0o600)
        os.unlink(os.path.join(self.dir, "ci.pem"))
        os.unlink(os.path.join(self.dir, "ci-key.pem"))
        run_cli("certs", "issue", self.dir, "ci")
        self.assertEqual(run_cli("certs", "export", self.dir, "ci", out)[0], 0)
        self.assertEqual(load(os.path.join(out, "ci.cert")), load(os.path.join(self.dir, "ci.pem")))

    def test_export_missing(self) -> None:
        """export of a name never issued fails with status 1 and says what to do."""
        run_cli("certs", "init", self.dir)
        rc, _, err = run_cli("certs", "export", self.dir, "nobody", self.mktemp())
        self.assertEqual(rc, 1)
        self.assertIn("nobody.pem: missing", err)

    def test_ensure_certificates(self) -> None:
        """ensure_certificates creates what is missing and keeps what exists."""
        ensure_certificates(self.dir, ["origin"])
        ca = load_ca(self.dir).certificate
        origin = load(os.path.join(self.dir, "origin.pem"))
        ensure_certificates(self.dir, ["origin", "client"])
        self.assertEqual(load_ca(self.dir).certificate, ca)
        self.assertEqual(load(os.path.join(self.dir, "origin.pem")), origin)
        load(os.path.join(self.dir, "client.pem")).verify_directly_issued_by(ca)
