"""The generated settings reference lists every setting and option the code has, with its help, as Markdown that
renders as written."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

import pytest
import settings_reference as ref

from lavit.cli import build_parser
from lavit.config import field
from lavit.demo import DemoConfig
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.filter_config import FilterConfig
from lavit.training.lavit_config import LavitTrainConfig


@pytest.fixture(scope="module")
def page() -> str:
    return ref.render()


def section(page: str, command: str) -> str:
    start = page.index(f"## `lavit {command}`")
    end = page.find("\n## ", start + 1)
    return page[start:end if end > 0 else None]


@pytest.mark.parametrize("command, cls", [("train", LavitTrainConfig), ("extract", ExtractConfig),
                                          ("filter", FilterConfig)])
def test_every_config_field_is_listed_with_its_default_and_help(page, command, cls):
    text = section(page, command)
    for f in dataclasses.fields(cls):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{f.name}` |")), None)
        assert row is not None, f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert ref.code(repr(default)) in row, (f.name, row)
        assert ref.escape_text(f.metadata["help"]) in row


def test_every_subcommand_and_option_is_listed(page):
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(subs) >= 10
    for name, sub in subs.items():
        text = section(page, name)
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = ", ".join(action.option_strings) or action.dest
            assert f"| `{label}` |" in text, (name, label)
    # lavit demo's options are DemoConfig's fields, under their flag names
    demo = section(page, "demo")
    for f in dataclasses.fields(DemoConfig):
        if f.name != "student_overrides":
            flag = "--world" if f.name == "world_name" else f"--{f.name.replace('_', '-')}"
            assert f"| `{flag}` |" in demo, flag


def test_help_text_renders_literally():
    markdown = pytest.importorskip("markdown", reason="Python-Markdown comes with the docs extra (make docs)")
    text = "keeps <|image_pad|> and `<lvr_1>` | a*b*c [x] (y) 95%% _z_"
    html = markdown.markdown(f"| a |\n|---|\n| {ref.escape_text(text)} |", extensions=["tables"])
    cell = re.search(r"<td>(.*)</td>", html).group(1)
    assert cell == ("keeps &lt;|image_pad|&gt; and <code>&lt;lvr_1&gt;</code> | a*b*c [x] (y) 95%% _z_")


def test_types_and_defaults_are_named_as_a_reader_says_them():
    @dataclass
    class Example:
        mode: Literal["a", "b"] = field("a", "which")
        paths: list[str] = field([], "where")
        limit: int | None = field(None, "how many")

    rows = {r[0]: r for r in ref.config_rows(Example)}
    assert rows["mode"][1:3] == ("one of `a`, `b`", "'a'")
    assert rows["paths"][1:3] == ("list of str", "[]")
    assert rows["limit"][1] == "int or none"
    assert ref.code("") == "`''`" and ref.code("a`b") == "`` a`b ``"


def test_a_field_without_help_text_is_refused():
    @dataclass
    class Bare:
        x: int = 3

    with pytest.raises(ValueError, match="Bare.x has no help text"):
        ref.config_rows(Bare)


def test_option_defaults_and_values_are_shown_as_given():
    parser = argparse.ArgumentParser(prog="lavit x")
    parser.add_argument("--count", type=int, default=0, help="how many (default %(default)s, 100%%)")
    parser.add_argument("--name", default="", help="a name")
    parser.add_argument("--fast", action="store_true", help="go")
    parser.add_argument("--model", required=True, help="which")
    parser.add_argument("--mode", choices=["a", "b"], default="a", help="mode")
    rows = {r[0]: r[1:] for r in ref.option_rows(parser)}
    assert rows["--count"] == ("int", "0", "how many (default 0, 100%)")
    assert rows["--name"][:2] == ("text", "—") and rows["--fast"][:2] == ("flag", "—")
    assert rows["--model"][1] == "required" and rows["--mode"][:2] == ("one of `a`, `b`", "'a'")
