"""Progress where people look: an 80-column terminal, and a log file (nohup, ray job submit).

A real tiny search runs with three progress observers at once: an 80-column terminal, a
50-column terminal and a plain stream (not a terminal); a fourth observer takes a copy of
what each had shown whenever a generation ends.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from certevo.search.loop import Search
from certevo.search.observer import SearchObserver
from certevo.search.progress import ConsoleProgress
from conftest import tiny

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
COUNT_AND_TIME_LEFT = re.compile(r"\d+/\d+ +(\d+:\d\d:\d\d|-:--:--)")


class Snapshots(SearchObserver):
    """An observer that keeps what each stream shows when a generation ends."""

    def __init__(self, streams: dict[str, io.StringIO]) -> None:
        self.streams = streams
        self.at_generation: list[tuple[int, dict[str, str]]] = []

    def on_start(self, search) -> None: ...
    def on_evaluation(self, search, result) -> None: ...
    def on_end(self, search, summary) -> None: ...

    def on_generation(self, search, summary) -> None:
        self.at_generation.append((summary["generation"], {k: s.getvalue() for k, s in self.streams.items()}))


@pytest.fixture(scope="module")
def watched(ray_session, tmp_path_factory):
    streams = {"wide80": io.StringIO(), "narrow50": io.StringIO(), "log": io.StringIO()}
    observers = [
        ConsoleProgress(Console(file=streams["wide80"], width=80, force_terminal=True)),
        ConsoleProgress(Console(file=streams["narrow50"], width=50, force_terminal=True)),
        ConsoleProgress(Console(file=streams["log"], width=80)),  # a StringIO is not a terminal
    ]
    snapshots = Snapshots(streams)
    search = Search.create(tiny("search.generations=2"), tmp_path_factory.mktemp("progress") / "run",
                           [*observers, snapshots])
    search.run()
    return search, {k: s.getvalue() for k, s in streams.items()}, snapshots


def frames(text: str) -> list[str]:
    """Every drawn state of the live progress line (ANSI codes removed)."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", text)) if "gen " in line and "━" in line]


@pytest.mark.parametrize("stream, width", [("wide80", 80), ("narrow50", 50)])
def test_on_a_narrow_terminal_the_count_and_time_left_always_show(watched, stream, width):
    search, shown, _ = watched
    drawn = frames(shown[stream])
    assert drawn, shown[stream][-2000:]
    for line in drawn:
        assert len(line) <= width, line
        assert COUNT_AND_TIME_LEFT.search(line), f"count or time left cut off: {line!r}"
    planned = search.planned_evaluations()
    assert any(f"{planned}/{planned}" in line for line in drawn)  # the last state: all done


def test_an_80_column_terminal_still_shows_the_bar_rate_and_hypervolume(watched):
    _, shown, _ = watched
    last = frames(shown["wide80"])[-1]
    assert re.search(r"━{10,}", last) and "eval/min" in last and "HV " in last, last


def test_without_a_terminal_a_plain_line_per_generation_appears_while_the_search_runs(watched):
    search, shown, snapshots = watched
    generations = search.config.search.generations
    planned = search.planned_evaluations()
    assert [g for g, _ in snapshots.at_generation] == list(range(generations + 1))
    for generation, so_far in snapshots.at_generation:
        lines = [line for line in so_far["log"].splitlines() if line.startswith("gen ")]
        # the line of this generation is out when the generation ends, not at the end of the search
        assert len(lines) == generation + 1, so_far["log"]
        assert re.fullmatch(rf"gen {generation}/{generations}  \d+/{planned} evaluations  \d+\.\d eval/min  "
                            r"HV \d\.\d{3}  best cert >=0\.5: \d+\.\d%  .*eta (\d+:\d\d:\d\d|-:--:--)", lines[-1]), lines[-1]
        assert "Pareto front after" not in so_far["log"]
    assert "\x1b[" not in shown["log"] and frames(shown["log"]) == []  # no terminal codes, no bar in a log file
    assert f"gen {generations}/{generations}  {planned}/{planned} evaluations" in shown["log"]


def test_the_final_screen_says_what_the_certified_accuracy_refers_to(watched):
    search, shown, _ = watched
    validation = len(search.config.data.load().val.y)  # 300 samples, 20 % for validation
    assert validation == 60
    caption = f"certified accuracy: digits, {validation} validation samples, eps 0.05 (L-inf), CROWN"
    for stream in ("wide80", "log"):
        assert caption in ANSI.sub("", shown[stream]), shown[stream][-1500:]
