"""Command-line options made from a config dataclass's fields, so that each option is declared once.

    add_dataclass_arguments(parser, FinetuneConfig, rename={"steps": "steps"})
    config = dataclass_from_args(FinetuneConfig, args)

Each field becomes ``--field-name`` with the field's type (``int``, ``float``, ``str``, a
``Literal`` as choices, ``bool`` as ``--x/--no-x``, ``| None`` optional, ``tuple[T, ...]`` as a
repeatable option, ``tuple[int, int]`` as ``RxC``), its default, and the help text of its entry
in the class docstring's ``Attributes:`` section. The rules between fields stay in the
dataclass's own validation; :func:`dataclass_from_args` builds the instance that applies them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing


def field_docs(cls) -> dict[str, str]:
    """``{field name: its description}`` from the ``Attributes:`` section of ``cls.__doc__``
    (up to the first line indented less than its entries)."""
    section = (cls.__doc__ or "").partition("Attributes:")[2]
    docs: dict[str, str] = {}
    current = None
    indent = None
    for line in section.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is not None and depth < indent:
            break
        match = re.match(r"(\s{4,8})(\w+(?:, \w+)*): (.*)", line)
        if match and (indent is None or depth == indent):
            indent = len(match.group(1))
            current = match.group(2).split(", ")
            for name in current:
                docs[name] = match.group(3).strip()
        elif current:
            for name in current:
                docs[name] += " " + line.strip()
    return docs


def add_dataclass_arguments(parser, cls, *, only: tuple[str, ...] | None = None,
                            flags: dict[str, str | tuple[str, ...]] | None = None, metavars: dict[str, str] | None = None,
                            parse: dict[str, typing.Callable] | None = None, helps: dict[str, str] | None = None,
                            unset: tuple[str, ...] = (), exclusive: tuple[tuple[str, ...], ...] = ()) -> None:
    """Add one option per field of ``cls`` to ``parser`` (a parser or an argument group).

    Args:
        only: the fields to add (default all), in the dataclass's order.
        flags: option names other than ``--field-name``: one, or a tuple (the first is the
            name shown, the others are former names still accepted).
        metavars: placeholders in the usage other than the field's name.
        parse: a function from the option's text to the field's value, instead of the type's.
        helps: help texts other than the field's docs.
        unset: fields whose option is None unless given, so that a command can tell; the
            field's default still applies (:func:`dataclass_from_args` skips None).
        exclusive: groups of fields of which at most one may be given.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    flags, metavars, parse, helps = flags or {}, metavars or {}, parse or {}, helps or {}
    groups: dict[str, typing.Any] = {}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        kind, shape = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = helps.get(f.name) or docs.get(f.name, "").replace("``", "").rstrip(".")
        help_text = help_text.replace("%", "%%")
        if default is not None:
            help_text += f" (default {default})" if kind is not bool else f" (default: {'on' if default else 'off'})"
        if shape == "repeated" and f.name not in parse:
            help_text += " (repeatable)"
        names = flags.get(f.name, "--" + f.name.replace("_", "-"))
        names = (names,) if isinstance(names, str) else tuple(names)
        flag = names[0]
        target = parser
        for members in exclusive:
            if f.name in members:
                key = members[0]
                if key not in groups:
                    groups[key] = parser.add_mutually_exclusive_group()
                target = groups[key]
        options = {"dest": f.name, "help": help_text, "default": None if f.name in unset else default}
        if f.name in parse:
            target.add_argument(*names, type=parse[f.name], metavar=metavars.get(f.name, f.name.upper()), **options)
        elif kind is bool:
            target.add_argument(*names, action=argparse.BooleanOptionalAction, **options)
        elif typing.get_origin(kind) is typing.Literal:
            target.add_argument(*names, choices=typing.get_args(kind), **options)
        elif shape == "repeated":
            # A list, empty for a field of no entries; None for one whose default is None.
            factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            entries = factory() if factory is not None else default
            target.add_argument(*names, type=kind, action="append", metavar=metavars.get(f.name, f.name.upper()),
                                **{**options, "default": None if entries is None else list(entries)})
        elif shape == "shape":
            target.add_argument(*names, type=_shape_parser(flag), metavar=metavars.get(f.name, "RxC"), **options)
        else:
            target.add_argument(*names, type=kind, metavar=metavars.get(f.name, f.name.upper() if kind is not str
                                                                      else None), **options)


def dataclass_from_args(cls, args, **overrides):
    """An instance of ``cls`` from the parsed options of :func:`add_dataclass_arguments`: options
    left None take the field's default, repeated ones become tuples; the instance validates itself.

    Raises:
        ValueError: an ``RxC`` option that is not one (naming the option), or what ``cls`` rejects.
    """
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(value, _Unparsed):
            raise ValueError(str(value))
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**{**values, **overrides})


def option_flag(parser, dest: str) -> str:
    """The option string of ``parser``'s option that sets ``dest`` (``--field-name`` if none)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return max(action.option_strings, key=lambda flag: flag.startswith("--"))
    return "--" + dest.replace("_", "-")


class _Unparsed(str):
    """An ``RxC`` option's text that is not ``RxC``; reported when the config is built, so that
    the command fails with its own one-line error (exit 2) rather than argparse's exit."""

    def __new__(cls, flag: str, text: str):
        return super().__new__(cls, f"{flag} must look like 3x3, got {text!r}")


def _shape_parser(flag: str):
    def parse(text: str):
        try:
            return tuple(int(size) for size in text.lower().split("x"))
        except ValueError:
            return _Unparsed(flag, text)
    return parse


def _kind(hint):
    """``(option type, shape)`` of a field's type hint: shape ``"single"``, ``"repeated"``
    (``tuple[T, ...]``) or ``"shape"`` (``tuple[int, int]``). ``X | None``: that of ``X``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cannot make an option of {hint}")
        return _kind(args[0])
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return args[0], "repeated"
        if args and all(a is int for a in args):
            return int, "shape"
    if hint in (int, float, str, bool) or origin is typing.Literal:
        return hint, "single"
    raise TypeError(f"cannot make an option of {hint}")
