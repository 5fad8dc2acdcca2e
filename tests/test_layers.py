"""
The rooms of ``kraken/`` import downwards only, as docs/architecture.md draws them.

Each room has a layer; a module may import rooms of lower layers (and its own room),
never a room of its own layer or above, so that no two rooms depend on each other.
The one departure docs/architecture.md names (the build-index's use of the registry
vocabulary in ``kraken/api/distribution.py``) is listed here by module, so that no
other import can slip through behind it.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

import kraken

#: Layers, bottom first; a room imports only rooms of lower layers.
LAYERS: list[set[str]] = [
    {"core", "kraken"},
    {"torrent", "io", "config", "store", "persistedretry", "logs", "metrics"},
    {"http", "mirror", "certs"},
    {"tls", "cluster", "backends"},
    {"peers"},
    {"clients"},
    {"protocols"},
    {"origin", "buildindex"},
    {"api"},
    {"services", "gc"},
    {"embed", "cli"},
]
#: Imports that go up a layer on purpose (see docs/architecture.md, "Departures").
DEPARTURES: set[tuple[str, str]] = {
    ("kraken.buildindex.dependencies", "kraken.api.distribution"),
    ("kraken.buildindex.tags", "kraken.api.distribution"),
    # The herd composes its members through the public embedding API (lazily, at build).
    ("kraken.services.herd", "kraken.embed"),
}

ROOT = os.path.dirname(os.path.abspath(kraken.__file__))


def _room(module: str) -> str:
    parts = module.split(".")
    return "kraken" if len(parts) == 1 else parts[1].removesuffix(".py")


def _layer(room: str) -> int:
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"room {room!r} has no layer: add it to LAYERS and the docs")


def _imports() -> Iterator[tuple[str, str]]:
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
            module = relative.removesuffix(".__init__")
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets = [node.module]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                for target in targets:
                    if target == "kraken" or target.startswith("kraken."):
                        yield module, target


class LayerTests(SynchronousTestCase):
    """No room imports its own layer's neighbours or anything above it."""

    def test_imports_go_down(self) -> None:
        """Every import between rooms goes to a lower layer, or is a named departure."""
        upward = []
        for module, target in _imports():
            source, dest = _room(module), _room(target)
            if source == dest or (module, target) in DEPARTURES:
                continue
            if _layer(dest) >= _layer(source):
                upward.append(f"{module} imports {target}")
        self.assertEqual(upward, [])

    def test_departures_still_exist(self) -> None:
        """A departure that is gone is taken off the list (and out of the docs)."""
        found = set(_imports())
        self.assertEqual(DEPARTURES - found, set())
