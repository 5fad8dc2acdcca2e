"""
The systemd units in ``deploy/systemd``: well-formed, consistent with their configurations,
and socket activation that really hands the daemon its listeners.

``systemd-analyze verify`` checks every unit (with ``ExecStart`` pointed at this
environment's ``twistd``, since ``/opt/kraken`` exists only where the units are installed).
The example configurations the units read pass ``kraken config check`` and name exactly the
``FileDescriptorName`` of each socket unit of their service.  Then ``systemd-socket-activate``
does what systemd does with those socket units: it listens on three ports, names the file
descriptors as the agent's socket units do, and starts ``twistd -n kraken-agent`` with the
example ``agent.yaml``, which serves its API, registry and peer port on them.
"""

# Small files written by the test itself, in its coroutines.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import configparser
import glob
import os
import re
import subprocess
import sys

import yaml
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kraken.http.client import NO_RETRY, HTTPClientFactory
from tests.deploy.image import CHECKOUT
from tests.deploy.test_mirror import run_cli
from tests.external import require_program
from tests.system.clusters import free_block
from tests.system.containerd import ProcessExit, stop_process

UNITS = os.path.join(CHECKOUT, "deploy", "systemd")
DAEMONS = ("origin", "tracker", "build-index", "proxy", "agent")
TWISTD = "from twisted.scripts.twistd import run; run()"


def read_unit(path: str) -> configparser.ConfigParser:
    """A unit file as sections and keys (repeated keys joined by newlines)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def sockets_of(daemon: str) -> dict[str, str]:
    """FileDescriptorName -> unit name of every socket unit of ``kraken-<daemon>.service``."""
    found = {}
    for path in glob.glob(os.path.join(UNITS, "kraken-*.socket")):
        socket = read_unit(path)["Socket"]
        if socket["Service"] == f"kraken-{daemon}.service":
            found[socket["FileDescriptorName"]] = os.path.basename(path)
    return found


class UnitTests(SynchronousTestCase):
    """The unit files, checked by systemd's own verifier and against the configurations."""

    def test_systemd_analyze_verify(self) -> None:
        """``systemd-analyze verify`` accepts every unit without a warning."""
        analyze = require_program("systemd-analyze")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.assertTrue(os.access(twistd, os.X_OK), twistd)
        copies = os.path.abspath(self.mktemp())
        os.makedirs(copies)
        units = sorted(glob.glob(os.path.join(UNITS, "kraken-*")))
        self.assertEqual(len(units), 13)  # five services, eight sockets
        for path in units:
            with open(path) as f:
                text = f.read().replace("/opt/kraken/bin/twistd", twistd)
            with open(os.path.join(copies, os.path.basename(path)), "w") as f:
                f.write(text)
        done = subprocess.run(
            [analyze, "verify", *sorted(glob.glob(os.path.join(copies, "kraken-*")))],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual((done.returncode, done.stdout + done.stderr), (0, ""))

    def test_verify_reports_mistakes(self) -> None:
        """The verifier used above does report a broken unit (so its silence means something)."""
        analyze = require_program("systemd-analyze")
        broken = os.path.join(os.path.abspath(self.mktemp()), "kraken-broken.service")
        os.makedirs(os.path.dirname(broken))
        with open(broken, "w") as f:
            f.write("[Service]\nExecStart=/nonexistent/twistd\nRestart=sometimes\n")
        done = subprocess.run(
            [analyze, "verify", broken], capture_output=True, text=True, check=False
        )
        self.assertIn("restart specifier", done.stdout + done.stderr)

    def test_units_match_configs(self) -> None:
        """Each service runs its daemon on /etc/kraken/<daemon>.yaml, requires its sockets,
        and the example config names every socket's descriptor and passes the loader."""
        for daemon in DAEMONS:
            service = read_unit(os.path.join(UNITS, f"kraken-{daemon}.service"))
            exec_start = service["Service"]["ExecStart"].split()
            self.assertEqual(exec_start[0], "/opt/kraken/bin/twistd")
            self.assertEqual(
                exec_start[-3:], [f"kraken-{daemon}", "--config", f"/etc/kraken/{daemon}.yaml"]
            )
            self.assertEqual(service["Service"]["User"], "kraken")
            sockets = sockets_of(daemon)
            self.assertEqual(set(service["Unit"]["Requires"].split()), set(sockets.values()))
            example = os.path.join(UNITS, "config", f"{daemon}.yaml")
            rc, _, err = run_cli("config", "check", example, "--daemon", daemon)
            self.assertEqual(rc, 0, err)
            with open(example) as f:
                text = f.read()
            named = set(re.findall(r"systemd:domain=INET:name=([a-z]+)", text))
            self.assertEqual(named, set(sockets), daemon)


class SocketActivationTests(TestCase):
    """The agent started as systemd starts it, on sockets it did not open itself."""

    timeout = 90

    async def test_agent_on_passed_sockets(self) -> None:
        """The example agent.yaml serves the API, registry and peer port systemd passes in."""
        activate = require_program("systemd-socket-activate")
        base = free_block(3)
        ports = {"registry": base, "peer": base + 1, "server": base + 2}
        self.assertEqual(set(ports), set(sockets_of("agent")))
        with open(os.path.join(UNITS, "config", "agent.yaml")) as f:
            config = yaml.safe_load(f)
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        # The example's own listeners; only where it keeps data and finds the cluster change.
        config["data_dir"] = os.path.join(root, "agent")
        config["tracker"] = {"hosts": {"static": ["127.0.0.1:1"]}}
        config["build_index"] = {"hosts": {"static": ["127.0.0.1:1"]}}
        path = os.path.join(root, "agent.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        argv = [activate]
        for name, port in ports.items():
            argv += ["--listen", f"127.0.0.1:{port}", f"--fdname={name}"]
        argv += [
            f"--setenv=PYTHONPATH={CHECKOUT}",
            sys.executable,
            "-c",
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "kraken-agent",
            "--config",
            path,
        ]
        protocol = ProcessExit(keep=True)
        process = reactor.spawnProcess(protocol, activate, argv, env=dict(os.environ), path=root)
        self.addCleanup(lambda: ensureDeferred(stop_process(self, process, protocol, "agent")))
        # systemd-socket-activate starts the agent at the first connection, as systemd would.
        http = HTTPClientFactory(reactor, timeout=5)
        self.addCleanup(http.close)
        client = http.client(retry=NO_RETRY)
        for _ in range(100):
            if protocol.exited:
                self.fail(f"the agent exited:\n{protocol.tail()}")
            try:
                response = await client.get(f"http://127.0.0.1:{ports['server']}/health")
                await response.content()
                break
            except Exception:
                await deferLater(reactor, 0.2)
        else:
            self.fail(f"no /health answer:\n{protocol.tail()}")
        self.assertEqual(response.code, 200)
        response = await client.get(f"http://127.0.0.1:{ports['registry']}/v2/")
        await response.content()
        self.assertEqual(response.code, 200)
        peer = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", ports["peer"]), Protocol()
        )
        peer.transport.loseConnection()
