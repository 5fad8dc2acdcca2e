"""
Push-and-pull loop against a cluster of separate daemon processes, counting failed rounds.

``python -m bench.push_loop [--duration 20m | --rounds N] [--interval 1s] [--json FILE]``

Starts, each as its own ``twistd -n`` process on free 127.0.0.1 ports under a work
directory: ``--origins`` origins (default 3) in one ring with ``--replicas`` copies of
each blob (default 2) and one shared filesystem backend, ``--trackers`` trackers (default
2, sharing a throw-away ``redis-server`` when there are several), a build-index, a proxy
and ``--agents`` agents (default 3).  Then, once a round per ``--interval``:

1. push one image through the proxy as skopeo does (for each blob ``POST
   .../blobs/uploads/`` then ``PUT <location>?digest=`` with the body; then ``PUT
   .../manifests/r<n>``): a config blob that is the same every round and a fresh layer of
   ``--layer-size`` random bytes (64 KiB by default);
2. pull it through ``--pull-agents`` agents (default 2, rotating over all of them):
   ``GET /v2/<repo>/manifests/r<n>`` and each blob from the agent's registry port,
   compared byte for byte with what was pushed.

A round fails at its first wrong answer (status, error code and body are kept); the loop
goes on.  The resident set size (``VmRSS``) and open file descriptors of every daemon are
read from ``/proc`` when the loop starts, every ``--sample-every`` seconds, and at the end.
``--agent-tti`` shortens the agents' cache TTI (their cleanup then runs every quarter of it,
at most every minute), to see their memory level off once blobs leave the cache.  Below the
store's 5-minute access-update interval a blob read all the time still looks idle and is
evicted, so rounds then also exercise evictions of blobs in use.

``--tracemalloc agent`` starts the agents under ``tracemalloc`` (25 frames) with a
``SIGUSR2`` handler that dumps a snapshot; the loop takes one after ``--warmup`` rounds and
one at the end and prints the allocation sites that grew the most in between (slow: use it
to find what grows, not to measure).

Prints one line per failed round, a summary table, and (``--json``) everything as JSON.
Exits 1 if a round failed.  ``tests/system/test_push_loop.py`` runs a short loop in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import attrs
import yaml

from bench.common import parse_seconds, parse_size, process_cpu_seconds
from bench.registry import free_port

#: The checkout holding ``kraken/`` and ``twisted/plugins/kraken_plugins.py``.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = "loop/image"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: The config blob of every round's image (the same bytes each time).
CONFIG = json.dumps(
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
).encode()

#: ``twistd``, run by this interpreter, with a SIGUSR2 handler that dumps a tracemalloc
#: snapshot to ``$KRAKEN_LOOP_SNAPSHOT.<n>`` when tracing is on.
TWISTD = """
import os, signal, sys, tracemalloc
def _dump(signum, frame, count=[0]):
    if tracemalloc.is_tracing():
        count[0] += 1
        tracemalloc.take_snapshot().dump(f"{os.environ['KRAKEN_LOOP_SNAPSHOT']}.{count[0]}")
