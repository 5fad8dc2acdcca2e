"""``kraken mirror containerd|docker``: the files that point a runtime at the local agent."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from kraken.cli import main
from kraken.mirror import MirrorError, containerd_hosts_files, docker_daemon_config


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``kraken <argv>``: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def read_toml(path: str) -> dict[str, object]:
    """A TOML file, parsed."""
    with open(path, "rb") as f:
        return tomllib.load(f)


class ContainerdTests(SynchronousTestCase):
    """``kraken mirror containerd`` writes containerd's hosts.toml files."""

    def test_default_mirrors_every_registry(self) -> None:
        """Without --registry one ``_default/hosts.toml`` names the agent for pull and resolve."""
        certs = self.mktemp()
        rc, out, _ = run_cli("mirror", "containerd", "--dir", certs, "--agent", "127.0.0.1:16000")
        self.assertEqual(rc, 0)
        self.assertEqual(os.listdir(certs), ["_default"])
        path = os.path.join(certs, "_default", "hosts.toml")
        self.assertIn(path, out)
        self.assertEqual(
            read_toml(path),
            {"host": {"http://127.0.0.1:16000": {"capabilities": ["pull", "resolve"]}}},
        )
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)

    def test_named_registries(self) -> None:
        """Each --registry gets a directory whose server is that registry (Hub for docker.io)."""
        certs = self.mktemp()
        rc, _, _ = run_cli(
            "mirror",
            "containerd",
            "--dir",
            certs,
            "--agent",
            "10.0.0.5:16000",
            "--registry",
            "docker.io",
            "--registry",
            "registry.example.com:5000",
        )
        self.assertEqual(rc, 0)
        self.assertEqual(sorted(os.listdir(certs)), ["docker.io", "registry.example.com:5000"])
        hub = read_toml(os.path.join(certs, "docker.io", "hosts.toml"))
        self.assertEqual(hub["server"], "https://registry-1.docker.io")
        self.assertEqual(
            hub["host"], {"http://10.0.0.5:16000": {"capabilities": ["pull", "resolve"]}}
        )
        other = read_toml(os.path.join(certs, "registry.example.com:5000", "hosts.toml"))
        self.assertEqual(other["server"], "https://registry.example.com:5000")

    def test_rewrites_in_place(self) -> None:
        """Running it again replaces the file (a moved agent), leaving no temporary files."""
        certs = self.mktemp()
        run_cli("mirror", "containerd", "--dir", certs, "--agent", "127.0.0.1:16000")
        run_cli("mirror", "containerd", "--dir", certs, "--agent", "127.0.0.1:17000")
        directory = os.path.join(certs, "_default")
        self.assertEqual(os.listdir(directory), ["hosts.toml"])
        self.assertIn(
            "http://127.0.0.1:17000", read_toml(os.path.join(directory, "hosts.toml"))["host"]
        )  # type: ignore[operator]

    def test_dry_run_writes_nothing(self) -> None:
        """--dry-run prints the file and leaves the directory alone."""
        certs = self.mktemp()
        rc, out, _ = run_cli("mirror", "containerd", "--dir", certs, "--dry-run")
        self.assertEqual(rc, 0)
        self.assertIn('[host."http://127.0.0.1:16000"]', out)
        self.assertFalse(os.path.exists(certs))

    def test_bad_values(self) -> None:
        """A registry that is no host, or an agent that is no host:port, is refused by name."""
        for argv, named in (
            (["--registry", "evil.io/../x"], "evil.io/../x"),
            (["--registry", 'a"b'], 'a"b'),
            (["--registry", "host:99999"], "host:99999"),
            (["--agent", "127.0.0.1"], "127.0.0.1"),
        ):
            certs = self.mktemp()
            rc, _, err = run_cli("mirror", "containerd", "--dir", certs, *argv)
            self.assertEqual(rc, 1, argv)
            self.assertIn(named, err)
            self.assertFalse(os.path.exists(certs))
        with self.assertRaises(MirrorError):
            containerd_hosts_files("127.0.0.1:16000", ["_default"])


class DockerTests(SynchronousTestCase):
    """``kraken mirror docker`` edits docker's daemon.json."""

    def test_new_file(self) -> None:
        """A missing daemon.json is created with the agent as the only mirror."""
        path = os.path.join(self.mktemp(), "daemon.json")
        rc, _, _ = run_cli("mirror", "docker", "--file", path)
        self.assertEqual(rc, 0)
        with open(path) as f:
            self.assertEqual(json.load(f), {"registry-mirrors": ["http://127.0.0.1:16000"]})

    def test_keeps_other_settings(self) -> None:
        """Other keys and mirrors stay; the agent goes first, once, however often it runs."""
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(
                {"log-driver": "journald", "registry-mirrors": ["https://mirror.example.com"]}, f
            )
        for _ in range(2):
            rc, _, _ = run_cli("mirror", "docker", "--file", path, "--agent", "127.0.0.1:16000")
            self.assertEqual(rc, 0)
        with open(path) as f:
            self.assertEqual(
                json.load(f),
                {
                    "log-driver": "journald",
                    "registry-mirrors": ["http://127.0.0.1:16000", "https://mirror.example.com"],
                },
            )

    def test_broken_file_left_alone(self) -> None:
        """A daemon.json that is not a JSON object is reported and not overwritten."""
        for text in ("{not json", "[1, 2]", '{"registry-mirrors": "http://x"}'):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(text)
            rc, _, err = run_cli("mirror", "docker", "--file", path)
            self.assertEqual(rc, 1, text)
            self.assertIn("kraken mirror docker:", err)
            with open(path) as f:
                self.assertEqual(f.read(), text)

    def test_config_function(self) -> None:
        """docker_daemon_config does not change the mapping it is given."""
        existing = {"registry-mirrors": ["http://127.0.0.1:16000/"]}
        self.assertEqual(
            docker_daemon_config(existing, "127.0.0.1:16000"),
            {"registry-mirrors": ["http://127.0.0.1:16000"]},
        )
        self.assertEqual(existing, {"registry-mirrors": ["http://127.0.0.1:16000/"]})
