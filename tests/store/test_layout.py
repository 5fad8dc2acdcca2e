"""Tests for kraken.store.layout: where entries live, and that names cannot escape the root."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import Digest
from kraken.store import InvalidUploadID
from kraken.store.layout import StoreLayout, check_upload_id


class LayoutTests(SynchronousTestCase):
    """Path arithmetic of StoreLayout."""

    def setUp(self) -> None:
        self.layout = StoreLayout.at("/srv/kraken")

    def test_sharded_paths(self) -> None:
        """Downloads and cache are sharded by the first two pairs of hex digits."""
        d = Digest("abcd" + "0" * 60)
        entry = self.layout.cache(d)
        self.assertEqual(entry.dir, f"/srv/kraken/cache/ab/cd/{d.hex}")
        self.assertEqual(entry.data, f"/srv/kraken/cache/ab/cd/{d.hex}/data")
        self.assertEqual(entry.metainfo, f"{entry.dir}/metainfo")
        self.assertEqual(entry.piece_status, f"{entry.dir}/piece_status")
        self.assertEqual(entry.last_access, f"{entry.dir}/last_access")
        self.assertEqual(entry.persist, f"{entry.dir}/persist")
        self.assertEqual(self.layout.download(d).dir, f"/srv/kraken/download/ab/cd/{d.hex}")

    def test_upload_paths_flat(self) -> None:
        """Uploads are flat by id."""
        self.assertEqual(self.layout.upload("f" * 32).data, f"/srv/kraken/upload/{'f' * 32}/data")

    def test_relative_root_made_absolute(self) -> None:
        """A relative root is fixed at construction, so a later chdir changes nothing."""
        self.assertEqual(StoreLayout.at("rel").root, os.path.join(os.getcwd(), "rel"))

    def test_unknown_states(self) -> None:
        """Unknown states and unsharded states are programming errors."""
        self.assertRaises(ValueError, self.layout.state_dir, "etc")
        self.assertRaises(ValueError, self.layout.sharded, "upload", Digest("0" * 64))
        self.assertRaises(ValueError, self.layout.tmp, "../x")

    @given(st.text(max_size=70))
    def test_upload_ids(self, uid: str) -> None:
        """Only 32 lowercase hex ids are accepted, and their paths stay under the root."""
        try:
            path = self.layout.upload(uid).data
        except InvalidUploadID as e:
            self.assertIn(repr(uid), str(e))
            self.assertFalse(len(uid) == 32 and set(uid) <= set("0123456789abcdef"))
        else:
            self.assertEqual(check_upload_id(uid), uid)
            self.assertEqual(os.path.commonpath([path, "/srv/kraken/upload"]), "/srv/kraken/upload")
            self.assertEqual(os.path.normpath(path), path)

    def test_non_string_upload_id(self) -> None:
        """A non-string id is rejected too."""
        self.assertRaises(InvalidUploadID, check_upload_id, b"a" * 32)
        self.assertRaises(InvalidUploadID, check_upload_id, None)
