"""Every command and flag the code tells a user about exists on the real ``certevo`` parser.

A message that sends the user to ``certevo show`` or ``--resume`` (neither exists) strands
them at the moment they need help. This scans the package's source (certevo/, population/,
evaluators/, cluster/, search/): every string literal, f-string (with ``{}`` for what it
interpolates) and docstring, which together hold every error, hint, help text and docstring a
user reads, and every ``command_hint(...)`` call. What they name is checked against
``certevo.search.cli.build_parser()`` itself (its subcommands and their option strings):

* a command: a span in backticks or quotes that starts with ``certevo WORD`` (messages write
  commands that way; a string that is a whole command line, e.g. ``"certevo launch"``, counts
  too). WORD must be a subcommand, and every ``-x`` / ``--flag`` up to a pipe or ``;`` must be
  an option of that subcommand;
* ``command_hint("WORD", ..., "--flag", ...)``: the same, for the command it spells;
* a span that starts with another program (``pip install --no-deps ...``, or
  ``command_hint(..., name="mlflow")``): that program's flags must be in ``OTHER_TOOLS``, each
  with the reason it is there;
* any other ``--flag`` (prose such as "pass --min-sparsity 0.9"): an option of some command.

Prose that merely says "certevo" ("a certevo run directory", "the certevo version that
wrote it") is not a command: commands are the spans above.
"""

from __future__ import annotations

import argparse
import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from certevo.search.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("certevo", "population", "evaluators", "cluster", "search")

#: Flags of other programs that messages may name: program -> flag -> why it is named.
OTHER_TOOLS: dict[str, dict[str, str]] = {
    "pip": {
        "--no-deps": "auto_LiRPA 0.3 pins stale torch/numpy versions; the install hint "
        "(evaluators/lirpa_compat.py) installs it without them",
    },
    "mlflow": {
        "--backend-store-uri": "the `mlflow ui` line printed after a search opens the run's store",
        "--host": "the same `mlflow ui` line binds to 127.0.0.1",
    },
    "python": {
        "-c": "the plot worker's docstring says how its child process starts (``python -c``)",
    },
}

#: Programs whose command lines messages show (`ray logs`, `pip install ...`): a span that
#: starts with one is that program's, not certevo's.
PROGRAMS = {*OTHER_TOOLS, "ray", "python", "make", "optuna-dashboard", "kubectl", "docker"}
#: Spans, in the order they are taken (an apostrophe must not open a span around a backticked one).
_SPANS = [re.compile(r"``(.+?)``", re.S), re.compile(r"`([^`]+)`"), re.compile(r'"([^"\n]+)"'),
          re.compile(r"'([^'\n]+)'")]
_FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)(=.*)?$")
_BARE_FLAG = re.compile(r"(?<![\w/-])(--[A-Za-z][\w-]*)")
_COMMAND_END = {"|", ";", "&&", "||", ">", "2>"}


@dataclass(frozen=True)
class Mention:
    """What one place in the source names: a certevo command (``tool`` "certevo", ``command``
    the word after it, None for ``certevo --flag``), another program (``tool`` its name), or
    a bare flag (``tool`` None)."""

    where: str
    tool: str | None
    command: str | None
    flags: tuple[str, ...]


