"""
Test doubles for the agent's APIs: a fake build-index Klein app and a fake downloader.

:func:`make_agent_apis` wires the real :class:`AgentAPI` and
:class:`RegistryAPI` to a real BlobStore (under the test's temp dir), the
real :class:`BuildIndexClient` talking in memory to :class:`FakeBuildIndex`,
and :class:`FakeDownloader`, which "downloads" by putting known bytes into
the store.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from kraken.api.agent import AgentAPI, AgentMetrics
from kraken.api.registry import RegistryAPI, parse_networks
from kraken.clients.buildindex import BuildIndexClient
from kraken.cluster import PassiveHealthFilter
from kraken.core import Digest
from kraken.http.dependencies import Dependencies
from kraken.http.testing import HostRoutingAgent, memory_client_factory
from kraken.io.runner import run_inline
from kraken.protocols.downloader import BlobUnknown, DownloadError, IBlobDownloader
from kraken.store import BlobNotFound, BlobStore


@define
class FakeBuildIndex:
    """``GET /tags/{repo:tag}`` from a dict; ``/readiness``; counts tag lookups."""

    app: ClassVar[Klein] = Klein()

    tags: dict[str, str] = field(factory=dict)
    lookups: list[str] = field(factory=list)
    ready: bool = True
    status: int | None = None

    def resource(self) -> Any:
        """The twisted.web resource."""
        return self.app.resource()

    @app.route("/tags/<path:tag>")
    def get_tag(self, request: Any, tag: str) -> bytes:
        """The digest string, or 404."""
        self.lookups.append(tag)
        if self.status is not None:
            request.setResponseCode(self.status)
            return b"broken"
        if tag not in self.tags:
            request.setResponseCode(404)
            return b"tag not found"
        return self.tags[tag].encode()

    @app.route("/list/", defaults={"prefix": ""})
    @app.route("/list/<path:prefix>")
    def list_tags(self, request: Any, prefix: str) -> bytes:
        """One page of every ``repo:tag`` starting with ``prefix`` (the real API's shape)."""
        result = sorted(t for t in self.tags if t.startswith(prefix))
        return json.dumps({"Links": {}, "size": len(result), "result": result}).encode()

    @app.route("/repositories/<path:repo>/tags")
    def repository_tags(self, request: Any, repo: str) -> bytes:
        """One page of the bare tags of ``repo``."""
        result = sorted(t.rpartition(":")[2] for t in self.tags if t.rpartition(":")[0] == repo)
        return json.dumps({"Links": {}, "size": len(result), "result": result}).encode()

    @app.route("/readiness")
    def readiness(self, request: Any) -> bytes:
        """200 when ready, else 503."""
        if not self.ready:
            request.setResponseCode(503)
        return b"OK"


@implementer(IBlobDownloader)
@define
class FakeDownloader:
    """Puts ``blobs[digest]`` into the store on download; records calls."""

    store: BlobStore
    blobs: dict[Digest, bytes] = field(factory=dict)
    failing: dict[Digest, str] = field(factory=dict)
    calls: list[tuple[str, Digest]] = field(factory=list)
    hold: Deferred[None] | None = None
    deleted: list[Digest] = field(factory=list)
    #: Called with each digest after it was "downloaded" (tests evict it, for instance).
    after_fetch: Any = None

    def add(self, data: bytes) -> Digest:
        """Make ``data`` available to "download"; returns its digest."""
        digest = Digest.of_bytes(data)
        self.blobs[digest] = data
        return digest

    def download(self, namespace: str, digest: Digest) -> Deferred[None]:
        """Cache the blob (after ``hold`` fires, when set)."""
        self.calls.append((namespace, digest))
        if self.hold is not None:
            waiter: Deferred[None] = Deferred()
            self.hold.addCallback(lambda _: self._fetch(digest).chainDeferred(waiter))
            return waiter
        return self._fetch(digest)

    def _fetch(self, digest: Digest) -> Deferred[None]:
        if digest in self.failing:
            return fail(DownloadError(self.failing[digest]))
        if self.store.has(digest):
            return succeed(None)
        if digest not in self.blobs:
            return fail(BlobUnknown(f"{digest} unknown"))
        self.store.put_bytes(self.blobs[digest])
        if self.after_fetch is not None:
            self.after_fetch(digest)
        return succeed(None)

    def delete(self, digest: Digest) -> Deferred[None]:
        """Delete from the store."""
        self.deleted.append(digest)
        try:
            self.store.delete(digest)
        except BlobNotFound as e:
            return fail(e)
        return succeed(None)


@define
class AgentApis:
    """Everything :func:`make_agent_apis` built."""

    clock: Clock
    store: BlobStore
    downloader: FakeDownloader
    build_index: FakeBuildIndex
    http_agent: HostRoutingAgent
    api: AgentAPI
    registry: RegistryAPI


def make_agent_apis(root: str, *, allowed: tuple[str, ...] | None = ("127.0.0.0/8",)) -> AgentApis:
    """Both APIs over a store at ``root`` with fakes behind them, on a Clock."""
    clock = Clock()
    store = BlobStore(root, clock)
    downloader = FakeDownloader(store)
    build_index = FakeBuildIndex()
    factory, http_agent = memory_client_factory({"bi:15004": build_index.resource()}, clock)
    client = BuildIndexClient(
        factory.client(), lambda: frozenset({"bi:15004"}), PassiveHealthFilter(clock)
    )
    metrics = AgentMetrics()
    dependencies = Dependencies((("build-index", client.readiness),), metrics.registry, clock)
    api = AgentAPI(
        store, downloader, client, run_inline, dependencies=dependencies, metrics=metrics
    )
    registry = RegistryAPI(
        api, clock, allowed_networks=None if allowed is None else parse_networks(allowed)
    )
    return AgentApis(clock, store, downloader, build_index, http_agent, api, registry)
