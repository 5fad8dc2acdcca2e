"""
Token buckets that shape a node's egress and ingress in chunks.

The driver asks before each chunk how long to wait: ``delay =
bucket.reserve(n)``.  The bytes are taken at once (the bucket may go into
debt), so the caller sends or reads now if the delay is 0 and otherwise after
the delay; this never reserves a whole piece up front (the Go limiter does,
which stalls every other connection behind a big piece).

A chunk is about :data:`CHUNK_SECONDS` of the bucket's rate, between
:data:`MIN_CHUNK` and :data:`MAX_CHUNK` bytes (:attr:`TokenBucket.chunk`):
small enough to shape a slow link smoothly, large enough that a fast one is not
moved in thousands of system calls and limiter trips a second (the agents'
default 300 MiB/s in 64 KiB steps: ``bench.pair --agent-limits``, downloader
2.75-3.04 CPU s/GB against 2.13-2.78 in 1 MiB steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from attrs import define, field

#: Bytes moved per limiter trip at most (a fast limit) ...
MAX_CHUNK: Final = 1024 * 1024
#: ... and at least (a slow one).
MIN_CHUNK: Final = 16 * 1024
#: A chunk is about this long at the limited rate.
CHUNK_SECONDS: Final = 0.01


@define
class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes (default one second's worth)."""

    rate: float
    now: Callable[[], float]
    burst: float = field(default=0.0)
    _tokens: float = field(init=False, default=0.0)
    _stamp: float = field(init=False, default=0.0)
    #: Bytes to move per :meth:`reserve`: ~10 ms of the rate, within the bounds above
    #: (worked out once: the driver asks for it on every socket read and write).
    chunk: int = field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"bandwidth rate {self.rate} must be positive")
        self.chunk = int(min(MAX_CHUNK, max(MIN_CHUNK, self.rate * CHUNK_SECONDS)))
        if self.burst <= 0:
            self.burst = max(self.rate, float(self.chunk))
        self._tokens = self.burst
        self._stamp = self.now()

    def _refill(self) -> None:
        t = self.now()
        if t > self._stamp:
            self._tokens = min(self.burst, self._tokens + (t - self._stamp) * self.rate)
        self._stamp = max(self._stamp, t)

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes; seconds the caller must wait before moving them."""
        if n < 0:
            raise ValueError(f"cannot reserve {n} bytes")
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def available(self) -> float:
        """Bytes that could move now without waiting (negative when in debt)."""
        self._refill()
        return self._tokens


@define
class BandwidthLimiter:
    """Egress and ingress buckets of one node; ``None`` means unlimited."""

    egress: TokenBucket | None = None
    ingress: TokenBucket | None = None

    @classmethod
    def of(
        cls,
        now: Callable[[], float],
        egress_bytes_per_s: float | None = None,
        ingress_bytes_per_s: float | None = None,
    ) -> BandwidthLimiter:
        """Buckets for the given rates (None or 0: unlimited)."""
        return cls(
            TokenBucket(egress_bytes_per_s, now) if egress_bytes_per_s else None,
            TokenBucket(ingress_bytes_per_s, now) if ingress_bytes_per_s else None,
        )

    def send_delay(self, n: int) -> float:
        """Seconds to wait before sending the next ``n`` bytes (0 when unlimited)."""
        return self.egress.reserve(n) if self.egress is not None else 0.0

    def receive_delay(self, n: int) -> float:
        """Seconds to pause reading after ``n`` bytes were read (0 when unlimited)."""
        return self.ingress.reserve(n) if self.ingress is not None else 0.0

    def send_chunk(self, unlimited: int) -> int:
        """Bytes to send per step: the egress bucket's chunk, ``unlimited`` without one."""
        return self.egress.chunk if self.egress is not None else unlimited

    def receive_chunk(self, unlimited: int) -> int:
        """Bytes to read per step: the ingress bucket's chunk, ``unlimited`` without one."""
        return self.ingress.chunk if self.ingress is not None else unlimited
