"""What every command of ``vaegen`` shares: one-line usage errors, argument types, and flags
derived from a settings dataclass."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import typing
from typing import Any, Iterable

from vaegen.errors import ConfigError
from vaegen.registry import field_type, fields, out_of_range, parse, to_mapping

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``vaegen: error: ...``, exit 2 (the usage
    is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"vaegen: error: {self.prog.removeprefix('vaegen ')}: {message}\n"
                  if self.prog != "vaegen" else f"vaegen: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a one-line error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def key_values(items: list[str] | None, *, flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` items as a mapping (values as Python literals, else strings; never evaluated)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} layers=8")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


# --- flags derived from settings -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SettingFlag:
    """One flag of a setting: its path in the settings (``ais.num_steps``) and its names."""

    path: str
    names: tuple[str, ...]


def flag_type(tp: Any, meta: Any = None):
    """The argparse type of a setting of type ``tp`` (a tuple of ints: comma-separated), checking the
    setting's declared range ``meta`` as it parses (a bad value: argparse's one line, before any work)."""
    meta = dict(meta or {})
    origin = typing.get_origin(tp)
    if origin is tuple:
        return int_list if typing.get_args(tp)[:1] == (int,) else str
    if tp not in (int, float):
        return str
    what = "an integer" if tp is int else "a number"

    def parse_number(text: str):
        try:
            value = tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if tp is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        why = out_of_range(value, meta)
        if why:
            raise argparse.ArgumentTypeError(f"{why}, got {value:g}")
        return value

    return parse_number


def add_settings_flags(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                       prefix: str = "", path: str = "") -> list[SettingFlag]:
    """One flag per setting of the settings dataclass ``cls`` (nested sections prefixed: ``--ais-num-steps``),
    with the setting's documentation, choices and its declared short names (``setting(flags=...)``);
    booleans get ``--x`` and ``--no-x``.  Every flag defaults to None (unset).  Returns the flags, for
    :func:`settings_from_flags`."""
    out = []
    exclude = set(exclude)
    for f in fields(cls):
        if f.name in exclude:
            continue
        tp = field_type(cls, f.name)
        dotted = f"{path}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += add_settings_flags(parser, tp, prefix=f"{prefix}{f.name}-", path=f"{dotted}.")
            continue
        meta = f.metadata or {}
        long = f"--{prefix}{f.name}".replace("_", "-")
        names = (long, *meta.get("flags", ()))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        doc = meta.get("doc", "")
        help_text = f"{doc} (default {default!r})" if doc else f"default {default!r}"
        if tp is bool:
            negatives = tuple("--no-" + n.removeprefix("--") for n in names)
            parser.add_argument(*names, dest=dotted, action="store_const", const=True, default=None, help=help_text)
            parser.add_argument(*negatives, dest=dotted, action="store_const", const=False, default=None,
                                help=argparse.SUPPRESS)
            out.append(SettingFlag(dotted, names + negatives))
            continue
        kwargs: dict[str, Any] = {"dest": dotted, "default": None, "help": help_text, "type": flag_type(tp, meta)}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if typing.get_origin(tp) is tuple:
            kwargs["metavar"] = "A,B,..."
        parser.add_argument(*names, **kwargs)
        out.append(SettingFlag(dotted, names))
    return out


def settings_from_flags(args: argparse.Namespace, flags: list[SettingFlag], base: Any) -> Any:
    """``base`` (a settings object) with the flags given in ``args`` in place, checked like a config
    section; a bad value is one line naming its flag."""
    mapping = to_mapping(base)
    given = False
    for flag in flags:
        value = getattr(args, flag.path, None)
        if value is None:
            continue
        given = True
        node = mapping
        *parents, leaf = flag.path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    if not given:
        return base
    try:
        return parse(type(base), mapping, "flags")
    except ConfigError as e:
        message = str(e)
        for flag in sorted(flags, key=lambda f: -len(f.path)):
            message = message.replace(f"config.flags.{flag.path}", flag.names[0]).replace(f"flags.{flag.path}",
                                                                                        flag.names[0])
        raise ConfigError(message) from None
