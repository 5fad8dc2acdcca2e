"""
The client of the build-index (agents, the proxy, and build-indexes talking to each other).

Tags travel in paths percent-encoded once (``quote("repo/name:tag", safe="")``);
the server decodes them once.

- ``GET /tags/{tag}`` answers the digest string ``sha256:<hex>`` (404 unknown, 400 a tag
  outside the distribution grammar): :meth:`BuildIndexClient.get_tag`; ``HEAD`` the same:
  :meth:`~BuildIndexClient.has_tag`;
- ``PUT /tags/{tag}/digest/{d}[?replicate=true]``: :meth:`~BuildIndexClient.put_tag`
  (the build-index checks the manifest and its blobs at the origin first: 400/404);
- ``GET /list/{prefix}`` and ``GET /repositories/{repo}/tags`` (pages of
  ``{"Links": {"next", "self"}, "size", "result"}``): :meth:`~BuildIndexClient.list_page`,
  :meth:`~BuildIndexClient.list_tags`, :meth:`~BuildIndexClient.repository_tags`;
- ``POST /remotes/tags/{tag}``: :meth:`~BuildIndexClient.replicate`;
- ``GET /origin``: :meth:`~BuildIndexClient.origin` (the origin cluster's address(es));
- ``PUT`` with the :data:`DUPLICATE_HEADER` to one member: :meth:`~BuildIndexClient.duplicate_tag`.

Hosts are tried in a random order, those the passive health filter considers
healthy first, at most ``max_attempts`` of them (the Go cluster client samples
3): a network error marks the host with the filter and moves on; an HTTP error
status is the answer.  :meth:`BuildIndexClient.for_host` makes a client of one
build-index (a remote cluster's, in tag replication).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import ClassVar, Final
from urllib.parse import parse_qs, quote, urlsplit

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kraken.cluster.health import PassiveHealthFilter
from kraken.core import Digest, InvalidDigest, parse_json
from kraken.http.client import KrakenHTTPClient, TreqResponse, read_body

__all__ = [
    "DEFAULT_BUILD_INDEX_TIMEOUT",
    "DUPLICATE_HEADER",
    "BuildIndexClient",
    "BuildIndexUnavailable",
    "InvalidBuildIndexResponse",
    "TagNotFound",
    "TagPage",
    "TagRejected",
    "quote_tag",
]

#: Seconds each build-index gets to answer a tag lookup (the Go tag client's Get timeout).
DEFAULT_BUILD_INDEX_TIMEOUT: Final = 10.0
MAX_TAG_RESPONSE: Final = 4096
#: Seconds for a tag PUT, which checks every dependency at the origin (the Go client's 30 s).
PUT_TIMEOUT: Final = 30.0
#: Seconds for one page of a listing.
LIST_TIMEOUT: Final = 60.0
#: Seconds for ``POST /remotes/tags/...``.
REPLICATE_TIMEOUT: Final = 15.0
#: Seconds for ``GET /origin``.
ORIGIN_TIMEOUT: Final = 5.0
MAX_LIST_RESPONSE: Final = 8 * 1024 * 1024
#: Pages followed by :meth:`BuildIndexClient.list_tags` before it gives up (a server bug guard).
MAX_LIST_PAGES: Final = 10_000

#: Header of a tag PUT that one build-index forwards to the other members of its cluster: its
#: value is the time (epoch seconds) the first member stored the tag.  Such a PUT is stored
#: only if nothing newer is known, and neither forwarded again nor replicated.
DUPLICATE_HEADER: Final = "Kraken-Duplicate-Written-At"


def quote_tag(tag: str) -> str:
    """``tag`` percent-encoded once for a path segment (``/`` and ``:`` included)."""
    return quote(tag, safe="")


@frozen
class TagPage:
    """One page of a listing: the names and the continuation offset (None on the last page)."""

    result: tuple[str, ...]
    offset: str | None


class TagNotFound(LookupError):
    """The build-index does not know the tag (it answered 404)."""


class TagRejected(ValueError):
    """The build-index refused the tag as malformed (it answered 400): the asker's mistake."""


