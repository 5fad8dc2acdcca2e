"""The reference in docs/configuration.md is complete and matches the code."""

from __future__ import annotations

import io
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from kraken.config import CONFIG_CLASSES
from kraken.config.reference import BEGIN, END, main, render, rows, update_document
from kraken.config.structure import DOC, field_types, is_config_class

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def section_classes() -> set[type]:
    """Every config class reachable from the daemon classes."""
    seen: set[type] = set()
    todo = list(CONFIG_CLASSES.values())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for tp in field_types(cls).values():
            for candidate in (tp, *getattr(tp, "__args__", ())):
                if is_config_class(candidate):
                    todo.append(candidate)
    return seen


class ReferenceTests(SynchronousTestCase):
    """The generated reference."""

    def test_document_up_to_date(self) -> None:
        """docs/configuration.md holds exactly what the generator makes from the classes."""
        self.assertEqual(main(["--check", str(DOCUMENT)]), 0)

    def test_check_detects_drift(self) -> None:
        """The check fails on a stale document (so the test above can fail)."""
        stale = Path(self.mktemp())
        stale.write_text(f"intro\n{BEGIN}\nold table\n{END}\n", encoding="utf-8")
        out = io.StringIO()
        self.assertEqual(main(["--check", str(stale)], out), 1)
        self.assertEqual(out.getvalue(), f"{stale}: the configuration reference is out of date\n")
        self.assertEqual(main([str(stale)], out), 0)
        self.assertEqual(main(["--check", str(stale)], out), 0)
        self.assertTrue(
            stale.read_text(encoding="utf-8").startswith(f"intro\n{BEGIN}\n\n### agent")
        )

    def test_every_field_documented(self) -> None:
        """Every field of every config class has a doc string."""
        for cls in section_classes():
            for field in attrs.fields(cls):
                self.assertTrue(field.metadata.get(DOC), f"{cls.__name__}.{field.name}")

    def test_every_key_listed(self) -> None:
        """Each daemon's table lists its nested keys with their defaults."""
        keys = {row[0] for row in rows(CONFIG_CLASSES["origin"], CONFIG_CLASSES["origin"]())}
        for key in [
            "`hashring.max_replica`",
            "`scheduler.bandwidth.enabled`",
            "`backends`",
            "`backends[].namespace`",
            "`cluster.static`",
            "`tls.passphrase_file`",
        ]:
            self.assertIn(key, keys)
        text = render()
        self.assertIn("| `hashring.max_replica` | integer > 0 | `3` |", text)
        self.assertIn("| `scheduler.bandwidth.enabled` | boolean | `false` |", text)
        self.assertIn("| `cleanup.ttl` | duration | `24h` |", text)
        self.assertIn(
            "| `tracker.hosts.static` | list of host:port or null | `[127.0.0.1:15003]` |", text
        )

    def test_update_keeps_surroundings(self) -> None:
        """Only the text between the markers changes."""
        updated = update_document(f"before\n{BEGIN}\nx\n{END}\nafter\n")
        self.assertTrue(updated.startswith(f"before\n{BEGIN}\n"))
        self.assertTrue(updated.endswith(f"{END}\nafter\n"))
