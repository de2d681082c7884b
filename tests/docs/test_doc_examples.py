"""The guide's commands against the real `lavit`: a renamed subcommand, flag or setting fails here.

Every `lavit` command in a `bash` block of README.md, BENCHMARKS.md and docs/ (also under `accelerate launch` or
`torchrun ... -m lavit.cli`), and every inline `` `lavit SUB ...` `` span, is parsed against `lavit.cli`'s parser:
the subcommand exists, every `--option` is one of its options, a literal value is among the option's choices, every
`key=value` of `train`/`extract`/`filter` names a field of the stage's config (and a literal value of a field with
fixed choices is one of them), `--set KEY=VALUE` a `lavit train` setting, and a recipe loads. Blocks marked
`<!-- docs-test: run -->` just before their fence hold only `lavit` commands and run in this process; blocks marked
`<!-- docs-test: run slow -->` run as written, by bash, in a scratch folder that sees the repository's `src/` and
`recipes/` (they train a toy student).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from lavit.cli import STAGE_CONFIGS, build_parser, main, stage_config_class
from lavit.config import load_config
from lavit.training.lavit_config import LavitTrainConfig

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", REPO / "BENCHMARKS.md", *(REPO / "docs").rglob("*.md")])
RUN_MARK = re.compile(r"<!--\s*docs-test:\s*run(?P<slow>\s+slow)?\s*-->")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
# Words that stand for something the reader fills in (RECIPE, DIR, ...), and elisions.
PLACEHOLDER = re.compile(r"^(\.\.\.|…|key=value|[A-Z][A-Z0-9_]*(\.yaml)?|<[^>]+>)$")
SEPARATORS = {";", "&&", "||", "|", "&"}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    argv: tuple[str, ...]  # the arguments after `lavit`

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: lavit {' '.join(self.argv)}"


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    body: str
    run: str  # "", "fast" or "slow"


def blocks(path: Path) -> list[Block]:
    """The fenced shell blocks of a page, each with its run marker (the line just before its fence)."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if match["lang"] not in ("bash", "sh", "shell", "console"):
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = RUN_MARK.search(before)
        run = "" if mark is None else ("slow" if mark["slow"] else "fast")
        found.append(Block(str(path.relative_to(REPO)), text.count("\n", 0, match.start()) + 1, match["body"], run))
    return found


def shell_lines(body: str) -> list[tuple[int, str]]:
    """Logical lines of a shell block (backslash continuations joined, heredoc bodies left out), with offsets."""
    lines, heredoc_end, pending, start = [], None, "", 0
    for i, raw in enumerate(body.splitlines()):
        if heredoc_end is not None:
            heredoc_end = None if raw.strip() == heredoc_end else heredoc_end
            continue
        if not pending:
            start = i
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = pending + raw, ""
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            heredoc_end = heredoc.group(1)
        lines.append((start, line))
    return lines


def lavit_argv(words: list[str]) -> list[str] | None:
    """The arguments of a `lavit` invocation in one simple command, or None when it runs something else."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value before the command
        words = words[1:]
    if not words:
        return None
    if Path(words[0]).name == "lavit":
        return words[1:]
    for i, word in enumerate(words[:-1]):  # python -m / accelerate launch ... -m / torchrun ... -m
        if word == "-m" and words[i + 1] == "lavit.cli":
            return words[i + 2:]
    return None


def commands_in_line(page: str, line_no: int, line: str) -> list[Command]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words, found = [], []
    for token in [*lexer, ";"]:
        if token in SEPARATORS or set(token) <= set(";&|"):
            argv = lavit_argv(words)
            if argv is not None:
                found.append(Command(page, line_no, tuple(argv)))
            words = []
        else:
            words.append(token)
    return found


def block_commands(block: Block) -> list[Command]:
    return [c for offset, line in shell_lines(block.body)
            for c in commands_in_line(block.page, block.line + 1 + offset, line)]


def inline_commands(path: Path) -> list[Command]:
    """`lavit SUB ...` in inline code spans of the prose (fenced blocks left out)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"))
    found = []
    for match in re.finditer(r"(?<!`)`(lavit [^`\n]+)`(?!`)", text):
        words = [w for w in match.group(1).replace("\\|", " ").split() if w not in ("|",)]
        found.append(Command(str(path.relative_to(REPO)), text.count("\n", 0, match.start()) + 1, tuple(words[1:])))
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
BLOCK_COMMANDS = [c for b in ALL_BLOCKS for c in block_commands(b)]
INLINE_COMMANDS = [c for page in PAGES for c in inline_commands(page)]
PARSER = build_parser()
SUBCOMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices


