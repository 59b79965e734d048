"""The documentation against the code: every command, key, name and snippet the docs show.

README.md and docs/*.md are read as Markdown. Their fenced blocks and inline code are checked
with the code's own parser, config loader, registries and sweep expander, so a renamed flag, a
removed preset or a changed default makes a test fail with the file, the line and the problem.
Nothing is trained and no dataset is loaded.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import inspect
import json
import re
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from disvae import cli
from disvae import config as C
from disvae.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Files the docs name as the reader's own (they cannot exist here); anything else must resolve.
READERS_FILES = {"my_study.toml"}  # docs/sweep.md: "a file of yours"
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}
SEPARATORS = {";", "&&", "||", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "&>"}
# Grammar notation of a usage synopsis: [optional], A|B alternatives, "..." repetition.
SYNOPSIS = re.compile(r"\[-|\[[A-Za-z]|\[\.\.\.|\.\.\.|\w\|\w")
# RUN, FILE, KEY=VALUE, ... and README's `--set key=value` (the syntax, not a key)
PLACEHOLDER = re.compile(r"^([A-Z][A-Z0-9_]*([=./:][A-Z0-9_.]*)*|key=value)$")


@dataclass
class Block:
    doc: Path
    line: int  # the line of the opening fence (1-based)
    lang: str
    lines: list[tuple[int, str]]  # (line number, text) of the content

    @property
    def text(self) -> str:
        return "\n".join(t for _, t in self.lines) + "\n"

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def where(doc: Path, line: int) -> str:
    return f"{doc.relative_to(ROOT)}:{line}"


@cache
def blocks(doc: Path) -> tuple[Block, ...]:
    """The fenced code blocks of a Markdown file."""
    found, current = [], None
    for n, text in enumerate(doc.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", text)
        if current is None and fence:
            current = Block(doc, n, fence.group(1).lower(), [])
        elif current is not None and text.strip().startswith("```"):
            found.append(current)
            current = None
        elif current is not None:
            current.lines.append((n, text))
    assert current is None, f"{where(doc, current.line)}: code block never closed"
    return tuple(found)


@cache
def prose(doc: Path) -> tuple[tuple[int, str], ...]:
    """(line, code) of every inline code span outside the fenced blocks (a span may wrap)."""
    fenced = {n for b in blocks(doc) for n in range(b.line, b.lines[-1][0] + 2 if b.lines else 0)}
    lines = doc.read_text().splitlines()
    text = "\n".join("" if i + 1 in fenced else s for i, s in enumerate(lines))
    spans = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        spans.append((text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
    return tuple(spans)


# ----------------------------------------------------------------------- command lines


@cache
def parser() -> argparse.ArgumentParser:
    return cli.build_parser()


def all_parsers(p: argparse.ArgumentParser | None = None) -> list[argparse.ArgumentParser]:
    """The parser of every (sub)command, `train` first."""
    found = []
    for sub in subparsers(p or parser()).values():
        found += [sub, *all_parsers(sub)]
    return found


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_parser(words: list[str]) -> tuple[argparse.ArgumentParser, list[str], int]:
    """(the parser of the (sub)command ``words`` start with, its name, words it took)."""
    p, names = parser(), []
    while (subs := subparsers(p)) and len(names) < len(words) and words[len(names)] in subs:
        p = subs[words[len(names)]]
        names.append(words[len(names)])
    return p, names, len(names)


def split_words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True  # split on spaces and ; & | < > only (keeps [32,64], ~/x)
    return list(lexer)


def disvae_commands(words: list[str]) -> list[list[str]]:
    """The argument lists of each `disvae ...` (or `torchrun ... -m disvae ...`) in a line of
    shell, after env-var assignments, without separators, redirections and what follows them."""
    segments, current = [], []
    for w in [*words, ";"]:
        if w in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(w)
    found = []
    for seg in segments:
        kept, skip = [], False
        for w in seg:
            if skip:
                skip = False
            elif w in REDIRECTS:
                skip = True  # (the redirection's target)
            else:
                kept.append(w)
        while kept and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", kept[0]):
            kept.pop(0)  # DISVAE_CACHE=/tmp/x disvae ...
        if kept and kept[0] == "disvae":
            found.append(kept[1:])
        elif kept and kept[0] in ("torchrun", "python", "python3") and "disvae" in kept:
            i = kept.index("disvae")
            if i > 0 and kept[i - 1] == "-m":  # torchrun [its own flags] -m disvae ARGS
                found.append(kept[i + 1 :])
    return found


def commands_in(line: str) -> list[list[str]]:
    """The disvae argument lists of a line of shell; a synopsis is split on spaces alone (its
    `a|b` are alternatives, not pipes)."""
    line = line.replace("\\|", "|")  # (a `|` escaped in a Markdown table)
    if is_synopsis(line):
        words = shlex.split(line, comments=True)
        return [words[words.index("disvae") + 1 :]] if "disvae" in words else []
    return disvae_commands(split_words(line))


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """The logical lines of a shell block: `\\` continuations joined, a `$ ` prompt dropped."""
    out, pending, start = [], "", 0
    for n, text in block.lines:
        if not pending:
            start = n
        stripped = text.strip()
        if stripped.startswith("$ "):
            stripped = stripped[2:]
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


@cache
def fenced_commands() -> tuple[tuple[str, str, list[str]], ...]:
    """(where, the line, its words) of every disvae command in a fenced shell block;
    where the words cannot be split the words are None (reported by the test)."""
    found = []
    for doc in DOCS:
        for block in blocks(doc):
            if block.lang not in SHELL_LANGS:
                continue
            for n, line in shell_lines(block):
                if not re.search(r"(^|[;&|]\s*|\s-m\s+|^\S+=\S*\s+)disvae\s", line):
                    continue
                try:
                    cmds = commands_in(line)
                except ValueError as e:
                    found.append((where(doc, n), line, [f"<cannot split: {e}>"]))
                    continue
                for cmd in cmds:
                    found.append((where(doc, n), line, cmd))
    return tuple(found)


def is_synopsis(line: str) -> bool:
    # A usage synopsis (`disvae plot RUN PLOT [PLOT ...] [options]`) is grammar, not a command
    # line: its brackets and alternatives cannot be parsed, so `check_fragment` checks its names.
    code = line.split("#", 1)[0]
    return bool(SYNOPSIS.search(re.sub(r"=\[[^\]]*\]", "=LIST", code)))


def option_action(p: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return p._option_string_actions.get(flag)


def unbracket(word: str) -> str:
    """A word without the unbalanced brackets of a synopsis (`[--seed`, `N]`)."""
    while word.startswith("[") and word.count("[") > word.count("]"):
        word = word[1:]
    while word.endswith("]") and word.count("]") > word.count("["):
        word = word[:-1]
    return word


def check_fragment(words: list[str], line: str) -> list[str]:
    """Problems of a command as names: its (sub)command, every option (exact spelling), each
    option value among the option's choices, and the values `check_values` knows. For synopses
    and inline code, which are not whole command lines."""
    p, names, i = command_parser(words)
    problems = []
    if i < len(words) and not names and not words[i].startswith("-"):
        if not PLACEHOLDER.match(words[i]):
            problems.append(f"unknown command {words[i]!r}")
        return problems
    rest = words[i:]
    for j, w in enumerate(rest):
        w = unbracket(w)
        flag = w.split("=", 1)[0]
        if not re.match(r"^--?[A-Za-z]", flag):
            continue
        action = option_action(p, flag)
        if action is None:
            problems.append(f"{' '.join(['disvae', *names])} has no option {flag}")
            continue
        value = w.split("=", 1)[1] if "=" in w else None
        if value is None and j + 1 < len(rest) and action.nargs != 0:
            value = unbracket(rest[j + 1])
        if value is None or value.startswith("-") or value in ("...", "|"):
            continue
        alternatives = [v for v in re.split(r"\|", value) if v and not PLACEHOLDER.match(v)]
        if action.choices is not None:
            problems += [
                f"{flag} {v}: not among its choices ({', '.join(map(str, action.choices))})"
                for v in alternatives
                if v not in action.choices
            ]
        for v in alternatives:
            problems += check_values(names, action, v)
    return problems


def check_values(names: list[str], action: argparse.Action, value: str) -> list[str]:
    """Problems of one option value the code can check by name (presets, config keys, losses,
    datasets, architectures, metrics)."""
    flag = action.option_strings[-1]
    try:
        if flag == "--set" and not PLACEHOLDER.match(value):
            C.apply_overrides(C.RunConfig(), [value])
        elif flag == "--preset":
            C.preset_text(value)
        elif flag == "--loss":
            from disvae.losses import OBJECTIVES

            OBJECTIVES.get(value)
        elif flag == "--dataset":
            datasets().get(value)
        elif flag == "--arch":
            from disvae.models import ARCHITECTURES

            ARCHITECTURES.get(value)
        elif flag in ("--metrics", "--eval-metrics"):
            from disvae.evaluation import resolve_metric_names

            resolve_metric_names(value, "grid")
    except UserError as e:
        return [f"{flag} {value}: {e}"]
    return []


@cache
def datasets():
    from disvae.data import DATASETS

    return DATASETS


def check_command(cmd: list[str]) -> list[str]:
    """Problems of a whole command line: argparse's verdict, then what the command would check
    first (the config of `train`, names of plots, metrics, datasets, sweeps)."""
    try:
        args = parser().parse_args(cmd)
    except SystemExit:
        return [f"argparse rejects it: {parser_error(cmd)}"]
    problems = check_fragment(cmd, "")
    if args.command == "train":
        problems += [p for p in check_train(args) if not any(p in q for q in problems)]
    elif args.command == "plot":
        from disvae.viz import PLOTS

        problems += [f"unknown plot {n!r}" for n in args.plots if n not in (*PLOTS, "all")]
    elif args.command == "data":
        if args.name not in datasets():
            problems.append(f"unknown dataset {args.name!r}")
    elif args.command == "encode":
        from disvae.runs import WEIGHTS

        if args.weights not in WEIGHTS and not args.weights.endswith(".safetensors"):
            problems.append(f"--weights {args.weights}: not one of {WEIGHTS} nor a weights file")
    elif args.command == "sweep":
        problems += check_sweep(args.sweep, tuple(args.overrides))
    return problems


def parser_error(cmd: list[str]) -> str:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        parser().parse_args(cmd)
    return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "?"


def check_train(args: argparse.Namespace) -> list[str]:
    """The config `disvae train` would build from ``args``, checked as `C.check` does, or for
    `--resume`, that every setting it changes may change."""
    given = vars(args)
    flags = {cli.FLAG_KEYS[k]: v for k, v in given.items() if k in cli.FLAG_KEYS}
    if "train.compile_mode" in flags:
        flags.setdefault("train.compile", True)
    flag_sets = [f"{k}={cli._toml(v)}" for k, v in flags.items()]
    overrides = given.get("overrides") or []
    try:
        if "resume" in given:
            keys = list(flags) + [".".join(C.resolve_key(o.split("=")[0])) for o in overrides]
            return [f"{k} may not change on --resume" for k in keys if k not in C.RESUMABLE_KEYS]
        cfg = C.RunConfig()
        if "preset" in given:
            cfg = C.load_preset(given["preset"], cfg)
        if "config" in given and Path(given["config"]).expanduser().is_file():
            cfg = C.load_file(Path(given["config"]).expanduser(), cfg)
        cfg = C.apply_overrides(cfg, flag_sets, source="command line")
        cfg = C.apply_overrides(cfg, overrides)
        C.check(cfg)
        datasets().get(cfg.data.name)
    except UserError as e:
        return [str(e)]
    return []


@cache
def check_sweep(name: str, overrides: tuple[str, ...]) -> list[str]:
    from disvae.sweep import load_sweep, sweep_names

    if name in READERS_FILES:
        return []
    if name not in sweep_names() and not (ROOT / name).is_file():
        return [f"no shipped sweep or file {name!r} (shipped: {', '.join(sweep_names())})"]
    try:
        load_sweep(name if name in sweep_names() else ROOT / name, list(overrides))
    except UserError as e:
        return [str(e)]
    return []


def test_docs_show_disvae_commands():
    """The checks below find what they check (a parser that finds nothing would pass)."""
    assert len(fenced_commands()) >= 40
    assert any(cmd[:1] == ["sweep"] for _, _, cmd in fenced_commands())
    assert any("--set" in cmd for _, _, cmd in fenced_commands())


def test_fenced_command_lines_parse_and_name_real_things():
    problems = []
    for at, line, cmd in fenced_commands():
        if is_synopsis(line):
            found = check_fragment(cmd, line)
        else:
            found = check_command(cmd)
        problems += [f"{at}: `{line}`: {p}" for p in found]
    assert not problems, "\n".join(problems)


def test_inline_commands_name_real_options_and_values():
    problems, n = [], 0
    for doc in DOCS:
        for line, span in prose(doc):
            if re.match(r"^disvae[\w ]*:", span):
                continue  # a message it prints (`disvae plot: error: ...`), not a command
            try:
                cmds = commands_in(span)
            except ValueError as e:
                problems.append(f"{where(doc, line)}: `{span}`: cannot split: {e}")
                continue
            for cmd in cmds:
                n += 1
                problems += [
                    f"{where(doc, line)}: `{span}`: {p}" for p in check_fragment(cmd, span)
                ]
    assert n >= 20
    assert not problems, "\n".join(problems)


def test_flag_choices_named_in_prose_are_real():
    """`--flag a|b|c` and `--flag value` in running text (not only in whole commands)."""
    problems = []
    for doc in DOCS:
        for line, span in prose(doc):
            if span.startswith("disvae "):
                continue  # (checked as commands)
            m = re.match(r"^(--[a-z][a-z-]*)(?:[ =](\S+))?$", span.replace("\\|", "|"))
            if not m:
                continue
            flag, value = m.groups()
            owners = [p for p in all_parsers() if flag in p._option_string_actions]
            if not owners:
                problems.append(f"{where(doc, line)}: `{span}`: no command has option {flag}")
                continue
            if value is None or PLACEHOLDER.match(value):
                continue
            action = owners[0]._option_string_actions[flag]
            alternatives = [v for v in value.split("|") if v and not PLACEHOLDER.match(v)]
            if action.choices is not None:
                bad = [v for v in alternatives if v not in action.choices]
                problems += [f"{where(doc, line)}: `{span}`: {v} is no choice" for v in bad]
            for v in alternatives:
                problems += [
                    f"{where(doc, line)}: `{span}`: {p}" for p in check_values([], action, v)
                ]
    assert not problems, "\n".join(problems)


def test_inline_python_names_and_file_paths_exist():
    """`disvae.x.y` in running text resolves; a `path/file.py` it names is in the checkout."""
    problems, n = [], 0
    for doc in DOCS:
        for line, span in prose(doc):
            if m := re.match(r"^(disvae(?:\.\w+)+)(?:\(.*\))?$", span):
                n += 1
                try:
                    resolve_dotted(m.group(1))
                except (AttributeError, ImportError) as e:
                    problems.append(f"{where(doc, line)}: `{span}`: {e}")
            for path in re.findall(r"(?:^|\s)([\w./-]+/[\w.-]+\.(?:py|sh|toml))\b", span):
                n += 1
                bases = (ROOT, ROOT / "src", ROOT / "src" / "disvae")
                if not any((b / path).is_file() for b in bases):
                    problems.append(f"{where(doc, line)}: `{span}`: no file {path}")
    assert n >= 20
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------- Python blocks


def python_blocks() -> list[Block]:
    return [b for d in DOCS for b in blocks(d) if b.lang in ("python", "py")]


def resolve_dotted(path: str):
    import importlib

    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ImportError:
                raise AttributeError(f"{'.'.join(parts[:i])} has no {part!r}") from None
    return obj


def check_python(block: Block) -> list[str]:
    """Compiles; every name it takes from disvae exists; every call of a disvae function binds
    to its signature (keyword names, number of arguments)."""
    first = block.lines[0][0]
    try:
        tree = compile(block.text, block.where, "exec", ast.PyCF_ONLY_AST)
    except SyntaxError as e:
        return [f"{where(block.doc, first + (e.lineno or 1) - 1)}: does not compile: {e.msg}"]
    aliases: dict[str, str] = {}  # local name -> dotted path in disvae
    problems = []

    def at(node: ast.AST) -> str:
        return where(block.doc, first + node.lineno - 1)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "disvae":
                    aliases[(a.asname or a.name).split(".")[0]] = a.asname and a.name or "disvae"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "disvae":
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    for node in ast.walk(tree):
        path = None
        if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load):
            path = dotted(node)
        if path:
            try:
                resolve_dotted(path)
            except (AttributeError, ImportError) as e:
                problems.append(f"{at(node)}: {path}: {e}")
        if isinstance(node, ast.Call) and (path := dotted(node.func)):
            try:
                fn = resolve_dotted(path)
            except (AttributeError, ImportError):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords
            ):
                continue
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError):
                continue
            try:
                sig.bind(*node.args, **{k.arg: k.value for k in node.keywords})
            except TypeError as e:
                problems.append(f"{at(node)}: {path}(...) does not fit {path}{sig}: {e}")
    return problems


def test_python_blocks_compile_and_use_real_names():
    found = python_blocks()
    assert len(found) >= 5
    problems = [p for b in found for p in check_python(b)]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------- TOML and JSON blocks


def check_toml(block: Block) -> list[str]:
    """Parses; a run config (sections data/model/loss/train) is accepted by `C.from_dict` and
    `C.check`; a sweep file (methods, grid, base, ...) expands with the sweep loader."""
    try:
        doc = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as e:
        return [f"{block.where}: not valid TOML: {e}"]
    try:
        if set(doc) <= set(C.SECTIONS):
            C.check(C.from_dict(doc, source=block.where))
        else:
            from disvae.sweep.spec import _check_name, expand

            _check_name(doc.get("name", "sweep"), block.where, "name" in doc)
            runs = expand(doc, block.where)
            if not runs:
                return [f"{block.where}: the sweep file expands into no runs"]
    except UserError as e:
        return [f"{block.where}: {e}"]
    return []


def test_toml_blocks_are_accepted_by_the_loaders():
    found = [b for d in DOCS for b in blocks(d) if b.lang == "toml"]
    assert len(found) >= 3
    problems = [p for b in found for p in check_toml(b)]
    assert not problems, "\n".join(problems)


def test_json_blocks_parse_unless_abridged():
    problems = []
    for doc in DOCS:
        for b in blocks(doc):
            if b.lang == "json" and "..." not in b.text:  # `...` marks an abridged example
                try:
                    json.loads(b.text)
                except json.JSONDecodeError as e:
                    problems.append(f"{where(doc, b.lines[0][0] + e.lineno - 1)}: {e.msg}")
    assert not problems, "\n".join(problems)


def test_stacked_index_example_is_read_by_the_loader(tmp_path):
    from disvae.data.stacked import parse_csv, parse_json

    doc = ROOT / "docs" / "data.md"
    json_block = next(b for b in blocks(doc) if b.lang == "json" and '"patches"' in b.text)
    csv_block = next(b for b in blocks(doc) if b.text.startswith("image,patch:"))
    (tmp_path / "index.json").write_text(json_block.text)
    (tmp_path / "index.csv").write_text(csv_block.text)
    for parse, block in ((parse_json, json_block), (parse_csv, csv_block)):
        try:
            index = parse(tmp_path / f"index.{'json' if parse is parse_json else 'csv'}")
        except UserError as e:
            pytest.fail(f"{block.where}: the loader refuses the example: {e}")
        assert list(index.patches) == ["face", "right_eye", "left_eye"], block.where


# ----------------------------------------------------------------------- tables


def tables(doc: Path) -> list[tuple[int, list[str], list[tuple[int, list[str]]]]]:
    """(line, header cells, [(line, cells)]) of each Markdown table outside code blocks."""
    fenced = {n for b in blocks(doc) for n, _ in b.lines}
    found, current = [], None
    for n, text in enumerate(doc.read_text().splitlines(), 1):
        if n in fenced or not text.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", text.strip())[1:-1]]
        if current is None:
            current = (n, cells, [])
            found.append(current)
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            current[2].append((n, cells))
    return found


def table_with(doc: Path, *heads: str):
    for t in tables(doc):
        if all(h in t[1] for h in heads):
            return t
    raise AssertionError(f"{doc.relative_to(ROOT)}: no table with columns {heads}")


def code_words(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def default_matches(cell: str, value) -> bool | None:
    """Whether a table's default cell states ``value`` (None: the cell is not comparable)."""
    word = (code_words(cell) or [cell])[0].split()[0] if cell else ""
    word = word.strip("`").replace(",", "")
    if value is None:
        return None  # (decided at run time: "the dataset's", "on (CUDA and CPU)", ...)
    if isinstance(value, bool):
        return (word == "on") == value if word in ("off", "on") else None
    if isinstance(value, (int, float)):
        try:
            return float(word) == float(value)
        except ValueError:
            return None
    if isinstance(value, str):
        return word == value if re.fullmatch(r"[\w.-]+", word) else None
    return None


