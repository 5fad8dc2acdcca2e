"""Loading configuration files: YAML strictness, empty files, errors naming the file."""

from __future__ import annotations

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from kraken.config import ConfigError, load_config, read_yaml


class LoadConfigTests(SynchronousTestCase):
    """load_config reads files."""

    def write(self, text: str | bytes) -> str:
        """A temporary file holding ``text``; its path."""
        path = FilePath(self.mktemp())
        path.setContent(text.encode() if isinstance(text, str) else text)
        return str(path.path)

    def test_file(self) -> None:
        """Keys in the file are applied."""
        path = self.write(
            "hashring:\n  max_replica: 2\nserver:\n  listen: tcp:1:interface=::1\n"
            "  advertise: o1:1\n"
        )
        config = load_config("origin", path)
        self.assertEqual(config.hashring.max_replica, 2)
        self.assertEqual(config.server.advertised(), "o1:1")

    def test_path_like(self) -> None:
        """A path-like object works too."""
        path = FilePath(self.write("announce_interval: 1s\n"))
        self.assertEqual(load_config("tracker", path).announce_interval, 1.0)

    def test_empty_file_is_defaults(self) -> None:
        """An empty file, or one with only comments, gives the defaults."""
        for text in ["", "\n", "# nothing yet\n", "---\n"]:
            self.assertEqual(load_config("proxy", self.write(text)), load_config("proxy", None))

    def test_errors_name_the_file(self) -> None:
        """Each problem line starts with the file's path; problems stay without it."""
        path = self.write("hashring:\n  max_replica: x\n")
        with self.assertRaises(ConfigError) as raised:
            load_config("origin", path)
        problem = 'origin.hashring.max_replica: expected a positive integer, got "x"'
        self.assertEqual(raised.exception.problems, (problem,))
        self.assertEqual(raised.exception.source, path)
        self.assertEqual(str(raised.exception), f"{path}: {problem}")

    def test_not_a_mapping(self) -> None:
        """A file holding a list is refused."""
        with self.assertRaises(ConfigError) as raised:
            load_config("agent", self.write("- a\n- b\n"))
        self.assertEqual(
            raised.exception.problems, ("agent: expected a mapping of settings, got a list",)
        )

    def test_missing_file(self) -> None:
        """A missing file is a ConfigError naming it."""
        path = self.mktemp()
        with self.assertRaises(ConfigError) as raised:
            load_config("agent", path)
        self.assertEqual(raised.exception.source, path)
        self.assertIn("cannot read the configuration", raised.exception.problems[0])
        self.assertIn("No such file", raised.exception.problems[0])

    def test_not_utf8(self) -> None:
        """Undecodable bytes are a ConfigError."""
        with self.assertRaises(ConfigError) as raised:
            load_config("agent", self.write(b"data_dir: \xff\n"))
        self.assertIn("cannot read the configuration", raised.exception.problems[0])


class ReadYamlTests(SynchronousTestCase):
    """The strict YAML reader."""

    def test_syntax_error_has_position(self) -> None:
        """A syntax error says where."""
        with self.assertRaises(ConfigError) as raised:
            read_yaml("a: [1, 2\nb: 3\n")
        (problem,) = raised.exception.problems
        self.assertTrue(problem.startswith("invalid YAML: "), problem)
        self.assertIn("at line 2, column 2", problem)

    def test_duplicate_key(self) -> None:
        """A key repeated in one mapping is refused with its line."""
        with self.assertRaises(ConfigError) as raised:
            read_yaml("cleanup:\n  tti: 1h\n  tti: 2h\n")
        self.assertEqual(
            raised.exception.problems, ('invalid YAML: duplicate key "tti" at line 3, column 3',)
        )

    def test_merge_keys_allowed(self) -> None:
        """YAML merge keys may be overridden by explicit keys (not a duplicate)."""
        data = read_yaml("base: &b {fails: 3, passes: 2}\nhc:\n  <<: *b\n  fails: 5\n")
        self.assertEqual(data, {"base": {"fails": 3, "passes": 2}, "hc": {"fails": 5, "passes": 2}})

    def test_unsafe_tags_refused(self) -> None:
        """Python object tags are not constructed."""
        with self.assertRaises(ConfigError):
            read_yaml("x: !!python/object/apply:os.system ['true']\n")

    def test_several_documents_refused(self) -> None:
        """A file holds one document."""
        with self.assertRaises(ConfigError):
            read_yaml("a: 1\n---\nb: 2\n")
