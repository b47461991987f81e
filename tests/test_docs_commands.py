"""Every `python -m minibert.X ...` command in README.md and docs/*.md is accepted by that module's own parser, and
every relative link there points to a file that exists: a renamed flag or a moved page fails here, not for a reader.

Commands are taken from ```bash blocks (backslash continuations joined, `name="..."` variables of the block
expanded, `&&` / `|` / `;` ending a command, `torchrun ... -m minibert.X` included) and from inline code spans. They
are parsed, never run (an inline span without flags only names the command): `parse_args` of the module where it
has one (its own checks included), the bare options parser for `--resume` forms (which would read the run folder)
and for modules without one. A `...` argument stands for "the rest of the flags" and is dropped.

With `--runslow`, `test_documented_commands_run` also runs them, for real, as a reader would paste them (its docstring
says how); `test_every_documented_line_has_a_plan` checks, without running anything, that every line of a block is
run or skipped for a stated reason.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from minibert.cli import options_parser
from tests.servers import HOST, free_port, wait_healthy

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


# -----------------------------------------------------------------------------------------------------------------
# Running them

MINILM = "../shared/models/all-MiniLM-L6-v2"
UNSUP_HEAD = "../inputs/unsup-head.txt.gz"  # the first UNSUP_DOCS documents of IMDB's unlabelled reviews
UNSUP_DOCS = 400
CONLL_HEAD = "../inputs/conll-dev-head.txt"  # the first CONLL_SENTENCES sentences of CoNLL-2003's dev set
CONLL_SENTENCES = 200
PORT = "{port}"  # a free port, chosen when the server starts


@dataclass(frozen=True)
class Rewrite:
    """In commands of `module` ("*": any, "curl": curl lines): the tokens `old` become `new` (a one-token `old` also
    matches a path or URL beneath it, the rest kept); `old=()` appends `new` (argparse: the last value of a flag
    wins, so an appended limit replaces the page's)."""
    module: str
    old: tuple[str, ...]
    new: tuple[str, ...]
    why: str
    unless: tuple[str, ...] = ()  # not in commands with one of these flags


REWRITES = [
    Rewrite("*", ("sentence-transformers/all-MiniLM-L6-v2",), (MINILM,), "a Hub id: the same checkpoint, local"),
    Rewrite("finetune", ("--dataset", "stanfordnlp/imdb"), ("--train-file", "../shared/data/imdb/train.csv"),
            "a Hub dataset: the same IMDB reviews, local"),
    Rewrite("finetune", ("...",), ("--train-file", "../shared/data/sst2/train.tsv"),
            "`...` (\"the rest of the flags\"): the README's training file"),
    Rewrite("finetune", (), ("--max-steps", "1", "--batch-size", "8", "--max-train-samples", "32",
                             "--max-eval-samples", "8"), "one small step, a few seconds", ("--resume",)),
    Rewrite("pretrain", ("../shared/data/imdb/unsup.txt.gz",), (UNSUP_HEAD,),
            f"the first {UNSUP_DOCS} documents: tokenising all 50,000 takes minutes"),
    Rewrite("pretrain", (), ("--max-steps", "1", "--batch-size", "8", "--max-eval-samples", "8"),
            "one small step, a few seconds"),
    Rewrite("predict", ("../shared/data/conll2003/dev.txt",), (CONLL_HEAD,),
            f"the first {CONLL_SENTENCES} sentences: tagging all 3,250 takes a minute on a CPU"),
    Rewrite("serve", (), ("--host", "127.0.0.1", "--port", PORT), "127.0.0.1 only, a free port", ("--help",)),
    Rewrite("curl", ("localhost:8000",), (f"127.0.0.1:{PORT}",), "the server's port"),
    Rewrite("*", ("FOLDER",), (MINILM,), "a placeholder for any embedding model folder"),
]

# Programs of lines kept out on purpose (the module docstring says why).
SKIPPED = {"pip": "installs the project", "git": "version control", ".": "activates the environment",
           "source": "activates the environment", "pytest": "the tests themselves",
           "torchrun": "multi-process DDP: tests/test_ddp.py"}
PYTHONS = {"python", "python3"}


@dataclass
class Step:
    where: str  # file:line
    block: int  # steps of one ```bash block share a number (an inline span has its own)
    kind: str  # run | curl | skip | unknown
    doc: str  # the command as the page writes it
    argv: list[str] = field(default_factory=list)  # run: the module's flags; curl: curl's arguments (rewritten)
    doc_argv: list[str] = field(default_factory=list)  # the same before REWRITES
    module: str = ""
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    status: int = 0
    rewrites: list[int] = field(default_factory=list)  # indices into REWRITES

    def shown(self) -> str:
        if self.kind == "run":
            return shlex.join(["python", "-m", f"minibert.{self.module}", *self.argv])
        return shlex.join([self.kind, *self.argv])


def rewrite(module: str, argv: list[str]) -> tuple[list[str], list[int]]:
    used = []
    for index, r in enumerate(REWRITES):
        if r.module not in (module, "*") or (r.module == "*" and module == "curl") or set(r.unless) & set(argv):
            continue
        if not r.old:
            argv, _ = [*argv, *r.new], used.append(index)
            continue
        out, i = [], 0
        while i < len(argv):
            if tuple(argv[i:i + len(r.old)]) == r.old:
                out.extend(r.new)
                i += len(r.old)
                used.append(index)
            elif len(r.old) == 1 and argv[i].startswith(r.old[0] + "/"):
                out.append(r.new[-1] + argv[i][len(r.old[0]):])
                i += 1
                used.append(index)
            else:
                out.append(argv[i])
                i += 1
        argv = out
    return argv, sorted(set(used))


def _segments(tokens: list[str]) -> list[tuple[list[str], str | None]]:
    """A command line's simple commands, each with the operator after it (`&&`, `|`, ... or None)."""
    out, current = [], []
    for token in tokens:
        if token in ENDS:
            out.append((current, token))
            current = []
        else:
            current.append(token)
    return [*out, (current, None)] if current else out


def _line_steps(line: str, where: str, block: int, variables: dict[str, str], env: dict[str, str]) -> list[Step]:
    doc = " ".join(line.split())
    expected = re.search(r"#.*\bexits? (\d+)", line)
    steps, stdin = [], None
    for tokens, operator in _segments(_tokens(line, variables)):
        command_env = dict(env)
        while tokens and re.fullmatch(r"[A-Za-z_]\w*=.*", tokens[0]):
            name, value = tokens.pop(0).split("=", 1)
            command_env[name] = value
        if not tokens:
            continue
        program = tokens[0]
        step = Step(where, block, "unknown", doc, env=command_env, stdin=stdin)
        stdin = None
        if program == "echo" and operator == "|":
            stdin = " ".join(tokens[1:]) + "\n"
            continue
        if operator not in (None, "&&", ";"):
            step.argv = tokens  # a pipe or a redirection this test does not know how to run
        elif program in PYTHONS and tokens[1:2] == ["-m"] and tokens[2].startswith("minibert."):
            step.kind, step.module, step.doc_argv = "run", tokens[2].removeprefix("minibert."), tokens[3:]
            step.argv, step.rewrites = rewrite(step.module, tokens[3:])
            step.status = int(expected.group(1)) if expected else 0
        elif program == "curl":
            step.kind = "curl"
            step.argv, step.rewrites = rewrite("curl", tokens[1:])
        elif program in SKIPPED or (program in PYTHONS and (tokens[1:3] == ["-m", "venv"]
                                                           or tokens[1:2] and tokens[1].startswith("bench/"))):
            step.kind, step.argv = "skip", tokens
        else:
            step.argv = tokens
        steps.append(step)
    return steps


def page_steps(text: str, where: str) -> list[Step]:
    """The steps of a page in its order: the lines of its ```bash blocks, and its inline spans that are whole
    commands (fragments are left to test_docs_commands.py)."""
    found: list[tuple[int, Step]] = []
    blocks = list(re.finditer(r"```bash\n(.*?)```", text, re.S))
    env: dict[str, str] = {}  # `export`ed: kept for the rest of the page, as in a terminal
    for number, block in enumerate(blocks):
        first_line = text.count("\n", 0, block.start(1)) + 1
        variables: dict[str, str] = {}
        for offset, line in _logical_lines(block.group(1)):
            if not re.match(r"\s*[A-Za-z_.$]", line):
                continue  # empty, a comment, or output shown after a command
            assignment = re.fullmatch(r"\s*(export\s+)?([A-Za-z_]\w*)=(.*)", line)
            if assignment and len(shlex.split(assignment.group(3))) <= 1:  # not `NAME=value command ...`
                value = (shlex.split(assignment.group(3)) or [""])[0]
                (env if assignment.group(1) else variables)[assignment.group(2)] = value
                continue
            for step in _line_steps(line, f"{where}:{first_line + offset}", number, variables, env):
                found.append((first_line + offset, step))
    prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for number, span in enumerate(re.finditer(r"`([^`]*-m minibert\.[^`]*)`", prose), start=len(blocks)):
        line = prose.count("\n", 0, span.start()) + 1
        for step in _line_steps(span.group(1).replace("\n", " "), f"{where}:{line}", number, {}, {}):
            if step.kind == "run" and not step.doc_argv:
                continue  # a bare `python -m minibert.X` names the command
            if step.kind == "run":
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    if parse_error(step.module, [a for a in step.doc_argv if a != "..."]) is not None:
                        step.kind = "fragment"
            found.append((line, step))
    return [step for _, step in sorted(found, key=lambda item: item[0])]


PAGES = {path.relative_to(REPO).as_posix(): page_steps(path.read_text(), path.relative_to(REPO).as_posix())
         for path in DOCS}


def test_every_documented_line_has_a_plan() -> None:
    """Every line of a ```bash block is run, sent to the server or skipped for a reason the docstring gives; every
    rewrite is used (the table holds no dead entries) and none leaves a Hub id or an unfilled `...`. Runs nothing."""
    steps = [s for page in PAGES.values() for s in page]
    unknown = [f"{s.where}: {s.doc}" for s in steps if s.kind == "unknown"]
    assert not unknown, "lines this test does not know how to run (teach it, or skip them with a reason):\n" + \
        "\n".join(unknown)
    runs = [s for s in steps if s.kind == "run"]
    assert {s.module for s in runs} >= {"finetune", "predict", "embed", "serve", "pretrain"}
    assert [r.why for i, r in enumerate(REWRITES) if not any(i in s.rewrites for s in steps)] == []
    leftovers = [f"{s.where}: {s.shown()}" for s in runs
                 if "..." in s.argv or "--dataset" in s.argv or any(a.startswith("sentence-transformers/")
                                                                      for a in s.argv)]
    assert not leftovers, leftovers
    serves = [s for s in runs if s.module == "serve"]
    assert serves and all(a != "--port" or s.argv[i + 1] == PORT for s in serves for i, a in enumerate(s.argv))


def test_the_plan_of_a_block() -> None:
    text = ("```bash\nexport OMP_NUM_THREADS=1\nflags=\"--epochs 2\"\npip install -e .\n"
            "python -m minibert.finetune --model sentence-transformers/all-MiniLM-L6-v2 $flags \\\n"
            "    --output-dir weights/x && python -m minibert.predict --model weights/x  # exits 1\n"
            "echo \"a text\" | python -m minibert.predict --model weights/x\n{\"label\": 1}\n"
            "python -m minibert.serve --model weights/x\ncurl -s localhost:8000/predict --json '{}'\n"
            "python bench/serve.py\nmake all\n```\nand `python -m minibert.predict --all-scores`.\n")
    steps = page_steps(text, "t.md")
    assert [(s.where, s.kind, s.module) for s in steps] == [
        ("t.md:4", "skip", ""), ("t.md:5", "run", "finetune"), ("t.md:5", "run", "predict"),
        ("t.md:7", "run", "predict"), ("t.md:9", "run", "serve"), ("t.md:10", "curl", ""), ("t.md:11", "skip", ""),
        ("t.md:12", "unknown", ""), ("t.md:14", "fragment", "predict")]
    finetune, predict, piped, serve, curl = steps[1:6]
    assert finetune.argv[:6] == ["--model", MINILM, "--epochs", "2", "--output-dir", "weights/x"]
    assert finetune.argv[6:8] == ["--max-steps", "1"] and finetune.env == {"OMP_NUM_THREADS": "1"}
    assert (predict.status, piped.status, piped.stdin) == (1, 0, "a text\n")
    assert serve.argv == ["--model", "weights/x", "--host", "127.0.0.1", "--port", PORT]
    assert curl.argv == ["-s", f"127.0.0.1:{PORT}/predict", "--json", "{}"]


# ---------------------------------------------------------------------------------------------------------------
# Running them (--runslow)


def user_files(main: Path, inputs: Path, shared: Path) -> None:
    """What a reader brings (into `main`): the files the pages name without shipping them; and (into `inputs`) the
    slices of the shared data that REWRITES name."""
    main.mkdir()
    sample = re.search(r"```\n(text,label\n.*?)```", (REPO / "README.md").read_text(), re.S)
    assert sample, "README.md's example of a file to predict (a ``` block starting text,label) is gone"
    (main / "reviews.csv").write_text(sample.group(1))
    (main / "texts.csv").write_text(sample.group(1))
    rows = [("how long do cats live", "Cats live 12 to 18 years.", 1),
            ("how long do cats live", "Cheese is made from milk.", 0),
            ("what is deep learning?", "Deep learning trains neural networks of many layers.", 1),
            ("what is deep learning?", "The river flows to the sea.", 0)] * 4
    for name in ("pairs.csv", "dev_pairs.csv"):
        (main / name).write_text("query,passage,label\n" + "".join(f'"{q}","{p}",{y}\n' for q, p, y in rows))
    with gzip.open(shared / "data" / "imdb" / "unsup.txt.gz", "rt") as f:
        head = [next(f) for _ in range(UNSUP_DOCS)]
    inputs.mkdir()
    sentences = (shared / "data" / "conll2003" / "dev.txt").read_text().split("\n\n")
    (inputs / "conll-dev-head.txt").write_text("\n\n".join(sentences[:CONLL_SENTENCES]) + "\n")
    with gzip.open(inputs / "unsup-head.txt.gz", "wt") as f:
        f.writelines(head)
    with gzip.open(main / "texts.txt.gz", "wt") as f:
        f.writelines(head[:200])


class Clone:
    """Working directories like a clone, one a page (`<root>/NN-page/main`, beside links to `shared` and `inputs`),
    where the pages' commands run in order. A page's `weights/` starts with links to the run folders the pages before
    it wrote (inference.md predicts with finetuning.md's `weights/sst2`), except the folders it writes itself, which
    start absent as for a reader who runs only that page (README.md and finetuning.md both show the Hub run into
    `weights/imdb`)."""

    def __init__(self, root: Path, shared: Path) -> None:
        self.root = self.main = root
        (root / "shared").symlink_to(shared)
        user_files(root / "user", root / "inputs", shared)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "MINIBERT_CACHE": str(root / "cache"),
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    "PYTHONUNBUFFERED": "1"}
        self.results: dict[str, str | None] = {}  # page -> its failure, None when every command passed
        self.server: tuple[subprocess.Popen, Step, int, Path] | None = None
        self.timings: list[str] = []

    def start_page(self, index: int, page: str) -> None:
        folder = self.root / f"{index:02d}-{Path(page).stem}"
        self.main = folder / "main"
        (self.main / "weights").mkdir(parents=True)
        for name in ("shared", "inputs"):
            (folder / name).symlink_to(self.root / name)
        for path in (self.root / "user").iterdir():
            shutil.copy(path, self.main)
        writes = {Path(s.argv[i + 1]) for s in PAGES[page] if s.kind == "run"
                  for i, flag in enumerate(s.argv[:-1]) if flag == "--output-dir"}
        for earlier in sorted(self.root.glob("*-*/main/weights/*")):
            link = self.main / "weights" / earlier.name
            if earlier.parents[2] != folder and Path("weights", earlier.name) not in writes:
                link.unlink(missing_ok=True)
                link.symlink_to(earlier.resolve())

    def run_through(self, page: str) -> str | None:
        for index, name in enumerate(PAGES):
            if name not in self.results:
                self.start_page(index, name)
                try:
                    for step in PAGES[name]:
                        began = time.monotonic()
                        self.step(step)
                        if step.kind in ("run", "curl"):
                            self.timings.append(f"{time.monotonic() - began:6.1f} s  {step.where}  {step.shown()}")
                    self.stop_server()
                    self.results[name] = None
                except AssertionError as e:
                    self.stop_server(check=False)
                    self.results[name] = str(e)
            if name == page:
                return self.results[name]
        raise KeyError(page)

    def fail(self, step: Step, what: str, output: str = "") -> None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise AssertionError(f"{step.where}: {step.doc}\n  ran as: {step.shown()}\n  in {self.main}: {what}"
                             + (f"\n{tail}" if tail else ""))

    def step(self, step: Step) -> None:
        if self.server and (step.kind != "curl" or step.block != self.server[1].block):
            self.stop_server()
        if step.kind == "run" and step.module == "serve" and "--help" not in step.argv:
            self.start_server(step)
        elif step.kind == "run":
            self.run(step)
        elif step.kind == "curl":
            self.curl(step)
        elif step.kind == "unknown":
            self.fail(step, "a line this test does not know how to run")

    def run(self, step: Step) -> None:
        proc = subprocess.run([sys.executable, "-m", f"minibert.{step.module}", *step.argv], cwd=self.main,
                              env={**self.env, **step.env}, input=step.stdin, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != step.status:
            self.fail(step, f"exit status {proc.returncode}, the page expects {step.status}", proc.stderr)
        if step.status:
            return
        flags = dict(zip(step.argv, step.argv[1:]))
        if "--output-dir" in flags and not (self.main / flags["--output-dir"] / "best" / "config.json").is_file():
            self.fail(step, f"no {flags['--output-dir']}/best/config.json", proc.stderr)
        if "--help" in step.argv or step.module not in ("predict", "embed"):
            return
        if "--output" in flags:
            path = self.main / flags["--output"]
            if not path.is_file():
                self.fail(step, f"no {flags['--output']}", proc.stderr)
            lines = path.read_text().splitlines()
        else:
            lines = proc.stdout.splitlines()
        if not lines:
            self.fail(step, "no JSON lines written", proc.stderr)
        for line in lines:
            json.loads(line)

    def start_server(self, step: Step) -> None:
        port = free_port()
        argv = [a.replace(PORT, str(port)) for a in step.argv]
        log = self.main / f"serve-{port}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "minibert.serve", *argv], cwd=self.main,
                                    env={**self.env, **step.env}, stdout=out, stderr=subprocess.STDOUT)
        self.server = (proc, step, port, log)
        problem = wait_healthy(proc, f"http://{HOST}:{port}", 180)
        if problem is not None:
            self.stop_server(check=False)
            self.fail(step, problem, log.read_text())

    def stop_server(self, check: bool = True) -> None:
        if not self.server:
            return
        proc, step, _, log = self.server
        self.server = None
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            if check:
                self.fail(step, "the server did not exit within 60 s of SIGTERM", log.read_text())
            return
        if check and status != step.status:
            self.fail(step, f"the server exited with {status} after SIGTERM, the page expects {step.status}",
                      log.read_text())

    def curl(self, step: Step) -> None:
        if not self.server:
            self.fail(step, "no server started before this request in its block")
        url, body, headers, args = None, None, {}, [a.replace(PORT, str(self.server[2])) for a in step.argv]
        while args:
            arg = args.pop(0)
            if arg in ("-s", "--silent"):
                continue
            if arg == "--json":
                body = args.pop(0).encode()
                headers.update({"Content-Type": "application/json", "Accept": "application/json"})
            elif arg == "-H":
                name, value = args.pop(0).split(":", 1)
                headers[name.strip()] = value.strip()
            elif not arg.startswith("-") and url is None:
                url = arg if "://" in arg else "http://" + arg
            else:
                self.fail(step, f"curl's {arg} is not one this test knows")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                json.loads(answer.read())
        except urllib.error.HTTPError as e:
            self.fail(step, f"HTTP {e.code}", e.read().decode(errors="replace"))
        except (urllib.error.URLError, OSError, ValueError) as e:
            self.fail(step, f"no JSON answer: {e}", self.server[3].read_text())


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path, minilm_dir: Path) -> Clone:
    return Clone(tmp_path_factory.mktemp("clone"), shared_dir)


