"""
A short ``python -m bench.push_loop`` in CI: many small pushes through a three-origin ring.

Separate daemon processes (3 origins with 2 copies of each blob and a shared filesystem
backend, a tracker, a build-index, a proxy, an agent); each round pushes an image through
the proxy as skopeo does (blobs, then the manifest at once) and pulls it back through the
agent.  Before the ring's stat asked every replica, 2 to 5 rounds in 100 of this loop had
their manifest PUT refused with ``MANIFEST_BLOB_UNKNOWN`` naming the layer just pushed (the
proxy asked the replica that had not received it yet): 150 rounds all but never passed.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import tests

#: The checkout holding ``bench/`` and ``kraken/``.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
ROUNDS = 150


class PushLoopTests(TestCase):
    """The loop tool against real daemon processes on 127.0.0.1."""

    timeout = 150

    async def test_no_round_fails(self) -> None:
        """
        Every one of 150 back-to-back rounds answers 201 to each blob and to the manifest,
        and the agent serves the same bytes; no daemon exits.
        """
        out = os.path.abspath(self.mktemp())  # noqa: ASYNC240 - no I/O
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
        argv = ["-m", "bench.push_loop", "--rounds", str(ROUNDS), "--interval", "0"]
        argv += ["--trackers", "1", "--agents", "1", "--pull-agents", "1", "--json", out]
        stdout, stderr, code = await getProcessOutputAndValue(
            sys.executable, argv, env=env, path=CHECKOUT, reactor=reactor
        )
        report = (stdout + stderr).decode("utf-8", "replace")
        self.assertEqual(code, 0, report)
        with open(out) as f:  # noqa: ASYNC230 - a small file the child wrote
            result = json.load(f)
        self.assertEqual((result["rounds"], result["failed_rounds"]), (ROUNDS, 0), report)
        self.assertEqual(result["origins"], 3)
        self.assertEqual(result["replicas"], 2)
