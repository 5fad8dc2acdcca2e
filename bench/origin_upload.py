"""
Chunked upload into an origin versus ``skopeo copy`` into the Debian docker-registry.

``python -m bench.origin_upload --size 1GiB [--rounds 3]``

The origin runs as its own process (``twistd -n kraken-origin`` with a generated
config: a temp ``data_dir``, free 127.0.0.1 ports, a filesystem backend, no other
ring members).  The reference is ``/usr/bin/docker-registry`` (filesystem storage,
plain HTTP on a free 127.0.0.1 port).  Neither start-up is timed.

Each round makes a fresh one-layer OCI image layout by hand: the layer is a real
uncompressed tar (``application/vnd.oci.image.layer.v1.tar``) of one file of random
bytes, ``--size`` bytes in all; then, alternating which goes first (ABBA), each after
``os.sync()`` and a pause:

- origin: a child process uploads the layer blob with :class:`OriginClusterClient` /
  :class:`OriginClient` in 32 MiB chunks, exactly ``kraken blob push`` minus its
  sha256 of the file (the digest is known, as it is in the OCI layout skopeo reads).
  Timed inside the child from the locations request to the commit's answer, so
  interpreter start-up is excluded; the origin's CPU seconds over the same span come
  from ``/proc``.  The write-back to the backend that follows the commit is waited
  for, untimed, before anything else runs.
- reference: ``skopeo copy --preserve-digests --dest-tls-verify=false
  oci:<layout>:bench docker://127.0.0.1:<port>/bench/blob:r<n>``, timed start to end
  (skopeo's own start-up, its HTTPS probe and the config and manifest uploads are
  included: nothing is subtracted).  ``--preserve-digests`` makes skopeo upload the
  layer as it is: without it skopeo gzips an uncompressed layer on the way to a
  docker registry (``--dest-compress`` only applies to the ``dir:`` transport).

After each round's uploads, the blob is read back from each side with ``curl -o
/dev/null`` (origin: ``GET /namespace/bench/blobs/<digest>``, served with ``os.sendfile``;
reference: the registry's blob GET), ABBA, timed with the server's CPU from ``/proc``.

Each side's best round counts (``--rounds``, default 3); every round is printed, with
the median per-round ratio.  The last line is JSON with ``mb_per_s``,
``reference_mb_per_s`` and ``ratio`` (MB = 10^6 bytes), and for the read-back ``get_mb_per_s``,
``get_reference_mb_per_s``, ``get_ratio`` and ``origin_get_cpu_s_per_gb``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from typing import Any, cast

import yaml

from bench.common import parse_size, process_cpu_seconds
from bench.pair import MB, _settle, cpu_seconds, free_port
from bench.registry import docker_registry, wait_for

NAMESPACE = "bench"
#: The checkout, for the origin's plugin lookup (it runs in its work directory).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHONPATH = os.environ.get("PYTHONPATH", "")
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"


def layer_tar(path: str, size: int, seed: int) -> tuple[str, int]:
    """
    An uncompressed tar of one file of random bytes, ``size`` bytes long if it can be.

    A header block, the data padded to 512 bytes, two zero blocks: the data is
    ``size - 1536`` bytes when ``size`` is a multiple of 512 (else the tar is a little
    longer).  Returns (sha256 hex, length).
    """
    payload = size - 1536 if size % 512 == 0 and size >= 2048 else size
    info = tarfile.TarInfo("blob")
    info.size, info.mode, info.mtime = payload, 0o644, 0
    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:

        def put(data: bytes) -> None:
            h.update(data)
            f.write(data)

        put(info.tobuf(format=tarfile.USTAR_FORMAT))
        left = payload
        while left:
            n = min(left, 8 * 1024 * 1024)
            put(rng.randbytes(n))
            left -= n
        put(b"\0" * (-payload % 512 + 1024))
        length = f.tell()
    return h.hexdigest(), length


def _put_blob(layout: str, data: bytes) -> dict[str, Any]:
    hexdigest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", hexdigest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{hexdigest}", "size": len(data)}


def oci_layout(layout: str, size: int, seed: int) -> tuple[str, str, int]:
    """A one-layer OCI image layout tagged ``bench``; (layer path, layer digest, length)."""
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    tmp = os.path.join(blobs, "layer.tmp")
    hexdigest, length = layer_tar(tmp, size, seed)
    layer = os.path.join(blobs, hexdigest)
    os.rename(tmp, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hexdigest}"]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_put_blob(layout, json.dumps(config).encode()),
        },
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": f"sha256:{hexdigest}", "size": length}
        ],
    }
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_put_blob(layout, json.dumps(manifest).encode()),
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    return layer, f"sha256:{hexdigest}", length


def push(host: str, path: str, digest: str) -> None:
    """Child process: upload ``path`` to the origin at ``host``; print timing JSON."""
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react
    from twisted.internet.threads import deferToThread

    from kraken.clients.origin import (
        DEFAULT_CHUNK_SIZE,
        OriginClient,
        OriginClusterClient,
        file_chunks,
    )
    from kraken.core import Digest
    from kraken.http.client import HTTPClientFactory
    from kraken.io.runner import BlockingRunner

    def main(reactor: Any) -> Any:
        async def go() -> None:
            http = HTTPClientFactory(reactor)
            client = OriginClient(http.client(), reactor, chunk_size=DEFAULT_CHUNK_SIZE)
            cluster = OriginClusterClient(client, lambda: [host])
            size = os.path.getsize(path)  # noqa: ASYNC240 - before the timed part
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            stored = await cluster.upload_blob(
                NAMESPACE,
                Digest.parse(digest),
                size,
                file_chunks(path, cast(BlockingRunner, deferToThread)),
            )
            seconds = time.perf_counter() - t0
            print(
                json.dumps({"seconds": seconds, "cpu_s": cpu_seconds() - cpu0, "stored": stored}),
                flush=True,
            )
            await http.close()

        return ensureDeferred(go())

    react(main)


class Origin:
    """A ``twistd -n kraken-origin`` process on free ports under ``workdir/origin``."""

    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = {
            "data_dir": os.path.join(workdir, "origin"),
            "server": {"listen": f"tcp:{self.port}:interface=127.0.0.1"},
            "peer": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
            "cluster": {"static": [self.host]},
            "backends": [
                {"namespace": ".*", "backend": {"fs": {"root": os.path.join(workdir, "backend")}}}
            ],
        }
        path = os.path.join(workdir, "origin.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        twistd = shutil.which("twistd") or "twistd"
        self.log = os.path.join(workdir, "origin.log")
        self.process = subprocess.Popen(
            [
                twistd,
                "-n",
                "--pidfile=",
                f"--logfile={self.log}",
                "kraken-origin",
                "--config",
                path,
            ],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, PYTHONPATH]))},
        )
        wait_for(f"http://{self.host}/health")

    def cpu(self) -> float:
        """CPU seconds the origin process has used so far."""
        return process_cpu_seconds(self.process.pid)

    def writeback_pending(self) -> float:
        """Write-back tasks not done yet (from ``/metrics``)."""
        with urllib.request.urlopen(f"http://{self.host}/metrics", timeout=5) as r:
            text = r.read().decode()
        match = re.search(r"^kraken_origin_writeback_pending_tasks (\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    def wait_writeback(self, timeout: float = 600.0) -> float:
        """Seconds until every write-back task is done."""
        t0 = time.perf_counter()
        while self.writeback_pending() > 0:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"write-back still pending after {timeout} s")
            time.sleep(0.1)
        return time.perf_counter() - t0

    def stop(self) -> None:
        """Terminate and wait."""
        self.process.terminate()
        self.process.wait()


def origin_once(origin: Origin, layer: str, digest: str) -> tuple[float, float, float]:
    """One timed upload: (seconds, origin CPU seconds, client CPU seconds)."""
    server0 = origin.cpu()
    out = subprocess.run(
        [sys.executable, "-m", "bench.origin_upload", "--push", origin.host, layer, digest],
        check=True,
        capture_output=True,
        text=True,
    )
    server_cpu = origin.cpu() - server0
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["stored"]:
        raise SystemExit(f"the origin already had {digest}: rounds must use fresh blobs")
    return float(result["seconds"]), server_cpu, float(result["cpu_s"])


def skopeo_once(skopeo: str, layout: str, registry: Any, tag: str) -> tuple[float, float, float]:
    """One timed ``skopeo copy``: (seconds, registry CPU seconds, skopeo CPU seconds)."""
    import resource

    def children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    server0, child0 = process_cpu_seconds(registry.process.pid), children()
    t0 = time.perf_counter()
    subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:bench",
            f"docker://{registry.address}/bench/blob:{tag}",
        ],
        check=True,
    )
    seconds = time.perf_counter() - t0
    return seconds, process_cpu_seconds(registry.process.pid) - server0, children() - child0


def get_once(url: str, server_pid: int) -> tuple[float, float]:
    """One timed ``curl -o /dev/null`` of ``url``: (seconds, the server's CPU seconds)."""
    curl = shutil.which("curl") or "curl"
    server0 = process_cpu_seconds(server_pid)
    t0 = time.perf_counter()
    subprocess.run([curl, "-sSf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - t0, process_cpu_seconds(server_pid) - server0


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the JSON line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=3, help="best of N for both sides")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds of pause before each timed transfer"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--push", nargs=3, metavar=("HOST", "FILE", "DIGEST"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.push:
        push(*args.push)
        return

    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SystemExit("skopeo not found (apt install skopeo)")
    size = parse_size(args.size)
    workdir = tempfile.mkdtemp(prefix="kraken-bench-upload-")
    origin: Origin | None = None
    ours: list[tuple[float, float, float]] = []
    refs: list[tuple[float, float, float]] = []
    gets: list[tuple[float, float]] = []
    ref_gets: list[tuple[float, float]] = []
    try:
        origin = Origin(workdir)
        with docker_registry(workdir) as registry:
            for i in range(1, args.rounds + 1):
                layout = os.path.join(workdir, f"image-{i}")
                layer, digest, length = oci_layout(layout, size, seed=i)
                gb = length / 1e9
                wb = 0.0
                # ABBA: neither side always runs right after the other wrote 1 GiB.
                for side in ("origin", "skopeo") if i % 2 else ("skopeo", "origin"):
                    _settle(args.settle)
                    if side == "origin":
                        ours.append(origin_once(origin, layer, digest))
                        wb = origin.wait_writeback()
                    else:
                        refs.append(skopeo_once(skopeo, layout, registry, f"r{i}"))
                # Then the blob back out of each (GET, curl to /dev/null), ABBA as well.
                origin_url = f"http://{origin.host}/namespace/{NAMESPACE}/blobs/{digest}"
                ref_url = f"http://{registry.address}/v2/bench/blob/blobs/{digest}"
                for side in ("origin", "registry") if i % 2 else ("registry", "origin"):
                    _settle(args.settle)
                    if side == "origin":
                        gets.append(get_once(origin_url, origin.process.pid))
                    else:
                        ref_gets.append(get_once(ref_url, registry.process.pid))
                secs, server_cpu, client_cpu = ours[-1]
                ref_secs, reg_cpu, skopeo_cpu = refs[-1]
                print(
                    f"round {i}: origin {length / MB / secs:.0f} MB/s ({secs:.2f} s), cpu s/GB: "
                    f"origin {server_cpu / gb:.2f}, client {client_cpu / gb:.2f} "
                    f"(write-back after: {wb:.1f} s); "
                    f"skopeo {length / MB / ref_secs:.0f} MB/s ({ref_secs:.2f} s), cpu s/GB: "
                    f"registry {reg_cpu / gb:.2f}, skopeo {skopeo_cpu / gb:.2f}; "
                    f"GET: origin {length / MB / gets[-1][0]:.0f} MB/s "
                    f"(cpu {gets[-1][1] / gb:.2f} s/GB), "
                    f"registry {length / MB / ref_gets[-1][0]:.0f} MB/s "
                    f"(cpu {ref_gets[-1][1] / gb:.2f} s/GB)",
                    flush=True,
                )
                shutil.rmtree(layout, ignore_errors=True)
        mb = length / MB
        best, best_ref = min(ours), min(refs)
        rate, ref_rate = mb / best[0], mb / best_ref[0]
        print(
            f"origin upload: {mb:.0f} MB in {best[0]:.2f} s = {rate:.0f} MB/s (best of "
            f"{len(ours)}, 32 MiB chunks); origin cpu {best[1] / gb:.2f} s/GB, median "
            f"{statistics.median(o[1] for o in ours) / gb:.2f}"
        )
        print(
            f"reference: skopeo copy into docker-registry {ref_rate:.0f} MB/s "
            f"({best_ref[0]:.2f} s, best of {len(refs)})"
        )
        print(
            json.dumps(
                {
                    "size": length,
                    "rounds": len(ours),
                    "mb_per_s": round(rate, 1),
                    "reference_mb_per_s": round(ref_rate, 1),
                    "ratio": round(rate / ref_rate, 3),
                    "median_round_ratio": round(
                        statistics.median(r[0] / o[0] for o, r in zip(ours, refs, strict=True)),
                        3,
                    ),
                    "origin_cpu_s_per_gb": round(statistics.median(o[1] for o in ours) / gb, 2),
                    "get_mb_per_s": round(mb / min(gets)[0], 1),
                    "get_reference_mb_per_s": round(mb / min(ref_gets)[0], 1),
                    "get_ratio": round(min(ref_gets)[0] / min(gets)[0], 3),
                    "origin_get_cpu_s_per_gb": round(statistics.median(g[1] for g in gets) / gb, 3),
                }
            )
        )
    finally:
        if origin is not None:
            origin.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
