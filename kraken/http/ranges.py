"""
The one reading of a ``Range`` request header, for every blob GET (origin, agent, proxy).

werkzeug (installed with Klein) parses the header; :func:`parse_range` decides the answer,
the same on every daemon, after RFC 9110 section 14:

- no ``Range``, or a unit other than ``bytes``: the whole blob (200); a server must ignore a
  range unit it does not know;
- several ranges (``bytes=0-1,5-6``): the whole blob (200).  A server may ignore ``Range``,
  and none of Kraken's clients asks for several ranges, so no ``multipart/byteranges``;
- one range that can be satisfied: those bytes (206 with ``Content-Range``).  An end past the
  blob is cut at the blob's end, and a suffix longer than the blob is the whole blob;
- one range that starts at or past the end (every range of an empty blob), or that is
  malformed (``bytes=abc``, ``bytes=9-3``, a number of thousands of digits):
  :class:`InvalidRange`, answered 416 ``RANGE_INVALID`` with ``Content-Range: bytes */<size>``.
"""

from __future__ import annotations

from typing import Final

from attrs import frozen
from werkzeug.http import parse_range_header

from kraken.http.errors import RANGE_INVALID, RegistryError

__all__ = ["ByteRange", "InvalidRange", "parse_range"]

#: Characters of a ``Range`` header quoted in an error message.
_QUOTED: Final = 100


class InvalidRange(RegistryError):
    """A ``Range`` that cannot be served for a blob of ``size`` bytes: 416, whatever the API."""

    def __init__(self, header: str, size: int, problem: str) -> None:
        super().__init__(
            RANGE_INVALID,
            f"Range {header[:_QUOTED]!r} {problem} (the blob has {size} bytes)",
            headers={"Content-Range": f"bytes */{size}"},
        )
        self.header = header
        self.size = size


@frozen
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive of a ``size``-byte blob."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        """Bytes in the range."""
        return self.end - self.start + 1

    @property
    def stop(self) -> int:
        """One past the last byte (``end + 1``)."""
        return self.end + 1

    def content_range(self) -> str:
        """The ``Content-Range`` header value."""
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | bytes | None, size: int) -> ByteRange | None:
    """
    The bytes to send of a ``size``-byte blob for the ``Range`` header ``header``.

    None means the whole blob with 200; raises :class:`InvalidRange` (416) for a
    single byte range that is malformed or starts past the end (see the module doc).
    """
    if header is None:
        return None
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    unit, _, spec = text.partition("=")
    if unit.strip(" \t").lower() != "bytes":
        return None
    if "," in spec:
        return None
    parsed = parse_range_header(text)
    if parsed is None or len(parsed.ranges) != 1:
        raise InvalidRange(text, size, "is malformed")
    begin, stop = parsed.ranges[0]
    if begin < 0:  # a suffix: the last -begin bytes
        if size == 0:
            raise InvalidRange(text, size, "cannot be satisfied")
        return ByteRange(max(0, size + begin), size - 1, size)
    if begin >= size:
        raise InvalidRange(text, size, "starts past the end")
    end = size - 1 if stop is None else min(stop - 1, size - 1)
    return ByteRange(begin, end, size)
