"""
An application with a page of its own that also serves a Kraken agent's registry, on its
own port, through its own twisted.web Site.

Run it with twistd (the agent's configuration is a normal agent YAML file, see
docs/configuration.md; without one the single-host defaults apply)::

    KRAKEN_AGENT_CONFIG=agent.yaml APP_LISTEN=tcp:8080:interface=127.0.0.1 \
        twistd -ny docs/examples/agent_app.tac

then ``curl http://127.0.0.1:8080/`` shows the application's page and
``skopeo copy --src-tls-verify=false docker://127.0.0.1:8080/<repo>:<tag> oci:./out:<tag>``
pulls an image through the agent.  The agent still opens its own ``server`` (blob API,
health, metrics) and ``peer`` ports; its ``registry`` port is not opened: the application
serves the registry under ``/v2/`` instead.
"""

import os

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from kraken import embed

log = Logger(namespace="agent_app")

application = Application("agent-app")

# The agent, minus its registry listener: the application serves that resource itself.
agent = embed.build("agent", os.environ.get("KRAKEN_AGENT_CONFIG"), reactor, mount=["registry"])
agent.service.setServiceParent(application)


def listener_failed(failure):
    """twistd would exit 1 for a daemon's port it cannot open; here the application decides."""
    log.failure("the embedded agent cannot listen", failure)
    reactor.stop()


agent.ready().addErrback(listener_failed)

# The application's own tree: its page at /, the agent's registry at /v2/ (docker clients
# speak to /v2/ only, so keep_path hands the registry the whole path).
root = Resource()
root.putChild(b"", Data(b"hello from the host application\n", "text/plain"))
root.putChild(b"v2", embed.keep_path(agent.resource("registry")))

# Parented after the agent, so it stops first: no request reaches a stopped agent.
endpoint = serverFromString(reactor, os.environ.get("APP_LISTEN", "tcp:8080:interface=127.0.0.1"))
listener = embed.serve_on(endpoint, Site(root))
listener.setServiceParent(application)
listener.ready().addErrback(listener_failed)
