"""Tests of bench.sim: fair sharing, head-of-line blocking, whole swarms, determinism."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

import kraken
from bench.sim.network import Frame, Payload, Simulation, _credit, water_fill
from bench.sim.nodes import PAYLOAD_HEADER, Delays, frame_size
from bench.sim.run import SimOptions, main, simulate
from kraken.torrent.messages import PieceRequest

MiB = 1024 * 1024


class WaterFillTests(SynchronousTestCase):
    """Max-min fair rates by progressive filling."""

    def test_two_flows_share_an_uplink(self) -> None:
        """Two flows from one host to two others split its upload equally."""
        # links: host h up = 2h, down = 2h + 1; every capacity 4.
        rates = water_fill([(0, 3), (0, 5)], [4.0] * 6)
        self.assertEqual(rates, [2.0, 2.0])

    def test_receiver_limited_flow_leaves_the_rest_to_others(self) -> None:
        """A flow held to 1 by its receiver's download leaves 9 of a 10 uplink to the other."""
        capacity = [10.0, 10.0, 10.0, 1.0, 10.0, 10.0]
        rates = water_fill([(0, 3), (0, 5)], capacity)
        self.assertEqual(rates, [1.0, 9.0])

    def test_downlink_shared_by_senders(self) -> None:
        """Three senders to one receiver split its download; nothing exceeds a capacity."""
        capacity = [8.0, 8.0, 8.0, 8.0, 8.0, 6.0]
        rates = water_fill([(0, 5), (2, 5), (4, 5)], capacity)
        self.assertEqual(rates, [2.0, 2.0, 2.0])

    def test_max_min_fair_on_a_random_swarm(self) -> None:
        """
        On many random flows between hosts of unequal links, no link carries more than its
        capacity and every flow has a bottleneck: a full link on which no flow gets more.
        """
        rng = random.Random(7)
        hosts = 60
        capacity = [rng.choice([1.0, 2.0, 4.0, 8.0]) for _ in range(2 * hosts)]
        flows = [(2 * rng.randrange(hosts), 2 * rng.randrange(hosts) + 1) for _ in range(600)]
        rates = water_fill(flows, capacity)
        load = [0.0] * len(capacity)
        on_link: list[list[float]] = [[] for _ in capacity]
        for (a, b), r in zip(flows, rates, strict=True):
            self.assertGreater(r, 0.0)
            for link in (a, b):
                load[link] += r
                on_link[link].append(r)
        for link, cap in enumerate(capacity):
            self.assertLessEqual(load[link], cap * (1 + 1e-9))
        for (a, b), r in zip(flows, rates, strict=True):
            self.assertTrue(
                any(
                    load[link] >= capacity[link] * (1 - 1e-9) and r >= max(on_link[link]) - 1e-9
                    for link in (a, b)
                ),
                f"flow {a}->{b} at {r} has no bottleneck",
            )


def _one_host_to_two(sim: Simulation, length: int, ends: list[float]) -> None:
    """Hosts a, b, c (4 MiB/s each way, no latency); a payload of ``length`` from a to b and c.

    ``ends`` gets the moment each payload's last byte arrives.
    """
    net = sim.network
    a = net.add_host("a", 4 * MiB, 4 * MiB, 0.0)
    for name in ("b", "c"):
        dst = net.add_host(name, 4 * MiB, 4 * MiB, 0.0)
        s = net.stream(
            a,
            dst,
            on_frame=lambda f: None,
            on_header=lambda p: None,
            on_payload_end=lambda p: ends.append(sim.now),
            on_sent=lambda p: None,
        )
        s.send(Payload(0, length, 0))


