"""
A development certificate authority for mutual TLS between Kraken components.

``kraken certs init DIR`` writes ``DIR/ca.pem`` and ``DIR/ca-key.pem``;
``kraken certs issue DIR NAME [--san ...]`` writes ``DIR/NAME.pem`` and
``DIR/NAME-key.pem``: a certificate signed by that CA and usable both as a
server certificate and as a client certificate (extended key usages
``serverAuth`` and ``clientAuth``), whose subject alternative names default to
``localhost`` and ``127.0.0.1``.  ``kraken certs export DIR NAME OUT`` copies
the CA and NAME's pair into OUT under the names skopeo's ``--dest-cert-dir``
(and ``--src-cert-dir``, ``--cert-dir``) and docker's
``/etc/docker/certs.d/HOST:PORT/`` read: ``OUT/ca.crt``, ``OUT/NAME.cert``,
``OUT/NAME.key`` (:func:`export_cert_dir`).

Keys are ECDSA P-256 (fast to make, accepted by Go's ``crypto/tls`` as used by
docker and skopeo).  Private keys are written with mode 0600.  Everything here
is blocking file I/O, for the command line, start-up code and tests.

The functions that build certificates in memory (:func:`make_ca`,
:func:`make_certificate`) take explicit validity dates so that tests can make
expired or not-yet-valid certificates.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from collections.abc import Sequence
from typing import Final

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_SANS",
    "CertificateExists",
    "IssuedCertificate",
    "cert_paths",
    "ensure_certificates",
    "export_cert_dir",
    "init_ca",
    "issue",
    "load_ca",
    "make_ca",
    "make_certificate",
    "parse_san",
]

CA_CERT_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca-key.pem"

DEFAULT_SANS: Final = ("localhost", "127.0.0.1")
"""Subject alternative names of an issued certificate when none are given."""

CA_VALIDITY: Final = datetime.timedelta(days=3650)
CERT_VALIDITY: Final = datetime.timedelta(days=365)
_BACKDATE: Final = datetime.timedelta(minutes=5)
"""Certificates start a little in the past so that small clock skews do not refuse them."""

PrivateKey = ec.EllipticCurvePrivateKey


class CertificateExists(Exception):
    """A file that would be written already exists (nothing was written)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} already exists; remove it first to replace it")
        self.path = path


@frozen
class IssuedCertificate:
    """A certificate and its private key, in memory."""

    certificate: x509.Certificate
    key: PrivateKey

    def certificate_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM, encrypted with ``passphrase`` when given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def parse_san(value: str) -> x509.GeneralName:
    """One subject alternative name: an IP address if it parses as one, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not value or any(c.isspace() or c in "/:@" for c in value):
        raise ValueError(f"not a DNS name or IP address: {value!r}")
    return x509.DNSName(value)


def make_ca(
    common_name: str = "Kraken development CA",
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> IssuedCertificate:
    """A new self-signed CA certificate and key (valid ten years from now by default)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - _BACKDATE
    end = not_after or start + CA_VALIDITY
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(certificate, key)


