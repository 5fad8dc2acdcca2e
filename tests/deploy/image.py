"""
Building ``deploy/Containerfile`` with podman for the image test, from nothing but Debian.

No container registry is reachable from the test machines, so the base image is made here:
``debootstrap --variant=minbase`` of Debian bookworm with ``python3`` and ``python3-venv``,
imported with ``podman import`` and kept in podman's store under a tag that names the day
(about a minute to make, once a day per machine).  pip inside the build reaches no index
either, so the dependencies' wheels are downloaded on the host into a wheelhouse (kept per
day and per ``setup.cfg``), put into a copy of the checkout, and the builder stage builds the
project's wheel from that copy with ``--no-index --find-links``.

The sandboxes the tests run in refuse to raise resource limits (no CAP_SYS_RESOURCE), and
podman asks for more open files and processes than they allow by default, so every podman
container here gets limits no higher than the test's own (:func:`ulimit_options`).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import tests
from tests.external import require_program, require_root

__all__ = ["CHECKOUT", "ImageBuild", "podman", "require_podman", "ulimit_options"]

#: The checkout holding ``deploy/Containerfile``.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))
#: Outlives test runs on one machine; CI starts without it and fills it.
CACHE = "/var/tmp/kraken-test-image-cache"
SUITE = "bookworm"
BASE_REPOSITORY = "localhost/kraken-test-base"
MIRROR = os.environ.get("KRAKEN_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def require_podman() -> tuple[str, str]:
    """``podman`` and ``debootstrap`` (root needed for both); skip, or fail under CI."""
    require_root()
    return require_program("podman"), require_program("debootstrap")


def ulimit_options() -> list[str]:
    """``--ulimit`` options for podman no higher than this process's own limits."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    nproc = 4096 if nproc == resource.RLIM_INFINITY else min(nproc, 4096)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


async def podman(testcase: TestCase, program: str, *args: str, check: bool = True) -> str:
    """``podman <args>``: its stdout; fails the test on a non-zero exit unless ``check=False``."""
    out, err, code = await getProcessOutputAndValue(program, list(args), env=dict(os.environ))
    if check:
        testcase.assertEqual(code, 0, f"podman {' '.join(args)}:\n{err.decode()[-4000:]}")
    return bytes(out).decode()


def _run(argv: list[str], **kwargs: Any) -> None:
    """Run a set-up command (blocking: the test calls it in a thread); output only on failure."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}")


def _checkout_files() -> list[str]:
    """The checkout's files as git sees them, committed or not (ignored ones left out)."""
    listed = subprocess.run(
        ["git", "-C", CHECKOUT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [p for p in listed.split("\0") if p and os.path.isfile(os.path.join(CHECKOUT, p))]


class ImageBuild:
    """The base image, the wheelhouse, the build context and the timings of one test."""

    def __init__(self, testcase: TestCase, podman_path: str, debootstrap: str) -> None:
        self.testcase = testcase
        self.podman = podman_path
        self.debootstrap = debootstrap
        self.timings: dict[str, float] = {}
        day = datetime.date.today().strftime("%Y%m%d")
        self.base_image = f"{BASE_REPOSITORY}:{SUITE}-{day}"
        with open(os.path.join(CHECKOUT, "setup.cfg"), "rb") as f:
            requirements = hashlib.sha256(f.read()).hexdigest()[:12]
        self.wheelhouse = os.path.join(CACHE, f"wheelhouse-{day}-{requirements}")

    def _base(self) -> None:
        """Make the base image unless today's is in podman's store (blocking)."""
        exists = subprocess.run([self.podman, "image", "exists", self.base_image], check=False)
        if exists.returncode == 0:
            return
        os.makedirs(CACHE, exist_ok=True)
        root = tempfile.mkdtemp(prefix="rootfs-", dir=CACHE)
        try:
            _run(
                [
                    self.debootstrap,
                    "--variant=minbase",
                    "--include=python3,python3-venv",
                    SUITE,
                    root,
                    MIRROR,
                ]
            )
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            _run([self.podman, "import", "--quiet", "-", self.base_image], stdin=tar.stdout)
            if tar.wait():
                raise RuntimeError("tar of the debootstrap root failed")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        # Earlier days' base images are this test's own: drop them.
        listed = subprocess.run(
            [self.podman, "images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPOSITORY],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for old in set(listed) - {self.base_image}:
            subprocess.run([self.podman, "rmi", old], capture_output=True, check=False)

    def _wheels(self, context: str) -> None:
        """Download every dependency's wheel, and the build backend's, unless cached (blocking)."""
        if os.path.isdir(self.wheelhouse):
            return
        os.makedirs(CACHE, exist_ok=True)
        partial = tempfile.mkdtemp(prefix="partial-", dir=CACHE)
        source = tempfile.mkdtemp(prefix="source-", dir=CACHE)  # pip writes metadata into it
        try:
            shutil.copytree(context, source, dirs_exist_ok=True)
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--only-binary=:all:",
                    "--python-version=3.11",
                    "--dest",
                    partial,
                    source,
                    "setuptools>=68",
                    "wheel",
                ]
            )
            for name in os.listdir(CACHE):  # earlier wheelhouses are this test's own
                if name.startswith("wheelhouse-"):
                    shutil.rmtree(os.path.join(CACHE, name), ignore_errors=True)
            os.replace(partial, self.wheelhouse)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(source, ignore_errors=True)

    def _context(self) -> str:
        """A copy of the checkout (what git lists) with the wheelhouse in it (blocking)."""
        context = os.path.abspath(self.testcase.mktemp())
        for path in _checkout_files():
            target = os.path.join(context, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(CHECKOUT, path), target)
        return context

    def prepare(self) -> str:
        """Base image, wheelhouse and build context (blocking); the context's path."""
        started = time.monotonic()
        self._base()
        self.timings["base image"] = time.monotonic() - started
        started = time.monotonic()
        context = self._context()
        self._wheels(context)
        shutil.copytree(self.wheelhouse, os.path.join(context, "wheelhouse"))
        self.timings["wheelhouse and context"] = time.monotonic() - started
        return context

    async def build(self, context: str, tag: str) -> None:
        """``podman build -f deploy/Containerfile`` of ``context`` as ``tag``, timed."""
        started = reactor.seconds()
        await podman(
            self.testcase,
            self.podman,
            "build",
            "--quiet",
            "--no-cache",  # the time of a real build, not of a cache hit
            "--layers=false",  # and no builder-stage image left behind, run after run
            "--format=docker",  # keeps HEALTHCHECK, which the OCI image format has no field for
            *ulimit_options(),
            "--build-arg",
            f"BASE_IMAGE={self.base_image}",
            "--build-arg",
            "PIP_OPTIONS=--no-index --find-links /src/wheelhouse",
            "--file",
            os.path.join(context, "deploy", "Containerfile"),
            "--tag",
            tag,
            context,
        )
        self.timings["podman build"] = reactor.seconds() - started