@pytest.mark.slow
@pytest.mark.parametrize("page", list(PAGES))
def test_documented_commands_run(page: str, clone: Clone) -> None:
    """Every `python -m minibert.X ...` command of the page, run for real as a reader would paste it.

    Each page's commands run in the order of the page, in a working directory set up like a clone of the repository
    (`<tmp>/NN-page/main` beside links to the real shared folder and to the slices REWRITES name, so `../shared/...`
    and `weights/...` resolve), because later commands read what earlier ones wrote (predict on the folder finetune
    wrote). The pages run in the order of DOCS (README, then docs/ alphabetically), each seeing the run folders of
    the pages before it that it does not write itself (`Clone`): inference.md and serving.md use finetuning.md's
    `weights/sst2`. A test for one page first runs the pages before it. Each command must exit 0 (or N where its
    line says `# exits N`), and its `--output` file (JSON lines) or `--output-dir` run folder (`best/config.json`)
    must exist afterwards; `predict` or `embed` to stdout must print JSON lines. A failure names the page's
    file:line, the command as written and as run, and the end of its stderr; the seconds each command took are
    printed.

    What a command runs is what the page says, changed only by REWRITES below (offline, and a few seconds per training
    command): every change is in that one table, with its reason. The files a reader brings and the pages name without
    shipping (`reviews.csv`, `pairs.csv`, ...) are written by `user_files`; `reviews.csv` is the README's own example.

    `serve` is started on 127.0.0.1 at a free port, `/health` awaited (bounded), the requests of the `curl` lines that
    follow it in its block sent (each must answer 200 with JSON), then it is stopped with SIGTERM and must exit 0.

    Lines in a ```bash block that are not run, on purpose (`test_every_documented_line_has_a_plan` keeps this list
    closed: any other kind of line fails it):
    - `pip install`, `python3 -m venv`, `. .venv/bin/activate`, `git`: installing the project, which the test runs in;
    - `pytest`: the tests themselves;
    - `python bench/...`: the benchmarks, which need transformers and minutes of CPU; tests/test_bench_scripts.py runs
      them small;
    - `torchrun ...`: multi-process DDP; tests/test_ddp.py runs it;
    - output shown after a command (a line that does not start with a word, e.g. `{"entities": ...`).
    Inline code spans run when they are whole commands (their module's parser accepts them, `--resume` forms too);
    fragments naming a few flags in a sentence (`python -m minibert.predict --all-scores`) are only parsed, by
    test_documented_command_parses.
    """
    failure = clone.run_through(page)
    print("\n".join(["seconds per command so far:", *clone.timings]))
    assert failure is None, failure
