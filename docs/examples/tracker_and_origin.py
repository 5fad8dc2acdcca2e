"""
A tracker and an origin in one process, each on its own ports, run with
``twisted.internet.task.react``.

    python docs/examples/tracker_and_origin.py [--tracker-config tracker.yaml] \\
        [--origin-config origin.yaml]

Without configuration files both take the single-host defaults: the origin on
127.0.0.1:15002 (HTTP) and 15001 (peer), its data and filesystem backend under
``./kraken-data/origin``; the tracker on 127.0.0.1:15003, in front of that origin.  Push a
blob with ``kraken blob push --origin http://127.0.0.1:15002 --namespace NS FILE`` and ask
the tracker for its metainfo at ``/namespace/NS/blobs/<digest>/metainfo``.

SIGINT or SIGTERM stops both (exit status 0) once their ports, connections, thread pools
and queues are closed; a port that cannot be opened stops both and ends the process with
status 1.
"""

import sys

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python import usage

from kraken import embed

log = Logger(namespace="tracker_and_origin")


class Options(usage.Options):
    """The command line."""

    optParameters = [
        ["tracker-config", None, None, "The tracker's YAML configuration."],
        ["origin-config", None, None, "The origin's YAML configuration."],
    ]


async def main(reactor, *argv):
    """Build both daemons, start them under one parent, run until the reactor stops."""
    options = Options()
    options.parseOptions(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])

    origin = embed.build("origin", options["origin-config"], reactor)
    tracker = embed.build("tracker", options["tracker-config"], reactor)
    both = MultiService()
    origin.service.setServiceParent(both)  # started first, stopped last
    tracker.service.setServiceParent(both)

    both.startService()
    reactor.addSystemEventTrigger("before", "shutdown", both.stopService)
    try:
        await origin.ready()
        await tracker.ready()
    except embed.ListenFailed:  # already logged, one line naming the port and the reason
        await both.stopService()
        raise SystemExit(1) from None
    log.info(
        "origin on {origin}, tracker on {tracker}",
        origin=origin.address("server"),
        tracker=tracker.address("server"),
    )
    await Deferred()  # until SIGINT/SIGTERM stops the reactor (react then exits 0)


if __name__ == "__main__":
    react(lambda reactor, *argv: ensureDeferred(main(reactor, *argv)), sys.argv[1:])
