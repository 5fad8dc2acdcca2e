"""
Installing the project as its developers do: ``pip install -e .`` must leave the twistd plugins
visible, so ``twistd -n kraken-herd`` works from an editable checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv

from twisted.trial.unittest import SynchronousTestCase

import kraken

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(kraken.__file__)))
PROJECT_FILES = ("setup.cfg", "pyproject.toml", "README.md")
PROJECT_TREES = ("kraken", "twisted")


def dependencies_without_kraken(site_packages: str, farm: str) -> None:
    """Mirror ``site_packages`` into ``farm`` with symlinks, leaving out every installed Kraken.

    The test's own environment has Kraken installed (tox installs it); a copy of its
    dependencies without it stands in for "the dependencies are installed" so that only the
    editable install under test can provide ``kraken`` and the plugin file.
    """
    os.makedirs(os.path.join(farm, "twisted", "plugins"))
    for name in os.listdir(site_packages):
        if name.startswith(("kraken", "__editable__", "twisted", "__pycache__")):
            continue
        if name.endswith(".pth"):
            continue
        os.symlink(os.path.join(site_packages, name), os.path.join(farm, name))
    twisted = os.path.join(site_packages, "twisted")
    for name in os.listdir(twisted):
        if name != "plugins":
            os.symlink(os.path.join(twisted, name), os.path.join(farm, "twisted", name))
    for name in os.listdir(os.path.join(twisted, "plugins")):
        if name.startswith("kraken") or name in ("dropin.cache", "__pycache__"):
            continue
        os.symlink(
            os.path.join(twisted, "plugins", name), os.path.join(farm, "twisted", "plugins", name)
        )
    for name in os.listdir(site_packages):
        if name.startswith("twisted-") and name.endswith(".dist-info"):
            os.symlink(os.path.join(site_packages, name), os.path.join(farm, name))


class EditableInstallTests(SynchronousTestCase):
    """``pip install -e`` of a copy of the project into a fresh virtual environment."""

    def setUp(self) -> None:
        """Copy the project, make a venv whose only Kraken is the editable install of the copy."""
        base = os.path.abspath(self.mktemp())
        self.project = os.path.join(base, "project")
        os.makedirs(self.project)
        for name in PROJECT_FILES:
            shutil.copy(os.path.join(CHECKOUT, name), self.project)
        for name in PROJECT_TREES:
            shutil.copytree(
                os.path.join(CHECKOUT, name),
                os.path.join(self.project, name),
                ignore=shutil.ignore_patterns("__pycache__", "dropin.cache", "*.egg-info"),
            )
        farm = os.path.join(base, "dependencies")
        dependencies_without_kraken(sysconfig.get_paths()["purelib"], farm)
        self.venv = os.path.join(base, "venv")
        venv.EnvBuilder(with_pip=False).create(self.venv)
        self.python = os.path.join(self.venv, "bin", "python")
        purelib = self.run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])")
        with open(os.path.join(purelib.strip(), "dependencies.pth"), "w") as f:
            f.write(farm + "\n")
        self.elsewhere = os.path.join(base, "elsewhere")
        os.makedirs(self.elsewhere)

    def run_python(self, *argv: str, code: bool = True) -> str:
        """Run the venv's python (``-c`` CODE unless ``code`` is False) away from the project."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        args = ["-c", *argv] if code else list(argv)
        result = subprocess.run(
            [getattr(self, "python", sys.executable), *args],
            cwd=getattr(self, "elsewhere", None),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def test_editable_install_shows_the_plugins(self) -> None:
        """After ``pip install -e``, twistd lists kraken-herd and imports Kraken from the project.

        setuptools' default editable mode for a flat layout installs an import hook that
        serves ``kraken`` but puts no directory on ``sys.path``, and twistd finds plugins by
        looking for ``twisted/plugins`` on ``sys.path``: it said "Unknown command: kraken-herd".
        """
        self.run_python(
            "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
            "-e", self.project, code=False,
        )  # fmt: skip
        where = self.run_python("import kraken; print(kraken.__file__)")
        self.assertEqual(where.strip(), os.path.join(self.project, "kraken", "__init__.py"))
        usage = self.run_python(
            "import sys; from twisted.scripts.twistd import run;"
            " sys.argv = ['twistd', '--help']; run()"
        )
        for daemon in ("agent", "origin", "tracker", "build-index", "proxy", "herd"):
            self.assertIn(f"kraken-{daemon} ", usage)
        herd = self.run_python(
            "import sys; from twisted.scripts.twistd import run;"
            " sys.argv = ['twistd', 'kraken-herd', '--help']; run()"
        )
        self.assertIn("--agents", herd)