def test_train_options_table_matches_parser_and_config():
    doc = ROOT / "docs" / "train.md"
    _, _, rows = table_with(doc, "flag", "key", "default")
    train = command_parser(["train"])[0]
    problems, documented = [], set()
    for n, (flag_cell, key_cell, default_cell, _) in rows:
        flags = re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", flag_cell)
        patterns = [k for k in code_words(key_cell) if "." in k]  # (`loss.c_*` stands for 3)
        keys = [k for k in patterns if "*" not in k]
        for f in flags:
            if f not in train._option_string_actions:
                problems.append(f"{where(doc, n)}: disvae train has no option {f}")
            documented.add(f)
        for f in flags:
            action = train._option_string_actions.get(f)
            key = cli.FLAG_KEYS.get(action.dest) if action else None
            if key and not any(fnmatch.fnmatchcase(key, k) for k in patterns):
                problems.append(f"{where(doc, n)}: {f} sets {cli.FLAG_KEYS[action.dest]}")
        for k in keys:
            try:
                section, name = C.resolve_key(k)
            except UserError as e:
                problems.append(f"{where(doc, n)}: {e}")
                continue
            if len(keys) == 1:
                value = getattr(getattr(C.RunConfig(), section), name)
                if default_matches(default_cell, value) is False:
                    problems.append(
                        f"{where(doc, n)}: default of {k} is {value!r}, the table says "
                        f"{default_cell!r}"
                    )
    for action in train._actions:
        if action.dest in cli.FLAG_KEYS and not set(action.option_strings) & documented:
            problems.append(f"{where(doc, 1)}: {action.option_strings[0]} is not in the table")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "page, command", [("plot.md", ["plot"]), ("report.md", ["report"]), ("sweep.md", ["sweep"])]
)
def test_option_tables_match_the_parser(page, command):
    doc = ROOT / "docs" / page
    _, _, rows = table_with(doc, "option", "default")
    p = command_parser(command)[0]
    problems, documented = [], set()
    for n, cells in rows:
        flags = re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", cells[0])
        for f in flags:
            documented.add(f)
            action = p._option_string_actions.get(f)
            if action is None:
                problems.append(f"{where(doc, n)}: disvae {command[0]} has no option {f}")
            elif len(flags) == 1 and default_matches(cells[1], action.default) is False:
                problems.append(
                    f"{where(doc, n)}: {f} defaults to {action.default!r}, the table says "
                    f"{cells[1]!r}"
                )
    for action in p._actions:
        if action.option_strings and not set(action.option_strings) & (documented | {"-h"}):
            problems.append(f"{where(doc, 1)}: {action.option_strings[-1]} is not in the table")
    assert not problems, "\n".join(problems)


