"""
Small clients that ``bench.swarm`` and ``tests/system`` run inside a host's namespace.

``python -m bench.swarm_client upload --origins H:P,... --namespace NS FILE``
    Upload FILE into the origin ring (the origin client, chunked), then wait until every
    listed origin holds it locally (replication); prints JSON ``{"digest", "seconds"}``.

``python -m bench.swarm_client wait URL [URL...] [--timeout S]``
    Poll until every URL answers 200.

``python -m bench.swarm_client mesh --listen ADDR:PORT [--peers ADDR:PORT,...] --seconds S``
    The network's own ceiling, without Kraken: listen on ADDR:PORT, print ``READY``, read
    ``GO <unix time>``, then at that moment connect to every peer and, on every connection
    (dialled or accepted), send and receive bulk bytes both ways for S seconds; prints JSON
    ``{"rx_rate", "tx_rate"}``: payload bytes per second received and sent, counted over the
    middle of the run (from 1.5 s after GO to 0.5 s before the end) so that connection set-up
    and TCP start-up are left out.
``python -m bench.swarm_client fetch URL --sha256 HEX [--health URL] [--out FILE] [--size N]``
    Wait until ``--health`` answers 200, print ``READY``, read ``GO <unix time>`` from stdin,
    sleep until that moment, then GET URL, hashing the body (and writing it to ``--out``);
    prints JSON ``{"start", "end", "bytes", "sha256", "ok", "status"}``.  ``end`` is when
    the last byte arrived: with ``--size`` (up to 256 MiB) the body lands in a buffer made
    ready before GO and is hashed after ``end``, at nice 19 (see :func:`fetch`); otherwise
    each chunk is hashed as it streams.  All hosts share the machine's clock, so these
    times are comparable between namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import selectors
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any, BinaryIO

CHUNK = 1024 * 1024
#: A fetch of at most this many bytes lands whole in memory and is hashed after its end.
DEFER_LIMIT = 256 * 1024 * 1024
PAGE = 4096


def _get_status(url: str, timeout: float = 2) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def wait(urls: list[str], timeout: float) -> None:
    """Block until every URL answers 200 (SystemExit after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        pending = [u for u in pending if _get_status(u) != 200]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready after {timeout} s: {', '.join(pending)}")
        time.sleep(0.1)


class Landing:
    """
    Where a fetch puts the body.

    With the size known (``--size``, at most :data:`DEFER_LIMIT`) it is one
    buffer of that size, allocated and its pages faulted in *before* GO: the
    body lands in it with one copy (``readinto``), and hashing and saving wait
    until the last byte has arrived.  Otherwise it is one :data:`CHUNK` buffer,
    reused, and each chunk is hashed as it arrives.
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size
        self.whole = size is not None and 0 < size <= DEFER_LIMIT
        self.buffer = bytearray(size if self.whole and size else CHUNK)
        for i in range(0, len(self.buffer), PAGE):
            self.buffer[i] = 1
        self.view = memoryview(self.buffer)

    def receive(self, response: Any, digest: Any, sink: BinaryIO | None) -> int:
        """Read ``response`` to its end; the body's length (more than ``size`` stops early)."""
        view, got = self.view, 0
        while True:
            if not self.whole:
                n = response.readinto(view)
                if not n:
                    return got
                digest.update(view[:n])
                if sink is not None:
                    sink.write(view[:n])
            elif got == len(view):
                # Longer than announced: the caller sees more bytes than ``size``.
                return got + len(response.read(CHUNK))
            else:
                n = response.readinto(view[got:])
                if not n:
                    return got
            got += n

    def finish(self, got: int, digest: Any, sink: BinaryIO | None) -> None:
        """After the end: hash (and save) a whole body, at the lowest CPU priority."""
        if self.whole:
            os.nice(19)
            body = self.view[: min(got, len(self.view))]
            digest.update(body)
            if sink is not None:
                sink.write(body)


def fetch(
    url: str, expected: str, out: str | None, landing: Landing | None = None
) -> dict[str, Any]:
    """
    GET ``url``, then check (and maybe save) the body; the result record.

    ``end`` is when the last byte arrived.  With a whole-body ``landing`` the
    SHA-256 and the copy to ``out`` come after that, at nice 19: on a machine
    that runs every host of the swarm, twenty clients hashing their blob at once
    would otherwise take the CPU from the agents still downloading (a real
    host checks its bytes on its own CPU).  ``ok`` needs status 200, the
    expected SHA-256 and, with a size given, exactly that many bytes.
    """
    landing = landing or Landing()
    start = time.time()
    digest = hashlib.sha256()
    got, status = 0, 0
    with open(out, "wb") if out else contextlib.nullcontext() as sink:
        try:
            with urllib.request.urlopen(url, timeout=900) as response:  # noqa: S310 - http only
                status = int(response.status)
                got = landing.receive(response, digest, sink)
                if response.length:
                    # http.client ends a short body quietly; say so.
                    raise http.client.IncompleteRead(b"", response.length)
        except urllib.error.HTTPError as e:
            status = int(e.code)
        except (OSError, http.client.HTTPException) as e:
            return {"start": start, "end": time.time(), "bytes": got, "ok": False, "error": repr(e)}
        end = time.time()
        landing.finish(got, digest, sink)
    sha = digest.hexdigest()
    return {
        "start": start,
        "end": end,
        "bytes": got,
        "sha256": sha,
        "status": status,
        "ok": status == 200 and sha == expected and (landing.size is None or got == landing.size),
    }


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _wait_for_go() -> float:
    """Print READY, read ``GO <unix time>`` from stdin; that time."""
    print("READY", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "GO":
        raise SystemExit(f"expected 'GO <time>', got {line}")
    return float(line[1])


def mesh(listen: str, peers: list[str], seconds: float) -> dict[str, float]:
    """Bulk TCP both ways with every peer for ``seconds``; payload rates (see the module doc)."""
    server = socket.create_server(_address(listen), backlog=128)
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    go = _wait_for_go()
    delay = go - time.time()
    if delay > 0:
        time.sleep(delay)
    rw = selectors.EVENT_READ | selectors.EVENT_WRITE
    for peer in peers:
        conn = socket.create_connection(_address(peer), timeout=10)
        conn.setblocking(False)
        sel.register(conn, rw)
    block = b"\0" * (256 * 1024)
    begin, end = go + 1.5, go + seconds - 0.5
    counts = {"rx": 0, "tx": 0}
    while (now := time.time()) < go + seconds:
        counting = begin <= now < end
        for key, events in sel.select(0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is server:
                conn, _ = server.accept()
                conn.setblocking(False)
                sel.register(conn, rw)
                continue
            try:
                if events & selectors.EVENT_READ:
                    n = sock.recv(1024 * 1024)
                    if not n:
                        sel.unregister(sock)
                        sock.close()
                        continue
                    counts["rx"] += len(n) if counting else 0
                if events & selectors.EVENT_WRITE:
                    sent = sock.send(block)
                    counts["tx"] += sent if counting else 0
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                # A peer that finished first closes its end; count what came before.
                sel.unregister(sock)
                sock.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"rx_rate": counts["rx"] / (end - begin), "tx_rate": counts["tx"] / (end - begin)}


def upload(origins: list[str], namespace: str, path: str, timeout: float) -> None:
    """Upload ``path`` to the ring, wait for every origin to hold it, print JSON; exits."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater, react
    from twisted.internet.threads import deferToThread

    from kraken.clients.origin import (
        OriginClient,
        OriginClusterClient,
        PollPolicy,
        file_chunks,
    )
    from kraken.core import Digest
    from kraken.http.client import HTTPClientFactory, RetryPolicy

    result: dict[str, Any] = {}

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    d = Digest.parse("sha256:" + h.hexdigest())
    size = os.path.getsize(path)

    async def main(reactor: Any) -> None:
        http = HTTPClientFactory(reactor, timeout=120, retry=RetryPolicy(max_retries=2))
        client = OriginClient(
            http.client(), reactor, chunk_size=8 * CHUNK, poll=PollPolicy(initial=0.05)
        )
        cluster = OriginClusterClient(client, lambda: origins)

        began = time.monotonic()
        await cluster.upload_blob(namespace, d, size, file_chunks(path, deferToThread))  # type: ignore[arg-type]
        pending = list(origins)
        while pending:
            still = []
            for host in pending:
                try:
                    await client.stat(host, namespace, d, local=True)
                except Exception:
                    still.append(host)
            pending = still
            if pending:
                if time.monotonic() - began > timeout:
                    raise SystemExit(f"{d} not replicated to {pending} after {timeout} s")
                await deferLater(reactor, 0.2)
        result.update(digest=str(d), seconds=time.monotonic() - began)
        await http.close()
        # react() exits the process: print here.
        print(json.dumps(result), flush=True)

    react(lambda reactor: ensureDeferred(main(reactor)))


def main(argv: list[str] | None = None) -> None:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.swarm_client")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upload")
    up.add_argument("--origins", required=True)
    up.add_argument("--namespace", required=True)
    up.add_argument("--timeout", type=float, default=300)
    up.add_argument("file")
    wt = sub.add_parser("wait")
    wt.add_argument("urls", nargs="+")
    wt.add_argument("--timeout", type=float, default=60)
    me = sub.add_parser("mesh")
    me.add_argument("--listen", required=True)
    me.add_argument("--peers", default="")
    me.add_argument("--seconds", type=float, default=8)
    fe = sub.add_parser("fetch")
    fe.add_argument("url")
    fe.add_argument("--sha256", required=True)
    fe.add_argument("--health")
    fe.add_argument("--out")
    fe.add_argument("--size", type=int, help="expected bytes: land the body whole, hash after")
    fe.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "wait":
        wait(args.urls, args.timeout)
    elif args.command == "upload":
        upload(args.origins.split(","), args.namespace, args.file, args.timeout)
    elif args.command == "mesh":
        peers = [p for p in args.peers.split(",") if p]
        print(json.dumps(mesh(args.listen, peers, args.seconds)), flush=True)
    else:
        if args.health:
            wait([args.health], args.timeout)
        landing = Landing(args.size)
        delay = _wait_for_go() - time.time()
        if delay > 0:
            time.sleep(delay)
        print(json.dumps(fetch(args.url, args.sha256, args.out, landing)), flush=True)


if __name__ == "__main__":
    main()
