"""
A small structurer: plain YAML data -> frozen attrs config classes, with key paths in errors.

Config classes are ``@frozen(kw_only=True)`` attrs classes whose fields are
declared with :func:`setting` (a scalar, list or mapping) or :func:`section`
(a nested config class).  Field annotations drive parsing:

- ``Annotated[T, ValueKind]`` (see :mod:`kraken.config.values`), or bare
  ``str``/``bool``/``int``/``float``;
- another config class (a YAML mapping);
- ``X | None`` (``null`` allowed), ``Literal[...]`` (one of the choices);
- ``tuple[X, ...]`` (a YAML list), ``Mapping[K, V]`` (a YAML mapping whose keys
  parse as ``K``; stored read-only);
- ``Any`` (any YAML data, kept as plain data).

Every problem is collected with its key path (``origin.hashring.max_replica:
expected a positive integer, got "x"``) and raised together as one
:class:`ConfigError`.

A class may define ``config_problems(self)`` yielding ``(key, message)`` for
checks across fields (``key`` relative to the section: a field name, a tuple
of keys, or ``""`` for the section itself), ``config_prepare(cls,
raw) -> raw`` (a classmethod) to fill in the raw mapping before it is read,
``config_unstructure(self)`` to write itself back as YAML data, and
``config_atomic: ClassVar[bool] = True`` when a value given in YAML must
replace the field's default as a whole instead of being merged into it (host
lists: ``dns:`` must not be merged with a default ``static:``).
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Final, Literal, TypeVar, Union, cast, get_args, get_origin

import attrs

from kraken.config.values import PLAIN_KINDS, InvalidValue, ValueKind, describe

T = TypeVar("T")

#: Field metadata keys.
DOC: Final = "kraken.config.doc"
OVERRIDES: Final = "kraken.config.overrides"
DEFAULT_DOC: Final = "kraken.config.default_doc"


class ConfigError(ValueError):
    """
    A configuration that cannot be used; ``problems`` names each bad key path.

    ``str()`` is one line per problem, prefixed with the file name when the
    configuration came from a file.
    """

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + problem for problem in self.problems))


def setting(
    default: Any = attrs.NOTHING,
    *,
    doc: str,
    factory: Callable[[], Any] | None = None,
    default_doc: str | None = None,
    secret: bool = False,
) -> Any:
    """
    Declare a setting of a config class, with its documentation.

    ``default_doc`` replaces the shown default in the reference when the
    default is computed (for instance from ``data_dir``); pass an
    ``attrs.Factory(..., takes_self=True)`` as ``default`` in that case.
    A ``secret`` (a password) is left out of the class's ``repr``, and so of logs.
    """
    metadata: dict[str, object] = {DOC: doc}
    if default_doc is not None:
        metadata[DEFAULT_DOC] = default_doc
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, repr=not secret)
    return attrs.field(default=default, metadata=metadata, repr=not secret)


def section(cls: type[T], *, doc: str, **overrides: Any) -> T:
    """
    Declare a nested config section whose defaults are ``cls``'s, changed by ``overrides``.

    ``overrides`` are written as in YAML (``ttl="24h"``, ``hosts={"static":
    [...]}``).  YAML given for the section is merged over them key by key
    (recursively, except into ``config_atomic`` classes), so a user who sets one
    key keeps the other per-daemon defaults.
    """
    frozen_overrides = copy.deepcopy(overrides)
    built: T = attrs.field(
        factory=lambda: structure(cls, copy.deepcopy(frozen_overrides), "<defaults>"),
        metadata={DOC: doc, OVERRIDES: frozen_overrides},
    )
    return built


# -- type inspection ------------------------------------------------------------------------


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations (with ``Annotated`` extras) of a config class's fields."""
    return typing.get_type_hints(cls, include_extras=True)


def is_config_class(tp: object) -> bool:
    """Whether ``tp`` is an attrs class (a config section)."""
    return isinstance(tp, type) and attrs.has(tp)


