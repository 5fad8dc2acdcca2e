"""
Multi-host swarm benchmark: hosts as network namespaces with ``tc`` limits (root only).

``python -m bench.swarm [--agents 20] [--origins 2] [--size 64MiB] [--rate 4MiB]``

Builds one host per daemon with :mod:`bench.netns` (a bridge in its own namespace; every
host's upload and download limited to ``--rate`` per second, see that module for how), and
runs each daemon as its own process (``python -m twisted kraken-<daemon> --config FILE``
inside the host's namespace): 1 tracker, ``--origins`` origins, ``--agents`` agents.  It
uploads a random blob of ``--size`` bytes to the origins and waits until every origin has it,
then every agent fetches it through its agent API at the same moment (a client inside each
agent's namespace, over its ``lo``, so that serving the bytes locally uses none of the host's
shaped link).  It reports:

- p50, p99 and max completion time as ratios to the Kumar-Ross lower bound
  ``max(F/u_seed, F/d, N*F/(u_seed + N*u))``, ``u_seed`` the total origin upload;
- the bytes the origins sent during the download (``eth0`` counters, so TCP/IP headers
  included: about 3 % over the payload) divided by the blob size;
- CPU seconds (user + system, ``/proc/<pid>/stat``) of every daemon during the download,
  per GB (1e9 bytes) delivered to agents;
- the same run's reference: before the download, the agent hosts exchange bulk TCP both ways
  with their neighbours (``swarm_client mesh``), which measures the payload rate the shaped
  links really carry (TCP/IP headers, retransmissions, sharing between flows); p50 and p99
  are also given as ratios to the bound at that rate (``tcp_p50_ratio``, ``tcp_p99_ratio``;
  ``--no-tcp-reference`` skips it);
- the run's timeline (:mod:`bench.trace`): what the agents received together and how busy
  the machine's CPU was, per second (printed) and per quarter second (in the JSON);
- JSON of the run in ``--out`` and a line of JSON ``{p50_ratio, p99_ratio, max_ratio,
  origin_egress_ratio, cpu_s_per_gb, tcp_p50_ratio, tcp_p99_ratio}``, printed before the plot;
- a CDF plot of completion times (PNG) in ``--out``: the last line says where, or, without
  matplotlib, that it was not drawn (the figures above are all there).

``--ui`` links this machine to the swarm's bridge and prints the tracker's live swarm page
(``http://10.77.0.10:15003/ui/``) before the download, then keeps the swarm up after it until
Enter is pressed: open the page in a browser to watch the blob spread.

Everything it made (namespaces, bridge, veths, qdiscs, processes) is removed at the end, also
on Ctrl-C, SIGTERM or an error; ``--cleanup`` removes leftovers of a killed run by name prefix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import yaml
from attrs import define, field

from bench.common import parse_size, process_cpu_seconds, tcp_segments
from bench.netns import Host, Network, missing_requirements
from bench.trace import Trace, per_second, summarize

__all__ = [
    "Swarm",
    "SwarmOptions",
    "add_engine_settings",
    "add_swarm_shape",
    "kumar_ross_bound",
    "main",
    "parse_size",
]

PREFIX: Final = "kbswarm"
REPO: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE: Final = "bench/swarm"
TRACKER_PORT: Final = 15003
ORIGIN_PORT: Final = 15002
ORIGIN_PEER_PORT: Final = 15001
AGENT_SERVER_PORT: Final = 16002
AGENT_PEER_PORT: Final = 16001
#: Port of the bulk-TCP reference (``swarm_client mesh``), unused by the daemons.
MESH_PORT: Final = 17000
#: Peers each host dials in the TCP reference (it is dialled by as many): about the
#: agents' connection count per torrent.
MESH_DIALS: Final = 4


def kumar_ross_bound(size: int, n: int, u_seed: float, u_agent: float, d_agent: float) -> float:
    """The least time (s) to give ``n`` agents ``size`` bytes: Kumar and Ross's bound."""
    return max(size / u_seed, size / d_agent, n * size / (u_seed + n * u_agent))


