"""
Scalar value kinds of the configuration: how each is parsed from YAML and written back.

A :class:`ValueKind` pairs a parser (YAML value -> Python value, raising
:class:`InvalidValue` with a message such as ``expected a positive integer, got "x"``)
with a formatter (Python value -> the YAML value a user would write).  Config
classes attach kinds to fields with ``typing.Annotated``: ``interval: Duration``
is a ``float`` to mypy and to the daemons, and a duration to the structurer.

Units, as documented in ``docs/configuration.md``:

- durations are ``float`` seconds; written ``"500ms"``, ``"30s"``, ``"5m"``,
  ``"6h"``, ``"1h30m"``, ``"2d"`` or a plain number of seconds;
- sizes are ``int`` bytes; written ``"64MiB"`` (binary units KiB..PiB),
  ``"4MB"`` (decimal units kB..PB, so ``4MB`` is 4,000,000 bytes, unlike the
  Go Kraken, which reads ``MB`` as MiB) or a plain number of bytes;
- byte rates are ``int`` bytes per second, written like sizes with an
  optional ``/s``: ``"200MiB/s"``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any, Final, Generic, TypeVar

from attrs import frozen

T = TypeVar("T")


class InvalidValue(Exception):
    """A YAML value that does not fit its kind; the message says what was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def describe(value: object) -> str:
    """A YAML value as an error message shows it: ``"x"``, ``3``, ``null``, ``a list``."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return str(value)


@frozen
class ValueKind(Generic[T]):
    """
    How one kind of scalar setting is read from YAML and written back.

    ``name`` appears in the type column of the configuration reference.
    ``parse`` raises :class:`InvalidValue`; ``format`` is its inverse:
    ``parse(format(v)) == v`` for every value ``parse`` can return.
    """

    name: str
    parse: Callable[[object], T]
    format: Callable[[T], object]


def _identity(value: Any) -> object:
    return value


def _finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite YAML number (not a boolean), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
    return None


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER = re.compile(_NUMBER)


# -- plain scalars --------------------------------------------------------------------------


def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected a string, got {describe(value)}")
    return value


def _parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"expected true or false, got {describe(value)}")
    return value


def _parse_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidValue(f"expected an integer, got {describe(value)}")
    return value


def _parse_positive_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidValue(f"expected a positive integer, got {describe(value)}")
    return value


def _parse_non_negative_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidValue(f"expected a non-negative integer, got {describe(value)}")
    return value


def _parse_float(value: object) -> float:
    number = _finite_number(value)
    if number is None:
        raise InvalidValue(f"expected a number, got {describe(value)}")
    return number


def number_between(low: float, high: float) -> ValueKind[float]:
    """A finite number in ``[low, high]`` (e.g. a backoff jitter in 0..1)."""

    def parse(value: object) -> float:
        number = _finite_number(value)
        if number is None or not low <= number <= high:
            raise InvalidValue(f"expected a number from {low:g} to {high:g}, got {describe(value)}")
        return number

    return ValueKind(f"number {low:g}..{high:g}", parse, _identity)


def _parse_percent(value: object) -> float:
    number = _finite_number(value)
    if isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value.removesuffix("%")):
        number = float(value.removesuffix("%"))
    if number is None or not 0 <= number <= 100:
        raise InvalidValue(f"expected a percentage from 0 to 100, got {describe(value)}")
    return number


def _format_number(value: float) -> object:
    return int(value) if float(value).is_integer() else value


# -- durations ------------------------------------------------------------------------------

_DURATION_UNITS: Final[Mapping[str, Fraction]] = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_DURATION_WHOLE = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h|d))+")
_DURATION_EXPECTED = (
    'expected a duration such as "30s", "5m", "1h30m" or a number of seconds, got {}'
)


def parse_duration(value: object) -> float:
    """
    Parse a duration to float seconds.

    Accepts a non-negative number (seconds) or a string of number+unit parts
    (``ns us µs ms s m h d``), e.g. ``"1h30m"``, ``"1.5s"``, ``"250ms"``; a
    string holding only a number is seconds too.
    """
    number = _finite_number(value)
    if number is not None:
        if number < 0:
            raise InvalidValue(_DURATION_EXPECTED.format(describe(value)))
        return number
    if not isinstance(value, str):
        raise InvalidValue(_DURATION_EXPECTED.format(describe(value)))
    text = value.strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return float(Fraction(text))
    if not _DURATION_WHOLE.fullmatch(text):
        raise InvalidValue(_DURATION_EXPECTED.format(describe(value)))
    total = sum(
        (Fraction(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)),
        Fraction(0),
    )
    return float(total)


def _plain_decimal(value: float) -> str:
    """The shortest decimal that reads back as ``value``, without an exponent."""
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_duration(seconds: float) -> str:
    """Write float seconds the way a user would (``"1h30m"``, ``"500ms"``, ``"0.25ms"``)."""
    if seconds == 0:
        return "0s"
    if float(seconds).is_integer():
        whole = int(seconds)
        parts = []
        for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
            count, whole = divmod(whole, size)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)
    millis = seconds * 1000
    if millis.is_integer() and parse_duration(f"{int(millis)}ms") == seconds:
        return f"{int(millis)}ms"
    return f"{_plain_decimal(seconds)}s"


# -- sizes ----------------------------------------------------------------------------------

_SIZE_UNITS: Final[Mapping[str, int]] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}
_SIZE = re.compile(rf"({_NUMBER})\s*([A-Za-z]+)?")
_SIZE_EXPECTED = 'expected a size such as "64MiB", "4MB" or a number of bytes, got {}'
_RATE_EXPECTED = 'expected a rate such as "200MiB/s" or a number of bytes per second, got {}'


def _parse_size_with(value: object, original: object, expected: str) -> int:
    """Parse ``value`` as a size; errors show ``original`` in the ``expected`` message."""
    problem = expected.replace("{}", describe(original))
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidValue(problem)
        return value
    number = _finite_number(value)
    if number is not None:
        if number < 0 or not number.is_integer():
            raise InvalidValue(problem)
        return int(number)
    if not isinstance(value, str):
        raise InvalidValue(problem)
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise InvalidValue(problem)
    digits, unit = match.groups()
    multiplier = 1 if unit is None else _SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise InvalidValue(problem)
    total = Fraction(digits) * multiplier
    if total.denominator != 1:
        raise InvalidValue(f"{problem} (not a whole number of bytes)")
    return int(total)


def parse_size(value: object) -> int:
    """
    Parse a size to int bytes.

    A non-negative whole number is bytes; a string is a number with an optional
    unit: ``B``, decimal ``kB MB GB TB PB`` or binary ``KiB MiB GiB TiB PiB``
    (case-insensitive).  Fractions are allowed when the result is whole bytes
    (``"1.5KiB"`` = 1536).
    """
    return _parse_size_with(value, value, _SIZE_EXPECTED)


def format_size(size: int) -> object:
    """Write int bytes the way a user would: the largest exact unit, else a plain int."""
    if size == 0:
        return 0
    for unit, base in (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2)):
        if size % base == 0:
            return f"{size // base}{unit}"
    for unit, base in (("PB", 1000**5), ("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2)):
        if size % base == 0:
            return f"{size // base}{unit}"
    if size % 1024 == 0:
        return f"{size // 1024}KiB"
    return size


def parse_rate(value: object) -> int:
    """Parse bytes per second: a size (see :func:`parse_size`) with an optional ``/s``."""
    if isinstance(value, str) and value.strip().endswith("/s"):
        return _parse_size_with(value.strip()[:-2], value, _RATE_EXPECTED)
    return _parse_size_with(value, value, _RATE_EXPECTED)


def format_rate(rate: int) -> object:
    """Write bytes per second as ``"200MiB/s"`` (a plain int when no unit fits)."""
    size = format_size(rate)
    return f"{size}/s" if isinstance(size, str) else size


# -- disk limits ----------------------------------------------------------------------------


@frozen
class DiskLimit:
    """An amount of disk: a number of bytes, or a percentage of the filesystem's size."""

    size: int | None = None
    percent: float | None = None

    def resolve(self, filesystem_size: int) -> int:
        """The limit in bytes on a filesystem of ``filesystem_size`` bytes."""
        if self.size is not None:
            return self.size
        assert self.percent is not None
        return int(filesystem_size * self.percent / 100)