def _is_union(origin: object) -> bool:
    return origin is Union or origin is types.UnionType


def optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if _is_union(get_origin(tp)):
        others = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(others) == 1 and len(get_args(tp)) == 2:
            return others[0]
    return None


def value_kind(tp: Any) -> ValueKind[Any] | None:
    """The :class:`ValueKind` for a scalar annotation, if ``tp`` is one."""
    if get_origin(tp) is Annotated:
        for extra in tp.__metadata__:
            if isinstance(extra, ValueKind):
                return extra
        return None
    if isinstance(tp, type):
        return PLAIN_KINDS.get(tp)
    return None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def join_path(path: str, key: object) -> str:
    """``path.key`` for identifier keys, ``path["key"]`` for other mapping keys."""
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{describe(key)}]"


# -- structuring ----------------------------------------------------------------------------


class _Failed:
    """Marker for a value that could not be built (its problems are already recorded)."""


_FAILED: Final = _Failed()


def merge_overrides(
    cls: type, overrides: Mapping[str, Any], given: Mapping[Any, Any]
) -> dict[Any, Any]:
    """
    Raw ``given`` merged over raw ``overrides`` for config class ``cls``, key by key.

    Keys keep the user's order (so problems are reported in file order), then
    the remaining overrides follow.
    """
    types_ = field_types(cls)
    merged: dict[Any, Any] = {}
    for key, value in given.items():
        base = overrides.get(key) if isinstance(key, str) else None
        tp = types_.get(key) if isinstance(key, str) else None
        if (
            isinstance(base, Mapping)
            and isinstance(value, Mapping)
            and is_config_class(tp)
            and not getattr(tp, "config_atomic", False)
        ):
            merged[key] = merge_overrides(cast(type, tp), base, value)
        else:
            merged[key] = value
    for key, value in overrides.items():
        merged.setdefault(key, value)
    return merged


