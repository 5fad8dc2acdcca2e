"""
Certificates made at test time for the TLS tests: a cluster CA, a stranger CA, and their files.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

from attrs import define, field

from kraken.certs import IssuedCertificate, make_ca, make_certificate
from kraken.config.sections import TLSConfig
from kraken.tls import ClusterTLS

DAY = datetime.timedelta(days=1)


def now() -> datetime.datetime:
    """The current time, in UTC."""
    return datetime.datetime.now(datetime.UTC)


@define
class TestPKI:
    """A directory of PEM files: the cluster CA, certificates it signed, and others."""

    directory: str
    ca: IssuedCertificate = field(factory=make_ca)
    stranger_ca: IssuedCertificate = field(factory=lambda: make_ca("Some other CA"))

    def __attrs_post_init__(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        with open(self.ca_path, "wb") as f:
            f.write(self.ca.certificate_pem())

    @property
    def ca_path(self) -> str:
        """The cluster CA bundle."""
        return os.path.join(self.directory, "ca.pem")

    def write(
        self, name: str, issued: IssuedCertificate, passphrase: bytes | None = None
    ) -> tuple[str, str]:
        """Write ``name.pem`` and ``name-key.pem``; return their paths."""
        cert_path = os.path.join(self.directory, f"{name}.pem")
        key_path = os.path.join(self.directory, f"{name}-key.pem")
        with open(cert_path, "wb") as f:
            f.write(issued.certificate_pem())
        with open(key_path, "wb") as f:
            f.write(issued.key_pem(passphrase))
        return cert_path, key_path

    def issue(
        self,
        name: str,
        sans: Sequence[str] = ("localhost", "127.0.0.1"),
        *,
        stranger: bool = False,
        expired: bool = False,
    ) -> tuple[str, str]:
        """A certificate signed by the cluster CA (or the stranger), written to files."""
        ca = self.stranger_ca if stranger else self.ca
        if expired:
            issued = make_certificate(
                ca, name, sans, not_before=now() - 10 * DAY, not_after=now() - DAY
            )
        else:
            issued = make_certificate(ca, name, sans)
        return self.write(name, issued)

    def server_tls(self, name: str = "server", **settings: object) -> ClusterTLS:
        """The TLS of a server serving ``name``'s certificate (issued if missing)."""
        cert, key = self.paths(name)
        return ClusterTLS.from_config(
            TLSConfig(ca=self.ca_path, cert=cert, key=key, **settings)  # type: ignore[arg-type]
        )

    def client_tls(self, name: str | None = "client", **settings: object) -> ClusterTLS:
        """The TLS of a client presenting ``name``'s certificate (none if ``name`` is None)."""
        if name is None:
            return ClusterTLS.from_config(TLSConfig(ca=self.ca_path, **settings))  # type: ignore[arg-type]
        cert, key = self.paths(name)
        return ClusterTLS.from_config(
            TLSConfig(ca=self.ca_path, client_cert=cert, client_key=key, **settings)  # type: ignore[arg-type]
        )

    def paths(self, name: str) -> tuple[str, str]:
        """The files of ``name``, issued with the default names if they do not exist yet."""
        cert = os.path.join(self.directory, f"{name}.pem")
        if not os.path.exists(cert):
            return self.issue(name)
        return cert, os.path.join(self.directory, f"{name}-key.pem")
