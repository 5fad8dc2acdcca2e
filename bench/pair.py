"""
Two-process peer transfer over 127.0.0.1 versus curl from the Debian docker-registry.

``python -m bench.pair --size 1GiB``: one process seeds a blob (origin-style,
read-only file), another downloads it into a BlobStore with the P2P engine,
no rate limit (``--agent-limits``: the agent's default bandwidth limits, as an
agent runs unless configured otherwise), and times ``curl`` fetching the same bytes from
``/usr/bin/docker-registry`` into a file; prints MB/s and the CPU seconds per
GB of each side.  Both are the best of ``--runs`` (3) runs, each into a fresh
file, P2P and curl alternating (ABBA) so both see the same (shared) machine: on a VM
the first write into never-touched memory costs several times more (measured:
2.4 s versus 0.2 s to ``pwrite`` 1 GiB), so one P2P run against curl's best of
two compared cold page cache with warm.  The last line is JSON
``{"mb_per_s", "reference_mb_per_s", "ratio", "median_run_ratio", "seeder_cpu_s_per_gb",
"downloader_cpu_s_per_gb", "peer_tls"}`` (``--peer-tls``: mutual TLS on the peer connection).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bench.common import parse_size, process_cpu_seconds
from bench.registry import docker_registry, free_port, put_reference

__all__ = ["free_port", "make_blob", "parse_size"]

MB = 1_000_000


def cpu_seconds() -> float:
    """User + system CPU of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_blob(path: str, size: int) -> None:
    """Random (incompressible) bytes."""
    rng = random.Random(42)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * 1024 * 1024)
            f.write(rng.randbytes(n))
            left -= n


def _settle(seconds: float) -> None:
    """
    The same start for every timed transfer: nothing dirty, memory freed a while ago.

    os.sync(): the setup's 2 GiB of dirty pages (blob, registry copy) would
    otherwise be written back during whichever transfer crosses the dirty
    limits.  The pause: this VM hands freed memory back to its host within
    seconds (measured, pwrite of 1 GiB right after deleting 1 GiB: 0.51-1.83 s,
    median 0.7; 3 s later: 1.27-3.63 s, median 1.8), and curl starts at once
    while P2P starts two processes first, so without it curl wrote into warm
    pages and P2P into cold ones.
    """
    os.sync()
    time.sleep(seconds)