class BuildIndexUnavailable(Exception):
    """No build-index answered (none configured, or every one tried failed at the network level)."""


class InvalidBuildIndexResponse(ValueError):
    """A build-index answered 200 with something that is not a digest."""


@define
class BuildIndexClient:
    """
    Tag lookups over the build-index hosts with passive health failover.

    ``hosts`` returns the current members (e.g. a ``Membership``'s
    ``members``); ``client`` comes from the shared HTTP client factory.
    """

    log: ClassVar[Logger] = Logger()

    client: KrakenHTTPClient
    hosts: Callable[[], frozenset[str]]
    health: PassiveHealthFilter
    scheme: str = "http"
    timeout: float = DEFAULT_BUILD_INDEX_TIMEOUT
    max_attempts: int = 3
    rng: random.Random = field(factory=random.Random)

    def hosts_in_order(self) -> list[str]:
        """Healthy hosts in random order, then the others (the order requests try them)."""
        members = self.hosts()
        healthy = self.health.healthy(members)
        first = sorted(h for h in members if h in healthy)
        rest = sorted(h for h in members if h not in healthy)
        self.rng.shuffle(first)
        self.rng.shuffle(rest)
        return first + rest

    async def _first_answer(
        self, what: str, send: Callable[[str], Deferred[TreqResponse]]
    ) -> tuple[str, TreqResponse]:
        def nobody(errors: str) -> BuildIndexUnavailable:
            return BuildIndexUnavailable(
                f"no build-index answered for {what}: {errors or 'no build-index is configured'}"
            )

        hosts = self.hosts_in_order()[: self.max_attempts]
        return await self.health.first_answer(hosts, send, nobody)

    async def _get_tag(self, tag: str) -> Digest:
        path = f"/tags/{quote(tag, safe='')}"

        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.get(
                f"{self.scheme}://{host}{path}",
                ok=(200, 400, 404),
                timeout=self.timeout,
                retry=False,
            )

        host, response = await self._first_answer(f"tag {tag!r}", send)
        raw = await read_body(response, MAX_TAG_RESPONSE)
        if response.code == 404:
            raise TagNotFound(f"tag {tag!r} not found")
        if response.code == 400:
            reason = raw[:300].decode("utf-8", "replace").strip()
            raise TagRejected(f"{host} refused tag {tag[:300]!r}: {reason}")
        try:
            return Digest.parse(raw.decode("ascii", "replace").strip())
        except InvalidDigest as e:
            raise InvalidBuildIndexResponse(f"{host}: tag {tag!r}: {e}") from None

    def get_tag(self, tag: str) -> Deferred[Digest]:
        """
        The manifest digest of ``tag`` (``repo:tag``).

        Fails with :class:`TagNotFound`, :class:`TagRejected` (400),
        :class:`BuildIndexUnavailable`, :class:`InvalidBuildIndexResponse` or
        :class:`~kraken.http.client.HTTPStatusError` (any status but 200/400/404).
        """
        return Deferred.fromCoroutine(self._get_tag(tag))

    async def _ready(self) -> None:
        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.get(
                f"{self.scheme}://{host}/readiness", timeout=self.timeout, retry=False
            )

        _, response = await self._first_answer("readiness", send)
        await read_body(response, MAX_TAG_RESPONSE)

    def readiness(self) -> Deferred[None]:
        """Fires when a build-index answers ``GET /readiness`` with 200; fails otherwise."""
        return Deferred.fromCoroutine(self._ready())

    # -- writes, listings and replication ---------------------------------------------------

    @classmethod
    def for_host(
        cls, client: KrakenHTTPClient, host: str, clock: IReactorTime, *, scheme: str = "http"
    ) -> BuildIndexClient:
        """A client of the one build-index at ``host`` (``host:port``), e.g. a remote cluster's."""
        return cls(
            client, lambda: frozenset({host}), PassiveHealthFilter(clock), scheme, max_attempts=1
        )

    def _url(self, host: str, path: str) -> str:
        return f"{self.scheme}://{host}{path}"

    async def _put_tag(self, tag: str, digest: Digest, replicate: bool) -> None:
        path = f"/tags/{quote_tag(tag)}/digest/{digest}"
        params = {"replicate": "true"} if replicate else None

        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.put(
                self._url(host, path), params=params, data=b"", timeout=PUT_TIMEOUT, retry=False
            )

        _, response = await self._first_answer(f"put of tag {tag!r}", send)
        await read_body(response, MAX_TAG_RESPONSE)

    def put_tag(self, tag: str, digest: Digest, *, replicate: bool = False) -> Deferred[None]:
        """
        Point ``tag`` (``repo:tag``) at the manifest ``digest``; with ``replicate``, also queue
        its replication to the remote clusters whose rules match.

        The build-index first checks that the manifest and everything it references are at
        the origin: fails with :class:`~kraken.http.client.HTTPStatusError` 404 when the
        manifest is missing, 400 when a referenced blob is missing or the tag is invalid;
        :class:`BuildIndexUnavailable` when no build-index answered.
        """
        return Deferred.fromCoroutine(self._put_tag(tag, digest, replicate))

    async def _duplicate_tag(self, host: str, tag: str, digest: Digest, written_at: float) -> None:
        response = await self.client.put(
            self._url(host, f"/tags/{quote_tag(tag)}/digest/{digest}"),
            data=b"",
            headers={DUPLICATE_HEADER: repr(float(written_at))},
            timeout=self.timeout,
            retry=False,
        )
        await read_body(response, MAX_TAG_RESPONSE)

    def duplicate_tag(
        self, host: str, tag: str, digest: Digest, written_at: float
    ) -> Deferred[None]:
        """Tell the member ``host`` that ``tag`` was set to ``digest`` at ``written_at``."""
        return Deferred.fromCoroutine(self._duplicate_tag(host, tag, digest, written_at))

    async def _delete_tag(self, tag: str, replicate: bool) -> None:
        path = f"/tags/{quote_tag(tag)}"
        params = {"replicate": "true"} if replicate else None

        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.delete(
                self._url(host, path),
                params=params,
                ok=(200, 404),
                timeout=PUT_TIMEOUT,
                retry=False,
            )

        _, response = await self._first_answer(f"delete of tag {tag!r}", send)
        await read_body(response, MAX_TAG_RESPONSE)
        if response.code == 404:
            raise TagNotFound(f"tag {tag!r} not found")

    def delete_tag(self, tag: str, *, replicate: bool = False) -> Deferred[None]:
        """
        Remove ``tag`` (``repo:tag``); with ``replicate``, also from the remote clusters whose
        rules match.  Fails with :class:`TagNotFound` when the build-index has no such tag.
        """
        return Deferred.fromCoroutine(self._delete_tag(tag, replicate))

    async def _duplicate_delete(self, host: str, tag: str, deleted_at: float) -> None:
        response = await self.client.delete(
            self._url(host, f"/tags/{quote_tag(tag)}"),
            headers={DUPLICATE_HEADER: repr(float(deleted_at))},
            timeout=self.timeout,
            retry=False,
        )
        await read_body(response, MAX_TAG_RESPONSE)

    def duplicate_delete(self, host: str, tag: str, deleted_at: float) -> Deferred[None]:
        """Tell the member ``host`` that ``tag`` was deleted at ``deleted_at``."""
        return Deferred.fromCoroutine(self._duplicate_delete(host, tag, deleted_at))

    async def _has_tag(self, tag: str) -> bool:
        path = f"/tags/{quote_tag(tag)}"

        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.head(
                self._url(host, path), ok=(200, 404), timeout=self.timeout, retry=False
            )

        _, response = await self._first_answer(f"tag {tag!r}", send)
        await read_body(response, MAX_TAG_RESPONSE)
        return bool(response.code == 200)

    def has_tag(self, tag: str) -> Deferred[bool]:
        """Whether the build-index knows ``tag`` (``HEAD /tags/{tag}``)."""
        return Deferred.fromCoroutine(self._has_tag(tag))

    async def _list_page(self, path: str, limit: int | None, offset: str | None) -> TagPage:
        params: dict[str, str] = {}
        if limit is not None:
            params["limit"] = str(limit)
        if offset is not None:
            params["offset"] = offset

        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.get(
                self._url(host, path), params=params, timeout=LIST_TIMEOUT, retry=False
            )

        host, response = await self._first_answer(f"listing {path!r}", send)
        raw = await read_body(response, MAX_LIST_RESPONSE)
        try:
            doc = parse_json(raw, "listing")
            result = doc["result"]
            links = doc.get("Links") or {}
            if not isinstance(result, list) or not all(isinstance(n, str) for n in result):
                raise ValueError("result is not a list of strings")
            next_link = links.get("next") if isinstance(links, dict) else None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidBuildIndexResponse(f"{host}: listing {path!r}: {e}") from None
        next_offset = None
        if isinstance(next_link, str) and next_link:
            values = parse_qs(urlsplit(next_link).query).get("offset")
            next_offset = values[0] if values else None
        return TagPage(tuple(result), next_offset)

    def list_page(
        self, prefix: str, *, limit: int | None = None, offset: str | None = None
    ) -> Deferred[TagPage]:
        """One page of the tags (``repo:tag``) whose names start with ``prefix``."""
        return Deferred.fromCoroutine(
            self._list_page(f"/list/{quote(prefix, safe='/:')}", limit, offset)
        )

    def repository_page(
        self, repo: str, *, limit: int | None = None, offset: str | None = None
    ) -> Deferred[TagPage]:
        """One page of the bare tags of repository ``repo``."""
        return Deferred.fromCoroutine(
            self._list_page(f"/repositories/{quote(repo, safe='/')}/tags", limit, offset)
        )

    async def _all_pages(self, page: Callable[[str | None], Deferred[TagPage]]) -> list[str]:
        names: list[str] = []
        offset: str | None = None
        for _ in range(MAX_LIST_PAGES):
            current = await page(offset)
            names.extend(current.result)
            if current.offset is None:
                return names
            offset = current.offset
        raise InvalidBuildIndexResponse(f"listing did not end after {MAX_LIST_PAGES} pages")

    def list_tags(self, prefix: str, *, limit: int | None = None) -> Deferred[list[str]]:
        """Every tag starting with ``prefix``, following the pages (of ``limit`` names)."""
        return Deferred.fromCoroutine(
            self._all_pages(lambda offset: self.list_page(prefix, limit=limit, offset=offset))
        )

    def repository_tags(self, repo: str, *, limit: int | None = None) -> Deferred[list[str]]:
        """Every bare tag of repository ``repo``, following the pages."""
        return Deferred.fromCoroutine(
            self._all_pages(lambda offset: self.repository_page(repo, limit=limit, offset=offset))
        )

    async def _replicate(self, tag: str) -> None:
        path = f"/remotes/tags/{quote_tag(tag)}"

        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.post(
                self._url(host, path), data=b"", timeout=REPLICATE_TIMEOUT, retry=False
            )

        _, response = await self._first_answer(f"replication of {tag!r}", send)
        await read_body(response, MAX_TAG_RESPONSE)

    def replicate(self, tag: str) -> Deferred[None]:
        """Queue the replication of the existing ``tag`` to every matching remote (404 unknown)."""
        return Deferred.fromCoroutine(self._replicate(tag))

    async def _origin(self) -> list[str]:
        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.get(self._url(host, "/origin"), timeout=ORIGIN_TIMEOUT, retry=False)

        host, response = await self._first_answer("origin", send)
        raw = (await read_body(response, MAX_TAG_RESPONSE)).decode("ascii", "replace")
        found = [a.strip() for a in raw.split(",") if a.strip()]
        if not found:
            raise InvalidBuildIndexResponse(f"{host}: empty origin address")
        return found

    def origin(self) -> Deferred[list[str]]:
        """The ``host:port`` address(es) of the build-index's origin cluster."""
        return Deferred.fromCoroutine(self._origin())
