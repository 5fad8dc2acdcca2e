"""
The simulated clock and network: timers, hosts, directed byte streams, fair-shared rates.

A :class:`Simulation` owns simulated time (``now``), a heap of timers and the
:class:`Network`.  A :class:`Stream` is one direction of a connection: a FIFO of
:class:`Frame` (a control message) and :class:`Payload` (a PIECE_PAYLOAD header
and the piece's bytes) items.

Payloads are *flows*: while a payload is the head of its stream its bytes cross
at a rate given by max-min fair sharing (progressive filling) of every active
flow, each constrained by its sender's upload and its receiver's download
capacity.  Rates are recomputed when the set of flows changes (lazily: once per
instant, however many flows started or ended in it), or, with
``rate_quantum > 0``, at most once per quantum of simulated time; between two
recomputes a new flow gets the capacity left over on both its links (so the
allocation never exceeds a capacity and never leaves capacity idle that a new
flow could use), and the rates of the others stay as they were.

Control frames do not join the fair share: a frame at the head of an otherwise
idle stream takes ``size x overhead / min(up, down)`` seconds on the wire, then
the latency.  A frame behind a payload waits until the payload's last byte has
left (head-of-line blocking, as on the real wire: nothing is sent on a
connection between a PIECE_PAYLOAD header and its last byte).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import define, field

from kraken.torrent.messages import Message

#: Bytes of the length prefix of every frame.
FRAME_PREFIX = 4


@define(eq=False)
class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op."""

    when: float
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    cancelled: bool = False

    def cancel(self) -> None:
        """Do not run it."""
        self.cancelled = True


@define(eq=False)
class Host:
    """A machine: upload and download capacity (bytes/s) and one-way latency (s)."""

    name: str
    up: float
    down: float
    latency: float = 0.001
    index: int = -1
    #: Payload bytes (piece bytes only) this host finished or started sending.
    payload_sent: float = 0.0


@define(eq=False)
class Frame:
    """A control message on a stream; ``size`` counts the 4-byte length prefix."""

    message: Message
    size: int


@define(eq=False)
class Payload:
    """A PIECE_PAYLOAD header (``header`` bytes, prefix included) and ``length`` piece bytes."""

    index: int
    length: int
    header: int


Item = Frame | Payload


@define(eq=False)
class Flow:
    """A payload crossing the network: bytes left (on the wire, overhead included) and rate."""

    stream: Stream
    item: Payload
    #: wire bytes left at time ``since``.
    left: float
    total: float
    rate: float = 0.0
    since: float = 0.0
    finish: float = math.inf
    version: int = 0
    active: bool = True

    def left_at(self, now: float) -> float:
        """Wire bytes left at ``now`` (at the current rate)."""
        return max(0.0, self.left - self.rate * (now - self.since))