def literal_choices(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in fields(cls)
            if typing.get_origin(hints[f.name]) is typing.Literal}


def clean(word: str) -> str:
    """A token of a usage line without its optional-part brackets: `[--protocol` → `--protocol`."""
    return word.strip("[]()")


def problems(command: Command, *, prose: bool = False) -> list[str]:
    """What in `command` the real parser or configs would reject (empty: nothing). In prose an option may be named
    without its value (`lavit eval --protocol` does …)."""
    argv = [clean(w) for w in command.argv if clean(w)]
    if not argv or argv[0].startswith("-"):
        return [] if not argv or argv[0] in ("--help", "-h") else [f"{argv[0]} is not a lavit option"]
    name, rest = argv[0], argv[1:]
    if PLACEHOLDER.match(name):  # `lavit COMMAND --help`
        return []
    if name not in SUBCOMMANDS:
        return [f"no subcommand {name!r} (lavit has {sorted(SUBCOMMANDS)})"]
    sub = SUBCOMMANDS[name]
    options = sub._option_string_actions
    found, i = [], 0
    config = stage_config_class(name) if name in STAGE_CONFIGS else None
    keys = {f.name for f in fields(config)} if config else set()
    choices = literal_choices(config) if config else {}
    while i < len(rest):
        word = rest[i]
        i += 1
        if PLACEHOLDER.match(word):
            continue
        if word.startswith("--"):
            flag, eq, value = word.partition("=")
            action = options.get(flag)
            if action is None:
                found.append(f"lavit {name} has no option {flag}")
                continue
            if action.nargs == 0:
                continue
            if not eq:
                if i >= len(rest):
                    found += [] if prose else [f"{flag} needs a value"]
                    continue
                value, i = clean(rest[i]), i + 1
            if action.choices and not PLACEHOLDER.match(value):
                bad = [v for v in value.split("|") if v and v not in action.choices]
                found += [f"{flag} {v!r} is not one of {list(action.choices)}" for v in bad]
            if flag == "--set" and "=" in value and value.split("=", 1)[0] not in {
                    f.name for f in fields(LavitTrainConfig)}:
                found.append(f"--set {value}: lavit train has no setting {value.split('=', 1)[0]!r}")
            continue
        if config is not None and "=" in word:
            key, _, value = word.partition("=")
            if key not in keys:
                found.append(f"lavit {name} has no setting {key!r}")
            elif key in choices and not PLACEHOLDER.match(value) and value not in choices[key]:
                found.append(f"{key}={value}: not one of {list(choices[key])}")
            continue
        if config is not None and word.endswith((".yaml", ".yml")):
            recipe = REPO / word
            if not recipe.is_file():
                found.append(f"recipe {word} does not exist")
            else:
                try:
                    load_config(config, recipe)
                except ValueError as err:
                    found.append(f"recipe {word}: {err}")
    return found


def test_the_guide_has_commands_to_check():
    # if the collectors broke, every check below would pass on nothing
    assert len(BLOCK_COMMANDS) >= 60 and len(INLINE_COMMANDS) >= 100
    pages = {c.page for c in BLOCK_COMMANDS}
    for page in ("README.md", "docs/evaluation.md", "docs/distil.md", "docs/multi-gpu.md", "docs/audit.md"):
        assert page in pages, page
    assert {c.argv[0] for c in BLOCK_COMMANDS if c.argv} >= {"extract", "filter", "train", "eval", "compare",
                                                              "audit", "analyze", "demo", "bench"}


@pytest.mark.parametrize("command", BLOCK_COMMANDS, ids=str)
def test_every_command_block_matches_the_parser(command):
    assert problems(command) == []


