"""
How much the daemons log under twistd: ``--log-level`` and quiet factory chatter.

twistd logs every event of every level, including one "Starting factory" and one
"Stopping factory" line for each connection a client pool opens; an operator drowns in
them.  :class:`DaemonLogFilter` keeps events at or above a level and counts the factory
lines as debug.  twistd has no level option of its own, but it takes a log observer
factory by dotted name (``--logger``); the daemons' ``--log-level`` names one of the
factories below when twistd would log to stdout anyway (``-n`` without ``--logfile``, or
``--logfile=-``), which is what containers and systemd read.  ``twist`` (``python -m
twisted``) has its own ``--log-level``, given before the plugin name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from attrs import frozen
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    textFileLogObserver,
)
from twisted.python import usage
from zope.interface import implementer

__all__ = [
    "DEFAULT_LEVEL",
    "LEVELS",
    "DaemonLogFilter",
    "apply_log_level",
    "critical",
    "debug",
    "error",
    "filtered_observer",
    "info",
    "parse_level",
    "warn",
]

LEVELS: Final = ("debug", "info", "warn", "error", "critical")
"""The names ``--log-level`` takes, from the most to the least verbose."""

DEFAULT_LEVEL: Final = "info"

#: The log formats of twisted.internet.protocol.Factory's start and stop lines.
FACTORY_CHATTER: Final = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})

#: The help text of ``--log-level`` in every daemon's options.
LOG_LEVEL_HELP: Final = (
    f"Lowest level logged: {', '.join(LEVELS)} (default {DEFAULT_LEVEL}; twistd logging "
    "to stdout). Factory start/stop lines count as debug."
)


def parse_level(name: str) -> LogLevel:
    """The :class:`LogLevel` called ``name``; ValueError naming the choices otherwise."""
    if name not in LEVELS:
        raise ValueError(f"unknown log level {name!r}: expected one of {', '.join(LEVELS)}")
    level: LogLevel = LogLevel.levelWithName(name)
    return level


@implementer(ILogFilterPredicate)
@frozen
class DaemonLogFilter:
    """Keep events at or above ``level``; factory start/stop lines are debug, whatever they say."""

    level: LogLevel
    _levels: LogLevelFilterPredicate

    @classmethod
    def at(cls, level: LogLevel) -> DaemonLogFilter:
        """The filter keeping ``level`` and above."""
        return cls(level, LogLevelFilterPredicate(defaultLogLevel=level))

    def __call__(self, event: LogEvent) -> PredicateResult:
        """``no`` for what is below the level, else ``maybe`` (other predicates may decide)."""
        if event.get("log_format") in FACTORY_CHATTER:
            event = {**event, "log_level": LogLevel.debug}
        result: PredicateResult = self._levels(event)
        return result


def filtered_observer(level: LogLevel, observer: ILogObserver) -> ILogObserver:
    """``observer`` behind a :class:`DaemonLogFilter` at ``level``."""
    return FilteringLogObserver(observer, [DaemonLogFilter.at(level)])


def _stdout_factory(name: str) -> Callable[[], ILogObserver]:
    level = LogLevel.levelWithName(name)

    def factory() -> ILogObserver:
        return filtered_observer(level, textFileLogObserver(sys.stdout))

    factory.__name__ = name
    factory.__doc__ = f"twistd ``--logger``: text lines on stdout, {name} and above."
    return factory


debug = _stdout_factory("debug")
info = _stdout_factory("info")
warn = _stdout_factory("warn")
error = _stdout_factory("error")
critical = _stdout_factory("critical")


def _logs_to_stdout(twistd: Mapping[str, Any]) -> bool:
    """Whether twistd's own observer would write text lines to stdout (see its UnixAppLogger)."""
    if twistd.get("syslog") or twistd.get("logger") is not None:
        return False
    logfile = twistd.get("logfile")
    return logfile == "-" or (bool(twistd.get("nodaemon")) and not logfile)


def apply_log_level(options: usage.Options, name: str | None) -> None:
    """Check ``--log-level`` and, under twistd logging to stdout, make twistd use it.

    ``name`` None (not given) means :data:`DEFAULT_LEVEL` where it can apply and nothing
    elsewhere; a level given where it cannot apply (``--logfile``, ``--syslog``,
    ``--logger``, or ``twist``, which has its own option) is a usage error, not a silent no-op.
    """
    if name is not None:
        try:
            parse_level(name)
        except ValueError as e:
            raise usage.UsageError(f"--log-level: {e}") from None
    parent: Any = getattr(options, "parent", None)
    is_twistd = parent is not None and "nodaemon" in parent and "logger" in parent
    if is_twistd and _logs_to_stdout(parent):
        parent["logger"] = f"{__name__}.{name or DEFAULT_LEVEL}"
    elif name is not None and parent is not None:
        raise usage.UsageError(
            "--log-level applies when twistd logs to stdout (-n without --logfile, or "
            "--logfile=-); twist takes its own --log-level before the plugin name"
        )
