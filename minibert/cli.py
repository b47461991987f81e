"""The command lines' one flag builder: a dataclass of options becomes an argparse parser, field by field.

Each field `name: type = default` becomes `--name` (underscores as dashes): bools are switches, ints and floats are
parsed as such, everything else is a string; the help text comes from `help_texts` and shows the default when there is
one, so `--help` documents every flag with its default.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping
from dataclasses import fields
from typing import Any


def options_parser(options: type, prog: str, description: str | None, help_texts: Mapping[str, str],
                   choices: Mapping[str, Collection[str]] | None = None,
                   required: Collection[str] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass `options`."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(options):
        flag = "--" + f.name.replace("_", "-")
        text = help_texts[f.name] if f.default in (None, False, "") else f"{help_texts[f.name]} (default: {f.default})"
        if str(f.type) == "bool":
            parser.add_argument(flag, action="store_true", help=text)
            continue
        kind: Any = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(flag, type=kind, default=f.default, help=text, required=f.name in required,
                            choices=(choices or {}).get(f.name))
    return parser
