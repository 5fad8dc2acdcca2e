"""Tests for kraken.backends.names: the grammar that keeps names safe as paths and keys."""

from __future__ import annotations

import os
import posixpath

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.backends.interface import InvalidName
from kraken.backends.names import (
    BlobName,
    TagName,
    check_limit,
    check_list_arguments,
    check_namespace,
    check_prefix,
    name_error,
    parse_name,
)
from tests.backends.base import BAD_NAMES, BAD_NAMESPACES, BAD_PREFIXES

segments = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
repos = st.lists(segments, min_size=1, max_size=4).map("/".join)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,30}", fullmatch=True)
hexes = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


class ParseNameTests(SynchronousTestCase):
    """parse_name accepts exactly blob hex and repo:tag."""

    def test_blob(self) -> None:
        """64 lowercase hex is a blob name."""
        self.assertEqual(parse_name("ab" * 32), BlobName("ab" * 32))

    def test_tag(self) -> None:
        """repo/name:tag splits at the colon into repository and tag."""
        parsed = parse_name("library/alpine:3.19")
        self.assertEqual(parsed, TagName("library/alpine", "3.19"))
        assert isinstance(parsed, TagName)
        self.assertEqual(parsed.repo_segments, ("library", "alpine"))

    def test_bad_names(self) -> None:
        """Every name of the shared bad list is refused, with the name in the message."""
        for name in BAD_NAMES:
            with self.assertRaises(InvalidName) as raised:
                parse_name(name)
            self.assertIn(repr(name), str(raised.exception))

    def test_digest_form_refused(self) -> None:
        """sha256:<hex> is refused with a hint to pass the bare hex."""
        with self.assertRaises(InvalidName) as raised:
            parse_name("sha256:" + "a" * 64)
        self.assertIn("bare hex", str(raised.exception))

    def test_not_a_string(self) -> None:
        """Bytes and other non-strings are refused, not coerced."""
        for value in [b"a:b", None, 3]:
            self.assertRaises(InvalidName, parse_name, value)

    @given(hexes)
    def test_blob_round_trip(self, hex_: str) -> None:
        """Any 64-hex string parses to a blob whose str is the same string."""
        self.assertEqual(str(parse_name(hex_)), hex_)

    @given(repos, tags)
    def test_tag_round_trip(self, repo: str, tag: str) -> None:
        """Any valid repo and tag parse back to themselves."""
        name = f"{repo}:{tag}"
        parsed = parse_name(name)
        self.assertEqual(parsed, TagName(repo, tag))
        self.assertEqual(str(parsed), name)

    @given(st.text(max_size=80))
    def test_accepted_names_are_safe_paths(self, name: str) -> None:
        """Whatever text is accepted, its segments stay below a root when joined as a path."""
        try:
            parsed = parse_name(name)
        except InvalidName:
            return
        parts = (
            [parsed.hex] if isinstance(parsed, BlobName) else [*parsed.repo_segments, parsed.tag]
        )
        for part in parts:
            self.assertNotIn(part, ("", ".", ".."))
            self.assertNotIn("/", part)
            self.assertNotIn("\0", part)
            self.assertFalse(part.startswith("."))
        joined = posixpath.normpath(posixpath.join("/root", *parts))
        self.assertTrue(joined.startswith("/root/"), joined)
        self.assertEqual(os.path.basename(joined), parts[-1])


class NamespaceTests(SynchronousTestCase):
    """check_namespace accepts printable ASCII without spaces."""

    def test_good(self) -> None:
        """Repositories, whole tags and the noop namespace are namespaces."""
        for namespace in ["library/alpine", "library/alpine:3.19", "__noop__", "TODO"]:
            self.assertEqual(check_namespace(namespace), namespace)

    def test_bad(self) -> None:
        """Empty, spaced, control characters, non-ASCII and overlong namespaces are refused."""
        for namespace in BAD_NAMESPACES:
            self.assertRaises(InvalidName, check_namespace, namespace)


class PrefixTests(SynchronousTestCase):
    """check_prefix accepts what some valid name could start with."""

    def test_good(self) -> None:
        """Partial hex, partial repositories, repo: and partial tags are prefixes."""
        for prefix in ["", "a", "ab" * 32, "library", "library/", "library/al", "lib:", "a:b"]:
            self.assertEqual(check_prefix(prefix), prefix)

    def test_bad(self) -> None:
        """Every prefix of the shared bad list is refused."""
        for prefix in BAD_PREFIXES:
            self.assertRaises(InvalidName, check_prefix, prefix)

    @given(repos, tags, st.integers(min_value=0, max_value=200))
    def test_every_prefix_of_a_name_is_valid(self, repo: str, tag: str, cut: int) -> None:
        """Any leading part of a valid tag name is a valid prefix."""
        name = f"{repo}:{tag}"
        check_prefix(name[:cut])

    @given(hexes, st.integers(min_value=0, max_value=64))
    def test_every_prefix_of_a_blob_is_valid(self, hex_: str, cut: int) -> None:
        """Any leading part of a blob name is a valid prefix."""
        check_prefix(hex_[:cut])


class LimitTests(SynchronousTestCase):
    """check_limit bounds page sizes."""

    def test_limits(self) -> None:
        """1..1000 pass; 0, negatives, too large, booleans and non-integers fail."""
        self.assertEqual(check_limit(1), 1)
        self.assertEqual(check_limit(1000), 1000)
        for bad in [0, -5, 1001, True, 2.0, "3", None]:
            self.assertRaises(InvalidName, check_limit, bad)


class ListArgumentsTests(SynchronousTestCase):
    """check_list_arguments checks a list call's prefix and its limit."""

    def test_valid_arguments_pass(self) -> None:
        """A valid prefix with a valid limit raises nothing."""
        check_list_arguments("", 1)
        check_list_arguments("repo/app:", 1000)

    def test_bad_prefix_or_limit_fails(self) -> None:
        """A bad prefix with a good limit, and a good prefix with a bad limit, both fail."""
        for prefix in BAD_PREFIXES:
            self.assertRaises(InvalidName, check_list_arguments, prefix, 10)
        for limit in [0, 1001, True, "3"]:
            self.assertRaises(InvalidName, check_list_arguments, "", limit)


class NameErrorTests(SynchronousTestCase):
    """name_error answers, without raising, what checking a namespace and a name raises."""

    def test_valid_names(self) -> None:
        """A valid namespace and name: None."""
        self.assertIsNone(name_error("library/alpine", "ab" * 32))
        self.assertIsNone(name_error("library/alpine", "library/alpine:3.19"))

    def test_bad_names(self) -> None:
        """A bad namespace, or a bad name: the InvalidName the checks raise."""
        for namespace in BAD_NAMESPACES:
            self.assertIsInstance(name_error(namespace, "ab" * 32), InvalidName)
        for name in BAD_NAMES:
            self.assertIsInstance(name_error("library/alpine", name), InvalidName)
