"""
GET throughput of a cached blob: the agent's registry port versus the Debian docker-registry.

``python -m bench.registry_read --size 1GiB [--runs 5]``

One random blob is put into an agent blob store and uploaded to a ``docker-registry``
(filesystem storage) on 127.0.0.1. The agent's registry API runs in a child process
(``--serve``) with the blob already cached, so a GET takes the serving path only
(``os.sendfile`` on plain TCP). ``curl -o /dev/null`` then fetches
``/v2/bench/blob/blobs/<digest>`` from each server in turn, alternating, ``--runs``
times; each side's best run counts. The last line is JSON with ``mb_per_s``,
``reference_mb_per_s`` and ``ratio`` (MB = 10^6 bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.common import parse_size
from bench.pair import make_blob
from bench.registry import docker_registry, free_port, put_reference, wait_for


def serve(root: str, port: int) -> None:
    """Child process: the agent registry API over ``root``, every blob taken as cached."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, succeed
    from twisted.python.threadpool import ThreadPool
    from zope.interface import implementer

    from kraken.api.agent import AgentAPI
    from kraken.api.registry import RegistryAPI
    from kraken.clients.buildindex import BuildIndexClient
    from kraken.cluster import PassiveHealthFilter
    from kraken.config.sections import HTTPServerConfig
    from kraken.core import Digest
    from kraken.http.client import HTTPClientFactory
    from kraken.http.errors import render_registry_json
    from kraken.http.server import KleinRoutes, read_only
    from kraken.io.runner import threadpool_runner
    from kraken.protocols.downloader import IBlobDownloader
    from kraken.services.parts import closing_listener, http_site
    from kraken.store import BlobStore

    @implementer(IBlobDownloader)
    class Cached:
        """Every blob is already in the store."""

        def download(self, namespace: str, digest: Digest) -> Deferred[None]:
            return succeed(None)

        def delete(self, digest: Digest) -> Deferred[None]:
            return succeed(None)

    pool = ThreadPool(2, 8, "bench")
    pool.start()
    store = BlobStore(root, reactor)
    http = HTTPClientFactory(reactor)
    tags = BuildIndexClient(http.client(), frozenset, PassiveHealthFilter(reactor))
    api = AgentAPI(store, Cached(), tags, threadpool_runner(reactor, pool))
    registry = RegistryAPI(api, reactor)
    # The agent daemon's own listener stack: a KrakenSite (read-only gate, limits) behind
    # the connection-tracking ClosingListener, so the figure is what the daemon serves.
    site = http_site(
        registry.resource(),
        reactor,
        HTTPServerConfig(),
        gate=KleinRoutes(registry.app, {}, checks=[read_only]),
        renderer=render_registry_json,
    )
    closing_listener(reactor, f"tcp:{port}:interface=127.0.0.1", site).startService()
    reactor.run()  # type: ignore[attr-defined]
    pool.stop()


def curl_seconds(url: str, size: int) -> float:
    """Seconds for ``curl`` to GET ``url`` into /dev/null; checks the size."""
    t0 = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url],
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if int(out.stdout.strip()) != size:
        raise SystemExit(f"{url}: got {out.stdout} bytes, expected {size}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--serve", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return

    from twisted.internet.task import Clock

    from kraken.store import BlobStore

    size = parse_size(args.size)
    workdir = tempfile.mkdtemp(prefix="kraken-bench-registry-")
    procs: list[Any] = []
    stack = contextlib.ExitStack()
    try:
        blob = os.path.join(workdir, "blob")
        make_blob(blob, size)
        root = os.path.join(workdir, "agent")
        store = BlobStore(root, Clock())
        with store.open_ingest() as ingest, open(blob, "rb") as f:
            shutil.copyfileobj(f, ingest.file, 8 * 1024 * 1024)
            digest = str(_commit(ingest, blob))
        port = free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.registry_read", "--serve", root, str(port)]
            )
        )
        agent_url = f"http://127.0.0.1:{port}/v2/bench/blob/blobs/{digest}"
        wait_for(f"http://127.0.0.1:{port}/v2/")
        ref_url = put_reference(stack.enter_context(docker_registry(workdir)), blob, digest)
        agent_times, ref_times = [], []
        for _ in range(args.runs):
            agent_times.append(curl_seconds(agent_url, size))
            ref_times.append(curl_seconds(ref_url, size))
        mb = size / 1e6
        agent_rate, ref_rate = mb / min(agent_times), mb / min(ref_times)
        print(
            f"agent registry: best {min(agent_times):.3f} s = {agent_rate:.0f} MB/s "
            f"(runs: {', '.join(f'{t:.3f}' for t in agent_times)})"
        )
        print(
            f"docker-registry: best {min(ref_times):.3f} s = {ref_rate:.0f} MB/s "
            f"(runs: {', '.join(f'{t:.3f}' for t in ref_times)})"
        )
        print(
            json.dumps(
                {
                    "size": size,
                    "runs": args.runs,
                    "mb_per_s": round(agent_rate, 1),
                    "reference_mb_per_s": round(ref_rate, 1),
                    "ratio": round(agent_rate / ref_rate, 3),
                }
            )
        )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _commit(ingest: Any, blob: str) -> Any:
    """Commit the ingest under the blob's sha256 (hashed here, once)."""
    import hashlib

    h = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)
    from kraken.core import Digest

    digest = Digest(h.hexdigest())
    ingest.commit(digest)
    return digest


if __name__ == "__main__":
    main()