signal.signal(signal.SIGUSR2, _dump)
from twisted.scripts.twistd import run
run()
"""


def _listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


@attrs.define
class Daemon:
    """One ``twistd -n kraken-<kind>`` child: its name, config, port to poll and process."""

    name: str
    kind: str
    config: dict[str, Any]
    ready_url: str
    process: subprocess.Popen[bytes] | None = None

    def start(self, workdir: str, *, trace: bool) -> None:
        """Write the config and start the process (logs in ``<workdir>/<name>.log``)."""
        path = os.path.join(workdir, f"{self.name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(self.config, f)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
            "KRAKEN_LOOP_SNAPSHOT": os.path.join(workdir, f"{self.name}.snapshot"),
        }
        if trace:
            env["PYTHONTRACEMALLOC"] = "25"
        argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile="]
        argv += [f"--logfile={os.path.join(workdir, self.name + '.log')}"]
        argv += [f"kraken-{self.kind}", "--config", path]
        self.process = subprocess.Popen(argv, cwd=workdir, env=env)

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """Whether ``/readiness`` answers 200."""
        try:
            with urllib.request.urlopen(self.ready_url, timeout=2) as r:  # noqa: S310
                return bool(r.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def usage(self) -> dict[str, float]:
        """RSS (MiB), open file descriptors and CPU seconds, from ``/proc``."""
        rss = 0.0
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) / 1024
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return {"rss_mib": 0.0, "fds": 0, "cpu_s": 0.0}
        return {"rss_mib": round(rss, 1), "fds": fds, "cpu_s": process_cpu_seconds(self.pid)}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@attrs.define
class LoopCluster:
    """The daemons of one loop, their addresses and the redis-server if any."""

    workdir: str
    origins: int = 3
    replicas: int = 2
    trackers: int = 2
    agents: int = 3
    #: The agents' ``cleanup`` section (None: the defaults).
    agent_cleanup: dict[str, Any] | None = None
    daemons: list[Daemon] = attrs.field(factory=list)
    proxy: str = ""
    agent_registries: list[str] = attrs.field(factory=list)
    redis: subprocess.Popen[bytes] | None = None

    def build(self) -> None:
        """Choose ports and write the daemons' configs (nothing starts)."""
        origin_ports = [free_port() for _ in range(self.origins)]
        origin_hosts = [f"127.0.0.1:{p}" for p in origin_ports]
        tracker_ports = [free_port() for _ in range(self.trackers)]
        tracker_hosts = [f"127.0.0.1:{p}" for p in tracker_ports]
        bi_port, proxy_port = free_port(), free_port()
        bi_host = f"127.0.0.1:{bi_port}"
        backend = os.path.join(self.workdir, "backend")
        fast = {"interval": 1.0, "timeout": 2.0}
        for i, port in enumerate(origin_ports):
            config = {
                "data_dir": os.path.join(self.workdir, f"origin{i}"),
                "server": {"listen": _listen(port)},
                "peer": {"listen": _listen(free_port())},
                "cluster": {"static": origin_hosts},
                "hashring": {"max_replica": self.replicas},
                "healthcheck": fast,
                "backends": [{"namespace": ".*", "backend": {"fs": {"root": backend}}}],
            }
            self._add(f"origin{i}", "origin", config, f"http://127.0.0.1:{port}/readiness")
        store: dict[str, Any] = {"kind": "memory"}
        if self.trackers > 1:
            redis_port = free_port()
            store = {"kind": "redis", "redis": {"address": f"127.0.0.1:{redis_port}"}}
            self.redis = subprocess.Popen(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self.workdir,
                ],
                stdout=subprocess.DEVNULL,
            )
        for i, port in enumerate(tracker_ports):
            config = {
                "data_dir": os.path.join(self.workdir, f"tracker{i}"),
                "server": {"listen": _listen(port)},
                "peer_store": store,
                "origin": {"hosts": {"static": origin_hosts}, "healthcheck": fast},
                "announce_interval": 1.0,
            }
            self._add(f"tracker{i}", "tracker", config, f"http://127.0.0.1:{port}/readiness")
        config = {
            "data_dir": os.path.join(self.workdir, "build-index"),
            "server": {"listen": _listen(bi_port)},
            "cluster": {"hosts": {"static": [bi_host]}, "healthcheck": fast},
            "origin": {"hosts": {"static": origin_hosts}, "healthcheck": fast},
            "backends": [
                {
                    "namespace": ".*",
                    "backend": {"fs": {"root": os.path.join(self.workdir, "tags")}},
                }
            ],
        }
        self._add("build-index", "build-index", config, f"http://{bi_host}/readiness")
        self.proxy = f"127.0.0.1:{proxy_port}"
        config = {
            "data_dir": os.path.join(self.workdir, "proxy"),
            "server": {"listen": _listen(proxy_port)},
            "origin": {"hosts": {"static": origin_hosts}, "healthcheck": fast},
            "build_index": {"hosts": {"static": [bi_host]}},
        }
        self._add("proxy", "proxy", config, f"http://{self.proxy}/readiness")
        for i in range(self.agents):
            registry, server = free_port(), free_port()
            self.agent_registries.append(f"127.0.0.1:{registry}")
            config = {
                "data_dir": os.path.join(self.workdir, f"agent{i}"),
                "registry": {"listen": _listen(registry)},
                "server": {"listen": _listen(server)},
                "peer": {"listen": _listen(free_port())},
                "tracker": {"hosts": {"static": tracker_hosts}},
                "build_index": {"hosts": {"static": [bi_host]}},
                "metainfo_poll": {"initial": 0.1, "maximum": 0.5},
            }
            if self.agent_cleanup is not None:
                config["cleanup"] = self.agent_cleanup
            self._add(f"agent{i}", "agent", config, f"http://127.0.0.1:{server}/readiness")

    def _add(self, name: str, kind: str, config: dict[str, Any], ready_url: str) -> None:
        self.daemons.append(Daemon(name, kind, config, ready_url))

    def start(self, *, trace: str | None, timeout: float = 120.0) -> None:
        """Start every daemon at once; return when all answer ``/readiness``."""
        for daemon in self.daemons:
            daemon.start(self.workdir, trace=trace is not None and daemon.kind == trace)
        deadline = time.monotonic() + timeout
        waiting = list(self.daemons)
        while waiting:
            for daemon in waiting:
                if not daemon.alive():
                    raise SystemExit(f"{daemon.name} exited at start: see {self.log(daemon)}")
            waiting = [d for d in waiting if not d.ready()]
            if time.monotonic() > deadline:
                names = ", ".join(d.name for d in waiting)
                raise SystemExit(f"not ready after {timeout} s: {names}")
            time.sleep(0.2)

    def log(self, daemon: Daemon) -> str:
        """The path of ``daemon``'s log."""
        return os.path.join(self.workdir, f"{daemon.name}.log")

    def usage(self) -> dict[str, dict[str, float]]:
        """:meth:`Daemon.usage` of every daemon, by name."""
        return {d.name: d.usage() for d in self.daemons}

    def stop(self) -> None:
        """Stop every daemon (the agents first) and the redis-server."""
        for daemon in reversed(self.daemons):
            daemon.stop()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait()


