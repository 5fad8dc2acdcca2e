"""
The files of the tracker's live swarm page, served from the package (``kraken/ui``).

Read once when the tracker's API is built (a few kilobytes, at start-up), then served from
memory: no file I/O on the reactor thread per request, and no CDN: the page works on a
cluster without internet access.  The data comes from :class:`~kraken.peers.swarm.SwarmView`
through the tracker's ``/ui/torrents.json`` and ``/ui/swarm/<infohash>.json``.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from attrs import frozen
from twisted.web.iweb import IRequest

from kraken.http.errors import APIError

__all__ = ["ASSETS", "SwarmPage"]

#: The page's files and their content types.
ASSETS: Final = {
    "index.html": "text/html; charset=utf-8",
    "swarm.js": "text/javascript; charset=utf-8",
    "swarm.css": "text/css; charset=utf-8",
}


@frozen
class SwarmPage:
    """The page's files by name, with their content types."""

    files: dict[str, tuple[bytes, bytes]]

    @classmethod
    def load(cls) -> SwarmPage:
        """Read the files from the ``kraken.ui`` package (blocking: at start-up)."""
        package = resources.files("kraken.ui")
        return cls(
            {
                name: (package.joinpath(name).read_bytes(), kind.encode("ascii"))
                for name, kind in ASSETS.items()
            }
        )

    def serve(self, request: IRequest, name: str) -> bytes:
        """The body of file ``name`` with its headers; 404 for any other name."""
        found = self.files.get(name)
        if found is None:
            raise APIError(404, f"no such file: {name!r}")
        body, kind = found
        request.setHeader(b"Content-Type", kind)  # type: ignore[no-untyped-call]
        request.setHeader(b"Cache-Control", b"no-cache")  # type: ignore[no-untyped-call]
        request.setHeader(b"X-Content-Type-Options", b"nosniff")  # type: ignore[no-untyped-call]
        return body
