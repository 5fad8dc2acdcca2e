"""
The configuration reference of ``docs/configuration.md``, generated from the config classes.

``python -m kraken.config.reference docs/configuration.md`` rewrites the part of
that file between the markers; ``--check`` only says whether it is up to date
(a test runs the same check, so the reference never drifts from the code).
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TextIO, get_args, get_origin

import attrs

from kraken.config.daemons import CONFIG_CLASSES, HERD_MEMBERS, HerdConfig
from kraken.config.structure import (
    DEFAULT_DOC,
    DOC,
    field_types,
    is_config_class,
    optional_inner,
    unstructure_value,
    value_kind,
)

BEGIN: Final = (
    "<!-- BEGIN GENERATED REFERENCE: python -m kraken.config.reference docs/configuration.md -->"
)
END: Final = "<!-- END GENERATED REFERENCE -->"


def type_name(tp: Any) -> str:
    """How the reference names the type of a setting (``duration``, ``list of host:port``)."""
    kind = value_kind(tp)
    if kind is not None:
        return kind.name
    if is_config_class(tp):
        return "section"
    inner = optional_inner(tp)
    if inner is not None:
        return f"{type_name(inner)} or null"
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(f"`{choice}`" for choice in get_args(tp))
    if origin is tuple:
        item = get_args(tp)[0]
        return "list of entries" if is_config_class(item) else f"list of {type_name(item)}"
    if origin in (Mapping, dict):
        key, value = get_args(tp)
        return f"mapping of {type_name(key)} to {type_name(value)}"
    return "any"


def flow(value: object) -> str:
    """YAML data in one line of flow style (``{static: [127.0.0.1:15003]}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{flow(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(item) for item in value) + "]"
    if value == "":
        return '""'
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows(cls: type, default: object, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` for every setting of ``cls``, sections depth first."""
    types_ = field_types(cls)
    for field in attrs.fields(typing.cast(Any, cls)):
        key = f"{prefix}{field.name}"
        tp = types_[field.name]
        doc = field.metadata.get(DOC, "")
        value = getattr(default, field.name)
        if is_config_class(tp) and tp in CONFIG_CLASSES.values():
            yield (f"`{key}`", "section", "", doc)
            continue
        if is_config_class(tp):
            atomic = getattr(tp, "config_atomic", False)
            note = " Given as a whole: replaces the default entirely." if atomic else ""
            yield (f"`{key}`", "section", "", doc + note)
            yield from rows(tp, value, f"{key}.")
            continue
        shown = field.metadata.get(DEFAULT_DOC) or f"`{flow(unstructure_value(tp, value))}`"
        yield (f"`{key}`", type_name(tp), shown, doc)
        if get_origin(tp) is tuple and is_config_class(get_args(tp)[0]):
            yield from _entry_rows(get_args(tp)[0], f"{key}[].")


def _entry_rows(cls: type, prefix: str) -> Iterator[tuple[str, str, str, str]]:
    types_ = field_types(cls)
    for field in attrs.fields(typing.cast(Any, cls)):
        tp = types_[field.name]
        if field.default is attrs.NOTHING:
            shown = "required"
        elif field.default is None or not is_config_class(optional_inner(tp) or tp):
            shown = f"`{flow(unstructure_value(tp, field.default))}`"
        else:
            shown = ""
        yield (f"`{prefix}{field.name}`", type_name(tp), shown, field.metadata.get(DOC, ""))
        # The keys of a section inside an entry (a backend's options) are listed too.
        section_type = optional_inner(tp) or tp
        if is_config_class(section_type):
            yield from _entry_rows(section_type, f"{prefix}{field.name}.")


def table(cls: type) -> str:
    """The Markdown table of every key of config class ``cls`` with its defaults."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows(cls, cls())]
    return "\n".join(lines)


def render() -> str:
    """The generated reference: one section per daemon, then the herd."""
    parts = []
    for kind, cls in CONFIG_CLASSES.items():
        parts.append(f"### {kind}\n\n{(cls.__doc__ or '').strip().splitlines()[0]}\n")
        if cls is HerdConfig:
            members = ", ".join(f"`{key}` ({daemon})" for key, daemon in HERD_MEMBERS.items())
            parts.append(
                f"Members: {members}. Each member section takes that daemon's keys, as above; "
                "its `data_dir` defaults to `<data_dir>/<daemon>`.\n"
            )
        parts.append(table(cls) + "\n")
    return "\n".join(parts)


def update_document(text: str) -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` regenerated."""
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END)
    return text[:start] + "\n\n" + render() + "\n" + text[end:]


def main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """Rewrite (or with ``--check``, verify) the reference in the given Markdown file."""
    check = "--check" in argv
    paths = [arg for arg in argv if arg != "--check"]
    if len(paths) != 1:
        out.write("usage: python -m kraken.config.reference [--check] docs/configuration.md\n")
        return 2
    with open(paths[0], encoding="utf-8") as stream:
        text = stream.read()
    updated = update_document(text)
    if check:
        if updated != text:
            out.write(f"{paths[0]}: the configuration reference is out of date\n")
            return 1
        return 0
    with open(paths[0], "w", encoding="utf-8") as stream:
        stream.write(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
