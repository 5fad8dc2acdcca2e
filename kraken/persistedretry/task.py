"""
Values of the retry queue: tasks, the backoff policy and the errors callers act on.

A task is named by ``(kind, key)``: the kind selects the executor (``"writeback"``,
``"replicate-tag"``), the key names the work within it (``"<namespace>/<digest hex>"``).
The payload is a JSON object; it is copied through ``json`` when a task is made, so a
task never shares mutable state with its caller and always survives the trip to SQLite.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from typing import Any, Final

from attrs import field, frozen

MAX_KIND_LENGTH: Final = 64
MAX_KEY_LENGTH: Final = 1024
MAX_ERROR_LENGTH: Final = 2000
"""``last_error`` is cut to this many characters before it is stored."""

JSONObject = dict[str, Any]


class PermanentTaskFailure(Exception):
    """
    Raised (or errbacked) by an executor when retrying can never help.

    The queue then deletes the task and logs the reason at error level. Examples: the
    namespace of a write-back is no longer configured, or the blob to write back is
    no longer on disk. Every other exception is transient and the task is retried.
    """


class UnknownTaskKind(ValueError):
    """A task was added for a kind that has no executor in this queue."""


class InvalidTask(ValueError):
    """A kind, key or payload that cannot be stored (empty, too long, not JSON)."""


def _check_name(what: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidTask(f"invalid task {what} {value!r}: expected a non-empty string")
    if len(value) > limit:
        raise InvalidTask(f"invalid task {what} {value[:80]!r}...: longer than {limit} characters")
    if "\x00" in value:
        raise InvalidTask(f"invalid task {what} {value!r}: contains NUL")
    return value


def check_kind(kind: object) -> str:
    """Return ``kind`` if it is a valid task kind, else raise :class:`InvalidTask`."""
    return _check_name("kind", kind, MAX_KIND_LENGTH)


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid task key, else raise :class:`InvalidTask`."""
    return _check_name("key", key, MAX_KEY_LENGTH)


def encode_payload(payload: Mapping[str, Any]) -> str:
    """Canonical JSON text of a payload; raises :class:`InvalidTask` if it is not JSON."""
    if not isinstance(payload, Mapping):
        raise InvalidTask(f"invalid task payload {payload!r}: expected a JSON object")
    try:
        return json.dumps(dict(payload), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidTask(f"invalid task payload {payload!r}: {e}") from e


def decode_payload(text: str) -> JSONObject:
    """Parse stored payload text; raises :class:`ValueError` unless it is a JSON object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"payload is not a JSON object: {text[:80]!r}")
    return value


def _copy_payload(payload: Mapping[str, Any]) -> JSONObject:
    return decode_payload(encode_payload(payload))


def _check_time(what: str) -> Callable[[object, object, float], None]:
    def check(_instance: object, _attribute: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidTask(f"invalid task {what} {value!r}: expected a number")
        if not math.isfinite(value):
            raise InvalidTask(f"invalid task {what} {value!r}: not finite")

    return check


def _check_attempts(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidTask(f"invalid task attempts {value!r}: expected an integer >= 0")


@frozen
class Task:
    """
    One durable unit of work, as stored in the queue.

    Times are seconds on the queue's clock (``IReactorTime.seconds()``, which is
    epoch seconds on a real reactor, so they stay meaningful across restarts).
    ``attempts`` counts finished attempts that failed; an attempt cut short by a
    restart is not counted. ``next_attempt_at`` is when the task may run next: the
    add time plus its delay at first, then the time chosen by the backoff.
    """

    kind: str = field(validator=lambda _i, _a, v: check_kind(v))
    key: str = field(validator=lambda _i, _a, v: check_key(v))
    payload: JSONObject = field(converter=_copy_payload, hash=False)
    created_at: float = field(validator=_check_time("created_at"))
    next_attempt_at: float = field(validator=_check_time("next_attempt_at"))
    attempts: int = field(default=0, validator=_check_attempts)
    last_error: str | None = field(default=None)

    @property
    def id(self) -> tuple[str, str]:
        """The ``(kind, key)`` pair that identifies this task."""
        return (self.kind, self.key)

    def payload_json(self) -> str:
        """The payload as the canonical JSON text that is stored."""
        return encode_payload(self.payload)


@frozen
class CorruptTask:
    """
    A stored row that could not be decoded into a :class:`Task`.

    ``kind`` and ``key`` are ``None`` when even they are unreadable. The queue keeps
    such rows in the database untouched, logs them, and (when the id is readable)
    reports them as pending so that nothing they protect is evicted.
    """

    kind: str | None
    key: str | None
    reason: str


@frozen
class LoadedTasks:
    """What a store holds: the tasks it could decode and the rows it could not."""

    tasks: tuple[Task, ...]
    corrupt: tuple[CorruptTask, ...] = ()


def _positive(_instance: object, attribute: Any, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"backoff {attribute.name} {value!r}: expected a finite number > 0")


def _multiplier(_instance: object, _attribute: object, value: float) -> None:
    if not value >= 1 or not math.isfinite(value):
        raise ValueError(f"backoff multiplier {value!r}: expected a finite number >= 1")


def _jitter(_instance: object, _attribute: object, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"backoff jitter {value!r}: expected 0 <= jitter < 1")


@frozen
class Backoff:
    """
    Exponential backoff with jitter, in seconds.

    After the n-th failed attempt the task waits ``min(maximum, initial *
    multiplier ** (n - 1))`` reduced by a random fraction of up to ``jitter``. The
    jitter only ever shortens the wait, so ``maximum`` is a true bound and tasks
    that all fail at once (backend down) do not all come back in the same instant.
    """

    initial: float = field(default=1.0, validator=_positive)
    multiplier: float = field(default=2.0, validator=_multiplier)
    maximum: float = field(default=300.0, validator=_positive)
    jitter: float = field(default=0.2, validator=_jitter)

    def ceiling(self, attempts: int) -> float:
        """The wait after ``attempts`` failed attempts, before jitter (``attempts >= 1``)."""
        exponent = max(attempts, 1) - 1
        # Cap the exponent so a task that failed for months never overflows a float.
        limit = self.maximum / self.initial
        if self.multiplier == 1 or exponent < math.log(limit, self.multiplier) + 1:
            return min(self.maximum, self.initial * self.multiplier**exponent)
        return self.maximum

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        """The jittered wait after ``attempts`` failed attempts; ``rand`` returns [0, 1)."""
        return self.ceiling(attempts) * (1.0 - self.jitter * rand())
