"""
Hosts as Linux network namespaces on one bridge, with ``tc`` bandwidth limits (root only).

Shared by ``bench.swarm`` and ``tests/system``.  A :class:`Network` owns:

- a namespace ``<prefix>-br`` holding the bridge ``br0`` (nothing is added to the root
  namespace: no bridge, no address, no route, no qdisc);
- one namespace ``<prefix>-<host>`` per host, with ``lo`` up and ``eth0``, one end of a veth
  pair whose other end (``v-<host>``) is a port of ``br0``;
- addresses of ``10.77.0.0/16`` only, and only inside those namespaces, so nothing the hosts
  send can leave them;
- shaping: a host's **upload** is an HTB class (with ``fq_codel`` below it where the kernel
  has it, so competing TCP flows share fairly; else a byte FIFO holding about 100 ms of
  traffic) on the egress of its ``eth0``; its **download** is the same on the
  egress of the bridge-side ``v-<host>``, which is what the host receives.  No ``ifb``
  device and no ingress policing are needed (policing drops instead of queueing, which TCP
  handles badly);
- the processes it started (:meth:`spawn`), each in its own session.

:meth:`Network.close` (and :func:`cleanup_prefix`, for leftovers of a killed run) kills the
processes still inside the namespaces (``ip netns pids``), then deletes the namespaces, which
deletes their veths, bridge and qdiscs with them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Final

from attrs import define, field, frozen

__all__ = [
    "SUBNET",
    "Host",
    "NetnsError",
    "Network",
    "cleanup_prefix",
    "missing_requirements",
]

#: Every address handed out lies here, inside the namespaces only.
SUBNET: Final = ipaddress.ip_network("10.77.0.0/16")
#: Bridge-side veth names are ``v-<host>``: interface names have at most 15 characters.
MAX_HOST_NAME: Final = 13


class NetnsError(Exception):
    """An ``ip``/``tc`` command failed (the message holds the command and its stderr)."""


def missing_requirements() -> str | None:
    """Why namespaces cannot be built here (not root, no ``ip``/``tc``), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, e.g. sudo)"
    for program in ("ip", "tc"):
        if not any(
            os.access(os.path.join(d, program), os.X_OK)
            for d in [*os.environ.get("PATH", "/usr/sbin:/sbin").split(os.pathsep), "/usr/sbin"]
        ):
            return f"{program} (iproute2) is not installed"
    return None


def _run(argv: Sequence[str], check: bool = True) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _namespaces() -> list[str]:
    out = _run(["ip", "-j", "netns", "list"], check=False).strip()
    if not out:
        return []
    return [entry["name"] for entry in json.loads(out)]


def _kill_namespace_processes(netns: str, grace: float = 3.0) -> int:
    """TERM, then KILL after ``grace`` seconds, every process inside ``netns``; how many."""
    pids = [int(p) for p in _run(["ip", "netns", "pids", netns], check=False).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def cleanup_prefix(prefix: str) -> list[str]:
    """Remove every namespace named ``<prefix>-*`` and kill its processes; the names removed."""
    removed = []
    for netns in _namespaces():
        if netns.startswith(prefix + "-"):
            _kill_namespace_processes(netns)
            _run(["ip", "netns", "del", netns], check=False)
            removed.append(netns)
    return removed


@frozen
class Host:
    """One simulated host: its name, namespace and address on the bridge."""

    name: str
    netns: str
    address: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *command]


def _rate(bytes_per_second: int) -> str:
    return f"{bytes_per_second * 8}bit"