def make_certificate(
    ca: IssuedCertificate,
    common_name: str,
    sans: Sequence[str] = DEFAULT_SANS,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> IssuedCertificate:
    """A new certificate for ``common_name`` signed by ``ca``, usable as server and client."""
    if not sans:
        raise ValueError("a certificate needs at least one subject alternative name")
    names = [parse_san(san) for san in sans]
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - _BACKDATE
    end = not_after or start + CERT_VALIDITY
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return IssuedCertificate(certificate, key)


def cert_paths(directory: str, name: str) -> tuple[str, str]:
    """``(DIR/NAME.pem, DIR/NAME-key.pem)``."""
    return os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}-key.pem")


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_pair(directory: str, name: str, issued: IssuedCertificate) -> tuple[str, str]:
    cert_path, key_path = cert_paths(directory, name)
    for path in (cert_path, key_path):
        if os.path.exists(path):
            raise CertificateExists(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _write(key_path, issued.key_pem(), 0o600)
    _write(cert_path, issued.certificate_pem(), 0o644)
    return cert_path, key_path


def init_ca(directory: str) -> tuple[str, str]:
    """Create ``DIR/ca.pem`` and ``DIR/ca-key.pem``; return their paths.

    Raises :class:`CertificateExists` rather than replace an existing CA (that
    would orphan every certificate it signed).
    """
    cert_path = os.path.join(directory, CA_CERT_FILE)
    key_path = os.path.join(directory, CA_KEY_FILE)
    for path in (cert_path, key_path):
        if os.path.exists(path):
            raise CertificateExists(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    ca = make_ca()
    _write(key_path, ca.key_pem(), 0o600)
    _write(cert_path, ca.certificate_pem(), 0o644)
    return cert_path, key_path


def load_ca(directory: str) -> IssuedCertificate:
    """The CA made by :func:`init_ca` in ``directory`` (``OSError``/``ValueError`` if unusable)."""
    with open(os.path.join(directory, CA_CERT_FILE), "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(directory, CA_KEY_FILE), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory}/{CA_KEY_FILE}: not an EC private key")
    return IssuedCertificate(certificate, key)


def issue(
    directory: str,
    name: str,
    sans: Sequence[str] = DEFAULT_SANS,
    *,
    validity: datetime.timedelta = CERT_VALIDITY,
) -> tuple[str, str]:
    """Write ``DIR/NAME.pem`` and ``DIR/NAME-key.pem`` signed by the CA in ``DIR``."""
    if not name or "/" in name or name.startswith(".") or name in ("ca",):
        raise ValueError(f"bad certificate name: {name!r}")
    if validity <= datetime.timedelta(0):
        raise ValueError(f"validity must be positive, not {validity}")
    ca = load_ca(directory)
    start = _now() - _BACKDATE
    issued = make_certificate(ca, name, sans, not_before=start, not_after=start + validity)
    return _write_pair(directory, name, issued)


def ensure_certificates(
    directory: str, names: Sequence[str], sans: Sequence[str] = DEFAULT_SANS
) -> None:
    """Create the CA and each named certificate in ``directory`` unless they exist already.

    For a development herd's first start (``twistd kraken-herd --tls``).
    """
    if not os.path.exists(os.path.join(directory, CA_CERT_FILE)):
        init_ca(directory)
    for name in names:
        if not os.path.exists(cert_paths(directory, name)[0]):
            issue(directory, name, sans)


def _replace(path: str, data: bytes, mode: int) -> None:
    """Write ``path`` whole: a temporary file renamed over it, so no reader sees half a file."""
    temporary = f"{path}.tmp{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def export_cert_dir(directory: str, name: str, out: str) -> tuple[str, str, str]:
    """Copy the CA and ``name``'s pair from ``directory`` into ``out`` for skopeo and docker.

    Writes ``out/ca.crt`` (the CA to verify servers with), ``out/NAME.cert``
    and ``out/NAME.key`` (the client certificate to present, key mode 0600):
    the layout of containers/image's ``--cert-dir`` (skopeo, podman, buildah)
    and of docker's ``certs.d/HOST:PORT``, which take ``*.crt`` files as CAs and
    each ``*.cert`` with the ``*.key`` of the same name as a client pair.
    Existing files in ``out`` are replaced (re-export after a roll).  Returns
    the three paths.  Raises ``OSError`` (e.g. ``FileNotFoundError``) when a
    source file is missing, ``ValueError`` for a bad name.
    """
    if not name or "/" in name or name.startswith(".") or name in ("ca",):
        raise ValueError(f"bad certificate name: {name!r}")
    cert_path, key_path = cert_paths(directory, name)
    with open(os.path.join(directory, CA_CERT_FILE), "rb") as f:
        ca = f.read()
    with open(cert_path, "rb") as f:
        cert = f.read()
    with open(key_path, "rb") as f:
        key = f.read()
    os.makedirs(out, mode=0o755, exist_ok=True)
    paths = (
        os.path.join(out, "ca.crt"),
        os.path.join(out, f"{name}.cert"),
        os.path.join(out, f"{name}.key"),
    )
    _replace(paths[2], key, 0o600)
    _replace(paths[1], cert, 0o644)
    _replace(paths[0], ca, 0o644)
    return paths
