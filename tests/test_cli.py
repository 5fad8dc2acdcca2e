"""Tests for kraken.cli."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

from twisted.trial.unittest import SynchronousTestCase

from kraken.cli import main


class DigestCommandTests(SynchronousTestCase):
    """``kraken digest``."""

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
        return rc, out.getvalue(), err.getvalue()

    def test_digest_and_metainfo(self) -> None:
        """The digest line and the metainfo JSON describe the file's content."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"kraken" * 1000)
        rc, out, _ = self.run_cli("digest", path)
        self.assertEqual(rc, 0)
        self.assertEqual(out, f"sha256:{hashlib.sha256(b'kraken' * 1000).hexdigest()}  {path}\n")
        rc, out, _ = self.run_cli("digest", "--metainfo", path)
        self.assertEqual(json.loads(out)["length"], 6000)

    def test_missing_file(self) -> None:
        """A missing file is reported with exit status 1."""
        rc, _, err = self.run_cli("digest", self.mktemp())
        self.assertEqual(rc, 1)
        self.assertIn("No such file", err)
