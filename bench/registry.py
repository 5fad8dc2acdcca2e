"""
The Debian ``docker-registry`` as a benchmark reference: started on a free 127.0.0.1 port.

Filesystem storage under a work directory, logs at ``error``, plain HTTP.  Shared by
the benchmarks that compare a Kraken daemon with the registry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import attrs


@attrs.frozen
class DockerRegistry:
    """A running ``docker-registry``: its process and base URL (``http://127.0.0.1:port``)."""

    process: subprocess.Popen[bytes]
    base: str

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as skopeo's ``docker://`` references want it."""
        return self.base.removeprefix("http://")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, attempts: int = 200) -> None:
    """Poll ``url`` every 50 ms until it answers; exit the benchmark if it never does."""
    for _ in range(attempts):
        try:
            urllib.request.urlopen(url, timeout=1).read()  # noqa: S310
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


@contextlib.contextmanager
def docker_registry(workdir: str) -> Iterator[DockerRegistry]:
    """A ``docker-registry`` storing under ``workdir/registry``; stopped on exit."""
    program = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not os.path.exists(program):
        raise SystemExit("docker-registry not found (apt install docker-registry)")
    port = free_port()
    config = os.path.join(workdir, "registry.yml")
    with open(config, "w") as f:
        f.write(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {workdir}/registry}}}}\n"
            f"http: {{addr: '127.0.0.1:{port}'}}\n"
        )
    proc = subprocess.Popen(
        [program, "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/v2/")
        yield DockerRegistry(proc, base)
    finally:
        proc.terminate()
        proc.wait()


def put_reference(reference: DockerRegistry, blob: str, digest: str) -> str:
    """Upload the blob into the docker-registry; its blob URL."""
    base = reference.base
    req = urllib.request.Request(base + "/v2/bench/blob/blobs/uploads/", method="POST")  # noqa: S310
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    subprocess.run(
        [
            "curl",
            "-sf",
            "-T",
            blob,
            "-H",
            "Content-Type: application/octet-stream",
            f"{location}{sep}digest={digest}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return f"{base}/v2/bench/blob/blobs/{digest}"
