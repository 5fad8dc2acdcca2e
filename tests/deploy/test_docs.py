"""docs/operations.md names only files that exist: deploy/, tests/ and unit names."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.deploy.image import CHECKOUT

OPERATIONS = os.path.join(CHECKOUT, "docs", "operations.md")
#: A repository path in backticks (`deploy/helm/kraken/`, `tests/deploy/`).
REPO_PATH = re.compile(r"`((?:deploy|tests|docs|bench|kraken)/[A-Za-z0-9_./-]*)`")
#: A systemd unit of ours in backticks.
UNIT = re.compile(r"`(kraken-[a-z-]+\.(?:service|socket))`")


class OperationsDocTests(SynchronousTestCase):
    """Every path and unit the operations guide tells an operator to use is in the checkout."""

    def test_named_files_exist(self) -> None:
        """Each backticked repository path and systemd unit in docs/operations.md exists."""
        with open(OPERATIONS) as f:
            text = f.read()
        paths = set(REPO_PATH.findall(text))
        units = set(UNIT.findall(text))
        self.assertIn("deploy/helm/kraken/", paths)  # the pattern finds what it should
        self.assertIn("kraken-agent-registry.socket", units)
        missing = sorted(p for p in paths if not os.path.exists(os.path.join(CHECKOUT, p)))
        missing += sorted(
            u for u in units if not os.path.exists(os.path.join(CHECKOUT, "deploy", "systemd", u))
        )
        self.assertEqual(missing, [])