@define
class SwarmOptions:
    """Shape of a swarm: counts, rates, blob layout and engine settings."""

    agents: int = 20
    origins: int = 2
    upload: int | None = 4 * 1024**2
    download: int | None = 4 * 1024**2
    piece_length: int | None = None
    announce_interval: float | None = None
    #: Extra agent ``scheduler:`` keys (e.g. ``{"pipeline_limit": 5}``).
    agent_scheduler: dict[str, Any] = field(factory=dict)
    #: Extra origin ``scheduler:`` keys.
    origin_scheduler: dict[str, Any] = field(factory=dict)


@define
class Daemon:
    """A daemon process on a host, with what is needed to restart it."""

    host: Host
    command: list[str]
    log: str
    process: subprocess.Popen[Any] | None = None


class Swarm:
    """A tracker, origins and agents as processes in namespaces of ``network``."""

    def __init__(self, network: Network, workdir: str, options: SwarmOptions) -> None:
        self.network = network
        self.workdir = workdir
        self.options = options
        self.tracker: Daemon | None = None
        self.origins: list[Daemon] = []
        self.agents: list[Daemon] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }

    # -- building ------------------------------------------------------------

    def _write(self, name: str, config: dict[str, Any]) -> str:
        path = os.path.join(self.workdir, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    def _daemon(self, host: Host, plugin: str, config: str, prefix: Sequence[str] = ()) -> Daemon:
        command = list(prefix) or [sys.executable, "-m", "twisted"]
        command += ["--log-format", "text", plugin, "--config", config]
        return Daemon(host, command, os.path.join(self.workdir, f"{host.name}.log"))

    def start_daemon(self, daemon: Daemon) -> None:
        """(Re)start ``daemon``'s process."""
        daemon.process = self.network.spawn(
            daemon.host, daemon.command, log=daemon.log, env=self.env, cwd=self.workdir
        )

    def build(self, agent_prefixes: dict[int, Sequence[str]] | None = None) -> None:
        """Hosts, configs and processes of the tracker, origins and agents (not waited for)."""
        net, opts = self.network, self.options
        agent_prefixes = agent_prefixes or {}
        tracker_host = net.add_host("tracker", "10.77.0.10")
        origin_hosts = [net.add_host(f"o{i}", f"10.77.0.{20 + i}") for i in range(opts.origins)]
        agent_hosts = [
            net.add_host(f"a{i}", f"10.77.{1 + i // 250}.{1 + i % 250}") for i in range(opts.agents)
        ]
        members = [f"{h.address}:{ORIGIN_PORT}" for h in origin_hosts]
        tracker_config: dict[str, Any] = {
            "data_dir": os.path.join(self.workdir, "tracker"),
            "server": {"listen": f"tcp:{TRACKER_PORT}:interface={tracker_host.address}"},
            "origin": {"hosts": {"static": members}, "healthcheck": {"interval": 1.0}},
        }
        if opts.announce_interval is not None:
            tracker_config["announce_interval"] = opts.announce_interval
        self.tracker = self._daemon(
            tracker_host, "kraken-tracker", self._write("tracker", tracker_config)
        )
        for i, host in enumerate(origin_hosts):
            config: dict[str, Any] = {
                "data_dir": os.path.join(self.workdir, host.name),
                "server": {"listen": f"tcp:{ORIGIN_PORT}:interface={host.address}"},
                "peer": {"listen": f"tcp:{ORIGIN_PEER_PORT}:interface={host.address}"},
                "cluster": {"static": members},
                "healthcheck": {"interval": 1.0, "timeout": 1.0},
                "backends": [
                    {
                        "namespace": ".*",
                        "backend": {"fs": {"root": os.path.join(self.workdir, f"backend-{i}")}},
                    }
                ],
            }
            if opts.piece_length:
                config["metainfo"] = {"piece_lengths": {0: opts.piece_length}}
            if opts.origin_scheduler:
                config["scheduler"] = dict(opts.origin_scheduler)
            self.origins.append(self._daemon(host, "kraken-origin", self._write(host.name, config)))
        for i, host in enumerate(agent_hosts):
            config = {
                "data_dir": os.path.join(self.workdir, host.name),
                # Every interface of its namespace: the local client uses 127.0.0.1 (lo,
                # unshaped); readiness could be checked from elsewhere on the bridge.
                "server": {"listen": f"tcp:{AGENT_SERVER_PORT}"},
                "registry": {"listen": "tcp:16000:interface=127.0.0.1"},
                "peer": {"listen": f"tcp:{AGENT_PEER_PORT}:interface={host.address}"},
                "tracker": {"hosts": {"static": [f"{tracker_host.address}:{TRACKER_PORT}"]}},
                "metainfo_poll": {"initial": 0.1, "maximum": 1.0},
            }
            if opts.agent_scheduler:
                config["scheduler"] = dict(opts.agent_scheduler)
            self.agents.append(
                self._daemon(
                    host, "kraken-agent", self._write(host.name, config), agent_prefixes.get(i, ())
                )
            )
        for daemon in self.daemons():
            self.start_daemon(daemon)

    def daemons(self) -> list[Daemon]:
        """Every daemon: tracker, origins, agents."""
        return [d for d in [self.tracker, *self.origins, *self.agents] if d is not None]

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the origins are healthy and the tracker is ready (agents: at fetch)."""
        assert self.tracker is not None
        checks = [(o.host, f"http://{o.host.address}:{ORIGIN_PORT}/health") for o in self.origins]
        checks.append(
            (self.tracker.host, f"http://{self.tracker.host.address}:{TRACKER_PORT}/readiness")
        )
        waiting = [
            subprocess.Popen(
                host.argv(
                    [
                        sys.executable,
                        "-m",
                        "bench.swarm_client",
                        "wait",
                        url,
                        "--timeout",
                        str(timeout),
                    ]
                ),
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for host, url in checks
        ]
        problems = []
        for p in waiting:
            _, err = p.communicate()
            if p.returncode != 0:
                problems.append(err.strip())
        self.check_alive()
        if problems:
            raise RuntimeError("daemons not ready: " + "; ".join(problems))

    def check_alive(self) -> None:
        """RuntimeError naming daemons that exited (with the end of their log)."""
        dead = [d for d in self.daemons() if d.process is not None and d.process.poll() is not None]
        if dead:
            tails = []
            for d in dead:
                with open(d.log, errors="replace") as f:
                    tails.append(f"{d.host.name} exited:\n" + "".join(f.readlines()[-15:]))
            raise RuntimeError("\n".join(tails))

    # -- using ---------------------------------------------------------------

    def upload(self, path: str, timeout: float = 300) -> dict[str, Any]:
        """Upload ``path`` through the first origin's host; wait until every origin has it."""
        members = ",".join(f"{o.host.address}:{ORIGIN_PORT}" for o in self.origins)
        out = self.network.run(
            self.origins[0].host,
            [
                sys.executable,
                "-m",
                "bench.swarm_client",
                "upload",
                "--origins",
                members,
                "--namespace",
                NAMESPACE,
                "--timeout",
                str(timeout),
                path,
            ],
            timeout=timeout + 30,
            env=self.env,
        )
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def start_fetch(
        self, agent: Daemon, sha256: str, out: str | None = None, size: int | None = None
    ) -> subprocess.Popen[str]:
        """
        A fetch client in ``agent``'s namespace; it prints READY, then waits for GO.

        With ``size`` the client readies a buffer for the whole body before GO and
        hashes it after the end (``bench.swarm_client``'s ``Landing``).
        """
        base = f"http://127.0.0.1:{AGENT_SERVER_PORT}"
        command = [
            sys.executable,
            "-m",
            "bench.swarm_client",
            "fetch",
            f"{base}/namespace/{NAMESPACE.replace('/', '%2F')}/blobs/{sha256}",
            "--sha256",
            sha256,
            "--health",
            f"{base}/health",
        ]
        if out:
            command += ["--out", out]
        if size is not None:
            command += ["--size", str(size)]
        return subprocess.Popen(
            agent.host.argv(command),
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def tcp_reference(self, seconds: float = 8.0) -> dict[str, float]:
        """
        The shaped network's own payload ceiling, measured without Kraken.

        Every agent host sends and receives bulk TCP both ways with its ``MESH_DIALS`` next
        hosts on a ring and the ``MESH_DIALS`` before it (``swarm_client mesh``), all at once
        for ``seconds``, while the daemons idle.  Returns the median per-host payload rates
        received and sent (bytes/s): what the links carry after TCP/IP headers,
        retransmissions and TCP's sharing of a link between flows.  ``rx_rate`` is the
        measure (the bound uses it); ``tx_rate`` counts what was handed to the sockets and
        can run ahead of the wire while their buffers grow.
        """
        hosts = [a.host for a in self.agents]
        dials = min(MESH_DIALS, (len(hosts) - 1) // 2) if len(hosts) > 2 else len(hosts) - 1
        clients = []
        for i, host in enumerate(hosts):
            peers = [
                f"{hosts[(i + j) % len(hosts)].address}:{MESH_PORT}" for j in range(1, dials + 1)
            ]
            command = [
                sys.executable, "-m", "bench.swarm_client", "mesh",
                "--listen", f"{host.address}:{MESH_PORT}",
                "--peers", ",".join(peers), "--seconds", str(seconds),
            ]  # fmt: skip
            clients.append(
                subprocess.Popen(
                    host.argv(command),
                    env=self.env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        segments = self.tcp_segments()
        Swarm.go(clients)
        results = [Swarm.result(c, timeout=seconds + 60) for c in clients]
        return {
            "rx_rate": statistics.median(r["rx_rate"] for r in results),
            "tx_rate": statistics.median(r["tx_rate"] for r in results),
            "retransmitted": retransmitted(segments, self.tcp_segments()),
        }

    @staticmethod
    def go(clients: Sequence[subprocess.Popen[str]], lead: float = 1.0) -> float:
        """Wait for every client's READY, then tell them all to start ``lead`` s from now."""
        for c in clients:
            assert c.stdout is not None
            line = c.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError(f"fetch client not ready: {line!r}")
        start = time.time() + lead
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(f"GO {start}\n")
            c.stdin.flush()
        return start

    @staticmethod
    def result(client: subprocess.Popen[str], timeout: float = 600) -> dict[str, Any]:
        """The JSON record a fetch client printed."""
        out, _ = client.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        if not lines:
            return {"ok": False, "error": f"no output (exit {client.returncode})"}
        record: dict[str, Any] = json.loads(lines[-1])
        return record

    def kill(self, daemon: Daemon) -> None:
        """SIGKILL ``daemon`` (a crash: no clean shutdown)."""
        assert daemon.process is not None
        Network.stop(daemon.process, signal.SIGKILL)

    def tcp_segments(self) -> tuple[int, int]:
        """TCP segments sent and retransmitted so far, summed over every host's namespace."""
        counts = [tcp_segments(d.process.pid) for d in self.daemons() if d.process is not None]
        return (sum(c[0] for c in counts), sum(c[1] for c in counts))

    def congestion_control(self) -> str:
        """The TCP congestion control the hosts use (inherited from the machine's default)."""
        host = self.agents[0].host
        return subprocess.run(
            host.argv(["cat", "/proc/sys/net/ipv4/tcp_congestion_control"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each running daemon, by host name."""
        return {
            d.host.name: process_cpu_seconds(d.process.pid)
            for d in self.daemons()
            if d.process is not None and d.process.poll() is None
        }


def retransmitted(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of TCP segments sent between two :meth:`Swarm.tcp_segments` that were resent."""
    sent = after[0] - before[0]
    return round((after[1] - before[1]) / sent, 4) if sent > 0 else 0.0


def _percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def plot_cdf(
    times: Sequence[float], bound: float, path: str, title: str, tcp_bound: float | None = None
) -> None:
    """
    Save a CDF of completion ``times`` with the bound (and the bound at the TCP reference's
    rate, if measured) marked, as a PNG at ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(times)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step(
        ordered,
        [(i + 1) / len(ordered) for i in range(len(ordered))],
        where="post",
        label="agents done",
    )
    ax.axvline(bound, color="red", linestyle="--", label=f"Kumar-Ross bound {bound:.1f} s")
    if tcp_bound is not None:
        ax.axvline(
            tcp_bound,
            color="grey",
            linestyle=":",
            label=f"at the TCP reference rate {tcp_bound:.1f} s",
        )
    ax.set_xlabel("completion time (s)")
    ax.set_ylabel("fraction of agents")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_cdf(
    times: Sequence[float], bound: float, path: str, title: str, tcp_bound: float | None = None
) -> str:
    """
    :func:`plot_cdf` if matplotlib is there; the line to print: where the PNG is, or why none.

    A run takes minutes and its figures are printed before the plot is drawn, so a machine
    without matplotlib loses only the picture.
    """
    try:
        plot_cdf(times, bound, path, title, tcp_bound)
    except ImportError as e:
        return f"CDF not drawn: {e.name or 'matplotlib'} is not installed (pip install matplotlib)"
    return f"CDF: {path}"


def report(detail: dict[str, Any], out: str) -> None:
    """
    Write a run's ``detail`` (as :func:`run_benchmark` builds it) as JSON into ``out``, print
    its figures and the JSON line of its summary, then draw the CDF beside the JSON.

    The figures come first: a run takes minutes, and nothing after them may lose them.
    """
    options = detail["options"]
    n, size, rate = options["agents"], options["size"], options["rate"]
    times, bound, tcp_bound = detail["times_s"], detail["bound_s"], detail["tcp_bound_s"]
    summary, timeline, reference = detail["summary"], detail["timeline"], detail["tcp_reference"]
    os.makedirs(out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(out, f"swarm-{stamp}.json"), "w") as f:
        json.dump(detail, f, indent=1)
    print(
        f"bound {bound:.2f} s; completion p50 {detail['p50_s']:.2f} s, "
        f"p99 {detail['p99_s']:.2f} s, max {detail['max_s']:.2f} s; "
        f"origins sent {detail['origin_tx_bytes'] / size:.2f} blobs; CPU {detail['cpu_s']:.1f} s "
        f"({detail['cpu_s_by_daemon']})"
    )
    until = max(times)
    received = per_second(timeline, "agents_rx", until)
    busy = per_second(timeline, "cpu", until)
    print(
        f"agents received, MiB/s in each second (their links: {n * rate / 1024**2:g}, "
        f"Ethernet headers included): {' '.join(f'{r / 1024**2:.0f}' for r in received)}"
    )
    print(f"CPU busy in each second (%): {' '.join(f'{100 * b:.0f}' for b in busy)}")
    resent = f"TCP segments retransmitted: {100 * detail['tcp_retransmitted']:.2f} %"
    if reference is not None:
        resent += f" (TCP reference: {100 * reference['retransmitted']:.2f} %)"
    print(resent)
    if tcp_bound is not None:
        print(
            f"bound at the TCP reference rate {tcp_bound:.2f} s: p50 {summary['tcp_p50_ratio']}, "
            f"p99 {summary['tcp_p99_ratio']} of it"
        )
    print(json.dumps(summary), flush=True)
    print(
        save_cdf(
            times,
            bound,
            os.path.join(out, f"swarm-{stamp}.png"),
            f"{n} agents, {options['origins']} origins, {size / 1024**2:.0f} MiB, "
            f"{rate / 1024**2:g} MiB/s per host",
            tcp_bound,
        ),
        flush=True,
    )


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """One run of the benchmark as the command line describes; the summary."""
    options = SwarmOptions(
        agents=args.agents,
        origins=args.origins,
        upload=args.rate,
        download=args.rate,
        piece_length=args.piece_length,
        announce_interval=args.announce_interval,
        agent_scheduler=dict(args.agent_set),
        origin_scheduler=dict(args.origin_set),
    )
    workdir = tempfile.mkdtemp(prefix="kraken-swarm-")
    network = Network(PREFIX, upload=args.rate, download=args.rate, mtu=args.mtu)
    reference: dict[str, float] | None = None
    try:
        network.create()
        swarm = Swarm(network, workdir, options)
        blob = os.path.join(workdir, "blob")
        with open(blob, "wb") as f:
            rng = random.Random(args.seed)
            left = args.size
            while left:
                n = min(left, 4 * 1024**2)
                f.write(rng.randbytes(n))
                left -= n
        swarm.build()
        swarm.wait_ready()
        if args.ui:
            assert swarm.tracker is not None
            network.attach_machine()
            print(
                f"swarm page: http://{swarm.tracker.host.address}:{TRACKER_PORT}/ui/",
                flush=True,
            )
        congestion = swarm.congestion_control()
        print(f"TCP congestion control in the hosts: {congestion}", flush=True)
        reference = swarm.tcp_reference() if args.tcp_reference else None
        if reference is not None:
            print(
                f"TCP reference: {reference['rx_rate'] / 1024**2:.2f} MiB/s received per host "
                f"of {args.rate / 1024**2:g} MiB/s shaped",
                flush=True,
            )
        print(
            f"{args.origins} origins, {args.agents} agents up; uploading {args.size} bytes",
            flush=True,
        )
        # The blob crosses the first origin's link, then again to each replica.
        uploaded = swarm.upload(blob, timeout=max(300.0, 4 * args.size / args.rate + 60))
        sha = uploaded["digest"].split(":", 1)[1]
        print(f"uploaded and replicated in {uploaded['seconds']:.1f} s", flush=True)
        clients = [swarm.start_fetch(a, sha, size=args.size) for a in swarm.agents]
        tx_before = sum(network.tx_bytes(o.host) for o in swarm.origins)
        cpu_before = swarm.cpu()
        segments_before = swarm.tcp_segments()
        trace = Trace(network.bridge_ns)
        trace.start()
        try:
            start = Swarm.go(clients)
            results = [Swarm.result(c) for c in clients]
        finally:
            samples = trace.stop()
        cpu_after = swarm.cpu()
        segments_after = swarm.tcp_segments()
        tx_after = sum(network.tx_bytes(o.host) for o in swarm.origins)
        swarm.check_alive()
        if args.ui:
            with contextlib.suppress(EOFError):
                input("download done; the swarm stays up for the page: press Enter to end ")
    finally:
        network.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    failed = [r for r in results if not r.get("ok")]
    if failed:
        raise RuntimeError(f"{len(failed)} agents failed: {failed[:3]}")
    times = [r["end"] - start for r in results]
    n, size = args.agents, args.size
    bound = kumar_ross_bound(size, n, args.origins * args.rate, args.rate, args.rate)
    cpu = sum(cpu_after.get(k, 0.0) - v for k, v in cpu_before.items())
    summary = {
        "p50_ratio": round(_percentile(times, 50) / bound, 3),
        "p99_ratio": round(_percentile(times, 99) / bound, 3),
        "max_ratio": round(max(times) / bound, 3),
        "origin_egress_ratio": round((tx_after - tx_before) / size, 3),
        "cpu_s_per_gb": round(cpu / (n * size / 1e9), 2),
    }
    tcp_bound = None
    if reference is not None:
        # The same bound with every link at the payload rate TCP reached on it.
        rate = reference["rx_rate"]
        tcp_bound = kumar_ross_bound(size, n, args.origins * rate, rate, rate)
        summary["tcp_p50_ratio"] = round(_percentile(times, 50) / tcp_bound, 3)
        summary["tcp_p99_ratio"] = round(_percentile(times, 99) / tcp_bound, 3)
    timeline = summarize(
        samples,
        start,
        {
            "agents": [a.host.name for a in swarm.agents],
            "origins": [o.host.name for o in swarm.origins],
        },
    )
    detail = {
        "options": {k: (v if not isinstance(v, list) else dict(v)) for k, v in vars(args).items()},
        "bound_s": bound,
        "start_unix": start,
        "results": results,
        "tcp_reference": reference,
        "tcp_bound_s": tcp_bound,
        "times_s": sorted(times),
        "p50_s": _percentile(times, 50),
        "p99_s": _percentile(times, 99),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "origin_tx_bytes": tx_after - tx_before,
        "cpu_s": cpu,
        "cpu_s_by_daemon": {k: round(cpu_after.get(k, 0.0) - v, 2) for k, v in cpu_before.items()},
        "upload_s": uploaded["seconds"],
        "tcp_congestion_control": congestion,
        "tcp_retransmitted": retransmitted(segments_before, segments_after),
        "summary": summary,
        "timeline": timeline,
    }
    report(detail, args.out)
    return summary


def _key_value(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def add_swarm_shape(parser: argparse.ArgumentParser) -> None:
    """``--agents``, ``--origins``, ``--size`` and ``--rate``: the swarm both benches build."""
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--origins", type=int, default=2)
    parser.add_argument("--size", type=parse_size, default=64 * 1024**2)
    parser.add_argument(
        "--rate",
        type=parse_size,
        default=4 * 1024**2,
        help="upload and download limit of every host, bytes/s (default 4MiB)",
    )


def add_engine_settings(parser: argparse.ArgumentParser) -> None:
    """``--agent-set KEY=VALUE`` and ``--origin-set KEY=VALUE`` (repeatable): engine settings."""
    for who, example in (("agent", "pipeline_limit=3"), ("origin", "upload_slots=2")):
        parser.add_argument(
            f"--{who}-set",
            type=_key_value,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"{who} scheduler setting, e.g. {example}",
        )


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into SystemExit so that ``finally`` blocks clean up."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.swarm", description=__doc__.split("\n")[1]
    )
    add_swarm_shape(parser)
    parser.add_argument(
        "--piece-length",
        type=parse_size,
        default=None,
        help="origin metainfo piece length (default: DESIGN 3's table)",
    )
    parser.add_argument(
        "--announce-interval",
        type=float,
        default=None,
        help="tracker announce_interval in seconds (default: its default)",
    )
    add_engine_settings(parser)
    parser.add_argument(
        "--no-tcp-reference",
        dest="tcp_reference",
        action="store_false",
        help="skip measuring the network's bulk-TCP ceiling before the run (about 10 s)",
    )
    parser.add_argument(
        "--mtu",
        type=int,
        default=None,
        help="MTU of every link (default the kernel's, 1500; e.g. 9000 for jumbo frames, "
        "which carry the same payload in fewer header and ACK bytes)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="bench-results", help="directory for JSON and PNG")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--ui",
        action="store_true",
        help="link this machine to the swarm and keep it up after the download for the "
        "tracker's swarm page (printed)",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help=f"only remove leftovers ({PREFIX}-* namespaces and their processes)",
    )
    args = parser.parse_args(argv)
    problem = missing_requirements()
    if problem:
        print(f"bench.swarm: {problem}; it builds hosts as network namespaces.", file=sys.stderr)
        return 2
    if args.cleanup:
        from bench.netns import cleanup_prefix

        print("removed:", " ".join(cleanup_prefix(PREFIX)) or "nothing")
        return 0
    with _signals_raise():
        run_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
