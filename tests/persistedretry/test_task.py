"""Tests for the values of the retry queue: :class:`Task` and :class:`Backoff`."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kraken.persistedretry.task import (
    MAX_KEY_LENGTH,
    Backoff,
    InvalidTask,
    Task,
    decode_payload,
    encode_payload,
)


def make_task(**kw: object) -> Task:
    """A valid task with ``kw`` overriding its fields."""
    fields: dict[str, object] = {
        "kind": "writeback",
        "key": "ns/" + "a" * 64,
        "payload": {"namespace": "ns"},
        "created_at": 1.0,
        "next_attempt_at": 2.0,
    }
    fields.update(kw)
    return Task(**fields)  # type: ignore[arg-type]


class TaskTests(SynchronousTestCase):
    """Validation and copying of :class:`Task`."""

    def test_payload_is_copied(self) -> None:
        """Mutating the caller's dict after making a task does not change the task."""
        payload: dict[str, object] = {"deps": ["a"]}
        task = make_task(payload=payload)
        payload["deps"].append("b")  # type: ignore[attr-defined]
        payload["new"] = 1
        self.assertEqual(task.payload, {"deps": ["a"]})

    def test_payload_must_be_json(self) -> None:
        """A payload that JSON cannot encode is refused with InvalidTask."""
        self.assertRaises(InvalidTask, make_task, payload={"x": object()})
        self.assertRaises(InvalidTask, make_task, payload={"x": float("nan")})
        self.assertRaises(InvalidTask, make_task, payload=["not", "an", "object"])

    def test_bad_names(self) -> None:
        """Empty, non-string, NUL-containing and over-long kinds and keys are refused."""
        for bad in ("", None, 3, "a\x00b", "k" * (MAX_KEY_LENGTH + 1)):
            self.assertRaises(InvalidTask, make_task, key=bad)
        self.assertRaises(InvalidTask, make_task, kind="")
        self.assertRaises(InvalidTask, make_task, kind="k" * 65)
        self.assertEqual(make_task(key="k" * MAX_KEY_LENGTH).key, "k" * MAX_KEY_LENGTH)

    def test_bad_numbers(self) -> None:
        """Non-finite or non-numeric times and negative attempt counts are refused."""
        self.assertRaises(InvalidTask, make_task, created_at=float("inf"))
        self.assertRaises(InvalidTask, make_task, next_attempt_at="soon")
        self.assertRaises(InvalidTask, make_task, next_attempt_at=True)
        self.assertRaises(InvalidTask, make_task, attempts=-1)
        self.assertRaises(InvalidTask, make_task, attempts=1.5)

    def test_id(self) -> None:
        """``id`` is the (kind, key) pair."""
        self.assertEqual(make_task(kind="k", key="x").id, ("k", "x"))

    def test_payload_round_trip(self) -> None:
        """encode_payload is canonical and decode_payload inverts it; non-objects fail."""
        text = encode_payload({"b": 1, "a": [1, "x"]})
        self.assertEqual(text, '{"a":[1,"x"],"b":1}')
        self.assertEqual(decode_payload(text), {"a": [1, "x"], "b": 1})
        self.assertRaises(ValueError, decode_payload, "[1]")
        self.assertRaises(ValueError, decode_payload, "{nope")


class BackoffTests(SynchronousTestCase):
    """The delays of :class:`Backoff`."""

    def test_exponential_then_capped(self) -> None:
        """Without jitter the waits are initial * multiplier**(n-1), capped at maximum."""
        backoff = Backoff(initial=0.5, multiplier=3, maximum=10, jitter=0)
        self.assertEqual(
            [backoff.delay(n, lambda: 0.99) for n in range(1, 6)], [0.5, 1.5, 4.5, 10, 10]
        )

    def test_huge_attempt_counts(self) -> None:
        """A task that failed a million times waits the maximum, with no overflow."""
        backoff = Backoff(initial=1, multiplier=2, maximum=300, jitter=0)
        self.assertEqual(backoff.ceiling(1_000_000), 300)
        self.assertEqual(Backoff(multiplier=1, initial=2).ceiling(10**9), 2)

    def test_jitter_only_shortens(self) -> None:
        """Jitter takes up to ``jitter`` of the wait away and never adds to it."""
        backoff = Backoff(initial=10, multiplier=2, maximum=100, jitter=0.2)
        self.assertEqual(backoff.delay(1, lambda: 0.0), 10)
        self.assertAlmostEqual(backoff.delay(1, lambda: 0.5), 9.0)
        self.assertAlmostEqual(backoff.delay(10, lambda: 0.999999), 80.00002, places=4)
        self.assertLessEqual(backoff.delay(10, lambda: 0.0), 100)

    def test_bad_parameters(self) -> None:
        """Zero or negative times, multipliers below 1 and jitter outside [0, 1) fail."""
        self.assertRaises(ValueError, Backoff, initial=0)
        self.assertRaises(ValueError, Backoff, maximum=-1)
        self.assertRaises(ValueError, Backoff, multiplier=0.5)
        self.assertRaises(ValueError, Backoff, jitter=1)
        self.assertRaises(ValueError, Backoff, initial=float("inf"))
