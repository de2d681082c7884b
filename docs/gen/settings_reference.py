"""The guide's settings reference, generated from the code at build time (never copied by hand).

Config-driven stages (`lavit train`, `extract`, `filter`) are rendered from their dataclasses' fields — the
`lavit.config.field(default, help)` text that `lavit STAGE --help-config` prints — with each field's type; every
other command from its argparse options, the text `lavit COMMAND --help` prints (`lavit demo` and `lavit ablate`
build theirs from `DemoConfig`'s fields). A renamed setting or a new help text reaches the page on the next build.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import re
import types
import typing

from lavit.cli import build_parser, stage_config_class

CONFIG_STAGES = ("train", "extract", "filter")
# Markdown that help texts must not trigger outside code spans: emphasis, links, table cells, HTML.
_MARKDOWN_SPECIALS = re.compile(r"([\\*_\[\]|])")


def escape_text(text: str) -> str:
    """`text` as literal Markdown in a table cell: code spans (`...`) kept as code, everything else escaped (HTML
    such as `<lvr1>`, emphasis stars, brackets, cell pipes); newlines become spaces."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(part if part.startswith("`") and part.endswith("`") and len(part) > 1
                   else _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(part, quote=False)) for part in parts)


def code(value: str) -> str:
    """`value` as one code span, whatever backticks it holds (an empty value shows as `''`)."""
    text = value if value else "''"
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def type_name(annotation: typing.Any) -> str:
    """A field's type as a reader would say it: `one of a, b` for a Literal, `list of str`, `int`, ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(code(str(a)) for a in args)
    if origin is list:
        return "list of " + (type_name(args[0]) if args else "values")
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def config_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(setting, type, default, help) per field of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            raise ValueError(f"{cls.__name__}.{f.name} has no help text: declare it with lavit.config.field")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, type_name(hints[f.name]), repr(default), f.metadata["help"]))
    return rows


def option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str, str]]:
    """(option, value, default, help) per argparse option of a subcommand, `-h/--help` left out."""
    formatter = parser._get_formatter()  # expands %(default)s and %% in help texts as --help does
    rows = []
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(action.option_strings) or action.dest
        if action.choices:
            value = "one of " + ", ".join(code(str(c)) for c in action.choices)
        elif action.nargs == 0:
            value = "flag"
        else:
            value = action.metavar or getattr(action.type, "__name__", "text").replace("_", " ")  # non_negative_int
        repeat = " (repeatable)" if isinstance(action, argparse._AppendAction) else ""
        unset = action.default is None or action.default is False or action.default in ("", [])  # 0 is a default
        required = "required" if action.required else (
            "—" if unset or not action.option_strings else repr(action.default))
        rows.append((name, f"{value}{repeat}", required, formatter._expand_help(action) if action.help else ""))
    return rows


def table(header: tuple[str, str, str, str], rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
    for name, kind, default, help_text in rows:
        default_cell = default if default in ("required", "—") else code(default)
        lines.append(f"| {code(name)} | {kind} | {default_cell} | {escape_text(help_text)} |")
    return lines


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """{name: (its parser, its one-line help)} of the `lavit` subcommands, in the order `lavit --help` lists them."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    formatter = parser._get_formatter()
    helps = {a.dest: formatter._expand_help(a) for a in action._choices_actions}
    return {name: (sub, helps[name]) for name, sub in action.choices.items()}


def render() -> str:
    """The whole settings reference page, as Markdown."""
    parser = build_parser()
    commands = subcommands(parser)
    lines = ["# Settings reference", "",
             "Generated from the code when the guide is built, so it lists exactly what this version accepts.",
             "The config-driven stages (`lavit train`, `lavit extract`, `lavit filter`) take an optional YAML "
             "recipe, then `key=value` overrides of the settings below (an override wins over the recipe; values "
             "are YAML scalars, so `learning_rate=1e-4` is a number); `lavit STAGE --help-config` prints the same "
             "list. Every other command takes the options below (`lavit COMMAND --help`).", ""]
    lines += ["| command | what it does |", "|---|---|"]
    for name, (_, help_text) in commands.items():
        lines.append(f"| [`lavit {name}`](#lavit-{name}) | {escape_text(help_text)} |")
    for name, (sub, _) in commands.items():
        lines += ["", f"## `lavit {name}` {{#lavit-{name}}}", ""]
        if sub.description:
            lines += [f"Usage: {code(' '.join(sub.description.split()))}", ""]
        if name in CONFIG_STAGES:
            cls = stage_config_class(name)
            lines += [f"Settings of `{cls.__module__}.{cls.__name__}` (recipe keys and `key=value` overrides):", ""]
            lines += table(("setting", "type", "default", "what it sets"), config_rows(cls))
            lines += ["", "Options:", ""]
        lines += table(("option", "value", "default", "what it does"), option_rows(sub))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