@cache
def parser_options() -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    """The option strings of each subcommand, and those of ``certevo`` itself."""
    parser = build_parser()
    top = frozenset(s for action in parser._actions for s in action.option_strings)
    commands: dict[str, frozenset[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = frozenset(s for a in sub._actions for s in a.option_strings)
    assert commands, "build_parser() has no subcommands"
    return commands, top


def _command_line(words: list[str]) -> tuple[str | None, list[str]]:
    """The subcommand and the flags of ``certevo WORD ...`` (words after "certevo")."""
    words = [w.strip(".,:()[]") for w in words]
    for k, word in enumerate(words):
        if word in _COMMAND_END:
            words = words[:k]
            break
    flags = [m.group(1) for w in words if (m := _FLAG.match(w))]
    command = words[0] if words and not words[0].startswith("-") else None
    return command, flags


def _span_mention(span: str, where: str) -> Mention | None:
    """The command line a span holds, if it is one: ``certevo ...`` or another program's."""
    words = span.split()
    if len(words) < 2:
        return None
    program = words[0].rsplit("/", 1)[-1]  # .venv/bin/certevo too
    if program.startswith("python") and words[1:3] == ["-m", "certevo"]:
        program, words = "certevo", words[2:]
    if program == "certevo":
        command, flags = _command_line(words[1:])
        if command is not None and "{" in command:
            command = "{}"
        return Mention(where, "certevo", command, tuple(flags))
    if program in PROGRAMS:
        return Mention(where, program, None, tuple(_command_line(words[1:])[1]))
    return None


def mentions_in_text(text: str, where: str) -> list[Mention]:
    """The commands, other programs' command lines and bare flags in one text."""
    found: list[Mention] = []
    whole = text.strip()
    if re.fullmatch(r"certevo [a-z][a-z-]*( [^\n]*)?", whole) and (mention := _span_mention(whole, where)):
        return [mention]  # the string is a command line itself (a title "certevo Pareto front" is not)

    def take(match: re.Match) -> str:
        mention = _span_mention(match.group(1), where)
        if mention is None:  # not a command line: its text stays prose, without the quotes
            return f" {match.group(1)} "
        found.append(mention)
        return " "  # its flags are checked with its command

    prose = text
    for pattern in _SPANS:
        prose = pattern.sub(take, prose)
    bare = _BARE_FLAG.findall(prose)
    if bare:
        found.append(Mention(where, None, None, tuple(bare)))
    return found


def _hint_mention(call: ast.Call, where: str) -> Mention | None:
    """What a ``command_hint(...)`` call spells, from its constant arguments."""
    tool = "certevo"
    for keyword in call.keywords:
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
            tool = keyword.value.value
    constants = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else "{}" for a in call.args]
    if not constants:
        return None
    if tool != "certevo":
        return Mention(where, tool, None, tuple(c for c in constants if _FLAG.match(c)))
    command, flags = _command_line(constants)
    return Mention(where, "certevo", command, tuple(flags))


def _is_command_hint(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Name) and func.id == "command_hint") or (
        isinstance(func, ast.Attribute) and func.attr == "command_hint")


