"""
A test-only agent that serves corrupt pieces: ``python -m tests.system.corrupt_agent [twist args]``.

It patches the peer protocol's piece-send path in this process only (no production flag
exists for this) so that every piece it uploads has one byte flipped, logs
``corrupted piece <i>`` for each, then runs ``twist`` with the given arguments (e.g.
``--log-format text kraken-agent --config agent.yaml``).  Its own downloads are untouched:
it verifies and stores correct bytes, and lies only to peers.
"""

from __future__ import annotations

import sys
from typing import Any

from kraken.protocols import peer


def _corrupting(original: Any) -> Any:
    def prepare(storage: Any, index: int, zero_copy: bool) -> bytes:
        """Blocking, like the original: the piece's bytes with the middle byte flipped."""
        data = original(storage, index, False)
        if not isinstance(data, bytes | bytearray):  # a file region: read it ourselves
            data = storage.read_piece(index)
        corrupt = bytearray(data)
        corrupt[len(corrupt) // 2] ^= 0xFF
        print(f"corrupted piece {index}", flush=True)
        return bytes(corrupt)

    return prepare


def main() -> None:
    """Patch, then run twist with the remaining arguments."""
    peer._prepare_send = _corrupting(peer._prepare_send)  # type: ignore[attr-defined]
    from twisted.application.twist._twist import Twist

    Twist.main(["twist", *sys.argv[1:]])


if __name__ == "__main__":
    main()