@define(eq=False)
class Stream:
    """One direction of a connection: a FIFO of items from ``src`` to ``dst``."""

    network: Network
    src: Host
    dst: Host
    #: Called at the receiver when a Frame arrives.
    on_frame: Callable[[Frame], None]
    #: Called at the receiver when a payload's header arrives.
    on_header: Callable[[Payload], None]
    #: Called at the receiver when a payload's last byte arrives.
    on_payload_end: Callable[[Payload], None]
    #: Called at the sender when a payload's last byte has left.
    on_sent: Callable[[Payload], None]
    queue: deque[Item] = field(factory=deque)
    flow: Flow | None = None
    #: When the wire is free for the next control frame.
    wire_free: float = 0.0
    closed: bool = False

    @property
    def latency(self) -> float:
        """One-way latency between the two hosts (the mean of theirs)."""
        return (self.src.latency + self.dst.latency) / 2

    def send(self, item: Item) -> None:
        """Queue ``item`` (dropped if the stream is closed)."""
        if self.closed:
            return
        self.queue.append(item)
        if self.flow is None:
            self.pump()

    def pump(self) -> None:
        """Put queued items on the wire until a payload occupies it."""
        net = self.network
        sim = net.sim
        while self.queue and self.flow is None and not self.closed:
            item = self.queue.popleft()
            now = sim.now
            speed = min(self.src.up, self.dst.down)
            if isinstance(item, Frame):
                t = max(now, self.wire_free) + item.size * net.overhead / speed
                self.wire_free = t
                sim.call_at(t + self.latency, self._deliver_frame, item)
            else:
                t = max(now, self.wire_free) + item.header * net.overhead / speed
                sim.call_at(t + self.latency, self._deliver_header, item)
                net.start_flow(self, item)

    def _deliver_frame(self, item: Frame) -> None:
        if not self.closed:
            self.on_frame(item)

    def _deliver_header(self, item: Payload) -> None:
        if not self.closed:
            self.on_header(item)

    def _deliver_end(self, item: Payload) -> None:
        if not self.closed:
            self.on_payload_end(item)

    def flow_done(self, flow: Flow) -> None:
        """The payload's last byte left the sender."""
        self.flow = None
        now = self.network.sim.now
        self.wire_free = now
        self.network.sim.call_at(now + self.latency, self._deliver_end, flow.item)
        self.on_sent(flow.item)
        self.pump()

    def close(self) -> None:
        """Drop everything queued or in flight on this stream."""
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        if self.flow is not None:
            self.network.stop_flow(self.flow)
            self.flow = None


