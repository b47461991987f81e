"""Every `python -m minibert.X ...` command in README.md and docs/*.md is accepted by that module's own parser, and
every relative link there points to a file that exists: a renamed flag or a moved page fails here, not for a reader.

Commands are taken from ```bash blocks (backslash continuations joined, `name="..."` variables of the block
expanded, `&&` / `|` / `;` ending a command, `torchrun ... -m minibert.X` included) and from inline code spans. They
are parsed, never run (an inline span without flags only names the command): `parse_args` of the module where it
has one (its own checks included), the bare options parser for `--resume` forms (which would read the run folder)
and for modules without one. A `...` argument stands for "the rest of the flags" and is dropped.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from minibert.cli import options_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MODULES = ("finetune", "predict", "embed", "serve", "pretrain")
ENDS = {"&&", "||", "|", ";", "&", ">", ">>", "<", "2>", "2>&1"}


def _tokens(line: str, variables: dict[str, str]) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    out: list[str] = []
    for token in lexer:
        name = token[1:].strip("{}") if token.startswith("$") else None
        out.extend(shlex.split(variables[name]) if name in variables else [token])
    return out


def commands_in(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """(module, argv) for each `-m minibert.X` in a command line's tokens, argv up to the next `&&`, `|`, ...."""
    found = []
    for i, token in enumerate(tokens):
        if token == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("minibert."):
            argv = []
            for arg in tokens[i + 2:]:
                if arg in ENDS:
                    break
                if arg != "...":
                    argv.append(arg)
            found.append((tokens[i + 1].removeprefix("minibert."), argv))
    return found


def doc_commands(text: str, where: str) -> list[tuple[str, int, str, list[str], bool]]:
    """(where, line, module, argv, partial) for every minibert command in a markdown text; `partial`: an inline span,
    which may leave out required flags (`python -m minibert.predict --all-scores`)."""
    out = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        first_line = text.count("\n", 0, block.start(1)) + 1
        body = block.group(1)
        variables: dict[str, str] = {}
        for offset, line in _logical_lines(body):
            assignment = re.fullmatch(r"\s*(?:export\s+)?([A-Za-z_]\w*)=(.*)", line)
            if assignment and len(shlex.split(assignment.group(2))) <= 1:  # not `NAME=value command ...`
                variables[assignment.group(1)] = (shlex.split(assignment.group(2)) or [""])[0]
                continue
            for module, argv in commands_in(_tokens(line, variables)):
                out.append((where, first_line + offset, module, argv, False))
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for span in re.finditer(r"`([^`]*-m minibert\.[^`]*)`", prose):
        line = prose.count("\n", 0, span.start()) + 1  # prose keeps text's lines, not its offsets
        for module, argv in commands_in(_tokens(span.group(1).replace("\n", " "), {})):
            if argv:  # a bare `python -m minibert.X` names the command, it does not run it
                out.append((where, line, module, argv, True))
    return out


def _logical_lines(body: str) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with its first line's offset in the block."""
    out, pending, start = [], "", 0
    for offset, line in enumerate(body.splitlines()):
        if not pending:
            start = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def parse_error(module_name: str, argv: list[str], partial: bool = False) -> str | None:
    """None when the module's parser accepts `argv`, else what it said (usage errors exit with status 2). `partial`:
    only the flags given are checked (names, types, limits), not that the required ones are there."""
    if module_name not in MODULES:
        return f"minibert.{module_name} is not a command line ({', '.join(MODULES)})"
    module = importlib.import_module(f"minibert.{module_name}")
    resume = any(a == "--resume" or a.startswith("--resume=") for a in argv)
    try:
        if hasattr(module, "parse_args") and not resume and not partial:
            module.parse_args(argv)
        else:
            parser = options_parser(module.Options, f"python -m minibert.{module_name}", None)
            for action in parser._actions:
                action.required = action.required and not partial
            parser.parse_args(argv)
    except SystemExit as e:  # --help exits 0
        return None if e.code == 0 else f"exit status {e.code}"
    return None


ALL = [c for path in DOCS for c in doc_commands(path.read_text(), path.relative_to(REPO).as_posix())]


@pytest.mark.parametrize(("where", "line", "module", "argv", "partial"), ALL, ids=[f"{c[0]}:{c[1]}" for c in ALL])
def test_documented_command_parses(where: str, line: int, module: str, argv: list[str], partial: bool,
                                   capsys) -> None:
    error = parse_error(module, argv, partial)
    assert error is None, (f"{where}:{line}: python -m minibert.{module} {shlex.join(argv)}: {error}: "
                           f"{capsys.readouterr().err.strip()}")


def test_every_command_line_is_documented() -> None:
    assert {c[2] for c in ALL} >= set(MODULES)
    assert len(ALL) >= 20, len(ALL)


def test_a_wrong_flag_is_caught() -> None:
    block = "```bash\npython -m minibert.predict --model m --input a.csv \\\n    --no-such-flag 1 && echo done\n```\n"
    commands = doc_commands(block, "test")
    argv = ["--model", "m", "--input", "a.csv", "--no-such-flag", "1"]
    assert [c[2:] for c in commands] == [("predict", argv, False)]
    assert parse_error("predict", commands[0][3]) == "exit status 2"
    assert parse_error("finetune", ["--batch-size", "0"]) == "exit status 2"
    assert parse_error("pretrain", ["--config", "mini", "--train-file", "t.txt"]) == "exit status 2"  # no tokenizer
    assert parse_error("finetune", ["--resume", "weights/none", "--eval-every", "5"]) is None
    assert parse_error("serve", ["--workers", "2"]) == "exit status 2"  # --model is required
    assert parse_error("serve", ["--workers", "2"], partial=True) is None
    assert parse_error("serve", ["--workers", "x"], partial=True) == "exit status 2"


def links(path: Path) -> list[tuple[int, str]]:
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), path.read_text(), flags=re.S)
    return [(text.count("\n", 0, m.start()) + 1, m.group(1))
            for m in re.finditer(r"\]\(([^)\s]+)\)", text)]


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(REPO).as_posix() for p in DOCS])
def test_relative_links_exist(path: Path) -> None:
    broken = []
    for line, target in links(path):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            broken.append(f"{path.relative_to(REPO)}:{line}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
    assert path.name != "README.md" or len(links(path)) >= 8
