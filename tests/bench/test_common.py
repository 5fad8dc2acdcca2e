"""Tests of bench.common's /proc readers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from bench.common import parse_tcp_snmp, tcp_segments
from bench.swarm import retransmitted

SNMP = (
    "Ip: Forwarding DefaultTTL\n"
    "Ip: 1 64\n"
    "Tcp: RtoAlgorithm ActiveOpens OutSegs RetransSegs\n"
    "Tcp: 1 12 5000 37\n"
    "Udp: InDatagrams\n"
    "Udp: 3\n"
)


class TcpCounterTests(SynchronousTestCase):
    def test_counters_by_name(self) -> None:
        """The header line names the values; other protocols' lines are not read."""
        counters = parse_tcp_snmp(SNMP)
        self.assertEqual(counters["OutSegs"], 5000)
        self.assertEqual(counters["RetransSegs"], 37)
        self.assertEqual(len(counters), 4)

    def test_malformed(self) -> None:
        with self.assertRaises(ValueError):
            parse_tcp_snmp("Udp: InDatagrams\nUdp: 3\n")
        with self.assertRaises(ValueError):
            parse_tcp_snmp("Tcp: OutSegs RetransSegs\nTcp: 1\n")

    def test_this_namespace(self) -> None:
        """A live process's namespace counts; a process that is gone gives zeros."""
        before = tcp_segments(os.getpid())
        with (
            socket.create_server(("127.0.0.1", 0)) as server,
            socket.create_connection(server.getsockname()) as client,
        ):
            conn, _ = server.accept()
            with conn:
                client.sendall(b"x" * 100_000)
                conn.recv(1)
        sent, resent = tcp_segments(os.getpid())
        self.assertGreater(sent, before[0], "segments sent on 127.0.0.1 were not counted")
        self.assertGreaterEqual(sent, resent)
        self.assertGreaterEqual(resent, before[1])
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        self.assertEqual(tcp_segments(child.pid), (0, 0))

    def test_retransmitted_share(self) -> None:
        self.assertEqual(retransmitted((1000, 10), (3000, 30)), 0.01)
        self.assertEqual(retransmitted((1000, 10), (1000, 10)), 0.0)
