"""parse_json: every way untrusted bytes fail to be JSON is one InvalidJSON (a ValueError)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kraken.core import InvalidJSON, parse_json


class ParseJSONTests(SynchronousTestCase):
    """What parse_json returns and raises."""

    def test_valid(self) -> None:
        """UTF-8 bytes and text decode to their value."""
        self.assertEqual(parse_json(b'{"a": [1, "\\u00e9"]}'), {"a": [1, "é"]})
        self.assertEqual(parse_json('"x"'), "x")

    def test_malformed_says_where(self) -> None:
        """Malformed JSON names what was parsed and the line and column."""
        with self.assertRaises(InvalidJSON) as caught:
            parse_json(b'{"a": ', "announce body")
        self.assertEqual(
            str(caught.exception), "invalid announce body: Expecting value at line 1 column 7"
        )

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 say so and where."""
        with self.assertRaises(InvalidJSON) as caught:
            parse_json(b'"\xff"')
        self.assertEqual(
            str(caught.exception), "invalid JSON body: not UTF-8 (invalid start byte at byte 1)"
        )

    def test_any_depth(self) -> None:
        """Nesting past the recursion limit (60 KB of ``[``, of ``{"a":``) is InvalidJSON."""
        for deep in (b"[" * 60_000, b'{"a":' * 60_000, "[" * 200_000):
            with self.assertRaises(InvalidJSON) as caught:
                parse_json(deep)
            self.assertIn("nested too deeply", str(caught.exception))
            self.assertIsInstance(caught.exception, ValueError)

    def test_deep_but_parseable(self) -> None:
        """Nesting within the limit still parses: only what cannot be parsed is refused."""
        value = parse_json(b"[" * 100 + b"]" * 100)
        depth = 0
        while value:
            (value,) = value
            depth += 1
        self.assertEqual((depth, value), (99, []))
