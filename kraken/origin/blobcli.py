"""
``kraken blob push|stat|pull``: talk to an origin ring from the command line.

``push`` hashes the file (in a thread), then uploads it in 32 MiB chunks to the blob's
owner (asking ``--origin`` for the locations), with a tqdm progress bar on stderr, and
prints the digest (saying so when the origin already had the blob).  ``stat`` prints
the size the ring (or its backend) knows; ``pull`` downloads a blob to a file (or
stdout) and checks its digest, from an origin or, with ``--agent``, through an agent's
P2P download, with a progress bar fed by the agent's ``/blobs/{digest}/status``.
``--cacert``, ``--cert`` and ``--key`` talk to an origin that serves TLS (``https://``),
presenting a client certificate for writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any, Final, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, react
from twisted.internet.threads import deferToThread
from twisted.web.iweb import IPolicyForHTTPS

from kraken.clients.origin import (
    DEFAULT_CHUNK_SIZE,
    BlobNotFoundAtOrigin,
    NoOriginAvailable,
    OriginClient,
    OriginClusterClient,
    file_chunks,
)
from kraken.config.sections import TLSConfig
from kraken.core import Digest
from kraken.http.client import (
    HTTPClientFactory,
    KrakenHTTPClient,
    RequestError,
    collect_body,
    read_body,
)
from kraken.io.reactor import IClientReactor
from kraken.io.runner import BlockingRunner
from kraken.tls import ClusterTLS, TLSFileError

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = [
    "BadOptions",
    "OriginTarget",
    "add_blob_parser",
    "file_digest",
    "origin_target",
    "pull_file",
    "push_file",
]


def file_digest(path: str) -> Digest:
    """The sha256 digest of a file (blocking: call it in a thread)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)
    return Digest(h.hexdigest())


async def push_file(
    cluster: OriginClusterClient,
    namespace: str,
    path: str,
    run: BlockingRunner,
    progress: Any = None,
) -> tuple[Digest, bool]:
    """Upload the file at ``path``; return its digest and False if the origin already had it."""
    digest = await run(file_digest, path)
    size = await run(os.path.getsize, path)
    stored = await cluster.upload_blob(
        namespace, digest, size, file_chunks(path, run), progress=progress
    )
    return digest, stored


async def pull_file(
    cluster: OriginClusterClient, namespace: str, digest: Digest, out: IO[bytes]
) -> int:
    """Download ``digest`` into ``out``; raise ValueError if the content is not the digest."""
    h = hashlib.sha256()

    def collect(data: bytes) -> None:
        h.update(data)
        out.write(data)

    size = await cluster.download_blob(namespace, digest, collect)
    if h.hexdigest() != digest.hex:
        raise ValueError(f"downloaded content has digest sha256:{h.hexdigest()}, not {digest}")
    return size


class BadOptions(Exception):
    """A command line that cannot work (bad ``--origin``, half a client certificate, bad files)."""


@frozen
class OriginTarget:
    """Where and how to reach the origin: ``host:port``, the scheme and the HTTPS policy."""

    netloc: str
    scheme: str
    tls: IPolicyForHTTPS | None