class StreamTests(SynchronousTestCase):
    """Items on one direction of a connection."""

    def _stream(self, sim: Simulation, log: list[tuple[str, float]]):
        net = sim.network
        a = net.add_host("a", 4 * MiB, 4 * MiB, 0.001)
        b = net.add_host("b", 4 * MiB, 4 * MiB, 0.001)
        return net.stream(
            a,
            b,
            on_frame=lambda f: log.append(("frame", sim.now)),
            on_header=lambda p: log.append(("header", sim.now)),
            on_payload_end=lambda p: log.append(("end", sim.now)),
            on_sent=lambda p: log.append(("sent", sim.now)),
        )

    def test_control_frame_waits_behind_payload(self) -> None:
        """A frame queued after a 1 MiB payload arrives after the payload's last byte."""
        sim = Simulation()
        log: list[tuple[str, float]] = []
        stream = self._stream(sim, log)
        stream.send(Payload(0, MiB, PAYLOAD_HEADER))
        stream.send(Frame(PieceRequest(1), frame_size(PieceRequest(1))))
        sim.run()
        self.assertEqual([k for k, _ in log], ["header", "sent", "end", "frame"])
        times = dict(log)
        transfer = (MiB + PAYLOAD_HEADER) / (4 * MiB)
        self.assertAlmostEqual(times["sent"], transfer, places=9)
        self.assertAlmostEqual(times["end"], transfer + 0.001, places=9)
        self.assertGreater(times["frame"], times["end"])
        self.assertLess(times["frame"], times["end"] + 1e-4)

    def test_frame_alone_takes_only_latency(self) -> None:
        """A frame on an idle stream arrives after the latency and its few bytes' time."""
        sim = Simulation()
        log: list[tuple[str, float]] = []
        stream = self._stream(sim, log)
        stream.send(Frame(PieceRequest(1), 9))
        sim.run()
        self.assertEqual(log, [("frame", 0.001 + 9 / (4 * MiB))])

    def test_two_payloads_from_one_host_share_its_upload(self) -> None:
        """Two payloads on two streams from one host each take twice as long as one alone."""
        sim = Simulation()
        ends: list[float] = []
        _one_host_to_two(sim, MiB, ends)
        sim.run()
        self.assertEqual(len(ends), 2)
        for end in ends:
            self.assertAlmostEqual(end, 0.5, places=9)


class CarriedTests(SynchronousTestCase):
    """What each link carried in each second (``Network.carried``)."""

    def test_credit_splits_at_whole_seconds(self) -> None:
        """10 bytes/s from 0.5 s to 2.25 s: 5 in the first second, 10, then 2.5."""
        seconds: list[float] = []
        _credit(seconds, 0.5, 2.25, 10.0)
        self.assertEqual(seconds, [5.0, 10.0, 2.5])
        _credit(seconds, 2.5, 2.75, 4.0)
        self.assertEqual(seconds, [5.0, 10.0, 3.5])

    def test_payloads_sharing_an_uplink_are_counted_on_every_link(self) -> None:
        """
        Two 2 MiB payloads from a (4 MiB/s) to b and c, at 1.5 wire bytes per byte: a's
        upload carries 4 MiB in the first second and 2 in the second, b's and c's
        downloads half each.
        """
        sim = Simulation(overhead=1.5)
        net = sim.network
        _one_host_to_two(sim, 2 * MiB, [])
        sim.run()
        # 2 x 2 MiB x 1.5 = 6 MiB of wire bytes through a's upload, 1.5 s at 4 MiB/s.
        up_a, down_b, down_c = net.carried[0], net.carried[3], net.carried[5]
        for got, want in zip(up_a, [4 * MiB, 2 * MiB], strict=True):
            self.assertAlmostEqual(got, want, delta=1e-3)
        for down in (down_b, down_c):
            for got, want in zip(down, [2 * MiB, MiB], strict=True):
                self.assertAlmostEqual(got, want, delta=1e-3)
        self.assertEqual(net.carried[1], [])


NO_DELAYS = Delays(read_per_mib=0.0, write_per_mib=0.0, commit=0.0)


