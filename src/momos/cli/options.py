"""Command-line options made from a config dataclass's fields, so that each option is declared once.

    add_dataclass_arguments(parser, FinetuneConfig, rename={"steps": "steps"})
    config = dataclass_from_args(FinetuneConfig, args)

Each field becomes ``--field-name`` with the field's type (``int``, ``float``, ``str``, a
``Literal`` as choices, ``bool`` as ``--x/--no-x``, ``| None`` optional), its default, and the
help text of its entry in the class docstring's ``Attributes:`` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing


def field_docs(cls) -> dict[str, str]:
    """``{field name: its description}`` from the ``Attributes:`` section of ``cls.__doc__``."""
    section = (cls.__doc__ or "").partition("Attributes:")[2]
    docs: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"\s{4,8}(\w+(?:, \w+)*): (.*)", line)
        if match:
            current = match.group(1).split(", ")
            for name in current:
                docs[name] = match.group(2).strip()
        elif current and line.strip():
            for name in current:
                docs[name] += " " + line.strip()
    return docs


def add_dataclass_arguments(parser, cls, *, only: tuple[str, ...] | None = None,
                            flags: dict[str, str] | None = None) -> None:
    """Add one option per field of ``cls`` (those in ``only``; ``flags`` renames options)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flags = flags or {}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        kind = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = docs.get(f.name, "").replace("``", "").replace("%", "%%").rstrip(".")
        if default is not None and kind is not bool:
            help_text += f" (default {default})"
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(kind), default=default, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text,
                                metavar=f.name.upper() if kind is not str else None)


def dataclass_from_args(cls, args, **overrides):
    """An instance of ``cls`` from the parsed options of :func:`add_dataclass_arguments`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def _kind(hint):
    """The option type of a field's type hint (``X | None``: that of ``X``; unset options are None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot make an option of {hint}")
        return _kind(args[0])
    if hint in (int, float, str, bool) or origin is typing.Literal:
        return hint
    raise TypeError(f"cannot make an option of {hint}")