def test_objectives_table_matches_the_defaults():
    doc = ROOT / "README.md"
    _, _, rows = table_with(doc, "`--loss`", "its hyperparameters (defaults)")
    problems, seen = [], set()
    for n, cells in rows:
        loss = code_words(cells[0])[0]
        seen.add(loss)
        if loss not in C.OBJECTIVE_DEFAULTS:
            problems.append(f"{where(doc, n)}: no loss {loss!r}")
            continue
        defaults = C.OBJECTIVE_DEFAULTS[loss]
        stated = dict(re.findall(r"`--([a-z-]+)` \(([^)]+)\)", cells[2]))
        for flag, value in stated.items():
            key = flag.replace("-", "_")
            if key not in defaults or float(value) != float(defaults[key]):
                problems.append(f"{where(doc, n)}: {loss} --{flag} ({value}) but code has "
                                f"{defaults.get(key, 'no such hyperparameter')}")  # fmt: skip
        named = {f.replace("-", "_") for f in re.findall(r"`--([a-z-]+)", cells[2])}
        if named != set(defaults):
            problems.append(
                f"{where(doc, n)}: {loss} uses {sorted(defaults)}, table {sorted(named)}"
            )
    if seen != set(C.OBJECTIVE_DEFAULTS):
        problems.append(f"{where(doc, 1)}: losses {sorted(seen)} != {sorted(C.OBJECTIVE_DEFAULTS)}")
    assert not problems, "\n".join(problems)