def parse_disk_limit(value: object) -> DiskLimit:
    """Parse ``"90%"`` (of the filesystem) or a size (``"500GiB"``, bytes)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return DiskLimit(percent=_parse_percent(value))
    try:
        return DiskLimit(size=parse_size(value))
    except InvalidValue:
        raise InvalidValue(
            f'expected a percentage such as "90%" or a size such as "500GiB", got {describe(value)}'
        ) from None


def format_disk_limit(limit: DiskLimit) -> object:
    """Write a :class:`DiskLimit` as ``"90%"`` or a size."""
    if limit.percent is not None:
        return f"{_plain_decimal(limit.percent)}%"
    assert limit.size is not None
    return format_size(limit.size)


# -- addresses ------------------------------------------------------------------------------

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
_HOST_PORT_EXPECTED = 'expected "host:port" (e.g. "127.0.0.1:15002"), got {}'


def split_host_port(address: str) -> tuple[str, int]:
    """
    Split ``host:port`` (``[v6]:port`` for IPv6) into host and port.

    The host is a DNS name, an IPv4 address or a bracketed IPv6 address, and the
    port is 1..65535.  Raises :class:`InvalidValue` otherwise.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise InvalidValue(_HOST_PORT_EXPECTED.format(describe(address)))
    port = int(port_text)
    if not 0 < port < 65536:
        raise InvalidValue(_HOST_PORT_EXPECTED.format(describe(address)))
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidValue(_HOST_PORT_EXPECTED.format(describe(address))) from None
        return host[1:-1], port
    if not _HOSTNAME.fullmatch(host):
        raise InvalidValue(_HOST_PORT_EXPECTED.format(describe(address)))
    return host, port