def test_every_inline_command_matches_the_parser():
    wrong = {str(c): p for c in INLINE_COMMANDS if (p := problems(c, prose=True))}
    assert wrong == {}


@pytest.mark.parametrize("line, message", [
    ("lavit evaluate --model M --out DIR", "no subcommand 'evaluate'"),
    ("lavit eval --model M --benchmark mmvp --data-dir data --out runs/x", "has no option --data-dir"),
    ("lavit eval --model M --protocol official --suite paper --data-root d --out o", "'official' is not one of"),
    ("lavit train recipes/lavit_qwen2_5_vl_3b.yaml learning_rte=1e-4", "has no setting 'learning_rte'"),
    ("lavit train gate=soft", "gate=soft: not one of"),
    ("lavit train recipes/missing.yaml", "recipe recipes/missing.yaml does not exist"),
    ("lavit demo --out runs/d --set lamda=0.5", "lavit train has no setting 'lamda'"),
    ("torchrun --nproc_per_node 8 -m lavit.cli extract shards=2", "has no setting 'shards'"),
    ("CUDA_VISIBLE_DEVICES=0 lavit extract RECIPE ... --shard 0/2 --workers 2 &", "has no option --workers"),
])
def test_the_checker_catches_a_renamed_command_flag_or_setting(line, message):
    commands = commands_in_line("example.md", 1, line)
    assert len(commands) == 1
    assert any(message in p for p in problems(commands[0])), problems(commands[0])


def test_heredocs_comments_and_continuations_are_read_as_the_shell_reads_them():
    body = ("python - <<'EOF'\nlavit not-a-command\nEOF\n# lavit eval --nope\n"
            "lavit eval --model M --benchmark mmvp \\\n    --data-root d --out o  # trailing --nope\n"
            "lavit extract --help-config; lavit filter --help-config\n")
    commands = block_commands(Block("x.md", 0, body, ""))
    assert [c.argv[:2] for c in commands] == [("eval", "--model"), ("extract", "--help-config"),
                                              ("filter", "--help-config")]
    assert commands[0].argv[-1] == "o" and commands[0].line == 5


def test_the_readme_links_to_existing_pages_and_to_the_two_task_pages():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)", text)
    missing = [t for t in targets if not t.startswith("http") and not (REPO / t).exists()]
    assert missing == []
    assert "docs/evaluation.md" in targets and "docs/distil.md" in targets
    assert len(text.splitlines()) < 150


def run_block(block: Block, tmp_path: Path) -> subprocess.CompletedProcess:
    """The block as written, by bash, in `tmp_path` (which sees the repository's src/ and recipes/), with this
    interpreter's `lavit` and `python` first on the PATH."""
    for name in ("src", "recipes"):
        (tmp_path / name).symlink_to(REPO / name)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block.body], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)


RUN_BLOCKS = [b for b in ALL_BLOCKS if b.run]


def test_there_are_runnable_blocks_of_both_speeds():
    assert {b.run for b in RUN_BLOCKS} == {"fast", "slow"}


@pytest.mark.parametrize("block", [b for b in RUN_BLOCKS if b.run == "fast"], ids=lambda b: f"{b.page}:{b.line}")
def test_the_fast_runnable_blocks_run(block, capsys):
    """Fast blocks hold only `lavit` commands: each runs in this process (`lavit.cli.main`, what the console script
    calls), so they cost no interpreter start; `--help` exits 0 as argparse does."""
    lines = [line for _, line in shell_lines(block.body) if line.split("#")[0].strip()]
    commands = block_commands(block)
    assert len(commands) == len(lines), f"a fast block holds only lavit commands: {lines}"
    for command in commands:
        try:
            code = main(list(command.argv))
        except SystemExit as exit_:
            code = exit_.code
        assert code == 0, (str(command), capsys.readouterr().err[-2000:])
        assert capsys.readouterr().out.strip(), f"{command} printed nothing"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUN_BLOCKS if b.run == "slow"], ids=lambda b: f"{b.page}:{b.line}")
def test_the_slow_runnable_blocks_run(block, tmp_path):
    result = run_block(block, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    if "lavit audit" in block.body:  # the walk-through ends with an audit of the student it trained
        assert "| forced (reference) |" in result.stdout