def test_metrics_table_names_and_signatures():
    from disvae import metrics
    from disvae.metrics import METRICS

    doc = ROOT / "docs" / "metrics.md"
    _, _, rows = table_with(doc, "name (`--metrics`)", "function")
    problems, seen = [], set()
    for n, cells in rows:
        name, call = code_words(cells[0])[0], code_words(cells[1])[0]
        seen.add(name)
        if name not in METRICS:
            problems.append(f"{where(doc, n)}: no metric {name!r}")
        fn_name, _, params = call.partition("(")
        fn = getattr(metrics, fn_name, None)
        if fn is None:
            problems.append(f"{where(doc, n)}: disvae.metrics has no {fn_name}")
            continue
        sig = inspect.signature(fn).parameters
        for p in filter(None, (s.strip() for s in params.rstrip(")").split(","))):
            pname, _, default = p.partition("=")
            if pname not in sig:
                problems.append(f"{where(doc, n)}: {fn_name} has no parameter {pname}")
            elif default and repr(sig[pname].default) not in (default, default.replace('"', "'")):
                problems.append(f"{where(doc, n)}: {fn_name}'s {pname} defaults to "
                                f"{sig[pname].default!r}, not {default}")  # fmt: skip
    if seen != set(METRICS.names()):
        problems.append(f"{where(doc, 1)}: metrics {sorted(seen)} != {METRICS.names()}")
    assert not problems, "\n".join(problems)


