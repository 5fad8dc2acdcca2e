"""
Plain-HTTP listeners that turn a TLS handshake away at once.

docker and skopeo try HTTPS first even for an ``insecure`` registry and fall back
to HTTP on a handshake error. twisted.web takes a ClientHello for the start of a
request line and waits for the rest, which never comes, so each client would sit
out Go's 10 s TLS handshake timeout on every pull or push. :func:`refuse_tls`
answers the first byte of a TLS handshake record (0x16, never the first byte of
an HTTP method) with a plain 400 and closes, which the client reports as "server
gave HTTP response to HTTPS client" and retries over HTTP straight away.
"""

from __future__ import annotations

from typing import Final

from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

__all__ = ["TLS_ANSWER", "refuse_tls"]

TLS_ANSWER: Final = b"HTTP/1.0 400 Bad Request\r\n\r\nthis port speaks plain HTTP\n"
"""What a TLS ClientHello gets before the connection is closed."""

_TLS_HANDSHAKE_RECORD: Final = b"\x16"


class _RefuseTLSProtocol(ProtocolWrapper):
    """Answers a TLS ClientHello on a plain-HTTP port with a 400 and closes at once."""

    _first = True

    def dataReceived(self, data: bytes) -> None:
        """Check the first byte for a TLS handshake record, then pass everything on."""
        if self._first and data:
            self._first = False
            if data[:1] == _TLS_HANDSHAKE_RECORD and self.transport is not None:
                self.transport.write(TLS_ANSWER)
                self.transport.loseConnection()
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]


def refuse_tls(factory: IProtocolFactory) -> WrappingFactory:
    """``factory`` (an HTTP ``Site``) behind a check that drops TLS handshakes at once."""
    wrapped = WrappingFactory(factory)  # type: ignore[no-untyped-call]
    wrapped.protocol = _RefuseTLSProtocol
    return wrapped