def mentions_in_source(source: str, path: str) -> list[Mention]:
    """Every mention in one module's string literals, f-strings, docstrings and
    ``command_hint`` calls."""
    tree = ast.parse(source)
    done: set[int] = set()  # string nodes read as part of an f-string or a command_hint call
    found: list[Mention] = []
    for node in ast.walk(tree):  # breadth first: a call or an f-string comes before its parts
        if isinstance(node, ast.Call) and _is_command_hint(node):
            mention = _hint_mention(node, f"{path}:{node.lineno}")
            if mention is not None:
                found.append(mention)
                done.update(id(n) for a in node.args for n in ast.walk(a))
        elif isinstance(node, ast.JoinedStr) and id(node) not in done:
            done.update(id(n) for n in ast.walk(node))
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            found += mentions_in_text(text, f"{path}:{node.lineno}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in done:
            found += mentions_in_text(node.value, f"{path}:{node.lineno}")
    return found


def problems(mention: Mention) -> list[str]:
    """What is wrong with a mention: a command or flag the parser (or OTHER_TOOLS) lacks."""
    commands, top = parser_options()
    everywhere = top.union(*commands.values())
    out = []
    if mention.tool == "certevo":
        if mention.command == "{}":
            return []  # an interpolated command: its command_hint call is checked instead
        if mention.command is None:
            known, on = top, "certevo"
        elif mention.command not in commands:
            return [f"{mention.where}: `certevo {mention.command}` is not a certevo command "
                    f"(the commands are {', '.join(sorted(commands))})"]
        else:
            known, on = commands[mention.command], f"certevo {mention.command}"
        out += [f"{mention.where}: {flag} is not an option of `{on}`" for flag in mention.flags if flag not in known]
    elif mention.tool is None:
        out += [f"{mention.where}: {flag} is not an option of any certevo command"
                for flag in mention.flags if flag not in everywhere]
    else:
        allowed = OTHER_TOOLS.get(mention.tool, {})
        out += [f"{mention.where}: {flag} of `{mention.tool}` is not in OTHER_TOOLS (add it with the reason)"
                for flag in mention.flags if flag not in allowed]
    return out


@cache
def package_mentions() -> tuple[Mention, ...]:
    """Every mention in the package's source."""
    found: list[Mention] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += mentions_in_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return tuple(found)


# -- the package ------------------------------------------------------------------------------


def test_every_command_and_flag_a_message_names_exists():
    assert [p for mention in package_mentions() for p in problems(mention)] == []


def test_the_scan_sees_the_commands_the_messages_name():
    """The scan reads what it should: the commands the code suggests (in messages and in
    command_hint calls) and flags in prose, so an empty problem list means something."""
    mentions = package_mentions()
    named = {m.command for m in mentions if m.tool == "certevo"}
    assert {"launch", "resume", "inspect", "export", "train", "tune"} <= named
    bare = {f for m in mentions if m.tool is None for f in m.flags}
    assert {"--run-dir", "--tracking-uri", "--min-sparsity", "--from-scratch"} <= bare
    hinted = {(m.command, f) for m in mentions if m.tool == "certevo" for f in m.flags}
    assert ("resume", "--generations") in hinted and ("export", "--knee") in hinted


def test_every_other_program_flag_allowed_is_still_named():
    named = {(m.tool, f) for m in package_mentions() if m.tool not in (None, "certevo") for f in m.flags}
    unused = [(tool, flag) for tool, flags in OTHER_TOOLS.items() for flag in flags if (tool, flag) not in named]
    assert unused == [], "OTHER_TOOLS lists flags no message names any more; remove them"


# -- the checker itself -----------------------------------------------------------------------


@pytest.mark.parametrize("text, wrong", [
    ("check the failures with `certevo show` and start again", "`certevo show` is not a certevo command"),
    ("point --resume at the run directory", "--resume is not an option of any certevo command"),
    ("pass the directory `certevo train-final` wrote", "`certevo train-final` is not a certevo command"),
    ("see ``certevo export RUN --json``", "--json is not an option of `certevo export`"),
    ('run "certevo inspect RUN --lineag X"', "--lineag is not an option of `certevo inspect`"),
    ("install with `pip install --upgrade auto-lirpa`", "--upgrade of `pip` is not in OTHER_TOOLS"),
])
def test_a_wrong_command_or_flag_is_reported(text, wrong):
    found = [p for m in mentions_in_text(text, "x.py:1") for p in problems(m)]
    assert len(found) == 1 and wrong in found[0], found


@pytest.mark.parametrize("text", [
    "list the failures with `certevo inspect RUN_DIR --sort certified` and start a new search",
    "resume it with `certevo resume runs/x --generations 12`; or choose another --run-dir",
    "`certevo export RUN --knee -o best` | head",
    "`pip install --no-deps auto-lirpa==0.3` installs it",
    "it is not a certevo run directory; use the certevo version that wrote it",
    "`certevo --version` prints the version",
])
def test_a_right_command_or_flag_passes(text):
    assert [p for m in mentions_in_text(text, "x.py:1") for p in problems(m)] == []


def test_command_hint_calls_are_checked_like_messages():
    source = 'command_hint("show", run_dir)\ncommand_hint("resume", d, "--generation", 3)\n' \
             'command_hint("ui", "--backend-store-uri", uri, name="mlflow")\n'
    found = [p for m in mentions_in_source(source, "x.py") for p in problems(m)]
    assert found == ["x.py:1: `certevo show` is not a certevo command (the commands are "
                     f"{', '.join(sorted(parser_options()[0]))})",
                     "x.py:2: --generation is not an option of `certevo resume`"]
