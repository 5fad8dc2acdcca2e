"""
The ``kraken`` command line.

Subcommands are added by the issues that own them (``blob``, ``certs``,
``herd``, ``bench``, ``sim``).  ``kraken digest FILE`` prints a file's digest
and, with ``--metainfo``, the metainfo an origin would generate for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kraken import __version__
from kraken.core import DEFAULT_PIECE_LENGTHS, MetaInfo


def _digest(args: argparse.Namespace) -> int:
    for path in args.files:
        try:
            meta = MetaInfo.from_path(path, DEFAULT_PIECE_LENGTHS)
        except OSError as e:
            print(f"kraken digest: {path}: {e.strerror}", file=sys.stderr)
            return 1
        if args.metainfo:
            print(meta.to_json().decode("ascii"))
        else:
            print(f"{meta.digest}  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="kraken", description=__doc__.splitlines()[1])
    parser.add_argument("--version", action="version", version=f"kraken {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    digest = sub.add_parser("digest", help="print the sha256 digest (or metainfo) of files")
    digest.add_argument("files", nargs="+", metavar="FILE")
    digest.add_argument(
        "--metainfo", action="store_true", help="print the metainfo JSON (default piece lengths)"
    )
    digest.set_defaults(func=_digest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kraken`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
