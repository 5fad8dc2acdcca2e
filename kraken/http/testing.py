"""
In-memory HTTP for tests: clients from :class:`~kraken.http.client.HTTPClientFactory`
talking to Klein apps without sockets.

``HostRoutingAgent`` sends each request to the resource registered for its
``host:port`` (several origins, a tracker, a build-index in one test) and
refuses connections to hosts it does not know, which is how a test makes a
host "go down" for the health checker::

    agent = HostRoutingAgent({"origin1:15002": origin1.app.resource()})
    factory = HTTPClientFactory(clock, agent=agent)
    d = factory.client().get("http://origin1:15002/health")
    agent.flush()  # only needed when a route answers asynchronously
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from attrs import frozen
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from twisted.web.resource import IResource
from zope.interface import implementer

from kraken.http.client import DEFAULT_TIMEOUT, HTTPClientFactory, RetryPolicy
from kraken.io.reactor import IClientReactor

__all__ = ["HostRoutingAgent", "SentRequest", "memory_client_factory"]


@frozen
class SentRequest:
    """A request as the agent received it (for assertions)."""

    method: str
    url: str
    headers: Headers | None


@implementer(IAgent)
class HostRoutingAgent:
    """An ``IAgent`` that serves each ``host:port`` from its own in-memory resource."""

    def __init__(self, resources: Mapping[str, IResource] | None = None) -> None:
        self._agents: dict[str, RequestTraversalAgent] = {}
        self.requests: list[SentRequest] = []
        for netloc, resource in (resources or {}).items():
            self.add(netloc, resource)

    def add(self, netloc: str, resource: IResource) -> None:
        """Serve ``netloc`` (``host:port``) from ``resource``, replacing any previous one."""
        self._agents[netloc] = RequestTraversalAgent(resource)  # type: ignore[no-untyped-call]

    def remove(self, netloc: str) -> None:
        """Refuse connections to ``netloc`` from now on."""
        self._agents.pop(netloc, None)

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """Send the request to the resource of the URI's ``host:port``."""
        self.requests.append(SentRequest(method.decode("ascii"), uri.decode("ascii"), headers))
        parsed = URI.fromBytes(uri)  # type: ignore[no-untyped-call]
        netloc = f"{parsed.host.decode('ascii')}:{parsed.port}"
        agent = self._agents.get(netloc)
        if agent is None:
            refused = ConnectionRefusedError(f"no in-memory server at {netloc}")  # type: ignore[no-untyped-call]
            return fail(refused)
        response: Deferred[IResponse] = agent.request(method, uri, headers, bodyProducer)  # type: ignore[no-untyped-call]
        return response

    def flush(self) -> None:
        """Deliver data that routes wrote after returning ``NOT_DONE_YET``."""
        for agent in list(self._agents.values()):
            agent.flush()  # type: ignore[no-untyped-call]


def memory_client_factory(
    resources: Mapping[str, IResource],
    reactor: IReactorTime,
    *,
    tls: IPolicyForHTTPS | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: RetryPolicy | None = None,
) -> tuple[HTTPClientFactory, HostRoutingAgent]:
    """An :class:`HTTPClientFactory` over a :class:`HostRoutingAgent` serving ``resources``.

    ``reactor`` is typically a ``Clock``: it times timeouts and backoff.
    """
    agent = HostRoutingAgent(resources)
    # The in-memory agent makes no connections: of the client reactor, only the clock is used.
    client_reactor = cast(IClientReactor, reactor)
    factory = HTTPClientFactory(
        client_reactor, tls=tls, timeout=timeout, retry=retry or RetryPolicy(), agent=agent
    )
    return factory, agent
