"""kraken.torrent is sans-IO: it must not import Twisted."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import kraken

_SCRIPT = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "twisted" or name.startswith("twisted."):
            raise ImportError("kraken.torrent imported " + name)
sys.meta_path.insert(0, Block())
import pkgutil, importlib, kraken.torrent
for mod in pkgutil.iter_modules(kraken.torrent.__path__):
    importlib.import_module("kraken.torrent." + mod.name)
print("ok")
"""


class NoTwistedTests(SynchronousTestCase):
    """Import every module of kraken.torrent with twisted blocked."""

    def test_import_without_twisted(self) -> None:
        """Every kraken.torrent module imports in a process where importing twisted fails."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(kraken.__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=False, env=env
        )
        self.assertEqual(out.stdout.strip(), "ok", out.stderr)