def _children_cpu() -> float:
    """User + system CPU of the waited-for children of this process."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _node(peer_id_hex: str, archive: Any, origin: bool, **config: Any) -> Any:
    from twisted.internet import reactor
    from twisted.python.threadpool import ThreadPool

    from kraken.core import PeerID
    from kraken.io.runner import threadpool_runner
    from kraken.protocols.peer import PeerNode
    from kraken.torrent.actions import EngineConfig
    from kraken.torrent.scheduler import Scheduler

    pool = ThreadPool(2, 4, "bench")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    engine = EngineConfig(origin=origin, announce=not origin, **config)
    scheduler = Scheduler(PeerID(peer_id_hex), reactor.seconds, random.Random(), engine)
    node = PeerNode(reactor, scheduler, archive, threadpool_runner(reactor, pool))
    node.start()
    return node


def _peer_tls(tls_dir: str | None, name: str) -> Any:
    """The peer TLS context of certificate ``name`` in ``tls_dir`` (None: plain TCP)."""
    if tls_dir is None:
        return None
    from kraken.certs import CA_CERT_FILE, cert_paths
    from kraken.config.sections import TLSConfig
    from kraken.tls import ClusterTLS

    cert, key = cert_paths(tls_dir, name)
    config = TLSConfig(ca=os.path.join(tls_dir, CA_CERT_FILE), cert=cert, key=key, peer=True)
    return ClusterTLS.from_config(config).peer_options()


def run_seeder(blob: str, meta_path: str, tls_dir: str | None = None) -> None:
    """Serve ``blob`` read-only on a free port; print the port; exit on stdin EOF."""
    from twisted.internet import reactor, stdio
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Protocol
    from zope.interface import implementer

    from kraken.core import Bitfield, Digest, MetaInfo
    from kraken.torrent.archive import (
        IArchive,
        IPieceFiles,
        IPieceStorage,
        PieceFile,
        ReadOnlyArchive,
    )

    with open(meta_path, "rb") as f:
        meta = MetaInfo.from_json(f.read())
    fd = os.open(blob, os.O_RDONLY)

    @implementer(IPieceStorage, IPieceFiles)
    class FileStorage:
        metainfo = meta

        def bitfield(self) -> Bitfield:
            return Bitfield(meta.num_pieces, full=True)

        def complete(self) -> bool:
            return True

        def read_piece(self, index: int) -> bytes:
            return os.pread(fd, meta.piece_size(index), meta.piece_offset(index))

        def open_piece(self, index: int) -> PieceFile:
            return PieceFile(fd, meta.piece_offset(index), meta.piece_size(index), lambda: None)

        def write_piece(self, index: int, data: Any) -> None:
            raise ReadOnlyArchive("seed")

        def commit(self) -> None:
            pass

    @implementer(IArchive)
    class FileArchive:
        def create(self, namespace: str, metainfo: MetaInfo) -> IPieceStorage:
            raise ReadOnlyArchive("seed")

        def open(self, namespace: str, digest: Digest) -> IPieceStorage | None:
            return FileStorage() if digest == meta.digest else None

    node = _node("0" * 40, FileArchive(), origin=True)
    factory: Any = node.factory()
    tls = _peer_tls(tls_dir, "seeder")
    if tls is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls, False, factory)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    del TCP4ServerEndpoint
    cpu0 = cpu_seconds()
    print(port.getHost().port, flush=True)

    class Quit(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            sys.stderr.write(json.dumps({"cpu_s": cpu_seconds() - cpu0}) + "\n")
            sys.stderr.flush()
            reactor.stop()  # type: ignore[attr-defined]

    stdio.StandardIO(Quit())
    reactor.run()  # type: ignore[attr-defined]


def run_leecher(
    port: int,
    meta_path: str,
    store_dir: str,
    pipeline: int | None = None,
    agent_limits: bool = False,
    *,
    tls_dir: str | None = None,
) -> None:
    """Download from 127.0.0.1:port into a BlobStore; print timing JSON."""
    from twisted.internet import reactor
    from twisted.internet.defer import succeed

    from kraken.core import MetaInfo, PeerID, PeerInfo
    from kraken.protocols.archives import AgentArchive
    from kraken.store import BlobStore

    with open(meta_path, "rb") as f:
        meta = MetaInfo.from_json(f.read())
    store = BlobStore(store_dir, reactor)  # type: ignore[arg-type]
    extra = {} if pipeline is None else {"origin_pipeline_limit": pipeline}
    node = _node("1" * 40, AgentArchive(store), origin=False, **extra)
    seeder = PeerInfo(PeerID("0" * 40), "127.0.0.1", port, origin=True)
    node.announcer = lambda action: succeed(([seeder], 3.0))
    node.tls = _peer_tls(tls_dir, "downloader")
    if agent_limits:
        from kraken.config.loader import parse_config
        from kraken.torrent.bandwidth import BandwidthLimiter

        bw = parse_config("agent", {}).scheduler.bandwidth
        node.bandwidth = BandwidthLimiter.of(reactor.seconds, bw.egress, bw.ingress)  # type: ignore[attr-defined]
    result: dict[str, Any] = {}
    cpu0, t0 = cpu_seconds(), time.perf_counter()

    def done(outcome: Any) -> None:
        result["seconds"] = time.perf_counter() - t0
        result["cpu_s"] = cpu_seconds() - cpu0
        result["ok"] = not hasattr(outcome, "getErrorMessage")
        if not result["ok"]:
            result["error"] = outcome.getErrorMessage()
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: node.download("bench", meta).addBoth(done))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    print(json.dumps(result), flush=True)


@contextlib.contextmanager
def registry(
    blob: str, digest: str, workdir: str
) -> Iterator[Callable[[], tuple[float, float, float]]]:
    """
    docker-registry on 127.0.0.1 holding the blob; yields a function timing one curl fetch.

    The function returns (seconds, curl CPU seconds, registry CPU seconds).
    """
    with docker_registry(workdir) as reference:
        proc = reference.process
        url = put_reference(reference, blob, digest)
        out = os.path.join(workdir, "curl.out")

        def fetch() -> tuple[float, float, float]:
            curl0, server0 = _children_cpu(), process_cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", out, url], check=True)
            seconds = time.perf_counter() - t0
            curl_cpu, server_cpu = _children_cpu() - curl0, process_cpu_seconds(proc.pid) - server0
            if os.path.getsize(out) != os.path.getsize(blob):
                raise SystemExit("registry returned a wrong size")
            os.unlink(out)
            return seconds, curl_cpu, server_cpu

        yield fetch


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; run as the parent, the seeder or the leecher."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument(
        "--piece-length", help="default: the origins' default table's entry for --size"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="best of N, for P2P and the reference alike"
    )
    parser.add_argument(
        "--origin-pipeline", type=int, help="requests outstanding to the seeder (engine default)"
    )
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds of pause before each timed transfer"
    )
    parser.add_argument(
        "--agent-limits",
        action="store_true",
        help="the downloader has the agent's default bandwidth limits (default: none)",
    )
    parser.add_argument(
        "--peer-tls",
        action="store_true",
        help="mutual TLS on the peer connection (tls.peer), certificates of a fresh dev CA",
    )
    parser.add_argument("--role", choices=["parent", "seed", "leech"], default="parent")
    parser.add_argument("--tls-dir")
    parser.add_argument("--blob")
    parser.add_argument("--meta")
    parser.add_argument("--port", type=int)
    parser.add_argument("--store")
    args = parser.parse_args(argv)
    if args.role == "seed":
        run_seeder(args.blob, args.meta, args.tls_dir)
        return
    if args.role == "leech":
        run_leecher(
            args.port,
            args.meta,
            args.store,
            args.origin_pipeline,
            args.agent_limits,
            tls_dir=args.tls_dir,
        )
        return
    leech_args = (
        [] if args.origin_pipeline is None else ["--origin-pipeline", str(args.origin_pipeline)]
    )
    if args.agent_limits:
        leech_args.append("--agent-limits")

    from kraken.core import DEFAULT_PIECE_LENGTHS, MetaInfo

    size = parse_size(args.size)
    if args.piece_length is None:
        piece_length = DEFAULT_PIECE_LENGTHS.for_size(size)
    else:
        piece_length = parse_size(args.piece_length)
    workdir = tempfile.mkdtemp(prefix="kraken-bench-pair-")
    try:
        blob = os.path.join(workdir, "blob")
        make_blob(blob, size)
        meta = MetaInfo.from_path(blob, _table(piece_length))
        meta_path = os.path.join(workdir, "meta.json")
        with open(meta_path, "wb") as f:
            f.write(meta.to_json())
        seed_args: list[str] = []
        if args.peer_tls:
            from kraken.certs import ensure_certificates

            tls_dir = os.path.join(workdir, "tls")
            ensure_certificates(tls_dir, ["seeder", "downloader"])
            seed_args = ["--tls-dir", tls_dir]
            leech_args += seed_args
        runs: list[tuple[float, float, float]] = []
        refs: list[tuple[float, float, float]] = []
        gb = size / 1e9
        with registry(blob, str(meta.digest), workdir) as curl_once:
            # Alternate P2P and curl so both see the same machine (the VM is shared),
            # in ABBA order so neither always runs right after the other freed 1 GiB.
            def p2p() -> None:
                _settle(args.settle)
                runs.append(_p2p_once(blob, meta, meta_path, workdir, leech_args, seed_args))

            def curl() -> None:
                _settle(args.settle)
                refs.append(curl_once())

            for i in range(1, args.runs + 1):
                for step in (p2p, curl) if i % 2 else (curl, p2p):
                    step()
                secs, leech_cpu, seed_cpu = runs[-1]
                ref_secs, curl_cpu, server_cpu = refs[-1]
                print(
                    f"run {i}: p2p {size / MB / secs:.0f} MB/s ({secs:.2f} s), cpu s/GB: "
                    f"seeder {seed_cpu / gb:.2f} (serving only), downloader "
                    f"{leech_cpu / gb:.2f} (download only, incl. sha256); "
                    f"curl {size / MB / ref_secs:.0f} MB/s ({ref_secs:.2f} s), cpu s/GB: "
                    f"registry {server_cpu / gb:.2f}, curl {curl_cpu / gb:.2f}",
                    flush=True,
                )
        seconds, leech_cpu, seed_cpu = min(runs)
        mb_per_s = size / MB / seconds
        print(
            f"p2p: {size / MB:.0f} MB in {seconds:.2f} s = {mb_per_s:.0f} MB/s "
            f"(best of {len(runs)}, piece length {meta.piece_length // 1024} KiB"
            f"{', peer TLS' if args.peer_tls else ''})"
        )
        print(
            f"cpu: seeder {seed_cpu / gb:.2f} s/GB (serving only), "
            f"downloader {leech_cpu / gb:.2f} s/GB (download only, incl. sha256)"
        )
        ref_s = min(r[0] for r in refs)
        ref = size / MB / ref_s
        print(
            f"reference: curl from docker-registry {ref:.0f} MB/s ({ref_s:.2f} s, "
            f"best of {len(refs)})"
        )
        print(
            json.dumps(
                {
                    "mb_per_s": round(mb_per_s, 1),
                    "reference_mb_per_s": round(ref, 1),
                    "ratio": round(mb_per_s / ref, 3),
                    "median_run_ratio": round(
                        statistics.median(r[0] / p[0] for p, r in zip(runs, refs, strict=True)), 3
                    ),
                    "seeder_cpu_s_per_gb": round(seed_cpu / gb, 2),
                    "downloader_cpu_s_per_gb": round(leech_cpu / gb, 2),
                    "peer_tls": args.peer_tls,
                }
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _p2p_once(  # noqa: PLR0917
    blob: str,
    meta: Any,
    meta_path: str,
    workdir: str,
    leech_args: Sequence[str] = (),
    seed_args: Sequence[str] = (),
) -> tuple[float, float, float]:
    """One seeder + one downloader into a fresh store: (seconds, downloader CPU, seeder CPU)."""
    me = [sys.executable, "-m", "bench.pair"]
    store = os.path.join(workdir, "store")
    shutil.rmtree(store, ignore_errors=True)
    seeder = subprocess.Popen(
        [*me, "--role", "seed", "--blob", blob, "--meta", meta_path, *seed_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert seeder.stdout is not None and seeder.stdin is not None
    port = int(seeder.stdout.readline())
    leech = subprocess.run(
        [
            *me,
            "--role",
            "leech",
            "--port",
            str(port),
            "--meta",
            meta_path,
            "--store",
            store,
            *leech_args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    _, err = seeder.communicate(input="", timeout=60)
    seed_cpu = float(json.loads(err.strip().splitlines()[-1])["cpu_s"])
    result = json.loads(leech.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise SystemExit(f"download failed: {result.get('error')}\n{leech.stderr}")
    from kraken.store.layout import StoreLayout

    cached = StoreLayout.at(store).cache(meta.digest).data
    if _sha256(cached) != meta.digest.hex:
        raise SystemExit("downloaded bytes differ")
    shutil.rmtree(store, ignore_errors=True)
    return float(result["seconds"]), float(result["cpu_s"]), seed_cpu


def _table(piece_length: int) -> Any:
    from kraken.core import PieceLengthTable

    return PieceLengthTable(((0, piece_length),))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    main()
