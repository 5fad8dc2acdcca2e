"""``kraken config check FILE --daemon NAME``: a configuration checked as the daemon would."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.deploy.test_mirror import run_cli


class ConfigCheckTests(SynchronousTestCase):
    """The command accepts what the daemon accepts and names every problem it would hit."""

    def write(self, text: str) -> str:
        """A configuration file holding ``text``."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_valid(self) -> None:
        """A good file exits 0 and says so."""
        path = self.write('server: {listen: "tcp:15003"}\npeer_store: {kind: redis}\n')
        rc, out, err = run_cli("config", "check", path, "--daemon", "tracker")
        self.assertEqual((rc, err), (0, ""))
        self.assertIn("valid tracker configuration", out)

    def test_keys_and_values(self) -> None:
        """Unknown keys and bad values are each named with their key path and the file."""
        path = self.write("hashring: {max_replica: x}\nschedular: {}\n")
        rc, _, err = run_cli("config", "check", path, "--daemon", "origin")
        self.assertEqual(rc, 1)
        self.assertIn(f"{path}: origin.hashring.max_replica:", err)
        self.assertIn(f"{path}: origin.schedular: unknown key", err)

    def test_advertise_rule(self) -> None:
        """Listening on every interface without ``advertise`` is refused, as at start-up."""
        path = self.write('server: {listen: "tcp:15002"}\n')
        rc, _, err = run_cli("config", "check", path, "--daemon", "origin")
        self.assertEqual(rc, 1)
        self.assertIn("origin.server.advertise", err)

    def test_backend_options(self) -> None:
        """Backend options, which the loader leaves to the backends, are checked too."""
        path = self.write("backends:\n  - namespace: .*\n    backend: {s3: {buckett: x}}\n")
        rc, _, err = run_cli("config", "check", path, "--daemon", "build-index")
        self.assertEqual(rc, 1)
        self.assertIn("build-index.backends[0].backend.s3.buckett: unknown key", err)

    def test_herd_members(self) -> None:
        """A herd file's members' backends are checked under their member's name."""
        path = self.write(
            "origin:\n  backends:\n    - namespace: .*\n      backend: {fs: {rooot: /x}}\n"
        )
        rc, _, err = run_cli("config", "check", path, "--daemon", "herd")
        self.assertEqual(rc, 1)
        self.assertIn("origin.backends[0].backend.fs.rooot: unknown key", err)

    def test_tls_files_only_when_asked(self) -> None:
        """TLS files are read with --files (on the host), not without (rendering elsewhere)."""
        path = self.write(
            "tls: {ca: /nonexistent/ca.pem, cert: /nonexistent/t.pem, key: /nonexistent/k.pem}\n"
        )
        rc, _, _ = run_cli("config", "check", path, "--daemon", "tracker")
        self.assertEqual(rc, 0)
        rc, _, err = run_cli("config", "check", path, "--daemon", "tracker", "--files")
        self.assertEqual(rc, 1)
        self.assertIn("tracker.tls.ca: /nonexistent/ca.pem", err)

    def test_unreadable_file(self) -> None:
        """A missing file is an error naming it, not a traceback."""
        path = self.mktemp()
        rc, _, err = run_cli("config", "check", path, "--daemon", "agent")
        self.assertEqual(rc, 1)
        self.assertIn(path, err)