class RoundFailed(Exception):
    """One step of a round got a wrong answer."""

    def __init__(self, step: str, status: int | None, detail: str) -> None:
        super().__init__(f"{step}: {status} {detail}")
        self.step = step
        self.status = status
        self.detail = detail


def _request(
    step: str,
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    expect: int,
    timeout: float = 60.0,
) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310
            status, body, got = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, body, got = e.code, e.read(), dict(e.headers)
    except OSError as e:
        raise RoundFailed(step, None, f"{type(e).__name__}: {e}") from None
    if status != expect:
        raise RoundFailed(step, status, body[:400].decode("utf-8", "replace"))
    return body, got


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(proxy: str, data: bytes, what: str) -> None:
    """POST then PUT with the body, as skopeo uploads a blob: 202 then 201."""
    _, headers = _request(
        f"POST {what}", "POST", f"http://{proxy}/v2/{REPO}/blobs/uploads/", data=b"", expect=202
    )
    location = headers.get("Location", "")
    if location.startswith("/"):
        location = f"http://{proxy}{location}"
    separator = "&" if "?" in location else "?"
    _request(
        f"PUT {what}",
        "PUT",
        f"{location}{separator}digest={digest_of(data)}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        expect=201,
    )


def image(layer: bytes) -> bytes:
    """The schema 2 manifest of :data:`CONFIG` and ``layer``."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": len(CONFIG), "digest": digest_of(CONFIG)},
            "layers": [{"mediaType": LAYER_TYPE, "size": len(layer), "digest": digest_of(layer)}],
        }
    ).encode()


def one_round(cluster: LoopCluster, n: int, layer: bytes, pull_agents: int) -> None:
    """Push image ``r<n>`` and pull it through ``pull_agents`` agents; raise RoundFailed."""
    push_blob(cluster.proxy, CONFIG, "config")
    push_blob(cluster.proxy, layer, f"layer {digest_of(layer)}")
    manifest = image(layer)
    _request(
        "PUT manifest",
        "PUT",
        f"http://{cluster.proxy}/v2/{REPO}/manifests/r{n}",
        data=manifest,
        headers={"Content-Type": MANIFEST_TYPE},
        expect=201,
    )
    registries = cluster.agent_registries
    for k in range(min(pull_agents, len(registries))):
        agent = registries[(n + k) % len(registries)]
        got, _ = _request(
            f"GET manifest from {agent}",
            "GET",
            f"http://{agent}/v2/{REPO}/manifests/r{n}",
            headers={"Accept": MANIFEST_TYPE},
            expect=200,
        )
        if got != manifest:
            raise RoundFailed(f"GET manifest from {agent}", 200, "different bytes")
        for blob in (CONFIG, layer):
            url = f"http://{agent}/v2/{REPO}/blobs/{digest_of(blob)}"
            got, _ = _request(f"GET blob from {agent}", "GET", url, expect=200)
            if got != blob:
                raise RoundFailed(f"GET {digest_of(blob)} from {agent}", 200, "different bytes")


def growth(before: str, after: str, top: int = 15) -> list[str]:
    """The allocation sites that grew the most between two tracemalloc snapshot files."""
    old = tracemalloc.Snapshot.load(before)
    new = tracemalloc.Snapshot.load(after)
    stats = new.compare_to(old, "traceback")
    lines = []
    for stat in stats[:top]:
        frames = [f"{f.filename.rsplit('/', 3)[-1]}:{f.lineno}" for f in stat.traceback]
        lines.append(
            f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
            + " < ".join(reversed(frames[-6:]))
        )
    return lines


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[LoopCluster]:
    """A started :class:`LoopCluster`, stopped (and its work directory removed) after."""
    workdir = args.work or tempfile.mkdtemp(prefix="kraken-push-loop-")
    os.makedirs(workdir, exist_ok=True)
    cluster = LoopCluster(
        workdir,
        origins=args.origins,
        replicas=args.replicas,
        trackers=args.trackers,
        agents=args.agents,
        agent_cleanup=(
            {"tti": args.agent_tti, "interval": min(60.0, args.agent_tti / 4)}
            if args.agent_tti
            else None
        ),
    )
    try:
        cluster.build()
        cluster.start(trace=args.tracemalloc)
        yield cluster
    finally:
        cluster.stop()
        if not args.keep and not args.work:
            shutil.rmtree(workdir, ignore_errors=True)


def snapshot(cluster: LoopCluster, kind: str, index: int) -> dict[str, str]:
    """Ask every ``kind`` daemon for tracemalloc snapshot ``index``; their paths by name."""
    paths = {}
    for daemon in cluster.daemons:
        if daemon.kind == kind:
            os.kill(daemon.pid, signal.SIGUSR2)
            paths[daemon.name] = os.path.join(cluster.workdir, f"{daemon.name}.snapshot.{index}")
    deadline = time.monotonic() + 120
    while not all(os.path.exists(p) for p in paths.values()):
        if time.monotonic() > deadline:
            raise SystemExit("no tracemalloc snapshot after 120 s")
        time.sleep(0.5)
    time.sleep(2)  # the dump is written in place: let it finish
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The loop; the results as a JSON-able dict."""
    rng = random.Random(args.seed)
    failures: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    snapshots: list[dict[str, str]] = []
    with running(args) as cluster:
        started = time.monotonic()
        samples.append({"t": 0.0, "round": 0, "usage": cluster.usage()})
        next_sample = started + args.sample_every
        n = 0
        while True:
            elapsed = time.monotonic() - started
            if (args.rounds and n >= args.rounds) or (args.duration and elapsed >= args.duration):
                break
            n += 1
            round_start = time.monotonic()
            layer = gzip.compress(rng.randbytes(args.layer_size), mtime=0)
            try:
                one_round(cluster, n, layer, args.pull_agents)
            except RoundFailed as e:
                failure = {"round": n, "step": e.step, "status": e.status, "detail": e.detail}
                failures.append(failure)
                print(f"round {n} FAILED: {e}", flush=True)
            dead = [d.name for d in cluster.daemons if not d.alive()]
            if dead:
                failures.append({"round": n, "step": "daemons", "status": None, "detail": dead})
                print(f"round {n}: daemons exited: {', '.join(dead)}", flush=True)
                break
            if args.tracemalloc and n == args.warmup:
                snapshots.append(snapshot(cluster, args.tracemalloc, 1))
            now = time.monotonic()
            if now >= next_sample:
                samples.append({"t": round(now - started, 1), "round": n, "usage": cluster.usage()})
                next_sample = now + args.sample_every
            time.sleep(max(0.0, args.interval - (time.monotonic() - round_start)))
        elapsed = time.monotonic() - started
        samples.append({"t": round(elapsed, 1), "round": n, "usage": cluster.usage()})
        if args.tracemalloc and snapshots:
            snapshots.append(snapshot(cluster, args.tracemalloc, 2))
        grown = {
            name: growth(snapshots[0][name], snapshots[1][name])
            for name in (snapshots[0] if len(snapshots) == 2 else {})
        }
    return {
        "rounds": n,
        "failed_rounds": len({f["round"] for f in failures}),
        "failures": failures,
        "seconds": round(elapsed, 1),
        "layer_size": args.layer_size,
        "origins": args.origins,
        "replicas": args.replicas,
        "trackers": args.trackers,
        "agents": args.agents,
        "pull_agents": args.pull_agents,
        "samples": samples,
        "tracemalloc_growth": grown,
    }


