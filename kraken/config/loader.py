"""
Reading configuration files: strict YAML -> the daemon's config class.

``load_config`` reads a small file with blocking I/O; it is meant for start-up
(``Options.postOptions`` / ``makeService``), before the reactor runs.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import yaml

from kraken.config.daemons import (
    CONFIG_CLASSES,
    AgentConfig,
    BuildIndexConfig,
    HerdConfig,
    OriginConfig,
    ProxyConfig,
    TrackerConfig,
)
from kraken.config.structure import ConfigError, structure, unstructure
from kraken.config.values import describe

if TYPE_CHECKING:
    # Only a type here: parsing configuration imports nothing of Twisted (bench.sim uses it).
    from twisted.python.filepath import FilePath

#: Where a configuration file is: a path string, a path-like object or a Twisted FilePath.
ConfigPath: TypeAlias = "str | os.PathLike[str] | FilePath[str]"
ConfigKind = Literal["agent", "origin", "tracker", "build-index", "proxy", "herd"]
AnyConfig = AgentConfig | OriginConfig | TrackerConfig | BuildIndexConfig | ProxyConfig | HerdConfig

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {describe(key)}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> object:
    """
    Parse one YAML document strictly (safe tags only, no repeated keys).

    Raises :class:`ConfigError` with the line and column of a syntax error.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "unreadable"
        raise ConfigError([f"invalid YAML: {problem}{where}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"invalid YAML: {error}"]) from None


def _config_class(kind: str) -> type:
    try:
        return CONFIG_CLASSES[kind]
    except KeyError:
        known = ", ".join(CONFIG_CLASSES)
        raise ValueError(f"unknown configuration kind {kind!r}; expected one of {known}") from None


@overload
def parse_config(kind: Literal["agent"], raw: object) -> AgentConfig: ...
@overload
def parse_config(kind: Literal["origin"], raw: object) -> OriginConfig: ...
@overload
def parse_config(kind: Literal["tracker"], raw: object) -> TrackerConfig: ...
@overload
def parse_config(kind: Literal["build-index"], raw: object) -> BuildIndexConfig: ...
@overload
def parse_config(kind: Literal["proxy"], raw: object) -> ProxyConfig: ...
@overload
def parse_config(kind: Literal["herd"], raw: object) -> HerdConfig: ...
@overload
def parse_config(kind: str, raw: object) -> AnyConfig: ...
def parse_config(kind: str, raw: object) -> AnyConfig:
    """
    Build the config of daemon ``kind`` from already-parsed YAML data.

    ``None`` (an empty file) gives the defaults.  Raises :class:`ConfigError`
    naming every bad key path (rooted at ``kind``, e.g.
    ``origin.hashring.max_replica``), and :class:`ValueError` for an unknown
    ``kind``.
    """
    cls = _config_class(kind)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{kind}: expected a mapping of settings, got {describe(raw)}"])
    result: AnyConfig = structure(cls, raw, kind)
    return result


@overload
def load_config(kind: Literal["agent"], path: ConfigPath | None) -> AgentConfig: ...
@overload
def load_config(kind: Literal["origin"], path: ConfigPath | None) -> OriginConfig: ...
@overload
def load_config(kind: Literal["tracker"], path: ConfigPath | None) -> TrackerConfig: ...
@overload
def load_config(kind: Literal["build-index"], path: ConfigPath | None) -> BuildIndexConfig: ...
@overload
def load_config(kind: Literal["proxy"], path: ConfigPath | None) -> ProxyConfig: ...
@overload
def load_config(kind: Literal["herd"], path: ConfigPath | None) -> HerdConfig: ...
@overload
def load_config(kind: str, path: ConfigPath | None) -> AnyConfig: ...
def load_config(kind: str, path: ConfigPath | None) -> AnyConfig:
    """
    Read the YAML file at ``path`` (blocking) as the config of daemon ``kind``.

    ``path=None`` gives the single-host defaults.  Every failure (unreadable
    file, invalid YAML, bad keys or values) raises :class:`ConfigError` whose
    ``source`` is the path.
    """
    _config_class(kind)
    if path is None:
        return parse_config(kind, None)
    source = os.fspath(path) if isinstance(path, str | os.PathLike) else path.path
    try:
        with open(source, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"cannot read the configuration: {error}"], source) from None
    try:
        return parse_config(kind, read_yaml(text))
    except ConfigError as error:
        raise ConfigError(error.problems, source) from None


def config_to_mapping(config: AnyConfig) -> dict[str, Any]:
    """A config as the plain data of a YAML file that loads back to an equal config."""
    return unstructure(config)


def dump_config(config: AnyConfig) -> str:
    """A config as YAML text (every key, defaults included)."""
    return yaml.safe_dump(config_to_mapping(config), sort_keys=False, allow_unicode=True)