def origin_target(args: argparse.Namespace) -> OriginTarget:
    """Check ``--origin`` and the TLS options and load their files (blocking: before the reactor).

    ``--cacert`` makes every call HTTPS verified against that CA (``http://`` in ``--origin``
    is upgraded, as between components); ``--cert``/``--key`` add a client certificate.
    """
    option = "--agent" if getattr(args, "agent", None) else "--origin"
    origin = args.agent if option == "--agent" else args.origin
    parts = urlsplit(origin if "://" in origin else f"http://{origin}")
    if parts.scheme not in ("http", "https"):
        raise BadOptions(f"bad {option} {origin!r}: the scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise BadOptions(f"bad {option} {origin!r}: expected http://host:port or https://host:port")
    if (args.cert is None) != (args.key is None):
        raise BadOptions("--cert and --key go together (the client certificate and its key)")
    if args.cert is not None and args.cacert is None:
        raise BadOptions(
            "--cert needs --cacert (the cluster CA that signed the origin's certificate)"
        )
    tls = None
    if args.cacert is not None:
        try:
            config = TLSConfig(ca=args.cacert, client_cert=args.cert, client_key=args.key)
            tls = ClusterTLS.from_config(config, serve=False).client_policy()
        except TLSFileError as e:
            raise BadOptions(str(e)) from e
    scheme = "https" if tls is not None else parts.scheme
    return OriginTarget(parts.netloc, scheme, tls)


AGENT_PULL_TIMEOUT: Final = 3600.0
"""Seconds the agent may take to download a blob before it starts answering."""

STATUS_POLL: Final = 0.5
"""Seconds between two looks at the agent's download status."""


async def pull_through_agent(  # noqa: PLR0917 - the parts of one pull
    http: KrakenHTTPClient,
    clock: IReactorTime,
    agent: str,
    namespace: str,
    digest: Digest,
    out: IO[bytes],
    on_status: Callable[[dict[str, Any]], object] = lambda status: None,
) -> int:
    """Download ``digest`` through the agent at ``agent`` (``http://host:port``) into ``out``.

    While the agent downloads (its blob GET answers only then), its status is polled every
    :data:`STATUS_POLL` seconds and handed to ``on_status``; the body is checked against the
    digest (ValueError otherwise).  Returns the size.
    """
    ns = quote(namespace, safe="")
    blob = http.get(
        f"{agent}/namespace/{ns}/blobs/{digest}", timeout=AGENT_PULL_TIMEOUT, retry=False
    )

    async def look() -> None:
        try:
            response = await http.get(
                f"{agent}/blobs/{digest}/status", timeout=5.0, retry=False, ok=(200, 404)
            )
            body = await read_body(response, 64 * 1024)
        except RequestError:
            return  # the progress bar waits; the download itself reports failures
        if response.code == 200:
            on_status(json.loads(body))

    poller = LoopingCall(lambda: Deferred.fromCoroutine(look()))
    poller.clock = clock
    polling = poller.start(STATUS_POLL, now=True)
    try:
        response = await blob
    finally:
        poller.stop()
        await polling
    h = hashlib.sha256()

    def collect(data: bytes) -> None:
        h.update(data)
        out.write(data)

    size = await collect_body(response, collect)
    if h.hexdigest() != digest.hex:
        raise ValueError(f"downloaded content has digest sha256:{h.hexdigest()}, not {digest}")
    on_status({"state": "cached", "bytes": {"done": size, "total": size}})
    return size


def _cluster(reactor: IClientReactor, target: OriginTarget) -> OriginClusterClient:
    http = HTTPClientFactory(reactor, tls=target.tls)
    client = OriginClient(
        http.client(), reactor, scheme=target.scheme, chunk_size=DEFAULT_CHUNK_SIZE
    )
    return OriginClusterClient(client, lambda: [target.netloc])


def _runner(function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
    return deferToThread(function, *args, **kwargs)


async def _main(reactor: IClientReactor, args: argparse.Namespace, target: OriginTarget) -> int:
    cluster = _cluster(reactor, target)
    try:
        if args.blob_command == "push":
            from tqdm import tqdm

            size = os.path.getsize(args.file)  # noqa: ASYNC240 - a CLI, before any I/O
            with tqdm(
                total=size, unit="B", unit_scale=True, file=sys.stderr, disable=args.quiet
            ) as bar:

                def progress(done: int) -> None:
                    bar.update(done - bar.n)

                digest, stored = await push_file(
                    cluster, args.namespace, args.file, _runner, progress
                )
                bar.leave = stored
            if not stored:
                print(
                    f"kraken blob push: {digest} already present at the origin; nothing uploaded",
                    file=sys.stderr,
                )
            print(digest)
        elif args.blob_command == "stat":
            print(await cluster.stat(args.namespace, Digest.parse(args.digest)))
        else:
            digest = Digest.parse(args.digest)
            if args.output in (None, "-"):
                await _pull(reactor, args, target, cluster, digest, sys.stdout.buffer)
            else:
                with open(args.output, "wb") as f:  # noqa: ASYNC230 - a CLI writing its output
                    await _pull(reactor, args, target, cluster, digest, f)
    except BlobNotFoundAtOrigin as e:
        print(f"kraken blob {args.blob_command}: {e}", file=sys.stderr)
        return 1
    except (NoOriginAvailable, RequestError, ValueError, OSError) as e:
        print(f"kraken blob {args.blob_command}: {e}", file=sys.stderr)
        return 2
    return 0


async def _pull(  # noqa: PLR0917 - one pull's parts
    reactor: IClientReactor,
    args: argparse.Namespace,
    target: OriginTarget,
    cluster: OriginClusterClient,
    digest: Digest,
    out: IO[bytes],
) -> None:
    if not args.agent:
        await pull_file(cluster, args.namespace, digest, out)
        return
    from tqdm import tqdm

    http = HTTPClientFactory(reactor, tls=target.tls)
    base = f"{target.scheme}://{target.netloc}"
    with tqdm(unit="B", unit_scale=True, file=sys.stderr, disable=args.quiet) as bar:

        def on_status(status: dict[str, Any]) -> None:
            sizes = status.get("bytes") or {}
            if isinstance(sizes.get("total"), int) and bar.total != sizes["total"]:
                bar.reset(total=sizes["total"])
            if isinstance(sizes.get("done"), int):
                bar.update(sizes["done"] - bar.n)
            peers, origins = status.get("peers"), status.get("origins")
            if isinstance(peers, int) and isinstance(origins, int):
                bar.set_postfix(peers=peers, origins=origins, refresh=False)

        await pull_through_agent(
            http.client(), reactor, base, args.namespace, digest, out, on_status
        )


def _blob(args: argparse.Namespace) -> int:
    code = 0
    try:
        target = origin_target(args)
    except BadOptions as e:
        print(f"kraken blob {args.blob_command}: {e}", file=sys.stderr)
        return 2

    # react() calls it with the global reactor, which provides every interface it names.
    def main(reactor: IClientReactor) -> Deferred[None]:
        async def run() -> None:
            nonlocal code
            code = await _main(reactor, args, target)

        return ensureDeferred(run())

    try:
        react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return code


def add_blob_parser(sub: Any) -> None:
    """Add ``blob push|stat|pull`` to the ``kraken`` subparsers."""
    blob = sub.add_parser("blob", help="push, stat or pull blobs at an origin ring")
    blob_sub = blob.add_subparsers(dest="blob_command", required=True)
    for name, what in (
        ("push", "upload FILE in 32 MiB chunks; prints its digest"),
        ("stat", "print the size of DIGEST"),
        ("pull", "download DIGEST (to -o FILE, default stdout)"),
    ):
        p = blob_sub.add_parser(name, help=what)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--origin", help="an origin, http://host:port (https:// with TLS)")
        if name == "pull":
            where.add_argument(
                "--agent",
                help="pull through this agent's server API, http://host:port (16002): a P2P "
                "download, with a progress bar from its /blobs/<digest>/status",
            )
        p.add_argument(
            "--cacert",
            metavar="PEM",
            help="the cluster CA: talk HTTPS to the origin and verify it (docs/security.md)",
        )
        p.add_argument(
            "--cert", metavar="PEM", help="client certificate (pushes to a TLS origin need one)"
        )
        p.add_argument("--key", metavar="PEM", help="the private key of --cert")
        p.add_argument("--namespace", required=True, help="namespace (e.g. the repository)")
        if name == "push":
            p.add_argument("file", metavar="FILE")
            p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        else:
            p.add_argument("digest", metavar="DIGEST", help="sha256:<hex>")
        if name == "pull":
            p.add_argument("-o", "--output", default=None, help="file to write (default stdout)")
            p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        p.set_defaults(func=_blob)