class Network:
    """Every host and active flow; max-min fair rates by progressive filling."""

    def __init__(self, sim: Simulation, overhead: float = 1.0, rate_quantum: float = 0.0) -> None:
        self.sim = sim
        self.overhead = overhead
        self.rate_quantum = rate_quantum
        self.hosts: list[Host] = []
        self.flows: dict[int, Flow] = {}
        self._ids = itertools.count()
        #: (finish, seq, flow, version) of flows; stale entries are skipped.
        self._finish: list[tuple[float, int, Flow, int]] = []
        #: current sum of flow rates on each link (host index x 2 + 0 up / 1 down).
        self._load: list[float] = []
        #: since when each link has carried ``_load`` (its bytes before are in ``carried``).
        self._load_since: list[float] = []
        #: wire bytes each link carried in each second of simulated time (indexed as
        #: ``_load``; ``carried[link][s]`` is what crossed from s to s + 1).
        self.carried: list[list[float]] = []
        self.dirty = False
        self._last_reflow = -math.inf
        self._reflow_timer: Timer | None = None
        self.reflows = 0

    def add_host(self, name: str, up: float, down: float, latency: float = 0.001) -> Host:
        """A new host."""
        host = Host(name, up, down, latency, index=len(self.hosts))
        self.hosts.append(host)
        self._load.extend((0.0, 0.0))
        self._load_since.extend((self.sim.now, self.sim.now))
        self.carried.extend(([], []))
        return host

    def stream(
        self,
        src: Host,
        dst: Host,
        *,
        on_frame: Callable[[Frame], None],
        on_header: Callable[[Payload], None],
        on_payload_end: Callable[[Payload], None],
        on_sent: Callable[[Payload], None],
    ) -> Stream:
        """A new stream from ``src`` to ``dst`` with its receiver's and sender's callbacks."""
        return Stream(self, src, dst, on_frame, on_header, on_payload_end, on_sent)

    # -- flows -------------------------------------------------------------------

    def start_flow(self, stream: Stream, item: Payload) -> Flow:
        """A payload starts crossing: it joins the fair share."""
        size = (item.header + item.length) * self.overhead
        flow = Flow(stream, item, size, size, since=self.sim.now)
        stream.flow = flow
        self.flows[id(flow)] = flow
        if self.rate_quantum > 0 and self.sim.now < self._last_reflow + self.rate_quantum:
            # Until the next recompute: whatever is left over on both links.
            up, down = 2 * stream.src.index, 2 * stream.dst.index + 1
            rate = min(stream.src.up - self._load[up], stream.dst.down - self._load[down])
            rate = max(rate, 0.0)
            self._set_rate(flow, rate)
            self._schedule_reflow()
        else:
            self.dirty = True
        return flow

    def _credit_link(self, link: int, now: float) -> None:
        """Credit what ``link`` carried at its current load until ``now`` to ``carried``."""
        since = self._load_since[link]
        if now > since:
            load = self._load[link]
            if load > 0:
                _credit(self.carried[link], since, now, load)
            self._load_since[link] = now

    def settle(self) -> None:
        """Bring ``carried`` up to now for every link (before reading it)."""
        now = self.sim.now
        for link in range(len(self._load)):
            self._credit_link(link, now)

    def _set_rate(self, flow: Flow, rate: float) -> None:
        now = self.sim.now
        flow.left = flow.left_at(now)
        flow.since = now
        up, down = 2 * flow.stream.src.index, 2 * flow.stream.dst.index + 1
        self._credit_link(up, now)
        self._credit_link(down, now)
        self._load[up] += rate - flow.rate
        self._load[down] += rate - flow.rate
        flow.rate = rate
        flow.version += 1
        flow.finish = now + flow.left / rate if rate > 0 else math.inf
        if flow.finish < math.inf:
            heapq.heappush(self._finish, (flow.finish, next(self._ids), flow, flow.version))

    def _remove(self, flow: Flow) -> None:
        now = self.sim.now
        flow.left = flow.left_at(now)
        flow.since = now
        sent = flow.total - flow.left
        flow.stream.src.payload_sent += (
            sent / self.overhead * flow.item.length / (flow.item.length + flow.item.header)
        )
        up, down = 2 * flow.stream.src.index, 2 * flow.stream.dst.index + 1
        self._credit_link(up, now)
        self._credit_link(down, now)
        self._load[up] -= flow.rate
        self._load[down] -= flow.rate
        flow.active = False
        flow.version += 1
        del self.flows[id(flow)]
        if self.rate_quantum > 0 and now < self._last_reflow + self.rate_quantum:
            self._schedule_reflow()
        else:
            self.dirty = True

    def stop_flow(self, flow: Flow) -> None:
        """A flow ends early (its connection closed)."""
        if flow.active:
            self._remove(flow)

    def _schedule_reflow(self) -> None:
        if self._reflow_timer is None:
            self._reflow_timer = self.sim.call_at(
                self._last_reflow + self.rate_quantum, self._timed_reflow
            )

    def _timed_reflow(self) -> None:
        self._reflow_timer = None
        self.dirty = True

    def next_finish(self) -> float:
        """When the next flow finishes (inf if none); drops stale heap entries."""
        heap = self._finish
        while heap:
            _, _, flow, version = heap[0]
            if flow.active and flow.version == version:
                return heap[0][0]
            heapq.heappop(heap)
        return math.inf

    def finish_next(self) -> None:
        """Complete the flow that finishes now (call after next_finish)."""
        _, _, flow, _ = heapq.heappop(self._finish)
        self._remove(flow)
        flow.stream.flow_done(flow)

    # -- rates -------------------------------------------------------------------

    def reflow(self) -> None:
        """Max-min fair rates for every active flow (progressive filling)."""
        self.dirty = False
        self._last_reflow = self.sim.now
        self.reflows += 1
        if self._reflow_timer is not None:
            self._reflow_timer.cancel()
            self._reflow_timer = None
        flows = list(self.flows.values())
        rates = water_fill(
            [(2 * f.stream.src.index, 2 * f.stream.dst.index + 1) for f in flows],
            [c for h in self.hosts for c in (h.up, h.down)],
        )
        now = self.sim.now
        self.settle()
        load = [0.0] * len(self._load)
        heap = self._finish
        push = heapq.heappush
        ids = self._ids
        for f, r in zip(flows, rates, strict=True):
            stream = f.stream
            load[2 * stream.src.index] += r
            load[2 * stream.dst.index + 1] += r
            if r == f.rate:
                # Same rate, same finish: its heap entry stays valid.
                continue
            f.left = f.left_at(now)
            f.since = now
            f.rate = r
            f.version += 1
            f.finish = now + f.left / r if r > 0 else math.inf
            if f.finish < math.inf:
                push(heap, (f.finish, next(ids), f, f.version))
        self._load = load
        if len(heap) > 4 * len(flows) + 64:
            # Mostly stale entries: rebuild from the live flows.
            self._finish = [
                (f.finish, next(ids), f, f.version) for f in flows if f.finish < math.inf
            ]
            heapq.heapify(self._finish)


