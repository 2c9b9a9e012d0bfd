"""Command-line flags generated from documented dataclass fields, so a config has one source.

    @dataclass
    class Config:
        epochs: int = field(default=20, metadata={"help": "passes over the training split"})

    add_fields(parser, Config)        # --epochs (int, default 20, that help)
    cfg = from_args(Config, args)     # Config(epochs=args.epochs)

Supported field types: int, float, str, Path, bool (a store_true flag; default False), Literal
choices, X | None, and list[str] / list[int] / list[float] (comma-separated, or space-separated
with metadata {"nargs": "+"}). metadata keys: help, flag (another flag name), nargs, required.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from pathlib import Path
from typing import Any, Literal

from src.runtime import csv_list


def _csv_of(kind: type) -> Any:
    def parse(text: str) -> list:
        return [kind(t) for t in csv_list(text)]

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_fields(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per field of dataclass `cls` (except `exclude`); `defaults` overrides some."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        meta = f.metadata
        tp = _unwrap_optional(hints[f.name])
        default = (defaults or {}).get(f.name, _default(f))
        kw: dict[str, Any] = {"help": meta.get("help"), "dest": f.name}
        flag = "--" + meta.get("flag", f.name)
        if tp is bool:
            if default:
                raise TypeError(f"{cls.__name__}.{f.name}: a bool flag must default to False")
            parser.add_argument(flag, action="store_true", **kw)
            continue
        if typing.get_origin(tp) is Literal:
            kw["choices"] = list(typing.get_args(tp))
            kw["type"] = type(kw["choices"][0])
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            if meta.get("nargs"):
                kw.update(type=item, nargs=meta["nargs"])
            else:
                kw["type"] = _csv_of(item)
        else:
            kw["type"] = tp
        if meta.get("required"):
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(flag, **kw)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """An instance of dataclass `cls` from the parsed flags that add_fields made."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.init and hasattr(args, f.name)
    }
    return cls(**{**values, **overrides})


def path_field(default: str | None, help: str, **meta: Any) -> Any:
    """A Path field with its help (default None: no default)."""
    return dataclasses.field(
        default=Path(default) if default is not None else None, metadata={"help": help, **meta}
    )


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The shell command that reproduces `args`: the parser's prog and every flag whose value
    differs from its default, in the parser's order (for artifacts that record their command)."""
    parts = shlex.split(parser.prog)
    for action in parser._actions:  # argparse has no public listing of its actions
        value = getattr(args, action.dest, action.default)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(flag)
        elif isinstance(value, list):
            items = [str(v) for v in value]
            parts += [flag, *items] if action.nargs in ("+", "*") else [flag, ",".join(items)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def flags(**kw: object) -> list[str]:
    """An argv from keywords, for running a stage's main() from code:
    flags(root=p, k=[1, 2], skip=True) -> ['--root', 'p', '--k', '1', '2', '--skip'];
    None and False drop out."""
    out: list[str] = []
    for k, v in kw.items():
        if v is None or v is False:
            continue
        if isinstance(v, list | tuple):
            out += [f"--{k}", *map(str, v)]
        else:
            out += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return out
