"""
The tracker's live swarm page in a real headless browser (Debian's ``chromium``).

``twistd -n kraken-herd --agents 5`` runs in a child process; a blob goes to its origin and
all six agents pull it at once.  The page, ``http://<tracker>/ui/?torrent=<infohash>``, is
loaded again and again in ``chromium --headless --dump-dom`` (its script runs: it fetches
the tracker's JSON and draws) until it shows every agent complete; the test then checks
what the page says (the summary, six agents and the origin at 100 %, each piece held by
all seven) and takes a screenshot (``swarm-page.png`` in trial's working directory).
"""

from __future__ import annotations

import html
import json
import os
import random
import re

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from kraken.clients.origin import OriginClient, OriginClusterClient, bytes_chunks
from kraken.core import DEFAULT_PIECE_LENGTHS, MetaInfo
from kraken.http.client import NO_RETRY, HTTPClientFactory, read_body
from tests.external import require_program
from tests.system.test_herd_clients import HerdProcess

#: The herd's extra agents: agent ``i`` serves its API on agent base + 1000 i + 2.
EXTRA_AGENTS = 5
AGENT_STRIDE = 1000
NAMESPACE = "test/swarm"


def absolute(path: str) -> str:
    """``path`` made absolute (trial's working directory is the test's)."""
    return os.path.abspath(path)


def read(path: str) -> bytes:
    """The bytes of the file at ``path``."""
    with open(path, "rb") as f:
        return f.read()


class SwarmPageTests(TestCase):
    """The page shows a real swarm of six agents filling in, as an operator would see it."""

    timeout = 240

    async def browse(self, chromium: str, url: str, *options: str) -> str:
        """Run headless chromium on ``url`` (its script gets 4 s of page time); its stdout."""
        profile = absolute(self.mktemp())
        out, err, code = await getProcessOutputAndValue(
            chromium,
            [
                "--headless",
                "--no-sandbox",  # root in CI; the page is our own
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=4000",
                *options,
                url,
            ],
            env={**os.environ, "HOME": profile},
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return out.decode()

    async def test_page_shows_the_swarm_complete(self) -> None:
        """Six agents pull one blob; the page shows all of them complete and every piece."""
        chromium = require_program("chromium")
        herd = HerdProcess(self)
        herd.args = ["--agents", str(EXTRA_AGENTS)]
        await herd.start()
        origin_http = f"127.0.0.1:{herd.base + 2}"
        tracker = f"127.0.0.1:{herd.base + 3}"
        servers = [
            f"127.0.0.1:{herd.agent_base + AGENT_STRIDE * i + 2}" for i in range(1 + EXTRA_AGENTS)
        ]
        http = HTTPClientFactory(reactor, timeout=60)
        self.addCleanup(http.close)
        client = http.client(retry=NO_RETRY)

        data = random.Random(7).randbytes(24 * 1024 * 1024)
        meta = MetaInfo.of_bytes(data, DEFAULT_PIECE_LENGTHS.for_size(len(data)))
        origins = OriginClusterClient(OriginClient(client, reactor), lambda: [origin_http])
        await origins.upload_blob(NAMESPACE, meta.digest, len(data), bytes_chunks(data))

        async def pull(server: str) -> bytes:
            url = f"http://{server}/namespace/test%2Fswarm/blobs/{meta.digest}"
            response = await client.get(url, timeout=120)
            return await read_body(response, len(data))

        pulls = await DeferredList([ensureDeferred(pull(s)) for s in servers], consumeErrors=True)
        for ok, result in pulls:
            self.assertTrue(ok, result)
            self.assertEqual(result, data)

        page = f"http://{tracker}/ui/?torrent={meta.infohash.hex}"
        summary = ""
        for _ in range(30):  # the agents announce complete within seconds of finishing
            dom = await self.browse(chromium, page, "--dump-dom")
            found = re.search(r'<p id="summary">([^<]*)</p>', dom)
            summary = html.unescape(found.group(1)) if found else ""
            if summary.startswith(f"{1 + EXTRA_AGENTS}/{1 + EXTRA_AGENTS} agents complete"):
                break
            await deferLater(reactor, 1.0)
        self.assertEqual(
            summary, f"6/6 agents complete, 1 origins; 25 MB in {meta.num_pieces} pieces"
        )
        drawn = r'<div class="(peer [a-z ]+)" data-peer="[0-9a-f]+" data-done="([0-9.]+)"'
        peers = re.findall(drawn, dom)
        everyone = [("peer origin complete", "100.0")] + [("peer agent complete", "100.0")] * 6
        self.assertEqual(sorted(peers), sorted(everyone))
        holders = re.findall(r'<div class="cell" data-holders="([0-9.]+)"', dom)
        self.assertEqual(len(holders), meta.num_pieces)
        self.assertEqual(set(holders), {"7"})
        self.assertIn(meta.digest.hex[:12], dom)  # the torrent list names it

        # The page's JSON says the same as what the browser drew.
        response = await client.get(f"http://{tracker}/ui/swarm/{meta.infohash.hex}.json")
        swarm = json.loads(await read_body(response, 1 << 20))
        self.assertEqual((swarm["agents"], swarm["complete"]), (6, 6))

        shot = absolute("swarm-page.png")
        await self.browse(
            chromium, page, "--hide-scrollbars", "--window-size=1280,900", f"--screenshot={shot}"
        )
        png = read(shot)
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(png), 10_000)
