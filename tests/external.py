"""
Finding the outside programs some tests need (redis-server, skopeo, ...).

A test that needs one calls :func:`require_program`.  Normally a missing
program skips the test with the reason; with ``KRAKEN_REQUIRE_EXTERNAL=1``
in the environment (CI sets it) a missing program fails the test instead,
so CI can never pass by skipping what it was meant to exercise.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest

REQUIRE_ENV = "KRAKEN_REQUIRE_EXTERNAL"


def external_required() -> bool:
    """Whether a missing outside program must fail rather than skip."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip (or fail under CI) because an outside part is unavailable."""
    if external_required():
        raise AssertionError(f"{reason} (and {REQUIRE_ENV} is set, so this is a failure)")
    raise SkipTest(reason)


def require_program(name: str, *more: str) -> str:
    """Return the path of program ``name`` (or of the first of ``more`` found)."""
    for candidate in (name, *more):
        path = shutil.which(candidate) or next(
            (
                os.path.join(d, candidate)
                for d in ("/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin")
                if os.access(os.path.join(d, candidate), os.X_OK)
            ),
            None,
        )
        if path is not None:
            return path
    missing(f"{name} is not installed")
    raise AssertionError("unreachable")


def require_root() -> None:
    """Skip (or fail under CI) unless running as root."""
    if os.geteuid() != 0:
        missing("needs root")
