"""The command lines' one source of flags: a dataclass of options becomes an argparse parser, field by field.

Each field is declared once, with its default, help text and limits:

    batch_size: int = option(32, "examples per batch and per process", at_least=1)

and becomes `--batch-size` (underscores as dashes). Types come from the resolved type hints: a `bool` defaulting to
False is a switch, one defaulting to True gets `--no-...` to switch it off; `int`, `float` and `X | None` parse as
that type; floats must be finite. A value out of its limits is a usage error (exit status 2) in one line that names
the flag; `--help` shows every flag with its default.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import MISSING, field, fields
from typing import Any, NoReturn


def option(default: Any, help: str, *, choices: Collection[str] | None = None, at_least: float | None = None,
           above: float | None = None, at_most: float | None = None, parse: Callable[[str], Any] | None = None,
           required: bool = False) -> Any:
    """A dataclass field that is also a flag: its default, help text, allowed choices and numeric limits."""
    meta = {"help": help, "choices": choices, "at_least": at_least, "above": above, "at_most": at_most,
            "parse": parse, "required": required}
    return field(default=default, metadata=meta)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the flag and what is wrong), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help.\n")


def _value_type(hint: Any) -> Any:
    """`int | None` -> int; other hints as they are."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _converter(kind: Any, meta: dict[str, Any]) -> Callable[[str], Any]:
    """A string -> value function that checks the limits; its errors become argparse's one-line usage errors."""
    base = meta["parse"] or {int: int, float: float}.get(kind, kind if callable(kind) else str)
    names = {int: "an integer", float: "a number"}

    def convert(text: str) -> Any:
        try:
            value = base(text)
        except (TypeError, ValueError) as e:
            what = names.get(kind)
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}" if what else str(e)) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if meta["at_least"] is not None and value < meta["at_least"]:
            raise argparse.ArgumentTypeError(f"must be at least {meta['at_least']}, got {text}")
        if meta["above"] is not None and value <= meta["above"]:
            raise argparse.ArgumentTypeError(f"must be greater than {meta['above']}, got {text}")
        if meta["at_most"] is not None and value > meta["at_most"]:
            raise argparse.ArgumentTypeError(f"must be at most {meta['at_most']}, got {text}")
        return value

    return convert


def options_parser(options: type, prog: str, description: str | None) -> Parser:
    """An argparse parser with one flag per field of the dataclass `options` (fields declared with `option`)."""
    parser = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(options)
    for f in fields(options):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        shown = "" if default in (None, False, "") else f" (default: {default})"
        kind = _value_type(hints[f.name])
        if kind is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(flag, action=action, default=default, help=meta["help"])
            continue
        parser.add_argument(flag, type=_converter(kind, meta), default=default, help=meta["help"] + shown,
                            choices=meta["choices"], required=meta["required"])
    return parser


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The option names (dests) the user actually wrote on the command line, whatever their values."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # the parser's own flags, with no defaults and no checks
        if action.option_strings and action.dest != "help":
            kwargs: dict[str, Any] = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_const"
                kwargs["const"] = True
            probe.add_argument(*action.option_strings, **kwargs)
    known, _ = probe.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return set(vars(known))


def int_list(text: str) -> list[int]:
    """`--seeds 42,1,2` -> [42, 1, 2]; anything else is an error that says what is expected."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts) or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"expected comma-separated integers such as 42,1,2, got {text!r}")
    return [int(p) for p in parts]