def _shape(netns: str, dev: str, bytes_per_second: int) -> None:
    """Limit the egress of ``dev`` in ``netns`` to ``bytes_per_second`` (HTB + fq_codel)."""
    tc = ["ip", "netns", "exec", netns, "tc"]
    rate = _rate(bytes_per_second)
    # Burst of about 10 ms of traffic (at least one 64 KiB GSO segment) keeps HTB exact.
    burst = max(64 * 1024, bytes_per_second // 100)
    _run([*tc, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10"])
    _run(
        [*tc, "class", "replace", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
         "rate", rate, "ceil", rate, "burst", str(burst), "cburst", str(burst)]
    )  # fmt: skip
    # fq_codel shares the class fairly between flows and keeps its queue short.  Kernels
    # without it get a byte FIFO of about 100 ms of traffic: HTB's default FIFO holds
    # txqueuelen (1000) packets, which with 64 KiB GSO segments is seconds of delay that
    # small control frames (piece requests) would wait behind.
    fq = [*tc, "qdisc", "replace", "dev", dev, "parent", "1:10", "fq_codel"]
    if subprocess.run(fq, capture_output=True, check=False).returncode == 0:
        return
    limit = max(2 * 64 * 1024, bytes_per_second // 10)
    _run([*tc, "qdisc", "replace", "dev", dev, "parent", "1:10", "bfifo", "limit", str(limit)])


@define
class Network:
    """
    A bridge and hosts as namespaces named ``<prefix>-*``; see the module docstring.

    ``upload``/``download`` are the default per-host limits in bytes per second (None: no
    limit); ``mtu`` the links' MTU (None: the kernel's, 1500).  Use as a context manager, or
    call :meth:`close` in a ``finally``.
    """

    prefix: str
    upload: int | None = 4 * 1024 * 1024
    download: int | None = 4 * 1024 * 1024
    mtu: int | None = None
    hosts: dict[str, Host] = field(factory=dict)
    processes: list[subprocess.Popen[Any]] = field(factory=list)
    _next: int = 10
    _created: bool = False

    @property
    def bridge_ns(self) -> str:
        """The namespace holding the bridge."""
        return f"{self.prefix}-br"

    def create(self) -> None:
        """Create the bridge namespace (after removing leftovers with this prefix)."""
        problem = missing_requirements()
        if problem:
            raise NetnsError(problem)
        cleanup_prefix(self.prefix)
        self._created = True
        _run(["ip", "netns", "add", self.bridge_ns])
        _run(["ip", "-n", self.bridge_ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.bridge_ns, "link", "set", "br0", "up"])

    def add_host(
        self,
        name: str,
        address: str | None = None,
        upload: int | bool | None = True,
        download: int | bool | None = True,
    ) -> Host:
        """
        A new host ``name`` on the bridge at ``address`` (default: the next free one).

        ``upload``/``download``: bytes per second, None for no limit, True for the network's.
        """
        if len(name) > MAX_HOST_NAME or not name.replace("-", "").isalnum():
            raise ValueError(f"host name {name!r}: letters, digits and '-', at most 13")
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        if address is None:
            address = str(SUBNET[self._next])
            self._next += 1
        if ipaddress.ip_address(address) not in SUBNET:
            raise ValueError(f"{address} is outside {SUBNET}")
        host = Host(name, f"{self.prefix}-{name}", address)
        br, outer = self.bridge_ns, f"v-{name}"
        _run(["ip", "netns", "add", host.netns])
        self.hosts[name] = host
        _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        _run(
            ["ip", "-n", br, "link", "add", outer, "type", "veth", "peer", "name", "eth0",
             "netns", host.netns]
        )  # fmt: skip
        if self.mtu is not None:
            _run(["ip", "-n", br, "link", "set", outer, "mtu", str(self.mtu)])
            _run(["ip", "-n", host.netns, "link", "set", "eth0", "mtu", str(self.mtu)])
        _run(["ip", "-n", br, "link", "set", outer, "master", "br0", "up"])
        if self.mtu is not None:
            _run(["ip", "-n", br, "link", "set", "br0", "mtu", str(self.mtu)])
        _run(
            ["ip", "-n", host.netns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0"]
        )
        _run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
        up = self.upload if upload is True else upload
        down = self.download if download is True else download
        if up:
            _shape(host.netns, "eth0", int(up))
        if down:
            _shape(br, outer, int(down))
        return host

    def spawn(
        self,
        host: Host,
        command: Sequence[str],
        *,
        log: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
    ) -> subprocess.Popen[Any]:
        """
        Start ``command`` inside ``host`` (its own session); output to ``log`` if given.

        ``ip netns exec`` execs the command, so the Popen's pid is the command's own.
        """
        out: Any = stdout
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(
                host.argv(command),
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT if log is not None else None,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if log is not None:
                out.close()
        self.processes.append(process)
        return process

    def run(
        self,
        host: Host,
        command: Sequence[str],
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run ``command`` inside ``host`` to completion; its stdout (NetnsError on failure)."""
        result = subprocess.run(
            host.argv(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
        )
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(command)} in {host.name}: {result.stderr.strip()}")
        return result.stdout

    def tx_bytes(self, host: Host) -> int:
        """Bytes ``host`` has sent on its ``eth0`` so far."""
        out = _run(["ip", "-n", host.netns, "-s", "-j", "link", "show", "dev", "eth0"])
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])

    def rx_bytes(self, host: Host) -> int:
        """Bytes ``host`` has received on its ``eth0`` so far."""
        out = _run(["ip", "-n", host.netns, "-s", "-j", "link", "show", "dev", "eth0"])
        return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])

    @staticmethod
    def stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 5) -> None:
        """Signal ``process`` (its session), wait ``grace`` seconds, then KILL it."""
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def attach_machine(self, name: str = "kraken-ui") -> str:
        """Link this machine's own namespace to the bridge (unshaped); its address there.

        For looking at the hosts from outside, e.g. a browser on the tracker's swarm page.
        The veth's other end is in the bridge namespace, so the pair goes away with it.
        """
        address = str(SUBNET[-2])
        _run(["ip", "link", "del", name], check=False)
        _run(
            ["ip", "link", "add", name, "type", "veth", "peer", "name", "v-machine",
             "netns", self.bridge_ns]
        )  # fmt: skip
        _run(["ip", "-n", self.bridge_ns, "link", "set", "v-machine", "master", "br0", "up"])
        _run(["ip", "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", name])
        _run(["ip", "link", "set", name, "up"])
        return address

    def close(self) -> None:
        """Stop every process started here, then remove every namespace of this prefix."""
        for process in self.processes:
            with contextlib.suppress(Exception):
                self.stop(process)
        self.processes.clear()
        if self._created:
            cleanup_prefix(self.prefix)
        self.hosts.clear()
        self._created = False

    def __enter__(self) -> Network:
        """Create the network."""
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        """Tear everything down."""
        self.close()