def _credit(seconds: list[float], start: float, end: float, rate: float) -> None:
    """Add ``rate`` bytes/s from ``start`` to ``end`` to the per-second totals ``seconds``."""
    first, last = int(start), int(end)
    if len(seconds) <= last:
        seconds.extend([0.0] * (last + 1 - len(seconds)))
    if first == last:
        seconds[first] += rate * (end - start)
        return
    seconds[first] += rate * (first + 1 - start)
    for s in range(first + 1, last):
        seconds[s] += rate
    seconds[last] += rate * (end - last)


def water_fill(flows: list[tuple[int, int]], capacity: list[float]) -> list[float]:
    """
    Max-min fair rates of ``flows`` (each the pair of links it crosses) on links of
    ``capacity``: progressive filling, O((flows + links) log links).

    The link whose equal share (capacity left / unfixed flows) is smallest is the
    bottleneck of all its unfixed flows: they get that share, which is taken from the
    other link of each; repeat.  Fixing a flow at the smallest share never lowers the
    share of its other link ((left - s) / (n - 1) >= left / n when s <= left / n), so a
    link's heap entry is at most its share: an entry found stale is pushed again at
    the link's share when it comes up, not on every change (a third fewer heap
    operations, the same rates).
    """
    n_links = len(capacity)
    left = list(capacity)
    count = [0] * n_links
    #: per link: (flow, its other link) of every flow crossing it.
    members: list[list[tuple[int, int]]] = [[] for _ in range(n_links)]
    for i, (a, b) in enumerate(flows):
        count[a] += 1
        count[b] += 1
        members[a].append((i, b))
        members[b].append((i, a))
    heap = [(left[k] / c, k) for k, c in enumerate(count) if c]
    heapq.heapify(heap)
    rates = [-1.0] * len(flows)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        share, k = pop(heap)
        c = count[k]
        if not c:
            continue
        current = left[k] / c
        if share != current:
            push(heap, (current, k))
            continue
        for i, other in members[k]:
            if rates[i] >= 0:
                continue
            rates[i] = share
            rest = left[other] - share
            left[other] = rest if rest > 0.0 else 0.0
            count[other] -= 1
        count[k] = 0
    return rates


class Simulation:
    """Simulated time, timers and the network; :meth:`run` processes events in order."""

    def __init__(self, overhead: float = 1.0, rate_quantum: float = 0.0) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.network = Network(self, overhead, rate_quantum)
        self.events = 0

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` at ``when`` (not before now)."""
        timer = Timer(max(when, self.now), fn, args)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` ``delay`` seconds from now."""
        return self.call_at(self.now + delay, fn, *args)

    def run(self, until: float = math.inf, stop: Callable[[], bool] | None = None) -> None:
        """Process events until none is left, ``until`` is reached or ``stop()`` is true."""
        net = self.network
        timers = self._timers
        while stop is None or not stop():
            if net.dirty:
                net.reflow()
            t_flow = net.next_finish()
            t_timer = timers[0][0] if timers else math.inf
            t = min(t_flow, t_timer)
            if t == math.inf or t > until:
                break
            self.now = t
            self.events += 1
            if t_flow <= t_timer:
                net.finish_next()
            else:
                _, _, timer = heapq.heappop(timers)
                if not timer.cancelled:
                    timer.fn(*timer.args)
