"""
``kraken blob push|stat|pull``: talk to an origin ring from the command line.

``push`` hashes the file (in a thread), then uploads it in 32 MiB chunks to the blob's
owner (asking ``--origin`` for the locations), with a tqdm progress bar on stderr, and
prints the digest (saying so when the origin already had the blob).  ``stat`` prints
the size the ring (or its backend) knows; ``pull`` downloads a blob to a file (or
stdout) and checks its digest.  ``--cacert``, ``--cert`` and ``--key`` talk to an
origin that serves TLS (``https://``), presenting a client certificate for writes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable
from typing import IO, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThread
from twisted.web.iweb import IPolicyForHTTPS

from kraken.backends.threads import BlockingRunner
from kraken.config.sections import TLSConfig
from kraken.core import Digest
from kraken.http.client import HTTPClientFactory, RequestError
from kraken.protocols.origin_client import (
    DEFAULT_CHUNK_SIZE,
    BlobNotFoundAtOrigin,
    NoOriginAvailable,
    OriginClient,
    OriginClusterClient,
    file_chunks,
)
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
    origin = args.origin
    parts = urlsplit(origin if "://" in origin else f"http://{origin}")
    if parts.scheme not in ("http", "https"):
        raise BadOptions(f"bad --origin {origin!r}: the scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise BadOptions(f"bad --origin {origin!r}: expected http://host:port or https://host:port")
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


def _cluster(reactor: Any, target: OriginTarget) -> OriginClusterClient:
    http = HTTPClientFactory(reactor, tls=target.tls)
    client = OriginClient(
        http.client(), reactor, scheme=target.scheme, chunk_size=DEFAULT_CHUNK_SIZE
    )
    return OriginClusterClient(client, lambda: [target.netloc])


def _runner(function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
    return deferToThread(function, *args, **kwargs)


async def _main(reactor: Any, args: argparse.Namespace, target: OriginTarget) -> int:
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
                await pull_file(cluster, args.namespace, digest, sys.stdout.buffer)
            else:
                with open(args.output, "wb") as f:  # noqa: ASYNC230 - a CLI writing its output
                    await pull_file(cluster, args.namespace, digest, f)
    except BlobNotFoundAtOrigin as e:
        print(f"kraken blob {args.blob_command}: {e}", file=sys.stderr)
        return 1
    except (NoOriginAvailable, RequestError, ValueError, OSError) as e:
        print(f"kraken blob {args.blob_command}: {e}", file=sys.stderr)
        return 2
    return 0


def _blob(args: argparse.Namespace) -> int:
    code = 0
    try:
        target = origin_target(args)
    except BadOptions as e:
        print(f"kraken blob {args.blob_command}: {e}", file=sys.stderr)
        return 2

    def main(reactor: Any) -> Deferred[None]:
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
        p.add_argument(
            "--origin", required=True, help="an origin, http://host:port (https:// with TLS)"
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
        p.set_defaults(func=_blob)