class _Structurer:
    """Builds config values from raw YAML data, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> _Failed:
        self.problems.append(f"{path}: {message}")
        return _FAILED

    def value(self, tp: Any, raw: object, path: str) -> Any:
        kind = value_kind(tp)
        if kind is not None:
            try:
                return kind.parse(raw)
            except InvalidValue as error:
                return self.problem(path, error.message)
        if is_config_class(tp):
            return self.section(tp, raw, path)
        inner = optional_inner(tp)
        if inner is not None:
            return None if raw is None else self.value(inner, raw, path)
        origin = get_origin(tp)
        if origin is Literal:
            return self.choice(get_args(tp), raw, path)
        if origin is tuple:
            return self.sequence(get_args(tp)[0], raw, path)
        if origin in (Mapping, dict, typing.Mapping):
            key_type, value_type = get_args(tp)
            return self.mapping(key_type, value_type, raw, path)
        if tp is Any:
            return copy.deepcopy(raw)
        raise TypeError(f"{path}: no structuring rule for annotation {tp!r}")

    def choice(self, choices: tuple[object, ...], raw: object, path: str) -> Any:
        if raw in choices and type(raw) in {type(choice) for choice in choices}:
            return raw
        shown = ", ".join(describe(choice) for choice in choices)
        return self.problem(path, f"expected one of {shown}, got {describe(raw)}")

    def sequence(self, item_type: Any, raw: object, path: str) -> Any:
        if not isinstance(raw, list):
            return self.problem(path, f"expected a list, got {describe(raw)}")
        items = [self.value(item_type, item, f"{path}[{index}]") for index, item in enumerate(raw)]
        if any(item is _FAILED for item in items):
            return _FAILED
        return tuple(items)

    def mapping(self, key_type: Any, value_type: Any, raw: object, path: str) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            return self.problem(path, f"expected a mapping, got {describe(raw)}")
        result: dict[Any, Any] = {}
        failed = False
        for raw_key, raw_value in raw.items():
            key_path = join_path(path, raw_key)
            key = self.value(key_type, raw_key, key_path)
            value = self.value(value_type, raw_value, key_path)
            if key is _FAILED or value is _FAILED:
                failed = True
            elif key in result:
                failed = True
                self.problem(key_path, "duplicate key")
            else:
                result[key] = value
        return _FAILED if failed else types.MappingProxyType(result)

    def section(self, cls: type[T], given: object, path: str) -> T | _Failed:
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            return self.problem(path, f"expected a mapping, got {describe(given)}")
        raw: Mapping[Any, Any] = given
        prepare = getattr(cls, "config_prepare", None)
        if prepare is not None:
            raw = prepare(raw)
        fields = {field.name: field for field in attrs.fields(cast(Any, cls))}
        types_ = field_types(cls)
        kwargs: dict[str, Any] = {}
        failed = False
        for key, given in raw.items():
            key_path = join_path(path, key)
            if not isinstance(key, str) or key not in fields:
                failed = True
                self.problem(key_path, "unknown key" + _suggestion(key, fields))
                continue
            overrides = fields[key].metadata.get(OVERRIDES)
            tp = types_[key]
            value = given
            if overrides and isinstance(given, Mapping) and not getattr(tp, "config_atomic", False):
                value = merge_overrides(tp, overrides, given)
            elif overrides and given is None:
                value = dict(overrides)
            built = self.value(tp, value, key_path)
            if built is _FAILED:
                failed = True
            else:
                kwargs[key] = built
        for name, field in fields.items():
            if name not in kwargs and field.default is attrs.NOTHING and name not in raw:
                failed = True
                self.problem(join_path(path, name), "required key missing")
        if failed:
            return _FAILED
        instance = cls(**kwargs)
        check = getattr(instance, "config_problems", None)
        if check is not None:
            problems = list(check())
            for key, message in problems:
                self.problem(_relative_path(path, key), message)
            if problems:
                return _FAILED
        return instance


def _relative_path(path: str, key: str | tuple[object, ...]) -> str:
    for part in (key,) if isinstance(key, str) else key:
        if part != "":
            path = join_path(path, part)
    return path


def _suggestion(key: object, known: Iterable[str]) -> str:
    if not isinstance(key, str):
        return ""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f' (did you mean "{close[0]}"?)' if close else ""


def structure(cls: type[T], raw: object, path: str) -> T:
    """
    Build config class ``cls`` from raw YAML data; ``path`` names the root in errors.

    Raises :class:`ConfigError` listing every problem found.
    """
    structurer = _Structurer()
    result = structurer.section(cls, raw, path)
    if structurer.problems or isinstance(result, _Failed):
        raise ConfigError(structurer.problems)
    return result


# -- unstructuring --------------------------------------------------------------------------


def unstructure_value(tp: Any, value: Any) -> Any:
    """The YAML data a user would write for ``value`` of annotation ``tp``."""
    kind = value_kind(tp)
    if kind is not None:
        return kind.format(value)
    if is_config_class(tp):
        return unstructure(value)
    if value is None:
        return None
    inner = optional_inner(tp)
    if inner is not None:
        return unstructure_value(inner, value)
    origin = get_origin(tp)
    if origin is tuple:
        return [unstructure_value(get_args(tp)[0], item) for item in value]
    if origin in (Mapping, dict):
        key_type, value_type = get_args(tp)
        return {
            unstructure_value(key_type, key): unstructure_value(value_type, item)
            for key, item in value.items()
        }
    return copy.deepcopy(value)


def unstructure(instance: object) -> dict[str, Any]:
    """A config instance as YAML-ready plain data; ``structure`` of it gives it back.

    A class may define ``config_unstructure(self)`` to write itself (a choice of one
    of several sections writes only the chosen one).
    """
    own = getattr(instance, "config_unstructure", None)
    if own is not None:
        written: dict[str, Any] = own()
        return written
    cls = type(instance)
    types_ = field_types(cls)
    return {
        field.name: unstructure_value(types_[field.name], getattr(instance, field.name))
        for field in attrs.fields(cast(Any, cls))
    }