def summary(result: dict[str, Any]) -> str:
    """The table of RSS and file descriptors at the start and the end."""
    first, last = result["samples"][0]["usage"], result["samples"][-1]["usage"]
    lines = [
        f"{result['rounds']} rounds in {result['seconds']} s, {result['failed_rounds']} failed",
        f"{'daemon':<12} {'RSS start':>10} {'RSS end':>10} {'fds start':>10} {'fds end':>8}"
        f" {'CPU s':>7}",
    ]
    for name, start in first.items():
        end = last.get(name, {})
        lines.append(
            f"{name:<12} {start['rss_mib']:>9.1f}M {end.get('rss_mib', 0):>9.1f}M "
            f"{start['fds']:>10} {end.get('fds', 0):>8} {end.get('cpu_s', 0):>7.1f}"
        )
    for name, grown in result["tracemalloc_growth"].items():
        lines.append(f"tracemalloc growth of {name} after the warm-up:")
        lines.extend("  " + line for line in grown)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m bench.push_loop", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rounds", type=int, default=0, help="stop after this many rounds")
    p.add_argument("--duration", type=parse_seconds, default=0.0, help="stop after this long")
    p.add_argument("--interval", type=parse_seconds, default=1.0, help="one round per interval")
    p.add_argument("--layer-size", type=parse_size, default=64 * 1024)
    p.add_argument("--origins", type=int, default=3)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--trackers", type=int, default=2)
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--pull-agents", type=int, default=2)
    p.add_argument(
        "--agent-tti",
        type=parse_seconds,
        default=0.0,
        help="agents evict blobs not read for this long (default: the agent's 6 h)",
    )
    p.add_argument("--sample-every", type=parse_seconds, default=60.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tracemalloc", choices=["agent", "origin", "tracker", "proxy"])
    p.add_argument("--warmup", type=int, default=100, help="rounds before the first snapshot")
    p.add_argument("--work", help="work directory (kept); default: a temporary one, removed")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if not args.rounds and not args.duration:
        p.error("give --rounds or --duration")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the loop; 1 if a round failed."""
    args = parse_args(argv)
    # SIGTERM (``timeout``, a CI runner) unwinds like Ctrl-C, so the daemons are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run(args)
    print(summary(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if result["failed_rounds"] else 0


if __name__ == "__main__":
    sys.exit(main())
