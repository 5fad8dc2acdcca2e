"""
A real ``containerd`` for the end-to-end tests, pulling through a Kraken agent as its mirror.

:func:`start_containerd` runs one ``containerd`` with its own root, state, sockets and
``config.toml`` under a short directory in ``/tmp`` (Unix socket paths must stay under 108
bytes, and trial's temporary directories are too deep), and writes
``certs.d/_default/hosts.toml`` naming the agent's registry as the mirror of every registry,
as docs/containerd.md tells operators to.  The returned :class:`Containerd` pulls with
``ctr images pull --hosts-dir ... --snapshotter native`` (no overlayfs needed) and counts the
committed snapshots of the unpacked layers.  Every process and directory is cleaned up by the
test case, also when the test fails.
"""

# Tiny config files written by the test itself, in the test's own coroutines.
# ruff: noqa: ASYNC230

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.external import require_program
from tests.system.clusters import until

__all__ = ["Containerd", "ProcessExit", "require_containerd", "start_containerd", "stop_process"]

#: The snapshotter every pull uses: plain copies, so no overlayfs or root is needed.
SNAPSHOTTER = "native"


class ProcessExit(ProcessProtocol):
    """Drops a process's output (or keeps it, ``keep=True``) and fires :attr:`ended` at exit."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.output: list[bytes] = []
        self.ended: Deferred[None] = Deferred()
        self.exited = False

    def outReceived(self, data: bytes) -> None:
        """Keep stdout if asked to."""
        if self.keep:
            self.output.append(data)

    def errReceived(self, data: bytes) -> None:
        """Keep stderr if asked to."""
        if self.keep:
            self.output.append(data)

    def processEnded(self, reason: Failure) -> None:
        """The process is gone: fire :attr:`ended`."""
        self.exited = True
        self.ended.callback(None)

    def tail(self, size: int = 4000) -> str:
        """The last ``size`` characters of the kept output."""
        return b"".join(self.output)[-size:].decode(errors="replace")


async def stop_process(
    testcase: TestCase, process: Any, protocol: ProcessExit, what: str, grace: float = 10
) -> None:
    """SIGTERM ``process``, SIGKILL it if it runs ``grace`` s later; return once it is gone."""
    for signal, wait in (("TERM", grace), ("KILL", 10.0)):
        if protocol.exited:
            return
        with contextlib.suppress(ProcessExitedAlready):
            process.signalProcess(signal)
        for _ in range(int(wait / 0.05)):
            if protocol.exited:
                return
            await deferLater(reactor, 0.05)
    testcase.fail(f"{what} (pid {process.pid}) survived SIGKILL")


@frozen
class Containerd:
    """A running containerd: its ``ctr``, socket, temporary directory and ``--hosts-dir``."""

    ctr: str
    base: str
    socket: str
    hosts_dir: str

    async def ctr_run(self, testcase: TestCase, namespace: str, *args: str) -> str:
        """``ctr --address <socket> --namespace <namespace> <args>``; stdout (fails unless 0)."""
        out, err, code = await getProcessOutputAndValue(
            self.ctr,
            ["--address", self.socket, "--namespace", namespace, *args],
            env=dict(os.environ),
        )
        testcase.assertEqual(code, 0, f"ctr {' '.join(args)}: {(out + err).decode()}")
        return bytes(out).decode()

    async def pull(self, testcase: TestCase, namespace: str, ref: str) -> str:
        """``ctr images pull --hosts-dir ... --snapshotter native <ref>``: fetch and unpack."""
        return await self.ctr_run(
            testcase,
            namespace,
            "images",
            "pull",
            "--hosts-dir",
            self.hosts_dir,
            "--snapshotter",
            SNAPSHOTTER,
            ref,
        )

    async def committed_snapshots(self, testcase: TestCase, namespace: str) -> int:
        """How many committed snapshots (unpacked layers) ``namespace`` holds."""
        listing = await self.ctr_run(
            testcase, namespace, "snapshots", "--snapshotter", SNAPSHOTTER, "ls"
        )
        return sum(1 for line in listing.splitlines() if line.split()[-1:] == ["Committed"])


def require_containerd() -> tuple[str, str]:
    """The paths of ``containerd`` and ``ctr`` (skip, or fail under CI, without them)."""
    return require_program("containerd"), require_program("ctr")


async def start_containerd(testcase: TestCase, mirror: str) -> Containerd:
    """
    Start a containerd whose ``_default`` hosts.toml mirrors every registry to ``mirror``.

    ``mirror`` is an agent's registry address (``127.0.0.1:<port>``), spoken to over plain
    HTTP.  Returns once containerd's socket exists; the test case stops containerd (SIGTERM,
    then SIGKILL) and removes the directory when it ends.
    """
    containerd, ctr = require_containerd()
    base = tempfile.mkdtemp(prefix="kraken-ctd-", dir="/tmp")
    testcase.addCleanup(shutil.rmtree, base, True)
    sock = os.path.join(base, "containerd.sock")
    config = os.path.join(base, "config.toml")
    with open(config, "w") as f:
        f.write(
            f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
            f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{sock}"\n'
            f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
            f'[debug]\n  address = "{sock}.debug"\n'
        )
    hosts_dir = os.path.join(base, "certs.d")
    os.makedirs(os.path.join(hosts_dir, "_default"))
    with open(os.path.join(hosts_dir, "_default", "hosts.toml"), "w") as f:
        f.write(f'[host."http://{mirror}"]\n  capabilities = ["pull", "resolve"]\n')
    protocol = ProcessExit(keep=True)
    process = reactor.spawnProcess(
        protocol, containerd, [containerd, "--config", config], env=dict(os.environ)
    )
    # Cleanups run last-added first: containerd stops before its directory goes.
    testcase.addCleanup(
        lambda: ensureDeferred(stop_process(testcase, process, protocol, "containerd"))
    )

    def up() -> bool:
        if protocol.exited:
            testcase.fail(f"containerd exited at start:\n{protocol.tail()}")
        return os.path.exists(sock)

    await until(testcase, up, "containerd's socket", limit=20)
    return Containerd(ctr=ctr, base=base, socket=sock, hosts_dir=hosts_dir)
