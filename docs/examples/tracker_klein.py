"""
A Klein application with routes of its own that serves a Kraken tracker's API under
``/tracker/``, on one port, run with ``twisted.internet.task.react``.

    python docs/examples/tracker_klein.py [--config tracker.yaml] \\
        [--listen tcp:8080:interface=127.0.0.1]

``curl http://127.0.0.1:8080/`` answers the application's own route;
``curl http://127.0.0.1:8080/tracker/health`` the tracker's.  Agents that use this tracker
need their ``tracker.hosts`` to name a host that routes ``/announce`` and
``/namespace/...`` to it, so a tracker under a prefix suits tooling and dashboards; the
agents' tracker should stay at the root of its own port.  SIGINT or SIGTERM stops it
(exit status 0); a port that cannot be opened ends it with status 1 and one line saying
why.
"""

import sys

from klein import Klein
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python import usage
from twisted.web.server import Site

from kraken import embed

log = Logger(namespace="tracker_klein")


class Options(usage.Options):
    """The command line."""

    optParameters = [
        ["config", "c", None, "The tracker's YAML configuration (default: single-host defaults)."],
        ["listen", None, "tcp:8080:interface=127.0.0.1", "Where the application listens."],
    ]


class HostApplication:
    """The application: its own routes, and the tracker's API under /tracker/."""

    app = Klein()

    def __init__(self, tracker_api):
        self.tracker_api = tracker_api

    @app.route("/")
    def index(self, request):
        """The application's own page."""
        request.setHeader("Content-Type", "text/plain")
        return "hello from the host application\n"

    @app.route("/tracker/", branch=True)
    def tracker(self, request):
        """Everything under /tracker/ goes to the tracker, without the prefix."""
        return self.tracker_api


async def main(reactor, *argv):
    """Start the tracker and the application; run until the reactor stops."""
    options = Options()
    options.parseOptions(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])

    tracker = embed.build("tracker", options["config"], reactor, mount=["server"])
    host = HostApplication(tracker.resource("server"))
    everything = MultiService()
    tracker.service.setServiceParent(everything)
    # Parented last, so it stops first: no request reaches a stopped tracker.
    listener = embed.serve_on(
        serverFromString(reactor, options["listen"]), Site(host.app.resource())
    )
    listener.setServiceParent(everything)

    everything.startService()
    reactor.addSystemEventTrigger("before", "shutdown", everything.stopService)
    try:
        await listener.ready()
    except embed.ListenFailed:  # already logged, one line naming the port and the reason
        await everything.stopService()
        raise SystemExit(1) from None
    log.info("serving on {listen}", listen=options["listen"])
    await Deferred()  # until SIGINT/SIGTERM stops the reactor (react then exits 0)


if __name__ == "__main__":
    react(lambda reactor, *argv: ensureDeferred(main(reactor, *argv)), sys.argv[1:])
