"""Tests of the scalar value kinds: durations, sizes, rates, addresses, endpoints."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kraken.config.values import (
    DISK_LIMIT,
    ENDPOINT,
    NETWORK,
    REGEX,
    DiskLimit,
    InvalidValue,
    format_duration,
    format_rate,
    format_size,
    join_host_port,
    parse_duration,
    parse_endpoint,
    parse_rate,
    parse_size,
    split_host_port,
)

DURATION_MESSAGE = 'expected a duration such as "30s", "5m", "1h30m" or a number of seconds, got {}'
SIZE_MESSAGE = 'expected a size such as "64MiB", "4MB" or a number of bytes, got {}'


class DurationTests(SynchronousTestCase):
    """Durations parse to float seconds and format back."""

    def test_examples(self) -> None:
        """The documented forms give the expected number of seconds."""
        cases = {
            "30s": 30.0,
            "5m": 300.0,
            "6h": 21600.0,
            "1h30m": 5400.0,
            "2d": 172800.0,
            "500ms": 0.5,
            "1.5s": 1.5,
            "250us": 0.00025,
            "10ns": 1e-8,
            "1h0m1s": 3601.0,
            "30": 30.0,
            " 5m ": 300.0,
            30: 30.0,
            0: 0.0,
            2.5: 2.5,
        }
        for text, seconds in cases.items():
            self.assertEqual(parse_duration(text), seconds, text)
            self.assertIsInstance(parse_duration(text), float)

    def test_rejects(self) -> None:
        """Negative, unitless combinations, unknown units, booleans and non-scalars are refused."""
        for bad in ["-5s", "5 s", "1h30", "5x", "s", "", "1e3s", "inf", True, None, [1], -1]:
            with self.assertRaises(InvalidValue, msg=repr(bad)) as raised:
                parse_duration(bad)
            self.assertTrue(raised.exception.message.startswith("expected a duration"))
        self.assertRaises(InvalidValue, parse_duration, float("inf"))
        self.assertRaises(InvalidValue, parse_duration, float("nan"))

    def test_message(self) -> None:
        """The message shows the value as written in YAML."""
        with self.assertRaises(InvalidValue) as raised:
            parse_duration("5x")
        self.assertEqual(raised.exception.message, DURATION_MESSAGE.format('"5x"'))

    def test_format(self) -> None:
        """Durations are written in the largest whole units, or in ms, or as decimal seconds."""
        cases = {
            0.0: "0s",
            30.0: "30s",
            300.0: "5m",
            5400.0: "1h30m",
            86400.0: "24h",
            3601.0: "1h1s",
            0.5: "500ms",
            1.5: "1500ms",
            0.00025: "0.00025s",
        }
        for seconds, text in cases.items():
            self.assertEqual(format_duration(seconds), text)

    @given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
    def test_round_trip(self, seconds: float) -> None:
        """Every non-negative finite duration formats to text that parses back to it exactly."""
        self.assertEqual(parse_duration(format_duration(seconds)), seconds)

    @given(
        st.integers(0, 10**4),
        st.integers(0, 10**4),
        st.integers(0, 10**4),
        st.integers(0, 999),
    )
    def test_composed_units(self, hours: int, minutes: int, seconds: int, millis: int) -> None:
        """Parts in any combination add up."""
        text = f"{hours}h{minutes}m{seconds}s{millis}ms"
        expected = hours * 3600 + minutes * 60 + seconds + millis / 1000
        self.assertTrue(math.isclose(parse_duration(text), expected, rel_tol=1e-12))

    @given(st.text(alphabet="0123456789.hmsdnuµx -:", max_size=12))
    def test_never_crashes(self, text: str) -> None:
        """Arbitrary text either parses to a non-negative number or raises InvalidValue."""
        try:
            seconds = parse_duration(text)
        except InvalidValue:
            return
        self.assertGreaterEqual(seconds, 0)


class SizeTests(SynchronousTestCase):
    """Sizes parse to int bytes and format back."""

    def test_examples(self) -> None:
        """Binary units are powers of 1024, decimal units powers of 1000."""
        cases = {
            "64MiB": 64 * 2**20,
            "1GiB": 2**30,
            "4MB": 4_000_000,
            "10kB": 10_000,
            "10KB": 10_000,
            "512B": 512,
            "1.5KiB": 1536,
            "2TiB": 2 * 2**40,
            "1PB": 10**15,
            "64mib": 64 * 2**20,
            "64 MiB": 64 * 2**20,
            "100": 100,
            100: 100,
            1024.0: 1024,
            0: 0,
        }
        for text, size in cases.items():
            self.assertEqual(parse_size(text), size, text)
            self.assertIsInstance(parse_size(text), int)

    def test_rejects(self) -> None:
        """Negative, fractional bytes, unknown units and non-scalars are refused with the value."""
        for bad in ["-1", -1, "1.5B", 0.5, "5 potatoes", "MiB", "1Mb/s", True, None, {}]:
            with self.assertRaises(InvalidValue, msg=repr(bad)):
                parse_size(bad)
        with self.assertRaises(InvalidValue) as raised:
            parse_size("1.5B")
        self.assertEqual(
            raised.exception.message,
            SIZE_MESSAGE.format('"1.5B"') + " (not a whole number of bytes)",
        )
        with self.assertRaises(InvalidValue) as raised:
            parse_size("lots")
        self.assertEqual(raised.exception.message, SIZE_MESSAGE.format('"lots"'))

    def test_format(self) -> None:
        """The largest exact unit is used, binary first; otherwise a plain number."""
        self.assertEqual(format_size(64 * 2**20), "64MiB")
        self.assertEqual(format_size(4_000_000), "4MB")
        self.assertEqual(format_size(1536), 1536)
        self.assertEqual(format_size(2048), "2KiB")
        self.assertEqual(format_size(1000), 1000)
        self.assertEqual(format_size(0), 0)

    @given(st.integers(min_value=0, max_value=2**70))
    def test_round_trip(self, size: int) -> None:
        """Every size formats to a value that parses back to it."""
        self.assertEqual(parse_size(format_size(size)), size)

    @given(
        st.integers(min_value=0, max_value=10**6),
        st.sampled_from(
            [
                ("B", 1),
                ("kB", 1000),
                ("MB", 10**6),
                ("GB", 10**9),
                ("KiB", 1024),
                ("MiB", 2**20),
                ("GiB", 2**30),
                ("TiB", 2**40),
            ]
        ),
    )
    def test_units(self, count: int, unit: tuple[str, int]) -> None:
        """``<n><unit>`` is n times the unit, in any letter case."""
        name, factor = unit
        self.assertEqual(parse_size(f"{count}{name}"), count * factor)
        self.assertEqual(parse_size(f"{count}{name.upper()}"), count * factor)


class RateTests(SynchronousTestCase):
    """Byte rates are sizes with an optional ``/s``."""

    def test_parse(self) -> None:
        """``/s`` is optional; the message names the rate as written."""
        self.assertEqual(parse_rate("200MiB/s"), 200 * 2**20)
        self.assertEqual(parse_rate("200MiB"), 200 * 2**20)
        self.assertEqual(parse_rate(1000), 1000)
        with self.assertRaises(InvalidValue) as raised:
            parse_rate("fast/s")
        self.assertEqual(
            raised.exception.message,
            'expected a rate such as "200MiB/s" or a number of bytes per second, got "fast/s"',
        )

    @given(st.integers(min_value=0, max_value=2**50))
    def test_round_trip(self, rate: int) -> None:
        """Formatted rates parse back."""
        self.assertEqual(parse_rate(format_rate(rate)), rate)


class DiskLimitTests(SynchronousTestCase):
    """Watermarks are a percentage of the filesystem or a size."""

    def test_parse_and_resolve(self) -> None:
        """``"90%"`` resolves against the filesystem size; a size is absolute."""
        percent = DISK_LIMIT.parse("90%")
        self.assertEqual(percent, DiskLimit(percent=90.0))
        self.assertEqual(percent.resolve(1000), 900)
        size = DISK_LIMIT.parse("1GiB")
        self.assertEqual(size.resolve(10), 2**30)
        self.assertEqual(DISK_LIMIT.format(percent), "90%")
        self.assertEqual(DISK_LIMIT.parse(DISK_LIMIT.format(DiskLimit(percent=12.5))).percent, 12.5)

    def test_rejects(self) -> None:
        """Over 100% and nonsense are refused."""
        for bad in ["101%", "-1%", "x%", "lots"]:
            self.assertRaises(InvalidValue, DISK_LIMIT.parse, bad)


class HostPortTests(SynchronousTestCase):
    """``host:port`` addresses."""

    def test_split(self) -> None:
        """Names, IPv4 and bracketed IPv6 split into host and port."""
        self.assertEqual(split_host_port("127.0.0.1:15002"), ("127.0.0.1", 15002))
        self.assertEqual(split_host_port("origin-1.example:1"), ("origin-1.example", 1))
        self.assertEqual(split_host_port("[::1]:65535"), ("::1", 65535))

    def test_rejects(self) -> None:
        """Missing or out-of-range ports, bad hosts and bare IPv6 are refused."""
        for bad in ["host", "host:", ":80", "host:0", "host:65536", "::1:80", "[zz]:80", "a b:1"]:
            with self.assertRaises(InvalidValue, msg=bad) as raised:
                split_host_port(bad)
            self.assertIn('expected "host:port"', raised.exception.message)

    @given(st.ip_addresses(), st.integers(1, 65535))
    def test_join_round_trip(self, address: object, port: int) -> None:
        """join_host_port brackets IPv6 so that split_host_port gives the parts back."""
        self.assertEqual(split_host_port(join_host_port(str(address), port)), (str(address), port))


class EndpointTests(SynchronousTestCase):
    """Server endpoint strings, checked with Twisted's grammar."""

    def test_tcp(self) -> None:
        """Port and interface are read, positional or by keyword."""
        description = parse_endpoint("tcp:15002:interface=127.0.0.1")
        self.assertEqual(description.kind, "tcp")
        self.assertEqual(description.tcp_port(), 15002)
        self.assertEqual(description.host_port(), ("127.0.0.1", 15002))
        self.assertEqual(
            parse_endpoint("tcp:port=80:interface=10.0.0.1").host_port(), ("10.0.0.1", 80)
        )

    def test_escaped_ipv6(self) -> None:
        """Backslash escapes ``:`` inside a value, as in Twisted."""
        description = parse_endpoint("tcp6:16001:interface=\\:\\:1")
        self.assertEqual(description.host_port(), ("::1", 16001))

    def test_no_host_port(self) -> None:
        """Wildcard interfaces, port 0 and unix sockets name no address to advertise."""
        for text in [
            "tcp:15002",
            "tcp:15002:interface=0.0.0.0",
            "tcp:0:interface=127.0.0.1",
            "unix:/run/k.sock",
            "systemd:domain=INET:index=0",
        ]:
            self.assertIsNone(parse_endpoint(text).host_port(), text)

    def test_rejects(self) -> None:
        """Unknown types, bad ports and unix without a path are refused with the value."""
        with self.assertRaises(InvalidValue) as raised:
            ENDPOINT.parse("tcp:1500x")
        self.assertEqual(
            raised.exception.message,
            'expected a Twisted endpoint string such as "tcp:15002:interface=127.0.0.1", '
            'got "tcp:1500x" (bad port)',
        )
        for bad in ["127.0.0.1:15002", "tcp:70000", "tcp", "unix:", "http:80", 15002]:
            self.assertRaises(InvalidValue, ENDPOINT.parse, bad)

    @given(st.integers(0, 65535))
    def test_ports(self, port: int) -> None:
        """Every TCP port is accepted and read back."""
        self.assertEqual(parse_endpoint(f"tcp:{port}").tcp_port(), port)


class OtherKindTests(SynchronousTestCase):
    """Regexes and networks."""

    def test_regex(self) -> None:
        """A regex must compile; the message includes the compiler's reason."""
        self.assertEqual(REGEX.parse("^library/"), "^library/")
        with self.assertRaises(InvalidValue) as raised:
            REGEX.parse("(")
        self.assertEqual(
            raised.exception.message,
            'invalid regular expression "(": missing ), unterminated subpattern at position 0',
        )

    def test_network(self) -> None:
        """CIDR networks of both families are accepted; others refused."""
        self.assertEqual(NETWORK.parse("::1/128"), "::1/128")
        self.assertEqual(NETWORK.parse("10.0.0.0/8"), "10.0.0.0/8")
        self.assertRaises(InvalidValue, NETWORK.parse, "10.0.0.0/33")
        self.assertRaises(InvalidValue, NETWORK.parse, 10)