class SwarmTests(SynchronousTestCase):
    """Whole simulated swarms of real schedulers."""

    def test_one_origin_one_agent_at_link_rate(self) -> None:
        """One agent fetching 8 MiB from one origin at 4 MiB/s takes 2 s, within 1 %."""
        result = simulate(
            SimOptions(agents=1, origins=1, size=8 * MiB, rate=4 * MiB, delays=NO_DELAYS)
        )
        [t] = result.times
        assert t is not None
        self.assertLess(abs(t - 2.0) / 2.0, 0.01, t)
        self.assertGreater(t, 2.0)
        self.assertAlmostEqual(result.origin_payload_bytes, 8 * MiB)
        # Its link was full from the first second to the last.
        timeline = result.timeline()
        self.assertEqual([step["t"] for step in timeline], [1.0, 2.0, 3.0])
        for step in timeline[:2]:
            self.assertGreater(step["agents_rx"], 0.99)
            self.assertEqual(step["agents_rx"], step["origins_tx"])
            self.assertEqual(step["agents_tx"], 0.0)
        self.assertLess(timeline[2]["agents_rx"], 0.01)

    def test_five_agents_all_complete(self) -> None:
        """1 origin, 5 agents: every agent completes, and agents traded pieces."""
        result = simulate(SimOptions(agents=5, origins=1, size=8 * MiB))
        self.assertTrue(result.complete)
        self.assertEqual(len(result.times), 5)
        # 5 blobs reached the agents, the origin sent fewer: the rest came from agents.
        self.assertLess(result.origin_payload_bytes, 5 * 8 * MiB)
        self.assertGreaterEqual(result.origin_payload_bytes, 8 * MiB)
        for t in result.times:
            assert t is not None
            self.assertGreaterEqual(t, result.bound)

    def test_same_seed_same_result(self) -> None:
        """The same seed gives the same completion times and event count; another seed not."""
        options = SimOptions(agents=6, origins=1, size=4 * MiB, seed=7)
        first = simulate(options)
        second = simulate(options)
        self.assertEqual(first.times, second.times)
        self.assertEqual(first.events, second.events)
        other = simulate(SimOptions(agents=6, origins=1, size=4 * MiB, seed=8))
        self.assertNotEqual(first.times, other.times)

    def test_engine_settings_reach_the_schedulers(self) -> None:
        """--agent-set / --origin-set keys configure agents and origins (origins stay origins)."""
        result = simulate(
            SimOptions(
                agents=2,
                origins=1,
                size=2 * MiB,
                agent_scheduler={"pipeline_limit": 4},
                origin_scheduler={"upload_slots": 1},
            )
        )
        origin, *agents = result.nodes
        self.assertTrue(origin.scheduler.config.origin)
        self.assertFalse(origin.scheduler.config.announce)
        self.assertEqual(origin.scheduler.config.upload_slots, 1)
        self.assertEqual([a.scheduler.config.pipeline_limit for a in agents], [4, 4])
        self.assertTrue(result.complete)

    def test_command_line_prints_json_last(self) -> None:
        """``python -m bench.sim`` ends with a JSON line of the summary keys."""
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["--agents", "3", "--origins", "1", "--size", "2MiB", "--seed", "3"])
        self.assertEqual(code, 0)
        summary = json.loads(out.getvalue().strip().splitlines()[-1])
        self.assertEqual(
            set(summary),
            {"p50_ratio", "p99_ratio", "max_ratio", "origin_egress_ratio", "events", "wall_s"},
        )
        self.assertGreaterEqual(summary["p50_ratio"], 1.0)
        lines = out.getvalue().splitlines()
        received = [line for line in lines if line.startswith("agents received, %")]
        self.assertEqual(len(received), 1)
        self.assertTrue(all(0 <= int(v) <= 100 for v in received[0].split(": ")[1].split()))


_SCRIPT = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "twisted" or name.startswith("twisted."):
            raise ImportError("bench.sim imported " + name)
        return None
sys.meta_path.insert(0, Block())
from bench.sim import SimOptions, simulate
result = simulate(SimOptions(agents=2, origins=1, size=1024 * 1024))
assert "twisted.internet.reactor" not in sys.modules
print("ok" if result.complete else "incomplete")
"""


class NoTwistedTests(SynchronousTestCase):
    """The simulator drives the sans-IO engine without Twisted."""

    def test_runs_without_twisted(self) -> None:
        """
        bench.sim imports and runs a swarm with every twisted import blocked (the engine,
        the handout policy and the simulator are sans-IO), and no reactor is imported.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(kraken.__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=False, env=env
        )
        self.assertEqual(out.stdout.strip(), "ok", out.stderr)