def join_host_port(host: str, port: int) -> str:
    """The inverse of :func:`split_host_port`: brackets an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_host_port(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValue(_HOST_PORT_EXPECTED.format(describe(value)))
    split_host_port(value)
    return value


# -- listen endpoints -------------------------------------------------------------------------

#: Endpoint types a listen address may use.  ``tcp``/``tcp6``/``unix``/``ssl``/``systemd`` are
#: Twisted's own server endpoint parsers; other plugin types are refused so that a typo fails
#: when the configuration is read rather than when the daemon starts listening.
ENDPOINT_TYPES: Final = ("tcp", "tcp6", "unix", "ssl", "systemd")
_ENDPOINT_EXPECTED = (
    'expected a Twisted endpoint string such as "tcp:15002:interface=127.0.0.1", got {}'
)


@frozen
class EndpointDescription:
    """A server endpoint string split as Twisted splits it: type, positional and keyword args."""

    kind: str
    args: tuple[str, ...]
    kwargs: Mapping[str, str]

    def tcp_port(self) -> int | None:
        """The port of a ``tcp``/``tcp6``/``ssl`` endpoint (None for other types)."""
        if self.kind not in ("tcp", "tcp6", "ssl"):
            return None
        text = self.kwargs.get("port", self.args[0] if self.args else "")
        return int(text)

    def host_port(self) -> tuple[str, int] | None:
        """
        The concrete ``(interface, port)`` this endpoint listens on, if it names them.

        None for non-TCP endpoints, a missing or wildcard interface, or port 0:
        then nobody can be told where to connect from the endpoint alone.
        """
        port = self.tcp_port()
        interface = self.kwargs.get("interface", "")
        if port is None or port == 0 or interface in ("", "0.0.0.0", "::"):  # noqa: S104
            return None
        return interface, port


def _split_escaped(text: str) -> list[tuple[str, str | None]]:
    """
    Split on unescaped ``:`` as Twisted does.

    Each part is ``(text, None)`` for a positional argument, or ``(key, value)``
    when it holds an unescaped ``=``.
    """
    parts: list[tuple[str, str | None]] = []
    current: list[str] = []
    key: str | None = None
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append((key, "".join(current)) if key is not None else ("".join(current), None))
            current, key = [], None
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    parts.append((key, "".join(current)) if key is not None else ("".join(current), None))
    return parts


def parse_endpoint(value: object) -> EndpointDescription:
    """
    Check a server endpoint string and split it (see :class:`EndpointDescription`).

    Follows the grammar of ``twisted.internet.endpoints.serverFromString``:
    ``type:arg:key=value``, with ``\\`` escaping ``:`` and ``=`` (an IPv6
    interface is written ``interface=\\:\\:1``).  Checks that the type is one of
    :data:`ENDPOINT_TYPES`, that TCP ports are 0..65535 and that unix endpoints
    name a path.
    """
    if not isinstance(value, str):
        raise InvalidValue(_ENDPOINT_EXPECTED.format(describe(value)))
    (kind, _), *rest = _split_escaped(value)
    if kind not in ENDPOINT_TYPES:
        raise InvalidValue(
            _ENDPOINT_EXPECTED.format(describe(value))
            + f" (the type must be one of {', '.join(ENDPOINT_TYPES)})"
        )
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part, item in rest:
        if item is None:
            args.append(part)
        else:
            kwargs[part] = item
    description = EndpointDescription(kind, tuple(args), kwargs)
    if kind in ("tcp", "tcp6", "ssl"):
        port = kwargs.get("port", args[0] if args else "")
        if not port.isdigit() or int(port) > 65535:
            raise InvalidValue(_ENDPOINT_EXPECTED.format(describe(value)) + " (bad port)")
    elif kind == "unix" and not kwargs.get("address", args[0] if args else ""):
        raise InvalidValue(_ENDPOINT_EXPECTED.format(describe(value)) + " (no path)")
    return description


def _parse_endpoint_string(value: object) -> str:
    parse_endpoint(value)
    return str(value)


# -- other strings ----------------------------------------------------------------------------


def _parse_regex(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected a regular expression, got {describe(value)}")
    try:
        re.compile(value)
    except re.error as error:
        raise InvalidValue(f"invalid regular expression {describe(value)}: {error}") from None
    return value


def _parse_network(value: object) -> str:
    if isinstance(value, str):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
        else:
            return value
    raise InvalidValue(f'expected a network such as "127.0.0.1/32", got {describe(value)}')


def _parse_path(value: object) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidValue(f"expected a path, got {describe(value)}")
    return value


def _parse_name(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", value):
        raise InvalidValue(f"expected a lowercase name such as fs or s3, got {describe(value)}")
    return value


# -- the kinds ------------------------------------------------------------------------------

STR: Final = ValueKind("string", _parse_str, _identity)
BOOL: Final = ValueKind("boolean", _parse_bool, _identity)
INT: Final = ValueKind("integer", _parse_int, _identity)
POSITIVE_INT: Final = ValueKind("integer > 0", _parse_positive_int, _identity)
NON_NEGATIVE_INT: Final = ValueKind("integer >= 0", _parse_non_negative_int, _identity)
FLOAT: Final = ValueKind("number", _parse_float, _format_number)
PERCENT: Final = ValueKind("percentage", _parse_percent, _format_number)
DURATION: Final = ValueKind("duration", parse_duration, format_duration)
SIZE: Final = ValueKind("size", parse_size, format_size)
RATE: Final = ValueKind("bytes/second", parse_rate, format_rate)
HOST_PORT: Final = ValueKind("host:port", _parse_host_port, _identity)
ENDPOINT: Final = ValueKind("endpoint", _parse_endpoint_string, _identity)
REGEX: Final = ValueKind("regex", _parse_regex, _identity)
NETWORK: Final = ValueKind("CIDR network", _parse_network, _identity)
PATH: Final = ValueKind("path", _parse_path, _identity)
DISK_LIMIT: Final = ValueKind("percentage or size", parse_disk_limit, format_disk_limit)
NAME: Final = ValueKind("name", _parse_name, _identity)

#: Kinds used for bare ``str``/``bool``/``int``/``float`` annotations.
PLAIN_KINDS: Final[Mapping[type, ValueKind[Any]]] = {str: STR, bool: BOOL, int: INT, float: FLOAT}

# Annotated aliases: what config classes write in their field annotations.
Duration = Annotated[float, DURATION]
Size = Annotated[int, SIZE]
ByteRate = Annotated[int, RATE]
PositiveInt = Annotated[int, POSITIVE_INT]
NonNegativeInt = Annotated[int, NON_NEGATIVE_INT]
Percent = Annotated[float, PERCENT]
HostPort = Annotated[str, HOST_PORT]
Endpoint = Annotated[str, ENDPOINT]
Regex = Annotated[str, REGEX]
Network = Annotated[str, NETWORK]
Path = Annotated[str, PATH]
DiskLimitValue = Annotated[DiskLimit, DISK_LIMIT]
Name = Annotated[str, NAME]
