"""
Decoding JSON that came from outside the process: one error type whatever went wrong.

``json.loads`` fails in three ways on untrusted bytes: :class:`json.JSONDecodeError`
(malformed), :class:`UnicodeDecodeError` (not UTF-8) and :class:`RecursionError` (nested
deeper than the interpreter's recursion limit; 60 KB of ``[`` is enough).  The last is not a
:class:`ValueError`, so callers that catch ``ValueError`` answered it with a 500.
:func:`parse_json` turns all three into :class:`InvalidJSON`, a ``ValueError`` whose message
says what was wrong and where; every API answers it 400.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["InvalidJSON", "parse_json"]


class InvalidJSON(ValueError):
    """Bytes that are not a JSON document (HTTP 400); the message names what and why."""


def parse_json(data: bytes | str, what: str = "JSON body") -> Any:
    """
    The JSON value of UTF-8 ``data``, or :class:`InvalidJSON`: ``invalid <what>: <problem>``.

    Nesting too deep to parse is :class:`InvalidJSON` too, never a :class:`RecursionError`.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise InvalidJSON(f"invalid {what}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidJSON(f"invalid {what}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise InvalidJSON(f"invalid {what}: nested too deeply to parse") from None
