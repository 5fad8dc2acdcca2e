"""
Outside servers for the backend tests: moto's S3 server and the Debian docker-registry.

Each server runs as a subprocess on 127.0.0.1 and a free port.  Starting one costs a second or
two, and trial has no ``setUpClass``, so each kind is started once per test process, on first
use, and stopped when the process exits (``atexit``).  Tests keep out of each other's way by
using their own bucket or repository.

Readiness is the server's own "listening" log line, read from its output with a deadline; the
rest of its output is drained by a thread into a bounded tail that failures can show.
"""

from __future__ import annotations

import atexit
import collections
import importlib.util
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from tests.external import missing, require_program

#: Seconds a server may take to say it is listening.
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """A subprocess that is ready once a line of its output matches a pattern."""

    def __init__(
        self,
        argv: Sequence[str],
        ready: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        atexit.register(self.stop)
        try:
            self._wait_for(re.compile(ready))
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._drain, name=f"drain {self.argv[0]}", daemon=True).start()

    def _wait_for(self, pattern: re.Pattern[str]) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(
                        f"{self.argv} not ready in {START_TIMEOUT}s:\n{self.output()}"
                    )
                if not selector.select(remaining):
                    continue
                data = os.read(self.process.stdout.fileno(), 65536)
                if not data:
                    self.process.wait()
                    raise RuntimeError(
                        f"{self.argv} exited with {self.process.returncode}:\n{self.output()}"
                    )
                buffered += data
                *lines, rest = buffered.split(b"\n")
                buffered = rest
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    self.tail.append(text)
                    if pattern.search(text):
                        return

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.tail.append(line.decode("utf-8", "replace").rstrip("\n"))

    def output(self) -> str:
        """The last lines the server printed."""
        return "\n".join(self.tail)

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class MotoServer:
    """moto in server mode: an S3 endpoint at :attr:`endpoint_url`."""

    def __init__(self) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            missing("moto[server] is not installed")
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        self.process = ServerProcess(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            ready=r"Running on http://127\.0\.0\.1:\d+",
            env=env,
        )


class DockerRegistry:
    """
    The Debian docker-registry (distribution) with filesystem storage in a temp dir.

    ``htpasswd`` (the file's content) turns on basic auth; ``auth`` is any other ``auth:``
    section of the registry's YAML config, verbatim.
    """

    def __init__(self, htpasswd: str | None = None, auth: str = "") -> None:
        program = require_program("docker-registry")
        self.directory = tempfile.mkdtemp(prefix="kraken-registry-")
        atexit.register(shutil.rmtree, self.directory, True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        if htpasswd is not None:
            path = os.path.join(self.directory, "htpasswd")
            with open(path, "w") as f:
                f.write(htpasswd)
            auth = f"auth:\n  htpasswd:\n    realm: kraken-test\n    path: {path}\n"
        config = os.path.join(self.directory, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n  level: info\n"
                "storage:\n"
                f"  filesystem:\n    rootdirectory: {os.path.join(self.directory, 'data')}\n"
                "  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.address}\n  secret: kraken-test-secret\n" + auth
            )
        self.process = ServerProcess(
            [program, "serve", config], ready=r"listening on 127\.0\.0\.1:\d+"
        )


_motos: dict[None, MotoServer] = {}
_registries: dict[str | None, DockerRegistry] = {}


def moto_server() -> MotoServer:
    """The process's moto server, started on first use."""
    if None not in _motos:
        _motos[None] = MotoServer()
    return _motos[None]


def docker_registry(htpasswd: str | None = None) -> DockerRegistry:
    """The process's docker-registry (one per distinct ``htpasswd``), started on first use."""
    if htpasswd not in _registries:
        _registries[htpasswd] = DockerRegistry(htpasswd)
    return _registries[htpasswd]