def test_dataset_table_names_every_dataset():
    doc = ROOT / "docs" / "data.md"
    _, _, rows = table_with(doc, "name", "published at")
    names = {code_words(cells[0])[0] for _, cells in rows}
    shipped = {n for n in datasets() if datasets().get(n).__module__.startswith("disvae.")}
    assert names == shipped, f"{where(doc, rows[0][0])}: {sorted(names)} != {sorted(shipped)}"


PRESET_LIKE = re.compile(
    r"\b((?:vae|betaH|betaB|factor|btcvae|stacked)_(?:cel|cha|cif|dsp|fas|mni|sha|gaz)\w*)"
)


def test_presets_and_sweeps_named_in_the_docs_exist():
    from disvae.sweep import sweep_names

    presets, sweeps, problems = set(C.preset_names()), set(sweep_names()), []
    for doc in DOCS:
        for n, text in enumerate(doc.read_text().splitlines(), 1):
            # <loss>_<dataset>... (factor_names and the like are no preset names)
            for name in re.findall(PRESET_LIKE, text):
                if name not in presets:
                    problems.append(f"{where(doc, n)}: no preset {name!r}")
            for name in re.findall(r"sweeps/out/(\w+)", text):
                if name not in sweeps | {"NAME", "beta_study"}:
                    problems.append(f"{where(doc, n)}: no shipped sweep {name!r}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    problems = []
    for doc in DOCS:
        fenced = {n for b in blocks(doc) for n, _ in b.lines}
        for n, text in enumerate(doc.read_text().splitlines(), 1):
            if n in fenced:
                continue
            for target in re.findall(r"\]\(([^)\s]+)\)", text):
                if re.match(r"^[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                path = (doc.parent / file).resolve() if file else doc
                if not path.exists():
                    problems.append(f"{where(doc, n)}: link to missing {file}")
                    continue
                if anchor and path.suffix == ".md":
                    heads = [slug(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)]
                    if anchor not in heads:
                        problems.append(
                            f"{where(doc, n)}: no heading #{anchor} in {file or doc.name}"
                        )
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------- the checks can fail


@pytest.mark.parametrize(
    "line, expect",
    [
        ("disvae train --loss-name btcvae", "argparse rejects"),
        ("disvae train --preset betaB_dsprite", "unknown preset"),
        ("disvae train --set lrr=1e-4", "unknown config key"),
        ("disvae train --loss betaB --beta 4", "not used by loss"),
        ("disvae train --resume runs/b1 --lr 1e-4", "may not change on --resume"),
        ("disvae evaluate runs/b1 --metrics mig,migg", "unknown metric"),
        ("disvae plot runs/b1 traversal", "unknown plot"),
        ("disvae data info dsprite", "unknown dataset"),
        ("disvae sweep tinyy", "no shipped sweep"),
        ("DISVAE_CACHE=/tmp/c disvae train --dataset dsprite", "unknown dataset"),
        ("torchrun --nproc-per-node 2 -m disvae train --amp fp16", "argparse rejects"),
    ],
)
def test_a_wrong_command_is_reported(line, expect):
    (cmd,) = disvae_commands(split_words(line))
    assert any(expect in p for p in check_command(cmd)), check_command(cmd)


def test_wrong_synopsis_python_and_toml_are_reported(tmp_path):
    assert check_fragment(commands_in("disvae train [--sed N]")[0], "")
    assert check_fragment(commands_in("disvae encode RUN [--split all|test]")[0], "")
    assert check_fragment(commands_in("disvae evaluate RUN [--metrics mig|migg]")[0], "")
    bad_py = Block(
        ROOT / "README.md", 1, "python", [(2, "import disvae"), (3, "disvae.lod_run(1)")]
    )
    assert check_python(bad_py) and "README.md:3" in check_python(bad_py)[0]
    lines = [(2, "from disvae import viz"), (3, "viz.traversals(1, cols=2)")]
    bad_call = Block(ROOT / "README.md", 1, "python", lines)
    assert check_python(bad_call)
    bad_toml = Block(ROOT / "README.md", 1, "toml", [(2, "[loss]"), (3, 'nam = "btcvae"')])
    assert "unknown key loss.nam" in check_toml(bad_toml)[0]
    bad_sweep = Block(ROOT / "README.md", 1, "toml", [(2, "[[methods]]"), (3, 'loss = "betaX"')])
    assert check_toml(bad_sweep)


# Every error line docs/train.md and docs/data.md quote (`disvae ...: error: ...`), with a command
# that prints it; "..." in a quote stands for any text.
QUOTED_ERRORS = {
    "disvae: error: ...": ["train", "--loss", "nope", "--dry-run"],
    "disvae: error: unknown loss 'btcvea' (did you mean btcvae?); choose one of: vae, betaH, "
    "betaB, factor, btcvae": ["train", "--loss", "btcvea", "--dry-run"],
    "disvae train: error: argument --steps: invalid int value: 'x'; see `disvae train --help`": [
        "train", "--steps", "x"],
    "disvae train: error: unknown option --los (did you mean --loss?); see `disvae train "
    "--help`": ["train", "--los", "btcvae"],
    "disvae train: error: unexpected argument 'extra'; see `disvae train --help`": [
        "train", "--dry-run", "extra"],
    "disvae: error: --quiet before the command; options go after the command's name "
    "(`disvae CMD --quiet`); see `disvae --help`": ["--quiet", "train", "--dry-run"],
}  # fmt: skip


def quoted_errors(doc: Path) -> list[tuple[int, str]]:
    """(line, text) of the code spans of ``doc`` (single or double backticks, outside fenced
    blocks) that quote an error line."""
    fenced = {n for b in blocks(doc) for n in range(b.line, b.lines[-1][0] + 2 if b.lines else 0)}
    lines = doc.read_text().splitlines()
    text = "\n".join("" if i + 1 in fenced else s for i, s in enumerate(lines))
    found = []
    for m in re.finditer(r"(?<!`)(``?)(?!`)(.+?)(?<!`)\1(?!`)", text, re.S):
        span = " ".join(m.group(2).split())
        if re.match(r"^disvae[\w ]*: error:", span):
            found.append((text.count("\n", 0, m.start()) + 1, span))
    return found


@pytest.mark.parametrize("page", ["train.md", "data.md"])
def test_quoted_error_messages_are_what_the_commands_print(page, capsys):
    """docs/train.md quoted `disvae: error: unrecognized arguments: ...` for an unknown option
    long after it became `disvae train: error: unknown option --frob (did you mean ...?)`."""
    problems = []
    for line, quote in quoted_errors(ROOT / "docs" / page):
        at = where(ROOT / "docs" / page, line)
        if quote not in QUOTED_ERRORS:
            problems.append(f"{at}: `{quote}`: add it to QUOTED_ERRORS with a command")
            continue
        code = cli.main(QUOTED_ERRORS[quote])
        err = capsys.readouterr().err.strip()
        pattern = ".*".join(map(re.escape, quote.split("...")))
        if code != 2 or not re.fullmatch(pattern, err):
            problems.append(f"{at}: `{quote}`: the command prints `{err}` (exit {code})")
    assert not problems, "\n".join(problems)
